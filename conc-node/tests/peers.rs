//! The bound on peer nodes a node keeps state for (`Limits::max_peers`): pids of made-up nodes
//! inside messages, pids held by the application, and connections from new peers.

use std::time::{Duration, Instant};

use conc_node::*;

const T: Duration = Duration::from_secs(20);

fn cookie() -> Cookie {
    Cookie::new("peers-suite-cookie").unwrap()
}

async fn node(transport: &str, max_peers: usize) -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie())
        .limits(Limits::default().with_max_peers(max_peers))
        .transport_arc(transport_by_name(transport).unwrap())
        .start()
        .await
        .unwrap()
}

/// A pid of a node that does not exist (nothing listens on low loopback ports; the pids in
/// these tests are never sent to unless a test says so).
fn made_up(port: u16) -> String {
    format!("conc://127.0.0.1:{port}/name/nobody")
}

type Echo = (String, ReplyTo<String>);

fn spawn_echo(n: &Node) {
    let p = n.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(format!("echo {text}"));
        }
    });
    n.register("echo", &p).unwrap();
}

/// What a peer sends the victim: a pid, or a call to say that everything before it arrived.
#[derive(serde::Serialize, serde::Deserialize)]
enum Drop {
    Pid(Pid<String>),
    Sync(ReplyTo<()>),
}

/// A peer sends pids of 200 made-up nodes, four at a time; the victim decodes and drops each.
/// It keeps state for at most `max_peers` peers at any time (the sender included), forgetting
/// idle ones. (Pids still waiting in a mailbox are references: with more of them in flight than
/// `max_peers` allows, a new peer's connection would be refused.)
async fn made_up_nodes_in_messages(t: &str) {
    let victim = node(t, 8).await;
    let peer = node(t, 1024).await;
    let sink = victim.spawn(|mut inbox: Inbox<Drop>| async move {
        while let Some(m) = inbox.recv().await {
            match m {
                Drop::Pid(pid) => drop(pid),
                Drop::Sync(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    });
    victim.register("drop", &sink).unwrap();
    let to = peer.remote::<Drop>(victim.name(), "drop").unwrap();
    for port in 1..=200u16 {
        let pid = peer.resolve::<String>(&made_up(port)).unwrap();
        to.send_wait(Drop::Pid(pid)).await.unwrap();
        if port % 4 == 0 {
            to.call(Drop::Sync, T).await.unwrap();
            let known = victim.stats().peers.len();
            assert!(known <= 8, "{t}: the victim keeps {known} peers");
        }
    }
    // The sender itself was never forgotten while it was connected (or, on per-message TCP,
    // it comes back at once): a last call works.
    to.call(Drop::Sync, T).await.unwrap();
    assert!(victim.stats().peers.len() <= 8);
}

/// Peers that something refers to are kept; with no idle peer left, a pid of yet another node
/// refuses to send; once a reference is dropped, its peer is forgotten and room is made.
async fn referenced_peers_are_kept(t: &str) {
    let n = node(t, 3).await;
    let held: Vec<Pid<String>> = (1..=3)
        .map(|port| n.resolve::<String>(&made_up(port)).unwrap())
        .collect();
    let fourth = n.resolve::<String>(&made_up(4)).unwrap();
    let err = fourth.send("x".to_string()).unwrap_err();
    assert!(
        matches!(
            err.kind,
            SendErrorKind::Remote(RemoteError::TooManyPeers(ref p)) if p == "127.0.0.1:4"
        ),
        "{t}: {:?}",
        err.kind
    );
    assert_eq!(err.message, "x", "the message is handed back");
    assert_eq!(n.stats().peers.len(), 3);
    assert!(n.stats().rejected.contains_key("too many peer nodes"));
    // Dropping one held pid makes its peer idle: the next new node takes its place.
    drop(held.into_iter().next());
    let fifth = n.resolve::<String>(&made_up(5)).unwrap();
    let names: Vec<String> = n.stats().peers.into_iter().map(|p| p.name).collect();
    assert!(names.contains(&"127.0.0.1:5".to_string()), "{names:?}");
    assert!(!names.contains(&"127.0.0.1:1".to_string()), "{names:?}");
    drop(fifth);
}

/// Connections from new peers are refused while every kept peer is connected; when one goes,
/// a newcomer gets in.
async fn connections_from_new_peers(t: &str) {
    let victim = node(t, 2).await;
    spawn_echo(&victim);
    let a = node(t, 1024).await;
    let b = node(t, 1024).await;
    let c = node(t, 1024).await;
    for n in [&a, &b] {
        let echo = n.remote::<Echo>(victim.name(), "echo").unwrap();
        assert_eq!(echo.call(|r| ("hi".into(), r), T).await.unwrap(), "echo hi");
    }
    let echo_c = c.remote::<Echo>(victim.name(), "echo").unwrap();
    let refused = echo_c.call(|r| ("hi".into(), r), T).await;
    assert!(refused.is_err(), "{t}: a third peer got in: {refused:?}");
    // The refusal is counted when the refused connection's task ends, which may be just after
    // the newcomer saw it closed: wait for the count (no event tells of it).
    let deadline = Instant::now() + T;
    while !victim
        .stats()
        .rejected
        .keys()
        .any(|k| k.starts_with("too many peer nodes"))
    {
        assert!(
            Instant::now() < deadline,
            "{t}: the refusal was not counted: {:?}",
            victim.stats().rejected
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One peer leaves; the victim forgets it once idle, and the newcomer's retries get in.
    a.shutdown().await;
    let deadline = Instant::now() + T;
    loop {
        match echo_c.call(|r| ("again".into(), r), T).await {
            Ok(answer) => {
                assert_eq!(answer, "echo again");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "{t}: never let in: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(victim.stats().peers.len() <= 2);
}

macro_rules! per_transport {
    ($($transport:ident => $name:literal),* $(,)?) => {
        $(
            mod $transport {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn made_up_nodes_in_messages() {
                    super::made_up_nodes_in_messages($name).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn referenced_peers_are_kept() {
                    super::referenced_peers_are_kept($name).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn connections_from_new_peers() {
                    super::connections_from_new_peers($name).await;
                }
            }
        )*
    };
}

per_transport!(pooled_tcp => "pooled-tcp");

#[cfg(feature = "quic")]
per_transport!(quic => "quic");

mod per_message_tcp {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn made_up_nodes_in_messages() {
        super::made_up_nodes_in_messages("per-message-tcp").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn referenced_peers_are_kept() {
        super::referenced_peers_are_kept("per-message-tcp").await;
    }
}
