//! The node test suite, run once per transport (per-message TCP, pooled TCP, QUIC).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conc_node::*;
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(20);

fn cookie() -> Cookie {
    Cookie::new("node-suite-cookie").unwrap()
}

async fn node(transport: &str) -> Node {
    node_with(transport, cookie(), Limits::default(), true).await
}

async fn node_with(transport: &str, cookie: Cookie, limits: Limits, listen: bool) -> Node {
    let mut b = Node::builder()
        .cookie(cookie)
        .limits(limits)
        .transport_arc(transport_by_name(transport).unwrap());
    if listen {
        b = b.listen("127.0.0.1:0");
    }
    b.start().await.unwrap()
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

async fn echo_call(p: &Pid<Echo>, text: &str) -> Result<String, CallError> {
    p.call(|r| (text.to_string(), r), T).await
}

// ---- the tests, each taking a transport name ----

/// The seed's exchange: a call to a named process on another node.
async fn call_by_name(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    spawn_echo(&a, "process1");
    let p = b.remote::<Echo>(a.name(), "process1").unwrap();
    assert_eq!(
        echo_call(&p, "test-message").await.unwrap(),
        "echo test-message"
    );
    assert!(!p.is_local());
    assert_eq!(p.to_string(), format!("conc://{}/name/process1", a.name()));
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    label: String,
    inner: Vec<Option<Nested>>,
}

#[derive(Serialize, Deserialize)]
struct Nested {
    reply_to: Pid<String>,
}

/// A pid inside a nested message arrives as a working remote pid.
async fn nested_pid_is_replied_to(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let responder = a.spawn(|mut inbox: Inbox<Envelope>| async move {
        while let Some(env) = inbox.recv().await {
            for n in env.inner.into_iter().flatten() {
                n.reply_to.send(format!("re: {}", env.label)).unwrap();
            }
        }
    });
    a.register("responder", &responder).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let me = b.spawn(move |mut inbox: Inbox<String>| async move {
        if let Some(s) = inbox.recv().await {
            let _ = tx.take().unwrap().send(s);
        }
    });
    let target = b.remote::<Envelope>(a.name(), "responder").unwrap();
    target
        .send(Envelope {
            label: "hello".into(),
            inner: vec![None, Some(Nested { reply_to: me })],
        })
        .unwrap();
    let got = tokio::time::timeout(T, rx).await.unwrap().unwrap();
    assert_eq!(got, "re: hello");
}

/// A `ReplyTo` forwarded inside a message to a process on a third node: the answer still
/// reaches the original caller.
async fn reply_to_forwarded_to_third_node(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let c = node(t).await;
    spawn_echo(&c, "worker");
    let worker = a.remote::<Echo>(c.name(), "worker").unwrap();
    // The front on A forwards the ReplyTo it got from B to the worker on C.
    let front = a.spawn(move |mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            worker.send((format!("via front {text}"), reply)).unwrap();
        }
    });
    a.register("front", &front).unwrap();
    let p = b.remote::<Echo>(a.name(), "front").unwrap();
    assert_eq!(echo_call(&p, "x").await.unwrap(), "echo via front x");
}

/// Calls in both directions at once.
async fn calls_both_directions(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    spawn_echo(&a, "e");
    spawn_echo(&b, "e");
    let to_a = b.remote::<Echo>(a.name(), "e").unwrap();
    let to_b = a.remote::<Echo>(b.name(), "e").unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (pa, pb) = (to_a.clone(), to_b.clone());
        tasks.push(tokio::spawn(async move {
            let (ta, tb) = (format!("a{i}"), format!("b{i}"));
            let (x, y) = tokio::join!(echo_call(&pa, &ta), echo_call(&pb, &tb));
            assert_eq!(x.unwrap(), format!("echo a{i}"));
            assert_eq!(y.unwrap(), format!("echo b{i}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[derive(Serialize, Deserialize)]
enum Count {
    Item(u64, u64),
    Done(ReplyTo<Vec<u64>>),
}

/// A sink that checks per-sender order and reports how many items each sender delivered.
fn spawn_counter(n: &Node, name: &str) {
    let p = n.spawn(|mut inbox: Inbox<Count>| async move {
        let mut next: Vec<u64> = Vec::new();
        let mut in_order = true;
        while let Some(m) = inbox.recv().await {
            match m {
                Count::Item(sender, seq) => {
                    let s = sender as usize;
                    if next.len() <= s {
                        next.resize(s + 1, 0);
                    }
                    if next[s] != seq {
                        in_order = false;
                    }
                    next[s] = seq + 1;
                }
                Count::Done(reply) => {
                    let mut v = next.clone();
                    if !in_order {
                        v.push(u64::MAX);
                    }
                    let _ = reply.send(v);
                }
            }
        }
    });
    n.register(name, &p).unwrap();
}

async fn send_items(p: &Pid<Count>, sender: u64, n: u64) {
    for i in 0..n {
        p.send_wait(Count::Item(sender, i)).await.unwrap();
    }
}

/// 10,000 async messages from one sender arrive complete and in order.
async fn many_messages_in_order(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    spawn_counter(&a, "count");
    let p = b.remote::<Count>(a.name(), "count").unwrap();
    let n = 10_000;
    send_items(&p, 0, n).await;
    let got = p.call(Count::Done, Duration::from_secs(120)).await.unwrap();
    assert_eq!(got, vec![n]);
}

/// A million messages from one sender and from 8 concurrent senders arrive complete and in
/// per-pair order (pooled transports only).
async fn million_messages_one_and_eight_senders(t: &str) {
    if t == "per-message-tcp" {
        return;
    }
    let a = node(t).await;
    let b = node(t).await;
    spawn_counter(&a, "count1");
    spawn_counter(&a, "count8");
    let p1 = b.remote::<Count>(a.name(), "count1").unwrap();
    send_items(&p1, 0, 1_000_000).await;
    let got = p1
        .call(Count::Done, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(got, vec![1_000_000]);
    let p8 = b.remote::<Count>(a.name(), "count8").unwrap();
    let mut tasks = Vec::new();
    for s in 0..8u64 {
        let p = p8.clone();
        tasks.push(tokio::spawn(
            async move { send_items(&p, s, 125_000).await },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = p8
        .call(Count::Done, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(got, vec![125_000; 8]);
}

/// A frame whose type does not match its target is refused, the call fails at once with the
/// reason, and the refusal is counted.
async fn type_mismatch_refused(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let counter = Arc::new(AtomicUsize::new(0));
    let c2 = counter.clone();
    let p = a.spawn(move |mut inbox: Inbox<u64>| async move {
        while inbox.recv().await.is_some() {
            c2.fetch_add(1, Ordering::SeqCst);
        }
    });
    a.register("numbers", &p).unwrap();
    let wrong = b.remote::<Echo>(a.name(), "numbers").unwrap();
    let err = echo_call(&wrong, "not a number").await.unwrap_err();
    match &err {
        CallError::Refused { reason, .. } => assert_eq!(*reason, Refusal::TypeMismatch),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(counter.load(Ordering::SeqCst), 0);
    assert!(a.dead_letters() >= 1);
    assert!(b.dead_letters() >= 1);
    // Dead letters are also counted per peer, by reason.
    let stats = a.stats();
    let from_b = stats.peers.iter().find(|p| p.name == b.name()).unwrap();
    assert_eq!(from_b.dead_letters.get("refused: type mismatch"), Some(&1));
}

/// An unknown name is refused.
async fn unknown_name_refused(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let p = b.remote::<Echo>(a.name(), "nobody").unwrap();
    match echo_call(&p, "x").await.unwrap_err() {
        CallError::Refused { reason, .. } => assert_eq!(reason, Refusal::UnknownName),
        other => panic!("unexpected {other:?}"),
    }
}

/// A peer with the wrong cookie is refused and nothing it sends is delivered.
async fn wrong_cookie_refused(t: &str) {
    let a = node(t).await;
    let intruder = node_with(t, Cookie::new("wrong").unwrap(), Limits::default(), true).await;
    let delivered = Arc::new(AtomicUsize::new(0));
    let d2 = delivered.clone();
    let sink = a.spawn(move |mut inbox: Inbox<String>| async move {
        while inbox.recv().await.is_some() {
            d2.fetch_add(1, Ordering::SeqCst);
        }
    });
    a.register("sink", &sink).unwrap();
    let p = intruder.remote::<String>(a.name(), "sink").unwrap();
    for i in 0..10 {
        let _ = p.send(format!("m{i}"));
    }
    spawn_echo(&a, "echo");
    let e = intruder.remote::<Echo>(a.name(), "echo").unwrap();
    assert!(echo_call(&e, "x").await.is_err());
    // A legitimate peer still gets through; its message lands after anything the intruder
    // might have managed, so the count is final.
    let friend = node(t).await;
    let e = friend.remote::<Echo>(a.name(), "echo").unwrap();
    assert_eq!(echo_call(&e, "ok").await.unwrap(), "echo ok");
    assert_eq!(delivered.load(Ordering::SeqCst), 0);
    // The refusal is counted by A's accepting task, which may finish after the intruder has
    // seen its call fail: wait for it (bounded).
    let deadline = Instant::now() + T;
    while a.stats().rejected.is_empty() {
        assert!(Instant::now() < deadline, "A counted no refusal");
        tokio::task::yield_now().await;
    }
}

/// A message over the frame limit is refused by the sender with an error that hands it back.
async fn oversized_message_refused(t: &str) {
    let limits = Limits::default().with_max_frame(64 * 1024);
    let a = node_with(t, cookie(), limits.clone(), true).await;
    let b = node_with(t, cookie(), limits, true).await;
    let p = b.remote::<Vec<u8>>(a.name(), "anything").unwrap();
    let err = p.send(vec![0u8; 200 * 1024]).unwrap_err();
    assert!(
        matches!(err.kind, SendErrorKind::Remote(RemoteError::Encode(_))),
        "{err}"
    );
    assert_eq!(err.message.len(), 200 * 1024);
}

/// A receiver with a smaller frame limit refuses a bigger frame from a sender with a larger
/// limit, and keeps serving.
async fn frame_over_receiver_limit_refused(t: &str) {
    let small = Limits::default().with_max_frame(16 * 1024);
    let a = node_with(t, cookie(), small, true).await;
    let b = node(t).await;
    let got = Arc::new(AtomicUsize::new(0));
    let g2 = got.clone();
    let p = a.spawn(move |mut inbox: Inbox<Vec<u8>>| async move {
        while inbox.recv().await.is_some() {
            g2.fetch_add(1, Ordering::SeqCst);
        }
    });
    a.register("bytes", &p).unwrap();
    let remote = b.remote::<Vec<u8>>(a.name(), "bytes").unwrap();
    remote.send(vec![1u8; 100 * 1024]).unwrap();
    spawn_echo(&a, "echo");
    let c = node(t).await;
    let e = c.remote::<Echo>(a.name(), "echo").unwrap();
    assert_eq!(echo_call(&e, "still up").await.unwrap(), "echo still up");
    // The refusal is counted on the receiver.
    let deadline = Instant::now() + T;
    while a.stats().rejected.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!a.stats().rejected.is_empty());
    assert_eq!(got.load(Ordering::SeqCst), 0);
}

/// A pid printed as a URI on one node and parsed on another works.
async fn uri_round_trip(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let p = spawn_echo(&a, "echo");
    let uri = p.to_string();
    assert!(uri.starts_with(&format!("conc://{}/", a.name())), "{uri}");
    let remote: Pid<Echo> = b.resolve(&uri).unwrap();
    assert_eq!(remote.to_string(), uri);
    assert_eq!(echo_call(&remote, "u").await.unwrap(), "echo u");
    let by_name: Pid<Echo> = b
        .resolve(&format!("conc://{}/name/echo", a.name()))
        .unwrap();
    assert_eq!(echo_call(&by_name, "n").await.unwrap(), "echo n");
    // The same URI resolved on the owning node is the local pid itself.
    let local: Pid<Echo> = a.resolve(&uri).unwrap();
    assert!(local.is_local());
    assert_eq!(local, p);
}

/// A call to a node that is not running fails with a connection error, not a hang.
async fn call_to_dead_node_fails(t: &str) {
    let b = node(t).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = b
        .remote::<Echo>(&format!("127.0.0.1:{port}"), "process1")
        .unwrap();
    // The call's own timeout is far beyond the bound on the wait: a call that waited for its
    // timeout instead of failing on the refused connection fails the test at `T`.
    let err = tokio::time::timeout(
        T,
        p.call(|r| ("x".to_string(), r), Duration::from_secs(3600)),
    )
    .await
    .expect("a call to a dead node waited instead of failing")
    .unwrap_err();
    assert!(
        !matches!(err, CallError::Timeout(_)),
        "expected a connection error, got {err:?}"
    );
    assert!(b.dead_letters() >= 1);
}

/// A late reply is dropped and counted; the call saw a timeout.
async fn late_reply_dropped(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    // The callee answers only once the test lets it, after the call has timed out.
    let release = Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    let slow = a.spawn(move |mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            released.notified().await;
            let _ = reply.send(text);
        }
    });
    a.register("slow", &slow).unwrap();
    spawn_echo(&a, "echo");
    let p = b.remote::<Echo>(a.name(), "slow").unwrap();
    let err = p
        .call(|r| ("late".to_string(), r), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err, CallError::Timeout(Duration::from_millis(50)));
    // `notify_one` stores a permit if the callee does not wait yet.
    release.notify_one();
    let deadline = Instant::now() + T;
    while b.stats().late_replies == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.stats().late_replies, 1);
    assert_eq!(b.runtime().node_side().pending_remote_calls(), 0);
}

/// A remote callee that drops the reply handle makes the call fail at once, not time out.
async fn dropped_reply_fails_call(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let rude = a.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((_text, reply)) = inbox.recv().await {
            drop(reply);
        }
    });
    a.register("rude", &rude).unwrap();
    let p = b.remote::<Echo>(a.name(), "rude").unwrap();
    let err = p
        .call(|r| ("x".to_string(), r), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(err, CallError::NoReply);
}

/// A remote monitor delivers Down with the exit reason.
async fn remote_monitor_fires(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let victim = spawn_echo(&a, "victim");
    let remote = b.remote::<Echo>(a.name(), "victim").unwrap();
    // A round trip first, so the name is known registered.
    echo_call(&remote, "hi").await.unwrap();
    let by_id: Pid<Echo> = b.resolve(&victim.to_string()).unwrap();
    let mon = b.runtime().monitor(&by_id);
    // Make sure the monitor frame has been processed before the kill.
    echo_call(&remote, "sync").await.unwrap();
    victim.kill();
    let down = tokio::time::timeout(T, mon).await.unwrap();
    assert_eq!(down.reason, ExitReason::Killed);
}

/// A process's last messages reach a watcher on another node before its `Down`, and a monitor
/// set up before a message is in place when that message arrives (on QUIC, where messages to
/// different processes ride different streams, the `Down` waits behind a barrier and the
/// monitor rides its target's stream).
async fn down_follows_last_messages(t: &str) {
    // A generous silence bound: this is about order, not about the failure detector (under a
    // loaded CI machine a 3 s bound can declare a busy peer down).
    let limits = Limits::default().with_heartbeat_timeout(Duration::from_secs(30));
    let a = node_with(t, cookie(), limits.clone(), true).await;
    let b = node_with(t, cookie(), limits, true).await;
    const PAIRS: usize = 6;
    const SIZE: usize = 8 << 10;
    let n: usize = if t == "per-message-tcp" { 20 } else { 200 };
    let mut ev_a = a.node_events();
    let mut ev_b = b.node_events();
    tokio::spawn(async move {
        while let Ok(e) = ev_a.recv().await {
            eprintln!("{:?} A event {e:?}", std::time::SystemTime::now());
        }
    });
    tokio::spawn(async move {
        while let Ok(e) = ev_b.recv().await {
            eprintln!("{:?} B event {e:?}", std::time::SystemTime::now());
        }
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..PAIRS {
        // On A: waits for its watcher's pid, sends it n chunks, and ends.
        let sender = a.spawn(move |mut inbox: Inbox<Pid<Vec<u8>>>| async move {
            if let Some(to) = inbox.recv().await {
                for _ in 0..n {
                    to.send_wait(vec![7u8; SIZE]).await.unwrap();
                }
            }
        });
        let sender: Pid<Pid<Vec<u8>>> = b.resolve(&sender.to_string()).unwrap();
        let tx = tx.clone();
        // On B: monitors the sender, tells it to go, counts chunks until the Down.
        b.spawn(move |mut inbox: Inbox<Vec<u8>>| async move {
            inbox.monitor(&sender);
            sender.send(inbox.pid()).unwrap();
            let mut got = 0;
            loop {
                match inbox.recv_event().await {
                    Some(Event::Message(_)) => got += 1,
                    Some(Event::Down(d)) => {
                        let _ = tx.send((got, d.reason));
                        return;
                    }
                    _ => return,
                }
            }
        });
    }
    for i in 0..PAIRS {
        let Ok(res) = tokio::time::timeout(T, rx.recv()).await else {
            panic!(
                "{t}: watcher {i} of {PAIRS} did not report: A {:#?} B {:#?}",
                a.stats(),
                b.stats()
            );
        };
        let (got, reason) = res.unwrap();
        assert_eq!(
            reason,
            ExitReason::Normal,
            "{t}: the monitor was not in place in time"
        );
        assert_eq!(got, n, "{t}: the Down overtook the sender's last messages");
    }
}

/// A restarted node has a new incarnation: pids of the old one are refused.
async fn old_incarnation_refused(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let p = spawn_echo(&a, "echo");
    let uri = p.to_string();
    let name = a.name().to_string();
    a.shutdown().await;
    drop(a);
    // A new node on the same address, as soon as the address can be bound again.
    let deadline = Instant::now() + T;
    let a2 = loop {
        match Node::builder()
            .listen(name.clone())
            .cookie(cookie())
            .transport_arc(transport_by_name(t).unwrap())
            .start()
            .await
        {
            Ok(node) => break node,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{t}: cannot listen on {name} again: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    spawn_echo(&a2, "echo");
    let by_name = b.remote::<Echo>(&name, "echo").unwrap();
    // B never spoke to the old node, so its first call reaches the new one.
    assert_eq!(
        echo_call(&by_name, "again").await.unwrap(),
        "echo again",
        "{t}: the named process on the restarted node answers"
    );
    let old: Pid<Echo> = b.resolve(&uri).unwrap();
    match echo_call(&old, "old").await.unwrap_err() {
        CallError::Refused { reason, .. } => assert_eq!(reason, Refusal::NoSuchProcess),
        other => panic!("unexpected {other:?}"),
    }
}

/// A node that does not listen gets its replies back over the connection it opened
/// (pooled transports; per-message TCP needs a listener for replies).
async fn reply_to_node_without_listener(t: &str) {
    let a = node(t).await;
    let client = node_with(t, cookie(), Limits::default(), false).await;
    assert!(client.local_addr().is_none());
    spawn_echo(&a, "echo");
    let p = client.remote::<Echo>(a.name(), "echo").unwrap();
    if t == "per-message-tcp" {
        // Per-message TCP answers on a new connection to the caller, which has no address:
        // the call fails at once, saying so, instead of waiting for its timeout.
        assert_eq!(
            p.call(|r| ("x".to_string(), r), Duration::from_secs(3600))
                .await,
            Err(CallError::Send(SendErrorKind::Remote(
                RemoteError::NoListener
            )))
        );
        return;
    }
    assert_eq!(
        echo_call(&p, "no listener").await.unwrap(),
        "echo no listener"
    );
}

/// The outbound queue to a peer is bounded: `send` fails with "peer busy" and hands the
/// message back; `send_wait` waits for room.
async fn bounded_outbound_queue(t: &str) {
    let limits = Limits::default()
        .with_max_queue_bytes(4096)
        .with_max_queue_frames(4);
    let a = node(t).await;
    let b = node_with(t, cookie(), limits, true).await;
    spawn_counter(&a, "count");
    let p = b.remote::<Count>(a.name(), "count").unwrap();
    let mut busy = None;
    for i in 0..100_000u64 {
        if let Err(e) = p.send(Count::Item(0, i)) {
            busy = Some((i, e));
            break;
        }
    }
    let (i, e) = busy.expect("the bounded queue refuses eventually");
    // The queue depth shows in the stats.
    let stats = b.stats();
    let to_a = stats.peers.iter().find(|p| p.name == a.name()).unwrap();
    assert!(to_a.queued_frames > 0, "{to_a:?}");
    assert!(
        matches!(e.kind, SendErrorKind::Remote(RemoteError::PeerBusy(_))),
        "{e}"
    );
    assert!(matches!(e.message, Count::Item(0, n) if n == i));
    // The rest goes through with send_wait, in order.
    for j in i..i + 500 {
        p.send_wait(Count::Item(0, j)).await.unwrap();
    }
    // A call is refused at once while the queue is full (the documented policy): wait for room.
    let got = loop {
        match p.call(Count::Done, Duration::from_secs(60)).await {
            Err(CallError::Send(SendErrorKind::Remote(RemoteError::PeerBusy(_)))) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(got, vec![i + 500]);
}

/// Without a started node, only local sends work, and resolving a remote reference says to
/// start the node.
async fn not_started_is_local_only(_t: &str) {
    let rt = Runtime::new();
    let err = rt
        .resolve::<String>(&ProcessUri::named("127.0.0.1:9", "x"))
        .unwrap_err();
    assert!(err.to_string().contains("start"), "{err}");
}

/// Simultaneous connects from both sides end with one working connection (pooled).
async fn simultaneous_connect(t: &str) {
    if t == "per-message-tcp" {
        return;
    }
    for _ in 0..5 {
        let a = node(t).await;
        let b = node(t).await;
        spawn_echo(&a, "e");
        spawn_echo(&b, "e");
        let to_a = b.remote::<Echo>(a.name(), "e").unwrap();
        let to_b = a.remote::<Echo>(b.name(), "e").unwrap();
        let (x, y) = tokio::join!(echo_call(&to_a, "1"), echo_call(&to_b, "2"));
        // The race costs nothing: the first exchange in each direction is answered.
        assert_eq!(x.unwrap(), "echo 1");
        assert_eq!(y.unwrap(), "echo 2");
        let (x, y) = tokio::join!(echo_call(&to_a, "3"), echo_call(&to_b, "4"));
        assert_eq!(x.unwrap(), "echo 3");
        assert_eq!(y.unwrap(), "echo 4");
        let conns_a = a
            .stats()
            .peers
            .iter()
            .filter(|p| p.connected_since.is_some())
            .count();
        let conns_b = b
            .stats()
            .peers
            .iter()
            .filter(|p| p.connected_since.is_some())
            .count();
        assert_eq!((conns_a, conns_b), (1, 1));
    }
}

/// Links across nodes propagate abnormal exits both ways.
async fn remote_links_propagate(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    // B's victim dies -> A's linked process dies with the same reason.
    let victim = spawn_echo(&b, "victim");
    let victim_uri = victim.to_string();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let la = a.spawn(move |mut inbox: Inbox<String>| async move {
        let _ = ready_tx.send(());
        while inbox.recv().await.is_some() {}
    });
    let mon = a.runtime().monitor(&la);
    ready_rx.await.unwrap();
    let remote_victim: Pid<Echo> = a.resolve(&victim_uri).unwrap();
    // Link from inside the process.
    let (linked_tx, linked_rx) = tokio::sync::oneshot::channel::<()>();
    let linker = a.spawn(move |mut inbox: Inbox<Pid<Echo>>| async move {
        let target = inbox.recv().await.unwrap();
        inbox.link(&target);
        let _ = linked_tx.send(());
        std::future::pending::<()>().await;
    });
    let linker_mon = a.runtime().monitor(&linker);
    linker.send(remote_victim.clone()).unwrap();
    linked_rx.await.unwrap();
    // B knows of the link once a call sent after it on the same connection has been answered.
    echo_call(&remote_victim, "sync").await.unwrap();
    victim.kill();
    let down = tokio::time::timeout(T, linker_mon).await.unwrap();
    assert_eq!(down.reason, ExitReason::Killed);
    la.kill();
    let _ = mon.await;

    // The other direction: A's process panics -> B's linked process dies.
    let target =
        b.spawn(|mut inbox: Inbox<String>| async move { while inbox.recv().await.is_some() {} });
    let target_mon = b.runtime().monitor(&target);
    let target_remote: Pid<String> = a.resolve(&target.to_string()).unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (linked_tx, linked_rx) = tokio::sync::oneshot::channel::<()>();
    let doomed = a.spawn(move |inbox: Inbox<String>| async move {
        inbox.link(&target_remote);
        let _ = linked_tx.send(());
        let _ = go_rx.await;
        panic!("boom");
    });
    linked_rx.await.unwrap();
    // Make sure B processed the link frame: a call on the same connection after it.
    spawn_echo(&b, "sync");
    let sync = a.remote::<Echo>(b.name(), "sync").unwrap();
    echo_call(&sync, "x").await.unwrap();
    go_tx.send(()).unwrap();
    let down = tokio::time::timeout(T, target_mon).await.unwrap();
    assert_eq!(down.reason, ExitReason::Panic("boom".into()));
    drop(doomed);
}

/// A node that shuts down is seen down by its peers, and calls waiting on it fail at once.
async fn shutdown_seen_as_node_down(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let slow = a.spawn(move |mut inbox: Inbox<Echo>| async move {
        while let Some((_t, reply)) = inbox.recv().await {
            // Never answers; keeps the handle so the call waits.
            let _ = arrived_tx.send(());
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(reply);
        }
    });
    a.register("slow", &slow).unwrap();
    spawn_echo(&a, "echo");
    let e = b.remote::<Echo>(a.name(), "echo").unwrap();
    echo_call(&e, "warm up").await.unwrap();
    let mut events = b.node_events();
    let p = b.remote::<Echo>(a.name(), "slow").unwrap();
    let call = tokio::spawn(async move {
        p.call(|r| ("wait".to_string(), r), Duration::from_secs(120))
            .await
    });
    // The request reached the callee: the call now waits on node A.
    tokio::time::timeout(T, arrived.recv())
        .await
        .expect("the call reached the callee")
        .unwrap();
    a.shutdown().await;
    let res = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            res,
            Err(CallError::Exited(ExitReason::NoConnection)) | Err(CallError::Send(_))
        ),
        "{res:?}"
    );
    let down = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(NodeEvent::Down { name, .. }) = events.recv().await {
                return name;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(down, a.name());
}

/// A slow consumer with a bounded mailbox fed by a fast remote sender: nothing is lost, order
/// holds, and the sender is held back (its sends wait) instead of anything growing unbounded.
async fn remote_backpressure_to_bounded_mailbox(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let p = a.spawn_with(
        SpawnOptions::bounded(16),
        |mut inbox: Inbox<Count>| async move {
            let mut next = 0u64;
            let mut ok = true;
            while let Some(m) = inbox.recv().await {
                match m {
                    Count::Item(_, seq) => {
                        ok &= seq == next;
                        next = seq + 1;
                        if seq % 64 == 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Count::Done(reply) => {
                        let _ = reply.send(if ok { vec![next] } else { vec![u64::MAX] });
                    }
                }
            }
        },
    );
    a.register("slow", &p).unwrap();
    let remote = b.remote::<Count>(a.name(), "slow").unwrap();
    let n = if t == "per-message-tcp" { 300 } else { 5_000 };
    send_items(&remote, 0, n).await;
    let got = remote
        .call(Count::Done, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(got, vec![n]);
    assert_eq!(a.dead_letters(), 0, "{:?}", a.stats().dead_letters);
}

common::suite!(
    call_by_name,
    nested_pid_is_replied_to,
    reply_to_forwarded_to_third_node,
    calls_both_directions,
    many_messages_in_order,
    million_messages_one_and_eight_senders,
    type_mismatch_refused,
    unknown_name_refused,
    wrong_cookie_refused,
    oversized_message_refused,
    frame_over_receiver_limit_refused,
    uri_round_trip,
    call_to_dead_node_fails,
    late_reply_dropped,
    dropped_reply_fails_call,
    remote_monitor_fires,
    down_follows_last_messages,
    old_incarnation_refused,
    reply_to_node_without_listener,
    bounded_outbound_queue,
    not_started_is_local_only,
    simultaneous_connect,
    remote_links_propagate,
    shutdown_seen_as_node_down,
    remote_backpressure_to_bounded_mailbox,
);
