//! The per-type codec registry: processes spawned after a codec for their type is registered
//! decode message bodies with it (no type erasure), earlier ones through the erased path the
//! caller supplies, and decode errors from either path are reported the same way.

use conc_core::{Codec, DeliverError, Inbox, Runtime, Target, TypeTag};

/// A toy format for `u32`: four little-endian bytes.
fn encode(m: &u32, out: &mut Vec<u8>) -> Result<(), String> {
    out.extend_from_slice(&m.to_le_bytes());
    Ok(())
}

fn decode(body: &[u8]) -> Result<u32, String> {
    let bytes: [u8; 4] = body
        .try_into()
        .map_err(|_| format!("a u32 takes 4 bytes, not {}", body.len()))?;
    Ok(u32::from_le_bytes(bytes))
}

/// Delivers `body` to the process named `name`; returns whether the erased path was asked.
fn deliver(rt: &Runtime, name: &str, body: &[u8]) -> (Result<(), DeliverError>, bool) {
    let mut erased_used = false;
    let res = rt.node_side().deliver_body(
        &Target::Name(name.into()),
        TypeTag::of::<u32>(),
        body,
        |_deliver| {
            erased_used = true;
            Err(DeliverError::Decode("erased path".into()))
        },
    );
    (res, erased_used)
}

#[tokio::test]
async fn processes_decode_with_the_codec_registered_before_they_were_spawned() {
    let rt = Runtime::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tx2 = tx.clone();
    let before = rt.spawn(move |mut inbox: Inbox<u32>| async move {
        while let Some(n) = inbox.recv().await {
            let _ = tx.send(("before", n));
        }
    });
    rt.register("before", &before).unwrap();
    rt.register_codec::<u32>(Codec { encode, decode });
    let after = rt.spawn(move |mut inbox: Inbox<u32>| async move {
        while let Some(n) = inbox.recv().await {
            let _ = tx2.send(("after", n));
        }
    });
    rt.register("after", &after).unwrap();

    // The process spawned after the registration decodes with the codec.
    let (res, erased) = deliver(&rt, "after", &7u32.to_le_bytes());
    assert!(res.is_ok(), "{res:?}");
    assert!(!erased);
    assert_eq!(rx.recv().await, Some(("after", 7)));

    // A bad body is refused with the codec's message; nothing is queued.
    let (res, erased) = deliver(&rt, "after", &[1, 2, 3]);
    assert_eq!(
        res,
        Err(DeliverError::Decode("a u32 takes 4 bytes, not 3".into()))
    );
    assert!(!erased);

    // The one spawned before takes the erased path.
    let (res, erased) = deliver(&rt, "before", &7u32.to_le_bytes());
    assert_eq!(res, Err(DeliverError::Decode("erased path".into())));
    assert!(erased);

    // Target and type checks come first, whatever the path.
    let res = rt.node_side().deliver_body(
        &Target::Name("after".into()),
        TypeTag::of::<String>(),
        &[0; 4],
        |_| unreachable!("a mismatched type is not decoded"),
    );
    assert!(
        matches!(res, Err(DeliverError::TypeMismatch { .. })),
        "{res:?}"
    );
    let res = rt.node_side().deliver_body(
        &Target::Name("nobody".into()),
        TypeTag::of::<u32>(),
        &[0; 4],
        |_| unreachable!("nothing to decode for"),
    );
    assert_eq!(res, Err(DeliverError::UnknownName("nobody".into())));

    // A second registration does not replace the first.
    fn other(_: &[u8]) -> Result<u32, String> {
        Ok(0)
    }
    rt.register_codec::<u32>(Codec {
        encode,
        decode: other,
    });
    let later =
        rt.spawn(|mut inbox: Inbox<u32>| async move { while inbox.recv().await.is_some() {} });
    rt.register("later", &later).unwrap();
    let (res, _) = deliver(&rt, "later", &[1]);
    assert!(matches!(res, Err(DeliverError::Decode(_))), "{res:?}");
    assert!(rx.try_recv().is_err());
}
