//! Message bodies cross nodes through two paths that must agree byte for byte: type-erased
//! serde (for types the node never saw) and the per-type codec the node registers for the types
//! it spawns and resolves. Every combination of sender path and receiver path carries the same
//! value, pids inside included.

use std::collections::BTreeMap;
use std::time::Duration;

use conc_node::*;
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Dot,
    Line(u32, i64),
    Named { name: String, tags: Vec<String> },
}

#[derive(Debug, Serialize, Deserialize)]
struct Rich {
    bytes: [u8; 32],
    shapes: Vec<Shape>,
    map: BTreeMap<String, Option<f64>>,
    reply_to: Pid<Rich2>,
}

/// What the receivers send back: the value they got, with the path that decoded it.
#[derive(Debug, Serialize, Deserialize)]
struct Rich2 {
    by: String,
    bytes: [u8; 32],
    shapes: Vec<Shape>,
    map: BTreeMap<String, Option<f64>>,
}

async fn node(transport: &str) -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("codec-suite").unwrap())
        .transport_arc(transport_by_name(transport).unwrap())
        .start()
        .await
        .unwrap()
}

/// The boxed future of a receiver process.
type Process = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A process that sends back what it got, saying which path decoded it.
fn receiver(by: &'static str) -> impl FnOnce(Inbox<Rich>) -> Process {
    move |mut inbox: Inbox<Rich>| {
        Box::pin(async move {
            while let Some(m) = inbox.recv().await {
                let _ = m.reply_to.send(Rich2 {
                    by: by.to_string(),
                    bytes: m.bytes,
                    shapes: m.shapes,
                    map: m.map,
                });
            }
        })
    }
}

async fn all_paths_agree(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    // On A: a process spawned through the bare runtime before the node saw `Rich` decodes
    // through type erasure; one spawned through the node (which registers the codec) with it.
    let erased = a.runtime().spawn(receiver("erased"));
    a.register("erased", &erased).unwrap();
    let typed = a.spawn(receiver("codec"));
    a.register("codec", &typed).unwrap();

    // On B: pids resolved through the bare runtime before the node saw `Rich` encode through
    // type erasure; pids from `Node::remote` with the codec.
    let uri = |name: &str| format!("conc://{}/name/{name}", a.name()).parse().unwrap();
    let senders = [
        (
            "erased",
            b.runtime().resolve::<Rich>(&uri("erased")).unwrap(),
        ),
        (
            "erased",
            b.runtime().resolve::<Rich>(&uri("codec")).unwrap(),
        ),
        ("codec", b.remote::<Rich>(a.name(), "erased").unwrap()),
        ("codec", b.remote::<Rich>(a.name(), "codec").unwrap()),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let back = b.spawn(move |mut inbox: Inbox<Rich2>| async move {
        while let Some(m) = inbox.recv().await {
            let _ = tx.send(m);
        }
    });
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (i * 7) as u8;
    }
    let shapes = vec![
        Shape::Dot,
        Shape::Line(3, -9),
        Shape::Named {
            name: "ü".into(),
            tags: vec!["a".into(), String::new()],
        },
    ];
    let map: BTreeMap<String, Option<f64>> =
        [("x".to_string(), Some(0.25)), ("y".to_string(), None)].into();
    let mut seen = Vec::new();
    for (how, pid) in &senders {
        pid.send(Rich {
            bytes,
            shapes: shapes.clone(),
            map: map.clone(),
            reply_to: back.clone(),
        })
        .unwrap();
        let got = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert_eq!(got.bytes, bytes, "{t}: sent {how}, decoded {}", got.by);
        assert_eq!(got.shapes, shapes, "{t}: sent {how}, decoded {}", got.by);
        assert_eq!(got.map, map, "{t}: sent {how}, decoded {}", got.by);
        seen.push((*how, got.by));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("codec", "codec".to_string()),
            ("codec", "erased".to_string()),
            ("erased", "codec".to_string()),
            ("erased", "erased".to_string()),
        ],
        "{t}: every combination of paths was taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_paths_agree_pooled_tcp() {
    all_paths_agree("pooled-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_paths_agree_per_message_tcp() {
    all_paths_agree("per-message-tcp").await;
}

#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_paths_agree_quic() {
    all_paths_agree("quic").await;
}

/// A key-value store's messages, as the server defines them.
mod server_side {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub(super) enum Store {
        Put {
            key: String,
            value: String,
            done: conc_node::ReplyTo<bool>,
        },
    }
}

/// A client's copy of them with two fields swapped: the same names, another wire form.
mod client_copy {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub(super) enum Store {
        Put {
            value: String,
            key: String,
            done: conc_node::ReplyTo<bool>,
        },
    }
}

/// A client's faithful copy in another module: the same wire form.
mod faithful_copy {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub(super) enum Store {
        Put {
            key: String,
            value: String,
            done: conc_node::ReplyTo<bool>,
        },
    }
}

/// A message type copied with two fields swapped is refused as a type mismatch (it used to be
/// accepted and stored the value under the key); a faithful copy is accepted.
async fn swapped_fields_are_refused(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let store = a.spawn(move |mut inbox: Inbox<server_side::Store>| async move {
        while let Some(server_side::Store::Put { key, value, done }) = inbox.recv().await {
            let _ = tx.send((key, value));
            let _ = done.send(true);
        }
    });
    a.register("store", &store).unwrap();
    let swapped = b.remote::<client_copy::Store>(a.name(), "store").unwrap();
    let err = swapped
        .call(
            |done| client_copy::Store::Put {
                value: "blue".into(),
                key: "color".into(),
                done,
            },
            T,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Refused {
                reason: Refusal::TypeMismatch,
                ..
            }
        ),
        "{t}: {err:?}"
    );
    let faithful = b.remote::<faithful_copy::Store>(a.name(), "store").unwrap();
    let ok = faithful
        .call(
            |done| faithful_copy::Store::Put {
                key: "color".into(),
                value: "blue".into(),
                done,
            },
            T,
        )
        .await
        .unwrap();
    assert!(ok);
    // Only the faithful copy's put reached the store, with key and value in their places.
    assert_eq!(rx.recv().await.unwrap(), ("color".into(), "blue".into()));
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_fields_are_refused_pooled_tcp() {
    swapped_fields_are_refused("pooled-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_fields_are_refused_per_message_tcp() {
    swapped_fields_are_refused("per-message-tcp").await;
}

#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_fields_are_refused_quic() {
    swapped_fields_are_refused("quic").await;
}
