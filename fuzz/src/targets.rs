//! The three fuzz targets: the frame decoder, the handshake state machine, and message decoding
//! into a process. Each checks properties beyond "does not panic" and reports the outcomes it
//! saw as features: an input that shows a new feature joins the corpus (a cheap stand-in for
//! coverage feedback).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use conc_core::{
    BoxFuture, DownFn, Inbox, NodeHook, Pid, ProcessId, RemoteError, RemoteSink, ReplyRequest,
    ReplyTo, Runtime, SendRequest, Target, TypeTag,
};
use conc_wire::bin;
use conc_wire::frame::{self, ErrorCode, Frame, FrameCodec, FrameSplitter, LEN_PREFIX, kind};
use conc_wire::handshake::{Handshake, HandshakeConfig, NONCE_LEN, NodeIdentity};
use serde::{Deserialize, Serialize};

/// A fuzz target.
pub(crate) trait FuzzTarget {
    /// Named seed inputs (small, valid), written by `--write-seeds` and always in the corpus.
    fn seeds(&self) -> Vec<(String, Vec<u8>)>;
    /// Runs one input. A broken property panics (a crash); outcomes go to `features`.
    fn run(&mut self, input: &[u8], features: &mut Vec<u64>);
}

/// The names of the targets, as given on the command line.
pub(crate) const NAMES: [&str; 3] = ["frame", "handshake", "message"];

/// A target by name.
pub(crate) fn by_name(name: &str) -> Option<Box<dyn FuzzTarget>> {
    match name {
        "frame" => Some(Box::new(FrameTarget)),
        "handshake" => Some(Box::new(HandshakeTarget)),
        "message" => Some(Box::new(MessageTarget::new())),
        _ => None,
    }
}

/// A feature: a hash of what was seen.
fn feature(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// An error's category: its text with digits dropped, at most 48 characters, so that an error
/// that quotes a length or a value does not count as new every time.
fn category(e: &impl std::fmt::Display) -> String {
    e.to_string()
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(48)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Frames.

/// The frame decoder. The first input byte chooses the mode and the frame limit: an even byte
/// treats the rest as a byte stream, split into frames with `FrameSplitter` (and, separately,
/// with the tokio codec) and each frame decoded; an odd byte treats the rest as one frame
/// payload, decoded with `Frame::decode` and, when it decodes, re-encoded and decoded again.
pub(crate) struct FrameTarget;

const FRAME_LIMITS: [usize; 4] = [16, 300, 4096, 1 << 20];

impl FuzzTarget for FrameTarget {
    fn seeds(&self) -> Vec<(String, Vec<u8>)> {
        let mut seeds = Vec::new();
        for (name, payload) in sample_frames() {
            // As one payload (mode 1, limit 1 MiB)...
            let mut one = vec![0x07];
            one.extend_from_slice(&payload[LEN_PREFIX..]);
            seeds.push((format!("payload-{name}"), one));
            // ...and as a stream of two frames (mode 0).
            let mut stream = vec![0x06];
            stream.extend_from_slice(&payload);
            stream.extend_from_slice(&payload);
            seeds.push((format!("stream-{name}"), stream));
        }
        seeds.push((
            "stream-huge-prefix".into(),
            vec![0x06, 0xff, 0xff, 0xff, 0xff],
        ));
        seeds
    }

    fn run(&mut self, input: &[u8], features: &mut Vec<u64>) {
        let Some((&mode, rest)) = input.split_first() else {
            return;
        };
        let max = FRAME_LIMITS[usize::from(mode >> 1) % FRAME_LIMITS.len()];
        if mode & 1 == 0 {
            split_stream(rest, max, features);
            codec_stream(rest, max, features);
        } else {
            decode_payload(rest, features);
        }
    }
}

/// One whole frame of each kind (with its length prefix).
fn sample_frames() -> Vec<(&'static str, Vec<u8>)> {
    let pid = ProcessId {
        incarnation: 7,
        id: 3,
    };
    let mut out = Vec::new();
    let mut f = Vec::new();
    let target = Target::Name("logger".into());
    let body = "Log Message!".to_string();
    frame::encode_send(
        &mut f,
        &SendRequest {
            target: &target,
            tag: TypeTag::of::<String>(),
            call_ref: Some(9),
            body: &body,
            encode: None,
        },
        1 << 20,
    )
    .unwrap();
    out.push(("send", std::mem::take(&mut f)));
    frame::encode_reply(
        &mut f,
        &ReplyRequest {
            incarnation: 7,
            reply_id: 4,
            tag: TypeTag::of::<String>(),
            body: &body,
        },
        1 << 20,
    )
    .unwrap();
    out.push(("reply", std::mem::take(&mut f)));
    frame::encode_reply_dropped(&mut f, 7, 4, true).unwrap();
    out.push(("reply-dropped", std::mem::take(&mut f)));
    frame::encode_error(&mut f, Some(3), ErrorCode::TypeMismatch, "type mismatch").unwrap();
    out.push(("error", std::mem::take(&mut f)));
    frame::encode_monitor(&mut f, &Target::Id(pid), 5, false).unwrap();
    out.push(("monitor", std::mem::take(&mut f)));
    frame::encode_link(&mut f, &target, pid, true).unwrap();
    out.push(("unlink", std::mem::take(&mut f)));
    frame::encode_link_exit(
        &mut f,
        &Target::Id(pid),
        pid,
        &conc_core::ExitReason::Panic("boom".into()),
    )
    .unwrap();
    out.push(("link-exit", std::mem::take(&mut f)));
    frame::encode_down(&mut f, 5, pid, &conc_core::ExitReason::NoConnection).unwrap();
    out.push(("down", std::mem::take(&mut f)));
    frame::encode_bare(&mut f, kind::PING);
    out.push(("ping", std::mem::take(&mut f)));
    frame::encode_handshake(
        &mut f,
        &client(HandshakeTarget::cookie(false))
            .poll_transmit()
            .unwrap(),
    );
    out.push(("handshake", std::mem::take(&mut f)));
    frame::encode_lane(&mut f, 3).unwrap();
    out.push(("lane", std::mem::take(&mut f)));
    frame::encode_barrier(&mut f, &[0, 12, 300, 1]).unwrap();
    out.push(("barrier", std::mem::take(&mut f)));
    out
}

fn split_stream(stream: &[u8], max: usize, features: &mut Vec<u64>) {
    let splitter = FrameSplitter::new(max);
    let mut at = 0;
    let mut frames = 0usize;
    loop {
        let buf = &stream[at..];
        match splitter.split(buf) {
            Ok(Some((range, total))) => {
                assert_eq!(range.start, LEN_PREFIX);
                assert_eq!(range.end, total);
                assert!(total <= buf.len() && total - LEN_PREFIX <= max);
                decode_payload(&buf[range], features);
                at += total;
                frames += 1;
            }
            Ok(None) => {
                let needed = splitter.needed(buf);
                assert!(needed <= LEN_PREFIX + max, "needed {needed} over the limit");
                assert!(buf.len() < needed || buf.len() < LEN_PREFIX);
                features.push(feature(("split-incomplete", buf.len().min(LEN_PREFIX))));
                break;
            }
            Err(e) => {
                features.push(feature(("split-error", category(&e))));
                break;
            }
        }
    }
    features.push(feature(("frames", frames.min(8))));
}

/// The same stream through the tokio codec, in small chunks: it must agree with the splitter
/// on the frames, and never reserve more than the limit for an announced frame.
fn codec_stream(stream: &[u8], max: usize, features: &mut Vec<u64>) {
    use tokio_util::codec::Decoder;
    let mut codec = FrameCodec::new(max);
    let mut src = bytes::BytesMut::new();
    let mut frames = 0usize;
    for chunk in stream.chunks(7) {
        src.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut src) {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= max);
                    frames += 1;
                }
                Ok(None) => {
                    // Growth may round up, but is bounded by the limit, not by the length
                    // a frame announces.
                    assert!(
                        src.capacity() <= 4 * (LEN_PREFIX + max) + 8192,
                        "the codec reserved {} bytes for a limit of {max}",
                        src.capacity()
                    );
                    break;
                }
                Err(_) => {
                    features.push(feature(("codec-error", frames.min(8))));
                    return;
                }
            }
        }
    }
}

fn decode_payload(payload: &[u8], features: &mut Vec<u64>) {
    match Frame::decode(payload) {
        Ok(frame) => {
            features.push(feature(("decoded", frame.kind_name())));
            check_round_trip(payload, &frame);
        }
        Err(e) => features.push(feature(("decode-error", payload.first(), category(&e)))),
    }
}

/// A decoded frame whose content can be re-encoded encodes to a frame that decodes the same.
fn check_round_trip(payload: &[u8], frame: &Frame<'_>) {
    let mut out = Vec::new();
    match frame {
        Frame::Send { body, .. } | Frame::Reply { body, .. } => {
            // The body is the payload's tail, untouched until the target is known.
            assert!(payload.ends_with(body));
            return;
        }
        Frame::Handshake(m) => {
            assert_eq!(*m, &payload[1..]);
            return;
        }
        Frame::ReplyDropped {
            incarnation,
            reply_id,
            panicking,
        } => frame::encode_reply_dropped(&mut out, *incarnation, *reply_id, *panicking).unwrap(),
        Frame::ReplyFailed {
            incarnation,
            reply_id,
            code,
        } => frame::encode_reply_failed(&mut out, *incarnation, *reply_id, *code).unwrap(),
        Frame::Kill { target } => frame::encode_kill(&mut out, target).unwrap(),
        Frame::Linked { name, target, from } => {
            frame::encode_linked(&mut out, name, *target, *from).unwrap()
        }
        Frame::Error {
            call_ref,
            code,
            detail,
        } => {
            if detail.len() > 512 {
                return; // the encoder cuts long details
            }
            frame::encode_error(&mut out, *call_ref, *code, detail).unwrap()
        }
        Frame::Monitor { target, monitor } => {
            frame::encode_monitor(&mut out, target, *monitor, false).unwrap()
        }
        Frame::Demonitor { target, monitor } => {
            frame::encode_monitor(&mut out, target, *monitor, true).unwrap()
        }
        Frame::Link { target, from } => frame::encode_link(&mut out, target, *from, false).unwrap(),
        Frame::Unlink { target, from } => {
            frame::encode_link(&mut out, target, *from, true).unwrap()
        }
        Frame::LinkExit {
            target,
            from,
            reason,
        } => frame::encode_link_exit(&mut out, target, *from, reason).unwrap(),
        Frame::Exit {
            target,
            from,
            reason,
        } => frame::encode_exit(&mut out, target, *from, reason).unwrap(),
        Frame::Down {
            monitor,
            pid,
            reason,
        } => frame::encode_down(&mut out, *monitor, *pid, reason).unwrap(),
        Frame::Ack => frame::encode_bare(&mut out, kind::ACK),
        Frame::Ping => frame::encode_bare(&mut out, kind::PING),
        Frame::Pong => frame::encode_bare(&mut out, kind::PONG),
        Frame::Goodbye => frame::encode_bare(&mut out, kind::GOODBYE),
        Frame::Lane(lane) => frame::encode_lane(&mut out, *lane).unwrap(),
        Frame::Barrier(counts) => frame::encode_barrier(&mut out, counts).unwrap(),
        Frame::Fragment { last, chunk } => frame::encode_fragment(&mut out, *last, chunk),
        Frame::Retire(streams) => frame::encode_retire(&mut out, *streams).unwrap(),
    }
    let again = Frame::decode(&out[LEN_PREFIX..]).expect("a re-encoded frame decodes");
    assert_eq!(&again, frame, "round trip changed the frame");
}

// ---------------------------------------------------------------------------------------------
// The handshake.

/// The handshake state machine. The first input byte chooses the machine and its state (see
/// [`HandshakeTarget::machine`]) and whether it holds another cookie than the messages were
/// made with; the rest is a script of messages, each a 2-byte little-endian length and the
/// bytes, fed to the machine one by one.
pub(crate) struct HandshakeTarget;

const NC: [u8; NONCE_LEN] = [0xc1; NONCE_LEN];
const NS: [u8; NONCE_LEN] = [0x5e; NONCE_LEN];

fn client(cookie: conc_wire::Cookie) -> Handshake {
    let mut cfg = HandshakeConfig::new(
        cookie,
        NodeIdentity {
            name: "127.0.0.1:9001".into(),
            incarnation: 11,
        },
    );
    cfg.channel_binding = b"binding".to_vec();
    Handshake::client(cfg, NC)
}

fn server(cookie: conc_wire::Cookie, max_message: usize) -> Handshake {
    let mut cfg = HandshakeConfig::new(
        cookie,
        NodeIdentity {
            name: "127.0.0.1:9000".into(),
            incarnation: 22,
        },
    );
    cfg.channel_binding = b"binding".to_vec();
    cfg.max_message = max_message;
    Handshake::server(cfg, NS)
}

/// The messages of a successful exchange between the reference client and server.
fn valid_exchange() -> Vec<Vec<u8>> {
    let mut c = client(HandshakeTarget::cookie(false));
    let mut s = server(HandshakeTarget::cookie(false), 4096);
    let mut log = Vec::new();
    for _ in 0..4 {
        if let Some(m) = c.poll_transmit() {
            s.handle(&m).unwrap();
            log.push(m);
        }
        if let Some(m) = s.poll_transmit() {
            c.handle(&m).unwrap();
            log.push(m);
        }
    }
    assert!(c.is_done() && s.is_done());
    log
}

impl HandshakeTarget {
    fn cookie(other: bool) -> conc_wire::Cookie {
        conc_wire::Cookie::new(if other { "other-cookie" } else { "secret" }).unwrap()
    }

    /// The machine under test for selector `sel`: bits 0–2 the state (0 fresh server,
    /// 1 server after a valid hello, 2 fresh client, 3 client after a valid challenge,
    /// 4 finished server, 5 finished client, 6 failed server, 7 failed client); bit 3 another
    /// cookie (states 0–3 only); bits 4–5 the server's `max_message`.
    fn machine(sel: u8, log: &[Vec<u8>]) -> (Handshake, bool) {
        let other = sel & 8 != 0 && sel & 7 < 4;
        let cookie = Self::cookie(other);
        let max_message = [4096, 64, 100_000, 4096][usize::from(sel >> 4) & 3];
        let mut h = match sel & 7 {
            0 => server(cookie, max_message),
            1 => {
                let mut s = server(cookie, max_message);
                if s.handle(&log[0]).is_ok() {
                    let _ = s.poll_transmit();
                }
                s
            }
            2 => client(cookie),
            3 => {
                let mut c = client(cookie);
                let _ = c.poll_transmit();
                c.handle(&log[1]).unwrap();
                c
            }
            4 => {
                let mut s = server(cookie, max_message);
                s.handle(&log[0]).unwrap();
                s.handle(&log[2]).unwrap();
                assert!(s.is_done());
                s
            }
            5 => {
                let mut c = client(cookie);
                c.handle(&log[1]).unwrap();
                c.handle(&log[3]).unwrap();
                assert!(c.is_done());
                c
            }
            6 => {
                let mut s = server(cookie, max_message);
                let _ = s.handle(b"\xffgarbage");
                s
            }
            _ => {
                let mut c = client(cookie);
                let _ = c.handle(b"");
                c
            }
        };
        while h.poll_transmit().is_some() {}
        (h, other)
    }
}

/// Splits a script into messages: each a 2-byte little-endian length and that many bytes (or
/// what is left).
fn script(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while rest.len() >= 2 && out.len() < 8 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        out.push(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
    out
}

fn encode_script(sel: u8, messages: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![sel];
    for m in messages {
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        out.extend_from_slice(m);
    }
    out
}

impl FuzzTarget for HandshakeTarget {
    fn seeds(&self) -> Vec<(String, Vec<u8>)> {
        let log = valid_exchange();
        let reject = {
            let mut s = server(Self::cookie(false), 4096);
            let _ = s.handle(b"\x09");
            s.poll_transmit().unwrap()
        };
        vec![
            (
                "server-hello-proof".into(),
                encode_script(0, &[&log[0], &log[2]]),
            ),
            ("server-proof".into(), encode_script(1, &[&log[2]])),
            (
                "client-challenge-proof".into(),
                encode_script(2, &[&log[1], &log[3]]),
            ),
            ("client-proof".into(), encode_script(3, &[&log[3]])),
            (
                "other-cookie-server".into(),
                encode_script(8, &[&log[0], &log[2]]),
            ),
            (
                "other-cookie-client".into(),
                encode_script(10, &[&log[1], &log[3]]),
            ),
            ("done-server-more".into(), encode_script(4, &[&log[2]])),
            ("done-client-more".into(), encode_script(5, &[&log[1]])),
            ("failed-server".into(), encode_script(6, &[&log[0]])),
            ("failed-client".into(), encode_script(7, &[&log[1]])),
            ("client-reject".into(), encode_script(2, &[&reject])),
            ("small-max-message".into(), encode_script(0x10, &[&log[0]])),
        ]
    }

    fn run(&mut self, input: &[u8], features: &mut Vec<u64>) {
        let Some((&sel, rest)) = input.split_first() else {
            return;
        };
        let log = valid_exchange();
        let (mut h, other_cookie) = Self::machine(sel, &log);
        for (i, m) in script(rest).into_iter().enumerate() {
            let was_done = h.is_done();
            let was_failed = h.is_failed();
            let res = h.handle(m);
            match &res {
                Ok(()) => assert!(!h.is_failed(), "accepted a message into a failed state"),
                Err(_) => assert!(
                    h.is_failed() || (was_done && h.is_done()),
                    "an error left the machine neither failed nor done"
                ),
            }
            if was_failed {
                assert!(res.is_err(), "a failed machine accepted a message");
            }
            if was_done {
                assert!(h.is_done(), "a finished handshake was undone");
            }
            assert_eq!(h.peer().is_some(), h.is_done());
            assert_eq!(h.version().is_some(), h.is_done());
            if other_cookie {
                assert!(
                    !h.is_done(),
                    "the machine finished the handshake with messages made with another cookie"
                );
            }
            let mut sent = 0;
            while let Some(out) = h.poll_transmit() {
                sent += 1;
                assert!(
                    out.len() <= 4096,
                    "a handshake message of {} bytes",
                    out.len()
                );
                if h.is_failed() {
                    assert_eq!(out.first(), Some(&5), "a failed machine sent a non-reject");
                }
            }
            assert!(sent <= 1, "{sent} messages for one received");
            // Coarse on purpose: the state, the message's place and tag, and the kind of
            // result (an error's variant and first words), so that the corpus keeps inputs
            // that reach new places rather than every new byte pattern.
            let result = res.map_err(|e| {
                let debug = format!("{e:?}");
                let variant: String = debug
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                // A malformed message says which decoding step failed: keep a few letters of
                // it (a peer's reject reason is not kept: the peer chooses it).
                let detail: String = match &e {
                    conc_wire::handshake::HandshakeError::Malformed(m) => m
                        .chars()
                        .filter(|c| c.is_ascii_alphabetic())
                        .take(16)
                        .collect(),
                    _ => String::new(),
                };
                (variant, detail)
            });
            features.push(feature((
                sel & 0x0f,
                i.min(3),
                m.first().map(|&t| t.min(6)),
                result,
                h.is_done(),
            )));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Message decoding.

/// A message type with a bit of everything serde has, including pids, a reply handle, a
/// recursive type and a sequence of zero-sized values.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Rich {
    id: u64,
    small: i8,
    big: i128,
    flag: bool,
    letter: char,
    ratio: f64,
    name: String,
    tags: Vec<String>,
    blob: Vec<u8>,
    maybe: Option<Inner>,
    nested: Vec<Inner>,
    map: BTreeMap<String, u32>,
    choice: Choice,
    pair: (u16, String),
    array: [u32; 4],
    pid: Pid<String>,
    reply: ReplyTo<u64>,
    tree: Option<Box<Tree>>,
    marks: Vec<Marker>,
}

/// A nested struct with a pid of itself.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Inner {
    a: u32,
    b: Option<String>,
    peers: Vec<Pid<Inner>>,
}

/// Every kind of enum variant.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Choice {
    /// A unit variant.
    Unit,
    /// A newtype variant.
    Newtype(u64),
    /// A tuple variant.
    Tuple(String, bool),
    /// A struct variant.
    Struct {
        /// A number.
        x: i32,
        /// Bytes.
        y: Vec<u8>,
    },
}

/// A recursive type: deep nesting costs one byte per level.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Tree {
    /// A leaf.
    Leaf(u8),
    /// Two subtrees.
    Node(Box<Tree>, Box<Tree>),
}

/// A zero-sized value: a sequence of them encodes as its length alone.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Marker;

type Echo = (String, ReplyTo<String>);
type Table = BTreeMap<String, Vec<Option<Inner>>>;

/// The node name of the fuzzing runtime.
const NODE: &str = "127.0.0.1:7000";

/// A sink that goes nowhere: pids and reply handles of other nodes decode into remote
/// references through it.
struct NullSink(String);

impl RemoteSink for NullSink {
    fn peer(&self) -> &str {
        &self.0
    }
    fn runtime(&self) -> Option<Runtime> {
        None
    }
    fn send(&self, _req: SendRequest<'_>) -> Result<usize, RemoteError> {
        Err(RemoteError::ShuttingDown)
    }
    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn reply(&self, _req: ReplyRequest<'_>) -> Result<(), RemoteError> {
        Err(RemoteError::ShuttingDown)
    }
    fn reply_dropped(&self, _incarnation: u64, _reply_id: u64, _panicking: bool) {}
    fn monitor(&self, _target: &Target, _monitor: u64, fire: DownFn) {
        fire(conc_core::ExitReason::NoConnection, None);
    }
    fn demonitor(&self, _target: &Target, _monitor: u64) {}
    fn link(&self, _target: &Target, _from: ProcessId, _link: bool) {}
    fn kill(&self, _target: &Target) {}
    fn exit(&self, _target: &Target, _from: ProcessId, _reason: conc_core::ExitReason) {}
    fn presumed_alive(&self, _target: &Target) -> bool {
        false
    }
}

/// The hook of the fuzzing runtime: one shared sink for every other node, so that decoding
/// pids of many made-up nodes grows nothing.
struct FuzzHook(Arc<NullSink>);

impl NodeHook for FuzzHook {
    fn node_name(&self) -> Arc<str> {
        NODE.into()
    }
    fn remote_sink(&self, _node: &str) -> Arc<dyn RemoteSink> {
        self.0.clone()
    }
}

/// Message decoding as a node does it: `Runtime::deliver_body` into a live process, through
/// `bin::with_deserializer` (type-erased) or, for the processes spawned after the runtime got
/// a codec for their type, through `bin::decode_body`. The first input byte chooses the target
/// process (its low bits the message type, bit 6 the decode path); the rest is the body.
pub(crate) struct MessageTarget {
    tokio: tokio::runtime::Runtime,
    rt: Runtime,
    runs: u64,
}

/// The registered processes, by selector: (name, type tag).
fn message_targets() -> [(&'static str, TypeTag); 8] {
    [
        ("rich", TypeTag::of::<Rich>()),
        ("string", TypeTag::of::<String>()),
        ("bytes", TypeTag::of::<Vec<u8>>()),
        ("echo", TypeTag::of::<Echo>()),
        ("pid", TypeTag::of::<Pid<String>>()),
        ("tree", TypeTag::of::<Option<Box<Tree>>>()),
        ("marks", TypeTag::of::<Vec<Marker>>()),
        ("table", TypeTag::of::<Table>()),
    ]
}

/// Spawns a process that takes messages of type `M` and drops them (decoding them through
/// type erasure), and then, with the node's codec registered for `M`, another one named
/// `<name>.codec` (decoding them with the codec).
fn drain<M: conc_core::Message>(rt: &Runtime, name: &str) {
    let pid = rt.spawn(|mut inbox: Inbox<M>| async move { while inbox.recv().await.is_some() {} });
    rt.register(name, &pid).unwrap();
    rt.register_codec::<M>(conc_core::Codec {
        encode: bin::encode_body::<M>,
        decode: bin::decode_body::<M>,
    });
    let pid = rt.spawn(|mut inbox: Inbox<M>| async move { while inbox.recv().await.is_some() {} });
    rt.register(&format!("{name}.codec"), &pid).unwrap();
}

impl MessageTarget {
    /// A runtime with a hook (as a started node has) and one process per message type.
    pub(crate) fn new() -> MessageTarget {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let rt = Runtime::new();
        rt.node_side()
            .install_hook(Arc::new(FuzzHook(Arc::new(NullSink("elsewhere".into())))))
            .unwrap();
        {
            let _enter = tokio.enter();
            drain::<Rich>(&rt, "rich");
            drain::<String>(&rt, "string");
            drain::<Vec<u8>>(&rt, "bytes");
            drain::<Echo>(&rt, "echo");
            drain::<Pid<String>>(&rt, "pid");
            drain::<Option<Box<Tree>>>(&rt, "tree");
            drain::<Vec<Marker>>(&rt, "marks");
            drain::<Table>(&rt, "table");
        }
        MessageTarget { tokio, rt, runs: 0 }
    }

    /// A pid of this runtime's `string` process, as a peer would send it.
    fn local_pid(&self) -> Pid<String> {
        self.rt.whereis::<String>("string").unwrap()
    }
}

impl Default for MessageTarget {
    fn default() -> Self {
        MessageTarget::new()
    }
}

fn body<T: Serialize>(sel: u8, value: &T) -> Vec<u8> {
    let mut out = vec![sel];
    bin::encode_into(value, &mut out).unwrap();
    out
}

impl FuzzTarget for MessageTarget {
    fn seeds(&self) -> Vec<(String, Vec<u8>)> {
        let _enter = self.tokio.enter();
        let local = self.local_pid();
        // A reply handle of a caller on a peer, as the peer would send it.
        let repr = (
            "127.0.0.1:9001".to_string(),
            22u64,
            5u64,
            TypeTag::of::<u64>(),
        );
        let reply: ReplyTo<u64> = self
            .rt
            .decode_scope(|| bin::decode_exact(&bin::encode_to_vec(&repr).unwrap()))
            .unwrap();
        let inner = |a| Inner {
            a,
            b: Some("inner".into()),
            peers: Vec::new(),
        };
        let rich = Rich {
            id: 42,
            small: -3,
            big: -1 << 100,
            flag: true,
            letter: 'λ',
            ratio: 0.5,
            name: "rich".into(),
            tags: vec!["a".into(), "bc".into()],
            blob: vec![1, 2, 3],
            maybe: Some(inner(1)),
            nested: vec![inner(2), inner(3)],
            map: [("k".to_string(), 1u32), ("l".to_string(), 2)].into(),
            choice: Choice::Struct { x: -7, y: vec![9] },
            pair: (5, "five".into()),
            array: [1, 2, 3, 4],
            pid: local.clone(),
            reply,
            tree: Some(Box::new(Tree::Node(
                Box::new(Tree::Leaf(1)),
                Box::new(Tree::Node(Box::new(Tree::Leaf(2)), Box::new(Tree::Leaf(3)))),
            ))),
            marks: vec![Marker, Marker],
        };
        let table: Table = [("row".to_string(), vec![None, Some(inner(4))])].into();
        let seeds: Vec<(String, Vec<u8>)> = vec![
            ("rich".into(), body(0, &rich)),
            ("string".into(), body(1, &"Log Message!".to_string())),
            ("bytes".into(), body(2, &vec![0u8, 1, 255])),
            ("pid-local".into(), body(4, &local)),
            ("tree".into(), body(5, &rich.tree)),
            ("marks".into(), body(6, &rich.marks)),
            ("table".into(), body(7, &table)),
            (
                "choice-tuple".into(),
                body(1, &Choice::Tuple("t".into(), false)),
            ),
        ];
        // The same bodies for the processes that decode with the codec.
        let codec: Vec<(String, Vec<u8>)> = seeds
            .iter()
            .map(|(name, bytes)| {
                let mut bytes = bytes.clone();
                bytes[0] |= 0x40;
                (format!("{name}-codec"), bytes)
            })
            .collect();
        seeds.into_iter().chain(codec).collect()
    }

    fn run(&mut self, input: &[u8], features: &mut Vec<u64>) {
        let Some((&sel, body)) = input.split_first() else {
            return;
        };
        let targets = message_targets();
        let (name, tag) = targets[usize::from(sel) % targets.len()];
        // The tag usually matches; sometimes it is another process's.
        let tag = if sel & 0x80 != 0 {
            targets[(usize::from(sel) + 1) % targets.len()].1
        } else {
            tag
        };
        let target = if sel & 0x40 != 0 {
            Target::Name(format!("{name}.codec"))
        } else {
            Target::Name(name.into())
        };
        let res = {
            let _enter = self.tokio.enter();
            self.rt
                .node_side()
                .deliver_body(&target, tag, body, |deliver| {
                    bin::with_deserializer(body, |de| deliver(de))
                })
        };
        features.push(feature((sel & 0xc7, res.map_err(|e| category(&e)))));
        self.runs += 1;
        if self.runs.is_multiple_of(64) {
            // Let the processes take (and drop) what was delivered.
            self.tokio.block_on(async {
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
            });
        }
    }
}
