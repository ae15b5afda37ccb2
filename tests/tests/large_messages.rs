//! Large messages do not block small ones: a 64 MiB message (with raised limits) arrives whole
//! while small calls between the same two nodes keep completing, on pooled TCP (which sends
//! large frames in 64 KiB fragments between small frames) and on QUIC (which sends them on a
//! stream of their own, also when every small frame shares one lane with them). And a process
//! that alternates large and small messages to another has them arrive in the order sent.

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
    // "quic-1": QUIC with a single lane for ordinary frames, so the small calls and the big
    // message share it.
    let transport: Arc<dyn Transport> = match transport {
        "quic-1" => Arc::new(Quic::with_lanes(1)),
        t => transport_by_name(t).unwrap(),
    };
    Node::builder()
        .cookie(Cookie::new("large-messages").unwrap())
        .limits(limits)
        .listen("127.0.0.1:0")
        .transport_arc(transport)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_one_lane_big_message_does_not_block_small_calls() {
    big_message_does_not_block_small_calls("quic-1").await;
}

/// A message of one process to another: large (a blob of `len` bytes, each its index) or
/// small, numbered in sending order.
#[derive(Debug, Serialize, Deserialize)]
enum Mixed {
    Large(u32, Blob),
    Small(u32),
}

/// Large and small messages of one sender to one receiver arrive in the order sent, whole,
/// although the large ones travel apart from the small ones.
async fn mixed_sizes_keep_their_order(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Vec<(u32, bool)>>();
    const N: u32 = 24;
    let sink = b.spawn(move |mut inbox: Inbox<Mixed>| async move {
        let mut seen = Vec::new();
        while let Some(m) = inbox.recv().await {
            seen.push(match m {
                Mixed::Large(i, Blob(v)) => {
                    (i, v.len() == 256 << 10 && v.iter().all(|&x| x == i as u8))
                }
                Mixed::Small(i) => (i, true),
            });
            if seen.len() == N as usize {
                break;
            }
        }
        let _ = done_tx.send(seen);
    });
    b.register("mixed", &sink).unwrap();
    let to = a.remote::<Mixed>(b.name(), "mixed").unwrap();
    for i in 0..N {
        // Large, small, small, large, large, small, ...
        let m = if matches!(i % 4, 0 | 3) {
            Mixed::Large(i, Blob(vec![i as u8; 256 << 10]))
        } else {
            Mixed::Small(i)
        };
        tokio::time::timeout(T, to.send_wait(m))
            .await
            .unwrap()
            .unwrap();
    }
    let seen = tokio::time::timeout(T, done_rx).await.unwrap().unwrap();
    let order: Vec<u32> = seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "out of order ({t})");
    assert!(
        seen.iter().all(|(_, whole)| *whole),
        "a large message arrived changed ({t})"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_mixed_sizes_keep_their_order() {
    mixed_sizes_keep_their_order("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_one_lane_mixed_sizes_keep_their_order() {
    mixed_sizes_keep_their_order("quic-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tcp_mixed_sizes_keep_their_order() {
    mixed_sizes_keep_their_order("pooled-tcp").await;
}
