//! Traces across nodes, across OS processes: a message sent inside a span on node A is handled
//! on node S (a child OS process) in a `conc.recv` span whose parent is A's span, in the same
//! trace; what S sends from inside that span reaches A in a span whose parent is S's span. So
//! one request through both nodes is one trace, and each side sees the ids the other printed.
//!
//! Node S is this test binary re-executed with `CONC_CHILD` set (the pattern of `restart.rs`);
//! it prints the W3C ids of the span it handles the message in, and the test compares them with
//! the ids of its own spans.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use conc_node::trace::{SpanIds, TraceLayer, span_ids};
use conc_node::{Cookie, Inbox, Node, Pid, ReplyTo, transport_by_name};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;

use common::{KillOnDrop, Lines};

mod common;

const COOKIE: &str = "trace-suite-cookie";
/// How long the child may take to start (generous: a loaded machine).
const STARTUP: Duration = Duration::from_secs(60);
/// The bound on each awaited event; a failure means the event never came.
const DEADLINE: Duration = Duration::from_secs(30);

/// What node S's process `traced` takes.
#[derive(Serialize, Deserialize)]
enum Req {
    /// Answered at once: the first exchange, which completes the handshakes (a peer's
    /// capabilities, trace context among them, are known once one has completed).
    Ping(ReplyTo<()>),
    /// Handled inside the span the message arrived with; S answers `back` from inside it.
    Hop(Pid<String>),
}

/// `trace=<32 hex> span=<16 hex> parent=<16 hex or ->`.
fn show(ids: &SpanIds) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "trace={} span={} parent={} remote={}",
        hex(&ids.trace_id),
        hex(&ids.span_id),
        ids.parent_span_id.map_or("-".to_string(), |p| hex(&p)),
        ids.remote_parent
    )
}

/// Reads back a line written by [`show`]: (trace, span, parent, remote).
fn parse(line: &str) -> (String, String, String, String) {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (
        field("trace"),
        field("span"),
        field("parent"),
        field("remote"),
    )
}

// ---------------------------------------------------------------------------------------------
// The child: node S.

async fn role_server() {
    let transport = std::env::var("CONC_TRANSPORT").unwrap();
    let node = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new(COOKIE).unwrap())
        .transport_arc(transport_by_name(&transport).unwrap())
        .start()
        .await
        .unwrap();
    let traced = node.spawn(|mut inbox: Inbox<Req>| async move {
        while let Some((req, span)) = inbox.recv_traced().await {
            match req {
                Req::Ping(reply) => {
                    let _ = reply.send(());
                }
                Req::Hop(back) => {
                    let _entered = span.enter();
                    match span_ids(&span) {
                        Some(ids) => println!("handled in {}", show(&ids)),
                        None => println!("handled in no span"),
                    }
                    // Sent from inside the span: carries S's span on to A.
                    back.send("hop".to_string()).unwrap();
                }
            }
        }
    });
    node.register("traced", &traced).unwrap();
    println!("listening on conc://{}", node.name());
    std::future::pending::<()>().await;
}

/// Not a test of its own: the entry point of the child process, run by the tests of this file
/// with `--ignored` and `CONC_CHILD` set.
#[test]
#[ignore = "the entry point of child processes (run by the other tests with CONC_CHILD set)"]
fn child() {
    let role = std::env::var("CONC_CHILD")
        .expect("`child` is run by the other tests of this file, with CONC_CHILD set to a role");
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(TraceLayer::new()))
        .unwrap();
    common::runtime().block_on(async move {
        match role.as_str() {
            "server" => role_server().await,
            other => panic!("unknown role {other}"),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Node A: this process.

async fn one_trace_across_two_processes(transport: &str) {
    // Every test of this file runs in a process of its own under nextest; under `cargo test`
    // they share the process, and the first to get here installs the subscriber for all.
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(TraceLayer::new()),
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CONC_CHILD", "server")
        .env("CONC_TRANSPORT", transport)
        .env_remove("CONC_COOKIE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = Lines::read_from(child.stdout.take().unwrap()).0;
    let stderr = Lines::read_from(child.stderr.take().unwrap()).0;
    let _child = KillOnDrop(child);
    let wait = |prefix: &'static str, within: Duration| {
        let (stdout, stderr) = (Arc::clone(&stdout), Arc::clone(&stderr));
        async move {
            tokio::task::spawn_blocking(move || {
                stdout
                    .wait_until(within, |lines| {
                        lines.iter().find_map(|l| {
                            let l = l.strip_prefix("test child ... ").unwrap_or(l);
                            l.strip_prefix(prefix).map(str::to_string)
                        })
                    })
                    .unwrap_or_else(|| {
                        panic!(
                            "node S printed no {prefix:?}\n--- stdout\n{}\n--- stderr\n{}",
                            stdout.text(),
                            stderr.text()
                        )
                    })
            })
            .await
            .unwrap()
        }
    };
    let s_name = wait("listening on conc://", STARTUP).await;

    let a = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new(COOKIE).unwrap())
        .transport_arc(transport_by_name(transport).unwrap())
        .start()
        .await
        .unwrap();
    let (ids_tx, mut ids_rx) = tokio::sync::mpsc::unbounded_channel();
    let back = a.spawn(move |mut inbox: Inbox<String>| async move {
        while let Some((_, span)) = inbox.recv_traced().await {
            let _ = ids_tx.send(span_ids(&span));
        }
    });
    let traced = a.remote::<Req>(&s_name, "traced").unwrap();
    traced.call(Req::Ping, DEADLINE).await.unwrap();

    let request = tracing::info_span!("request");
    let root = span_ids(&request).expect("the TraceLayer gives the span ids");
    request.in_scope(|| traced.send(Req::Hop(back.clone())).unwrap());

    // S's span: A's span is its parent, in A's trace.
    let (trace, span, parent, remote) = parse(&wait("handled in ", DEADLINE).await);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(trace, hex(&root.trace_id), "S's span is in A's trace");
    assert_eq!(
        parent,
        hex(&root.span_id),
        "S's span is a child of A's span"
    );
    assert_eq!(remote, "true");
    assert_ne!(span, hex(&root.span_id));

    // And back: A's handling is a child of S's span, still the same trace.
    let got = tokio::time::timeout(DEADLINE, ids_rx.recv())
        .await
        .expect("the hop came back")
        .unwrap()
        .expect("the hop back came with a span");
    assert_eq!(hex(&got.trace_id), trace);
    assert_eq!(got.parent_span_id.map(|p| hex(&p)), Some(span.clone()));
    assert!(got.remote_parent);
    println!("A request      {}", show(&root));
    println!("S conc.recv    trace={trace} span={span} parent={parent} remote={remote}");
    println!("A conc.recv    {}", show(&got));
    a.shutdown().await;
}

/// A message sent outside any span arrives with no span: nothing is carried.
async fn no_span_no_context() {
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(TraceLayer::new()),
    );
    let cookie = Cookie::new(COOKIE).unwrap();
    let s = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie.clone())
        .start()
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let p = s.spawn(move |mut inbox: Inbox<String>| async move {
        while let Some((_, span)) = inbox.recv_traced().await {
            let _ = tx.send(span.is_disabled());
        }
    });
    s.register("p", &p).unwrap();
    let a = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie)
        .start()
        .await
        .unwrap();
    let remote = a.remote::<String>(s.name(), "p").unwrap();
    for _ in 0..2 {
        remote.send("x".to_string()).unwrap();
        let disabled = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(disabled, "a message sent outside any span has no span");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_pooled_tcp() {
    one_trace_across_two_processes("pooled-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_message_tcp() {
    one_trace_across_two_processes("per-message-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_quic() {
    one_trace_across_two_processes("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untraced_sends_carry_nothing() {
    no_span_no_context().await;
}
