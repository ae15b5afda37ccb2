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

/// The value of gauge `name` with label `label` = `value` in `snap`.
fn gauge(snap: &Snapshot, name: &str, label: (&str, &str)) -> Option<f64> {
    snap.iter().find_map(|(key, _, _, v)| {
        let key = key.key();
        let hit = key.name() == name
            && key
                .labels()
                .any(|l| l.key() == label.0 && l.value() == label.1);
        match (hit, v) {
            (true, DebugValue::Gauge(g)) => Some(g.into_inner()),
            _ => None,
        }
    })
}

/// `conc_mailbox_length` counts the messages a registered process has not received yet:
/// those still queued and those its inbox took in a batch; sampled at `stats` (the periodic
/// sampler is off here, so nothing else sets it).
#[tokio::test]
async fn mailbox_length_gauge_of_registered_processes() {
    let _ = snapshotter();
    let a = Node::builder()
        .cookie(Cookie::new("metrics-cookie").unwrap())
        .gauge_interval(None)
        .start()
        .await
        .unwrap();
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
    let (took_tx, took_rx) = tokio::sync::oneshot::channel::<u32>();
    let slow = a.spawn(move |mut inbox: Inbox<u32>| async move {
        let _ = gate_rx.await;
        // Takes the whole queue into its buffer and returns the first.
        let first = inbox.recv().await.unwrap();
        let _ = took_tx.send(first);
        std::future::pending::<()>().await
    });
    a.register("slow", &slow).unwrap();
    for i in 0..5 {
        slow.send(i).unwrap();
    }
    a.stats();
    let snap: Snapshot = snapshotter().snapshot().into_vec();
    assert_eq!(
        gauge(&snap, "conc_mailbox_length", ("name", "slow")),
        Some(5.0)
    );
    gate_tx.send(()).unwrap();
    assert_eq!(tokio::time::timeout(T, took_rx).await.unwrap().unwrap(), 0);
    a.stats();
    let snap: Snapshot = snapshotter().snapshot().into_vec();
    assert_eq!(
        gauge(&snap, "conc_mailbox_length", ("name", "slow")),
        Some(4.0),
        "the four taken into the inbox's buffer still wait"
    );
    // Unregistered: set to 0 once, not left at its last value.
    a.runtime().unregister("slow");
    a.stats();
    let snap: Snapshot = snapshotter().snapshot().into_vec();
    assert_eq!(
        gauge(&snap, "conc_mailbox_length", ("name", "slow")),
        Some(0.0)
    );
}

/// `conc_outbound_queue_frames` / `_bytes`: frames queued for a peer that has not completed
/// its handshake (a listener that accepts and never answers) wait in the pooled queue, and the
/// periodic sampler reports them, with the same numbers as `stats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_queue_gauges_of_a_silent_peer() {
    let _ = snapshotter();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = silent.accept().await {
                let _ = held_tx.send(s);
            }
        }
    });
    let b = Node::builder()
        .cookie(Cookie::new("metrics-cookie").unwrap())
        .transport(Tcp::pooled())
        .limits(Limits::default().with_handshake_timeout(Duration::from_secs(600)))
        .gauge_interval(Some(Duration::from_millis(20)))
        .start()
        .await
        .unwrap();
    let p = b.remote::<String>(&addr, "anyone").unwrap();
    for _ in 0..3 {
        p.send("queued".to_string()).unwrap();
    }
    // The connection was made (and is held open, silent): the frames wait for its handshake.
    let _conn = tokio::time::timeout(T, held_rx.recv()).await.unwrap();
    // Wait for the periodic sampler (nothing else samples before `stats` below); the sleep
    // only paces the polling, the deadline fails the test.
    let (frames, bytes) = tokio::time::timeout(T, async {
        loop {
            let snap: Snapshot = snapshotter().snapshot().into_vec();
            let f = gauge(&snap, "conc_outbound_queue_frames", ("peer", &addr));
            let b = gauge(&snap, "conc_outbound_queue_bytes", ("peer", &addr));
            if let (Some(f), Some(b)) = (f, b) {
                return (f, b);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the sampler set the gauges");
    let stats = b
        .stats()
        .peers
        .into_iter()
        .find(|s| s.name == addr)
        .unwrap();
    assert_eq!(stats.queued_frames, 3);
    assert_eq!(frames, 3.0);
    assert_eq!(bytes, stats.queued_bytes as f64);
    assert!(bytes > 0.0);
}
