//! A peer node killed with SIGKILL and restarted at once on the same `host:port`: everything
//! that waited on its first incarnation must learn that it is gone.
//!
//! Node B runs in the test process; node C is a child OS process (this test binary re-executed
//! with `CONC_CHILD` set, as in `failure.rs`). B takes pids by id of C's first incarnation, then
//! monitors one, links a trapping process to it and leaves a call pending on another that never
//! answers. C is killed with SIGKILL and restarted on the same port, and B talks to the new C.
//! Once B knows that C's incarnation changed, the monitor must fire and the link must deliver
//! an exit, both with [`ExitReason::NoConnection`], and the pending call must fail with
//! [`CallError::Exited`]`(NoConnection)`: on every transport, as on pooled TCP, where a lost
//! connection tells B at once. A call to the old pid after the restart is refused, not answered
//! and not left hanging: the new C refuses it as addressed to no such process.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use conc_node::{
    CallError, Cookie, Event, Exit, ExitReason, Inbox, Node, Pid, Refusal, RemoteError, ReplyTo,
    SendErrorKind, transport_by_name,
};

use common::{KillOnDrop, Lines};

mod common;

/// A request answered with `echo TEXT`.
type Echo = (String, ReplyTo<String>);
/// Asks C for the pid (by id) of its process registered under a name.
type Lookup = (String, ReplyTo<Pid<Echo>>);

const COOKIE: &str = "restart-suite-cookie";

/// How long a child may take to start and print its readiness line (the first start builds
/// nothing, but a loaded machine may be slow).
const STARTUP: Duration = Duration::from_secs(60);
/// The bound on each awaited event: generous, a failure means the event never came.
const DEADLINE: Duration = Duration::from_secs(30);
/// The timeout of the call left pending: far beyond [`DEADLINE`], so it can only fail because
/// its callee's node was lost, not because it timed out.
const PENDING_CALL_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The child: node C.

/// Node C: `echo` answers every request, `silent` keeps every request without ever answering
/// (holding the reply handles, so the calls are not failed by a dropped handle), and `lookup`
/// answers a name with the pid by id of the local process registered under it. Prints
/// `silent holds N` when `silent` has taken its N-th request and `listening on conc://NAME`
/// once it accepts connections.
async fn role_peer() {
    let listen = std::env::var("CONC_LISTEN").unwrap();
    let transport = std::env::var("CONC_TRANSPORT").unwrap();
    let node = Node::builder()
        .listen(listen)
        .cookie(Cookie::new(COOKIE).unwrap())
        .transport_arc(transport_by_name(&transport).unwrap())
        .start()
        .await
        .unwrap();
    let echo = node.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(format!("echo {text}"));
        }
    });
    node.register("echo", &echo).unwrap();
    let silent = node.spawn(|mut inbox: Inbox<Echo>| async move {
        let mut held = Vec::new();
        while let Some((_, reply)) = inbox.recv().await {
            held.push(reply);
            println!("silent holds {}", held.len());
        }
    });
    node.register("silent", &silent).unwrap();
    let rt = node.runtime().clone();
    let lookup = node.spawn(move |mut inbox: Inbox<Lookup>| async move {
        while let Some((name, reply)) = inbox.recv().await {
            // An unknown name drops the handle: the caller sees `CallError::NoReply`.
            if let Ok(pid) = rt.whereis::<Echo>(&name) {
                let _ = reply.send(pid);
            }
        }
    });
    node.register("lookup", &lookup).unwrap();
    println!("listening on conc://{}", node.name());
    std::future::pending::<()>().await;
}

/// Not a test of its own: the entry point of the child processes, run by the tests of this
/// file with `--ignored` and `CONC_CHILD` set to the role.
#[test]
#[ignore = "the entry point of child processes (run by the other tests with CONC_CHILD set)"]
fn child() {
    let role = std::env::var("CONC_CHILD")
        .expect("`child` is run by the other tests of this file, with CONC_CHILD set to a role");
    let rt = common::runtime();
    rt.block_on(async move {
        match role.as_str() {
            "peer" => role_peer().await,
            other => panic!("unknown role {other}"),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Driving the child.

/// One incarnation of node C: killed (SIGKILL) and reaped on drop, whatever happens; its
/// output collected line by line.
struct Peer {
    child: KillOnDrop,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
}

impl Peer {
    /// Starts node C listening on `listen` (a fixed port) over `transport`.
    fn spawn(listen: &str, transport: &str) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("CONC_CHILD", "peer")
            .env("CONC_LISTEN", listen)
            .env("CONC_TRANSPORT", transport)
            .env_remove("CONC_COOKIE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Lines::read_from(child.stdout.take().unwrap()).0;
        let stderr = Lines::read_from(child.stderr.take().unwrap()).0;
        Peer {
            child: KillOnDrop(child),
            stdout,
            stderr,
        }
    }

    /// Waits (without blocking the other tokio workers' tasks) for a line starting with
    /// `prefix`; returns the rest of it. Panics with the child's output if none comes within
    /// `within` or the child's output ends.
    fn expect(&self, prefix: &str, within: Duration) -> String {
        let found = tokio::task::block_in_place(|| {
            self.stdout.wait_until(within, |lines| {
                lines.iter().find_map(|line| {
                    // libtest prints "test child ... " before the child's first line.
                    let line = line.strip_prefix("test child ... ").unwrap_or(line);
                    line.strip_prefix(prefix)
                        .map(|rest| rest.trim().to_string())
                })
            })
        });
        found.unwrap_or_else(|| {
            panic!(
                "node C printed no line starting with {prefix:?} within {within:?}\n{}",
                self.report()
            )
        })
    }

    /// Kills the child with SIGKILL (`Child::kill`) and reaps it.
    fn kill_nine(&mut self) {
        self.child.kill();
    }

    fn report(&self) -> String {
        format!(
            "--- node C stdout:\n{}\n--- node C stderr:\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

/// A loopback port free for both TCP and UDP right now (QUIC nodes listen on UDP).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Awaits `fut` for at most [`DEADLINE`]; `None` if it did not finish by then.
async fn within<F: std::future::Future>(fut: F) -> Option<F::Output> {
    tokio::time::timeout(DEADLINE, fut).await.ok()
}

/// Whether a call failed because the connection to the callee's node was lost (or not yet
/// re-established), so that calling again may succeed.
fn is_connection_loss(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Exited(ExitReason::NoConnection)
            | CallError::Send(SendErrorKind::Remote(RemoteError::Connection { .. }))
    )
}

// ---------------------------------------------------------------------------------------------
// The scenario.

async fn restart_fires_monitors_links_and_calls(transport: &str) {
    assert!(
        conc_node::transport_names().contains(&transport),
        "the tests crate builds conc-node with every transport, {transport} included"
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let mut c1 = Peer::spawn(&listen, transport);
    let c_name = c1.expect("listening on conc://", STARTUP);

    let b = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new(COOKIE).unwrap())
        .transport_arc(transport_by_name(transport).unwrap())
        .start()
        .await
        .unwrap();

    // Pids by id of C's first incarnation, learnt through processes resolved by name.
    let lookup = b.remote::<Lookup>(&c_name, "lookup").unwrap();
    let echo_by_name = b.remote::<Echo>(&c_name, "echo").unwrap();
    let mut old_pids = Vec::new();
    for name in ["echo", "silent"] {
        let pid = within(lookup.call(|r| (name.to_string(), r), DEADLINE))
            .await
            .expect("the lookup call returns within its timeout")
            .unwrap_or_else(|e| panic!("lookup of {name} on C failed: {e:?}\n{}", c1.report()));
        assert!(!pid.is_local(), "{name} is a pid of C");
        old_pids.push(pid);
    }
    let silent_old = old_pids.pop().unwrap();
    let echo_old = old_pids.pop().unwrap();
    let old_id = echo_old.id().expect("lookup answers a pid by id");
    assert_ne!(silent_old.id(), None);
    assert_eq!(
        within(echo_old.call(|r| ("hi".to_string(), r), DEADLINE))
            .await
            .expect("a call to the old echo returns within its timeout"),
        Ok("echo hi".to_string()),
        "the pid by id answers before the restart"
    );

    // (1) A monitor on the pid of C's first incarnation.
    let monitor = b.runtime().monitor(&echo_old);

    // (2) A process of B that traps exits, links to it and reports the exit it receives.
    let (linked_tx, linked_rx) = tokio::sync::oneshot::channel::<()>();
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<Exit>();
    let target = echo_old.clone();
    b.spawn(move |mut inbox: Inbox<String>| async move {
        inbox.trap_exit(true);
        inbox.link(&target);
        let _ = linked_tx.send(());
        while let Some(event) = inbox.recv_event().await {
            if let Event::Exit(exit) = event {
                let _ = exit_tx.send(exit);
                return;
            }
        }
    });
    within(linked_rx)
        .await
        .expect("the trapping process links within the deadline")
        .expect("the trapping process reports its link");

    // (3) A call to C's `silent` (by id), which never answers, left pending.
    let pending = tokio::spawn(async move {
        silent_old
            .call(|r| ("never answered".to_string(), r), PENDING_CALL_TIMEOUT)
            .await
    });
    c1.expect("silent holds 1", DEADLINE);
    // Frames to one process keep their order: once this call is answered, C has set up the
    // monitor and the link (both travel on the echo process's lane).
    assert_eq!(
        within(echo_old.call(|r| ("sync".to_string(), r), DEADLINE))
            .await
            .expect("the sync call returns within its timeout"),
        Ok("echo sync".to_string()),
        "the old echo answers after the monitor and the link are set up\n{}",
        c1.report()
    );

    // SIGKILL C and restart it on the same port at once.
    c1.kill_nine();
    let c2 = Peer::spawn(&listen, transport);
    assert_eq!(
        c2.expect("listening on conc://", STARTUP),
        c_name,
        "the new C has the same name"
    );

    // B talks to the new C: a call by name succeeds. A call that went out on a connection B
    // has not yet found dead fails with the connection's loss; the next one reconnects.
    let mut lost = Vec::new();
    loop {
        let answer = within(echo_by_name.call(|r| ("again".to_string(), r), DEADLINE))
            .await
            .unwrap_or_else(|| panic!("a call by name to the new C hung\n{}", c2.report()));
        match answer {
            Ok(text) => {
                assert_eq!(text, "echo again");
                break;
            }
            Err(e) if is_connection_loss(&e) && lost.len() < 10 => lost.push(e),
            Err(e) => panic!(
                "a call by name to the new C failed: {e:?} (after {lost:?})\n{}",
                c2.report()
            ),
        }
    }
    eprintln!("{transport}: calls by name to the new C lost before one succeeded: {lost:?}");

    // Everything that waited on C's first incarnation now learns that it is gone; each within
    // its own deadline, all awaited together so a failure reports all three.
    let (down, exit, call) = tokio::join!(within(monitor), within(exit_rx), within(pending));
    let exit = exit.map(|e| e.expect("the trapping process reports an exit"));
    let call = call.map(|c| c.expect("the pending call's task does not panic"));

    // A call to the old pid is refused by the new C: it neither succeeds nor hangs.
    let old_call = within(echo_old.call(|r| ("old".to_string(), r), DEADLINE)).await;

    let report = format!(
        "{transport}:\n  monitor: {down:?}\n  link exit: {exit:?}\n  pending call: {call:?}\n  \
         call to the old pid after the restart: {old_call:?}\n{}",
        c2.report()
    );
    eprintln!("{report}");
    let down = down.unwrap_or_else(|| {
        panic!("the monitor on the old pid did not fire within {DEADLINE:?}\n{report}")
    });
    assert_eq!(down.pid, old_id, "{report}");
    assert_eq!(down.reason, ExitReason::NoConnection, "{report}");
    let exit = exit.unwrap_or_else(|| {
        panic!("the linked trapping process got no exit within {DEADLINE:?}\n{report}")
    });
    assert_eq!(
        exit,
        Exit {
            pid: old_id,
            reason: ExitReason::NoConnection,
        },
        "{report}"
    );
    let call = call.unwrap_or_else(|| {
        panic!("the pending call to the old silent did not fail within {DEADLINE:?}\n{report}")
    });
    assert_eq!(
        call,
        Err(CallError::Exited(ExitReason::NoConnection)),
        "{report}"
    );
    let old_call = old_call
        .unwrap_or_else(|| panic!("a call to the old pid after the restart hung\n{report}"));
    // The new C refuses the request as addressed to no such process: it reached C and was
    // refused, which B tells apart from a request that was never sent.
    assert_eq!(
        old_call,
        Err(CallError::Refused {
            peer: c_name.clone(),
            reason: Refusal::NoSuchProcess,
        }),
        "{report}"
    );
    drop(c2);
}

macro_rules! suite {
    ($($f:ident),* $(,)?) => {
        mod per_message_tcp {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() { super::$f("per-message-tcp").await })*
        }
        mod pooled_tcp {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() { super::$f("pooled-tcp").await })*
        }
        mod pooled_tcp_tls {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() { super::$f("pooled-tcp-tls").await })*
        }
        mod quic {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() { super::$f("quic").await })*
        }
    };
}

suite!(restart_fires_monitors_links_and_calls);
