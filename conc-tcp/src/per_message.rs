//! Per-message TCP, as in the seed: every frame travels on a connection of its own.
//!
//! For each frame the sender connects, runs the cookie handshake, writes the frame in one
//! write, and reads the receiver's answer (an `Ack`, or an `Error` frame if the frame could not
//! be delivered). The receiver writes its answer and closes first, so the TIME_WAIT state lands
//! on the listening side and a busy sender does not run out of ephemeral ports. Frames to one
//! peer go one after another through a bounded queue, so FIFO per (sender, receiver) holds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use conc_wire::frame::{Frame, LEN_PREFIX, encode_bare, kind};
use conc_wire::handshake::{HandshakeConfig, NodeIdentity};
use conc_wire::io::{
    FrameReader, HandshakeGate, IoError, PeerConnections, hand_over, new_handshake,
    run_handshake_agreed,
};
use conc_wire::{
    BoxFuture, EncodeFn, FrameMeta, Inbound, Proven, Route, RouteError, Transport, TransportConfig,
    TransportError,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::accept::{ListenerSlot, accept_loop};
use crate::busy::{Watched, refused_by_caps};
use conc_wire::session::BusyRetry;

/// The per-message TCP transport (see the module docs). Create it with
/// [`crate::Tcp::per_message`].
#[derive(Default)]
pub struct PerMessageTcp {
    shared: OnceLock<Arc<Shared>>,
    listener: ListenerSlot,
}

impl std::fmt::Debug for PerMessageTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerMessageTcp").finish_non_exhaustive()
    }
}

struct Shared {
    /// The runtime the transport was started on: sends may come from threads outside it.
    handle: tokio::runtime::Handle,
    config: TransportConfig,
    inbound: Arc<dyn Inbound>,
    links: Mutex<HashMap<String, Arc<PeerQueue>>>,
    stop: CancellationToken,
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    gate: HandshakeGate,
    /// Authenticated connections per peer, capped.
    conns: PeerConnections,
}

struct Outgoing {
    bytes: Vec<u8>,
    meta: FrameMeta,
}

/// The queue of frames for one peer, drained by one worker task.
struct PeerQueue {
    peer: String,
    tx: mpsc::Sender<Outgoing>,
    max_frame: usize,
}

impl Route for PeerQueue {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn queued(&self) -> (usize, usize) {
        (0, self.tx.max_capacity() - self.tx.capacity())
    }

    fn send(&self, encode: EncodeFn<'_>, meta: FrameMeta) -> Result<(), RouteError> {
        let permit = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => RouteError::Busy,
            mpsc::error::TrySendError::Closed(()) => RouteError::Shutdown,
        })?;
        let mut bytes = Vec::with_capacity(64);
        encode(&mut bytes)?;
        if bytes.len() > self.max_frame + conc_wire::frame::LEN_PREFIX {
            return Err(RouteError::Frame(conc_wire::FrameError::TooLarge {
                len: bytes.len(),
                max: self.max_frame,
            }));
        }
        permit.send(Outgoing { bytes, meta });
        Ok(())
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.tx.reserve().await;
        })
    }
}

/// Collects the answer to a frame that arrived on a per-message connection.
struct Answer {
    peer: String,
    out: Mutex<Vec<u8>>,
}

impl Route for Answer {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn send(&self, encode: EncodeFn<'_>, _meta: FrameMeta) -> Result<(), RouteError> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        encode(&mut out).map_err(RouteError::from)
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl PerMessageTcp {
    fn shared(&self) -> Result<&Arc<Shared>, TransportError> {
        self.shared.get().ok_or(TransportError::NotStarted)
    }
}

#[async_trait]
impl Transport for PerMessageTcp {
    fn name(&self) -> &'static str {
        "per-message-tcp"
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
        let shared = Arc::new(Shared {
            handle: tokio::runtime::Handle::current(),
            gate: HandshakeGate::new(
                config.limits.max_handshakes,
                config.limits.max_handshakes_per_ip,
            ),
            conns: PeerConnections::new(config.limits.max_connections_per_peer),
            config,
            inbound,
            links: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            accept_task: Mutex::new(None),
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
                    let s = s.clone();
                    let span = tracing::debug_span!("conn", %remote, mode = "per-message");
                    tokio::spawn(
                        async move { serve_one(s, stream, remote).await }.instrument(span),
                    );
                },
            ));
            *shared.accept_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        Ok(())
    }

    fn needs_probes(&self) -> bool {
        true
    }

    fn route(&self, peer: &str) -> Result<Arc<dyn Route>, TransportError> {
        let shared = self.shared()?;
        let mut links = shared.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = links.get(peer) {
            return Ok(l.clone());
        }
        let (tx, rx) = mpsc::channel(shared.config.limits.max_queue_frames.max(1));
        let q = Arc::new(PeerQueue {
            peer: peer.to_string(),
            tx,
            max_frame: shared.config.limits.max_frame,
        });
        links.insert(peer.to_string(), q.clone());
        let span = tracing::debug_span!("peer", peer, mode = "per-message");
        shared
            .handle
            .spawn(worker(shared.clone(), peer.to_string(), rx).instrument(span));
        Ok(q)
    }

    fn forget(&self, peer: &str) {
        let Ok(shared) = self.shared() else {
            return;
        };
        let mut links = shared.links.lock().unwrap_or_else(|p| p.into_inner());
        let idle = links
            .get(peer)
            .is_some_and(|q| Arc::strong_count(q) == 1 && q.tx.capacity() == q.tx.max_capacity());
        if idle {
            // Dropping the queue's sender ends its worker.
            links.remove(peer);
        }
    }

    async fn shutdown(&self) {
        if let Ok(shared) = self.shared() {
            shared.stop.cancel();
            let task = shared
                .accept_task
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(task) = task {
                let _ = task.await;
            }
            shared
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }
}

/// Sends the queued frames for one peer, one connection each, in order.
async fn worker(shared: Arc<Shared>, peer: String, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        if let Err(e) = deliver(&shared, &peer, &out.bytes, out.meta).await {
            tracing::debug!(error = %e, "per-message delivery failed");
            let refs: Vec<u64> = out.meta.call_ref.into_iter().collect();
            shared
                .inbound
                .undeliverable(&peer, 1, Some(&refs), e.down_reason());
        }
    }
}

/// One frame, one connection: connect, handshake, write, read the answer, let the receiver
/// close first.
async fn deliver(
    shared: &Shared,
    peer: &str,
    bytes: &[u8],
    meta: FrameMeta,
) -> Result<(), IoError> {
    let limits = &shared.config.limits;
    // A connection refused by the peer's handshake caps (alive but busy) is dialled again,
    // with backoff, for a bounded time (see `crate::busy`).
    let mut busy = BusyRetry::new(limits);
    let (mut stream, mut reader, who, caps) = loop {
        let stream = tokio::time::timeout(limits.connect_timeout, TcpStream::connect(peer))
            .await
            .map_err(|_| IoError::Timeout(limits.connect_timeout))??;
        stream.set_nodelay(true)?;
        let (mut stream, read_any) = Watched::new(stream);
        let mut reader = FrameReader::new(limits.max_frame);
        let hs = new_handshake(true, handshake_config(&shared.config))?;
        match run_handshake_agreed(&mut stream, &mut reader, hs, limits.handshake_timeout).await {
            Ok((who, caps)) => break (stream, reader, who, caps),
            Err(e) if refused_by_caps(&e, read_any.load(Ordering::Acquire)) => {
                match busy.wait(tokio::time::Instant::now().into_std()) {
                    Some(wait) => {
                        tracing::debug!(?wait, "refused by a busy peer: dialling again");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    };
    // Every message's handshake proves the peer's identity afresh: the node learns aliases
    // and restarts (a new incarnation) from it.
    if !shared
        .inbound
        .peer_proven(Proven::new(Some(peer), &who).carrying(meta).agreed(caps))
    {
        return Err(IoError::NameConflict(who.name));
    }
    stream.write_all(bytes).await?;
    // The answer comes back promptly; bound the wait like a handshake.
    let answer = tokio::time::timeout(limits.handshake_timeout, reader.next(&mut stream))
        .await
        .map_err(|_| IoError::Timeout(limits.handshake_timeout))??;
    let payload = reader.payload(answer).to_vec();
    match Frame::decode(&payload)? {
        Frame::Ack => {}
        frame @ Frame::Error { .. } => {
            let back = Answer {
                peer: peer.to_string(),
                out: Mutex::new(Vec::new()),
            };
            let _ = shared
                .inbound
                .frame(&who, frame, payload.len() + LEN_PREFIX, &back, false);
        }
        other => {
            return Err(IoError::NotHandshake(other.kind_name()));
        }
    }
    // Wait for the receiver to close first (bounded), then close our side.
    let _ = tokio::time::timeout(limits.handshake_timeout, reader.fill(&mut stream)).await;
    Ok(())
}

fn handshake_config(config: &TransportConfig) -> HandshakeConfig {
    HandshakeConfig::new(config.cookie.clone(), config.identity.clone())
}

/// Serves one inbound connection: handshake, one frame, the answer, close.
async fn serve_one(shared: Arc<Shared>, mut stream: TcpStream, remote: SocketAddr) {
    let Some(pass) = shared.gate.enter(remote.ip()) else {
        shared
            .inbound
            .rejected(&remote.to_string(), "too many connections in handshake");
        return;
    };
    let limits = &shared.config.limits;
    let mut reader = FrameReader::new(limits.max_frame);
    let hs = match new_handshake(false, handshake_config(&shared.config)) {
        Ok(hs) => hs,
        Err(e) => {
            tracing::warn!(error = %e, "no randomness for a handshake nonce");
            return;
        }
    };
    let (who, caps): (NodeIdentity, u64) =
        match run_handshake_agreed(&mut stream, &mut reader, hs, limits.handshake_timeout).await {
            Ok(agreed) => agreed,
            Err(e) => {
                shared.inbound.rejected(&remote.to_string(), &e.to_string());
                return;
            }
        };
    drop(pass);
    // An authenticated peer may not hold more than its share of connections (each may carry a
    // partial frame of up to max_frame bytes until the deadline).
    let Some(_conn_pass) = shared.conns.enter(&who.name) else {
        shared.inbound.rejected(
            &remote.to_string(),
            &IoError::TooManyConnections(shared.conns.max()).to_string(),
        );
        return;
    };
    if !shared.inbound.admit(&who) {
        shared
            .inbound
            .rejected(&remote.to_string(), &IoError::TooManyPeers.to_string());
        return;
    }
    shared
        .inbound
        .peer_proven(Proven::new(None, &who).agreed(caps));
    let range = match tokio::time::timeout(limits.handshake_timeout, reader.next(&mut stream)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            shared.inbound.rejected(&remote.to_string(), &e.to_string());
            return;
        }
        Err(_) => {
            shared
                .inbound
                .rejected(&remote.to_string(), "no frame after the handshake");
            return;
        }
    };
    if reader.has_partial() {
        shared
            .inbound
            .rejected(&remote.to_string(), "bytes after the frame");
        return;
    }
    let answer = Answer {
        peer: who.name.clone(),
        out: Mutex::new(Vec::new()),
    };
    let payload = reader.payload(range);
    let handed = match Frame::decode(payload) {
        Ok(frame) => {
            hand_over(
                &*shared.inbound,
                &who,
                frame,
                payload,
                &answer,
                limits.handshake_timeout / 2,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match handed {
        Ok(()) => {}
        Err(e) => {
            shared
                .inbound
                .rejected(&remote.to_string(), &format!("malformed frame: {e}"));
            return;
        }
    }
    let mut out = answer.out.into_inner().unwrap_or_else(|p| p.into_inner());
    if out.is_empty() {
        encode_bare(&mut out, kind::ACK);
    }
    // Answer and close first: TIME_WAIT stays on this (listening) side.
    let _ = stream.write_all(&out).await;
    drop(stream);
}
