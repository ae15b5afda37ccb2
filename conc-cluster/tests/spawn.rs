//! Remote spawn between two nodes on loopback (pooled TCP): typed pids, the errors, and the
//! atomic link and monitor (a child that dies at once must still be seen with its own reason,
//! not as "no such process", which is what a link or monitor made after it died reports).

use std::time::Duration;

use conc_cluster::spawn::{SpawnError, SpawnRequest, Spawner};
use conc_node::{Cookie, Event, ExitReason, Inbox, Node, ReplyTo};

/// Generous bound on every awaited event: a failure means the event never came.
const DEADLINE: Duration = Duration::from_secs(30);

async fn node() -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("spawn-tests").unwrap())
        .start()
        .await
        .unwrap()
}

/// The worker node with kinds: `session` (answers `hello <arg>`), `crash` (ends at once with
/// reason killed: fast, unlike a panic, whose message and backtrace take a while to print, so
/// a link or monitor made after the spawn would find it gone), `quit` (returns at once).
async fn worker() -> Node {
    let node = node().await;
    let spawner = Spawner::new(&node);
    spawner
        .register_kind(
            "session",
            |user: String, mut inbox: Inbox<ReplyTo<String>>| async move {
                while let Some(reply) = inbox.recv().await {
                    let _ = reply.send(format!("hello {user}"));
                }
            },
        )
        .unwrap();
    spawner
        .register_kind("crash", |_: u32, inbox: Inbox<String>| async move {
            inbox.exit(ExitReason::Killed);
            std::future::pending::<()>().await;
        })
        .unwrap();
    spawner
        .register_kind("quit", |_: u32, _inbox: Inbox<String>| async move {})
        .unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_on_gives_a_typed_working_pid() {
    let w = worker().await;
    let front = node().await;
    let spawner = Spawner::new(&front).with_timeout(DEADLINE);
    let session = spawner
        .spawn_on::<String, ReplyTo<String>>(w.name(), "session", "ada".into())
        .await
        .unwrap();
    assert!(!session.is_local());
    assert_eq!(session.uri().node, w.name());
    let hello = session.call(|r| r, DEADLINE).await.unwrap();
    assert_eq!(hello, "hello ada");
    // Two spawns are two processes.
    let other = spawner
        .spawn_on::<String, ReplyTo<String>>(w.name(), "session", "bob".into())
        .await
        .unwrap();
    assert_ne!(other, session);
    assert_eq!(other.call(|r| r, DEADLINE).await.unwrap(), "hello bob");
    // A kind can be registered once per node.
    assert!(
        Spawner::new(&w)
            .register_kind("session", |_: String, _: Inbox<String>| async {})
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kind_and_type_mismatches_are_errors() {
    let w = worker().await;
    let front = node().await;
    let spawner = Spawner::new(&front).with_timeout(DEADLINE);
    let err = spawner
        .spawn_on::<String, ReplyTo<String>>(w.name(), "nope", "x".into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SpawnError::UnknownKind { ref kind, .. } if kind == "nope"),
        "{err:?}"
    );
    // Wrong argument type.
    let err = spawner
        .spawn_on::<u64, ReplyTo<String>>(w.name(), "session", 7)
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::TypeMismatch { .. }), "{err:?}");
    // Wrong message type.
    let err = spawner
        .spawn_on::<String, String>(w.name(), "session", "x".into())
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::TypeMismatch { .. }), "{err:?}");
    let err = spawner
        .spawn_on::<String, String>(w.name(), "bad/kind", "x".into())
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::InvalidKind(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_there_is_peer_down() {
    // A port that was just free: nothing listens on it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let front = node().await;
    let err = Spawner::new(&front)
        .with_timeout(DEADLINE)
        .spawn_on::<String, ReplyTo<String>>(&addr.to_string(), "session", "x".into())
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::PeerDown { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_that_never_answers_times_out() {
    // A process under a kind's name that keeps every request without answering.
    let w = node().await;
    let silent = w.spawn(
        |mut inbox: Inbox<SpawnRequest<String, String>>| async move {
            let mut held = Vec::new();
            while let Some(req) = inbox.recv().await {
                held.push(req);
            }
        },
    );
    w.register("conc.spawn.silent", &silent).unwrap();
    let front = node().await;
    let timeout = Duration::from_millis(300);
    let err = Spawner::new(&front)
        .with_timeout(timeout)
        .spawn_on::<String, String>(w.name(), "silent", "x".into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SpawnError::Timeout(t) if t == timeout),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_link_is_atomic() {
    let w = worker().await;
    let front = node().await;
    let spawner = Spawner::new(&front).with_timeout(DEADLINE);
    let peer = w.name().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    front.spawn(move |mut inbox: Inbox<()>| async move {
        inbox.trap_exit(true);
        // The child panics as soon as it runs: the link must already be there.
        let child = spawner
            .spawn_link_on::<u32, String, ()>(&inbox, &peer, "crash", 7)
            .await
            .unwrap();
        let event = inbox.recv_event_timeout(DEADLINE).await.unwrap();
        let _ = tx.send((child.id().unwrap(), event));
    });
    let (child, event) = tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap();
    match event {
        Event::Exit(exit) => {
            assert_eq!(exit.pid, child);
            assert_eq!(exit.reason, ExitReason::Killed);
        }
        other => panic!("expected the child's exit, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_monitor_is_atomic() {
    let w = worker().await;
    let front = node().await;
    let spawner = Spawner::new(&front).with_timeout(DEADLINE);
    let peer = w.name().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    front.spawn(move |mut inbox: Inbox<()>| async move {
        let (child1, m1) = spawner
            .spawn_monitor_on::<u32, String, ()>(&inbox, &peer, "crash", 9)
            .await
            .unwrap();
        let (child2, m2) = spawner
            .spawn_monitor_on::<u32, String, ()>(&inbox, &peer, "quit", 0)
            .await
            .unwrap();
        let mut downs = Vec::new();
        for _ in 0..2 {
            match inbox.recv_event_timeout(DEADLINE).await.unwrap() {
                Event::Down(d) => downs.push(d),
                other => panic!("expected a Down, got {other:?}"),
            }
        }
        let _ = tx.send((child1.id().unwrap(), m1, child2.id().unwrap(), m2, downs));
    });
    let (c1, m1, c2, m2, downs) = tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap();
    let d1 = downs.iter().find(|d| d.monitor == m1).unwrap();
    assert_eq!(d1.pid, c1);
    assert_eq!(d1.reason, ExitReason::Killed);
    let d2 = downs.iter().find(|d| d.monitor == m2).unwrap();
    assert_eq!(d2.pid, c2);
    assert_eq!(d2.reason, ExitReason::Normal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_link_errors_like_spawn() {
    let w = worker().await;
    let front = node().await;
    let spawner = Spawner::new(&front).with_timeout(DEADLINE);
    let peer = w.name().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    front.spawn(move |inbox: Inbox<()>| async move {
        let unknown = spawner
            .spawn_link_on::<u32, String, ()>(&inbox, &peer, "nope", 1)
            .await
            .unwrap_err();
        let mismatch = spawner
            .spawn_monitor_on::<String, String, ()>(&inbox, &peer, "crash", "x".into())
            .await
            .unwrap_err();
        let _ = tx.send((unknown, mismatch));
    });
    let (unknown, mismatch) = tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap();
    assert!(
        matches!(unknown, SpawnError::UnknownKind { .. }),
        "{unknown:?}"
    );
    assert!(
        matches!(mismatch, SpawnError::TypeMismatch { .. }),
        "{mismatch:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawning_on_this_node_works_the_same() {
    let w = worker().await;
    let spawner = Spawner::new(&w).with_timeout(DEADLINE);
    let session = spawner
        .spawn_on::<String, ReplyTo<String>>(w.name(), "session", "me".into())
        .await
        .unwrap();
    assert!(session.is_local());
    assert_eq!(session.call(|r| r, DEADLINE).await.unwrap(), "hello me");
    let peer = w.name().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.spawn(move |mut inbox: Inbox<()>| async move {
        let (child, m) = spawner
            .spawn_monitor_on::<u32, String, ()>(&inbox, &peer, "crash", 1)
            .await
            .unwrap();
        let event = inbox.recv_event_timeout(DEADLINE).await.unwrap();
        let _ = tx.send((child.id().unwrap(), m, event));
    });
    let (child, m, event) = tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap();
    match event {
        Event::Down(d) => {
            assert_eq!((d.monitor, d.pid), (m, child));
            assert_eq!(d.reason, ExitReason::Killed);
        }
        other => panic!("expected the child's Down, got {other:?}"),
    }
}

/// The atomic link and monitor on every transport: on QUIC the link or monitor request and the
/// gate's exit ride different lanes, and the gate's exit must still come after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_link_and_monitor_are_atomic_on_every_transport() {
    let names = conc_node::transport_names();
    assert!(names.contains(&"quic"), "QUIC is compiled into this test");
    for transport in names {
        let start = || async {
            Node::builder()
                .listen("127.0.0.1:0")
                .cookie(Cookie::new("spawn-tests").unwrap())
                .transport_arc(conc_node::transport_by_name(transport).unwrap())
                .start()
                .await
                .unwrap()
        };
        let w = start().await;
        Spawner::new(&w)
            .register_kind("crash", |_: u32, inbox: Inbox<String>| async move {
                inbox.exit(ExitReason::Killed);
                std::future::pending::<()>().await;
            })
            .unwrap();
        let front = start().await;
        let spawner = Spawner::new(&front).with_timeout(DEADLINE);
        let peer = w.name().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        front.spawn(move |mut inbox: Inbox<()>| async move {
            inbox.trap_exit(true);
            let mut got = Vec::new();
            for round in 0..5u32 {
                let linked = spawner
                    .spawn_link_on::<u32, String, ()>(&inbox, &peer, "crash", round)
                    .await
                    .unwrap();
                let (monitored, m) = spawner
                    .spawn_monitor_on::<u32, String, ()>(&inbox, &peer, "crash", round)
                    .await
                    .unwrap();
                let mut events = Vec::new();
                for _ in 0..2 {
                    events.push(inbox.recv_event_timeout(DEADLINE).await.unwrap());
                }
                got.push((linked.id().unwrap(), monitored.id().unwrap(), m, events));
            }
            let _ = tx.send(got);
        });
        let got = tokio::time::timeout(DEADLINE * 2, rx)
            .await
            .unwrap_or_else(|_| panic!("{transport}: timed out"))
            .unwrap();
        for (linked, monitored, m, events) in got {
            let mut saw_exit = false;
            let mut saw_down = false;
            for e in events {
                match e {
                    Event::Exit(x) => {
                        assert_eq!(
                            (x.pid, &x.reason),
                            (linked, &ExitReason::Killed),
                            "{transport}"
                        );
                        saw_exit = true;
                    }
                    Event::Down(d) => {
                        assert_eq!((d.monitor, d.pid), (m, monitored), "{transport}");
                        assert_eq!(d.reason, ExitReason::Killed, "{transport}");
                        saw_down = true;
                    }
                    Event::Message(()) => panic!("{transport}: unexpected message"),
                }
            }
            assert!(saw_exit && saw_down, "{transport}");
        }
        front.shutdown().await;
        w.shutdown().await;
    }
}

/// A supervisor stops a child on another node in order, on every transport: the child, which
/// traps exits, receives the supervisor's exit signal with reason shutdown (it crosses nodes
/// as an `Exit` frame), cleans up and exits with that reason; the supervisor's own stop does the
/// same. Before exit signals crossed nodes, a remote child was killed whatever its policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_stops_a_remote_child_in_order() {
    use conc_node::supervisor::{Strategy, SupervisorSpec};
    for transport in conc_node::transport_names() {
        let start = || async {
            Node::builder()
                .listen("127.0.0.1:0")
                .cookie(Cookie::new("spawn-tests").unwrap())
                .transport_arc(conc_node::transport_by_name(transport).unwrap())
                .start()
                .await
                .unwrap()
        };
        let w = start().await;
        // The kind `tidy` traps exits and, on an exit signal, reports it (to the process named
        // `report` on the worker) before it exits with the signal's reason.
        let (report_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let report = w.spawn(move |mut inbox: Inbox<(u32, ExitReason)>| async move {
            while let Some(r) = inbox.recv().await {
                let _ = report_tx.send(r);
            }
        });
        w.register("report", &report).unwrap();
        Spawner::new(&w)
            .register_kind("tidy", {
                let w = w.clone();
                move |n: u32, mut inbox: Inbox<String>| {
                    let report = w.whereis::<(u32, ExitReason)>("report").unwrap();
                    async move {
                        inbox.trap_exit(true);
                        loop {
                            if let Some(Event::Exit(x)) = inbox.recv_event().await {
                                let _ = report.send((n, x.reason.clone()));
                                inbox.exit(x.reason);
                                std::future::pending::<()>().await
                            }
                        }
                    }
                }
            })
            .unwrap();
        let front = start().await;
        let spawner = Spawner::new(&front).with_timeout(DEADLINE);
        let peer = w.name().to_string();
        let mut spec = SupervisorSpec::new(Strategy::OneForOne);
        for n in 0..2u32 {
            let peer = peer.clone();
            spec = spec.child(conc_cluster::spawn::remote_child::<u32, String, _>(
                &spawner,
                format!("tidy{n}"),
                "tidy",
                n,
                move || vec![peer.clone()],
            ));
        }
        let sup = spec.start(front.runtime()).await.unwrap();
        sup.terminate_child("tidy0", DEADLINE).await.unwrap();
        assert_eq!(
            tokio::time::timeout(DEADLINE, reports.recv())
                .await
                .unwrap(),
            Some((0, ExitReason::Shutdown)),
            "{transport}: terminate_child"
        );
        assert_eq!(
            sup.stop(DEADLINE).await.unwrap(),
            ExitReason::Shutdown,
            "{transport}"
        );
        assert_eq!(
            tokio::time::timeout(DEADLINE, reports.recv())
                .await
                .unwrap(),
            Some((1, ExitReason::Shutdown)),
            "{transport}: the supervisor's stop"
        );
        front.shutdown().await;
        w.shutdown().await;
    }
}
