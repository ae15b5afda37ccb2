//! Pooled TCP: one long-lived, authenticated connection per pair of nodes, used in both
//! directions.
//!
//! Each peer has one outbound byte queue, bounded by `Limits::max_queue_bytes`. A send encodes
//! its frame straight into that queue (no allocation per message once the buffer has grown) and
//! fails with "peer busy", handing the message back, when the queue is full; `send_wait` waits
//! for room. One writer task per connection swaps the whole queue out and writes it with one
//! `write_all`, so frames queued while a write is in flight go out together. The reader decodes
//! every whole frame of each read. Frames for one peer leave in queue order on one connection,
//! so FIFO per (sender, receiver) pair holds.
//!
//! When both nodes connect to each other at once, both keep the connection initiated by the
//! node with the smaller (name, incarnation). The other is retired: its writer writes a
//! `Retire` frame and ends its side, and with `HANDOVER` agreed the pair's frames keep their
//! order across the switch (see `conc_wire::session::PeerSession`).
//!
//! A peer's queues and connection state are its `conc_wire::session::PeerEntry`, shared with
//! QUIC; this module dials, accepts, runs TLS and the cookie handshake, and reads and writes a
//! connection's one stream.
//!
//! Large frames do not hold up small ones: a frame whose payload exceeds
//! [`FRAGMENT_CHUNK`] (64 KiB) goes to a second queue, the big lane, and when the peer agreed
//! [`CAP_FRAGMENTS`] in the handshake the writer sends it in `Fragment` frames of
//! `FRAGMENT_CHUNK` bytes, one per write, each write first taking everything queued in the
//! small queue. So a small frame waits for at most one chunk, not a whole large frame. Order
//! stays as it was: while a lane (target process) has a frame in the big lane, its later frames
//! queue behind it there, and so does a frame that must not overtake anything
//! (`FrameMeta::after_all`). Both queues count against `Limits::max_queue_bytes`, and a frame
//! for the big lane is refused ("peer busy") once half of it is used, so a stream of large
//! messages leaves room for small ones (`send_wait` waits until under half); the receiver
//! reassembles one large frame at a time per connection, bounded by `Limits::max_frame`. A
//! peer without the capability gets large frames whole, after the small frames queued before.
//! On Linux every connection sets `TCP_NOTSENT_LOWAT` to two fragments, so the kernel's send
//! buffer holds at most that much not yet sent and a small frame does not queue behind
//! megabytes of fragments there.
//!
//! Idle connections send a ping every `heartbeat_interval`; a peer silent for
//! `heartbeat_timeout` is declared down; after the node's goodbye, the reader waits for the peer
//! to close its side for `Liveness::GOODBYE_GRACE` at most. These rules live in the sans-IO
//! `conc_wire::liveness::Liveness` (one per connection, shared by its reader and writer), tested
//! on a simulated clock. When a connection ends, the frames still queued for it
//! are dropped and reported as undeliverable; the next send reconnects.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_trait::async_trait;
use conc_wire::frame::{FRAGMENT_CHUNK, Frame, Reassembly, encode_bare, encode_retire, kind};
use conc_wire::handshake::{CAP_FRAGMENTS, HANDOVER, HandshakeConfig, NodeIdentity};
use conc_wire::io::{
    FrameReader, HandshakeGate, IoError, PeerConnectionPass, PeerConnections, new_handshake,
    run_handshake_agreed,
};
use conc_wire::liveness::{Expired, Liveness};
use conc_wire::session::{
    ConnKey, Connector, DialError, Established, LaneModel, PeerEntry, PeerTable, Take,
};
use conc_wire::transport::Target;
use conc_wire::{
    DownReason, FrameMeta, Inbound, Route, Transport, TransportConfig, TransportError,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::accept::{ListenerSlot, accept_loop};
use crate::busy::{Watched, refused_by_caps};

/// The pooled TCP transport (see the module docs). Create it with [`crate::Tcp::pooled`].
#[derive(Default)]
pub struct PooledTcp {
    shared: OnceLock<Arc<Shared>>,
    listener: ListenerSlot,
    #[cfg(feature = "tls")]
    tls_mode: Option<conc_wire::tls::TlsMode>,
}

#[cfg(feature = "tls")]
impl PooledTcp {
    /// Carry every connection over TLS 1.3 (rustls). With [`conc_wire::tls::TlsMode::SelfSigned`]
    /// each node makes a self-signed certificate and the cookie handshake, bound to the TLS
    /// session with the TLS exporter, authenticates peers; with
    /// [`conc_wire::tls::TlsMode::Mutual`] peers must also present a certificate from the
    /// operator's CA naming their node.
    pub fn with_tls(mut self, mode: conc_wire::tls::TlsMode) -> Self {
        self.tls_mode = Some(mode);
        self
    }
}

/// TLS state built at start.
#[cfg(feature = "tls")]
struct Tls {
    mode: conc_wire::tls::TlsMode,
    connector: tokio_rustls::TlsConnector,
    acceptor: tokio_rustls::TlsAcceptor,
}

#[cfg(feature = "tls")]
fn tls_err(e: impl std::fmt::Display) -> IoError {
    IoError::Tls(e.to_string())
}

impl std::fmt::Debug for PooledTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledTcp").finish_non_exhaustive()
    }
}

struct Shared {
    #[cfg(feature = "tls")]
    tls: Option<Tls>,
    config: TransportConfig,
    inbound: Arc<dyn Inbound>,
    peers: PeerTable<Shared>,
    stop: CancellationToken,
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    gate: HandshakeGate,
    /// Authenticated connections per peer, capped.
    conns: PeerConnections,
    /// The connections' writers, awaited (bounded) at shutdown so what was queued goes out.
    writers: tokio_util::task::TaskTracker,
}

/// How long a connection that lost a simultaneous connect (or was replaced) stays open for
/// reading before it is closed.
const DUPLICATE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Now, on tokio's clock (so a test with paused time controls it).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One established connection.
struct Conn {
    /// Its id, who opened it and the identity the peer proved on it.
    key: ConnKey,
    /// Both sides agreed [`CAP_FRAGMENTS`]: large frames go out in pieces.
    fragments: bool,
    /// Both sides agreed [`HANDOVER`]: a connection that loses is retired with a `Retire`
    /// frame and the pair's frames are handed over in order (`conc_wire::session`).
    handover: bool,
    /// Wakes the writer when another connection replaced this one.
    retire: Notify,
    closed: Notify,
    /// The node is shutting down: write what is queued, say goodbye, close.
    goodbye: Notify,
    /// The writer said goodbye: the reader's deadline is now the goodbye's grace.
    said_goodbye: Notify,
    /// Heartbeats and the silence bound (sans-IO, shared by the reader and the writer).
    liveness: Mutex<Liveness>,
}

/// Everything about one peer (its session: connection, queues, backoff), shared with QUIC.
type Peer = PeerEntry<Shared>;

#[async_trait]
impl Connector for Shared {
    type Conn = Arc<Conn>;

    /// Dials `peer` once and authenticates the connection. A connection closed or reset
    /// before the peer sent a byte was refused by its handshake caps (see `crate::busy`): the
    /// peer is busy, and the session dials again.
    async fn dial(self: Arc<Self>, peer: Arc<Peer>) -> Result<(), DialError> {
        let (res, read_any) = dial(&self, &peer).await;
        res.map_err(|e| {
            if refused_by_caps(&e, read_any) {
                DialError::Busy(e)
            } else {
                DialError::Failed(e)
            }
        })
    }

    fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }
}

impl PooledTcp {
    fn shared(&self) -> Result<&Arc<Shared>, TransportError> {
        self.shared.get().ok_or(TransportError::NotStarted)
    }
}

#[async_trait]
impl Transport for PooledTcp {
    fn name(&self) -> &'static str {
        #[cfg(feature = "tls")]
        if self.tls_mode.is_some() {
            return "pooled-tcp-tls";
        }
        "pooled-tcp"
    }

    async fn bind(&self, listen: &str) -> Result<SocketAddr, TransportError> {
        self.listener.bind(listen).await
    }

    async fn start(
        &self,
        config: TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Result<(), TransportError> {
        let listener = self.listener.take();
        #[cfg(feature = "tls")]
        let tls = match &self.tls_mode {
            Some(mode) => {
                let client = conc_wire::tls::client_config(mode, &[b"conc/1"])
                    .map_err(|e| TransportError::Config(e.to_string()))?;
                let server =
                    conc_wire::tls::server_config(mode, &config.identity.name, &[b"conc/1"])
                        .map_err(|e| TransportError::Config(e.to_string()))?;
                Some(Tls {
                    mode: mode.clone(),
                    connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
                    acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
                })
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            #[cfg(feature = "tls")]
            tls,
            gate: HandshakeGate::new(
                config.limits.max_handshakes,
                config.limits.max_handshakes_per_ip,
            ),
            conns: PeerConnections::new(config.limits.max_connections_per_peer),
            peers: PeerTable::new(
                LaneModel::Fragments,
                &config.limits,
                tokio::runtime::Handle::current(),
                inbound.clone(),
            ),
            config,
            inbound,
            stop: CancellationToken::new(),
            accept_task: Mutex::new(None),
            writers: tokio_util::task::TaskTracker::new(),
        });
        self.shared
            .set(shared.clone())
            .map_err(|_| TransportError::AlreadyStarted)?;
        if let Some(listener) = listener {
            let s = shared.clone();
            let task = tokio::spawn(accept_loop(
                listener,
                shared.stop.clone(),
                move |stream, remote| {
                    limit_unsent(&stream);
                    let s = s.clone();
                    let span = tracing::debug_span!("conn", %remote, mode = "pooled");
                    tokio::spawn(async move { accept(s, stream, remote).await }.instrument(span));
                },
            ));
            *shared.accept_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        Ok(())
    }

    fn route(&self, peer: &str) -> Result<Arc<dyn Route>, TransportError> {
        let shared = self.shared()?;
        Ok(shared.peers.entry(shared, peer))
    }

    fn forget(&self, peer: &str) {
        let Ok(shared) = self.shared() else {
            return;
        };
        // Only if nothing holds the entry: no route, no connection task, no connect.
        shared.peers.forget(peer);
    }

    async fn shutdown(&self) {
        let Ok(shared) = self.shared() else {
            return;
        };
        shared.stop.cancel();
        let task = shared
            .accept_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let peers = shared.peers.all();
        for p in peers {
            if let Some(conn) = p.conn() {
                // The writer sends Goodbye after what is queued, then closes.
                conn.goodbye.notify_one();
            }
        }
        // Bounded: a peer that reads nothing cannot hold the shutdown up.
        shared.writers.close();
        let bound = shared.config.limits.shutdown_timeout;
        if tokio::time::timeout(bound, shared.writers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?bound,
                "shutdown: not everything queued was written in time"
            );
        }
    }
}

fn handshake_config(config: &TransportConfig, binding: Vec<u8>) -> HandshakeConfig {
    let mut hc = HandshakeConfig::new(config.cookie.clone(), config.identity.clone());
    hc.channel_binding = binding;
    hc
}

/// The most bytes a connection leaves unsent in the kernel's send buffer
/// (`TCP_NOTSENT_LOWAT`): two fragments.
const UNSENT_LOWAT: u32 = 2 * FRAGMENT_CHUNK as u32;

/// Keeps the kernel from taking more than [`UNSENT_LOWAT`] bytes the peer has not been sent
/// yet: the socket is writable again only below that. Without it the kernel's send buffer
/// (megabytes, grown by autotuning) fills with fragments of a large frame while the receiver
/// is busy, and a small frame written after them waits behind all of them, whatever order the
/// writer chose; with it the writer holds the rest of the large frame, and a small frame waits
/// for at most two fragments in the kernel. Linux only (elsewhere the option is left alone); a
/// failure only costs that bound, so it is logged, not fatal.
fn limit_unsent(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_LOWAT) {
        tracing::debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

/// Any byte stream a pooled connection can run on (plain TCP or TLS over TCP).
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for S {}

/// One dial: the result, and whether anything was read from the peer.
async fn dial(shared: &Arc<Shared>, peer: &Arc<Peer>) -> (Result<(), IoError>, bool) {
    let limits = &shared.config.limits;
    let tcp =
        match tokio::time::timeout(limits.connect_timeout, TcpStream::connect(peer.name())).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return (Err(e.into()), false),
            Err(_) => return (Err(IoError::Timeout(limits.connect_timeout)), false),
        };
    if let Err(e) = tcp.set_nodelay(true) {
        return (Err(e.into()), false);
    }
    limit_unsent(&tcp);
    let (tcp, read_any) = Watched::new(tcp);
    let res = authenticate_dialled(shared, peer, tcp).await;
    (res, read_any.load(Ordering::Acquire))
}

/// The TLS handshake (with the `tls` feature, when configured) and the cookie handshake on a
/// dialled connection, then the connection is established.
async fn authenticate_dialled(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    tcp: Watched<TcpStream>,
) -> Result<(), IoError> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.tls {
        let limits = &shared.config.limits;
        let name = conc_wire::tls::server_name(&tls.mode, peer.name()).map_err(tls_err)?;
        let stream =
            tokio::time::timeout(limits.handshake_timeout, tls.connector.connect(name, tcp))
                .await
                .map_err(|_| IoError::Timeout(limits.handshake_timeout))??;
        let (_, conn) = stream.get_ref();
        let binding = conn
            .export_keying_material(vec![0u8; 32], conc_wire::tls::EXPORTER_LABEL, None)
            .map_err(tls_err)?;
        let cert = conn.peer_certificates().and_then(|c| c.first()).cloned();
        return authenticate_out(shared, peer, stream, binding, |who| {
            conc_wire::tls::check_peer_name(&tls.mode, cert.as_ref(), &who.name).map_err(tls_err)
        })
        .await;
    }
    authenticate_out(shared, peer, tcp, Vec::new(), |_| Ok(())).await
}

/// Runs the cookie handshake on `stream` (as the client if `client`) and the caller's check of
/// the proven identity (the certificate's name, with mutual TLS); returns the identity and the
/// reader holding whatever the peer sent after it.
async fn authenticate<S: Stream>(
    shared: &Shared,
    stream: &mut S,
    client: bool,
    binding: Vec<u8>,
    check: impl FnOnce(&NodeIdentity) -> Result<(), IoError>,
) -> Result<(NodeIdentity, FrameReader, u64), IoError> {
    let limits = &shared.config.limits;
    let mut reader = FrameReader::new(limits.max_frame);
    let hs = new_handshake(client, handshake_config(&shared.config, binding))?;
    let (who, caps) =
        run_handshake_agreed(stream, &mut reader, hs, limits.handshake_timeout).await?;
    check(&who)?;
    Ok((who, reader, caps))
}

async fn authenticate_out<S: Stream>(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    mut stream: S,
    binding: Vec<u8>,
    check: impl FnOnce(&NodeIdentity) -> Result<(), IoError>,
) -> Result<(), IoError> {
    let (who, reader, caps) = authenticate(shared, &mut stream, true, binding, check).await?;
    let pass = shared.conns.admit(&who.name)?;
    let peer = shared.peers.proven_dialled(shared, peer, &who, caps)?;
    let me = &shared.config.identity;
    establish(
        shared,
        &peer,
        (stream, reader),
        who,
        (me.name.clone(), me.incarnation),
        pass,
        caps,
    );
    Ok(())
}

async fn accept(shared: Arc<Shared>, tcp: TcpStream, remote: SocketAddr) {
    let Some(pass) = shared.gate.enter(remote.ip()) else {
        shared
            .inbound
            .rejected(&remote.to_string(), "too many connections in handshake");
        return;
    };
    let res = {
        #[cfg(feature = "tls")]
        {
            match &shared.tls {
                Some(tls) => accept_tls(&shared, tls, tcp).await,
                None => authenticate_in(&shared, tcp, Vec::new(), |_| Ok(())).await,
            }
        }
        #[cfg(not(feature = "tls"))]
        {
            authenticate_in(&shared, tcp, Vec::new(), |_| Ok(())).await
        }
    };
    drop(pass);
    if let Err(e) = res {
        shared.inbound.rejected(&remote.to_string(), &e.to_string());
    }
}

#[cfg(feature = "tls")]
async fn accept_tls(shared: &Arc<Shared>, tls: &Tls, tcp: TcpStream) -> Result<(), IoError> {
    let limits = &shared.config.limits;
    let stream = tokio::time::timeout(limits.handshake_timeout, tls.acceptor.accept(tcp))
        .await
        .map_err(|_| IoError::Timeout(limits.handshake_timeout))?
        .map_err(tls_err)?;
    let (_, conn) = stream.get_ref();
    let binding = conn
        .export_keying_material(vec![0u8; 32], conc_wire::tls::EXPORTER_LABEL, None)
        .map_err(tls_err)?;
    let cert = conn.peer_certificates().and_then(|c| c.first()).cloned();
    authenticate_in(shared, stream, binding, |who| {
        conc_wire::tls::check_peer_name(&tls.mode, cert.as_ref(), &who.name).map_err(tls_err)
    })
    .await
}

async fn authenticate_in<S: Stream>(
    shared: &Arc<Shared>,
    mut stream: S,
    binding: Vec<u8>,
    check: impl FnOnce(&NodeIdentity) -> Result<(), IoError>,
) -> Result<(), IoError> {
    let (who, reader, caps) = authenticate(shared, &mut stream, false, binding, check).await?;
    // Checked before the peer gets an entry, so a refused connection leaves nothing behind.
    let pass = shared.conns.admit(&who.name)?;
    let peer = shared.peers.proven_accepted(shared, &who, caps)?;
    let initiator = (who.name.clone(), who.incarnation);
    establish(shared, &peer, (stream, reader), who, initiator, pass, caps);
    Ok(())
}

/// Makes an authenticated stream the peer's connection (unless the peer already has the
/// preferred one) and starts its reader and writer.
fn establish<S: Stream>(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    (stream, reader): (S, FrameReader),
    who: NodeIdentity,
    initiator: (String, u64),
    pass: PeerConnectionPass,
    caps: u64,
) {
    let conn = Arc::new(Conn {
        key: shared.peers.key(initiator, &who),
        fragments: caps & CAP_FRAGMENTS != 0,
        handover: caps & HANDOVER != 0,
        retire: Notify::new(),
        closed: Notify::new(),
        goodbye: Notify::new(),
        said_goodbye: Notify::new(),
        liveness: Mutex::new(Liveness::new(
            now(),
            shared.config.limits.heartbeat_interval,
            shared.config.limits.heartbeat_timeout,
        )),
    });
    // A connection that loses (a duplicate, or the one this one replaces) is read until the
    // peer, which makes the same choice, stops writing on it; its writer finds it is not the
    // current one and retires it (see `write_loop`).
    if let Established::Current {
        replaced: Some(old),
        ..
    } = peer.establish(conn.key.clone(), conn.clone(), conn.handover)
    {
        old.retire.notify_one();
    }
    let (read_half, write_half) = tokio::io::split(stream);
    let span = tracing::debug_span!("conn", peer = %who.name, id = conn.key.id);
    tokio::spawn(
        read_loop(
            shared.clone(),
            peer.clone(),
            conn.clone(),
            read_half,
            reader,
            pass,
        )
        .instrument(span.clone()),
    );
    shared
        .writers
        .spawn(write_loop(shared.clone(), peer.clone(), conn, write_half).instrument(span));
}

/// Drains the peer's queue onto the connection, coalescing everything queued into one write;
/// pings when idle; says goodbye on close.
async fn write_loop<S: Stream>(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    conn: Arc<Conn>,
    mut w: tokio::io::WriteHalf<S>,
) {
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut closing = false;
    loop {
        // Everything small, then one piece of the big lane: a small frame waits for at most one
        // chunk of a large one.
        let took = match peer.take(conn.key.id, 0, &mut spare, conn.fragments) {
            Take::Took => true,
            // Only a transport with a stream for large frames gets one whole (not this one).
            Take::TookLarge(frame) => {
                spare.extend_from_slice(&frame);
                true
            }
            Take::Empty => false,
            // Replaced by (or lost to) another connection (a wake-up meant for the current
            // connection's writer that reached this one was passed on).
            _ if conn.handover => {
                // Retired: say so and end the stream (what was written before is still read
                // by the peer, and the peer reads this connection to its end before it
                // delivers from the one that won).
                let mut retire = Vec::new();
                if encode_retire(&mut retire, 0).is_ok() {
                    let _ = w.write_all(&retire).await;
                }
                let _ = w.shutdown().await;
                return;
            }
            _ => {
                // A peer without the handover: end the stream after a grace period, so what
                // is in flight is read.
                tokio::select! {
                    _ = tokio::time::sleep(DUPLICATE_GRACE) => {}
                    _ = shared.stop.cancelled() => {}
                }
                let _ = w.shutdown().await;
                return;
            }
        };
        if took {
            if let Err(e) = w.write_all(&spare).await {
                tracing::debug!(error = %e, "write failed");
                break;
            }
            lock(&conn.liveness).on_write(now());
            spare.clear();
            if spare.capacity() > 4 << 20 {
                spare.shrink_to(64 * 1024);
            }
            continue;
        }
        if closing {
            let mut bye = Vec::new();
            encode_bare(&mut bye, kind::GOODBYE);
            let _ = w.write_all(&bye).await;
            let _ = w.shutdown().await;
            // The reader goes on until the peer, having read the goodbye, closes its side:
            // closing both sides now could reset the connection under frames the peer is still
            // sending, and a reset discards the goodbye before the peer reads it. It waits for
            // that the goodbye's grace at most (`Liveness`).
            lock(&conn.liveness).on_goodbye(now());
            conn.said_goodbye.notify_one();
            return;
        }
        tokio::select! {
            _ = peer.data(0).notified() => {}
            // Replaced: the next take says so.
            _ = conn.retire.notified() => {}
            _ = conn.goodbye.notified() => { closing = true; }
            _ = conn.closed.notified() => {
                // The reader ended the connection.
                conn.closed.notify_one();
                break;
            }
            _ = tokio::time::sleep_until(lock(&conn.liveness).ping_at().into()) => {
                let mut ping = Vec::new();
                encode_bare(&mut ping, kind::PING);
                if w.write_all(&ping).await.is_err() {
                    break;
                }
                lock(&conn.liveness).on_write(now());
            }
        }
    }
    conn.closed.notify_one();
}

/// The target process of a `Send` frame (`None` for every other kind).
fn send_target(frame: &Frame<'_>) -> Option<Target> {
    match frame {
        Frame::Send { target, .. } => Some(target.clone()),
        _ => None,
    }
}

/// Delivery of reassembled (large) frames off the connection's reader, in order: decoding a
/// large body takes long (a `Vec<u8>` is decoded element by element), and the small frames
/// read meanwhile must not wait for it. A frame read after a large one goes through here too
/// (behind it) unless it is a message for another process. What waits here is bounded by
/// twice the frame limit (a byte semaphore), beside the one frame being reassembled.
struct Later {
    tx: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>,
    room: Arc<tokio::sync::Semaphore>,
    /// One entry per frame waiting here: the target of a `Send`, `None` for other kinds.
    waiting: Arc<Mutex<VecDeque<Option<Target>>>>,
}

impl Later {
    fn start(shared: &Arc<Shared>, peer: &Arc<Peer>, conn: &Arc<Conn>) -> Later {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>();
        let bytes = shared.config.limits.max_frame.saturating_mul(2);
        let room = Arc::new(tokio::sync::Semaphore::new(
            bytes.min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let waiting: Arc<Mutex<VecDeque<Option<Target>>>> = Arc::default();
        let (peer, from, w, id) = (
            peer.clone(),
            conn.key.peer.clone(),
            waiting.clone(),
            conn.key.id,
        );
        tokio::spawn(
            async move {
                while let Some((whole, permit)) = rx.recv().await {
                    // Decoded once already by the reader: it is well formed.
                    if let Ok(frame) = Frame::decode(&whole) {
                        peer.deliver(id, &from, frame, &whole).await;
                    }
                    lock(&w).pop_front();
                    drop(permit);
                }
            }
            .in_current_span(),
        );
        Later { tx, room, waiting }
    }

    /// Whether `frame` must wait behind the frames queued here.
    fn must_wait(&self, frame: &Frame<'_>) -> bool {
        let waiting = lock(&self.waiting);
        if waiting.is_empty() {
            return false;
        }
        match frame {
            Frame::Send { target, .. } => waiting
                .iter()
                .any(|t| t.as_ref().is_none_or(|t| t == target)),
            _ => true,
        }
    }

    /// Queues a frame's payload for delivery, waiting for room first (which holds back the
    /// reader, so backpressure reaches the sender).
    async fn queue(&self, payload: Vec<u8>, target: Option<Target>) {
        let n = u32::try_from(payload.len().max(1)).unwrap_or(u32::MAX);
        let Ok(permit) = self.room.clone().acquire_many_owned(n).await else {
            return;
        };
        lock(&self.waiting).push_back(target);
        if self.tx.send((payload, permit)).is_err() {
            lock(&self.waiting).pop_back();
        }
    }
}

/// Reads frames and hands them to the node until the connection ends or the peer goes silent.
async fn read_loop<S: Stream>(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    conn: Arc<Conn>,
    mut r: ReadHalf<S>,
    mut reader: FrameReader,
    // Held while the connection is read: its place under the per-peer cap.
    _pass: PeerConnectionPass,
) {
    let mut pieces = Reassembly::new(shared.config.limits.max_frame);
    let mut later: Option<Later> = None;
    // The peer retired this connection (it lost a simultaneous connect).
    let mut retired = false;
    let reason: DownReason = 'outer: loop {
        loop {
            let range = match reader.next_buffered() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    shared.inbound.rejected(&conn.key.peer.name, &e.to_string());
                    break 'outer DownReason::ProtocolViolation;
                }
            };
            let payload = reader.payload(range);
            match Frame::decode(payload) {
                Ok(Frame::Ping) => {
                    let _ = peer.send(
                        &mut |out: &mut Vec<u8>| {
                            encode_bare(out, kind::PONG);
                            Ok(())
                        },
                        FrameMeta::default(),
                    );
                }
                Ok(Frame::Pong) => {}
                Ok(Frame::Retire(_)) if conn.handover => retired = true,
                Ok(Frame::Goodbye) => break 'outer DownReason::Goodbye,
                Ok(Frame::Handshake(_)) => {
                    shared
                        .inbound
                        .rejected(&conn.key.peer.name, "handshake frame after the handshake");
                    break 'outer DownReason::ProtocolViolation;
                }
                Ok(Frame::Fragment { last, chunk }) => {
                    if !conn.fragments {
                        shared
                            .inbound
                            .rejected(&conn.key.peer.name, "fragment without the capability");
                        break 'outer DownReason::ProtocolViolation;
                    }
                    let whole = match pieces.push(last, chunk) {
                        Ok(Some(whole)) => whole,
                        Ok(None) => continue,
                        Err(e) => {
                            shared
                                .inbound
                                .rejected(&conn.key.peer.name, &format!("fragmented frame: {e}"));
                            break 'outer DownReason::ProtocolViolation;
                        }
                    };
                    let frame = match Frame::decode(&whole) {
                        Ok(f @ (Frame::Ping | Frame::Pong | Frame::Goodbye))
                        | Ok(f @ Frame::Ack) => {
                            shared.inbound.rejected(
                                &conn.key.peer.name,
                                &format!("fragmented {} frame", f.kind_name()),
                            );
                            break 'outer DownReason::ProtocolViolation;
                        }
                        Ok(f) => f,
                        Err(e) => {
                            shared
                                .inbound
                                .rejected(&conn.key.peer.name, &format!("malformed frame: {e}"));
                            break 'outer DownReason::ProtocolViolation;
                        }
                    };
                    // Delivered (and its body decoded) by a task of its own, so the frames
                    // behind it are read meanwhile.
                    let target = send_target(&frame);
                    drop(frame);
                    let later = later.get_or_insert_with(|| Later::start(&shared, &peer, &conn));
                    later.queue(whole, target).await;
                }
                Ok(frame) => {
                    // Behind a large frame still being delivered, unless it is a message for
                    // another process (FIFO holds per pair of processes, not across them).
                    if let Some(l) = later.as_ref()
                        && l.must_wait(&frame)
                    {
                        let target = send_target(&frame);
                        drop(frame);
                        l.queue(payload.to_vec(), target).await;
                        continue;
                    }
                    peer.deliver(conn.key.id, &conn.key.peer, frame, payload)
                        .await;
                }
                Err(e) => {
                    shared
                        .inbound
                        .rejected(&conn.key.peer.name, &format!("malformed frame: {e}"));
                    break 'outer DownReason::ProtocolViolation;
                }
            }
        }
        let deadline = lock(&conn.liveness).read_deadline();
        tokio::select! {
            // Bytes that are there win over the silence timer (a task that was not polled for
            // a while finds both ready).
            biased;
            res = reader.fill(&mut r) => match res {
                Ok(()) => lock(&conn.liveness).on_read(now()),
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    if retired && !shared.stop.is_cancelled() {
                        // Retired by the peer while still the current connection here: the
                        // connection that replaces it is on its way; it ends this one.
                        let bound = shared.config.limits.heartbeat_timeout;
                        peer.wait_not_current(conn.key.id, bound).await;
                    }
                    break if shared.stop.is_cancelled() {
                        DownReason::ShuttingDown
                    } else {
                        DownReason::ConnectionLost
                    };
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                match lock(&conn.liveness).expired(now()) {
                    Some(Expired::GoodbyeUnanswered) => break DownReason::ShuttingDown,
                    Some(_) => break DownReason::Silent,
                    // Read meanwhile: a new deadline.
                    None => {}
                }
            }
            // The goodbye was said: the deadline is now its grace.
            _ = conn.said_goodbye.notified() => {}
            _ = conn.closed.notified() => {
                conn.closed.notify_one();
                break if shared.stop.is_cancelled() {
                    DownReason::ShuttingDown
                } else {
                    DownReason::ConnectionLost
                };
            }
        }
    };
    conn.closed.notify_one();
    peer.lost(conn.key.id, &conn.key.peer, reason);
}
