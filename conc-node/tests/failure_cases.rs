//! Regression tests for failure cases, run once per transport (per-message TCP, pooled TCP,
//! pooled TCP over TLS, QUIC): a node reached by another name (an alias such as
//! `localhost:<port>` for `127.0.0.1:<port>`), links and monitors by name, replies that cannot
//! be sent, and calls around a node's shutdown.
//!
//! No test sleeps to synchronise: each waits for the event it expects with a generous deadline
//! ([`WAIT`]) and fails with a message saying what never came. A monitor or link is known to be
//! in place on the remote node once a call on the same target (same lane) has been answered
//! after it. The `control_*` tests run a scenario through the node's real name (or by id) where
//! the alias (or by-name) variant is the regression test.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use conc_node::*;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The timeout of ordinary calls (as in `node.rs`).
const T: Duration = Duration::from_secs(20);
/// How long a test waits for an event it expects before failing.
const WAIT: Duration = Duration::from_secs(30);
/// The timeout of calls that must fail at once: far beyond `WAIT`, so a call that only fails
/// by timing out fails the test instead.
const CALL_T: Duration = Duration::from_secs(120);

fn cookie() -> Cookie {
    Cookie::new("failure-cases-cookie").expect("a valid cookie")
}

async fn node(transport: &str) -> Node {
    node_with(transport, cookie(), Limits::default(), true).await
}

async fn node_with(transport: &str, cookie: Cookie, limits: Limits, listen: bool) -> Node {
    let mut b = Node::builder()
        .cookie(cookie)
        .limits(limits)
        .transport_arc(transport_by_name(transport).expect("a compiled-in transport"));
    if listen {
        b = b.listen("127.0.0.1:0");
    }
    b.start().await.expect("the node starts")
}

/// Another name of the same node: `localhost:<port>` for `127.0.0.1:<port>`.
fn alias(n: &Node) -> String {
    format!(
        "localhost:{}",
        n.local_addr().expect("a listening node").port()
    )
}

/// The name to reach `n` by: its alias, or its real name.
fn via(n: &Node, use_alias: bool) -> String {
    if use_alias {
        alias(n)
    } else {
        n.name().to_string()
    }
}

type Echo = (String, ReplyTo<String>);

fn spawn_echo(n: &Node, name: &str) -> Pid<Echo> {
    let p = n.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(format!("echo {text}"));
        }
    });
    n.register(name, &p).expect("the name is free");
    p
}

/// An echo like [`spawn_echo`] that does not exit when its node shuts down (its mailbox
/// closes): it waits forever instead, so the only news of it a peer can get is that the
/// connection was lost.
fn spawn_stubborn_echo(n: &Node, name: &str) -> Pid<Echo> {
    let p = n.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(format!("echo {text}"));
        }
        std::future::pending::<()>().await;
    });
    n.register(name, &p).expect("the name is free");
    p
}

async fn echo_call(p: &Pid<Echo>, text: &str) -> Result<String, CallError> {
    p.call(|r| (text.to_string(), r), T).await
}

/// A process registered as `name` that never answers: it keeps every reply handle (even after
/// its mailbox closes) and reports each request's text on the returned channel.
fn spawn_holder(n: &Node, name: &str) -> (Pid<Echo>, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let p = n.spawn(move |mut inbox: Inbox<Echo>| async move {
        let mut held = Vec::new();
        while let Some((text, reply)) = inbox.recv().await {
            held.push(reply);
            let _ = tx.send(text);
        }
        // Neither answers nor drops the handles.
        std::future::pending::<()>().await;
        drop(held);
    });
    n.register(name, &p).expect("the name is free");
    (p, rx)
}

/// Waits for `fut` at most [`WAIT`]; fails the test with `what` if it does not complete.
async fn within<F: Future>(t: &str, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{t}: {what}: did not happen within {WAIT:?}"),
    }
}

/// The process id of a local pid.
fn id_of<M: Send + 'static>(p: &Pid<M>) -> ProcessId {
    p.id().expect("a local pid has a process id")
}

/// The next `NodeEvent::Down` on `events` (name, reason); never resolves if the channel closes.
async fn next_node_down(events: &mut broadcast::Receiver<NodeEvent>) -> (String, DownReason) {
    loop {
        match events.recv().await {
            Ok(NodeEvent::Down { name, reason }) => return (name, reason),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

// ---- scenarios shared by a regression test and its control ----

/// On A an echo "x"; B reaches it through `via`, calls it, monitors it (`Runtime::monitor`),
/// makes sure A has the monitor (a call on the same target after it), and A kills x. Returns
/// B's `Down` and x's real process id.
async fn monitored_kill(t: &str, use_alias: bool) -> (Down, ProcessId) {
    let a = node(t).await;
    let b = node(t).await;
    let x = spawn_echo(&a, "x");
    let p = b
        .remote::<Echo>(&via(&a, use_alias), "x")
        .expect("a remote pid");
    let first = within(t, "the first call", echo_call(&p, "hi")).await;
    assert_eq!(first, Ok("echo hi".to_string()), "{t}: the first call");
    let mon = b.runtime().monitor(&p);
    let sync = within(t, "the call after the monitor", echo_call(&p, "sync")).await;
    assert_eq!(
        sync,
        Ok("echo sync".to_string()),
        "{t}: the call after the monitor"
    );
    a.runtime().kill(&x);
    let down = within(t, "B's Down for the killed process", mon).await;
    (down, id_of(&x))
}

/// B monitors an echo on A and has a call pending to a holder on A, both through `via`; A shuts
/// down. Neither process exits, so both must end with no-connection.
async fn node_shutdown_seen(t: &str, use_alias: bool) {
    let a = node(t).await;
    let b = node(t).await;
    spawn_stubborn_echo(&a, "x");
    let (_hold, mut held) = spawn_holder(&a, "hold");
    let name = via(&a, use_alias);
    let p = b.remote::<Echo>(&name, "x").expect("a remote pid");
    let first = within(t, "the first call", echo_call(&p, "hi")).await;
    assert_eq!(first, Ok("echo hi".to_string()), "{t}: the first call");
    let mon = b.runtime().monitor(&p);
    let sync = within(t, "the call after the monitor", echo_call(&p, "sync")).await;
    assert_eq!(
        sync,
        Ok("echo sync".to_string()),
        "{t}: the call after the monitor"
    );
    let h = b.remote::<Echo>(&name, "hold").expect("a remote pid");
    let call = tokio::spawn(async move { h.call(|r| ("wait".to_string(), r), CALL_T).await });
    let got = within(t, "the holder receiving the request", held.recv()).await;
    assert_eq!(got.as_deref(), Some("wait"), "{t}: the holder's request");
    a.shutdown().await;
    let down = within(t, "B's Down after A shut down", mon).await;
    assert_eq!(down.reason, ExitReason::NoConnection, "{t}: {down:?}");
    let res = match within(t, "the pending call to end after A shut down", call).await {
        Ok(res) => res,
        Err(e) => panic!("{t}: the call task failed: {e}"),
    };
    assert_eq!(
        res,
        Err(CallError::Exited(ExitReason::NoConnection)),
        "{t}: the pending call"
    );
}

/// B hands a pid of A's "x", built through `via`, to a process on C; that process calls it,
/// monitors it, and reports its `Down` when A kills x.
async fn pid_to_third_node(t: &str, use_alias: bool) {
    let a = node(t).await;
    let b = node(t).await;
    let c = node(t).await;
    let x = spawn_echo(&a, "x");
    let p = b
        .remote::<Echo>(&via(&a, use_alias), "x")
        .expect("a remote pid");
    type Calls = (Result<String, CallError>, Result<String, CallError>);
    let (ready_tx, ready_rx) = oneshot::channel::<Calls>();
    let (down_tx, down_rx) = oneshot::channel::<Down>();
    let watcher = c.spawn(move |mut inbox: Inbox<Pid<Echo>>| async move {
        let Some(p) = inbox.recv().await else {
            return;
        };
        let first = echo_call(&p, "from c").await;
        inbox.monitor(&p);
        let sync = echo_call(&p, "sync").await;
        let _ = ready_tx.send((first, sync));
        while let Some(ev) = inbox.recv_event().await {
            if let Event::Down(d) = ev {
                let _ = down_tx.send(d);
                return;
            }
        }
    });
    c.register("watcher", &watcher).expect("the name is free");
    let to_watcher = b
        .remote::<Pid<Echo>>(c.name(), "watcher")
        .expect("a remote pid");
    if let Err(e) = to_watcher.send(p) {
        panic!("{t}: sending the pid to C failed: {e}");
    }
    let (first, sync) = match within(t, "C's process calling the pid", ready_rx).await {
        Ok(calls) => calls,
        Err(_) => panic!("{t}: C's process ended before calling the pid"),
    };
    assert_eq!(first, Ok("echo from c".to_string()), "{t}: C's call");
    assert_eq!(
        sync,
        Ok("echo sync".to_string()),
        "{t}: C's call after its monitor"
    );
    a.runtime().kill(&x);
    let down = match within(t, "C's Down for the killed process", down_rx).await {
        Ok(d) => d,
        Err(_) => panic!("{t}: C's process ended without a Down"),
    };
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
}

/// A process on B links to A's "s" (by name, or by id), then panics: "s" must exit with the
/// panic's reason.
async fn linker_panic_kills_target(t: &str, by_name: bool) {
    let a = node(t).await;
    let b = node(t).await;
    let s = spawn_echo(&a, "s");
    let s_mon = a.runtime().monitor(&s);
    let target: Pid<Echo> = if by_name {
        b.remote(a.name(), "s").expect("a remote pid")
    } else {
        b.resolve(&s.to_string()).expect("a remote pid")
    };
    let (sync_tx, sync_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let linker = b.spawn(move |inbox: Inbox<()>| async move {
        inbox.link(&target);
        // On the link's lane: once answered, A has the link.
        let _ = sync_tx.send(echo_call(&target, "sync").await);
        let _ = go_rx.await;
        panic!("linker failed");
    });
    let linker_mon = b.runtime().monitor(&linker);
    let sync = match within(t, "the linker's call after linking", sync_rx).await {
        Ok(r) => r,
        Err(_) => panic!("{t}: the linker ended before its call"),
    };
    assert_eq!(sync, Ok("echo sync".to_string()), "{t}: the linker's call");
    if go_tx.send(()).is_err() {
        panic!("{t}: the linker ended before it was told to panic");
    }
    let reason = ExitReason::Panic("linker failed".to_string());
    let ld = within(t, "the linker's own Down", linker_mon).await;
    assert_eq!(ld.reason, reason, "{t}: the linker's exit");
    let down = within(t, "A's Down for the linked process", s_mon).await;
    assert_eq!(down.reason, reason, "{t}: the linked process's exit");
    assert_eq!(down.pid, id_of(&s), "{t}: {down:?}");
}

/// A trapping process on B links to A's "s2" (by name, or by id); A shuts down ("s2" does not
/// exit): the process gets `Exit` with no-connection from the real pid of "s2".
async fn trapped_exit_on_node_shutdown(t: &str, by_name: bool) {
    let a = node(t).await;
    let b = node(t).await;
    let s2 = spawn_stubborn_echo(&a, "s2");
    let target: Pid<Echo> = if by_name {
        b.remote(a.name(), "s2").expect("a remote pid")
    } else {
        b.resolve(&s2.to_string()).expect("a remote pid")
    };
    let (sync_tx, sync_rx) = oneshot::channel();
    let (exit_tx, exit_rx) = oneshot::channel::<Exit>();
    b.spawn(move |mut inbox: Inbox<()>| async move {
        inbox.trap_exit(true);
        inbox.link(&target);
        let _ = sync_tx.send(echo_call(&target, "sync").await);
        while let Some(ev) = inbox.recv_event().await {
            if let Event::Exit(e) = ev {
                let _ = exit_tx.send(e);
                return;
            }
        }
    });
    let sync = match within(t, "the linker's call after linking", sync_rx).await {
        Ok(r) => r,
        Err(_) => panic!("{t}: the linker ended before its call"),
    };
    assert_eq!(sync, Ok("echo sync".to_string()), "{t}: the linker's call");
    a.shutdown().await;
    let exit = match within(t, "the trapped Exit after A shut down", exit_rx).await {
        Ok(e) => e,
        Err(_) => panic!("{t}: the trapping process ended without an Exit"),
    };
    assert_eq!(exit.reason, ExitReason::NoConnection, "{t}: {exit:?}");
    assert_eq!(exit.pid, id_of(&s2), "{t}: {exit:?}");
}

// ---- the tests, each taking a transport name ----

/// A monitor through an alias of the node delivers the Down, with the reason and the real pid.
async fn alias_monitor_gets_down(t: &str) {
    let (down, x_id) = monitored_kill(t, true).await;
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
    assert_eq!(down.pid, x_id, "{t}: {down:?}");
}

/// Control: the same through the real name (the reason only; the pid is
/// `monitor_by_name_down_has_real_pid`).
async fn control_real_name_monitor_gets_down(t: &str) {
    let (down, _) = monitored_kill(t, false).await;
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
}

/// A node reached through an alias that shuts down is seen down: the monitor fires and the
/// pending call fails with no-connection, at once.
async fn alias_node_shutdown_seen(t: &str) {
    node_shutdown_seen(t, true).await
}

/// Control: the same through the real name.
async fn control_real_name_node_shutdown_seen(t: &str) {
    node_shutdown_seen(t, false).await
}

/// B monitors A's "x" through A's real name and calls it; with `use_alias`, B also calls it
/// through an alias. For a window of continuous calls (through both names), no node-down, no
/// monitor fired, every call answered; then B has one peer entry, under A's name.
async fn no_false_down(t: &str, use_alias: bool) {
    let limits = Limits::default()
        .with_heartbeat_interval(Duration::from_millis(100))
        .with_heartbeat_timeout(Duration::from_millis(500));
    let a = node_with(t, cookie(), limits.clone(), true).await;
    let b = node_with(t, cookie(), limits, true).await;
    spawn_echo(&a, "x");
    let mut events = b.node_events();
    let real = b.remote::<Echo>(a.name(), "x").expect("a remote pid");
    let first = within(t, "the call through the real name", echo_call(&real, "hi")).await;
    assert_eq!(
        first,
        Ok("echo hi".to_string()),
        "{t}: the call through the real name"
    );
    let mut mon = b.runtime().monitor(&real);
    let sync = within(t, "the call after the monitor", echo_call(&real, "sync")).await;
    assert_eq!(
        sync,
        Ok("echo sync".to_string()),
        "{t}: the call after the monitor"
    );
    let mut pids = vec![(real.clone(), "real name")];
    if use_alias {
        let aliased = b.remote::<Echo>(&alias(&a), "x").expect("a remote pid");
        let res = within(t, "the call through the alias", echo_call(&aliased, "al")).await;
        assert_eq!(
            res,
            Ok("echo al".to_string()),
            "{t}: the call through the alias"
        );
        pids.push((aliased, "alias"));
    }
    // The one observation window: "nothing bad happens" while the names are in use, for
    // many heartbeat periods.
    let window = Duration::from_secs(4);
    let start = Instant::now();
    let work = async {
        let mut i = 0u64;
        while start.elapsed() < window {
            for (p, how) in &pids {
                let text = format!("{how} {i}");
                let res = within(t, "a call in the window", echo_call(p, &text)).await;
                assert_eq!(
                    res,
                    Ok(format!("echo {text}")),
                    "{t}: call {i} via the {how}"
                );
            }
            i += 1;
        }
    };
    tokio::select! {
        d = &mut mon => panic!("{t}: the monitor through the real name fired: {d:?}"),
        (name, reason) = next_node_down(&mut events) => {
            panic!("{t}: B saw node {name} down ({reason}) while A was up")
        }
        () = work => {}
    }
    tokio::select! {
        biased;
        d = &mut mon => panic!("{t}: the monitor through the real name fired: {d:?}"),
        _ = std::future::ready(()) => {}
    }
    let names: Vec<String> = b.stats().peers.into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        vec![a.name().to_string()],
        "{t}: B keeps one peer entry for A, under its name"
    );
}

/// Reaching a node through an alias after its real name does not split it in two: no false
/// node-down, no monitor fired, both names keep working, and one peer entry in the stats.
async fn alias_after_real_name_no_false_down(t: &str) {
    no_false_down(t, true).await
}

/// Control: the same with the real name only (the heartbeat bounds hold on this machine).
async fn control_real_name_only_no_false_down(t: &str) {
    no_false_down(t, false).await
}

/// A pid built through an alias and handed to a third node works there, monitor included.
async fn alias_pid_to_third_node(t: &str) {
    pid_to_third_node(t, true).await
}

/// Control: the same through the real name.
async fn control_real_name_pid_to_third_node(t: &str) {
    pid_to_third_node(t, false).await
}

/// A node reaching itself through an alias delivers locally.
async fn self_alias_delivers_locally(t: &str) {
    let b = node(t).await;
    spawn_echo(&b, "y");
    let p = b.remote::<Echo>(&alias(&b), "y").expect("a pid");
    let res = within(
        t,
        "the call to itself through an alias",
        echo_call(&p, "me"),
    )
    .await;
    assert_eq!(res, Ok("echo me".to_string()), "{t}: the call to itself");
}

/// Control: the same through its real name.
async fn control_self_real_name_delivers_locally(t: &str) {
    let b = node(t).await;
    spawn_echo(&b, "y");
    let p = b.remote::<Echo>(b.name(), "y").expect("a pid");
    let res = within(t, "the call to itself", echo_call(&p, "me")).await;
    assert_eq!(res, Ok("echo me".to_string()), "{t}: the call to itself");
}

/// (a) A link by name from B: when the B process panics, the named process on A exits with
/// the panic's reason.
async fn link_by_name_a_linker_panic_kills_target(t: &str) {
    linker_panic_kills_target(t, true).await
}

/// Control for (a): the same by id.
async fn control_link_by_id_linker_panic_kills_target(t: &str) {
    linker_panic_kills_target(t, false).await
}

/// (b) A trapping B process linked by name to a process on A gets `Exit` (no-connection, with
/// the real pid) when A shuts down.
async fn link_by_name_b_trapped_exit_on_node_shutdown(t: &str) {
    trapped_exit_on_node_shutdown(t, true).await
}

/// Control for (b): the same by id.
async fn control_link_by_id_trapped_exit_on_node_shutdown(t: &str) {
    trapped_exit_on_node_shutdown(t, false).await
}

/// (c) A B process (not trapping) linked by name to a process on A exits with its reason when
/// it is killed.
async fn link_by_name_c_target_killed_kills_linker(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let s3 = spawn_echo(&a, "s3");
    let target = b.remote::<Echo>(a.name(), "s3").expect("a remote pid");
    let (sync_tx, sync_rx) = oneshot::channel();
    let linker = b.spawn(move |mut inbox: Inbox<()>| async move {
        inbox.link(&target);
        let _ = sync_tx.send(echo_call(&target, "sync").await);
        while inbox.recv().await.is_some() {}
    });
    let linker_mon = b.runtime().monitor(&linker);
    let sync = match within(t, "the linker's call after linking", sync_rx).await {
        Ok(r) => r,
        Err(_) => panic!("{t}: the linker ended before its call"),
    };
    assert_eq!(sync, Ok("echo sync".to_string()), "{t}: the linker's call");
    a.runtime().kill(&s3);
    let down = within(t, "the linker's Down after the kill", linker_mon).await;
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
}

/// A link by name whose holder is killed at the same moment always ends with an exit signal at
/// the linker (`Killed`, or `NoSuchProcess` if the name was gone first), never with a link that
/// waits forever: the peer tells which process held the name before that process's exit.
async fn link_by_name_racing_holder_exit(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    for i in 0..100 {
        let name = format!("h{i}");
        let holder = spawn_echo(&a, &name);
        let target = b.remote::<Echo>(a.name(), &name).expect("a remote pid");
        let (exit_tx, exit_rx) = oneshot::channel();
        let _linker = b.spawn(move |mut inbox: Inbox<()>| async move {
            inbox.trap_exit(true);
            inbox.link(&target);
            loop {
                match inbox.recv_event().await {
                    Some(Event::Exit(exit)) => {
                        let _ = exit_tx.send(exit.reason);
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        });
        // Kill the holder while the link request is on its way (or just handled).
        for _ in 0..(i % 4) {
            tokio::task::yield_now().await;
        }
        a.runtime().kill(&holder);
        let reason = within(t, "the linker's exit signal", exit_rx)
            .await
            .expect("the linker ended without an exit signal");
        assert!(
            matches!(reason, ExitReason::Killed | ExitReason::NoSuchProcess),
            "{t}: {reason:?}"
        );
    }
}

/// A monitor by name reports the real pid of the process that went down, both through
/// `Runtime::monitor` and to a monitoring process.
async fn monitor_by_name_down_has_real_pid(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let x = spawn_echo(&a, "x");
    let x_id = id_of(&x);
    let p = b.remote::<Echo>(a.name(), "x").expect("a remote pid");
    let first = within(t, "the first call", echo_call(&p, "hi")).await;
    assert_eq!(first, Ok("echo hi".to_string()), "{t}: the first call");
    let mon = b.runtime().monitor(&p);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (down_tx, down_rx) = oneshot::channel::<Down>();
    let q = p.clone();
    b.spawn(move |mut inbox: Inbox<()>| async move {
        inbox.monitor(&q);
        let _ = ready_tx.send(echo_call(&q, "sync").await);
        while let Some(ev) = inbox.recv_event().await {
            if let Event::Down(d) = ev {
                let _ = down_tx.send(d);
                return;
            }
        }
    });
    let sync = match within(t, "the watcher's call after its monitor", ready_rx).await {
        Ok(r) => r,
        Err(_) => panic!("{t}: the watcher ended before its call"),
    };
    assert_eq!(sync, Ok("echo sync".to_string()), "{t}: the watcher's call");
    a.runtime().kill(&x);
    let down = within(t, "the Down of Runtime::monitor", mon).await;
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
    let from_process = match within(t, "the watcher's Down", down_rx).await {
        Ok(d) => d,
        Err(_) => panic!("{t}: the watcher ended without a Down"),
    };
    assert_eq!(
        from_process.reason,
        ExitReason::Killed,
        "{t}: {from_process:?}"
    );
    assert_eq!(down.pid, x_id, "{t}: Runtime::monitor's {down:?}");
    assert_eq!(
        from_process.pid, x_id,
        "{t}: the watcher's {from_process:?}"
    );
}

/// A reply larger than the callee node's frame limit fails the call at once with the reason.
async fn oversized_reply_fails_call_at_once(t: &str) {
    let limits = Limits::default().with_max_frame(1 << 20);
    let a = node_with(t, cookie(), limits.clone(), true).await;
    let b = node_with(t, cookie(), limits, true).await;
    let (tx, mut sent) = mpsc::unbounded_channel::<Result<(), ReplyErrorKind>>();
    // Answers each request with a reply of the asked size; reports what `send` said.
    let big = a.spawn(
        move |mut inbox: Inbox<(usize, ReplyTo<Vec<u8>>)>| async move {
            while let Some((len, reply)) = inbox.recv().await {
                let _ = tx.send(reply.send(vec![0u8; len]).map_err(|e| e.kind));
            }
        },
    );
    a.register("big", &big).expect("the name is free");
    let p = b
        .remote::<(usize, ReplyTo<Vec<u8>>)>(a.name(), "big")
        .expect("a remote pid");
    // A small reply goes through.
    let small = within(t, "the small call", p.call(|r| (1024, r), CALL_T)).await;
    assert_eq!(small.map(|v| v.len()), Ok(1024), "{t}: the small call");
    let first = within(t, "the server's first report", sent.recv()).await;
    assert_eq!(first, Some(Ok(())), "{t}: the small reply was sent");
    let call = tokio::spawn(async move { p.call(|r| (2 << 20, r), CALL_T).await });
    let report = within(t, "the server's report on the big reply", sent.recv()).await;
    assert!(
        matches!(report, Some(Err(_))),
        "{t}: sending a reply over the frame limit must fail: {report:?}"
    );
    let res = match within(t, "the call with a reply over the frame limit", call).await {
        Ok(r) => r,
        Err(e) => panic!("{t}: the call task failed: {e}"),
    };
    assert_eq!(
        res.map(|v| v.len()),
        Err(CallError::ReplyNotSent(ReplyFailure::TooLarge)),
        "{t}"
    );
}

/// A value whose `Serialize` always fails.
#[derive(Debug, PartialEq, Deserialize)]
struct Poison;

impl Serialize for Poison {
    fn serialize<S: serde::Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Answer {
    Fine(u32),
    Poisoned(Poison),
}

/// A reply that cannot be encoded fails the call at once with the reason.
async fn unencodable_reply_fails_call_at_once(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let (tx, mut sent) = mpsc::unbounded_channel::<Result<(), ReplyErrorKind>>();
    // Answers `true` with a poisoned reply, `false` with a fine one; reports what `send` said.
    let server = a.spawn(
        move |mut inbox: Inbox<(bool, ReplyTo<Answer>)>| async move {
            while let Some((poison, reply)) = inbox.recv().await {
                let answer = if poison {
                    Answer::Poisoned(Poison)
                } else {
                    Answer::Fine(7)
                };
                let _ = tx.send(reply.send(answer).map_err(|e| e.kind));
            }
        },
    );
    a.register("server", &server).expect("the name is free");
    let p = b
        .remote::<(bool, ReplyTo<Answer>)>(a.name(), "server")
        .expect("a remote pid");
    let fine = within(t, "the fine call", p.call(|r| (false, r), CALL_T)).await;
    assert_eq!(fine, Ok(Answer::Fine(7)), "{t}: the fine call");
    let first = within(t, "the server's first report", sent.recv()).await;
    assert_eq!(first, Some(Ok(())), "{t}: the fine reply was sent");
    let call = tokio::spawn(async move { p.call(|r| (true, r), CALL_T).await });
    let report = within(t, "the server's report on the poisoned reply", sent.recv()).await;
    assert!(
        matches!(report, Some(Err(_))),
        "{t}: sending an unencodable reply must fail: {report:?}"
    );
    let res = match within(t, "the call with an unencodable reply", call).await {
        Ok(r) => r,
        Err(e) => panic!("{t}: the call task failed: {e}"),
    };
    assert_eq!(
        res,
        Err(CallError::ReplyNotSent(ReplyFailure::Encode)),
        "{t}"
    );
}

/// Calls pending when their node shuts down fail at once with `ShuttingDown`.
async fn shutdown_fails_pending_calls(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let (_hold, mut held) = spawn_holder(&a, "hold");
    let p = b.remote::<Echo>(a.name(), "hold").expect("a remote pid");
    let n = 10;
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.call(|r| (format!("c{i}"), r), CALL_T).await })
        })
        .collect();
    for i in 0..n {
        let got = within(t, "the holder receiving the requests", held.recv()).await;
        assert!(got.is_some(), "{t}: the holder stopped after {i} requests");
    }
    b.shutdown().await;
    for (i, call) in calls.into_iter().enumerate() {
        let res = match within(t, "a pending call to end after B shut down", call).await {
            Ok(r) => r,
            Err(e) => panic!("{t}: call task {i} failed: {e}"),
        };
        assert_eq!(res, Err(CallError::ShuttingDown), "{t}: call {i}");
    }
}

/// After a node shut down, calls, sends and monitors of remote pids fail at once.
async fn after_shutdown_everything_fails_at_once(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    spawn_echo(&a, "x");
    let p = b.remote::<Echo>(a.name(), "x").expect("a remote pid");
    let s = b.remote::<String>(a.name(), "sink").expect("a remote pid");
    let first = within(t, "the first call", echo_call(&p, "hi")).await;
    assert_eq!(first, Ok("echo hi".to_string()), "{t}: the first call");
    b.shutdown().await;
    let res = within(
        t,
        "a call after shutdown",
        p.call(|r| ("late".to_string(), r), CALL_T),
    )
    .await;
    assert_eq!(
        res,
        Err(CallError::Send(SendErrorKind::Remote(
            RemoteError::ShuttingDown
        ))),
        "{t}: a call after shutdown"
    );
    match s.send("late".to_string()) {
        Ok(()) => panic!("{t}: a send after shutdown succeeded"),
        Err(e) => assert_eq!(
            e.kind,
            SendErrorKind::Remote(RemoteError::ShuttingDown),
            "{t}: a send after shutdown"
        ),
    }
    let down = within(t, "a monitor after shutdown", b.runtime().monitor(&p)).await;
    assert_eq!(down.reason, ExitReason::NoConnection, "{t}: {down:?}");
}

common::suite!(
    alias_monitor_gets_down,
    control_real_name_monitor_gets_down,
    alias_node_shutdown_seen,
    control_real_name_node_shutdown_seen,
    alias_after_real_name_no_false_down,
    control_real_name_only_no_false_down,
    alias_pid_to_third_node,
    control_real_name_pid_to_third_node,
    self_alias_delivers_locally,
    control_self_real_name_delivers_locally,
    link_by_name_a_linker_panic_kills_target,
    control_link_by_id_linker_panic_kills_target,
    link_by_name_b_trapped_exit_on_node_shutdown,
    control_link_by_id_trapped_exit_on_node_shutdown,
    link_by_name_c_target_killed_kills_linker,
    link_by_name_racing_holder_exit,
    monitor_by_name_down_has_real_pid,
    oversized_reply_fails_call_at_once,
    unencodable_reply_fails_call_at_once,
    shutdown_fails_pending_calls,
    after_shutdown_everything_fails_at_once,
);
