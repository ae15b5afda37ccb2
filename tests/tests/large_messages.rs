//! Large messages do not block small ones: a 64 MiB message (with raised limits) arrives whole
//! while small calls between the same two nodes keep completing, on pooled TCP (which sends
//! large frames in 64 KiB fragments between small frames) and on QUIC.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use conc_node::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes that serialize as one byte string (like `serde_bytes`), so the test spends its time on
/// the transport, not on serde walking 64 Mi elements.
#[derive(Debug)]
struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

const T: Duration = Duration::from_secs(60);
const BIG: usize = 64 << 20;

async fn node(transport: &str) -> Node {
    let limits = Limits::default()
        .with_max_frame(BIG + (1 << 20))
        .with_max_queue_bytes(2 * BIG);
    Node::builder()
        .cookie(Cookie::new("large-messages").unwrap())
        .limits(limits)
        .listen("127.0.0.1:0")
        .transport_arc(transport_by_name(transport).unwrap())
        .start()
        .await
        .unwrap()
}

/// The big message: each 4 KiB block filled with its number, so a lost, repeated or moved
/// block shows.
fn pattern() -> Vec<u8> {
    let mut v = vec![0u8; BIG];
    for (i, block) in v.chunks_mut(4096).enumerate() {
        block.fill(i as u8);
        block[0] = (i >> 8) as u8;
    }
    v
}

async fn big_message_does_not_block_small_calls(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    // On B: a process taking the big message (checking every byte), and an echo.
    let arrived = Arc::new(AtomicBool::new(false));
    let (whole_tx, whole_rx) = tokio::sync::oneshot::channel::<bool>();
    let flag = arrived.clone();
    let big = b.spawn(move |mut inbox: Inbox<Blob>| async move {
        if let Some(Blob(msg)) = inbox.recv().await {
            flag.store(true, Ordering::SeqCst);
            let whole = msg == pattern();
            let _ = whole_tx.send(whole);
        }
    });
    b.register("big", &big).unwrap();
    let echo = b.spawn(|mut inbox: Inbox<(u64, ReplyTo<u64>)>| async move {
        while let Some((n, reply)) = inbox.recv().await {
            let _ = reply.send(n + 1);
        }
    });
    b.register("echo", &echo).unwrap();

    let to_big = a.remote::<Blob>(b.name(), "big").unwrap();
    let to_echo = a.remote::<(u64, ReplyTo<u64>)>(b.name(), "echo").unwrap();
    // Connected before the big message is queued.
    assert_eq!(to_echo.call(|r| (0, r), T).await.unwrap(), 1);

    to_big.send(Blob(pattern())).unwrap();
    // Small calls made after the big message was queued: at least one must complete while
    // it is still on its way (without fragmentation the first waits behind all 64 MiB).
    let mut before_big = 0u64;
    let mut calls = 0u64;
    while !arrived.load(Ordering::SeqCst) {
        calls += 1;
        assert_eq!(to_echo.call(|r| (calls, r), T).await.unwrap(), calls + 1);
        if !arrived.load(Ordering::SeqCst) {
            before_big += 1;
        }
    }
    let whole = tokio::time::timeout(T, whole_rx).await.unwrap().unwrap();
    assert!(whole, "the 64 MiB message arrived changed or cut");
    assert!(
        before_big > 0,
        "no small call completed while the 64 MiB message was in flight ({t})"
    );
    // And the connection still carries small calls afterwards.
    assert_eq!(to_echo.call(|r| (7, r), T).await.unwrap(), 8);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tcp_big_message_does_not_block_small_calls() {
    big_message_does_not_block_small_calls("pooled-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_big_message_does_not_block_small_calls() {
    big_message_does_not_block_small_calls("quic").await;
}
