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
    assert!(err.to_string().contains("cookie"), "{err}");
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
