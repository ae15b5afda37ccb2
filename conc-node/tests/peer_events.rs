//! What happens around a peer's connection, on every transport: simultaneous connects move
//! frames at once, a lost peer is one `Down` event with a typed reason, shutdown delivers what
//! was queued before it, and user `Serialize` code runs outside the transports' locks.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conc_node::*;
use serde::{Deserialize, Serialize};

/// The generous deadline every wait here is bounded by.
const T: Duration = Duration::from_secs(30);

fn cookie() -> Cookie {
    Cookie::new("peer-events-cookie").unwrap()
}

async fn node_with(transport: &str, limits: Limits) -> Node {
    Node::builder()
        .cookie(cookie())
        .limits(limits)
        .listen("127.0.0.1:0")
        .transport_arc(transport_by_name(transport).unwrap())
        .start()
        .await
        .unwrap()
}

async fn node(transport: &str) -> Node {
    node_with(transport, Limits::default()).await
}

type Echo = (String, ReplyTo<String>);

fn spawn_echo(n: &Node, name: &str) -> Pid<Echo> {
    let p = n.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(format!("echo {text}"));
        }
    });
    n.register(name, &p).unwrap();
    p
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(T, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not happen within {T:?}"),
    }
}

/// A counter process that tells `done` once it has `want` messages.
fn spawn_counter(n: &Node, name: &str, want: u64) -> tokio::sync::oneshot::Receiver<u64> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let p = n.spawn(move |mut inbox: Inbox<u64>| async move {
        let mut got = 0u64;
        let mut next = 0u64;
        while let Some(i) = inbox.recv().await {
            assert_eq!(i, next, "messages arrive in order, none lost in between");
            next += 1;
            got += 1;
            if got == want
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(got);
            }
        }
    });
    n.register(name, &p).unwrap();
    rx
}

/// Both nodes dial each other at once, again and again on fresh pairs: whichever connection
/// wins, the calls in both directions complete at once. With a heartbeat of an hour, a frame
/// left waiting for the next heartbeat on the losing side would hold its call for an hour (the
/// fault: a wake-up for the queue taken by the losing connection's writer).
async fn simultaneous_connect_moves_frames_at_once(t: &str) {
    let limits = Limits::default()
        .with_heartbeat_interval(Duration::from_secs(3600))
        .with_heartbeat_timeout(Duration::from_secs(3 * 3600));
    for round in 0..8 {
        let a = node_with(t, limits.clone()).await;
        let b = node_with(t, limits.clone()).await;
        spawn_echo(&a, "echo");
        spawn_echo(&b, "echo");
        let to_a = b.remote::<Echo>(a.name(), "echo").unwrap();
        let to_b = a.remote::<Echo>(b.name(), "echo").unwrap();
        for i in 0..5 {
            let (x, y) = within(&format!("round {round} call {i}"), async {
                tokio::join!(
                    to_a.call(|r| (format!("{round}.{i}"), r), T),
                    to_b.call(|r| (format!("{round}.{i}"), r), T),
                )
            })
            .await;
            assert_eq!(x.unwrap(), format!("echo {round}.{i}"));
            assert_eq!(y.unwrap(), format!("echo {round}.{i}"));
        }
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// FIFO per pair holds through a simultaneous connect: both nodes start streaming to each other
/// at the same moment (so both dial, and one of the two connections loses, possibly after
/// frames were written on it), from several senders each, and every receiver gets each
/// sender's messages complete and in order. Fresh pairs, round after round.
async fn fifo_through_simultaneous_connects(t: &str) {
    const SENDERS: u64 = 4;
    // Per-message TCP has no connections to hand over; one small round checks its FIFO.
    let (rounds, n) = if t == "per-message-tcp" {
        (1, 200)
    } else {
        (6, 2_000)
    };
    for round in 0..rounds {
        let a = node(t).await;
        let b = node(t).await;
        let mut done = Vec::new();
        for (node, name) in [(&a, "a"), (&b, "b")] {
            for s in 0..SENDERS {
                done.push(spawn_counter(node, &format!("{name}{s}"), n));
            }
        }
        let go = Arc::new(tokio::sync::Barrier::new(2 * SENDERS as usize));
        let mut senders = Vec::new();
        for (from, to, name) in [(&a, &b, "b"), (&b, &a, "a")] {
            for s in 0..SENDERS {
                let sink = from
                    .remote::<u64>(to.name(), &format!("{name}{s}"))
                    .unwrap();
                let go = go.clone();
                senders.push(tokio::spawn(async move {
                    go.wait().await;
                    for i in 0..n {
                        sink.send_wait(i).await.unwrap();
                    }
                }));
            }
        }
        for s in senders {
            within(&format!("round {round}: sending"), s).await.unwrap();
        }
        for d in done {
            assert_eq!(
                within(&format!("round {round}: all messages"), d)
                    .await
                    .unwrap(),
                n
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// A peer that shuts down while this node still has frames queued for it is one `Down` event,
/// and a clean shutdown says so: the reason is `Goodbye` on the transports with connections
/// (per-message TCP has none, and learns of the loss when a delivery fails).
async fn one_down_event_per_loss(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let c = node(t).await;
    spawn_echo(&a, "echo");
    spawn_echo(&c, "echo");
    // A sink that takes whatever arrives (frames still queued when A goes may be lost).
    let sink_pid =
        a.spawn(|mut inbox: Inbox<u64>| async move { while inbox.recv().await.is_some() {} });
    a.register("sink", &sink_pid).unwrap();
    let mut events = b.node_events();
    let to_a = b.remote::<Echo>(a.name(), "echo").unwrap();
    within("first call", to_a.call(|r| ("x".into(), r), T))
        .await
        .unwrap();
    // Keep B's queue to A busy while A goes away.
    let sink = b.remote::<u64>(a.name(), "sink").unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sink.send_wait(i).await.is_err() {
                    tokio::task::yield_now().await;
                }
                i += 1;
            }
        })
    };
    // On per-message TCP a peer is probed only while something waits on it.
    let _watch = b.runtime().monitor(&to_a);
    a.shutdown().await;
    let reason = within("A's down event", async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Down { name, reason }) if name == a.name() => break reason,
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await;
    if t == "per-message-tcp" {
        assert_eq!(reason, DownReason::Unreachable);
    } else {
        assert_eq!(reason, DownReason::Goodbye);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = flood.await;
    // A barrier: B reaches C, whose Up event comes after anything B emitted for A's loss.
    let to_c = b.remote::<Echo>(c.name(), "echo").unwrap();
    within("call to C", to_c.call(|r| ("y".into(), r), T))
        .await
        .unwrap();
    let mut more_downs = 0;
    loop {
        match events.try_recv() {
            Ok(NodeEvent::Down { name, .. }) if name == a.name() => more_downs += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(more_downs, 0, "A's loss was reported more than once");
}

/// Shutdown delivers what was queued before it: 20,000 messages sent (queued, not awaited)
/// just before `shutdown` all reach the peer, in order, on every transport.
async fn shutdown_delivers_what_was_queued(t: &str) {
    const N: u64 = 20_000;
    let a = node(t).await;
    let b = node(t).await;
    let all = spawn_counter(&a, "sink", N);
    let sink = b.remote::<u64>(a.name(), "sink").unwrap();
    for i in 0..N {
        sink.send_wait(i).await.unwrap();
    }
    b.shutdown().await;
    let got = within("all messages at the peer", all).await.unwrap();
    assert_eq!(got, N);
}

thread_local! {
    static SIDE: std::cell::RefCell<Option<Pid<u64>>> = const { std::cell::RefCell::new(None) };
}

/// A message whose `Serialize` sends another message to the same peer.
struct Reentrant(u64);

impl Serialize for Reentrant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SIDE.with(|side| {
            if let Some(p) = side.borrow().as_ref() {
                let _ = p.send(self.0);
            }
        });
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Reentrant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Reentrant)
    }
}

/// User `Serialize` code runs outside the transport's queue lock: a send from inside it to the
/// same peer goes through (it used to deadlock on pooled TCP and QUIC).
async fn serialize_may_send_to_the_same_peer(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let side_done = spawn_counter(&a, "side", 1);
    let main_got = Arc::new(AtomicU64::new(u64::MAX));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let g = main_got.clone();
    let main = a.spawn(move |mut inbox: Inbox<Reentrant>| async move {
        if let Some(Reentrant(n)) = inbox.recv().await {
            g.store(n, Ordering::SeqCst);
            let _ = tx.take().map(|tx| tx.send(()));
        }
    });
    a.register("main", &main).unwrap();
    let to_main = b.remote::<Reentrant>(a.name(), "main").unwrap();
    let to_side = b.remote::<u64>(a.name(), "side").unwrap();
    // The send runs on a thread of its own, so a deadlock fails the test instead of hanging
    // the runtime.
    let sent = tokio::task::spawn_blocking(move || {
        SIDE.with(|s| *s.borrow_mut() = Some(to_side));
        to_main.send(Reentrant(0)).is_ok()
    });
    assert!(within("the re-entrant send returns", sent).await.unwrap());
    within("the outer message arrives", rx).await.unwrap();
    assert_eq!(main_got.load(Ordering::SeqCst), 0);
    within("the inner message arrives", side_done)
        .await
        .unwrap();
}

/// Stats, admissions of new peers and forgetting idle ones run at once without a lock-order
/// deadlock (stats used to take the peer counters, then the peer table; admission the other
/// way round).
async fn stats_while_peers_come_and_go(t: &str) {
    let limits = Limits::default().with_max_peers(2);
    let a = node_with(t, limits).await;
    spawn_echo(&a, "echo");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let a = a.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += a.stats().peers.len() as u64;
            }
            n
        })
    };
    for i in 0..6 {
        let b = node(t).await;
        let p = b.remote::<Echo>(a.name(), "echo").unwrap();
        // With at most two peers kept, some of these are refused; none may hang.
        let _ = within(&format!("call {i}"), p.call(|r| ("x".into(), r), T)).await;
        b.shutdown().await;
    }
    stop.store(true, Ordering::Relaxed);
    within(
        "the stats thread ends",
        tokio::task::spawn_blocking(move || reader.join()),
    )
    .await
    .unwrap()
    .unwrap();
}

/// A node with an allow-list dials only the nodes on it: a pid of another node, received in a
/// message, cannot be used (the send fails with `DialRefused`, counted), while a node that
/// connected in is still answered.
async fn dial_policy_refuses_unlisted_nodes(t: &str) {
    let b = node(t).await;
    let c = node(t).await;
    let d = node(t).await;
    spawn_echo(&b, "echo");
    spawn_echo(&c, "echo");
    let a = Node::builder()
        .cookie(cookie())
        .listen("127.0.0.1:0")
        .dial_policy(DialPolicy::AllowList(vec![b.name().to_string()]))
        .transport_arc(transport_by_name(t).unwrap())
        .start()
        .await
        .unwrap();
    spawn_echo(&a, "echo");
    // Listed: works.
    let to_b = a.remote::<Echo>(b.name(), "echo").unwrap();
    assert_eq!(
        within("call to B", to_b.call(|r| ("b".into(), r), T))
            .await
            .unwrap(),
        "echo b"
    );
    // Not listed: refused at once, never dialled.
    let to_c = a.remote::<Echo>(c.name(), "echo").unwrap();
    let err = within("call to C", to_c.call(|r| ("c".into(), r), T))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallError::Send(SendErrorKind::Remote(RemoteError::DialRefused(
            c.name().to_string()
        )))
    );
    assert!(
        a.stats()
            .rejected
            .get("dial not allowed")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    assert!(c.stats().peers.iter().all(|p| p.name != a.name()));
    // A node that connected in is answered, even off the list.
    let d_to_a = d.remote::<Echo>(a.name(), "echo").unwrap();
    assert_eq!(
        within("call from D", d_to_a.call(|r| ("d".into(), r), T))
            .await
            .unwrap(),
        "echo d"
    );
}

/// `Pid::kill` on a remote pid kills the process (reason killed, even when it traps exits), and
/// `is_alive` on a remote pid turns false once its node is known to be lost.
async fn remote_kill_and_is_alive(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let x = a.spawn(|mut inbox: Inbox<Echo>| async move {
        inbox.trap_exit(true);
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(text);
        }
    });
    a.register("x", &x).unwrap();
    let down = a.runtime().monitor(&x);
    let remote = b.remote::<Echo>(a.name(), "x").unwrap();
    within("a call", remote.call(|r| ("hi".into(), r), T))
        .await
        .unwrap();
    assert!(remote.is_alive(), "nothing says otherwise yet");
    remote.kill();
    let d = within("x killed", down).await;
    assert_eq!(d.reason, ExitReason::Killed);
    // Its node goes away: the pid is known dead. (A process that outlives its closed mailbox,
    // so that B's monitor stays and keeps per-message TCP probing A.)
    let stubborn = a.spawn(|mut inbox: Inbox<Echo>| async move {
        while inbox.recv().await.is_some() {}
        std::future::pending::<()>().await
    });
    a.register("echo", &stubborn).unwrap();
    let echo = b.remote::<Echo>(a.name(), "echo").unwrap();
    let mut events = b.node_events();
    // On per-message TCP a peer is probed only while something waits on it.
    let _watch = b.runtime().monitor(&echo);
    a.shutdown().await;
    within("A's loss seen", async {
        loop {
            if let Ok(NodeEvent::Down { name, .. }) = events.recv().await
                && name == a.name()
            {
                break;
            }
        }
    })
    .await;
    assert!(!echo.is_alive());
}

/// `Inbox::send_exit` to a remote pid (Erlang's `exit(Pid, Reason)`): a process that traps
/// exits receives the reason and the sender's id as an exit event; one that does not exits
/// with the reason; a normal reason leaves a non-trapping process running; reason killed kills
/// even a trapping one. Each signal arrives after the messages sent before it (a process that
/// does not trap exits ends at once, with messages still in its mailbox, as in Erlang).
async fn remote_exit_signal(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Event<u64>)>();
    let spawn = |name: &'static str, trap: bool| {
        let seen = seen_tx.clone();
        let p = a.spawn(move |mut inbox: Inbox<u64>| async move {
            inbox.trap_exit(trap);
            // Ready: traps exits (or not) from now on.
            let _ = seen.send((name.to_string(), Event::Message(u64::MAX)));
            while let Some(e) = inbox.recv_event().await {
                let _ = seen.send((name.to_string(), e));
            }
        });
        a.register(name, &p).unwrap();
        (a.runtime().monitor(&p), p)
    };
    let (trapper_down, trapper) = spawn("trapper", true);
    let (plain_down, _plain) = spawn("plain", false);
    let (calm_down, calm) = spawn("calm", false);
    // A process on B sends the signals, so that their sender is a real pid of B.
    let (me_tx, me_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let remote = |name: &str| b.remote::<u64>(a.name(), name).unwrap();
    let (to_trapper, to_plain, to_calm) = (remote("trapper"), remote("plain"), remote("calm"));
    b.spawn(move |inbox: Inbox<()>| async move {
        let _ = me_tx.send(inbox.process_id());
        // Make sure the connection is up (and the peer's capabilities known) first.
        to_calm.send(0).unwrap();
        let _ = go_rx.await;
        to_trapper.send(1).unwrap();
        inbox.send_exit(&to_trapper, ExitReason::Shutdown);
        inbox.send_exit(&to_plain, ExitReason::Shutdown);
        inbox.send_exit(&to_calm, ExitReason::Normal);
        to_calm.send(3).unwrap();
        std::future::pending::<()>().await
    });
    let sender = within("the sender's id", me_rx).await.unwrap();
    for _ in 0..3 {
        match within("the three ready", seen_rx.recv()).await {
            Some((_, Event::Message(u64::MAX))) => {}
            other => panic!("expected a ready, got {other:?}"),
        }
    }
    match within("calm's first message", seen_rx.recv()).await {
        Some((who, Event::Message(0))) if who == "calm" => {}
        other => panic!("expected calm's message 0, got {other:?}"),
    }
    go_tx.send(()).unwrap();
    let mut trapper_events = Vec::new();
    let mut calm_events = Vec::new();
    while trapper_events.len() < 2 || calm_events.is_empty() {
        let (who, e) = within("the signals", seen_rx.recv()).await.unwrap();
        match who.as_str() {
            "trapper" => trapper_events.push(e),
            "calm" => calm_events.push(e),
            other => panic!("{other} got {e:?}"),
        }
    }
    assert!(matches!(trapper_events[0], Event::Message(1)));
    match &trapper_events[1] {
        Event::Exit(x) => {
            assert_eq!(x.pid, sender);
            assert_eq!(x.reason, ExitReason::Shutdown);
        }
        other => panic!("expected the trapped exit, got {other:?}"),
    }
    assert_eq!(
        within("plain's exit", plain_down).await.reason,
        ExitReason::Shutdown
    );
    // The normal signal did nothing: the message sent after it arrives.
    assert!(matches!(calm_events[0], Event::Message(3)));
    assert!(calm.is_alive());
    // Killed cannot be trapped.
    b.spawn({
        let t = b.remote::<u64>(a.name(), "trapper").unwrap();
        move |inbox: Inbox<()>| async move { inbox.send_exit(&t, ExitReason::Killed) }
    });
    assert_eq!(
        within("the trapper killed", trapper_down).await.reason,
        ExitReason::Killed
    );
    drop((trapper, calm_down));
}

/// `nodes()` lists the connected peers by proven name, `is_connected` answers for an alias
/// too, and `monitor_nodes` starts with the current state.
async fn nodes_and_monitor_nodes(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    spawn_echo(&a, "echo");
    let port = a.local_addr().unwrap().port();
    let to_a = b
        .remote::<Echo>(&format!("localhost:{port}"), "echo")
        .unwrap();
    within("a call through an alias", to_a.call(|r| ("x".into(), r), T))
        .await
        .unwrap();
    assert_eq!(b.nodes(), vec![a.name().to_string()]);
    assert!(b.is_connected(a.name()));
    assert!(b.is_connected(&format!("localhost:{port}")));
    let mut events = b.monitor_nodes();
    match within("the current state", events.recv()).await {
        Some(NodeEvent::Up { name, incarnation }) => {
            assert_eq!(name, a.name());
            assert_eq!(incarnation, a.incarnation());
        }
        other => panic!("expected A up first, got {other:?}"),
    }
    // A process that outlives its closed mailbox keeps B's monitor, so per-message TCP goes on
    // probing A after A's echo exits with its node.
    let stubborn = a.spawn(|mut inbox: Inbox<u64>| async move {
        while inbox.recv().await.is_some() {}
        std::future::pending::<()>().await
    });
    a.register("stubborn", &stubborn).unwrap();
    let watched = b.remote::<u64>(a.name(), "stubborn").unwrap();
    let _watch = b.runtime().monitor(&watched);
    a.shutdown().await;
    loop {
        match within("A down", events.recv()).await {
            Some(NodeEvent::Down { name, .. }) if name == a.name() => break,
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    assert!(b.nodes().is_empty());
    assert!(!b.is_connected(a.name()));
}

/// After a known exchange, what one node counted out to a peer is what the peer counted in from
/// it: messages and replies, and their bytes on the wire.
async fn counters_agree(t: &str) {
    const N: u64 = 200;
    let a = node(t).await;
    let b = node(t).await;
    spawn_echo(&a, "echo");
    let all = spawn_counter(&a, "sink", N);
    let sink = b.remote::<u64>(a.name(), "sink").unwrap();
    let echo = b.remote::<Echo>(a.name(), "echo").unwrap();
    for i in 0..N {
        sink.send_wait(i).await.unwrap();
    }
    for i in 0..50 {
        within("a call", echo.call(|r| (format!("{i}"), r), T))
            .await
            .unwrap();
    }
    within("all messages", all).await.unwrap();
    let peer = |n: &Node, of: &Node| {
        n.stats()
            .peers
            .into_iter()
            .find(|p| p.name == of.name())
            .unwrap_or_else(|| panic!("{} has no stats for {}", n.name(), of.name()))
    };
    let (b_to_a, a_from_b) = (peer(&b, &a), peer(&a, &b));
    assert_eq!(b_to_a.msgs_out, N + 50);
    assert_eq!(
        (b_to_a.msgs_out, b_to_a.bytes_out),
        (a_from_b.msgs_in, a_from_b.bytes_in)
    );
    assert_eq!(a_from_b.msgs_out, 50, "the replies");
    assert_eq!(
        (a_from_b.msgs_out, a_from_b.bytes_out),
        (b_to_a.msgs_in, b_to_a.bytes_in)
    );
}

common::suite!(
    simultaneous_connect_moves_frames_at_once,
    fifo_through_simultaneous_connects,
    one_down_event_per_loss,
    shutdown_delivers_what_was_queued,
    serialize_may_send_to_the_same_peer,
    stats_while_peers_come_and_go,
    dial_policy_refuses_unlisted_nodes,
    remote_kill_and_is_alive,
    remote_exit_signal,
    nodes_and_monitor_nodes,
    counters_agree,
);

/// Per-message TCP keeps no connection, yet its peers come up like any other transport's: the
/// node reports a peer up once at its first proven handshake (on both sides, whoever dialled),
/// not once per message, and again only after it was seen down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_tcp_peers_come_up_once() {
    let a = node("per-message-tcp").await;
    let b = node("per-message-tcp").await;
    let done = spawn_counter(&a, "sink", 50);
    let mut at_a = a.node_events();
    let mut at_b = b.node_events();
    let sink = b.remote::<u64>(a.name(), "sink").unwrap();
    for i in 0..50 {
        sink.send_wait(i).await.unwrap();
    }
    within("50 messages", done).await.unwrap();
    for (events, peer) in [(&mut at_a, &b), (&mut at_b, &a)] {
        match within("up", events.recv()).await {
            Ok(NodeEvent::Up { name, incarnation }) => {
                assert_eq!(name, peer.name());
                assert_eq!(incarnation, peer.incarnation());
            }
            other => panic!("expected the peer up, got {other:?}"),
        }
    }
    // One more round trip after the messages: no second `Up` came before it.
    let echo = spawn_echo(&a, "echo");
    drop(echo);
    let e = b.remote::<Echo>(a.name(), "echo").unwrap();
    within("a call", e.call(|r| ("x".into(), r), T))
        .await
        .unwrap();
    assert!(
        matches!(
            at_b.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "a second event at B"
    );
    assert!(b.nodes().contains(&a.name().to_string()));
}
