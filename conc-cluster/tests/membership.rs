//! Membership between real nodes on loopback (pooled TCP): joining through one seed, the view
//! and its events, leaving, a restart seen as a new member, and no false positive while a
//! member streams at full speed.

use std::time::Duration;

use conc_cluster::{Cluster, ClusterConfig, JoinError, MemberEvent};
use conc_node::{Cookie, Inbox, Node, Tcp};

const WAIT: Duration = Duration::from_secs(30);

async fn node() -> Node {
    node_at("127.0.0.1:0").await
}

async fn node_at(addr: &str) -> Node {
    Node::builder()
        .listen(addr)
        .cookie(Cookie::new("membership-suite").unwrap())
        .transport(Tcp::pooled())
        .start()
        .await
        .unwrap()
}

/// Waits until `cluster` sees exactly `n` members.
async fn wait_members(cluster: &Cluster, n: usize) {
    let mut events = cluster.events();
    tokio::time::timeout(WAIT, async {
        while cluster.members().len() != n {
            events.recv().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} saw {:?}, wanted {n}",
            cluster.me().name,
            cluster.members()
        )
    });
}

/// The next event matching `pred`.
async fn wait_event(
    events: &mut conc_cluster::MemberEvents,
    mut pred: impl FnMut(&MemberEvent) -> bool,
) -> MemberEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = events.recv().await.unwrap();
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_through_one_seed_gives_everyone_the_full_view() {
    let seed = node().await;
    let seed_cluster = Cluster::start(&seed, ClusterConfig::new()).unwrap();
    let mut others = Vec::new();
    for _ in 0..4 {
        let n = node().await;
        let c = Cluster::start(&n, ClusterConfig::new().seed_nodes([seed.name()])).unwrap();
        others.push((n, c));
    }
    wait_members(&seed_cluster, 5).await;
    for (_, c) in &others {
        wait_members(c, 5).await;
    }
    // Every member learnt the others through the seed, and the view is the same everywhere.
    let view = seed_cluster.members();
    for (n, c) in &others {
        assert_eq!(c.members(), view);
        assert!(
            view.iter()
                .any(|m| m.name == n.name() && m.incarnation == n.incarnation())
        );
    }
    // A transitive full mesh: each node is connected to every other.
    for (n, _) in &others {
        let mut deadline = n.monitor_nodes();
        tokio::time::timeout(WAIT, async {
            while n.nodes().len() < 4 {
                deadline.recv().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} connected to {:?}", n.name(), n.nodes()));
    }
    // The event stream starts with the current state.
    let mut events = others[0].1.events();
    let mut initial = Vec::new();
    for _ in 0..4 {
        match events.recv().await.unwrap() {
            MemberEvent::Up(m) => initial.push(m),
            e => panic!("unexpected {e:?}"),
        }
    }
    initial.push(others[0].1.me().clone());
    initial.sort();
    assert_eq!(initial, view);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_and_a_shutdown_are_left_not_down() {
    let a = node().await;
    let ca = Cluster::start(&a, ClusterConfig::new()).unwrap();
    let b = node().await;
    let cb = Cluster::start(&b, ClusterConfig::new()).unwrap();
    let c = node().await;
    let cc = Cluster::start(&c, ClusterConfig::new()).unwrap();
    // Joining at run time.
    cb.join(a.name(), WAIT).await.unwrap();
    cc.join(a.name(), WAIT).await.unwrap();
    wait_members(&ca, 3).await;
    let mut events = ca.events();
    cb.leave().await;
    let e = wait_event(&mut events, |e| !matches!(e, MemberEvent::Up(_))).await;
    assert_eq!(e, MemberEvent::Left(cb.me().clone()));
    // A node shut down without leaving says goodbye: left too.
    c.shutdown().await;
    let e = wait_event(&mut events, |e| !matches!(e, MemberEvent::Up(_))).await;
    assert_eq!(e, MemberEvent::Left(cc.me().clone()));
    assert_eq!(ca.members(), vec![ca.me().clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_a_new_member() {
    let a = node().await;
    let ca = Cluster::start(&a, ClusterConfig::new()).unwrap();
    let b = node().await;
    let addr = b.name().to_string();
    let cb = Cluster::start(&b, ClusterConfig::new().seed_nodes([a.name()])).unwrap();
    wait_members(&ca, 2).await;
    let old = cb.me().clone();
    let mut events = ca.events();
    // The old node shuts down (a goodbye: it left), a new one starts on the same address.
    b.shutdown().await;
    let gone = wait_event(&mut events, |e| !matches!(e, MemberEvent::Up(_))).await;
    assert_eq!(gone, MemberEvent::Left(old.clone()));
    let b2 = node_at(&addr).await;
    let cb2 = Cluster::start(&b2, ClusterConfig::new().seed_nodes([a.name()])).unwrap();
    let up = wait_event(&mut events, |e| matches!(e, MemberEvent::Up(_))).await;
    assert_eq!(up, MemberEvent::Up(cb2.me().clone()));
    assert_ne!(cb2.me().incarnation, old.incarnation);
    wait_members(&cb2, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_node_that_is_not_there_times_out() {
    let a = node().await;
    let ca = Cluster::start(&a, ClusterConfig::new()).unwrap();
    // A port that was bound and released: nothing listens there.
    let gone = node().await;
    let name = gone.name().to_string();
    gone.shutdown().await;
    let err = ca
        .join(&name, Duration::from_millis(700))
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Timeout { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_starts_after_its_joiner_is_found_by_the_retries() {
    // Reserve a port, then start the joiner first: its announces are refused until the seed
    // listens; the backoff retries find it.
    let probe = node().await;
    let seed_addr = probe.name().to_string();
    probe.shutdown().await;
    let b = node().await;
    let cb = Cluster::start(&b, ClusterConfig::new().seed_nodes([seed_addr.clone()])).unwrap();
    let seed = node_at(&seed_addr).await;
    let cs = Cluster::start(&seed, ClusterConfig::new()).unwrap();
    wait_members(&cb, 2).await;
    wait_members(&cs, 2).await;
}

/// Three members; one streams to another as fast as the connection takes it for many probe
/// periods. Membership packets between the two wait
/// behind the stream, but SWIM's indirect probes through the third member answer for both, so
/// nobody is declared down. (With only two members there is no third to ask: see the README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_streaming_at_full_speed_is_not_declared_down() {
    let a = node().await;
    let ca = Cluster::start(&a, ClusterConfig::new()).unwrap();
    let b = node().await;
    let cb = Cluster::start(&b, ClusterConfig::new().seed_nodes([a.name()])).unwrap();
    let c = node().await;
    let cc = Cluster::start(&c, ClusterConfig::new().seed_nodes([a.name()])).unwrap();
    for cl in [&ca, &cb, &cc] {
        wait_members(cl, 3).await;
    }
    let mut streams = Vec::new();
    for cl in [&ca, &cb, &cc] {
        let mut events = cl.events();
        // skip the initial Ups
        for _ in 0..2 {
            events.recv().await.unwrap();
        }
        streams.push(events);
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    const N: usize = 4_000;
    let sink = a.spawn(move |mut inbox: Inbox<Vec<u8>>| async move {
        let mut done_tx = Some(done_tx);
        let mut got = 0;
        while inbox.recv().await.is_some() {
            got += 1;
            if got == N
                && let Some(tx) = done_tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    a.register("sink", &sink).unwrap();
    let remote = b.remote::<Vec<u8>>(a.name(), "sink").unwrap();
    // send_wait: as fast as the connection takes them (waiting when the outbound queue is
    // full). Whether the queue filled depends on the machine: not asserted.
    let streamer = tokio::spawn(async move {
        for _ in 0..N {
            remote.send_wait(vec![7u8; 4 * 1024]).await.unwrap();
        }
    });
    tokio::time::timeout(WAIT * 4, done_rx)
        .await
        .unwrap()
        .unwrap();
    streamer.await.unwrap();
    // No membership event happened on any member while streaming.
    for (i, events) in streams.iter_mut().enumerate() {
        assert_eq!(event_now(events), None, "member {i} saw an event");
    }
    for cl in [&ca, &cb, &cc] {
        assert_eq!(cl.members().len(), 3);
    }
}

/// An event already delivered, if any (without waiting).
fn event_now(events: &mut conc_cluster::MemberEvents) -> Option<MemberEvent> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let fut = events.recv();
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(e) => e,
        std::task::Poll::Pending => None,
    }
}
