//! Member up and down through the `metrics` facade: `conc_member_up_total` and
//! `conc_member_down_total{reason}` (reason `unresponsive`, `restarted` or `left`).

use std::time::Duration;

use conc_cluster::{Cluster, ClusterConfig, MemberEvent};
use conc_node::{Cookie, Node, Tcp};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const WAIT: Duration = Duration::from_secs(30);

async fn node() -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("membership-metrics").unwrap())
        .transport(Tcp::pooled())
        .start()
        .await
        .unwrap()
}

/// The sum of counter `name` whose labels include `label` (any labels if `None`).
fn counter(
    snapshotter: &metrics_util::debugging::Snapshotter,
    name: &str,
    label: Option<(&str, &str)>,
) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, v)| {
            let key = key.key();
            let hit = key.name() == name
                && label
                    .is_none_or(|(k, val)| key.labels().any(|l| l.key() == k && l.value() == val));
            match (hit, v) {
                (true, DebugValue::Counter(n)) => Some(n),
                _ => None,
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_up_and_left_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let a = node().await;
    let ca = Cluster::start(&a, ClusterConfig::new()).unwrap();
    let mut events = ca.events();
    let b = node().await;
    let b_name = b.name().to_string();
    let _cb = Cluster::start(&b, ClusterConfig::new().seed_nodes([a.name()])).unwrap();
    tokio::time::timeout(WAIT, async {
        while let Some(e) = events.recv().await {
            if matches!(&e, MemberEvent::Up(m) if m.name == b_name) {
                break;
            }
        }
    })
    .await
    .unwrap();
    // Both sides saw the other come up (a snapshot drains the counters: read once).
    let up = counter(&snapshotter, "conc_member_up_total", None);
    assert!(up >= 1, "member up counted: {up}");
    b.shutdown().await;
    tokio::time::timeout(WAIT, async {
        while let Some(e) = events.recv().await {
            if matches!(&e, MemberEvent::Left(m) if m.name == b_name) {
                break;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        counter(
            &snapshotter,
            "conc_member_down_total",
            Some(("reason", "left"))
        ),
        1
    );
}
