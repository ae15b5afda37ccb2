//! Quick smoke test.
use conc_node::*;
use std::time::Duration;

type Ping = (String, ReplyTo<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_pooled_and_per_message() {
    for tname in conc_node::transport_names() {
        let cookie = Cookie::new("secret").unwrap();
        let mk = || conc_node::transport_by_name(tname).unwrap();
        let a = Node::builder()
            .listen("127.0.0.1:0")
            .cookie(cookie.clone())
            .transport_arc(mk())
            .start()
            .await
            .unwrap();
        let b = Node::builder()
            .listen("127.0.0.1:0")
            .cookie(cookie.clone())
            .transport_arc(mk())
            .start()
            .await
            .unwrap();
        let p1 = a.spawn(|mut inbox: Inbox<Ping>| async move {
            while let Some((t, reply)) = inbox.recv().await {
                let _ = reply.send(format!("got {t}"));
            }
        });
        a.register("process1", &p1).unwrap();
        let remote = b.remote::<Ping>(a.name(), "process1").unwrap();
        let t0 = std::time::Instant::now();
        let r = remote
            .call(|reply| ("hi".into(), reply), Duration::from_secs(5))
            .await;
        println!("{tname} {r:?} in {:?}", t0.elapsed());
        assert_eq!(r.unwrap(), "got hi");
        let t0 = std::time::Instant::now();
        for i in 0..200 {
            let r = remote
                .call(|reply| (format!("{i}"), reply), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(r, format!("got {i}"));
        }
        println!("200 calls in {:?}", t0.elapsed());
    }
}

#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_wrong_cookie_says_why() {
    let a = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("one").unwrap())
        .transport_arc(conc_node::transport_by_name("quic").unwrap())
        .start()
        .await
        .unwrap();
    let b = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("two").unwrap())
        .transport_arc(conc_node::transport_by_name("quic").unwrap())
        .start()
        .await
        .unwrap();
    let p = b.remote::<Ping>(a.name(), "x").unwrap();
    let err = p
        .call(|r| ("x".into(), r), Duration::from_secs(30))
        .await
        .unwrap_err();
    // The peer refused the handshake: told apart from a peer that cannot be reached.
    assert_eq!(
        err,
        CallError::Send(SendErrorKind::Remote(RemoteError::Connection {
            peer: a.name().to_string(),
            reason: DownReason::HandshakeFailed,
        })),
        "{err}"
    );
}

/// Sends to remote pids work from threads outside the tokio runtime, on every transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_from_a_plain_thread() {
    for tname in conc_node::transport_names() {
        let cookie = Cookie::new("secret").unwrap();
        let mk = || conc_node::transport_by_name(tname).unwrap();
        let a = Node::builder()
            .listen("127.0.0.1:0")
            .cookie(cookie.clone())
            .transport_arc(mk())
            .start()
            .await
            .unwrap();
        let b = Node::builder()
            .listen("127.0.0.1:0")
            .cookie(cookie.clone())
            .transport_arc(mk())
            .start()
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let sink = a.spawn(move |mut inbox: Inbox<String>| async move {
            if let Some(s) = inbox.recv().await {
                let _ = tx.take().unwrap().send(s);
            }
        });
        a.register("sink", &sink).unwrap();
        let name = a.name().to_string();
        let b2 = b.clone();
        std::thread::spawn(move || {
            let p = b2.remote::<String>(&name, "sink").unwrap();
            p.send("from a thread".to_string()).unwrap();
        })
        .join()
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, "from a thread", "{tname}");
    }
}

/// After a failed connect, sends fail at once while the reconnection backs off, and a later
/// attempt reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_backs_off_then_succeeds() {
    for tname in ["pooled-tcp", "quic"] {
        if !conc_node::transport_names().contains(&tname) {
            continue;
        }
        let cookie = Cookie::new("secret").unwrap();
        let b = Node::builder()
            .cookie(cookie.clone())
            .transport_arc(conc_node::transport_by_name(tname).unwrap())
            .start()
            .await
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let p = b.remote::<String>(&addr, "sink").unwrap();
        // The first send queues and triggers a connect, which fails.
        p.send("first".to_string()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let err = loop {
            match p.send("probe".to_string()) {
                Err(e) => break e,
                Ok(()) => {
                    assert!(std::time::Instant::now() < deadline, "{tname}: no backoff");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        // During the backoff a send fails at once, handing the message back.
        assert!(
            matches!(
                &err.kind,
                SendErrorKind::Remote(RemoteError::Connection {
                    reason: DownReason::Unreachable,
                    ..
                })
            ),
            "{tname}: {err}"
        );
        assert_eq!(err.message, "probe");
        // The peer appears; after the backoff the next send reconnects.
        let a = Node::builder()
            .listen(addr.clone())
            .cookie(cookie)
            .transport_arc(conc_node::transport_by_name(tname).unwrap())
            .start()
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let sink = a.spawn(move |mut inbox: Inbox<String>| async move {
            while let Some(s) = inbox.recv().await {
                if s == "after" {
                    let _ = tx.take().unwrap().send(());
                }
            }
        });
        a.register("sink", &sink).unwrap();
        // Sends fail at once until the backoff is over; the first one accepted reconnects and
        // is delivered.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = p.send("after".to_string()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{tname}: sends still fail after the backoff: {e}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{tname}: no reconnection after the backoff"))
            .unwrap();
        assert!(sink.is_alive(), "{tname}");
    }
}
