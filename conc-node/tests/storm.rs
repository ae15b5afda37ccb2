//! A start-up storm against a node with small handshake caps (one connection in the handshake
//! at a time): many nodes call it at once, connections are refused by the caps while the node
//! is alive and busy, and every call still succeeds (the refusals are retried with backoff
//! within the call's timeout) on every transport.

mod common;

use std::time::Duration;

use conc_node::*;

/// Calls' timeout: generous, a failure means a call was failed rather than retried.
const T: Duration = Duration::from_secs(30);
/// Nodes calling at once.
const CALLERS: usize = 24;

fn cookie() -> Cookie {
    Cookie::new("storm-suite-cookie").unwrap()
}

type Echo = (u64, ReplyTo<u64>);

async fn storm_of_first_calls_all_succeed(t: &str) {
    let server = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie())
        .limits(
            Limits::default()
                .with_max_handshakes(1)
                .with_max_handshakes_per_ip(1),
        )
        .transport_arc(transport_by_name(t).unwrap())
        .start()
        .await
        .unwrap();
    let echo = server.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((n, reply)) = inbox.recv().await {
            let _ = reply.send(n);
        }
    });
    server.register("echo", &echo).unwrap();
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        callers.push(
            Node::builder()
                .listen("127.0.0.1:0")
                .cookie(cookie())
                .transport_arc(transport_by_name(t).unwrap())
                .start()
                .await
                .unwrap(),
        );
    }
    let started = std::time::Instant::now();
    // Every caller's first call at once.
    let calls: Vec<_> = callers
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let pid = n.remote::<Echo>(server.name(), "echo").unwrap();
            tokio::spawn(async move { pid.call(|r| (i as u64, r), T).await })
        })
        .collect();
    let mut failed = Vec::new();
    for (i, c) in calls.into_iter().enumerate() {
        match c.await.unwrap() {
            Ok(n) => assert_eq!(n, i as u64),
            Err(e) => failed.push(format!("caller {i}: {e}")),
        }
    }
    let refused = server
        .stats()
        .rejected
        .get("too many connections in handshake")
        .copied()
        .unwrap_or(0);
    println!(
        "{t}: {CALLERS} first calls, {refused} connections refused by the handshake cap, all answered after {:?}",
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{t}: {} failed: {failed:#?}",
        failed.len()
    );
    // What the test is about: the caps did refuse connections while the server was alive.
    assert!(
        refused > 0,
        "{t}: the storm hit no cap, so it showed nothing"
    );
    for n in callers {
        n.shutdown().await;
    }
    server.shutdown().await;
}

common::suite!(storm_of_first_calls_all_succeed);
