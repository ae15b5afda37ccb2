//! Frames: what nodes say to each other after (and during) the handshake.
//!
//! On the wire a frame is a 4-byte big-endian length `n` followed by `n` bytes of payload. The
//! payload's first byte is the frame kind; a bincode header follows, then (for frames that carry
//! one) the message body, also bincode, to the end of the payload.

use conc_core::{ExitReason, ProcessId, ReplyRequest, SendRequest, Target, TypeTag};
use serde::{Deserialize, Serialize};

use crate::bin::{self, CodecError};
use crate::trace::TraceParent;

/// Length of the frame length prefix.
pub const LEN_PREFIX: usize = 4;

/// The default maximum frame payload: 8 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// Frame kinds (the payload's first byte).
pub mod kind {
    /// A handshake message (see [`crate::handshake`]).
    pub const HANDSHAKE: u8 = 0x01;
    /// A message for a process.
    pub const SEND: u8 = 0x10;
    /// A reply to a call.
    pub const REPLY: u8 = 0x11;
    /// A reply handle was dropped unanswered.
    pub const REPLY_DROPPED: u8 = 0x12;
    /// A frame could not be delivered.
    pub const ERROR: u8 = 0x13;
    /// The callee's node could not send the reply to a call.
    pub const REPLY_FAILED: u8 = 0x14;
    /// A message for a process, sent from inside a traced span: a `SEND` frame with a
    /// [`TraceParent`](crate::trace::TraceParent) (its wire form) before the header. Sent only to
    /// peers that agreed on [`TRACE_CONTEXT`](crate::handshake::TRACE_CONTEXT).
    pub const SEND_TRACED: u8 = 0x15;
    /// Per-message mode: the frame was taken.
    pub const ACK: u8 = 0x20;
    /// Liveness probe.
    pub const PING: u8 = 0x30;
    /// Answer to a probe.
    pub const PONG: u8 = 0x31;
    /// Monitor a process.
    pub const MONITOR: u8 = 0x40;
    /// Remove a monitor.
    pub const DEMONITOR: u8 = 0x41;
    /// A monitored process went down.
    pub const DOWN: u8 = 0x42;
    /// Link a process of the receiver with one of the sender.
    pub const LINK: u8 = 0x43;
    /// Remove such a link.
    pub const UNLINK: u8 = 0x44;
    /// A linked process exited.
    pub const LINK_EXIT: u8 = 0x45;
    /// The answer to a link made through a name: which process held it.
    pub const LINKED: u8 = 0x46;
    /// Kill a process of the receiver (reason killed, untrappable: Erlang's `exit(Pid, kill)`).
    pub const KILL: u8 = 0x47;
    /// An exit signal for a process of the receiver, with a reason (Erlang's
    /// `exit(Pid, Reason)`). Sent only to peers that agreed on
    /// [`EXIT_SIGNAL`](crate::handshake::EXIT_SIGNAL).
    pub const EXIT: u8 = 0x48;
    /// The sender is shutting down cleanly.
    pub const GOODBYE: u8 = 0x50;
    /// Transports with several streams per peer (QUIC): the first frame of a stream, naming
    /// its lane.
    pub const LANE: u8 = 0x60;
    /// Transports with several streams per peer (QUIC): the next frame on this stream must not
    /// overtake the frames sent before it on the other lanes, counted here per lane.
    pub const BARRIER: u8 = 0x61;
    /// A piece of a large frame; more pieces follow (only with
    /// [`CAP_FRAGMENTS`](crate::handshake::CAP_FRAGMENTS) agreed; see [`Reassembly`](super::Reassembly)).
    pub const FRAGMENT: u8 = 0x62;
    /// The last piece of a large frame.
    pub const FRAGMENT_END: u8 = 0x63;
    /// The sender stops writing on this connection: another connection with the receiver (a
    /// simultaneous connect won) carries its frames from now on. Carries how many lane streams
    /// the sender opened on the connection (QUIC; 0 on a single stream), so the receiver
    /// knows when it has read all of them. Only with
    /// [`HANDOVER`](crate::handshake::HANDOVER) agreed.
    pub const RETIRE: u8 = 0x64;
}

/// The chunk size of fragmented frames: 64 KiB of the large frame's payload per `Fragment`
/// frame. A frame whose payload is larger than this is sent in pieces of this size when both
/// nodes agreed [`CAP_FRAGMENTS`](crate::handshake::CAP_FRAGMENTS), so that small frames queued
/// behind it go out between its pieces (Erlang's distribution does the same since OTP 22).
pub const FRAGMENT_CHUNK: usize = 64 * 1024;

/// The most lanes a [`Frame::Barrier`] may count.
pub const MAX_LANES: usize = 64;

/// Why a peer refused a frame (carried by [`Frame::Error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No live process has that id.
    NoSuchProcess,
    /// No process has that name.
    UnknownName,
    /// The message type does not match the process.
    TypeMismatch,
    /// The message body could not be decoded.
    Decode,
    /// The target's mailbox is full.
    MailboxFull,
    /// The target takes only local messages.
    LocalOnly,
    /// The frame was malformed.
    Malformed,
    /// The receiver is shutting down.
    ShuttingDown,
    /// A reply was larger than the callee node's frame limit.
    ReplyTooLarge,
    /// A reply could not be encoded.
    ReplyEncode,
}

#[derive(Serialize, Deserialize)]
struct SendHeader {
    target: Target,
    tag: TypeTag,
    call_ref: Option<u64>,
}

/// [`SendHeader`] borrowing its target, for encoding (the same bytes, no clone per message).
#[derive(Serialize)]
struct SendHeaderRef<'a> {
    target: &'a Target,
    tag: TypeTag,
    call_ref: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct ReplyHeader {
    incarnation: u64,
    reply_id: u64,
    tag: TypeTag,
}

#[derive(Serialize, Deserialize)]
struct ReplyDroppedHeader {
    incarnation: u64,
    reply_id: u64,
    panicking: bool,
}

#[derive(Serialize, Deserialize)]
struct ReplyFailedHeader {
    incarnation: u64,
    reply_id: u64,
    code: ErrorCode,
}

#[derive(Serialize, Deserialize)]
struct LinkedHeader {
    name: String,
    target: ProcessId,
    from: ProcessId,
}

#[derive(Serialize, Deserialize)]
struct ErrorHeader {
    call_ref: Option<u64>,
    code: ErrorCode,
    detail: String,
}

#[derive(Serialize, Deserialize)]
struct MonitorHeader {
    target: Target,
    monitor: u64,
}

#[derive(Serialize, Deserialize)]
struct LinkHeader {
    target: Target,
    from: ProcessId,
}

#[derive(Serialize, Deserialize)]
struct LinkExitHeader {
    target: Target,
    from: ProcessId,
    reason: ExitReason,
}

#[derive(Serialize, Deserialize)]
struct DownHeader {
    monitor: u64,
    pid: ProcessId,
    reason: ExitReason,
}

/// A decoded frame. Bodies are borrowed from the receive buffer and decoded only once the
/// target is known and its type tag matches.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A handshake message.
    Handshake(&'a [u8]),
    /// A message for a process.
    Send {
        /// Which process.
        target: Target,
        /// The message's type tag.
        tag: TypeTag,
        /// For a call, the caller's reply id.
        call_ref: Option<u64>,
        /// The encoded message.
        body: &'a [u8],
        /// The sender's trace context, when the message was sent from inside a traced span
        /// (kind [`kind::SEND_TRACED`]); `None` for a plain `SEND` frame, or when the context
        /// the peer sent was invalid (by the W3C rules it is then ignored).
        trace: Option<TraceParent>,
    },
    /// A reply to a call made by the receiving node.
    Reply {
        /// The caller node's incarnation.
        incarnation: u64,
        /// The call's reply id.
        reply_id: u64,
        /// The reply's type tag.
        tag: TypeTag,
        /// The encoded reply.
        body: &'a [u8],
    },
    /// A reply handle of a call made by the receiving node was dropped unanswered.
    ReplyDropped {
        /// The caller node's incarnation.
        incarnation: u64,
        /// The call's reply id.
        reply_id: u64,
        /// Whether the holder was panicking.
        panicking: bool,
    },
    /// The sender could not send its reply to a call made by the receiving node (too large,
    /// or it could not be encoded).
    ReplyFailed {
        /// The caller node's incarnation.
        incarnation: u64,
        /// The call's reply id.
        reply_id: u64,
        /// Why ([`ErrorCode::ReplyTooLarge`] or [`ErrorCode::ReplyEncode`]).
        code: ErrorCode,
    },
    /// A frame from the receiving node could not be delivered.
    Error {
        /// The reply id of the refused call, if it was one.
        call_ref: Option<u64>,
        /// Why.
        code: ErrorCode,
        /// Details for the log.
        detail: String,
    },
    /// Per-message mode: the frame was taken.
    Ack,
    /// Liveness probe.
    Ping,
    /// Answer to a probe.
    Pong,
    /// Monitor a process of the receiving node.
    Monitor {
        /// Which process.
        target: Target,
        /// The monitor's id on the sending node.
        monitor: u64,
    },
    /// Remove a monitor.
    Demonitor {
        /// Which process.
        target: Target,
        /// The monitor's id on the sending node.
        monitor: u64,
    },
    /// A process monitored by the receiving node went down.
    Down {
        /// The monitor's id on the receiving node.
        monitor: u64,
        /// The process.
        pid: ProcessId,
        /// Why.
        reason: ExitReason,
    },
    /// Link a process of the receiver (`target`) with `from`, a process of the sender.
    Link {
        /// The receiver's process.
        target: Target,
        /// The sender's process.
        from: ProcessId,
    },
    /// Remove such a link.
    Unlink {
        /// The receiver's process.
        target: Target,
        /// The sender's process.
        from: ProcessId,
    },
    /// The answer to a [`Frame::Link`] whose target was a name: the sender's process `from`
    /// held `name` and is now linked with `target`, the receiver's process that asked.
    Linked {
        /// The name the link was made through.
        name: String,
        /// The receiver's process that asked for the link.
        target: ProcessId,
        /// The sender's process that held the name.
        from: ProcessId,
    },
    /// Kill `target`, a process of the receiver, with reason killed.
    Kill {
        /// The receiver's process.
        target: Target,
    },
    /// An exit signal from `from`, a process of the sender, to `target` (Erlang's
    /// `exit(Pid, Reason)`; no link is involved): reason killed kills `target`; otherwise a
    /// target that traps exits receives it as an exit event, and one that does not exits with
    /// `reason` unless it is normal.
    Exit {
        /// The receiver's process.
        target: Target,
        /// The sender's process that sent the signal.
        from: ProcessId,
        /// The signal's reason.
        reason: ExitReason,
    },
    /// `from`, a process of the sender linked with `target`, exited.
    LinkExit {
        /// The receiver's process.
        target: Target,
        /// The sender's process that exited.
        from: ProcessId,
        /// Why.
        reason: ExitReason,
    },
    /// The sender is shutting down cleanly.
    Goodbye,
    /// The first frame of a stream, naming its lane (transports with several streams per peer).
    Lane(u32),
    /// The frames the sender had queued on each lane (index = lane) since the connection
    /// started, before the frame that follows this one on its stream; the receiver holds that
    /// frame back until it has taken as many from each lane.
    Barrier(Vec<u64>),
    /// A piece of a large frame's payload (kind byte included, length prefix not). The pieces
    /// of one frame are sent one after another in order (frames of other kinds may come
    /// between them, pieces of another large frame may not); `last` marks the final one. See
    /// [`Reassembly`].
    Fragment {
        /// Whether this is the final piece.
        last: bool,
        /// The piece's bytes.
        chunk: &'a [u8],
    },
    /// The sender stops writing on this connection (another connection with the receiver
    /// won a simultaneous connect); it opened this many lane streams on it (QUIC; 0 on a
    /// transport with one stream).
    Retire(u32),
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The payload is empty.
    #[error("empty frame")]
    Empty,
    /// The kind byte is unknown.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The frame exceeds the maximum size.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header or body could not be encoded or decoded.
    #[error("malformed frame: {0}")]
    Codec(#[from] CodecError),
}

/// Starts a frame in `out`: reserves the length prefix and writes the kind. Returns the
/// frame's start offset for [`finish`].
fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    out.push(kind);
    start
}

/// Patches the length prefix; on failure (or when the frame is too large) removes the partial
/// frame so that `out` holds only whole frames.
fn finish(
    out: &mut Vec<u8>,
    start: usize,
    max: usize,
    res: Result<(), CodecError>,
) -> Result<(), FrameError> {
    if let Err(e) = res {
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - start - LEN_PREFIX;
    if len > max {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    // ok: len <= max <= u32::MAX is checked by the codec's construction.
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[start..start + LEN_PREFIX].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

fn header_only<H: Serialize>(out: &mut Vec<u8>, kind: u8, h: &H) -> Result<(), FrameError> {
    let start = begin(out, kind);
    let res = bin::encode_into(h, out);
    finish(out, start, usize::MAX, res)
}

/// Appends a `Send` frame (a message for a process) to `out`.
pub fn encode_send(out: &mut Vec<u8>, req: &SendRequest<'_>, max: usize) -> Result<(), FrameError> {
    let start = begin(out, kind::SEND);
    send_rest(out, start, req, max)
}

/// Appends a `Send` frame carrying the sender's trace context (kind [`kind::SEND_TRACED`]) to
/// `out`. Only for peers whose handshake agreed on
/// [`TRACE_CONTEXT`](crate::handshake::TRACE_CONTEXT): older peers refuse the kind.
pub fn encode_send_traced(
    out: &mut Vec<u8>,
    req: &SendRequest<'_>,
    trace: &TraceParent,
    max: usize,
) -> Result<(), FrameError> {
    let start = begin(out, kind::SEND_TRACED);
    out.extend_from_slice(&trace.to_bytes());
    send_rest(out, start, req, max)
}

/// The header and body of a `Send` frame begun at `start`.
fn send_rest(
    out: &mut Vec<u8>,
    start: usize,
    req: &SendRequest<'_>,
    max: usize,
) -> Result<(), FrameError> {
    let res = bin::encode_into(
        &SendHeaderRef {
            target: req.target,
            tag: req.tag,
            call_ref: req.call_ref,
        },
        out,
    )
    .and_then(|()| match req.encode {
        // The message type's codec (see conc_core::Codec): the same bytes as the erased body.
        Some(encode) => encode(out).map_err(CodecError::Encode),
        None => bin::encode_into(req.body, out),
    });
    finish(out, start, max, res)
}

/// Appends a `Reply` frame to `out`.
pub fn encode_reply(
    out: &mut Vec<u8>,
    req: &ReplyRequest<'_>,
    max: usize,
) -> Result<(), FrameError> {
    let start = begin(out, kind::REPLY);
    let res = bin::encode_into(
        &ReplyHeader {
            incarnation: req.incarnation,
            reply_id: req.reply_id,
            tag: req.tag,
        },
        out,
    )
    .and_then(|()| bin::encode_into(req.body, out));
    finish(out, start, max, res)
}

/// Appends a `ReplyDropped` frame to `out`.
pub fn encode_reply_dropped(
    out: &mut Vec<u8>,
    incarnation: u64,
    reply_id: u64,
    panicking: bool,
) -> Result<(), FrameError> {
    header_only(
        out,
        kind::REPLY_DROPPED,
        &ReplyDroppedHeader {
            incarnation,
            reply_id,
            panicking,
        },
    )
}

/// Appends a `ReplyFailed` frame to `out`.
pub fn encode_reply_failed(
    out: &mut Vec<u8>,
    incarnation: u64,
    reply_id: u64,
    code: ErrorCode,
) -> Result<(), FrameError> {
    header_only(
        out,
        kind::REPLY_FAILED,
        &ReplyFailedHeader {
            incarnation,
            reply_id,
            code,
        },
    )
}

/// Appends a `Kill` frame to `out`.
pub fn encode_kill(out: &mut Vec<u8>, target: &Target) -> Result<(), FrameError> {
    header_only(out, kind::KILL, target)
}

/// Appends a `Linked` frame to `out` (the answer to a link through `name`).
pub fn encode_linked(
    out: &mut Vec<u8>,
    name: &str,
    target: ProcessId,
    from: ProcessId,
) -> Result<(), FrameError> {
    header_only(
        out,
        kind::LINKED,
        &LinkedHeader {
            name: name.to_string(),
            target,
            from,
        },
    )
}

/// Appends an `Error` frame to `out` (the detail is cut to 512 bytes).
pub fn encode_error(
    out: &mut Vec<u8>,
    call_ref: Option<u64>,
    code: ErrorCode,
    detail: &str,
) -> Result<(), FrameError> {
    let mut detail = detail.to_string();
    if detail.len() > 512 {
        let mut cut = 512;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    header_only(
        out,
        kind::ERROR,
        &ErrorHeader {
            call_ref,
            code,
            detail,
        },
    )
}

/// Appends a `Monitor` (or, with `demonitor`, a `Demonitor`) frame to `out`.
pub fn encode_monitor(
    out: &mut Vec<u8>,
    target: &Target,
    monitor: u64,
    demonitor: bool,
) -> Result<(), FrameError> {
    header_only(
        out,
        if demonitor {
            kind::DEMONITOR
        } else {
            kind::MONITOR
        },
        &MonitorHeader {
            target: target.clone(),
            monitor,
        },
    )
}

/// Appends a `Link` (or, with `unlink`, an `Unlink`) frame to `out`.
pub fn encode_link(
    out: &mut Vec<u8>,
    target: &Target,
    from: ProcessId,
    unlink: bool,
) -> Result<(), FrameError> {
    header_only(
        out,
        if unlink { kind::UNLINK } else { kind::LINK },
        &LinkHeader {
            target: target.clone(),
            from,
        },
    )
}

/// Appends a `LinkExit` frame to `out`.
pub fn encode_link_exit(
    out: &mut Vec<u8>,
    target: &Target,
    from: ProcessId,
    reason: &ExitReason,
) -> Result<(), FrameError> {
    encode_exit_kind(out, kind::LINK_EXIT, target, from, reason)
}

/// Appends an `Exit` frame to `out`: an exit signal from `from` to `target` (see
/// [`Frame::Exit`]).
pub fn encode_exit(
    out: &mut Vec<u8>,
    target: &Target,
    from: ProcessId,
    reason: &ExitReason,
) -> Result<(), FrameError> {
    encode_exit_kind(out, kind::EXIT, target, from, reason)
}

fn encode_exit_kind(
    out: &mut Vec<u8>,
    k: u8,
    target: &Target,
    from: ProcessId,
    reason: &ExitReason,
) -> Result<(), FrameError> {
    header_only(
        out,
        k,
        &LinkExitHeader {
            target: target.clone(),
            from,
            reason: reason.clone(),
        },
    )
}

/// Appends a `Down` frame to `out`.
pub fn encode_down(
    out: &mut Vec<u8>,
    monitor: u64,
    pid: ProcessId,
    reason: &ExitReason,
) -> Result<(), FrameError> {
    header_only(
        out,
        kind::DOWN,
        &DownHeader {
            monitor,
            pid,
            reason: reason.clone(),
        },
    )
}

/// Appends a frame with no content (`Ack`, `Ping`, `Pong`, `Goodbye`) to `out`.
pub fn encode_bare(out: &mut Vec<u8>, kind: u8) {
    out.extend_from_slice(&1u32.to_be_bytes());
    out.push(kind);
}

/// Appends a `Lane` frame to `out`.
pub fn encode_lane(out: &mut Vec<u8>, lane: u32) -> Result<(), FrameError> {
    header_only(out, kind::LANE, &lane)
}

/// Appends a `Retire` frame to `out`, saying that `streams` lane streams were opened on the
/// connection.
pub fn encode_retire(out: &mut Vec<u8>, streams: u32) -> Result<(), FrameError> {
    header_only(out, kind::RETIRE, &streams)
}

/// Appends a `Barrier` frame to `out` (at most [`MAX_LANES`] counts).
pub fn encode_barrier(out: &mut Vec<u8>, counts: &[u64]) -> Result<(), FrameError> {
    if counts.len() > MAX_LANES {
        return Err(FrameError::Codec(CodecError::Encode(format!(
            "a barrier counts at most {MAX_LANES} lanes, not {}",
            counts.len()
        ))));
    }
    header_only(out, kind::BARRIER, &counts)
}

/// Appends one `Fragment` frame carrying `chunk` (at most [`FRAGMENT_CHUNK`] bytes are ever
/// sent; the receiver's frame limit bounds it).
pub fn encode_fragment(out: &mut Vec<u8>, last: bool, chunk: &[u8]) {
    let len = (chunk.len() + 1) as u32;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(if last {
        kind::FRAGMENT_END
    } else {
        kind::FRAGMENT
    });
    out.extend_from_slice(chunk);
}

/// Reassembles fragmented frames on the receiving side of one connection (or stream).
///
/// Pieces of one frame arrive in order and pieces of two large frames never interleave on
/// one stream, so one buffer suffices; it never holds more than the frame limit it was made
/// with (the same limit an unfragmented frame has), and it is emptied when the frame is whole.
#[derive(Debug)]
pub struct Reassembly {
    buf: Vec<u8>,
    max_frame: usize,
}

impl Reassembly {
    /// A reassembly buffer refusing frames whose payload exceeds `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Reassembly {
            buf: Vec::new(),
            max_frame,
        }
    }

    /// Whether part of a frame is buffered.
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Adds a piece. Returns the whole frame's payload after the last piece (the buffer is then
    /// empty again); an error if the frame would exceed the limit, is empty, or is itself a
    /// fragment. Memory is reserved only as bytes arrive.
    pub fn push(&mut self, last: bool, chunk: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let len = self.buf.len().saturating_add(chunk.len());
        if len > self.max_frame {
            self.buf = Vec::new();
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        self.buf.extend_from_slice(chunk);
        if !last {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.buf);
        match whole.first() {
            None => Err(FrameError::Empty),
            Some(&(kind::FRAGMENT | kind::FRAGMENT_END | kind::HANDSHAKE)) => {
                Err(FrameError::Codec(CodecError::Decode(
                    "a fragmented frame of a kind never fragmented".into(),
                )))
            }
            Some(_) => Ok(Some(whole)),
        }
    }
}

/// Appends a handshake message frame to `out`.
pub fn encode_handshake(out: &mut Vec<u8>, message: &[u8]) {
    let len = (message.len() + 1) as u32;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind::HANDSHAKE);
    out.extend_from_slice(message);
}

impl<'a> Frame<'a> {
    /// Decodes one frame's payload (without its length prefix). Never panics; any malformed
    /// input is an error.
    pub fn decode(payload: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let (&k, rest) = payload.split_first().ok_or(FrameError::Empty)?;
        let bare = |f: Frame<'a>| {
            if rest.is_empty() {
                Ok(f)
            } else {
                Err(FrameError::Codec(CodecError::Trailing(rest.len())))
            }
        };
        Ok(match k {
            kind::HANDSHAKE => Frame::Handshake(rest),
            kind::SEND => {
                let (h, used): (SendHeader, usize) = bin::decode_prefix(rest)?;
                Frame::Send {
                    target: h.target,
                    tag: h.tag,
                    call_ref: h.call_ref,
                    body: rest.get(used..).unwrap_or_default(),
                    trace: None,
                }
            }
            kind::SEND_TRACED => {
                let (tp, rest) = rest
                    .split_first_chunk::<{ TraceParent::WIRE_LEN }>()
                    .ok_or_else(|| {
                        FrameError::Codec(CodecError::Decode("truncated trace context".into()))
                    })?;
                let (h, used): (SendHeader, usize) = bin::decode_prefix(rest)?;
                Frame::Send {
                    target: h.target,
                    tag: h.tag,
                    call_ref: h.call_ref,
                    body: rest.get(used..).unwrap_or_default(),
                    trace: TraceParent::from_bytes(tp),
                }
            }
            kind::REPLY => {
                let (h, used): (ReplyHeader, usize) = bin::decode_prefix(rest)?;
                Frame::Reply {
                    incarnation: h.incarnation,
                    reply_id: h.reply_id,
                    tag: h.tag,
                    body: rest.get(used..).unwrap_or_default(),
                }
            }
            kind::REPLY_DROPPED => {
                let h: ReplyDroppedHeader = bin::decode_exact(rest)?;
                Frame::ReplyDropped {
                    incarnation: h.incarnation,
                    reply_id: h.reply_id,
                    panicking: h.panicking,
                }
            }
            kind::REPLY_FAILED => {
                let h: ReplyFailedHeader = bin::decode_exact(rest)?;
                Frame::ReplyFailed {
                    incarnation: h.incarnation,
                    reply_id: h.reply_id,
                    code: h.code,
                }
            }
            kind::KILL => Frame::Kill {
                target: bin::decode_exact(rest)?,
            },
            kind::LINKED => {
                let h: LinkedHeader = bin::decode_exact(rest)?;
                Frame::Linked {
                    name: h.name,
                    target: h.target,
                    from: h.from,
                }
            }
            kind::ERROR => {
                let h: ErrorHeader = bin::decode_exact(rest)?;
                Frame::Error {
                    call_ref: h.call_ref,
                    code: h.code,
                    detail: h.detail,
                }
            }
            kind::MONITOR | kind::DEMONITOR => {
                let h: MonitorHeader = bin::decode_exact(rest)?;
                if k == kind::MONITOR {
                    Frame::Monitor {
                        target: h.target,
                        monitor: h.monitor,
                    }
                } else {
                    Frame::Demonitor {
                        target: h.target,
                        monitor: h.monitor,
                    }
                }
            }
            kind::DOWN => {
                let h: DownHeader = bin::decode_exact(rest)?;
                Frame::Down {
                    monitor: h.monitor,
                    pid: h.pid,
                    reason: h.reason,
                }
            }
            kind::LINK | kind::UNLINK => {
                let h: LinkHeader = bin::decode_exact(rest)?;
                if k == kind::LINK {
                    Frame::Link {
                        target: h.target,
                        from: h.from,
                    }
                } else {
                    Frame::Unlink {
                        target: h.target,
                        from: h.from,
                    }
                }
            }
            kind::LINK_EXIT | kind::EXIT => {
                let h: LinkExitHeader = bin::decode_exact(rest)?;
                if k == kind::LINK_EXIT {
                    Frame::LinkExit {
                        target: h.target,
                        from: h.from,
                        reason: h.reason,
                    }
                } else {
                    Frame::Exit {
                        target: h.target,
                        from: h.from,
                        reason: h.reason,
                    }
                }
            }
            kind::ACK => bare(Frame::Ack)?,
            kind::PING => bare(Frame::Ping)?,
            kind::PONG => bare(Frame::Pong)?,
            kind::GOODBYE => bare(Frame::Goodbye)?,
            kind::LANE => Frame::Lane(bin::decode_exact(rest)?),
            kind::RETIRE => Frame::Retire(bin::decode_exact(rest)?),
            kind::BARRIER => {
                // Checked before the vector is decoded: a count is at least a byte.
                if rest.len() > MAX_LANES * 10 + 10 {
                    return Err(FrameError::Codec(CodecError::Decode(
                        "barrier frame too long".into(),
                    )));
                }
                let counts: Vec<u64> = bin::decode_exact(rest)?;
                if counts.len() > MAX_LANES {
                    return Err(FrameError::Codec(CodecError::Decode(format!(
                        "a barrier counts at most {MAX_LANES} lanes"
                    ))));
                }
                Frame::Barrier(counts)
            }
            kind::FRAGMENT => Frame::Fragment {
                last: false,
                chunk: rest,
            },
            kind::FRAGMENT_END => Frame::Fragment {
                last: true,
                chunk: rest,
            },
            other => return Err(FrameError::UnknownKind(other)),
        })
    }

    /// A short name of the frame's kind, for logs and counters.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Handshake(_) => "handshake",
            Frame::Send { trace: Some(_), .. } => "send-traced",
            Frame::Send { .. } => "send",
            Frame::Reply { .. } => "reply",
            Frame::ReplyDropped { .. } => "reply-dropped",
            Frame::ReplyFailed { .. } => "reply-failed",
            Frame::Linked { .. } => "linked",
            Frame::Kill { .. } => "kill",
            Frame::Error { .. } => "error",
            Frame::Ack => "ack",
            Frame::Ping => "ping",
            Frame::Pong => "pong",
            Frame::Monitor { .. } => "monitor",
            Frame::Demonitor { .. } => "demonitor",
            Frame::Down { .. } => "down",
            Frame::Link { .. } => "link",
            Frame::Unlink { .. } => "unlink",
            Frame::LinkExit { .. } => "link-exit",
            Frame::Exit { .. } => "exit",
            Frame::Goodbye => "goodbye",
            Frame::Lane(_) => "lane",
            Frame::Barrier(_) => "barrier",
            Frame::Fragment { last: false, .. } => "fragment",
            Frame::Fragment { last: true, .. } => "fragment-end",
            Frame::Retire(_) => "retire",
        }
    }
}

/// Splits whole frames off the front of a receive buffer without copying.
///
/// Like tokio-util's `LengthDelimitedCodec`, it checks a frame's announced length against the
/// limit *before* waiting for (or reserving memory for) its bytes.
#[derive(Clone, Copy, Debug)]
pub struct FrameSplitter {
    max_frame: usize,
}

impl FrameSplitter {
    /// A splitter that refuses frames whose payload exceeds `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameSplitter {
            max_frame: max_frame.min(u32::MAX as usize),
        }
    }

    /// The limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// If `buf` starts with a whole frame, returns its payload range and the total length
    /// consumed; `Ok(None)` if more bytes are needed (`needed` tells how many in total, which
    /// never exceeds the limit); an error if the announced length is over the limit.
    pub fn split(&self, buf: &[u8]) -> Result<Option<(std::ops::Range<usize>, usize)>, FrameError> {
        let Some(prefix) = buf.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; LEN_PREFIX];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let total = LEN_PREFIX + len;
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some((LEN_PREFIX..total, total)))
    }

    /// How many bytes the frame at the front of `buf` needs in total, once its prefix is there
    /// (bounded by the limit); used to size reads.
    pub fn needed(&self, buf: &[u8]) -> usize {
        match buf.get(..LEN_PREFIX) {
            Some(p) => {
                let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                LEN_PREFIX + len.min(self.max_frame)
            }
            None => LEN_PREFIX,
        }
    }
}

/// A tokio-util codec over the same framing: yields whole frame payloads as `BytesMut`, checking
/// the announced length against the limit before reserving memory.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    splitter: FrameSplitter,
}

impl FrameCodec {
    /// A codec with the given payload limit.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            splitter: FrameSplitter::new(max_frame),
        }
    }

    /// The payload limit.
    pub fn max_frame(&self) -> usize {
        self.splitter.max_frame()
    }

    /// How many bytes `src` must hold before the frame it starts can be split off (at least
    /// the length prefix; never more than the limit allows).
    pub fn needed(&self, src: &[u8]) -> usize {
        self.splitter.needed(src)
    }

    /// Splits the next whole frame's payload off `src` (without copying), if `src` holds one;
    /// else reserves room for the rest of it. A frame over the limit is an error before any
    /// memory is reserved for it.
    pub fn decode_frame(
        &mut self,
        src: &mut bytes::BytesMut,
    ) -> Result<Option<bytes::BytesMut>, FrameError> {
        match self.splitter.split(src)? {
            Some((range, total)) => {
                let mut frame = src.split_to(total);
                let _ = frame.split_to(range.start);
                frame.truncate(range.end - range.start);
                Ok(Some(frame))
            }
            None => {
                let needed = self.splitter.needed(src);
                src.reserve(needed.saturating_sub(src.len()));
                Ok(None)
            }
        }
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = bytes::BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        self.decode_frame(src)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_one(bytes: &[u8]) -> Frame<'_> {
        let (range, total) = FrameSplitter::new(DEFAULT_MAX_FRAME)
            .split(bytes)
            .unwrap()
            .unwrap();
        assert_eq!(total, bytes.len());
        Frame::decode(&bytes[range]).unwrap()
    }

    #[test]
    fn send_frame_round_trip() {
        let target = Target::Name("logger".into());
        let body = "hello".to_string();
        let mut out = Vec::new();
        encode_send(
            &mut out,
            &SendRequest {
                target: &target,
                tag: TypeTag::of::<String>(),
                call_ref: Some(9),
                body: &body,
                encode: None,
            },
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        match decode_one(&out) {
            Frame::Send {
                target: t,
                tag,
                call_ref,
                body: b,
                trace: None,
            } => {
                assert_eq!(t, target);
                assert_eq!(tag, TypeTag::of::<String>());
                assert_eq!(call_ref, Some(9));
                let s: String = bin::decode_exact(b).unwrap();
                assert_eq!(s, "hello");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn traced_send_round_trip_and_truncation() {
        let target = Target::Name("logger".into());
        let tp = TraceParent::new([7; 16], [9; 8], TraceParent::SAMPLED).unwrap();
        let req = SendRequest {
            target: &target,
            tag: TypeTag::of::<String>(),
            call_ref: None,
            body: &"hi".to_string(),
            encode: None,
        };
        let mut plain = Vec::new();
        encode_send(&mut plain, &req, DEFAULT_MAX_FRAME).unwrap();
        let mut out = Vec::new();
        encode_send_traced(&mut out, &req, &tp, DEFAULT_MAX_FRAME).unwrap();
        // The context costs exactly its wire form; everything else is a plain send's bytes.
        assert_eq!(out.len(), plain.len() + TraceParent::WIRE_LEN);
        assert_eq!(
            out[LEN_PREFIX + 1 + TraceParent::WIRE_LEN..],
            plain[LEN_PREFIX + 1..]
        );
        match decode_one(&out) {
            Frame::Send { trace, body, .. } => {
                assert_eq!(trace, Some(tp));
                assert_eq!(bin::decode_exact::<String>(body).unwrap(), "hi");
            }
            other => panic!("{other:?}"),
        }
        // A cut inside the context is an error, not a panic.
        for cut in 1..=TraceParent::WIRE_LEN {
            let p = &out[LEN_PREFIX..LEN_PREFIX + cut];
            assert!(
                matches!(Frame::decode(p), Err(FrameError::Codec(_))),
                "{cut}"
            );
        }
        // An invalid context (all-zero ids) is ignored, as W3C asks: the message still arrives.
        let mut zero = out.clone();
        zero[LEN_PREFIX + 1..LEN_PREFIX + 1 + TraceParent::WIRE_LEN].fill(0);
        assert!(matches!(decode_one(&zero), Frame::Send { trace: None, .. }));
    }

    #[test]
    fn other_frames_round_trip() {
        let mut out = Vec::new();
        encode_error(&mut out, Some(3), ErrorCode::TypeMismatch, "nope").unwrap();
        assert_eq!(
            decode_one(&out),
            Frame::Error {
                call_ref: Some(3),
                code: ErrorCode::TypeMismatch,
                detail: "nope".into()
            }
        );
        for (k, f) in [
            (kind::ACK, Frame::Ack),
            (kind::PING, Frame::Ping),
            (kind::PONG, Frame::Pong),
            (kind::GOODBYE, Frame::Goodbye),
        ] {
            let mut out = Vec::new();
            encode_bare(&mut out, k);
            assert_eq!(decode_one(&out), f);
        }
        let mut out = Vec::new();
        encode_lane(&mut out, 7).unwrap();
        assert_eq!(decode_one(&out), Frame::Lane(7));
        let mut out = Vec::new();
        encode_barrier(&mut out, &[0, 3, u64::MAX]).unwrap();
        assert_eq!(decode_one(&out), Frame::Barrier(vec![0, 3, u64::MAX]));
        assert!(encode_barrier(&mut Vec::new(), &[0; MAX_LANES + 1]).is_err());
        // A barrier claiming more lanes than allowed is refused, however it is padded.
        let mut payload = vec![kind::BARRIER];
        bin::encode_into(&vec![1u64; MAX_LANES + 1], &mut payload).unwrap();
        assert!(Frame::decode(&payload).is_err());
        let mut payload = vec![kind::BARRIER, 0xfd];
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Frame::decode(&payload).is_err());
        let mut out = Vec::new();
        encode_down(
            &mut out,
            4,
            ProcessId {
                incarnation: 1,
                id: 2,
            },
            &ExitReason::Panic("x".into()),
        )
        .unwrap();
        assert!(matches!(decode_one(&out), Frame::Down { monitor: 4, .. }));
        let mut out = Vec::new();
        encode_reply_dropped(&mut out, 5, 6, true).unwrap();
        assert_eq!(
            decode_one(&out),
            Frame::ReplyDropped {
                incarnation: 5,
                reply_id: 6,
                panicking: true
            }
        );
        let mut out = Vec::new();
        encode_reply_failed(&mut out, 7, 8, ErrorCode::ReplyTooLarge).unwrap();
        assert_eq!(
            decode_one(&out),
            Frame::ReplyFailed {
                incarnation: 7,
                reply_id: 8,
                code: ErrorCode::ReplyTooLarge
            }
        );
        let mut out = Vec::new();
        let (a, b) = (
            ProcessId {
                incarnation: 1,
                id: 2,
            },
            ProcessId {
                incarnation: 3,
                id: 4,
            },
        );
        let mut kill = Vec::new();
        encode_kill(&mut kill, &Target::Name("s".into())).unwrap();
        assert_eq!(
            decode_one(&kill),
            Frame::Kill {
                target: Target::Name("s".into())
            }
        );
        let mut exit = Vec::new();
        encode_exit(&mut exit, &Target::Id(a), b, &ExitReason::Shutdown).unwrap();
        assert_eq!(
            decode_one(&exit),
            Frame::Exit {
                target: Target::Id(a),
                from: b,
                reason: ExitReason::Shutdown
            }
        );
        encode_linked(&mut out, "s", a, b).unwrap();
        assert_eq!(
            decode_one(&out),
            Frame::Linked {
                name: "s".into(),
                target: a,
                from: b
            }
        );
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let splitter = FrameSplitter::new(1024);
        // A 4 GiB length prefix and nothing else.
        let buf = [0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            splitter.split(&buf),
            Err(FrameError::TooLarge { .. })
        ));
        let mut codec = FrameCodec::new(1024);
        let mut src = bytes::BytesMut::from(&buf[..]);
        use tokio_util::codec::Decoder;
        assert!(codec.decode(&mut src).is_err());
        // Nothing was reserved for the announced 4 GiB.
        assert!(src.capacity() < 1 << 20);
    }

    #[test]
    fn encoding_over_the_limit_fails_and_leaves_the_buffer_whole() {
        let mut out = Vec::new();
        encode_bare(&mut out, kind::PING);
        let before = out.clone();
        let body = vec![7u8; 4096];
        let target = Target::Name("x".into());
        let err = encode_send(
            &mut out,
            &SendRequest {
                target: &target,
                tag: TypeTag::of::<Vec<u8>>(),
                call_ref: None,
                body: &body,
                encode: None,
            },
            1024,
        )
        .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(out, before);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[0xEE]), Err(FrameError::UnknownKind(0xEE)));
        assert!(Frame::decode(&[kind::SEND]).is_err());
        assert!(Frame::decode(&[kind::ACK, 1]).is_err());
        assert!(Frame::decode(&[kind::ERROR, 0, 200]).is_err());
        assert!(FrameSplitter::new(10).split(&[0, 0, 0, 0]).is_err());
        assert_eq!(FrameSplitter::new(10).split(&[0, 0, 0, 3, 1]), Ok(None));
    }

    #[test]
    fn every_truncation_and_mutation_of_a_frame_is_handled() {
        let target = Target::Id(ProcessId {
            incarnation: 77,
            id: 5,
        });
        let body = ("text".to_string(), vec![1u32, 2, 3]);
        let mut out = Vec::new();
        encode_send(
            &mut out,
            &SendRequest {
                target: &target,
                tag: TypeTag::of::<u8>(),
                call_ref: None,
                body: &body,
                encode: None,
            },
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let payload = &out[LEN_PREFIX..];
        let Ok(Frame::Send { body: whole, .. }) = Frame::decode(payload) else {
            panic!("the frame does not decode");
        };
        let header_end = payload.len() - whole.len();
        // A cut inside the kind and header is an error; a cut inside the body (which is decoded
        // only once its target is known) is the same frame with less body, and encodes to
        // exactly the bytes it was decoded from.
        for cut in 0..payload.len() {
            let p = &payload[..cut];
            match Frame::decode(p) {
                Ok(f) => {
                    assert!(
                        cut >= header_end,
                        "a cut at {cut} in the header decoded: {f:?}"
                    );
                    assert_eq!(
                        f,
                        Frame::Send {
                            target: target.clone(),
                            tag: TypeTag::of::<u8>(),
                            call_ref: None,
                            body: &payload[header_end..cut],
                            trace: None,
                        }
                    );
                    assert_eq!(reencode(&f), p, "cut at {cut}");
                }
                Err(e) if cut == 0 => assert_eq!(e, FrameError::Empty),
                Err(e) => {
                    assert!(cut < header_end, "a cut at {cut} in the body failed: {e}");
                    assert!(matches!(e, FrameError::Codec(_)), "cut at {cut}: {e:?}");
                }
            }
        }
        // A byte changed anywhere: either an error that names the cause (an unknown kind byte,
        // or a header that does not decode), or a frame that encodes to bytes decoding to the
        // same frame.
        let (mut decoded, mut refused) = (0, 0);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut p = payload.to_vec();
            let i = (x as usize) % p.len();
            p[i] = (x >> 32) as u8;
            match Frame::decode(&p) {
                Ok(f) => {
                    decoded += 1;
                    let again = reencode(&f);
                    assert_eq!(Frame::decode(&again).as_ref(), Ok(&f), "{p:?}");
                }
                Err(e) => {
                    refused += 1;
                    if KINDS.contains(&p[0]) {
                        assert!(matches!(e, FrameError::Codec(_)), "{p:?}: {e:?}");
                    } else {
                        assert_eq!(e, FrameError::UnknownKind(p[0]), "{p:?}");
                    }
                }
            }
        }
        // Both outcomes occur: the mutations reach the body and the header.
        assert!(
            decoded > 0 && refused > 0,
            "{decoded} decoded, {refused} refused"
        );
    }

    /// Every kind byte this module decodes.
    const KINDS: [u8; 25] = [
        kind::HANDSHAKE,
        kind::SEND,
        kind::SEND_TRACED,
        kind::REPLY,
        kind::REPLY_DROPPED,
        kind::ERROR,
        kind::REPLY_FAILED,
        kind::ACK,
        kind::PING,
        kind::PONG,
        kind::MONITOR,
        kind::DEMONITOR,
        kind::DOWN,
        kind::LINK,
        kind::UNLINK,
        kind::LINK_EXIT,
        kind::LINKED,
        kind::KILL,
        kind::EXIT,
        kind::GOODBYE,
        kind::LANE,
        kind::BARRIER,
        kind::FRAGMENT,
        kind::FRAGMENT_END,
        kind::RETIRE,
    ];

    #[test]
    fn fragments_reassemble_within_the_limit() {
        let mut send = Vec::new();
        let body = vec![9u8; 3 * FRAGMENT_CHUNK + 5];
        let target = Target::Name("sink".into());
        let req = SendRequest {
            target: &target,
            tag: TypeTag(1),
            call_ref: None,
            body: &body,
            encode: None,
        };
        encode_send(&mut send, &req, usize::MAX).unwrap();
        let payload = &send[LEN_PREFIX..];
        let mut wire = Vec::new();
        let pieces: Vec<&[u8]> = payload.chunks(FRAGMENT_CHUNK).collect();
        for (i, p) in pieces.iter().enumerate() {
            encode_fragment(&mut wire, i + 1 == pieces.len(), p);
        }
        let splitter = FrameSplitter::new(FRAGMENT_CHUNK + 1);
        let mut re = Reassembly::new(payload.len());
        let mut at = 0;
        let mut whole = None;
        while let Some((range, total)) = splitter.split(&wire[at..]).unwrap() {
            let Frame::Fragment { last, chunk } = Frame::decode(&wire[at..][range]).unwrap() else {
                panic!("not a fragment");
            };
            if let Some(w) = re.push(last, chunk).unwrap() {
                whole = Some(w);
            }
            at += total;
        }
        assert_eq!(at, wire.len());
        assert_eq!(whole.as_deref(), Some(payload));
        assert!(!re.is_partial());
        // One byte under the size: refused, and the buffer is dropped.
        let mut small = Reassembly::new(payload.len() - 1);
        let mut refused = false;
        for (i, p) in pieces.iter().enumerate() {
            match small.push(i + 1 == pieces.len(), p) {
                Err(FrameError::TooLarge { .. }) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("{e}"),
                Ok(_) => {}
            }
        }
        assert!(refused && !small.is_partial());
        // An empty frame, a fragment inside a fragment and a handshake are refused.
        assert_eq!(Reassembly::new(10).push(true, &[]), Err(FrameError::Empty));
        assert!(
            Reassembly::new(10)
                .push(true, &[kind::FRAGMENT, 1])
                .is_err()
        );
        assert!(
            Reassembly::new(10)
                .push(true, &[kind::HANDSHAKE, 1])
                .is_err()
        );
    }

    /// `f` encoded again with this module's encoders: its payload, without the length prefix.
    fn reencode(f: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        // Sends and replies: the header, encoded with an empty body, then the raw body.
        let raw_body = |out: &mut Vec<u8>, body: &[u8]| {
            out.extend_from_slice(body);
            let len = u32::try_from(out.len() - LEN_PREFIX).unwrap();
            out[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        };
        match f {
            Frame::Handshake(m) => encode_handshake(&mut out, m),
            Frame::Send {
                target,
                tag,
                call_ref,
                body,
                trace,
            } => {
                let req = SendRequest {
                    target,
                    tag: *tag,
                    call_ref: *call_ref,
                    body: &(),
                    encode: None,
                };
                match trace {
                    Some(tp) => encode_send_traced(&mut out, &req, tp, usize::MAX).unwrap(),
                    None => encode_send(&mut out, &req, usize::MAX).unwrap(),
                }
                raw_body(&mut out, body);
            }
            Frame::Reply {
                incarnation,
                reply_id,
                tag,
                body,
            } => {
                let req = ReplyRequest {
                    incarnation: *incarnation,
                    reply_id: *reply_id,
                    tag: *tag,
                    body: &(),
                };
                encode_reply(&mut out, &req, usize::MAX).unwrap();
                raw_body(&mut out, body);
            }
            Frame::ReplyDropped {
                incarnation,
                reply_id,
                panicking,
            } => encode_reply_dropped(&mut out, *incarnation, *reply_id, *panicking).unwrap(),
            Frame::ReplyFailed {
                incarnation,
                reply_id,
                code,
            } => encode_reply_failed(&mut out, *incarnation, *reply_id, *code).unwrap(),
            Frame::Error {
                call_ref,
                code,
                detail,
            } => encode_error(&mut out, *call_ref, *code, detail).unwrap(),
            Frame::Ack => encode_bare(&mut out, kind::ACK),
            Frame::Ping => encode_bare(&mut out, kind::PING),
            Frame::Pong => encode_bare(&mut out, kind::PONG),
            Frame::Goodbye => encode_bare(&mut out, kind::GOODBYE),
            Frame::Monitor { target, monitor } => {
                encode_monitor(&mut out, target, *monitor, false).unwrap();
            }
            Frame::Demonitor { target, monitor } => {
                encode_monitor(&mut out, target, *monitor, true).unwrap();
            }
            Frame::Down {
                monitor,
                pid,
                reason,
            } => encode_down(&mut out, *monitor, *pid, reason).unwrap(),
            Frame::Link { target, from } => encode_link(&mut out, target, *from, false).unwrap(),
            Frame::Unlink { target, from } => encode_link(&mut out, target, *from, true).unwrap(),
            Frame::Linked { name, target, from } => {
                encode_linked(&mut out, name, *target, *from).unwrap();
            }
            Frame::Kill { target } => encode_kill(&mut out, target).unwrap(),
            Frame::LinkExit {
                target,
                from,
                reason,
            } => encode_link_exit(&mut out, target, *from, reason).unwrap(),
            Frame::Exit {
                target,
                from,
                reason,
            } => encode_exit(&mut out, target, *from, reason).unwrap(),
            Frame::Lane(lane) => encode_lane(&mut out, *lane).unwrap(),
            Frame::Barrier(counts) => encode_barrier(&mut out, counts).unwrap(),
            Frame::Fragment { last, chunk } => encode_fragment(&mut out, *last, chunk),
            Frame::Retire(streams) => encode_retire(&mut out, *streams).unwrap(),
        }
        out.split_off(LEN_PREFIX)
    }
}
