//! Edge cases of one identity per node, found by trying to break it.
//! No fixed sleeps as synchronisation: events are awaited with generous deadlines.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use conc_node::*;
use tokio::sync::{mpsc, oneshot};

const T: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(30);

fn cookie() -> Cookie {
    Cookie::new("break-it-cookie").expect("a valid cookie")
}

async fn node(t: &str) -> Node {
    Node::builder()
        .cookie(cookie())
        .transport_arc(transport_by_name(t).expect("transport"))
        .listen("127.0.0.1:0")
        .start()
        .await
        .expect("the node starts")
}

/// A node listening on exactly `name` (a restart on the same address): retries the bind while
/// the old socket is released.
async fn node_at(t: &str, name: &str) -> Node {
    let deadline = Instant::now() + WAIT;
    loop {
        match Node::builder()
            .cookie(cookie())
            .transport_arc(transport_by_name(t).expect("transport"))
            .listen(name.to_string())
            .start()
            .await
        {
            Ok(n) => return n,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{t}: could not restart on {name}: {e}"),
        }
    }
}

fn alias(n: &Node) -> String {
    format!("localhost:{}", n.local_addr().expect("listening").port())
}

type Echo = (String, ReplyTo<String>);

/// An echo registered as `name` that reports every request's text on the returned channel.
fn spawn_echo(n: &Node, name: &str) -> (Pid<Echo>, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let p = n.spawn(move |mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = tx.send(text.clone());
            let _ = reply.send(format!("echo {text}"));
        }
    });
    n.register(name, &p).expect("the name is free");
    (p, rx)
}

async fn echo_call(p: &Pid<Echo>, text: &str) -> Result<String, CallError> {
    p.call(|r| (text.to_string(), r), T).await
}

async fn within<F: Future>(t: &str, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{t}: {what}: did not happen within {WAIT:?}"),
    }
}

// ---- 1. a node reached through an alias of itself (Loopback) ----

/// A monitor on a name of this node, through an alias of itself, made before the name is
/// registered (so the pid goes through the Loopback link): the Down never comes.
async fn self_alias_monitor_gets_down(t: &str) {
    let b = node(t).await;
    let p = b.remote::<Echo>(&alias(&b), "late").expect("a pid");
    let (x, _rx) = spawn_echo(&b, "late");
    let first = within(t, "the call through the self alias", echo_call(&p, "hi")).await;
    assert_eq!(first, Ok("echo hi".to_string()), "{t}: the call");
    let mon = b.runtime().monitor(&p);
    let sync = within(t, "the call after the monitor", echo_call(&p, "sync")).await;
    assert_eq!(sync, Ok("echo sync".to_string()), "{t}: the sync call");
    b.runtime().kill(&x);
    let down = within(t, "the Down through the self alias", mon).await;
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
}

/// A monitor on a name that does not exist, through an alias of itself: Down (noproc) at once.
async fn self_alias_monitor_of_missing_name_gets_down(t: &str) {
    let b = node(t).await;
    let p = b.remote::<Echo>(&alias(&b), "nobody").expect("a pid");
    let down = within(
        t,
        "the noproc Down through the self alias",
        b.runtime().monitor(&p),
    )
    .await;
    assert_eq!(down.reason, ExitReason::NoSuchProcess, "{t}: {down:?}");
}

/// A link by name through an alias of itself: the named process is killed, the linker should
/// die with it.
async fn self_alias_link_target_killed_kills_linker(t: &str) {
    let b = node(t).await;
    let target = b.remote::<Echo>(&alias(&b), "late2").expect("a pid");
    let (x, _rx) = spawn_echo(&b, "late2");
    let (sync_tx, sync_rx) = oneshot::channel();
    let linker = b.spawn(move |mut inbox: Inbox<()>| async move {
        inbox.link(&target);
        let _ = sync_tx.send(echo_call(&target, "sync").await);
        while inbox.recv().await.is_some() {}
    });
    let linker_mon = b.runtime().monitor(&linker);
    let sync = match within(t, "the linker's call", sync_rx).await {
        Ok(r) => r,
        Err(_) => panic!("{t}: the linker ended before its call"),
    };
    assert_eq!(sync, Ok("echo sync".to_string()), "{t}: the linker's call");
    b.runtime().kill(&x);
    let down = within(t, "the linker's Down after the kill", linker_mon).await;
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
}

// ---- 2. a peer restarted on the same address ----

/// B knows A (incarnation 1) and has seen it go down. A restarts on the same address. A call
/// by name made now reaches the new incarnation (which runs it), yet fails with no-connection:
/// it was recorded under the old incarnation, and proving the new one fails it.
async fn call_by_name_after_restart_succeeds(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let name = a.name().to_string();
    let _ = spawn_echo(&a, "x");
    let p = b.remote::<Echo>(&name, "x").expect("a pid");
    let first = within(t, "the first call", echo_call(&p, "one")).await;
    assert_eq!(first, Ok("echo one".to_string()), "{t}: the first call");
    let mut events = b.node_events();
    a.shutdown().await;
    drop(a);
    if t != "per-message-tcp" {
        // Pooled transports see the connection close.
        within(t, "B seeing A down", async {
            loop {
                if let Ok(NodeEvent::Down { name: n, .. }) = events.recv().await
                    && n == name
                {
                    return;
                }
            }
        })
        .await;
    }
    let a2 = node_at(t, &name).await;
    let (_x2, mut seen) = spawn_echo(&a2, "x");
    let res = within(t, "the call to the restarted node", echo_call(&p, "two")).await;
    let ran = seen.try_recv().ok();
    assert_eq!(
        res,
        Ok("echo two".to_string()),
        "{t}: a call by name made after the restart (the new incarnation ran it: {ran:?})"
    );
}

/// After A restarted, B monitors A's "x" by name (the new incarnation's process): the monitor
/// must report x's real exit, not a no-connection from the old incarnation.
async fn monitor_by_name_after_restart_reports_real_exit(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let name = a.name().to_string();
    let _ = spawn_echo(&a, "x");
    let p = b.remote::<Echo>(&name, "x").expect("a pid");
    let first = within(t, "the first call", echo_call(&p, "one")).await;
    assert_eq!(first, Ok("echo one".to_string()), "{t}: the first call");
    let mut events = b.node_events();
    a.shutdown().await;
    drop(a);
    if t != "per-message-tcp" {
        within(t, "B seeing A down", async {
            loop {
                if let Ok(NodeEvent::Down { name: n, .. }) = events.recv().await
                    && n == name
                {
                    return;
                }
            }
        })
        .await;
    }
    let a2 = node_at(t, &name).await;
    let (x2, _seen) = spawn_echo(&a2, "x");
    let mon = b.runtime().monitor(&p);
    // Calls until one is answered: then A2 has the monitor (same lane) and B knows A2.
    let deadline = Instant::now() + WAIT;
    loop {
        if echo_call(&p, "sync").await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "{t}: no call to A2 answered");
    }
    a2.runtime().kill(&x2);
    let down = within(t, "the Down of the monitor on A2's x", mon).await;
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
}

// ---- 3. a node that proves another node's name ----

/// D advertises A's name. B, which monitors a process on A, sends one message to D's address:
/// B's monitor on A must not be affected (A's process is alive and then killed).
async fn impostor_does_not_fire_monitors_of_real_node(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let (x, _rx) = spawn_echo(&a, "x");
    let p = b.remote::<Echo>(a.name(), "x").expect("a pid");
    let first = within(t, "the first call", echo_call(&p, "hi")).await;
    assert_eq!(first, Ok("echo hi".to_string()), "{t}: the first call");
    let mon = b.runtime().monitor(&p);
    let sync = within(t, "the call after the monitor", echo_call(&p, "sync")).await;
    assert_eq!(sync, Ok("echo sync".to_string()), "{t}: the sync call");
    let d = Node::builder()
        .cookie(cookie())
        .transport_arc(transport_by_name(t).expect("transport"))
        .listen("127.0.0.1:0")
        .advertise(a.name().to_string())
        .start()
        .await
        .expect("D starts");
    let (_dx, _drx) = spawn_echo(&d, "d");
    let d_addr = format!("127.0.0.1:{}", d.local_addr().expect("listening").port());
    let pd = b.remote::<Echo>(&d_addr, "d").expect("a pid");
    let to_d = within(t, "the call to D", echo_call(&pd, "to d")).await;
    eprintln!("{t}: the call to D: {to_d:?}");
    // B still reaches A's x.
    let again = within(t, "a call to A's x after meeting D", echo_call(&p, "again")).await;
    a.runtime().kill(&x);
    let down = within(t, "B's Down for A's x", mon).await;
    assert_eq!(
        again,
        Ok("echo again".to_string()),
        "{t}: B's call to A after meeting D"
    );
    assert_eq!(down.reason, ExitReason::Killed, "{t}: {down:?}");
}

common::suite!(
    self_alias_monitor_gets_down,
    self_alias_monitor_of_missing_name_gets_down,
    self_alias_link_target_killed_kills_linker,
    call_by_name_after_restart_succeeds,
    monitor_by_name_after_restart_reports_real_exit,
    impostor_does_not_fire_monitors_of_real_node,
);
