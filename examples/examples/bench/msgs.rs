//! The messages of the bench and the processes that receive them, generic over the 32-byte
//! payload: a plain `[u8; 32]` (serde sees a tuple of 32 `u8`), or [`Bytes32`] (serde sees one
//! byte string).

use std::fmt;

use conc_node::{Inbox, Message, ReplyTo};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A 32-byte payload type, with the names its server processes are registered under.
pub(crate) trait Payload: Message + Copy + PartialEq + Sync {
    /// The name of the sink process for this payload on the server.
    const SINK: &'static str;
    /// The name of the echo process for this payload on the server.
    const ECHO: &'static str;
    /// A payload of 32 copies of `byte`.
    fn filled(byte: u8) -> Self;
}

impl Payload for [u8; 32] {
    const SINK: &'static str = "sink";
    const ECHO: &'static str = "echo";

    fn filled(byte: u8) -> Self {
        [byte; 32]
    }
}

/// 32 bytes that serialize as one byte string (`serialize_bytes`, like `serde_bytes`) rather
/// than as a tuple of 32 elements.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Bytes32(pub(crate) [u8; 32]);

impl Payload for Bytes32 {
    const SINK: &'static str = "sink-bytes";
    const ECHO: &'static str = "echo-bytes";

    fn filled(byte: u8) -> Self {
        Bytes32([byte; 32])
    }
}

impl Serialize for Bytes32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes32;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes32, E> {
                v.try_into()
                    .map(Bytes32)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes32, A::Error> {
                let mut out = [0u8; 32];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Bytes32(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// What the sink (local and remote) receives: data to count, and the question "how many?".
#[derive(Serialize, Deserialize)]
#[serde(bound = "P: Payload")]
pub(crate) enum Sink<P> {
    /// One message to count.
    Data(P),
    /// Answer with the count so far and start counting again from zero. Sent after the data,
    /// it arrives after it (FIFO per pair), so the answer covers all of it.
    Done(ReplyTo<u64>),
}

/// What the echo process receives: a payload to send back.
#[derive(Serialize, Deserialize)]
#[serde(bound = "P: Payload")]
pub(crate) struct Echo<P> {
    /// Sent back as the reply.
    pub(crate) payload: P,
    /// Where the reply goes.
    pub(crate) reply: ReplyTo<P>,
}

/// The body of the sink process: counts `Data`, answers `Done`.
pub(crate) async fn sink_loop<P: Payload>(mut inbox: Inbox<Sink<P>>) {
    let mut count = 0u64;
    while let Some(msg) = inbox.recv().await {
        match msg {
            Sink::Data(payload) => {
                std::hint::black_box(payload);
                count += 1;
            }
            Sink::Done(reply) => {
                let _ = reply.send(count);
                count = 0;
            }
        }
    }
}

/// The body of the echo process.
pub(crate) async fn echo_loop<P: Payload>(mut inbox: Inbox<Echo<P>>) {
    while let Some(Echo { payload, reply }) = inbox.recv().await {
        let _ = reply.send(payload);
    }
}

/// What the large sink receives (`remote_large`, `remote_hol`): byte vectors to count, and the
/// question "how many bytes?".
#[derive(Serialize, Deserialize)]
pub(crate) enum LargeSink {
    /// Bytes to count.
    Data(Vec<u8>),
    /// Answer with the bytes counted so far and start again from zero.
    Done(ReplyTo<u64>),
}

/// The body of the large sink: counts bytes, answers `Done`.
pub(crate) async fn large_sink_loop(mut inbox: Inbox<LargeSink>) {
    let mut bytes = 0u64;
    while let Some(msg) = inbox.recv().await {
        match msg {
            LargeSink::Data(v) => bytes += v.len() as u64,
            LargeSink::Done(reply) => {
                let _ = reply.send(bytes);
                bytes = 0;
            }
        }
    }
}

/// The name of sink `i` of `remote_many` for payload `P`.
pub(crate) fn many_sink<P: Payload>(i: usize) -> String {
    format!("{}-{i}", P::SINK)
}
