//! # conc-quic
//!
//! The QUIC transport for conc, over quinn 0.11 and rustls: one QUIC connection per pair of
//! nodes, used in both directions; messages ride on a small set of long-lived unidirectional
//! streams per direction ("lanes"), each (sender, receiver) pair pinned to one lane, so FIFO per
//! pair holds and one slow pair does not hold up the others.
//!
//! Large frames (payload over [`FRAGMENT_CHUNK`](conc_wire::frame::FRAGMENT_CHUNK), 64 KiB) travel apart: they go to one more
//! stream, the big lane, whose data QUIC sends after the other streams' (lower stream
//! priority), so a small frame never waits behind a large one's bytes, even when they share a
//! lane. Order per pair still holds, with the barriers `Down` uses: a large frame is preceded
//! on the big lane by a barrier for the frames queued on its sender's lane before it, and the
//! sender's next frame on that lane by a barrier for the large frame (the receiver holds each
//! back until the other lane has delivered that many frames).
//!
//! QUIC is always encrypted (TLS 1.3). Each node makes a self-signed certificate at start; the
//! peer is authenticated by the cookie handshake, which runs on the connection's first stream
//! and is bound to the TLS session with the TLS exporter, so a man in the middle without the
//! cookie fails. Keep-alive is sent every `Limits::heartbeat_interval`, and a peer silent for
//! `Limits::heartbeat_timeout` is declared down (QUIC idle timeout). A node shutting down
//! closes its connections with application close code 0 (`goodbye`).
//!
//! A peer's lanes and connection state are its `conc_wire::session::PeerEntry`, shared with
//! pooled TCP; this crate dials, accepts, and reads and writes a connection's streams. When both
//! nodes connect at once, the connection opened by the node with the smaller (name,
//! incarnation) wins; the other is retired (its writers finish their streams, then a stream of
//! its own carries a `Retire` frame saying how many there were), and with `HANDOVER` agreed a
//! pair's frames keep their order across the switch.
//!
//! A transport is handed to a node (crate `conc-node`, with feature `quic`, re-exports
//! [`Quic`]):
//!
//! ```
//! use conc_node::{Cookie, Inbox, Node, ReplyTo};
//! use conc_quic::Quic;
//! use std::time::Duration;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cookie = Cookie::new("a-long-random-shared-secret")?;
//! let a = Node::builder()
//!     .listen("127.0.0.1:0")
//!     .cookie(cookie.clone())
//!     .transport(Quic::new())
//!     .start()
//!     .await?;
//! let echo = a.spawn(|mut inbox: Inbox<(u32, ReplyTo<u32>)>| async move {
//!     while let Some((n, reply)) = inbox.recv().await {
//!         let _ = reply.send(n + 1);
//!     }
//! });
//! a.register("echo", &echo)?;
//! let b = Node::builder().cookie(cookie).transport(Quic::new()).start().await?;
//! let echo = b.remote::<(u32, ReplyTo<u32>)>(a.name(), "echo")?;
//! assert_eq!(echo.call(|r| (41, r), Duration::from_secs(10)).await?, 42);
//! # b.shutdown().await; a.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_trait::async_trait;
use conc_wire::frame::{Frame, MAX_LANES};
use conc_wire::handshake::HANDOVER;
use conc_wire::handshake::{HandshakeConfig, NodeIdentity};
use conc_wire::io::{
    FrameReader, HandshakeGate, IoError, PeerConnectionPass, PeerConnections, new_handshake,
    run_handshake_agreed,
};
use conc_wire::session::{
    ConnKey, Connector, DialError, Established, LaneModel, PeerEntry, PeerTable, Take,
};
use conc_wire::{
    DownReason, FrameMeta, Inbound, Route, Transport, TransportConfig, TransportError,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, VarInt};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use conc_wire::tls::{EXPORTER_LABEL, TlsIdentity, TlsMode};

/// The ALPN protocol id of conc over QUIC.
const ALPN: &[u8] = b"conc/1";

/// The application close code of a clean shutdown.
pub const CLOSE_GOODBYE: u32 = 0;
/// The application close code of a protocol violation by the peer.
pub const CLOSE_PROTOCOL: u32 = 1;
/// The application close code of a duplicate connection (simultaneous connect).
pub const CLOSE_DUPLICATE: u32 = 2;
/// The application close code of a connection over the per-peer cap
/// ([`Limits::max_connections_per_peer`](conc_wire::Limits::max_connections_per_peer)).
pub const CLOSE_TOO_MANY: u32 = 3;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The QUIC transport. See the crate docs.
pub struct Quic {
    lanes: usize,
    mode: TlsMode,
    endpoint: Mutex<Option<Endpoint>>,
    shared: OnceLock<Arc<Shared>>,
}

impl std::fmt::Debug for Quic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quic").field("lanes", &self.lanes).finish()
    }
}

impl Default for Quic {
    fn default() -> Self {
        Quic::new()
    }
}

impl Quic {
    /// Use certificate-based mutual TLS: this node presents `identity`'s certificate, and a
    /// peer must present one signed by `identity`'s CA whose names include the peer's node host
    /// (checked after the cookie handshake). Peers without such a certificate are refused in the
    /// TLS handshake, before the cookie handshake.
    pub fn with_mutual_tls(mut self, identity: TlsIdentity) -> Quic {
        self.mode = TlsMode::Mutual(identity);
        self
    }

    /// A QUIC transport with 4 lanes per direction.
    pub fn new() -> Quic {
        Quic::with_lanes(4)
    }

    /// A QUIC transport with `lanes` streams per direction for ordinary frames (at least 1,
    /// at most 63), and one more for large frames (see the crate docs).
    pub fn with_lanes(lanes: usize) -> Quic {
        Quic {
            lanes: lanes.clamp(1, MAX_LANES - 1),
            mode: TlsMode::SelfSigned,
            endpoint: Mutex::new(None),
            shared: OnceLock::new(),
        }
    }
}

struct Shared {
    mode: TlsMode,
    config: TransportConfig,
    inbound: Arc<dyn Inbound>,
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    peers: PeerTable<Shared>,
    gate: HandshakeGate,
    /// Authenticated connections per peer, capped.
    conns: PeerConnections,
    lanes: usize,
    /// Set when shutdown begins: incoming connections are refused.
    stopping: std::sync::atomic::AtomicBool,
}

struct Conn {
    /// Its id, who opened it and the identity the peer proved on it.
    key: ConnKey,
    quic: quinn::Connection,
    /// Frames taken from each of the peer's lanes on this connection (index = lane), for
    /// barriers.
    taken: LaneCounts,
    /// Why this node closed the connection itself, when it did.
    closed_because: OnceLock<DownReason>,
    /// Both sides agreed [`HANDOVER`]: a connection that loses is retired and the pair's
    /// frames are handed over in order (see [`retire`]).
    handover: bool,
    /// Cancelled when this connection lost to another one: its writers finish their streams.
    retired: CancellationToken,
    /// Writers of this connection still running, and the streams they opened.
    writers: AtomicUsize,
    opened: AtomicU32,
    writers_done: Notify,
    /// The lane streams the peer opened on it, by its `Retire` frame; and how many of the
    /// peer's lane streams were read to their end.
    peer_opened: OnceLock<u32>,
    peer_ended: AtomicU32,
    /// The peer's side of this connection was read to its end (its `Retire` came and all the
    /// lane streams it names ended).
    drained: std::sync::atomic::AtomicBool,
}

impl Conn {
    /// Records that a stream of the peer's ended or its `Retire` came; returns true once (the
    /// first time all the peer's lane streams are read to their end after its `Retire`).
    fn check_drained(&self) -> bool {
        let Some(&opened) = self.peer_opened.get() else {
            return false;
        };
        self.peer_ended.load(Ordering::SeqCst) >= opened
            && !self.drained.swap(true, Ordering::SeqCst)
    }
}

/// Frames taken per lane, and a wake-up for barriers waiting on them. Counted without a lock
/// and woken only when a barrier waits: this runs once per frame received.
struct LaneCounts {
    counts: [AtomicU64; MAX_LANES],
    /// Barriers waiting in [`LaneCounts::wait`].
    waiting: AtomicUsize,
    changed: Notify,
}

impl LaneCounts {
    fn new() -> Self {
        LaneCounts {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            waiting: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn add(&self, lane: usize) {
        if let Some(c) = self.counts.get(lane) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        // SeqCst on both sides: either a waiter sees this count, or this sees the waiter.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    fn reached(&self, want: &[u64]) -> bool {
        want.iter()
            .zip(self.counts.iter())
            .all(|(w, c)| c.load(Ordering::SeqCst) >= *w)
    }

    /// Waits until every lane has had at least `want` frames taken, or `bound` passes; returns
    /// whether it got there.
    async fn wait(&self, want: &[u64], bound: std::time::Duration) -> bool {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.reached(want) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.reached(want);
            }
        }
    }
}

/// Everything about one peer (its session: connection, lanes, backoff), shared with pooled
/// TCP.
type Peer = PeerEntry<Shared>;

#[async_trait]
impl Connector for Shared {
    type Conn = Arc<Conn>;

    /// Dials `peer` once and authenticates the connection. A connection refused by the peer's
    /// handshake caps (QUIC's `CONNECTION_REFUSED`: the peer is alive but busy, a start-up
    /// storm) is [`DialError::Busy`], and the session dials again.
    async fn dial(self: Arc<Self>, peer: Arc<Peer>) -> Result<(), DialError> {
        dial(&self, &peer).await
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

impl Shared {
    /// How the peers' frames are laid on streams: `lanes` ordinary ones and the big lane.
    fn model(&self) -> LaneModel {
        LaneModel::Streams {
            ordinary: self.lanes,
        }
    }

    /// The index of the big lane (the last).
    fn big_lane(&self) -> usize {
        self.model().lanes() - 1
    }
}

fn transport_config(
    config: &TransportConfig,
) -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(config.limits.heartbeat_interval));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(config.limits.heartbeat_timeout)
            .map_err(|e| TransportError::Config(format!("idle timeout: {e}")))?,
    ));
    t.max_concurrent_uni_streams(VarInt::from_u32(64));
    t.max_concurrent_bidi_streams(VarInt::from_u32(4));
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    Ok(Arc::new(t))
}

fn server_config(
    mode: &TlsMode,
    name: &str,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TransportError> {
    let tls = conc_wire::tls::server_config(mode, name, &[ALPN])
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport);
    Ok(cfg)
}

fn client_config(
    mode: &TlsMode,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TransportError> {
    let tls = conc_wire::tls::client_config(mode, &[ALPN])
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport);
    Ok(cfg)
}

/// The reason carried in the close frame of a refused handshake (bounded).
fn close_reason(e: &IoError) -> Vec<u8> {
    let mut r = e.to_string().into_bytes();
    r.truncate(200);
    r
}

/// In mutual TLS, the peer's certificate must name the node it proved to be.
fn check_name(mode: &TlsMode, quic: &quinn::Connection, who: &NodeIdentity) -> Result<(), IoError> {
    let certs = quic.peer_identity().and_then(|id| {
        id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    conc_wire::tls::check_peer_name(mode, certs.as_ref().and_then(|c| c.first()), &who.name)
        .map_err(|e| IoError::Tls(e.to_string()))
}

#[async_trait]
impl Transport for Quic {
    fn name(&self) -> &'static str {
        "quic"
    }

    async fn bind(&self, listen: &str) -> Result<SocketAddr, TransportError> {
        let bind_err = |source| TransportError::Bind {
            addr: listen.to_string(),
            source,
        };
        let addr = tokio::net::lookup_host(listen)
            .await
            .map_err(bind_err)?
            .next()
            .ok_or_else(|| bind_err(std::io::Error::other("no address")))?;
        let endpoint = Endpoint::client(addr).map_err(bind_err)?;
        let local = endpoint.local_addr().map_err(bind_err)?;
        *lock(&self.endpoint) = Some(endpoint);
        Ok(local)
    }

    async fn start(
        &self,
        config: TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Result<(), TransportError> {
        let transport = transport_config(&config)?;
        let bound = lock(&self.endpoint).take();
        let listening = bound.is_some();
        let mut endpoint = match bound {
            Some(e) => e,
            None => Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))).map_err(|source| {
                TransportError::Bind {
                    addr: "0.0.0.0:0".to_string(),
                    source,
                }
            })?,
        };
        if listening {
            endpoint.set_server_config(Some(server_config(
                &self.mode,
                &config.identity.name,
                transport.clone(),
            )?));
        }
        let client = client_config(&self.mode, transport)?;
        endpoint.set_default_client_config(client.clone());
        let shared = Arc::new(Shared {
            mode: self.mode.clone(),
            gate: HandshakeGate::new(
                config.limits.max_handshakes,
                config.limits.max_handshakes_per_ip,
            ),
            conns: PeerConnections::new(config.limits.max_connections_per_peer),
            peers: PeerTable::new(
                LaneModel::Streams {
                    ordinary: self.lanes,
                },
                &config.limits,
                tokio::runtime::Handle::current(),
                inbound.clone(),
            ),
            config,
            inbound,
            endpoint: endpoint.clone(),
            client,
            stopping: std::sync::atomic::AtomicBool::new(false),
            lanes: self.lanes,
        });
        self.shared
            .set(shared.clone())
            .map_err(|_| TransportError::AlreadyStarted)?;
        if listening {
            tokio::spawn(accept_loop(shared));
        }
        Ok(())
    }

    fn route(&self, peer: &str) -> Result<Arc<dyn Route>, TransportError> {
        let shared = self.shared.get().ok_or(TransportError::NotStarted)?;
        Ok(shared.peers.entry(shared, peer))
    }

    fn forget(&self, peer: &str) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        shared.peers.forget(peer);
    }

    async fn shutdown(&self) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        shared.stopping.store(true, Ordering::Release);
        let peers = shared.peers.all();
        // Goodbye goes behind a barrier over every lane: the peer takes it only after it has
        // taken everything queued before it, and then closes the connection. So a closed
        // connection means all of it was delivered (QUIC's own acknowledgements say only that
        // bytes arrived, and a close discards what the peer has not read yet).
        let mut waiting = Vec::new();
        for p in peers {
            if let Some(conn) = p.conn() {
                let bye = p.send(
                    &mut |out: &mut Vec<u8>| {
                        conc_wire::frame::encode_bare(out, conc_wire::frame::kind::GOODBYE);
                        Ok(())
                    },
                    FrameMeta {
                        after_all: true,
                        ..FrameMeta::default()
                    },
                );
                if bye.is_ok() {
                    waiting.push(conn.clone());
                } else {
                    conn.quic.close(VarInt::from_u32(CLOSE_GOODBYE), b"goodbye");
                }
            }
        }
        let bound = shared.config.limits.shutdown_timeout;
        let all_closed = futures_closed(&waiting);
        if tokio::time::timeout(bound, all_closed).await.is_err() {
            tracing::warn!(
                ?bound,
                "shutdown: peers did not take everything queued in time"
            );
        }
        for conn in waiting {
            let _ = conn.closed_because.set(DownReason::ShuttingDown);
            conn.quic.close(VarInt::from_u32(CLOSE_GOODBYE), b"goodbye");
        }
        shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_GOODBYE), b"goodbye");
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            shared.endpoint.wait_idle(),
        )
        .await;
    }
}

/// Resolves when every connection in `conns` is closed.
async fn futures_closed(conns: &[Arc<Conn>]) {
    for c in conns {
        c.quic.closed().await;
    }
}

fn handshake_config(config: &TransportConfig, binding: Vec<u8>) -> HandshakeConfig {
    let mut hc = HandshakeConfig::new(config.cookie.clone(), config.identity.clone());
    hc.channel_binding = binding;
    hc
}

fn exporter(conn: &quinn::Connection) -> Result<Vec<u8>, IoError> {
    let mut out = vec![0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| IoError::Io(std::io::Error::other("tls exporter unavailable")))?;
    Ok(out)
}

/// One dial.
async fn dial(shared: &Arc<Shared>, peer: &Arc<Peer>) -> Result<(), DialError> {
    let limits = &shared.config.limits;
    let addr = tokio::net::lookup_host(peer.name())
        .await?
        .next()
        .ok_or_else(|| IoError::Io(std::io::Error::other("no address for peer")))?;
    let server_name = conc_wire::tls::server_name(&shared.mode, peer.name())
        .map_err(|e| IoError::Io(std::io::Error::other(e.to_string())))?;
    let connecting = shared
        .endpoint
        .connect_with(shared.client.clone(), addr, &server_name.to_str())
        .map_err(|e| IoError::Io(std::io::Error::other(e.to_string())))?;
    let quic = tokio::time::timeout(limits.connect_timeout, connecting)
        .await
        .map_err(|_| IoError::Timeout(limits.connect_timeout))?
        .map_err(|e| match e {
            // The peer's handshake caps are full: alive but busy.
            quinn::ConnectionError::ConnectionClosed(close)
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                DialError::Busy(IoError::Closed)
            }
            // TLS and QUIC protocol failures (a certificate refused, no common ALPN…).
            quinn::ConnectionError::TransportError(te) => IoError::Tls(te.to_string()).into(),
            // Nobody answered within QUIC's own idle timeout: the connect timed out.
            quinn::ConnectionError::TimedOut => IoError::Timeout(limits.connect_timeout).into(),
            // Refused, reset or closed: the peer cannot be reached.
            other => IoError::Io(std::io::Error::other(other.to_string())).into(),
        })?;
    let binding = exporter(&quic)?;
    let (send, recv) = quic
        .open_bi()
        .await
        .map_err(|e| IoError::Io(std::io::Error::other(e.to_string())))?;
    let mut stream = tokio::io::join(recv, send);
    let mut reader = FrameReader::new(limits.max_frame);
    let hs = new_handshake(true, handshake_config(&shared.config, binding))?;
    let (who, caps) =
        match run_handshake_agreed(&mut stream, &mut reader, hs, limits.handshake_timeout)
            .await
            .and_then(|(who, caps)| check_name(&shared.mode, &quic, &who).map(|()| (who, caps)))
        {
            Ok(agreed) => agreed,
            Err(e) => {
                // If the server refused us, its reason is in the close frame (stream data is
                // discarded when a QUIC connection closes).
                let e = match quic.close_reason() {
                    Some(quinn::ConnectionError::ApplicationClosed(close)) => IoError::Refused(
                        String::from_utf8_lossy(&close.reason)
                            .chars()
                            .take(200)
                            .collect(),
                    ),
                    _ => e,
                };
                quic.close(VarInt::from_u32(CLOSE_PROTOCOL), &close_reason(&e));
                return Err(e.into());
            }
        };
    let _ = stream.shutdown().await;
    let pass = match shared.conns.admit(&who.name) {
        Ok(pass) => pass,
        Err(e) => {
            quic.close(VarInt::from_u32(CLOSE_TOO_MANY), &close_reason(&e));
            return Err(e.into());
        }
    };
    let peer = match shared.peers.proven_dialled(shared, peer, &who, caps) {
        Ok(peer) => peer,
        Err(e) => {
            let code = match e {
                IoError::TooManyPeers => CLOSE_TOO_MANY,
                _ => CLOSE_PROTOCOL,
            };
            quic.close(VarInt::from_u32(code), &close_reason(&e));
            return Err(e.into());
        }
    };
    let me = &shared.config.identity;
    establish(
        shared,
        &peer,
        quic,
        who,
        (me.name.clone(), me.incarnation),
        pass,
        caps,
    );
    Ok(())
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        if shared.stopping.load(Ordering::Acquire) {
            // Shutting down: no new peers while the old ones take what was queued.
            incoming.refuse();
            continue;
        }
        let s = shared.clone();
        let remote = incoming.remote_address();
        let span = tracing::debug_span!("quic-conn", %remote);
        tokio::spawn(
            async move {
                let Some(pass) = s.gate.enter(remote.ip()) else {
                    incoming.refuse();
                    s.inbound
                        .rejected(&remote.to_string(), "too many connections in handshake");
                    return;
                };
                let limits = &s.config.limits;
                let res = tokio::time::timeout(limits.handshake_timeout, async {
                    let quic = incoming.await.map_err(|e| IoError::Tls(e.to_string()))?;
                    let binding = exporter(&quic)?;
                    let (send, recv) = quic
                        .accept_bi()
                        .await
                        .map_err(|e| IoError::Io(std::io::Error::other(e.to_string())))?;
                    let mut stream = tokio::io::join(recv, send);
                    let mut reader = FrameReader::new(limits.max_frame);
                    let hs = new_handshake(false, handshake_config(&s.config, binding))?;
                    match run_handshake_agreed(
                        &mut stream,
                        &mut reader,
                        hs,
                        limits.handshake_timeout,
                    )
                    .await
                    .and_then(|(who, caps)| check_name(&s.mode, &quic, &who).map(|()| (who, caps)))
                    {
                        Ok((who, caps)) => {
                            let _ = stream.shutdown().await;
                            Ok((quic, who, caps))
                        }
                        Err(e) => {
                            quic.close(VarInt::from_u32(CLOSE_PROTOCOL), &close_reason(&e));
                            Err(e)
                        }
                    }
                })
                .await;
                drop(pass);
                match res {
                    Ok(Ok((quic, who, caps))) => match s
                        .conns
                        .admit(&who.name)
                        .and_then(|pass| Ok((pass, s.peers.proven_accepted(&s, &who, caps)?)))
                    {
                        Ok((pass, peer)) => {
                            let initiator = (who.name.clone(), who.incarnation);
                            establish(&s, &peer, quic, who, initiator, pass, caps);
                        }
                        Err(e) => {
                            quic.close(VarInt::from_u32(CLOSE_TOO_MANY), &close_reason(&e));
                            s.inbound.rejected(&remote.to_string(), &e.to_string());
                        }
                    },
                    Ok(Err(e)) => s.inbound.rejected(&remote.to_string(), &e.to_string()),
                    Err(_) => s
                        .inbound
                        .rejected(&remote.to_string(), "handshake timed out"),
                }
            }
            .instrument(span),
        );
    }
}

fn establish(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    quic: quinn::Connection,
    who: NodeIdentity,
    initiator: (String, u64),
    pass: PeerConnectionPass,
    caps: u64,
) {
    let conn = Arc::new(Conn {
        key: shared.peers.key(initiator, &who),
        quic,
        taken: LaneCounts::new(),
        closed_because: OnceLock::new(),
        handover: caps & HANDOVER != 0,
        retired: CancellationToken::new(),
        writers: AtomicUsize::new(0),
        opened: AtomicU32::new(0),
        writers_done: Notify::new(),
        peer_opened: OnceLock::new(),
        peer_ended: AtomicU32::new(0),
        drained: std::sync::atomic::AtomicBool::new(false),
    });
    // The connection holds its place under the per-peer cap until it is closed.
    let closing = conn.quic.clone();
    tokio::spawn(async move {
        closing.closed().await;
        drop(pass);
    });
    // What is queued now is what the new connection's lanes carry first: barriers count from
    // there.
    let keep_existing = match peer.establish(conn.key.clone(), conn.clone(), conn.handover) {
        Established::Duplicate => true,
        Established::Current { replaced, .. } => {
            if let Some(old) = replaced {
                retire(old, shared.config.limits.heartbeat_timeout);
            }
            false
        }
    };
    let span = tracing::debug_span!("quic-conn", peer = %who.name, id = conn.key.id);
    if keep_existing {
        // Simultaneous connect: this connection loses. Read what the peer already sent on it;
        // retire it (no writer ever ran on it).
        tracing::debug!("duplicate connection (simultaneous connect)");
        tokio::spawn(
            read_streams(shared.clone(), peer.clone(), conn.clone()).instrument(span.clone()),
        );
        tokio::spawn(watch(peer.clone(), conn.clone()).instrument(span));
        retire(conn, shared.config.limits.heartbeat_timeout);
        return;
    }
    let lanes = shared.model().lanes();
    conn.writers.store(lanes, Ordering::SeqCst);
    for i in 0..lanes {
        let big = i == shared.big_lane();
        tokio::spawn(write_lane(peer.clone(), conn.clone(), i, big).instrument(span.clone()));
    }
    tokio::spawn(read_streams(shared.clone(), peer.clone(), conn.clone()).instrument(span.clone()));
    tokio::spawn(watch(peer.clone(), conn).instrument(span));
}

/// The lane index of the stream that carries a `Retire` frame (not a lane of frames).
const RETIRE_LANE: u32 = u32::MAX;

/// Retires a connection that lost to another one. Without the handover, it is closed after a
/// grace period (what the peer already sent on it is read meanwhile). With it: its writers
/// finish their streams, then a stream of its own tells the peer how many lane streams there
/// were (`Retire`), and the connection is closed once the peer's side of it was read to its
/// end here (see `read_lane`) and a grace period passed, so the peer reads it to its end too.
///
/// A peer that does not retire its side within `bound` (the heartbeat timeout) gets the
/// connection closed: nothing waits on it longer.
fn retire(conn: Arc<Conn>, bound: std::time::Duration) {
    if !conn.handover {
        close_later(conn);
        return;
    }
    conn.retired.cancel();
    let late = conn.clone();
    tokio::spawn(async move {
        tokio::time::sleep(bound).await;
        if !late.drained.load(Ordering::SeqCst) {
            tracing::debug!("the peer did not retire its side in time; closing");
            late.quic
                .close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
        }
    });
    tokio::spawn(
        async move {
            loop {
                let done = conn.writers_done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if conn.writers.load(Ordering::SeqCst) == 0 {
                    break;
                }
                done.await;
            }
            let opened = conn.opened.load(Ordering::SeqCst);
            let mut bytes = Vec::new();
            if conc_wire::frame::encode_lane(&mut bytes, RETIRE_LANE).is_err()
                || conc_wire::frame::encode_retire(&mut bytes, opened).is_err()
            {
                return;
            }
            match conn.quic.open_uni().await {
                Ok(mut s) => {
                    if s.write_all(&bytes).await.is_ok() {
                        let _ = s.finish();
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot retire the connection"),
            }
        }
        .in_current_span(),
    );
}

/// How long a connection that lost a simultaneous connect (or was replaced) stays open so
/// that what was already sent on it is read.
const DUPLICATE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn close_later(conn: Arc<Conn>) {
    tokio::spawn(async move {
        tokio::time::sleep(DUPLICATE_GRACE).await;
        conn.quic
            .close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
    });
}

/// Drains one lane onto its stream, coalescing everything queued into one write.
async fn write_lane(peer: Arc<Peer>, conn: Arc<Conn>, lane_index: usize, big: bool) {
    /// Counts the writer out when it ends, however it ends.
    struct Running<'a>(&'a Conn);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.writers.fetch_sub(1, Ordering::SeqCst);
            self.0.writers_done.notify_waiters();
        }
    }
    let _running = Running(&conn);
    let mut stream: Option<quinn::SendStream> = None;
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        // Checked and taken under the session's lock, so that frames queued when another
        // connection replaces this one (and counted for it) are written on that one.
        // A large frame of the big lane comes in a buffer of its own (not copied), after `spare`.
        let mut large = None;
        match peer.take(conn.key.id, lane_index, &mut spare, false) {
            Take::Took => {}
            Take::TookLarge(frame) => large = Some(frame),
            Take::Empty => {
                tokio::select! {
                    _ = peer.data(lane_index).notified() => continue,
                    // Replaced: the next take says so.
                    _ = conn.retired.cancelled() => continue,
                    _ = conn.quic.closed() => return,
                }
            }
            // Replaced (a wake-up meant for the current connection's writer was passed on).
            _ => {
                if conn.handover
                    && let Some(s) = stream.as_mut()
                {
                    // The peer reads it to its end before it delivers from the winner.
                    let _ = s.finish();
                }
                return;
            }
        }
        if stream.is_none() {
            match conn.quic.open_uni().await {
                Ok(mut s) => {
                    // The big lane's stream yields to the others: QUIC sends the data of
                    // higher-priority streams first.
                    if big {
                        let _ = s.set_priority(-1);
                    }
                    conn.opened.fetch_add(1, Ordering::SeqCst);
                    // A stream starts by naming its lane, for the peer's barriers.
                    let mut hello = Vec::new();
                    let index = u32::try_from(lane_index).unwrap_or(u32::MAX);
                    if conc_wire::frame::encode_lane(&mut hello, index).is_err()
                        || s.write_all(&hello).await.is_err()
                    {
                        return;
                    }
                    stream = Some(s);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open stream");
                    return;
                }
            }
        }
        if let Some(s) = stream.as_mut() {
            let mut written = s.write_all(&spare).await;
            if let (Ok(()), Some(frame)) = (&written, &large) {
                written = s.write_all(frame).await;
            }
            if let Err(e) = written {
                tracing::debug!(error = %e, "stream write failed");
                return;
            }
        }
        spare.clear();
        if spare.capacity() > 4 << 20 {
            spare.shrink_to(64 * 1024);
        }
    }
}

/// Accepts the peer's lanes and reads frames from each.
async fn read_streams(shared: Arc<Shared>, peer: Arc<Peer>, conn: Arc<Conn>) {
    let mut count = 0usize;
    while let Ok(recv) = conn.quic.accept_uni().await {
        count += 1;
        if count > 64 {
            shared
                .inbound
                .rejected(&conn.key.peer.name, "too many streams");
            let _ = conn.closed_because.set(DownReason::ProtocolViolation);
            conn.quic
                .close(VarInt::from_u32(CLOSE_PROTOCOL), b"too many streams");
            return;
        }
        tokio::spawn(read_lane(shared.clone(), peer.clone(), conn.clone(), recv));
    }
}

async fn read_lane(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    conn: Arc<Conn>,
    mut recv: quinn::RecvStream,
) {
    let mut reader = FrameReader::new(shared.config.limits.max_frame);
    let violation = |why: &str| {
        let _ = conn.closed_because.set(DownReason::ProtocolViolation);
        shared.inbound.rejected(&conn.key.peer.name, why);
        let _ = conn.closed_because.set(DownReason::ProtocolViolation);
        conn.quic
            .close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol violation");
    };
    // The lane this stream carries: named by its first frame.
    let mut lane: Option<usize> = None;
    // The stream carries the peer's `Retire` instead (see `retire`).
    let mut control = false;
    loop {
        loop {
            let range = match reader.next_buffered() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    shared.inbound.rejected(&conn.key.peer.name, &e.to_string());
                    let _ = conn.closed_because.set(DownReason::ProtocolViolation);
                    conn.quic
                        .close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
                    return;
                }
            };
            let payload = reader.payload(range);
            let frame = Frame::decode(payload);
            let index = match (lane, &frame) {
                (None, Ok(Frame::Lane(i))) if (*i as usize) < MAX_LANES => {
                    lane = Some(*i as usize);
                    continue;
                }
                (None, Ok(Frame::Lane(RETIRE_LANE))) if conn.handover => {
                    control = true;
                    lane = Some(usize::MAX);
                    continue;
                }
                (None, _) => return violation("a stream that does not start with its lane"),
                (Some(_), Ok(Frame::Lane(_))) => return violation("a second lane frame"),
                (Some(i), _) => i,
            };
            if control {
                return match frame {
                    Ok(Frame::Retire(opened)) => {
                        if conn.peer_opened.set(opened).is_ok() && conn.check_drained() {
                            drained(shared, peer, conn).await;
                        }
                    }
                    _ => violation("a retire stream without its retire frame"),
                };
            }
            match frame {
                Ok(Frame::Retire(_)) => return violation("a retire frame on a lane"),
                Ok(Frame::Barrier(counts)) => {
                    // Hold this lane back until the other lanes caught up with what was sent
                    // before the barrier (bounded, so a stuck lane cannot stop this one).
                    let bound = shared.config.limits.heartbeat_timeout;
                    if !conn.taken.wait(&counts, bound).await {
                        tracing::warn!(?counts, "barrier not reached in time; going on");
                    }
                }
                Ok(Frame::Handshake(_)) => {
                    shared
                        .inbound
                        .rejected(&conn.key.peer.name, "handshake frame after the handshake");
                    let _ = conn.closed_because.set(DownReason::ProtocolViolation);
                    conn.quic
                        .close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol violation");
                    return;
                }
                Ok(Frame::Goodbye) => {
                    // Behind a barrier: everything the peer sent before it was taken. Closing
                    // tells the peer so.
                    let _ = conn.closed_because.set(DownReason::Goodbye);
                    conn.quic.close(VarInt::from_u32(CLOSE_GOODBYE), b"goodbye");
                    return;
                }
                Ok(Frame::Ping | Frame::Pong | Frame::Ack | Frame::Lane(_)) => {}
                Ok(frame) => {
                    peer.deliver(conn.key.id, &conn.key.peer, frame, payload)
                        .await
                }
                Err(e) => {
                    shared
                        .inbound
                        .rejected(&conn.key.peer.name, &format!("malformed frame: {e}"));
                    let _ = conn.closed_because.set(DownReason::ProtocolViolation);
                    conn.quic
                        .close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
                    return;
                }
            }
            // Taken (delivered, or refused): barriers on other lanes may go on.
            conn.taken.add(index);
        }
        match reader.fill(&mut recv).await {
            Ok(()) => {}
            Err(IoError::Closed) if !control => {
                // A lane the peer finished: with its `Retire`, the end of its side.
                conn.peer_ended.fetch_add(1, Ordering::SeqCst);
                if conn.check_drained() {
                    drained(shared, peer, conn).await;
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// The peer's side of a retired connection was read to its end: it no longer holds up the
/// connection that won (which may now be written on and delivered from), and it is closed
/// after a grace period (in which the peer reads this side's to its end). A connection the peer
/// retired while it is still the current one here waits for the one replacing it first.
async fn drained(shared: Arc<Shared>, peer: Arc<Peer>, conn: Arc<Conn>) {
    if peer.is_current(conn.key.id) {
        peer.wait_not_current(conn.key.id, shared.config.limits.heartbeat_timeout)
            .await;
    }
    if peer.lost(conn.key.id, &conn.key.peer, DownReason::ConnectionLost) {
        // Still the current one after the wait: given up on (reported down).
        let _ = conn.closed_because.set(DownReason::ConnectionLost);
    }
    close_later(conn);
}

/// Waits for the connection to end, then reports the peer down and drops what was queued.
async fn watch(peer: Arc<Peer>, conn: Arc<Conn>) {
    let err = conn.quic.closed().await;
    let reason = match &err {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_GOODBYE) =>
        {
            DownReason::Goodbye
        }
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_PROTOCOL) =>
        {
            DownReason::ProtocolViolation
        }
        quinn::ConnectionError::TimedOut => DownReason::Silent,
        quinn::ConnectionError::LocallyClosed => conn
            .closed_because
            .get()
            .copied()
            .unwrap_or(DownReason::ConnectionLost),
        _ => DownReason::ConnectionLost,
    };
    tracing::debug!(%reason, error = %err, "connection closed");
    peer.lost(conn.key.id, &conn.key.peer, reason);
}
