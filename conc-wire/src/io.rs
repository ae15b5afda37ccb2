//! Async helpers shared by the transports: reading frames from and running the handshake over
//! any `AsyncRead + AsyncWrite` stream (a TCP connection, a TLS stream, a QUIC stream pair).
//! No sockets here: the transports own those.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{Frame, FrameCodec, FrameError, encode_handshake};
use crate::handshake::{Handshake, HandshakeConfig, HandshakeError, NONCE_LEN, NodeIdentity};

/// A fresh random nonce from the operating system.
pub fn fresh_nonce() -> Result<[u8; NONCE_LEN], std::io::Error> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(n)
}

/// Why reading a frame or running the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream.
    #[error("connection closed by peer")]
    Closed,
    /// The peer sent a malformed or oversized frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer sent something other than a handshake message during the handshake.
    #[error("handshake failed: expected a handshake frame, got {0}")]
    NotHandshake(&'static str),
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// TLS failed: the TLS handshake, a certificate, or the certificate's name.
    #[error("tls: {0}")]
    Tls(String),
    /// The peer already has [`Limits::max_connections_per_peer`](crate::transport::Limits)
    /// connections open.
    #[error("too many connections from this peer (at most {0})")]
    TooManyConnections(usize),
    /// The node keeps state for as many peers as it may and none is idle
    /// ([`Limits::max_peers`](crate::transport::Limits)).
    #[error("too many peer nodes")]
    TooManyPeers,
    /// The peer refused the handshake and said why (QUIC carries the reason in its close).
    #[error("the peer refused the handshake: {0}")]
    Refused(String),
    /// The peer proved a name that another live node already proved to this node.
    #[error("name conflict: another live node already proved {0}")]
    NameConflict(String),
}

impl IoError {
    /// The node-down reason this failure amounts to, for the node.
    pub fn down_reason(&self) -> crate::DownReason {
        use crate::DownReason as D;
        match self {
            IoError::Io(_) | IoError::Closed | IoError::Timeout(_) => D::Unreachable,
            IoError::TooManyConnections(_) | IoError::TooManyPeers => D::Unreachable,
            IoError::Frame(_) => D::ProtocolViolation,
            IoError::Handshake(_) | IoError::NotHandshake(_) | IoError::Tls(_) => {
                D::HandshakeFailed
            }
            IoError::Refused(_) => D::HandshakeFailed,
            IoError::NameConflict(_) => D::NameConflict,
        }
    }
}

/// A receive buffer that yields whole frames, reading as needed.
///
/// It is tokio-util's codec machinery: a [`FrameCodec`] (the
/// [`Decoder`](tokio_util::codec::Decoder) of conc's framing, which checks a frame's announced
/// length against the limit before reserving memory) over a `BytesMut`, read into with
/// `read_buf`. It is a reader rather than a `FramedRead` so that a transport can take every
/// frame already buffered without awaiting (and without a `Stream` per connection) and borrow
/// each in place; a frame is split off the buffer without copying.
#[derive(Debug)]
pub struct FrameReader {
    buf: bytes::BytesMut,
    codec: FrameCodec,
    /// The frame [`FrameReader::next_buffered`] returned last.
    current: bytes::BytesMut,
}

impl FrameReader {
    /// A reader refusing frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            buf: bytes::BytesMut::with_capacity(8192),
            codec: FrameCodec::new(max_frame),
            current: bytes::BytesMut::new(),
        }
    }

    /// Whether bytes of an incomplete frame are buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Returns the payload range of the next whole frame already buffered, if any (a range
    /// for [`FrameReader::payload`]).
    pub fn next_buffered(&mut self) -> Result<Option<std::ops::Range<usize>>, FrameError> {
        match self.codec.decode_frame(&mut self.buf)? {
            Some(frame) => {
                self.current = frame;
                Ok(Some(0..self.current.len()))
            }
            None => Ok(None),
        }
    }

    /// The bytes of the range [`FrameReader::next_buffered`] returned last (valid until the
    /// next call of `next_buffered`, `next` or `fill`).
    pub fn payload(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.current.get(range).unwrap_or_default()
    }

    /// Reads more bytes from `r`. Returns `Closed` on end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), IoError> {
        // The last frame is done with: the buffer is ours alone again, so reserving reuses it.
        self.current = bytes::BytesMut::new();
        let needed = self.codec.needed(&self.buf).max(self.buf.len() + 1);
        let want = needed.max(self.buf.len() + 16 * 1024);
        self.buf.reserve(want - self.buf.len());
        let n = r.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(IoError::Closed);
        }
        Ok(())
    }

    /// Reads until a whole frame is buffered; returns its payload range.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<std::ops::Range<usize>, IoError> {
        loop {
            if let Some(range) = self.next_buffered()? {
                return Ok(range);
            }
            self.fill(r).await?;
        }
    }
}

/// Runs the cookie handshake over a stream with a deadline. On success returns the proven peer
/// identity; on failure the peer has been sent a reject where possible and nothing of it was
/// acted on. Frames the peer pipelined after the handshake stay in `reader`.
///
/// Until the peer is authenticated, `reader` refuses frames larger than a handshake message
/// (a few KiB), not only those over the frame limit, so that a peer without the cookie cannot
/// make the node buffer a whole maximum-size frame per connection in the handshake.
pub async fn run_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reader: &mut FrameReader,
    hs: Handshake,
    timeout: Duration,
) -> Result<NodeIdentity, IoError> {
    run_handshake_agreed(stream, reader, hs, timeout)
        .await
        .map(|(who, _)| who)
}

/// [`run_handshake`], also returning the capability flags both sides agreed on
/// ([`Handshake::capabilities`], see [`crate::handshake::CAPABILITIES`]), for
/// [`Proven::capabilities`](crate::Proven::capabilities).
pub async fn run_handshake_agreed<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reader: &mut FrameReader,
    hs: Handshake,
    timeout: Duration,
) -> Result<(NodeIdentity, u64), IoError> {
    let full = reader.codec;
    let handshake_limit = hs.max_message().saturating_add(1).min(full.max_frame());
    reader.codec = FrameCodec::new(handshake_limit);
    let result = handshake_frames(stream, reader, hs, timeout).await;
    reader.codec = full;
    result
}

/// [`run_handshake`] once the reader's limit is set.
async fn handshake_frames<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reader: &mut FrameReader,
    mut hs: Handshake,
    timeout: Duration,
) -> Result<(NodeIdentity, u64), IoError> {
    let fut = async {
        let mut out = Vec::with_capacity(256);
        loop {
            while let Some(msg) = hs.poll_transmit() {
                encode_handshake(&mut out, &msg);
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
                stream.flush().await?;
                out.clear();
            }
            if hs.is_done()
                && let Some(peer) = hs.peer()
            {
                return Ok((peer.clone(), hs.capabilities().unwrap_or(0)));
            }
            let range = reader.next(stream).await?;
            let payload = reader.payload(range);
            match Frame::decode(payload)? {
                Frame::Handshake(msg) => {
                    if let Err(e) = hs.handle(msg) {
                        while let Some(msg) = hs.poll_transmit() {
                            encode_handshake(&mut out, &msg);
                        }
                        if !out.is_empty() {
                            let _ = stream.write_all(&out).await;
                            let _ = stream.flush().await;
                        }
                        return Err(IoError::Handshake(e));
                    }
                }
                other => return Err(IoError::NotHandshake(other.kind_name())),
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(IoError::Timeout(timeout)),
    }
}

/// Hands a frame from an authenticated peer to the node. If its target's mailbox is full,
/// waits up to `bound` for room (holding back the rest of the stream, so backpressure reaches
/// the sender), then offers it once more; the node refuses it if there is still no room.
pub async fn hand_over(
    inbound: &dyn crate::Inbound,
    from: &NodeIdentity,
    frame: Frame<'_>,
    payload: &[u8],
    back: &dyn crate::Route,
    bound: Duration,
) -> Result<(), FrameError> {
    let wire_len = payload.len() + crate::frame::LEN_PREFIX;
    if let Some(wait) = inbound.frame(from, frame, wire_len, back, true) {
        let _ = tokio::time::timeout(bound, wait).await;
        let again = Frame::decode(payload)?;
        let _ = inbound.frame(from, again, wire_len, back, false);
    }
    Ok(())
}

/// Builds a handshake state machine with a fresh nonce.
pub fn new_handshake(client: bool, config: HandshakeConfig) -> Result<Handshake, std::io::Error> {
    let nonce = fresh_nonce()?;
    Ok(if client {
        Handshake::client(config, nonce)
    } else {
        Handshake::server(config, nonce)
    })
}

/// Caps connections that have not finished the handshake, overall and per source address.
pub struct HandshakeGate {
    overall: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Held while a connection is in the handshake; releases its places when dropped.
pub struct GatePass<'a> {
    gate: &'a HandshakeGate,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl HandshakeGate {
    /// A gate admitting `max` connections in handshake overall and `max_per_ip` per address.
    pub fn new(max: usize, max_per_ip: usize) -> Self {
        HandshakeGate {
            overall: Arc::new(Semaphore::new(max.max(1))),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: max_per_ip.max(1),
        }
    }

    /// A place for a connection from `ip`, or `None` if a cap is reached.
    pub fn enter(&self, ip: IpAddr) -> Option<GatePass<'_>> {
        let permit = self.overall.clone().try_acquire_owned().ok()?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(GatePass {
            gate: self,
            ip,
            _permit: permit,
        })
    }
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut per_ip = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Caps the authenticated connections open at once per peer node name
/// ([`Limits::max_connections_per_peer`](crate::transport::Limits::max_connections_per_peer)).
///
/// Cheap to clone; every clone counts against the same caps. Entries exist only while a peer
/// has connections, so peers that come and go leave nothing behind.
#[derive(Clone)]
pub struct PeerConnections {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    max: usize,
}

/// One authenticated connection's place in [`PeerConnections`]; released when dropped.
pub struct PeerConnectionPass {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    peer: String,
}

impl PeerConnections {
    /// Admits up to `max` connections per peer (at least one).
    pub fn new(max: usize) -> Self {
        PeerConnections {
            counts: Arc::new(Mutex::new(HashMap::new())),
            max: max.max(1),
        }
    }

    /// A place for one more connection of `peer`, or `None` if it already has the maximum.
    pub fn enter(&self, peer: &str) -> Option<PeerConnectionPass> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(peer.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerConnectionPass {
            counts: self.counts.clone(),
            peer: peer.to_string(),
        })
    }

    /// How many connections `peer` has open.
    pub fn count(&self, peer: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(peer).copied().unwrap_or(0)
    }

    /// The cap per peer.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Like [`enter`](PeerConnections::enter), with the refusal as an error.
    pub fn admit(&self, peer: &str) -> Result<PeerConnectionPass, IoError> {
        self.enter(peer)
            .ok_or(IoError::TooManyConnections(self.max))
    }
}

impl std::fmt::Debug for PeerConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnections")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Drop for PeerConnectionPass {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_connections_cap_and_release() {
        let conns = PeerConnections::new(2);
        let a1 = conns.enter("a").unwrap();
        let a2 = conns.enter("a").unwrap();
        assert!(conns.enter("a").is_none());
        assert!(matches!(
            conns.admit("a"),
            Err(IoError::TooManyConnections(2))
        ));
        // Other peers have their own places.
        let b1 = conns.admit("b").unwrap();
        assert_eq!((conns.count("a"), conns.count("b")), (2, 1));
        drop(a1);
        let a3 = conns.enter("a").unwrap();
        drop((a2, a3, b1));
        // Peers without connections leave no entry behind.
        assert_eq!(conns.count("a"), 0);
        assert!(conns.counts.lock().unwrap().is_empty());
        // A cap of zero still admits one.
        let one = PeerConnections::new(0);
        let _p = one.enter("x").unwrap();
        assert!(one.enter("x").is_none());
        assert_eq!(one.max(), 1);
    }
}
