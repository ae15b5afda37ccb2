//! The `metrics` facade: with a recorder installed, a node records per-peer messages and bytes
//! in and out (the same numbers as `Node::stats`), dead letters and refusals by reason, node up
//! and down by reason, and the duration of remote calls. Every transport.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use conc_node::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const T: Duration = Duration::from_secs(30);

/// The process's recorder (one per test process; nextest runs each test in its own).
fn snapshotter() -> &'static Snapshotter {
    static SNAP: OnceLock<Snapshotter> = OnceLock::new();
    SNAP.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test process");
        snapshotter
    })
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The value of counter `name` with label `label` = `value` in `snap` (0 if not recorded).
fn counter(snap: &Snapshot, name: &str, label: (&str, &str)) -> u64 {
    snap.iter()
        .filter_map(|(key, _, _, v)| {
            let key = key.key();
            let hit = key.name() == name
                && key
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1);
            match (hit, v) {
                (true, DebugValue::Counter(n)) => Some(*n),
                _ => None,
            }
        })
        .sum()
}

/// How many values histogram `name` recorded in `snap`.
fn histogram_count(snap: &Snapshot, name: &str) -> usize {
    snap.iter()
        .filter_map(|(key, _, _, v)| match v {
            DebugValue::Histogram(values) if key.key().name() == name => Some(values.len()),
            _ => None,
        })
        .sum()
}

async fn node(t: &str) -> Node {
    Node::builder()
        .cookie(Cookie::new("metrics-cookie").unwrap())
        .listen("127.0.0.1:0")
        .transport_arc(transport_by_name(t).unwrap())
        .start()
        .await
        .unwrap()
}

type Echo = (String, ReplyTo<String>);

async fn metrics_agree_with_stats(t: &str) {
    // Installed before the nodes make their handles.
    let _ = snapshotter();
    let a = node(t).await;
    let b = node(t).await;
    let echo = a.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(text);
        }
    });
    a.register("echo", &echo).unwrap();
    let p = b.remote::<Echo>(a.name(), "echo").unwrap();
    for i in 0..20 {
        let answer = tokio::time::timeout(T, p.call(|r| (format!("{i}"), r), T))
            .await
            .expect("a call answered in time")
            .unwrap();
        assert_eq!(answer, format!("{i}"));
    }
    // A refused message: a dead letter on both sides, by reason.
    let nobody = b.remote::<Echo>(a.name(), "nobody").unwrap();
    let refused = tokio::time::timeout(T, nobody.call(|r| ("x".into(), r), T))
        .await
        .expect("the refusal came back in time");
    assert!(matches!(refused, Err(CallError::Refused { .. })));
    // The refusal is counted on A as it answers, before B sees the error: all is recorded
    // now. One snapshot (the debugging recorder drains what it reports).
    let snap: Snapshot = snapshotter().snapshot().into_vec();
    assert_eq!(
        histogram_count(&snap, "conc_call_duration_seconds"),
        20,
        "one duration per answered remote call"
    );
    assert!(
        counter(
            &snap,
            "conc_dead_letters_total",
            ("reason", "refused: unknown name")
        ) >= 1
    );
    // Per peer, the same numbers as stats.
    let b_to_a = b
        .stats()
        .peers
        .into_iter()
        .find(|s| s.name == a.name())
        .unwrap();
    let a_from_b = a
        .stats()
        .peers
        .into_iter()
        .find(|s| s.name == b.name())
        .unwrap();
    assert_eq!(
        counter(&snap, "conc_messages_sent_total", ("peer", a.name())),
        b_to_a.msgs_out
    );
    assert_eq!(
        counter(&snap, "conc_bytes_sent_total", ("peer", a.name())),
        b_to_a.bytes_out
    );
    assert_eq!(
        counter(&snap, "conc_messages_received_total", ("peer", b.name())),
        a_from_b.msgs_in
    );
    assert_eq!(
        counter(&snap, "conc_bytes_received_total", ("peer", b.name())),
        a_from_b.bytes_in
    );
    assert_eq!(a_from_b.msgs_in, 21);
    // A's loss is counted by reason. (A process that outlives its closed mailbox keeps B's
    // monitor, so per-message TCP goes on probing A.)
    let stubborn = a.spawn(|mut inbox: Inbox<u64>| async move {
        while inbox.recv().await.is_some() {}
        std::future::pending::<()>().await
    });
    a.register("stubborn", &stubborn).unwrap();
    let watched = b.remote::<u64>(a.name(), "stubborn").unwrap();
    let _monitor = b.runtime().monitor(&watched);
    let mut events = b.node_events();
    a.shutdown().await;
    let reason = tokio::time::timeout(T, async {
        loop {
            if let Ok(NodeEvent::Down { name, reason }) = events.recv().await
                && name == a.name()
            {
                return reason;
            }
        }
    })
    .await
    .expect("A's loss seen in time");
    let snap: Snapshot = snapshotter().snapshot().into_vec();
    assert!(
        counter(
            &snap,
            "conc_node_down_total",
            ("reason", &format!("{reason:?}"))
        ) >= 1
    );
}

common::suite!(metrics_agree_with_stats);
