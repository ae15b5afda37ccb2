//! Failure semantics across real OS processes: a peer killed with `kill -9` in the middle of a
//! stream of calls, a network partition between two network namespaces, and a slow consumer fed
//! by a fast remote sender.
//!
//! The nodes run as child processes: this test binary re-executes itself with `CONC_CHILD` set
//! and `--ignored`, and the ignored `child` test below then runs the requested role.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conc_node::{
    Cookie, ExitReason, Inbox, Limits, Node, NodeEvent, Pid, ReplyTo, SpawnOptions,
    transport_by_name,
};

use common::KillOnDrop;

mod common;

type Echo = (String, ReplyTo<String>);

const COOKIE: &str = "failure-suite-cookie";

// ---------------------------------------------------------------------------------------------
// Child roles.

fn limits() -> Limits {
    Limits::default()
        .with_heartbeat_interval(Duration::from_millis(300))
        .with_heartbeat_timeout(Duration::from_secs(1))
}

async fn child_node(listen: &str) -> Node {
    let transport = std::env::var("CONC_TRANSPORT").unwrap_or_else(|_| "pooled-tcp".into());
    Node::builder()
        .listen(listen)
        .cookie(Cookie::new(COOKIE).unwrap())
        .limits(limits())
        .transport_arc(transport_by_name(&transport).unwrap())
        .start()
        .await
        .unwrap()
}

fn print_events(node: &Node) {
    let mut rx = node.node_events();
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv().await {
            match ev {
                NodeEvent::Up { name, .. } => println!("event up {name}"),
                NodeEvent::Down { name, .. } => println!("event down {name}"),
                _ => {}
            }
        }
    });
}

/// A server: `process1` echoes, `slow` is a bounded-mailbox consumer that takes 1 ms per
/// message. Prints its name and the URI of process1 by id.
async fn role_server() {
    let node = child_node(&std::env::var("CONC_LISTEN").unwrap()).await;
    let p1 = node.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(format!("echo {text}"));
        }
    });
    node.register("process1", &p1).unwrap();
    let slow = node.spawn_with(
        SpawnOptions::bounded(64),
        |mut inbox: Inbox<Vec<u8>>| async move {
            let mut n = 0u64;
            while inbox.recv().await.is_some() {
                n += 1;
                if n.is_multiple_of(1000) {
                    println!("slow got {n}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        },
    );
    node.register("slow", &slow).unwrap();
    print_events(&node);
    println!("listening on conc://{}", node.name());
    println!("pid {p1}");
    println!("slowpid {slow}");
    std::future::pending::<()>().await;
}

/// Calls the peer's process1 every 100 ms, printing `ok` or `error <reason>`.
async fn role_pinger() {
    let node = child_node(&std::env::var("CONC_LISTEN").unwrap()).await;
    print_events(&node);
    println!("listening on conc://{}", node.name());
    let peer = std::env::var("CONC_PEER").unwrap();
    let p = node.remote::<Echo>(&peer, "process1").unwrap();
    loop {
        match p
            .call(|r| ("ping".to_string(), r), Duration::from_secs(2))
            .await
        {
            Ok(_) => println!("ok"),
            Err(e) => println!("error {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Floods the peer's `slow` process with 1 KiB messages using `send_wait`.
async fn role_flood() {
    let node = child_node("127.0.0.1:0").await;
    println!("listening on conc://{}", node.name());
    let peer = std::env::var("CONC_PEER").unwrap();
    let p = node.remote::<Vec<u8>>(&peer, "slow").unwrap();
    let mut sent = 0u64;
    loop {
        if p.send_wait(vec![7u8; 1024]).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        sent += 1;
        if sent.is_multiple_of(1000) {
            println!("sent {sent}");
        }
    }
}

/// Not a test of its own: the entry point of the child processes, which the tests below run
/// with `--ignored` and `CONC_CHILD` set to the role.
#[test]
#[ignore = "the entry point of child processes (run by the other tests with CONC_CHILD set)"]
fn child() {
    let role = std::env::var("CONC_CHILD")
        .expect("`child` is run by the other tests of this file, with CONC_CHILD set to a role");
    let rt = common::runtime();
    rt.block_on(async move {
        match role.as_str() {
            "server" => role_server().await,
            "pinger" => role_pinger().await,
            "flood" => role_flood().await,
            other => panic!("unknown role {other}"),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Driving children.

/// A child running a role, killed and reaped on drop; its stdout lines, read as they come.
struct Proc {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
}

fn reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn spawn_role(prefix: &[&str], role: &str, env: &[(&str, String)]) -> Proc {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if prefix.is_empty() {
        Command::new(&exe)
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(&exe);
        c
    };
    cmd.args([
        "--exact",
        "child",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("CONC_CHILD", role)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let lines = reader(child.stdout.take().unwrap());
    Proc {
        child: KillOnDrop(child),
        lines,
    }
}

impl Proc {
    /// Waits for a line starting with `prefix`; returns the rest.
    fn expect(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    // libtest prints "test child ... " before the child's first line.
                    let line = line.strip_prefix("test child ... ").unwrap_or(&line);
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!("no line starting with {prefix:?} within {within:?}"),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// A loopback port free for both TCP and UDP right now (QUIC nodes listen on UDP, and another
/// test's QUIC node may hold a UDP port whose TCP twin is free).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

async fn test_node(transport: &str) -> Node {
    common::loopback_node(transport)
        .cookie(Cookie::new(COOKIE).unwrap())
        .limits(limits())
        .start()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// kill -9 in the middle of a stream of calls.

async fn kill_nine(transport: &str) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = [
        ("CONC_LISTEN", addr.clone()),
        ("CONC_TRANSPORT", transport.to_string()),
    ];
    let server = spawn_role(&[], "server", &env);
    let name = server.expect("listening on conc://", Duration::from_secs(60));
    let old_pid_uri = server.expect("pid ", Duration::from_secs(10));
    let old_slow_uri = server.expect("slowpid ", Duration::from_secs(10));
    let node = test_node(transport).await;
    // Another peer that must keep being served.
    let other = test_node(transport).await;
    let o = other.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((t, r)) = inbox.recv().await {
            let _ = r.send(t);
        }
    });
    other.register("other", &o).unwrap();
    let to_other = node.remote::<Echo>(other.name(), "other").unwrap();

    let p1 = node.remote::<Echo>(&name, "process1").unwrap();
    assert_eq!(
        p1.call(|r| ("hi".into(), r), Duration::from_secs(10))
            .await
            .unwrap(),
        "echo hi"
    );
    let old: Pid<Echo> = node.resolve(&old_pid_uri).unwrap();
    let mon = node.runtime().monitor(&old);
    // Let the monitor frame arrive before the kill.
    p1.call(|r| ("sync".into(), r), Duration::from_secs(10))
        .await
        .unwrap();

    // A stream of concurrent calls, with long timeouts: they must fail because the node is
    // lost, not because they time out. Each caller reports its first answer, so the kill comes
    // once every caller is in its stream of calls.
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut calls = Vec::new();
    for i in 0..20 {
        let p = p1.clone();
        let started_tx = started_tx.clone();
        calls.push(tokio::spawn(async move {
            let mut first = true;
            loop {
                if let Err(e) = p
                    .call(|r| (format!("c{i}"), r), Duration::from_secs(120))
                    .await
                {
                    return e;
                }
                if std::mem::take(&mut first) {
                    let _ = started_tx.send(());
                }
            }
        }));
    }
    drop(started_tx);
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .expect("every caller gets a first answer before the kill")
            .expect("a caller failed before the kill");
    }
    let killed_at = Instant::now();
    let _ = Command::new("kill")
        .args(["-9", &server.pid().to_string()])
        .status();
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("a pending call hung after the peer was killed")
            .unwrap();
        assert!(
            !matches!(r, conc_node::CallError::Timeout(_)),
            "calls fail with the node's loss, not a timeout: {r:?}"
        );
    }
    let down = tokio::time::timeout(Duration::from_secs(60), mon)
        .await
        .unwrap();
    assert_eq!(down.reason, ExitReason::NoConnection);
    println!(
        "{transport}: calls and monitors failed {:?} after kill -9",
        killed_at.elapsed()
    );
    drop(server);
    // The surviving node keeps serving its other peers.
    assert_eq!(
        to_other
            .call(|r| ("still".into(), r), Duration::from_secs(10))
            .await
            .unwrap(),
        "still"
    );

    // Restart the peer on the same port: new calls by name succeed, old pids are refused.
    let server = spawn_role(&[], "server", &env);
    server.expect("listening on conc://", Duration::from_secs(60));
    let mut ok = false;
    for _ in 0..100 {
        if p1
            .call(|r| ("again".into(), r), Duration::from_secs(5))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "calls by name succeed after the peer restarted");
    let err = old
        .call(|r| ("old".into(), r), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no such process"), "{err}");
    // A send to a pid of the old incarnation is queued; its refusal is counted as a dead
    // letter on this node.
    let old_slow: Pid<Vec<u8>> = node.resolve(&old_slow_uri).unwrap();
    assert!(old_slow.send(vec![1, 2, 3]).is_ok());
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.dead_letters() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.dead_letters() > 0);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_pooled_tcp() {
    kill_nine("pooled-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_quic() {
    kill_nine("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_per_message_tcp() {
    kill_nine("per-message-tcp").await;
}

// ---------------------------------------------------------------------------------------------
// A slow consumer fed by a fast remote sender: memory stays bounded on both nodes.

#[test]
fn slow_consumer_memory_is_bounded() {
    for transport in ["pooled-tcp", "quic"] {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let server = spawn_role(
            &[],
            "server",
            &[
                ("CONC_LISTEN", addr.clone()),
                ("CONC_TRANSPORT", transport.to_string()),
            ],
        );
        let name = server.expect("listening on conc://", Duration::from_secs(60));
        let flood = spawn_role(
            &[],
            "flood",
            &[
                ("CONC_PEER", name.clone()),
                ("CONC_TRANSPORT", transport.to_string()),
            ],
        );
        flood.expect("listening on conc://", Duration::from_secs(60));
        // Warm up until the consumer has taken a few thousand messages, then sample.
        server.expect("slow got 1000", Duration::from_secs(120));
        let base = (rss_kib(server.pid()), rss_kib(flood.pid()));
        let mut peak = base;
        // Sample as the consumer takes each of the next five thousand messages (at 1 ms per
        // message, some 5 s of flooding); that it does shows the sender is held back, not cut
        // off.
        for _ in 0..5 {
            server.expect("slow got", Duration::from_secs(60));
            peak.0 = peak.0.max(rss_kib(server.pid()));
            peak.1 = peak.1.max(rss_kib(flood.pid()));
        }
        println!(
            "{transport}: receiver RSS {} -> {} KiB, sender RSS {} -> {} KiB over 5000 messages",
            base.0, peak.0, base.1, peak.1
        );
        // Unbounded growth would be hundreds of MiB in 5 s at 1 KiB per message; allow the
        // configured queue (64 MiB outbound) and slack.
        assert!(
            peak.0 < base.0 + 96 * 1024,
            "receiver grew {} KiB",
            peak.0 - base.0
        );
        assert!(
            peak.1 < base.1 + 96 * 1024,
            "sender grew {} KiB",
            peak.1 - base.1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A partition between two network namespaces.

struct Netns {
    names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn make_netns() -> Result<(Netns, String, String), String> {
    let tag = format!("{:x}", std::process::id() & 0xffff);
    let (a, b) = (format!("concA{tag}"), format!("concB{tag}"));
    if !ip(&["netns", "add", &a]) {
        return Err("cannot create network namespaces (needs root and iproute2)".into());
    }
    let ns = Netns {
        names: vec![a.clone()],
    };
    let mut ns = ns;
    if !ip(&["netns", "add", &b]) {
        return Err("cannot create a second network namespace".into());
    }
    ns.names.push(b.clone());
    let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
    let ok = ip(&[
        "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
    ]) && ip(&["-n", &a, "addr", "add", "10.213.7.1/24", "dev", &va])
        && ip(&["-n", &b, "addr", "add", "10.213.7.2/24", "dev", &vb])
        && ip(&["-n", &a, "link", "set", &va, "up"])
        && ip(&["-n", &b, "link", "set", &vb, "up"])
        && ip(&["-n", &a, "link", "set", "lo", "up"])
        && ip(&["-n", &b, "link", "set", "lo", "up"]);
    if !ok {
        return Err("cannot set up the veth pair".into());
    }
    Ok((ns, va, vb))
}

#[test]
fn partition_between_namespaces() {
    let (ns, va, _vb) = match make_netns() {
        Ok(x) => x,
        Err(why) => {
            common::precondition_missing(&why);
            return;
        }
    };
    let (a, b) = (ns.names[0].clone(), ns.names[1].clone());
    let server = spawn_role(
        &["ip", "netns", "exec", &a],
        "server",
        &[("CONC_LISTEN", "10.213.7.1:7001".to_string())],
    );
    let name = server.expect("listening on conc://", Duration::from_secs(60));
    let pinger = spawn_role(
        &["ip", "netns", "exec", &b],
        "pinger",
        &[
            ("CONC_LISTEN", "10.213.7.2:7002".to_string()),
            ("CONC_PEER", name.clone()),
        ],
    );
    pinger.expect("listening on conc://", Duration::from_secs(60));
    pinger.expect("ok", Duration::from_secs(30));
    server.expect("event up 10.213.7.2:7002", Duration::from_secs(30));

    // Cut the link: both sides see node down within the heartbeat bound (1 s here) plus slack.
    assert!(ip(&["-n", &a, "link", "set", &va, "down"]));
    let cut = Instant::now();
    server.expect("event down 10.213.7.2:7002", Duration::from_secs(30));
    pinger.expect("event down 10.213.7.1:7001", Duration::from_secs(30));
    println!("both sides saw node down {:?} after the cut", cut.elapsed());
    pinger.expect("error", Duration::from_secs(30));

    // Restore it: they reconnect by themselves and calls succeed again.
    assert!(ip(&["-n", &a, "link", "set", &va, "up"]));
    pinger.expect("ok", Duration::from_secs(60));
    server.expect("event up 10.213.7.2:7002", Duration::from_secs(30));
    drop(pinger);
    drop(server);
    drop(ns);
}
