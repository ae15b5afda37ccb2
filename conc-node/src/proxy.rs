//! Stream proxies: a local byte stream ([`AsyncWrite`] or [`AsyncRead`]) put in a message, used
//! from another node as if it were local (the seed's "future extension": *sending a stream in a
//! message can serialize it as a proxy stream so that writes to it from the remote system are
//! sent back to the stream on the local system*).
//!
//! ```no_run
//! use conc_node::{Inbox, Node, ReplyTo, WriteProxy};
//! use serde::{Deserialize, Serialize};
//! use tokio::io::AsyncWriteExt;
//!
//! /// "Write your greeting into this stream, then tell me you are done."
//! #[derive(Serialize, Deserialize)]
//! struct Greet {
//!     out: WriteProxy,
//!     done: ReplyTo<()>,
//! }
//!
//! # async fn demo(node: Node, greeter: conc_node::Pid<Greet>) -> Result<(), Box<dyn std::error::Error>> {
//! // On the node that owns the stream (here its stdout):
//! let out = WriteProxy::new(&node, tokio::io::stdout());
//! greeter
//!     .call(|done| Greet { out, done }, std::time::Duration::from_secs(30))
//!     .await?;
//!
//! // On the other node, the process registered as the greeter:
//! # let _ =
//! node.spawn(|mut inbox: Inbox<Greet>| async move {
//!     while let Some(Greet { out, done }) = inbox.recv().await {
//!         let mut w = out.into_writer();
//!         let ok = w.write_all(b"hello from far away\n").await.is_ok() && w.flush().await.is_ok();
//!         drop(w);
//!         if ok {
//!             let _ = done.send(());
//!         }
//!     }
//! });
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! [`WriteProxy::new`] spawns an *owner* process on the local node that owns the writer and
//! receives [`WriteOp`]s; the [`WriteProxy`] itself is a small serde value holding the owner's
//! pid, so it travels in any message like a pid does. On the receiving node,
//! [`WriteProxy::into_writer`] gives a [`RemoteWriter`] implementing [`AsyncWrite`]:
//!
//! - `poll_write` takes up to one chunk (default 64 KiB) of the caller's buffer and sends it to
//!   the owner as a *call*, `WriteOp::Write(bytes, reply)`. The owner writes the whole chunk to
//!   the original (`write_all`), in the order the calls arrive, and replies once the original
//!   accepted it. Calls to one process travel in order on every transport (FIFO per pair), so
//!   the bytes reach the original in the order they were written.
//! - **Backpressure.** At most `window` chunks (default 4) are in flight, i.e. sent but not yet
//!   accepted by the original: `poll_write` returns `Pending` while the window is full. So the
//!   remote writer never gets more than `window × chunk` bytes ahead of the original; a slow
//!   original slows the remote writer down, and nothing is buffered without bound anywhere (the
//!   owner's mailbox holds at most the window of each holder; it is also bounded).
//! - `poll_flush` waits for every chunk in flight, then calls `WriteOp::Flush`, which flushes
//!   the original; `poll_shutdown` does the same with `WriteOp::Shutdown`.
//! - **Errors.** An error of the original travels back (kind and message) and is returned as an
//!   [`io::Error`] of the same [`io::ErrorKind`] by the write, flush or shutdown that sees it
//!   (with the window, possibly a later write than the one whose bytes failed, as with a
//!   buffered writer). The stream is then broken: the owner writes nothing more and answers
//!   every later operation with the same error, and so does the remote writer.
//! - **Node loss.** Every operation is a call with a timeout (default 60 s); on top of that, a
//!   call fails at once when the owner's node is lost (connection closed, heartbeats or probes
//!   failing: [`io::ErrorKind::ConnectionAborted`]), when it cannot be reached at all
//!   ([`io::ErrorKind::NotConnected`]), or when the owner process is gone
//!   ([`io::ErrorKind::BrokenPipe`]). A remote writer never hangs on a dead node.
//!
//! [`ReadProxy`] and [`RemoteReader`] are the same for reading: `ReadOp::Read(max, reply)` makes
//! the owner read once from the original (up to `max` bytes, at most [`MAX_CHUNK`]) and reply
//! with the bytes; an empty reply is end of file. The reader keeps up to `window` reads in
//! flight (read-ahead), so at most `window × chunk` bytes are read from the original ahead of
//! the consumer.
//!
//! # Lifecycle
//!
//! - `into_writer` / `into_reader` spawns a tiny *holder* process on the receiving node and
//!   sends its pid to the owner (`Attach`); the owner monitors it.
//! - Dropping the [`RemoteWriter`] / [`RemoteReader`] sends `Detach` to the owner (in order,
//!   after the last write) and ends the holder. When the last attached holder has detached, the
//!   owner process ends and drops the original (closing a file, for example). Dropping a writer
//!   without `flush`/`shutdown` still delivers the chunks already accepted by `poll_write`;
//!   the owner flushes the original once, best effort, before it drops it.
//! - If the holder's node goes down (or the holder process dies), the owner's monitor fires and
//!   the holder counts as detached: a proxy whose user vanished does not live forever.
//! - If no holder attaches within `attach_timeout` (default 60 s) of [`WriteProxy::new`] (the
//!   message carrying the proxy was lost, or its receiver never used it), the owner ends too.
//! - If the owner's node shuts down, the owner ends and the holder's operations fail (see node
//!   loss above). [`WriteProxy::owner`] gives the owner's pid, to monitor its end.
//!
//! A proxy can be cloned or forwarded; every writer made from it attaches as a holder of its
//! own and their writes interleave at chunk boundaries. Proxies work on every transport
//! (per-message TCP, pooled TCP, QUIC); on per-message TCP the node using the proxy must listen
//! (replies come back on connections of their own).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use conc_core::{
    CallError, Down, Event, ExitReason, Inbox, MonitorRef, Pid, ProcessId, RecvError, RemoteError,
    ReplyTo, Runtime, SendErrorKind, SpawnOptions,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::Node;

/// The largest chunk a proxy moves in one call (1 MiB); larger requests are clamped.
pub const MAX_CHUNK: usize = 1 << 20;
/// The largest window of chunks in flight per holder (64); larger requests are clamped.
pub const MAX_WINDOW: usize = 64;
/// The longest call timeout (one day); longer ones are clamped.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The owner's mailbox bound: room for the full window of several holders. A remote sender
/// beyond it waits (the transport stops reading from it); a local one retries shortly.
const OWNER_MAILBOX: usize = 4 * MAX_WINDOW;
/// How long a send refused because a queue or mailbox is full waits before it is retried.
const BUSY_RETRY: Duration = Duration::from_millis(2);
/// How long the owner waits for the `Detach` of a holder that ended normally (it is sent
/// before the holder ends, but may travel on another stream).
const DETACH_GRACE: Duration = Duration::from_secs(30);
/// How long the owner's final best-effort flush may take.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// How a proxy moves bytes. Chosen by the node that creates the proxy (it knows the original)
/// and carried inside the proxy; the receiver can change it with
/// [`WriteProxy::into_writer_with`] / [`ReadProxy::into_reader_with`]. Out-of-range values are
/// clamped, never refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyOptions {
    /// Bytes moved per call (default 64 KiB; at most [`MAX_CHUNK`]).
    pub chunk_size: usize,
    /// Calls in flight (default 4; at most [`MAX_WINDOW`]): the remote side is at most
    /// `window × chunk_size` bytes ahead of (writes) or behind (reads) the original.
    pub window: usize,
    /// The timeout of each call (default 60 s). Node loss fails calls at once regardless; this
    /// bounds a wait on an original that accepts (or yields) nothing for that long, so raise
    /// it for streams that can legitimately block longer (a pipe to a paused consumer). At
    /// least 1 ms, at most [`MAX_CALL_TIMEOUT`].
    pub call_timeout: Duration,
    /// How long the owner waits for a first holder before it ends (default 60 s). Used only by
    /// the creating node.
    pub attach_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            chunk_size: 64 << 10,
            window: 4,
            call_timeout: Duration::from_secs(60),
            attach_timeout: Duration::from_secs(60),
        }
    }
}

impl ProxyOptions {
    fn clamped(self) -> ProxyOptions {
        ProxyOptions {
            chunk_size: self.chunk_size.clamp(1, MAX_CHUNK),
            window: self.window.clamp(1, MAX_WINDOW),
            call_timeout: self
                .call_timeout
                .clamp(Duration::from_millis(1), MAX_CALL_TIMEOUT),
            attach_timeout: self.attach_timeout,
        }
    }

    fn wire(self) -> WireOptions {
        let o = self.clamped();
        WireOptions {
            chunk: o.chunk_size as u32,
            window: o.window as u32,
            timeout_ms: u64::try_from(o.call_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The options as they travel inside a proxy.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct WireOptions {
    chunk: u32,
    window: u32,
    timeout_ms: u64,
}

impl WireOptions {
    fn options(self) -> ProxyOptions {
        ProxyOptions {
            chunk_size: self.chunk as usize,
            window: self.window as usize,
            call_timeout: Duration::from_millis(self.timeout_ms),
            attach_timeout: ProxyOptions::default().attach_timeout,
        }
        .clamped()
    }
}

// ---------------------------------------------------------------------------------------------
// The protocol.

/// A chunk of bytes, serialized as a byte string (not as a sequence of numbers).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Chunk(pub Vec<u8>);

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Chunk({} bytes)", self.0.len())
    }
}

impl Serialize for Chunk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Chunk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Chunk;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Chunk, E> {
                Ok(Chunk(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Chunk, E> {
                Ok(Chunk(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Chunk, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_CHUNK));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Chunk(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// An [`io::Error`] as it travels between nodes: its kind (the name of the
/// [`io::ErrorKind`] variant, `Other` if unknown) and its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyIoError {
    /// The [`io::ErrorKind`] variant's name, for example `"PermissionDenied"`.
    pub kind: String,
    /// The error's message.
    pub message: String,
}

/// The kinds that keep their identity across nodes; any other arrives as `Other`.
const KINDS: &[io::ErrorKind] = &[
    io::ErrorKind::NotFound,
    io::ErrorKind::PermissionDenied,
    io::ErrorKind::ConnectionRefused,
    io::ErrorKind::ConnectionReset,
    io::ErrorKind::ConnectionAborted,
    io::ErrorKind::NotConnected,
    io::ErrorKind::AddrInUse,
    io::ErrorKind::AddrNotAvailable,
    io::ErrorKind::BrokenPipe,
    io::ErrorKind::AlreadyExists,
    io::ErrorKind::WouldBlock,
    io::ErrorKind::InvalidInput,
    io::ErrorKind::InvalidData,
    io::ErrorKind::TimedOut,
    io::ErrorKind::WriteZero,
    io::ErrorKind::Interrupted,
    io::ErrorKind::Unsupported,
    io::ErrorKind::UnexpectedEof,
    io::ErrorKind::OutOfMemory,
    io::ErrorKind::StorageFull,
    io::ErrorKind::IsADirectory,
    io::ErrorKind::NotADirectory,
    io::ErrorKind::ReadOnlyFilesystem,
    io::ErrorKind::ResourceBusy,
    io::ErrorKind::HostUnreachable,
    io::ErrorKind::NetworkUnreachable,
    io::ErrorKind::NetworkDown,
    io::ErrorKind::Other,
];

impl ProxyIoError {
    fn new(kind: io::ErrorKind, message: impl Into<String>) -> Self {
        ProxyIoError {
            kind: format!("{kind:?}"),
            message: message.into(),
        }
    }

    /// The [`io::ErrorKind`] (`Other` for a kind this build does not know).
    pub fn error_kind(&self) -> io::ErrorKind {
        KINDS
            .iter()
            .copied()
            .find(|k| format!("{k:?}") == self.kind)
            .unwrap_or(io::ErrorKind::Other)
    }

    /// The error as an [`io::Error`].
    pub fn to_io(&self) -> io::Error {
        io::Error::new(self.error_kind(), self.message.clone())
    }
}

impl From<&io::Error> for ProxyIoError {
    fn from(e: &io::Error) -> Self {
        ProxyIoError::new(e.kind(), e.to_string())
    }
}

impl From<ProxyIoError> for io::Error {
    fn from(e: ProxyIoError) -> Self {
        e.to_io()
    }
}

impl fmt::Display for ProxyIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

/// The answer to an operation: the original's result.
pub type ProxyResult<T> = Result<T, ProxyIoError>;

/// What a holder process is told (see the module docs' lifecycle).
#[derive(Debug, Serialize, Deserialize)]
pub enum HolderSignal {
    /// The writer or reader was dropped and detached: end normally.
    Release,
    /// The writer or reader was dropped but could not detach: end abnormally, so that the
    /// owner's monitor fires.
    Abort,
}

/// The messages of a write proxy's owner process (the protocol behind [`RemoteWriter`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum WriteOp {
    /// A holder starts using the proxy; the owner monitors it.
    Attach(Pid<HolderSignal>),
    /// Write the whole chunk to the original; answers the number of bytes written.
    Write(Chunk, ReplyTo<ProxyResult<usize>>),
    /// Flush the original.
    Flush(ReplyTo<ProxyResult<()>>),
    /// Shut the original down.
    Shutdown(ReplyTo<ProxyResult<()>>),
    /// The holder with this identity is done.
    Detach(ProcessId),
}

/// The messages of a read proxy's owner process (the protocol behind [`RemoteReader`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum ReadOp {
    /// A holder starts using the proxy; the owner monitors it.
    Attach(Pid<HolderSignal>),
    /// Read once from the original, at most this many bytes (clamped to [`MAX_CHUNK`]);
    /// answers the bytes read, empty at end of file.
    Read(u32, ReplyTo<ProxyResult<Chunk>>),
    /// The holder with this identity is done.
    Detach(ProcessId),
}

// ---------------------------------------------------------------------------------------------
// The proxies.

/// A local [`AsyncWrite`] made sendable: put it in a message, and the receiver turns it into a
/// [`RemoteWriter`] whose writes go to the original. See the [module docs](self).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteProxy {
    owner: Pid<WriteOp>,
    options: WireOptions,
}

impl WriteProxy {
    /// Wraps `writer`: spawns its owner process on `node` with default [`ProxyOptions`].
    /// Must be called inside a tokio runtime.
    pub fn new(node: &Node, writer: impl AsyncWrite + Send + Unpin + 'static) -> WriteProxy {
        WriteProxy::with_options(node, writer, ProxyOptions::default())
    }

    /// Wraps `writer` with the given options.
    pub fn with_options(
        node: &Node,
        writer: impl AsyncWrite + Send + Unpin + 'static,
        options: ProxyOptions,
    ) -> WriteProxy {
        let options = options.clamped();
        let attach_timeout = options.attach_timeout;
        let owner = node.spawn_with(SpawnOptions::bounded(OWNER_MAILBOX), move |inbox| {
            write_owner(inbox, writer, attach_timeout)
        });
        WriteProxy {
            owner,
            options: options.wire(),
        }
    }

    /// The owner process (monitor it to learn when the proxy is finished with the original).
    pub fn owner(&self) -> &Pid<WriteOp> {
        &self.owner
    }

    /// The options carried by the proxy (as the receiver will use them).
    pub fn options(&self) -> ProxyOptions {
        self.options.options()
    }

    /// The writer, on the node that received the proxy (or on any node, including the owner's).
    pub fn into_writer(self) -> RemoteWriter {
        let options = self.options.options();
        self.into_writer_with(options)
    }

    /// The writer, with other chunk size, window or call timeout.
    pub fn into_writer_with(self, options: ProxyOptions) -> RemoteWriter {
        let mut w = RemoteWriter {
            owner: self.owner,
            options: options.clamped(),
            attach: Attach::Pending,
            inflight: VecDeque::new(),
            ctl: None,
            retry: None,
            error: None,
        };
        w.attach();
        w
    }
}

/// A local [`AsyncRead`] made sendable: put it in a message, and the receiver turns it into a
/// [`RemoteReader`] that reads from the original. See the [module docs](self).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadProxy {
    owner: Pid<ReadOp>,
    options: WireOptions,
}

impl ReadProxy {
    /// Wraps `reader`: spawns its owner process on `node` with default [`ProxyOptions`].
    /// Must be called inside a tokio runtime.
    pub fn new(node: &Node, reader: impl AsyncRead + Send + Unpin + 'static) -> ReadProxy {
        ReadProxy::with_options(node, reader, ProxyOptions::default())
    }

    /// Wraps `reader` with the given options.
    pub fn with_options(
        node: &Node,
        reader: impl AsyncRead + Send + Unpin + 'static,
        options: ProxyOptions,
    ) -> ReadProxy {
        let options = options.clamped();
        let attach_timeout = options.attach_timeout;
        let owner = node.spawn_with(SpawnOptions::bounded(OWNER_MAILBOX), move |inbox| {
            read_owner(inbox, reader, attach_timeout)
        });
        ReadProxy {
            owner,
            options: options.wire(),
        }
    }

    /// The owner process (monitor it to learn when the proxy is finished with the original).
    pub fn owner(&self) -> &Pid<ReadOp> {
        &self.owner
    }

    /// The options carried by the proxy (as the receiver will use them).
    pub fn options(&self) -> ProxyOptions {
        self.options.options()
    }

    /// The reader, on the node that received the proxy (or on any node).
    pub fn into_reader(self) -> RemoteReader {
        let options = self.options.options();
        self.into_reader_with(options)
    }

    /// The reader, with other chunk size, window or call timeout.
    pub fn into_reader_with(self, options: ProxyOptions) -> RemoteReader {
        let mut r = RemoteReader {
            owner: self.owner,
            options: options.clamped(),
            attach: Attach::Pending,
            inflight: VecDeque::new(),
            current: Vec::new(),
            pos: 0,
            eof: false,
            retry: None,
            error: None,
        };
        r.attach();
        r
    }
}

// ---------------------------------------------------------------------------------------------
// The holder's side.

/// A call in flight, or its outcome.
type CallFut<T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send>>;

/// Why an operation failed.
#[derive(Debug)]
enum Failure {
    /// Not sent: a queue or mailbox on the way is full. Retried shortly.
    Busy,
    /// The stream is broken.
    Broken(ProxyIoError),
}

/// Whether the holder has attached to the owner.
enum Attach {
    /// Not yet (no tokio runtime when the writer was made, or the owner's queue was full).
    Pending,
    /// Attached, with the holder process.
    Done(Pid<HolderSignal>),
    /// Could not attach; operations report the cause.
    Failed,
}

/// Runs one call to the owner and maps its failure.
async fn op_call<M: conc_core::Message, T: conc_core::Message>(
    owner: Pid<M>,
    make: impl FnOnce(ReplyTo<ProxyResult<T>>) -> M,
    timeout: Duration,
) -> Result<T, Failure> {
    match owner.call(make, timeout).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Broken(e)),
        Err(e) => Err(call_failure(&owner, e)),
    }
}

fn is_busy(kind: &SendErrorKind) -> bool {
    matches!(
        kind,
        SendErrorKind::MailboxFull | SendErrorKind::Remote(RemoteError::PeerBusy(_))
    )
}

/// Maps a failed call to the owner onto an I/O error.
fn call_failure<M: Send + 'static>(owner: &Pid<M>, e: CallError) -> Failure {
    use io::ErrorKind as K;
    let (kind, msg) = match &e {
        CallError::Send(kind) if is_busy(kind) => return Failure::Busy,
        CallError::Timeout(d) => (K::TimedOut, format!("no answer within {d:?}")),
        CallError::Exited(ExitReason::NoConnection) => (
            K::ConnectionAborted,
            "the owner's node was lost".to_string(),
        ),
        CallError::Exited(reason) => (K::BrokenPipe, format!("the owner exited: {reason}")),
        CallError::NoReply => (K::BrokenPipe, "the owner dropped the request".to_string()),
        CallError::Send(SendErrorKind::NoSuchProcess) => {
            (K::BrokenPipe, "the owner has ended".to_string())
        }
        CallError::Send(SendErrorKind::Remote(
            RemoteError::Connection { .. } | RemoteError::ShuttingDown | RemoteError::NotStarted,
        )) => (K::NotConnected, e.to_string()),
        CallError::ShuttingDown => (K::NotConnected, e.to_string()),
        _ => (K::BrokenPipe, e.to_string()),
    };
    Failure::Broken(ProxyIoError::new(
        kind,
        format!("stream proxy {owner}: {msg}"),
    ))
}

/// Spawns the holder process that stands for one writer or reader on this node.
fn spawn_holder(rt: &Runtime) -> Pid<HolderSignal> {
    rt.spawn(|mut inbox: Inbox<HolderSignal>| async move {
        if let Some(HolderSignal::Release) = inbox.recv().await {
            return;
        }
        // Aborted, or the node shuts down: an abnormal end, so the owner's monitor fires.
        inbox.exit(ExitReason::Other("stream proxy holder gone".to_string()));
        std::future::pending::<()>().await;
    })
}

/// Attaches a holder to an owner: spawns the holder process and sends `Attach`.
fn attach_holder<M: conc_core::Message>(
    owner: &Pid<M>,
    state: &mut Attach,
    make: impl FnOnce(Pid<HolderSignal>) -> M,
) {
    if !matches!(state, Attach::Pending) || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let Some(rt) = owner.runtime() else {
        *state = Attach::Failed;
        return;
    };
    let holder = spawn_holder(&rt);
    match owner.send(make(holder.clone())) {
        Ok(()) => *state = Attach::Done(holder),
        Err(e) => {
            let _ = holder.send(HolderSignal::Abort);
            if !is_busy(&e.kind) {
                *state = Attach::Failed;
            }
        }
    }
}

/// Detaches (on drop): `Detach` to the owner, then ends the holder.
fn detach_holder<M: conc_core::Message>(
    owner: &Pid<M>,
    state: &mut Attach,
    make: impl FnOnce(ProcessId) -> M,
) {
    if let Attach::Done(holder) = std::mem::replace(state, Attach::Failed) {
        let sent = holder.id().is_some_and(|id| owner.send(make(id)).is_ok());
        let _ = holder.send(if sent {
            HolderSignal::Release
        } else {
            HolderSignal::Abort
        });
    }
}

/// Polls the retry timer of a busy send; `Ready` when a send may be tried.
fn poll_retry(retry: &mut Option<Pin<Box<tokio::time::Sleep>>>, cx: &mut Context<'_>) -> Poll<()> {
    if let Some(sleep) = retry {
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        *retry = None;
    }
    Poll::Ready(())
}

fn busy_timer() -> Option<Pin<Box<tokio::time::Sleep>>> {
    Some(Box::pin(tokio::time::sleep(BUSY_RETRY)))
}

/// Which control operation is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctl {
    Flush,
    Shutdown,
}

/// An [`AsyncWrite`] whose bytes go to a writer on another node (or this one), made with
/// [`WriteProxy::into_writer`]. See the [module docs](self) for ordering, backpressure,
/// errors and lifecycle.
pub struct RemoteWriter {
    owner: Pid<WriteOp>,
    options: ProxyOptions,
    attach: Attach,
    /// Write calls sent and not yet answered, oldest first.
    inflight: VecDeque<CallFut<usize>>,
    ctl: Option<(Ctl, CallFut<()>)>,
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Once set, every operation fails with it.
    error: Option<ProxyIoError>,
}

impl fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteWriter")
            .field("owner", &self.owner)
            .field("in_flight", &self.inflight.len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl RemoteWriter {
    /// The owner process.
    pub fn owner(&self) -> &Pid<WriteOp> {
        &self.owner
    }

    /// Write calls sent whose bytes the original has not yet accepted (at most the window).
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn attach(&mut self) {
        attach_holder(&self.owner, &mut self.attach, WriteOp::Attach);
    }

    fn broken(&self) -> Option<io::Error> {
        self.error.as_ref().map(ProxyIoError::to_io)
    }

    /// Takes the answered write calls off the front; records the first failure.
    fn poll_answers(&mut self, cx: &mut Context<'_>) {
        while let Some(front) = self.inflight.front_mut() {
            match front.as_mut().poll(cx) {
                Poll::Pending => return,
                Poll::Ready(Ok(_)) => {
                    self.inflight.pop_front();
                }
                Poll::Ready(Err(f)) => {
                    self.inflight.clear();
                    self.fail(f);
                    return;
                }
            }
        }
    }

    fn fail(&mut self, f: Failure) {
        let e = match f {
            Failure::Broken(e) => e,
            // A call that was sent cannot come back busy; treat it as broken if it ever does.
            Failure::Busy => ProxyIoError::new(io::ErrorKind::BrokenPipe, "stream proxy busy"),
        };
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Drives a flush or a shutdown: waits for the writes in flight, then calls `op`.
    fn poll_ctl(&mut self, cx: &mut Context<'_>, op: Ctl) -> Poll<io::Result<()>> {
        self.attach();
        loop {
            if let Some(e) = self.broken() {
                return Poll::Ready(Err(e));
            }
            self.poll_answers(cx);
            if let Some(e) = self.broken() {
                return Poll::Ready(Err(e));
            }
            if !self.inflight.is_empty() {
                return Poll::Pending;
            }
            if let Some((kind, fut)) = &mut self.ctl {
                let kind = *kind;
                match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(res) => {
                        self.ctl = None;
                        match res {
                            Ok(()) if kind == op => return Poll::Ready(Ok(())),
                            Ok(()) => continue,
                            Err(f) => {
                                self.fail(f);
                                continue;
                            }
                        }
                    }
                }
            }
            if poll_retry(&mut self.retry, cx).is_pending() {
                return Poll::Pending;
            }
            let owner = self.owner.clone();
            let timeout = self.options.call_timeout;
            let mut fut: CallFut<()> = match op {
                Ctl::Flush => Box::pin(op_call(owner, WriteOp::Flush, timeout)),
                Ctl::Shutdown => Box::pin(op_call(owner, WriteOp::Shutdown, timeout)),
            };
            // The first poll sends the request.
            match fut.as_mut().poll(cx) {
                Poll::Pending => self.ctl = Some((op, fut)),
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(Failure::Busy)) => self.retry = busy_timer(),
                Poll::Ready(Err(f)) => self.fail(f),
            }
        }
    }
}

impl AsyncWrite for RemoteWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.attach();
        loop {
            if let Some(e) = this.broken() {
                return Poll::Ready(Err(e));
            }
            this.poll_answers(cx);
            if let Some(e) = this.broken() {
                return Poll::Ready(Err(e));
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if this.inflight.len() >= this.options.window {
                // The oldest call registered the waker: woken when the original accepted it.
                return Poll::Pending;
            }
            if poll_retry(&mut this.retry, cx).is_pending() {
                return Poll::Pending;
            }
            let n = buf.len().min(this.options.chunk_size);
            let chunk = Chunk(buf[..n].to_vec());
            let mut fut: CallFut<usize> = Box::pin(op_call(
                this.owner.clone(),
                move |reply| WriteOp::Write(chunk, reply),
                this.options.call_timeout,
            ));
            // The first poll sends the request, so requests leave in the order of the writes.
            match fut.as_mut().poll(cx) {
                Poll::Pending => this.inflight.push_back(fut),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(Failure::Busy)) => {
                    this.retry = busy_timer();
                    continue;
                }
                Poll::Ready(Err(f)) => {
                    this.fail(f);
                    continue;
                }
            }
            return Poll::Ready(Ok(n));
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_ctl(cx, Ctl::Flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_ctl(cx, Ctl::Shutdown)
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        detach_holder(&self.owner, &mut self.attach, WriteOp::Detach);
    }
}

/// An [`AsyncRead`] that reads from a reader on another node (or this one), made with
/// [`ReadProxy::into_reader`]. See the [module docs](self).
pub struct RemoteReader {
    owner: Pid<ReadOp>,
    options: ProxyOptions,
    attach: Attach,
    /// Read calls sent and not yet consumed, oldest first.
    inflight: VecDeque<CallFut<Chunk>>,
    /// The chunk being consumed.
    current: Vec<u8>,
    pos: usize,
    eof: bool,
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
    error: Option<ProxyIoError>,
}

impl fmt::Debug for RemoteReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteReader")
            .field("owner", &self.owner)
            .field("in_flight", &self.inflight.len())
            .field("buffered", &(self.current.len() - self.pos))
            .field("eof", &self.eof)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl RemoteReader {
    /// The owner process.
    pub fn owner(&self) -> &Pid<ReadOp> {
        &self.owner
    }

    /// Read calls sent and not yet consumed (at most the window).
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn attach(&mut self) {
        attach_holder(&self.owner, &mut self.attach, ReadOp::Attach);
    }

    fn fail(&mut self, f: Failure) {
        let e = match f {
            Failure::Broken(e) => e,
            Failure::Busy => ProxyIoError::new(io::ErrorKind::BrokenPipe, "stream proxy busy"),
        };
        if self.error.is_none() {
            self.error = Some(e);
        }
        self.inflight.clear();
    }

    /// Sends reads until the window is full (read-ahead).
    fn fill_window(&mut self, cx: &mut Context<'_>) {
        while !self.eof && self.error.is_none() && self.inflight.len() < self.options.window {
            if poll_retry(&mut self.retry, cx).is_pending() {
                return;
            }
            let max = self.options.chunk_size as u32;
            let mut fut: CallFut<Chunk> = Box::pin(op_call(
                self.owner.clone(),
                move |reply| ReadOp::Read(max, reply),
                self.options.call_timeout,
            ));
            match fut.as_mut().poll(cx) {
                Poll::Pending => self.inflight.push_back(fut),
                Poll::Ready(Err(Failure::Busy)) => self.retry = busy_timer(),
                Poll::Ready(res) => self.inflight.push_back(Box::pin(std::future::ready(res))),
            }
        }
    }
}

impl AsyncRead for RemoteReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.attach();
        loop {
            if this.pos < this.current.len() {
                let n = out.remaining().min(this.current.len() - this.pos);
                out.put_slice(&this.current[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &this.error {
                return Poll::Ready(Err(e.to_io()));
            }
            if this.eof || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.fill_window(cx);
            let Some(front) = this.inflight.front_mut() else {
                // Nothing could be sent: the retry timer registered the waker.
                return Poll::Pending;
            };
            match front.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(res) => {
                    this.inflight.pop_front();
                    match res {
                        Ok(Chunk(bytes)) if bytes.is_empty() => {
                            // End of file; reads sent ahead of it are abandoned.
                            this.eof = true;
                            this.inflight.clear();
                        }
                        Ok(Chunk(bytes)) => {
                            this.current = bytes;
                            this.pos = 0;
                        }
                        Err(f) => this.fail(f),
                    }
                }
            }
        }
    }
}

impl Drop for RemoteReader {
    fn drop(&mut self) {
        detach_holder(&self.owner, &mut self.attach, ReadOp::Detach);
    }
}

// ---------------------------------------------------------------------------------------------
// The owner's side.

/// The holders an owner serves, and when it should end.
struct Holders {
    attached: HashMap<ProcessId, Holder>,
    ever: bool,
    attach_deadline: Instant,
}

enum Holder {
    /// Monitored.
    Live(Pid<HolderSignal>, MonitorRef),
    /// Ended normally: its `Detach` is on the way (until the deadline).
    Leaving(Instant),
}

impl Holders {
    fn new(attach_timeout: Duration) -> Holders {
        let now = Instant::now();
        Holders {
            attached: HashMap::new(),
            ever: false,
            attach_deadline: now
                .checked_add(attach_timeout)
                .unwrap_or(now + Duration::from_secs(365 * 24 * 3600)),
        }
    }

    fn attach<M: Send + 'static>(&mut self, inbox: &Inbox<M>, pid: Pid<HolderSignal>) {
        let Some(id) = pid.id() else {
            return;
        };
        let mref = inbox.monitor(&pid);
        self.ever = true;
        self.attached.insert(id, Holder::Live(pid, mref));
    }

    fn detach<M: Send + 'static>(&mut self, inbox: &Inbox<M>, id: ProcessId) {
        if let Some(Holder::Live(pid, mref)) = self.attached.remove(&id) {
            inbox.demonitor(&pid, mref);
        }
    }

    fn down(&mut self, d: &Down) {
        match self.attached.get(&d.pid) {
            Some(Holder::Live(_, mref)) if *mref == d.monitor => {
                if d.reason.is_normal() {
                    self.attached
                        .insert(d.pid, Holder::Leaving(Instant::now() + DETACH_GRACE));
                } else {
                    self.attached.remove(&d.pid);
                }
            }
            _ => {}
        }
    }

    /// When the owner must look again without a message: the attach deadline, or the end of
    /// the grace of a leaving holder.
    fn deadline(&self) -> Option<Instant> {
        if !self.ever {
            return Some(self.attach_deadline);
        }
        self.attached
            .values()
            .filter_map(|h| match h {
                Holder::Leaving(t) => Some(*t),
                Holder::Live(..) => None,
            })
            .min()
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.attached
            .retain(|_, h| !matches!(h, Holder::Leaving(t) if *t <= now));
    }

    /// Whether the owner is done: every holder is gone, or none came in time.
    fn finished(&self) -> bool {
        if self.ever {
            self.attached.is_empty()
        } else {
            Instant::now() >= self.attach_deadline
        }
    }
}

/// Receives the owner's next event, or `None` when it should end.
async fn next_event<M: Send + 'static>(
    inbox: &mut Inbox<M>,
    holders: &mut Holders,
) -> Option<Event<M>> {
    loop {
        if holders.finished() {
            return None;
        }
        let ev = match holders.deadline() {
            None => inbox.recv_event().await.ok_or(RecvError::Closed),
            Some(t) => {
                let wait = t.saturating_duration_since(Instant::now());
                inbox.recv_event_timeout(wait).await
            }
        };
        match ev {
            Ok(ev) => return Some(ev),
            Err(RecvError::Timeout) => holders.expire(),
            Err(RecvError::Closed) => return None,
        }
    }
}

/// Answers with the stream's error if it is broken, else runs `op` and records its error.
async fn guarded<T>(
    failed: &mut Option<ProxyIoError>,
    op: impl Future<Output = io::Result<T>>,
) -> ProxyResult<T> {
    if let Some(e) = failed {
        return Err(e.clone());
    }
    op.await.map_err(|e| {
        let e = ProxyIoError::from(&e);
        *failed = Some(e.clone());
        e
    })
}

/// The owner of a write proxy: applies the operations of its holders to the original in the
/// order they arrive.
async fn write_owner<W: AsyncWrite + Send + Unpin + 'static>(
    mut inbox: Inbox<WriteOp>,
    mut writer: W,
    attach_timeout: Duration,
) {
    let mut holders = Holders::new(attach_timeout);
    let mut failed: Option<ProxyIoError> = None;
    while let Some(ev) = next_event(&mut inbox, &mut holders).await {
        match ev {
            Event::Message(WriteOp::Attach(pid)) => holders.attach(&inbox, pid),
            Event::Message(WriteOp::Detach(id)) => holders.detach(&inbox, id),
            Event::Message(WriteOp::Write(Chunk(bytes), reply)) => {
                let res = guarded(&mut failed, async {
                    writer.write_all(&bytes).await.map(|()| bytes.len())
                })
                .await;
                let _ = reply.send(res);
            }
            Event::Message(WriteOp::Flush(reply)) => {
                let _ = reply.send(guarded(&mut failed, writer.flush()).await);
            }
            Event::Message(WriteOp::Shutdown(reply)) => {
                let _ = reply.send(guarded(&mut failed, writer.shutdown()).await);
            }
            Event::Down(d) => holders.down(&d),
            Event::Exit(_) => {}
        }
    }
    if failed.is_none() {
        let _ = tokio::time::timeout(FINAL_FLUSH, writer.flush()).await;
    }
    tracing::debug!(owner = %inbox.pid(), "write proxy finished");
}

/// The owner of a read proxy: reads from the original for its holders.
async fn read_owner<R: AsyncRead + Send + Unpin + 'static>(
    mut inbox: Inbox<ReadOp>,
    mut reader: R,
    attach_timeout: Duration,
) {
    let mut holders = Holders::new(attach_timeout);
    let mut failed: Option<ProxyIoError> = None;
    while let Some(ev) = next_event(&mut inbox, &mut holders).await {
        match ev {
            Event::Message(ReadOp::Attach(pid)) => holders.attach(&inbox, pid),
            Event::Message(ReadOp::Detach(id)) => holders.detach(&inbox, id),
            Event::Message(ReadOp::Read(max, reply)) => {
                let n = (max as usize).clamp(1, MAX_CHUNK);
                let res = guarded(&mut failed, async {
                    let mut buf = vec![0u8; n];
                    let got = reader.read(&mut buf).await?;
                    buf.truncate(got);
                    Ok(Chunk(buf))
                })
                .await;
                let _ = reply.send(res);
            }
            Event::Down(d) => holders.down(&d),
            Event::Exit(_) => {}
        }
    }
    tracing::debug!(owner = %inbox.pid(), "read proxy finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_kind() {
        let e = io::Error::new(io::ErrorKind::PermissionDenied, "no more for you");
        let w = ProxyIoError::from(&e);
        let back = w.to_io();
        assert_eq!(back.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(back.to_string(), "no more for you");
        let unknown = ProxyIoError {
            kind: "SomethingNew".into(),
            message: "m".into(),
        };
        assert_eq!(unknown.error_kind(), io::ErrorKind::Other);
    }

    #[test]
    fn options_are_clamped() {
        let o = ProxyOptions {
            chunk_size: 0,
            window: 10_000,
            call_timeout: Duration::ZERO,
            attach_timeout: Duration::ZERO,
        }
        .clamped();
        assert_eq!(o.chunk_size, 1);
        assert_eq!(o.window, MAX_WINDOW);
        assert!(o.call_timeout > Duration::ZERO);
        let w = WireOptions {
            chunk: u32::MAX,
            window: 0,
            timeout_ms: 0,
        }
        .options();
        assert_eq!(w.chunk_size, MAX_CHUNK);
        assert_eq!(w.window, 1);
        let w = WireOptions {
            chunk: 1,
            window: 1,
            timeout_ms: u64::MAX,
        }
        .options();
        assert_eq!(w.call_timeout, MAX_CALL_TIMEOUT);
    }
}
