//! `Node::connect`: dial and handshake now, on every transport. Connected at once to a live
//! node (also through an alias), retried while the peer is not there yet (it starts after the
//! first failed attempt), and typed errors: nothing there, a wrong cookie, a dial policy.

mod common;

use std::time::Duration;

use conc_node::*;

/// A generous bound for what must succeed; failing it means the event never came.
const T: Duration = Duration::from_secs(30);
/// The timeout given to a connect that must fail (the API's own deadline, not a test bound).
const SHORT: Duration = Duration::from_secs(2);

fn cookie() -> Cookie {
    Cookie::new("connect-suite-cookie").unwrap()
}

async fn node_on(t: &str, listen: &str, cookie: Cookie) -> Node {
    Node::builder()
        .listen(listen)
        .cookie(cookie)
        .transport_arc(transport_by_name(t).unwrap())
        .start()
        .await
        .unwrap()
}

/// A port of 127.0.0.1 free a moment ago, on the protocol of transport `t`.
fn free_port(t: &str) -> u16 {
    if t == "quic" {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A live node: connected, under the name it proved, also when dialled through an alias.
async fn connects_to_a_live_node(t: &str) {
    let a = node_on(t, "127.0.0.1:0", cookie()).await;
    let b = node_on(t, "127.0.0.1:0", cookie()).await;
    assert!(!b.is_connected(a.name()));
    let peer = tokio::time::timeout(T, b.connect(a.name(), T))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer.name, a.name());
    assert_eq!(peer.incarnation, a.incarnation());
    assert!(b.is_connected(a.name()), "{t}: {:?}", b.nodes());
    // Again: at once, the same peer.
    assert_eq!(b.connect(a.name(), T).await.unwrap(), peer);
    // Through an alias: the proven name.
    let c = node_on(t, "127.0.0.1:0", cookie()).await;
    let alias = a.name().replace("127.0.0.1", "localhost");
    let via_alias = c.connect(&alias, T).await.unwrap();
    assert_eq!(via_alias.name, a.name());
    // Itself: at once.
    assert_eq!(b.connect(b.name(), T).await.unwrap().name, b.name());
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// The peer is not there at the first attempt (refused); it starts after that failure is
/// reported, and the same connect call succeeds.
async fn retries_until_the_peer_is_up(t: &str) {
    let b = node_on(t, "127.0.0.1:0", cookie()).await;
    let port = free_port(t);
    let name = format!("127.0.0.1:{port}");
    let mut events = b.node_events();
    let connecting = {
        let b = b.clone();
        let name = name.clone();
        tokio::spawn(async move { b.connect(&name, T).await })
    };
    // The first attempt failed (nothing listens yet).
    tokio::time::timeout(T, async {
        loop {
            if let Ok(NodeEvent::Down { name: n, .. }) = events.recv().await
                && n == name
            {
                break;
            }
        }
    })
    .await
    .expect("the first attempt's failure");
    let a = node_on(t, &name, cookie()).await;
    let peer = tokio::time::timeout(T, connecting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(peer.name, name);
    assert_eq!(peer.incarnation, a.incarnation());
    a.shutdown().await;
    b.shutdown().await;
}

/// Nothing listens: a timeout naming the failure.
async fn nothing_there_is_a_timeout(t: &str) {
    let b = node_on(t, "127.0.0.1:0", cookie()).await;
    let name = format!("127.0.0.1:{}", free_port(t));
    match tokio::time::timeout(T, b.connect(&name, SHORT))
        .await
        .unwrap()
    {
        Err(ConnectError::Timeout {
            peer,
            timeout,
            last,
        }) => {
            assert_eq!(peer, name);
            assert_eq!(timeout, SHORT);
            if t == "quic" {
                // UDP: nothing answers a datagram to a closed port, so a QUIC connect fails only
                // after the connect timeout (5 s), later than this deadline.
                assert!(
                    matches!(last, None | Some(DownReason::Unreachable)),
                    "{t}: {last:?}"
                );
            } else {
                assert_eq!(last, Some(DownReason::Unreachable), "{t}");
            }
        }
        other => panic!("{t}: {other:?}"),
    }
    b.shutdown().await;
}

/// A peer with another cookie: a timeout naming the failed handshake.
async fn wrong_cookie_is_a_failed_handshake(t: &str) {
    let a = node_on(t, "127.0.0.1:0", Cookie::new("another-cookie").unwrap()).await;
    let b = node_on(t, "127.0.0.1:0", cookie()).await;
    match tokio::time::timeout(T, b.connect(a.name(), SHORT))
        .await
        .unwrap()
    {
        Err(ConnectError::Timeout { last, .. }) => {
            assert_eq!(last, Some(DownReason::HandshakeFailed), "{t}");
        }
        other => panic!("{t}: {other:?}"),
    }
    assert!(!b.is_connected(a.name()));
    a.shutdown().await;
    b.shutdown().await;
}

/// A dial policy that does not allow the peer: refused at once.
async fn dial_policy_refuses(t: &str) {
    let a = node_on(t, "127.0.0.1:0", cookie()).await;
    let b = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie())
        .dial_policy(DialPolicy::AllowList(vec!["10.0.0.1:*".into()]))
        .transport_arc(transport_by_name(t).unwrap())
        .start()
        .await
        .unwrap();
    assert_eq!(
        b.connect(a.name(), T).await,
        Err(ConnectError::DialRefused(a.name().to_string()))
    );
    b.shutdown().await;
    assert_eq!(
        b.connect(a.name(), T).await,
        Err(ConnectError::ShuttingDown)
    );
    a.shutdown().await;
}

common::suite!(
    connects_to_a_live_node,
    retries_until_the_peer_is_up,
    nothing_there_is_a_timeout,
    wrong_cookie_is_a_failed_handshake,
    dial_policy_refuses,
);
