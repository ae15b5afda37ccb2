//! The `Transport` trait: what a node needs from a way of moving frames between nodes.
//!
//! A transport authenticates every peer with the cookie handshake before it hands any of the
//! peer's frames to the node, and it carries frames to peers named by their node name. The
//! per-message TCP, pooled TCP and QUIC transports all implement it; the node does not know
//! which one it runs on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use conc_core::{BoxFuture, DownReason, Target};

use crate::frame::{DEFAULT_MAX_FRAME, Frame, FrameError};
use crate::handshake::{Cookie, NodeIdentity};

/// Limits on what peers can make a node do. Start from [`Limits::default`] and change what you
/// need with the `with_*` methods (the struct may grow, so it cannot be written as a literal
/// outside this crate):
///
/// ```
/// use std::time::Duration;
/// let limits = conc_wire::Limits::default()
///     .with_max_frame(1 << 20)
///     .with_heartbeat_timeout(Duration::from_secs(5));
/// assert_eq!(limits.max_frame, 1 << 20);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame payload accepted or sent (default 8 MiB).
    pub max_frame: usize,
    /// Deadline for a peer to complete the handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// Deadline for establishing an outbound connection (default 5 s).
    pub connect_timeout: Duration,
    /// Connections still in the handshake, overall (default 256); more are closed at once.
    pub max_handshakes: usize,
    /// Connections still in the handshake from one IP address (default 32).
    pub max_handshakes_per_ip: usize,
    /// Bytes queued for one peer and not yet written (default 64 MiB); a send beyond it fails
    /// with "peer busy" and hands the message back.
    pub max_queue_bytes: usize,
    /// Frames queued for one peer in per-message mode (default 10,000).
    pub max_queue_frames: usize,
    /// A long-lived connection with nothing to send for this long sends a ping (default 1 s).
    pub heartbeat_interval: Duration,
    /// A peer silent for this long is declared down and its connection closed (default 3 s).
    pub heartbeat_timeout: Duration,
    /// Authenticated connections one peer node may have open at once (default 8): a
    /// simultaneous connect or a restart briefly needs two; more are closed after the
    /// handshake, logged and counted.
    pub max_connections_per_peer: usize,
    /// How long a shutting-down node waits for what it had queued to be written and taken by
    /// its peers before it closes their connections (default 5 s).
    pub shutdown_timeout: Duration,
    /// Peer nodes a node keeps state for (default 1,024): links, queues, stats. Past it, idle
    /// peers (not connected, nothing queued, no pid, call, monitor or link referring to them)
    /// are forgotten; when none is idle, a connection from a new peer is refused after the
    /// handshake and a send to a pid of a new node fails with "too many peers".
    pub max_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_handshakes: 256,
            max_handshakes_per_ip: 32,
            max_queue_bytes: 64 << 20,
            max_queue_frames: 10_000,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            max_connections_per_peer: 8,
            shutdown_timeout: Duration::from_secs(5),
            max_peers: 1024,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_frame`].
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Sets [`Limits::handshake_timeout`].
    pub fn with_handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }

    /// Sets [`Limits::connect_timeout`].
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`Limits::max_handshakes`].
    pub fn with_max_handshakes(mut self, max_handshakes: usize) -> Self {
        self.max_handshakes = max_handshakes;
        self
    }

    /// Sets [`Limits::max_handshakes_per_ip`].
    pub fn with_max_handshakes_per_ip(mut self, max_handshakes_per_ip: usize) -> Self {
        self.max_handshakes_per_ip = max_handshakes_per_ip;
        self
    }

    /// Sets [`Limits::max_queue_bytes`].
    pub fn with_max_queue_bytes(mut self, max_queue_bytes: usize) -> Self {
        self.max_queue_bytes = max_queue_bytes;
        self
    }

    /// Sets [`Limits::max_queue_frames`].
    pub fn with_max_queue_frames(mut self, max_queue_frames: usize) -> Self {
        self.max_queue_frames = max_queue_frames;
        self
    }

    /// Sets [`Limits::heartbeat_interval`].
    pub fn with_heartbeat_interval(mut self, heartbeat_interval: Duration) -> Self {
        self.heartbeat_interval = heartbeat_interval;
        self
    }

    /// Sets [`Limits::heartbeat_timeout`].
    pub fn with_heartbeat_timeout(mut self, heartbeat_timeout: Duration) -> Self {
        self.heartbeat_timeout = heartbeat_timeout;
        self
    }

    /// Sets [`Limits::max_connections_per_peer`].
    pub fn with_max_connections_per_peer(mut self, max_connections_per_peer: usize) -> Self {
        self.max_connections_per_peer = max_connections_per_peer;
        self
    }

    /// Sets [`Limits::shutdown_timeout`].
    pub fn with_shutdown_timeout(mut self, shutdown_timeout: Duration) -> Self {
        self.shutdown_timeout = shutdown_timeout;
        self
    }

    /// Sets [`Limits::max_peers`].
    pub fn with_max_peers(mut self, max_peers: usize) -> Self {
        self.max_peers = max_peers;
        self
    }
}

/// What a transport is started with.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's identity (name and incarnation), proven in every handshake.
    pub identity: NodeIdentity,
    /// The shared secret.
    pub cookie: Cookie,
    /// Limits.
    pub limits: Limits,
}

/// What the transport knows about a frame it was asked to carry, so that it can report the
/// frame's loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// The reply id of the call this frame is the request of.
    pub call_ref: Option<u64>,
    /// Frames with the same lane stay in order; transports with several streams per peer
    /// (QUIC) pin each lane to one stream. The node uses the target process as the lane, so
    /// FIFO per (sender, receiver) pair holds.
    pub lane: u64,
    /// The frame must not overtake any frame queued for the peer before it, on any lane (a
    /// monitor's `Down`, a link's exit: they follow the last messages of the process that
    /// exited). Transports with one ordered stream per peer get this for free; QUIC sends a
    /// barrier first.
    pub after_all: bool,
    /// The id of the monitor this frame asks for, if it does: a transport that knows which
    /// incarnation of the peer each frame reaches (per-message TCP) tells the node with
    /// [`Proven::carrying`].
    pub monitor: Option<u64>,
}

/// What a handshake proved, as a transport reports it with [`Inbound::peer_proven`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Proven<'a> {
    /// The name this node dialled when it opened the connection (`None` for a connection the
    /// peer opened): when it differs from the proven name it is an alias of that node.
    pub dialled: Option<&'a str>,
    /// The identity the peer proved.
    pub peer: &'a NodeIdentity,
    /// The frame the connection will carry, when it carries one known frame (per-message
    /// TCP): the call or monitor it asks for reaches this incarnation of the peer.
    pub carrying: FrameMeta,
    /// The capability flags the handshake agreed on (see
    /// [`CAPABILITIES`](crate::handshake::CAPABILITIES)); 0 when the transport does not say.
    pub capabilities: u64,
}

impl<'a> Proven<'a> {
    /// A proof of `peer` on a connection this node opened to `dialled` (or, with `None`, one
    /// the peer opened).
    pub fn new(dialled: Option<&'a str>, peer: &'a NodeIdentity) -> Self {
        Proven {
            dialled,
            peer,
            carrying: FrameMeta::default(),
            capabilities: 0,
        }
    }

    /// The handshake agreed on `capabilities` (from
    /// [`run_handshake_agreed`](crate::io::run_handshake_agreed)).
    pub fn agreed(mut self, capabilities: u64) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// The connection carries exactly the frame described by `meta`.
    pub fn carrying(mut self, meta: FrameMeta) -> Self {
        self.carrying = meta;
        self
    }
}

/// Why a frame could not be queued for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The peer's outbound queue is full.
    #[error("peer busy: outbound queue is full")]
    Busy,
    /// The peer cannot be reached.
    #[error("no connection: {0}")]
    Unreachable(String),
    /// The transport is shut down.
    #[error("transport is shut down")]
    Shutdown,
    /// The frame could not be encoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A frame encoder handed to [`Route::send`]: appends one whole frame to the buffer.
pub type EncodeFn<'a> = &'a mut dyn FnMut(&mut Vec<u8>) -> Result<(), FrameError>;

/// Appends one frame to a transport's outbound queue buffer with `encode`: refused with
/// [`RouteError::Busy`] if the buffer already holds `max_queue` bytes, and with
/// [`FrameError::TooLarge`] if the frame's payload exceeds `max_frame`. On any error the
/// buffer is left as it was.
pub fn queue_frame(
    buf: &mut Vec<u8>,
    encode: EncodeFn<'_>,
    max_queue: usize,
    max_frame: usize,
) -> Result<(), RouteError> {
    if buf.len() >= max_queue {
        return Err(RouteError::Busy);
    }
    let before = buf.len();
    if let Err(e) = encode(buf) {
        buf.truncate(before);
        return Err(RouteError::Frame(e));
    }
    let len = buf.len() - before;
    if len > max_frame + crate::frame::LEN_PREFIX {
        buf.truncate(before);
        return Err(RouteError::Frame(FrameError::TooLarge {
            len,
            max: max_frame,
        }));
    }
    Ok(())
}

thread_local! {
    /// The buffer [`encode_frame`] encodes into, reused from call to call on each thread.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes one frame with `encode` into a buffer of this thread's, outside any lock of the
/// caller's, and hands its bytes to `append` (which puts them in a queue, under its own lock).
/// So user `Serialize` code never runs while a transport's queue is locked: one large message
/// does not hold up other senders to the same peer, and a send from inside `Serialize` does not
/// deadlock. Fails with [`FrameError::TooLarge`] if the frame's payload exceeds `max_frame`, or
/// with the encoder's error; `append` is then not called.
pub fn encode_frame<T>(
    encode: EncodeFn<'_>,
    max_frame: usize,
    append: impl FnOnce(&[u8]) -> Result<T, RouteError>,
) -> Result<T, RouteError> {
    // Taken out, not borrowed: an encoder that sends (re-entrantly) gets a buffer of its own.
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    buf.clear();
    let res = queue_frame(&mut buf, encode, usize::MAX, max_frame).and_then(|()| append(&buf));
    if buf.capacity() <= 1 << 20 {
        buf.clear();
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.capacity() < buf.capacity() {
                *s = buf;
            }
        });
    }
    res
}

/// The way to one peer. Cheap to clone (`Arc`); sends never wait for the network.
pub trait Route: Send + Sync + 'static {
    /// The peer's node name.
    fn peer(&self) -> &str;
    /// Encodes a frame with `encode` and queues it for the peer. Frames queued on one link are
    /// delivered in order.
    fn send(&self, encode: EncodeFn<'_>, meta: FrameMeta) -> Result<(), RouteError>;
    /// Resolves when a send that failed with [`RouteError::Busy`] may succeed.
    fn ready(&self) -> BoxFuture<'_, ()>;
    /// Bytes and frames queued for the peer and not yet written (for stats).
    fn queued(&self) -> (usize, usize) {
        (0, 0)
    }
}

/// What the node does with what arrives. Called by transports only for authenticated peers.
pub trait Inbound: Send + Sync + 'static {
    /// A frame from an authenticated peer. `back` reaches the same peer on the same connection
    /// (for error reports). When `may_wait` is true and the frame's target cannot take it now
    /// (a full bounded mailbox), returns `Some(wait)` without taking the frame: the transport
    /// awaits `wait` (bounded, see [`crate::io::hand_over`]), reading nothing more from that
    /// stream, and offers the same frame again with `may_wait == false`, when the node refuses
    /// it if there is still no room. So backpressure reaches the sender.
    ///
    /// `wire_len` is the frame's size on the wire (its payload plus the length prefix), for
    /// the node's byte counters.
    fn frame(
        &self,
        from: &NodeIdentity,
        frame: Frame<'_>,
        wire_len: usize,
        back: &dyn Route,
        may_wait: bool,
    ) -> Option<BoxFuture<'static, ()>>;
    /// A handshake proved `peer`'s identity (name and incarnation) on a new connection, before
    /// any frame of that connection is handed over. `dialled` is the name this node dialled
    /// when it opened the connection (`None` for a connection the peer opened): when it differs
    /// from the proven name it is an alias of that node. Called on every transport for every
    /// authenticated connection (per-message TCP: for every message), so the node keys all it
    /// knows of a peer by the proven identity and learns of a restart (a new incarnation) from
    /// any connection.
    ///
    /// Returns whether the node takes the connection: `false` when a name it dialled proved
    /// to be a node whose name another live node of another incarnation already proved (two
    /// nodes claim one name); the transport then closes the connection and reports the frames
    /// it was to carry as undeliverable with [`DownReason::NameConflict`].
    fn peer_proven(&self, proof: Proven<'_>) -> bool {
        let _ = proof;
        true
    }
    /// A peer completed the handshake.
    fn peer_up(&self, peer: &NodeIdentity);
    /// A peer's connection ended (`reason` says why).
    fn peer_down(&self, peer: &NodeIdentity, reason: DownReason);
    /// Frames queued for `peer` (the name it was reached by) were lost: the connection failed
    /// before they were written or acknowledged, for `reason`. `call_refs` are the calls among
    /// them when the transport knows them (per-message TCP); `None` when it does not (a queue
    /// of bytes), and then any call waiting on the peer may have been among them.
    fn undeliverable(
        &self,
        peer: &str,
        frames: usize,
        call_refs: Option<&[u64]>,
        reason: DownReason,
    );
    /// A peer was refused or misbehaved (handshake failure, malformed frame, limit hit).
    fn rejected(&self, remote: &str, reason: &str);
    /// Whether the node takes a connection from the authenticated `peer`: asked before the
    /// transport keeps any state for a peer it did not know, so that made-up node names cannot
    /// grow its maps ([`Limits::max_peers`]). Refused connections are closed and reported to
    /// [`rejected`](Inbound::rejected).
    fn admit(&self, peer: &NodeIdentity) -> bool {
        let _ = peer;
        true
    }
}

/// Why a transport could not start or reach a peer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// Configuration is invalid (for example a bad certificate).
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The transport was used before `start`.
    #[error("transport not started")]
    NotStarted,
    /// The transport was already started.
    #[error("transport already started")]
    AlreadyStarted,
}

/// A way of moving frames between nodes (object-safe).
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The transport's name as used on command lines (`per-message-tcp`, `pooled-tcp`, `quic`).
    fn name(&self) -> &'static str;
    /// Binds the listener (before `start`, so that a node listening on port 0 learns its
    /// port, and so its name, first). Returns the bound address. A node that only connects out
    /// never calls it.
    async fn bind(&self, listen: &str) -> Result<SocketAddr, TransportError>;
    /// Starts the transport: begins accepting on the bound listener, if any, and allows links.
    async fn start(
        &self,
        config: TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Result<(), TransportError>;
    /// The link to the peer named `peer` (created on first use; connecting is lazy).
    fn route(&self, peer: &str) -> Result<Arc<dyn Route>, TransportError>;
    /// Closes every connection (telling peers goodbye where the transport can) and stops
    /// accepting.
    async fn shutdown(&self);
    /// Whether the transport has no long-lived connections whose loss tells that a peer is
    /// down, so that the node must probe peers it depends on (per-message TCP).
    fn needs_probes(&self) -> bool {
        false
    }
    /// Drops the state kept for `peer` if nothing uses it (no connection, nothing queued, no
    /// link handed out still held); the node calls this when it forgets an idle peer.
    fn forget(&self, peer: &str) {
        let _ = peer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_bare, kind};

    #[test]
    fn queue_frame_bounds_and_leaves_the_buffer_as_it_was() {
        let mut buf = Vec::new();
        let mut ping = |out: &mut Vec<u8>| {
            encode_bare(out, kind::PING);
            Ok(())
        };
        queue_frame(&mut buf, &mut ping, 8, 16).unwrap();
        assert_eq!(buf.len(), 5);
        queue_frame(&mut buf, &mut ping, 8, 16).unwrap();
        // The queue holds 10 bytes >= 8: busy, nothing added.
        assert_eq!(
            queue_frame(&mut buf, &mut ping, 8, 16),
            Err(RouteError::Busy)
        );
        assert_eq!(buf.len(), 10);
        // A frame over the limit is taken back out.
        let mut big = |out: &mut Vec<u8>| {
            out.extend_from_slice(&[0; 40]);
            Ok(())
        };
        assert!(matches!(
            queue_frame(&mut buf, &mut big, usize::MAX, 16),
            Err(RouteError::Frame(FrameError::TooLarge { len: 40, max: 16 }))
        ));
        assert_eq!(buf.len(), 10);
        // So is a half-written frame whose encoder failed.
        let mut failing = |out: &mut Vec<u8>| {
            out.extend_from_slice(&[1, 2, 3]);
            Err(FrameError::Empty)
        };
        assert_eq!(
            queue_frame(&mut buf, &mut failing, usize::MAX, 16),
            Err(RouteError::Frame(FrameError::Empty))
        );
        assert_eq!(buf.len(), 10);
    }
}
