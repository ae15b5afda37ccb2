//! The mutual cookie handshake between two conc nodes, as a sans-IO state machine.
//!
//! Two nodes that share a secret [`Cookie`] prove to each other that they know it without
//! the cookie ever crossing the wire. The machine does no I/O, reads no clock and draws no
//! randomness: the caller passes in a fresh random nonce, feeds every handshake message it
//! receives to [`Handshake::handle`] and sends whatever [`Handshake::poll_transmit`] yields.
//! Framing (one handshake message per frame) and the deadline belong to the transport.
//!
//! The exchange has four messages:
//!
//! 1. client → server `Hello`: magic `b"conc"`, the range of protocol versions the client
//!    speaks and the client nonce;
//! 2. server → client `Challenge`: the chosen version (the highest common one) and the server
//!    nonce;
//! 3. client → server `ClientProof`: the client's [`NodeIdentity`] and
//!    `HMAC-SHA256(cookie, "conc-hs-client-v2" || client transcript)`;
//! 4. server → client `ServerProof`: the server's [`NodeIdentity`] and
//!    `HMAC-SHA256(cookie, "conc-hs-server-v2" || server transcript)`.
//!
//! The client transcript is an unambiguous, length-prefixed encoding of the chosen version,
//! both nonces, the client's identity and the channel binding (for example a TLS exporter
//! value); the server transcript appends the server's identity. So a proof is only valid for
//! this very exchange, and neither side names itself before the other has had a chance to
//! refuse: a peer that does not know the cookie learns only the protocol version and a random
//! nonce from a server, and the server's name and incarnation only travel with its proof, after
//! the client has proven the cookie. Either side may answer with `Reject` instead, after which
//! it is failed. Each message is one tag byte followed by a bincode encoding.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The highest handshake protocol version this build speaks (and the one it prefers).
///
/// Version 2 moved both identities from the first two messages into the proofs, so that an
/// unauthenticated peer learns nothing but the version; version 1 is no longer spoken.
/// Version 3 added frames (`ReplyFailed`, `Linked`, `Kill`) that a version-2 node would take
/// for a protocol violation, so version 2 is refused with a clear error naming both versions;
/// it also added capability flags ([`CAPABILITIES`]), so that later features can be added
/// within the version without breaking older peers.
/// Version 4 computes message type tags from the types' serde shapes
/// ([`conc_core::TypeTag`]) instead of their names: a version-3 node would refuse every
/// message of a version-4 one as a type mismatch, so version 3 is refused at the handshake.
pub const PROTOCOL_VERSION: u16 = 4;

/// The capability flags this build offers. Within a protocol version, a release adds a
/// feature that needs both sides by giving it a bit here: the handshake agrees on the bits both
/// offer (a bitwise and, covered by both proofs so that no one in the middle can strip a bit),
/// and a node uses the feature with a peer only if the agreed flags have its bit. Unknown bits
/// are ignored, so older nodes keep working with newer ones.
///
/// Assigned: [`TRACE_CONTEXT`] (bit 0), [`CAP_FRAGMENTS`] (bit 1), [`EXIT_SIGNAL`] (bit 2) and
/// [`HANDOVER`] (bit 3).
pub const CAPABILITIES: u64 = TRACE_CONTEXT | CAP_FRAGMENTS | EXIT_SIGNAL | HANDOVER;

/// Capability bit 0: the node reads `SendTraced` frames
/// ([`kind::SEND_TRACED`](crate::frame::kind::SEND_TRACED)), which carry the sender's trace
/// context ([`TraceParent`](crate::trace::TraceParent)). A node sends them only to peers that
/// agreed on this bit.
pub const TRACE_CONTEXT: u64 = 1 << 0;

/// Capability bit 1: the node takes large frames in pieces (`Fragment` frames of
/// [`FRAGMENT_CHUNK`](crate::frame::FRAGMENT_CHUNK) bytes, see
/// [`Reassembly`](crate::frame::Reassembly)), so a peer may interleave small frames with a
/// large one instead of making them wait behind it.
pub const CAP_FRAGMENTS: u64 = 1 << 1;

/// Capability bit 2: the node takes `Exit` frames ([`kind::EXIT`](crate::frame::kind::EXIT)),
/// exit signals with a reason sent to one of its processes (Erlang's `exit(Pid, Reason)`). To a
/// peer without it, a node can send only a kill.
pub const EXIT_SIGNAL: u64 = 1 << 2;

/// Capability bit 3: the node hands a pair's frames over from a connection that lost a
/// simultaneous connect to the one that won without reordering them: it ends its writing on
/// the loser with a `Retire` frame ([`kind::RETIRE`](crate::frame::kind::RETIRE)), writes on the
/// winner only once the loser has drained if it had written on the loser, and delivers the
/// winner's frames only after everything the peer wrote on the loser (see
/// [`PeerSession`](crate::session::PeerSession)). Without it, both connections are read at
/// once and a pair's frames may be reordered across them.
pub const HANDOVER: u64 = 1 << 3;

/// The lowest handshake protocol version this build speaks.
const MIN_PROTOCOL_VERSION: u16 = 4;

/// Length in bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;

/// Default for [`HandshakeConfig::max_message`].
pub const DEFAULT_MAX_MESSAGE: usize = 4096;

/// Magic bytes at the start of a `Hello`.
const MAGIC: [u8; 4] = *b"conc";

/// Domain separation label of the client's proof.
const CLIENT_LABEL: &[u8] = b"conc-hs-client-v2";

/// Domain separation label of the server's proof.
const SERVER_LABEL: &[u8] = b"conc-hs-server-v2";

/// Longest `Reject` reason we send or pass on to the caller, in bytes.
const MAX_REASON: usize = 256;

const TAG_HELLO: u8 = 1;
const TAG_CHALLENGE: u8 = 2;
const TAG_CLIENT_PROOF: u8 = 3;
const TAG_SERVER_PROOF: u8 = 4;
const TAG_REJECT: u8 = 5;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret two nodes must both know to talk to each other.
///
/// Its `Debug` output never shows the secret, and it is never serialized.
#[derive(Clone)]
pub struct Cookie(Vec<u8>);

impl Cookie {
    /// Makes a cookie from raw bytes; an empty cookie is refused.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Cookie, CookieError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(CookieError::Empty);
        }
        Ok(Cookie(bytes))
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

impl FromStr for Cookie {
    type Err = CookieError;

    /// Parses a cookie from text, trimming surrounding whitespace (such as the newline at the
    /// end of a cookie file); an empty or all-blank string is refused.
    fn from_str(s: &str) -> Result<Cookie, CookieError> {
        Cookie::new(s.trim().as_bytes())
    }
}

/// Why a [`Cookie`] could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The cookie was empty (or only whitespace).
    #[error("the cookie is empty")]
    Empty,
}

/// Who a node is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's name: its listen address `"host:port"`, or a generated name for a node that
    /// does not listen.
    pub name: String,
    /// A random number chosen when the node starts, which tells a restarted node from its
    /// earlier incarnations.
    pub incarnation: u64,
}

/// Which end of the connection a [`Handshake`] plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that opened the connection; it speaks first.
    Client,
    /// The side that accepted the connection; it speaks last.
    Server,
}

/// Settings of one handshake.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// The shared secret.
    pub cookie: Cookie,
    /// This node's identity, sent to the peer.
    pub local: NodeIdentity,
    /// Bytes that bind the handshake to the channel (e.g. a TLS exporter value); empty for
    /// plain TCP. Both sides must use the same value.
    pub channel_binding: Vec<u8>,
    /// Largest handshake message accepted (default 4096): anything larger is refused before
    /// parsing.
    pub max_message: usize,
    /// The capability flags this node offers (default [`CAPABILITIES`]); the handshake agrees
    /// on the flags both offer ([`Handshake::capabilities`]).
    pub capabilities: u64,
}

impl HandshakeConfig {
    /// A configuration with no channel binding and the default `max_message`.
    pub fn new(cookie: Cookie, local: NodeIdentity) -> HandshakeConfig {
        HandshakeConfig {
            cookie,
            local,
            channel_binding: Vec::new(),
            max_message: DEFAULT_MAX_MESSAGE,
            capabilities: CAPABILITIES,
        }
    }
}

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The two sides have no protocol version in common.
    #[error("unsupported protocol version: we speak up to {ours}, the peer up to {theirs}")]
    UnsupportedVersion {
        /// The highest version we speak.
        ours: u16,
        /// The highest version the peer offered (or the version it chose).
        theirs: u16,
    },
    /// A message could not be decoded (bad tag, bad magic, truncated, trailing bytes, ...).
    #[error("malformed handshake message: {0}")]
    Malformed(String),
    /// A well-formed message arrived when another was expected.
    #[error("unexpected handshake message: {0}")]
    Unexpected(&'static str),
    /// A message was larger than [`HandshakeConfig::max_message`].
    #[error("handshake message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the message received.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer's proof is wrong: it does not know the cookie, or the channel bindings differ,
    /// or the message was replayed from another session.
    #[error("the peer failed to prove knowledge of the cookie")]
    BadCookie,
    /// The peer reused our nonce or our identity (a reflected or looped-back connection).
    #[error(
        "the peer proved this node's own identity or nonce: it is this node reached through another address, or a reflected connection"
    )]
    Reflection,
    /// The peer refused the handshake, giving this reason.
    #[error("the peer rejected the handshake: {0}")]
    Rejected(String),
    /// The handshake had already failed.
    #[error("the handshake has already failed")]
    Failed,
}

/// `Hello`, message 1 (client → server).
#[derive(Serialize, Deserialize)]
struct Hello {
    magic: [u8; 4],
    versions: (u16, u16),
    /// The client's capability flags.
    caps: u64,
    nonce_c: [u8; NONCE_LEN],
}

/// `Challenge`, message 2 (server → client).
#[derive(Serialize, Deserialize)]
struct Challenge {
    version: u16,
    /// The server's capability flags.
    caps: u64,
    nonce_s: [u8; NONCE_LEN],
}

/// `ClientProof` (message 3) and `ServerProof` (message 4) share this body: the sender's
/// identity and its MAC over a transcript that includes that identity.
#[derive(Serialize, Deserialize)]
struct Proof {
    identity: NodeIdentity,
    mac: [u8; 32],
}

/// `Reject`, possible in place of any message.
#[derive(Serialize, Deserialize)]
struct Reject {
    reason: String,
}

/// Encodes one message: its tag byte, then the bincode body (through [`crate::bin`]).
fn encode_message<T: Serialize>(tag: u8, body: &T) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![tag];
    crate::bin::encode_into(body, &mut out)
        .map_err(|e| HandshakeError::Malformed(format!("cannot encode message: {e}")))?;
    Ok(out)
}

/// Decodes one message body, refusing trailing bytes.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, HandshakeError> {
    crate::bin::decode_exact(body).map_err(|e| HandshakeError::Malformed(e.to_string()))
}

/// Name of a message tag, for error messages.
fn tag_name(tag: u8) -> &'static str {
    match tag {
        TAG_HELLO => "hello",
        TAG_CHALLENGE => "challenge",
        TAG_CLIENT_PROOF => "client proof",
        TAG_SERVER_PROOF => "server proof",
        TAG_REJECT => "reject",
        _ => "unknown",
    }
}

/// Appends one length-prefixed field to a transcript.
fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

/// The transcript the client's proof covers: version, both nonces, the client's identity and
/// the channel binding, each length-prefixed.
fn client_transcript(
    version: u16,
    caps: [u64; 2],
    nonce_c: &[u8; NONCE_LEN],
    nonce_s: &[u8; NONCE_LEN],
    client: &NodeIdentity,
    channel_binding: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        8 * 8 + 2 + 2 * NONCE_LEN + 2 * 8 + client.name.len() + 128 + channel_binding.len(),
    );
    push_field(&mut out, &version.to_be_bytes());
    // Both sides' offered capabilities (client's, server's): a flag stripped in transit makes
    // the proofs disagree.
    push_field(&mut out, &caps[0].to_be_bytes());
    push_field(&mut out, &caps[1].to_be_bytes());
    push_field(&mut out, nonce_c);
    push_field(&mut out, nonce_s);
    push_field(&mut out, client.name.as_bytes());
    push_field(&mut out, &client.incarnation.to_be_bytes());
    push_field(&mut out, channel_binding);
    out
}

/// The transcript the server's proof covers: the client transcript, then the server's identity.
fn server_transcript(mut client_transcript: Vec<u8>, server: &NodeIdentity) -> Vec<u8> {
    push_field(&mut client_transcript, server.name.as_bytes());
    push_field(&mut client_transcript, &server.incarnation.to_be_bytes());
    client_transcript
}

/// A keyed HMAC over `label || transcript`, ready to finalize or verify.
fn keyed_mac(
    cookie: &Cookie,
    label: &[u8],
    transcript: &[u8],
) -> Result<HmacSha256, HandshakeError> {
    // HMAC accepts keys of any length, so this cannot fail; fail closed if it ever did.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(cookie.as_bytes())
        .map_err(|_| HandshakeError::BadCookie)?;
    mac.update(label);
    mac.update(transcript);
    Ok(mac)
}

/// Computes a proof.
fn prove(cookie: &Cookie, label: &[u8], transcript: &[u8]) -> Result<[u8; 32], HandshakeError> {
    Ok(keyed_mac(cookie, label, transcript)?
        .finalize()
        .into_bytes()
        .into())
}

/// Checks a proof in constant time.
fn verify(
    cookie: &Cookie,
    label: &[u8],
    transcript: &[u8],
    mac: &[u8; 32],
) -> Result<(), HandshakeError> {
    keyed_mac(cookie, label, transcript)?
        .verify_slice(mac)
        .map_err(|_| HandshakeError::BadCookie)
}

/// Makes a peer-supplied reason safe to show: no control characters, bounded length.
fn sanitize_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_REASON)
        .collect()
}

/// Truncates a reason we send to at most `MAX_REASON` bytes, on a character boundary.
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Where the handshake stands.
#[derive(Debug)]
enum State {
    /// Client: `Hello` queued, waiting for `Challenge`.
    ClientAwaitChallenge,
    /// Client: `ClientProof` queued, waiting for `ServerProof`.
    ClientAwaitServerProof {
        version: u16,
        /// The agreed capability flags.
        caps: u64,
        /// The client transcript (our proof's), which the server's extends.
        transcript: Vec<u8>,
    },
    /// Server: waiting for `Hello`.
    ServerAwaitHello,
    /// Server: `Challenge` queued, waiting for `ClientProof`.
    ServerAwaitClientProof {
        version: u16,
        /// The client's offered capability flags.
        client_caps: u64,
        nonce_c: [u8; NONCE_LEN],
    },
    /// The peer proved the cookie.
    Done {
        version: u16,
        caps: u64,
        peer: NodeIdentity,
    },
    /// Something went wrong; at most a `Reject` is still queued.
    Failed,
}

/// One side of the cookie handshake, as a sans-IO state machine.
///
/// Send every message [`poll_transmit`](Handshake::poll_transmit) yields, feed every message
/// received to [`handle`](Handshake::handle), and stop once [`is_done`](Handshake::is_done)
/// or [`is_failed`](Handshake::is_failed) (after sending what is still queued: the server's
/// last proof, or a `Reject`). The caller should check that [`peer`](Handshake::peer) is the
/// node it meant to reach.
#[derive(Debug)]
pub struct Handshake {
    role: Role,
    config: HandshakeConfig,
    nonce: [u8; NONCE_LEN],
    state: State,
    outbox: VecDeque<Vec<u8>>,
}

impl Handshake {
    /// The side that opened the connection. `nonce` must be fresh random bytes.
    pub fn client(config: HandshakeConfig, nonce: [u8; NONCE_LEN]) -> Handshake {
        Handshake::new(Role::Client, config, nonce)
    }

    /// The side that accepted the connection. `nonce` must be fresh random bytes.
    pub fn server(config: HandshakeConfig, nonce: [u8; NONCE_LEN]) -> Handshake {
        Handshake::new(Role::Server, config, nonce)
    }

    /// Either side, chosen by `role`. `nonce` must be fresh random bytes.
    pub fn new(role: Role, config: HandshakeConfig, nonce: [u8; NONCE_LEN]) -> Handshake {
        let mut handshake = Handshake {
            role,
            config,
            nonce,
            state: match role {
                Role::Client => State::ClientAwaitChallenge,
                Role::Server => State::ServerAwaitHello,
            },
            outbox: VecDeque::new(),
        };
        if role == Role::Client {
            let hello = Hello {
                magic: MAGIC,
                versions: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
                caps: handshake.config.capabilities,
                nonce_c: nonce,
            };
            match encode_message(TAG_HELLO, &hello) {
                Ok(message) => handshake.outbox.push_back(message),
                Err(e) => handshake.fail(&e),
            }
        }
        handshake
    }

    /// Which side this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The largest handshake message accepted ([`HandshakeConfig::max_message`]), so that a
    /// transport can refuse a larger frame before buffering it.
    pub fn max_message(&self) -> usize {
        self.config.max_message
    }

    /// Next message to send to the peer, if any (the client has its Hello ready at once).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// Feed one whole handshake message received from the peer (the transport frames
    /// messages; this gets one message's payload).
    ///
    /// On error the handshake is failed (a `Reject` is queued when it makes sense) and every
    /// later call returns [`HandshakeError::Failed`]. A message after the handshake is done
    /// is refused with [`HandshakeError::Unexpected`] and leaves it done.
    pub fn handle(&mut self, message: &[u8]) -> Result<(), HandshakeError> {
        match self.state {
            State::Failed => return Err(HandshakeError::Failed),
            State::Done { .. } => {
                return Err(HandshakeError::Unexpected(
                    "message after the handshake completed",
                ));
            }
            _ => {}
        }
        let result = if message.len() > self.config.max_message {
            Err(HandshakeError::TooLarge {
                len: message.len(),
                max: self.config.max_message,
            })
        } else {
            self.step(message)
        };
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    /// Some(peer identity) once the peer has proven the cookie and (for the side that speaks
    /// last) our last message is queued.
    pub fn peer(&self) -> Option<&NodeIdentity> {
        match &self.state {
            State::Done { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// The negotiated protocol version, once the handshake is done.
    pub fn version(&self) -> Option<u16> {
        match &self.state {
            State::Done { version, .. } => Some(*version),
            _ => None,
        }
    }

    /// The capability flags both sides offered (see [`CAPABILITIES`]), once the peer has proven
    /// the cookie.
    pub fn capabilities(&self) -> Option<u64> {
        match &self.state {
            State::Done { caps, .. } => Some(*caps),
            _ => None,
        }
    }

    /// Whether the peer has proven the cookie (see [`peer`](Handshake::peer)).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done { .. })
    }

    /// Whether the handshake failed; only a `Reject` may still be waiting in
    /// [`poll_transmit`](Handshake::poll_transmit).
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Marks the handshake failed, dropping anything queued and queuing a `Reject` unless the
    /// peer is the one who rejected.
    fn fail(&mut self, error: &HandshakeError) {
        self.state = State::Failed;
        self.outbox.clear();
        if matches!(error, HandshakeError::Rejected(_) | HandshakeError::Failed) {
            return;
        }
        let reject = Reject {
            reason: truncate_reason(error.to_string()),
        };
        if let Ok(message) = encode_message(TAG_REJECT, &reject) {
            self.outbox.push_back(message);
        }
    }

    /// Processes one message of acceptable size. Leaves the state `Failed` on error.
    fn step(&mut self, message: &[u8]) -> Result<(), HandshakeError> {
        let Some((&tag, body)) = message.split_first() else {
            return Err(HandshakeError::Malformed("empty message".into()));
        };
        if tag == TAG_REJECT {
            let reject: Reject = decode_body(body)?;
            return Err(HandshakeError::Rejected(sanitize_reason(&reject.reason)));
        }
        if !matches!(
            tag,
            TAG_HELLO | TAG_CHALLENGE | TAG_CLIENT_PROOF | TAG_SERVER_PROOF
        ) {
            return Err(HandshakeError::Malformed(format!(
                "unknown message tag {tag}"
            )));
        }
        // Take the state out: any early return below leaves the handshake failed.
        match std::mem::replace(&mut self.state, State::Failed) {
            State::ClientAwaitChallenge if tag == TAG_CHALLENGE => {
                self.on_challenge(decode_body(body)?)
            }
            State::ClientAwaitServerProof {
                version,
                caps,
                transcript,
            } if tag == TAG_SERVER_PROOF => {
                let proof: Proof = decode_body(body)?;
                if proof.identity == self.config.local {
                    return Err(HandshakeError::Reflection);
                }
                let transcript = server_transcript(transcript, &proof.identity);
                verify(&self.config.cookie, SERVER_LABEL, &transcript, &proof.mac)?;
                self.state = State::Done {
                    version,
                    caps,
                    peer: proof.identity,
                };
                Ok(())
            }
            State::ServerAwaitHello if tag == TAG_HELLO => self.on_hello(decode_body(body)?),
            State::ServerAwaitClientProof {
                version,
                client_caps,
                nonce_c,
            } if tag == TAG_CLIENT_PROOF => {
                let proof: Proof = decode_body(body)?;
                // Our own identity coming back means a mirrored or looped-back connection;
                // its MAC would verify, so this check is what refuses it.
                if proof.identity == self.config.local {
                    return Err(HandshakeError::Reflection);
                }
                let transcript = client_transcript(
                    version,
                    [client_caps, self.config.capabilities],
                    &nonce_c,
                    &self.nonce,
                    &proof.identity,
                    &self.config.channel_binding,
                );
                verify(&self.config.cookie, CLIENT_LABEL, &transcript, &proof.mac)?;
                let transcript = server_transcript(transcript, &self.config.local);
                let mac = prove(&self.config.cookie, SERVER_LABEL, &transcript)?;
                let answer = Proof {
                    identity: self.config.local.clone(),
                    mac,
                };
                self.outbox
                    .push_back(encode_message(TAG_SERVER_PROOF, &answer)?);
                self.state = State::Done {
                    version,
                    caps: client_caps & self.config.capabilities,
                    peer: proof.identity,
                };
                Ok(())
            }
            _ => Err(HandshakeError::Unexpected(tag_name(tag))),
        }
    }

    /// Server: answers a `Hello` with a `Challenge`.
    fn on_hello(&mut self, hello: Hello) -> Result<(), HandshakeError> {
        if hello.magic != MAGIC {
            return Err(HandshakeError::Malformed("bad magic".into()));
        }
        let (min, max) = hello.versions;
        if min > max {
            return Err(HandshakeError::Malformed(format!(
                "empty version range {min}..={max}"
            )));
        }
        let highest = max.min(PROTOCOL_VERSION);
        if highest < min.max(MIN_PROTOCOL_VERSION) {
            return Err(HandshakeError::UnsupportedVersion {
                ours: PROTOCOL_VERSION,
                theirs: max,
            });
        }
        if hello.nonce_c == self.nonce {
            return Err(HandshakeError::Reflection);
        }
        let challenge = Challenge {
            version: highest,
            caps: self.config.capabilities,
            nonce_s: self.nonce,
        };
        self.outbox
            .push_back(encode_message(TAG_CHALLENGE, &challenge)?);
        self.state = State::ServerAwaitClientProof {
            version: highest,
            client_caps: hello.caps,
            nonce_c: hello.nonce_c,
        };
        Ok(())
    }

    /// Client: answers a `Challenge` with a `ClientProof`.
    fn on_challenge(&mut self, challenge: Challenge) -> Result<(), HandshakeError> {
        let version = challenge.version;
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(HandshakeError::UnsupportedVersion {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        if challenge.nonce_s == self.nonce {
            return Err(HandshakeError::Reflection);
        }
        let transcript = client_transcript(
            version,
            [self.config.capabilities, challenge.caps],
            &self.nonce,
            &challenge.nonce_s,
            &self.config.local,
            &self.config.channel_binding,
        );
        let mac = prove(&self.config.cookie, CLIENT_LABEL, &transcript)?;
        let proof = Proof {
            identity: self.config.local.clone(),
            mac,
        };
        self.outbox
            .push_back(encode_message(TAG_CLIENT_PROOF, &proof)?);
        self.state = State::ClientAwaitServerProof {
            version,
            caps: self.config.capabilities & challenge.caps,
            transcript,
        };
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An identity, for tests.
    pub(crate) fn ident(name: &str, incarnation: u64) -> NodeIdentity {
        NodeIdentity {
            name: name.to_string(),
            incarnation,
        }
    }

    fn config(cookie: &str, name: &str, incarnation: u64) -> HandshakeConfig {
        HandshakeConfig::new(cookie.parse().unwrap(), ident(name, incarnation))
    }

    fn client_cfg() -> HandshakeConfig {
        config("secret", "127.0.0.1:9001", 11)
    }

    fn server_cfg() -> HandshakeConfig {
        config("secret", "127.0.0.1:9000", 22)
    }

    const NC: [u8; NONCE_LEN] = [0xc1; NONCE_LEN];
    const NS: [u8; NONCE_LEN] = [0x5e; NONCE_LEN];

    /// Messages sent during a session, each with its sender.
    type Log = Vec<(Role, Vec<u8>)>;

    /// Builds a fresh machine in some state.
    type Maker = Box<dyn Fn() -> Handshake>;

    /// Shuttles messages both ways until nobody has anything to send or someone fails.
    /// Returns every message sent, in order, with the role of the sender.
    fn pump(client: &mut Handshake, server: &mut Handshake) -> Result<Log, (Role, HandshakeError)> {
        let mut log = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(m) = client.poll_transmit() {
                progressed = true;
                log.push((Role::Client, m.clone()));
                server.handle(&m).map_err(|e| (Role::Server, e))?;
            }
            while let Some(m) = server.poll_transmit() {
                progressed = true;
                log.push((Role::Server, m.clone()));
                client.handle(&m).map_err(|e| (Role::Client, e))?;
            }
            if !progressed {
                return Ok(log);
            }
        }
    }

    /// Asserts the machine is failed, emits at most one message and that it is a `Reject`.
    fn assert_failed_quietly(h: &mut Handshake) {
        assert!(h.is_failed());
        assert!(!h.is_done());
        assert!(h.peer().is_none());
        if let Some(m) = h.poll_transmit() {
            assert_eq!(m.first(), Some(&TAG_REJECT));
        }
        assert!(h.poll_transmit().is_none());
        assert_eq!(h.handle(b"anything"), Err(HandshakeError::Failed));
        assert!(h.poll_transmit().is_none());
    }

    fn reject_reason(message: &[u8]) -> String {
        assert_eq!(message.first(), Some(&TAG_REJECT));
        decode_body::<Reject>(&message[1..]).unwrap().reason
    }

    #[test]
    fn success_both_ways() {
        let mut c = Handshake::client(client_cfg(), NC);
        let mut s = Handshake::server(server_cfg(), NS);
        assert!(s.poll_transmit().is_none());
        let log = pump(&mut c, &mut s).unwrap();
        assert_eq!(log.len(), 4);
        let tags: Vec<_> = log.iter().map(|(r, m)| (*r, m[0])).collect();
        assert_eq!(
            tags,
            vec![
                (Role::Client, TAG_HELLO),
                (Role::Server, TAG_CHALLENGE),
                (Role::Client, TAG_CLIENT_PROOF),
                (Role::Server, TAG_SERVER_PROOF),
            ]
        );
        assert!(c.is_done() && s.is_done());
        assert!(!c.is_failed() && !s.is_failed());
        assert_eq!(c.peer(), Some(&ident("127.0.0.1:9000", 22)));
        assert_eq!(s.peer(), Some(&ident("127.0.0.1:9001", 11)));
        assert_eq!(c.version(), Some(PROTOCOL_VERSION));
        assert_eq!(s.version(), Some(PROTOCOL_VERSION));
        assert_eq!(c.role(), Role::Client);
        assert_eq!(s.role(), Role::Server);
        // The cookie never crosses the wire.
        for (_, m) in &log {
            assert!(!m.windows(6).any(|w| w == b"secret"));
        }
        // Further messages are refused without undoing the result.
        assert!(matches!(
            c.handle(&log[1].1),
            Err(HandshakeError::Unexpected(_))
        ));
        assert!(c.is_done());
        assert!(c.poll_transmit().is_none());
    }

    #[test]
    fn server_done_once_last_proof_queued() {
        let mut c = Handshake::client(client_cfg(), NC);
        let mut s = Handshake::server(server_cfg(), NS);
        s.handle(&c.poll_transmit().unwrap()).unwrap();
        assert!(s.peer().is_none());
        c.handle(&s.poll_transmit().unwrap()).unwrap();
        assert!(c.peer().is_none());
        s.handle(&c.poll_transmit().unwrap()).unwrap();
        assert!(s.is_done());
        assert!(!c.is_done());
        c.handle(&s.poll_transmit().unwrap()).unwrap();
        assert!(c.is_done());
    }

    #[test]
    fn server_refuses_wrong_cookie() {
        let mut c = Handshake::client(config("wrong", "a:1", 1), NC);
        let mut s = Handshake::server(server_cfg(), NS);
        let err = pump(&mut c, &mut s).unwrap_err();
        assert_eq!(err, (Role::Server, HandshakeError::BadCookie));
        assert!(s.is_failed() && s.peer().is_none());
        // The only thing the server still sends is its Reject.
        let reject = s.poll_transmit().unwrap();
        assert!(!reject_reason(&reject).is_empty());
        assert!(s.poll_transmit().is_none());
        assert_eq!(s.handle(b"\x03"), Err(HandshakeError::Failed));
        assert!(s.poll_transmit().is_none());
        // The client learns why, and answers nothing.
        assert!(matches!(
            c.handle(&reject),
            Err(HandshakeError::Rejected(_))
        ));
        assert!(c.is_failed());
        assert!(c.poll_transmit().is_none());
    }

    #[test]
    fn client_refuses_server_with_wrong_cookie() {
        // The impostor server knows cookie "other"; to make it produce a ServerProof for our
        // client's transcript, a helper client with cookie "other" and the same identity and
        // nonce supplies the client proof it wants.
        let mut c = Handshake::client(client_cfg(), NC);
        let mut helper = Handshake::client(
            HandshakeConfig::new("other".parse().unwrap(), client_cfg().local),
            NC,
        );
        let mut impostor = Handshake::server(config("other", "127.0.0.1:9000", 22), NS);
        let hello = c.poll_transmit().unwrap();
        assert_eq!(helper.poll_transmit().unwrap(), hello);
        impostor.handle(&hello).unwrap();
        let challenge = impostor.poll_transmit().unwrap();
        c.handle(&challenge).unwrap();
        helper.handle(&challenge).unwrap();
        let _ours = c.poll_transmit().unwrap();
        impostor.handle(&helper.poll_transmit().unwrap()).unwrap();
        let server_proof = impostor.poll_transmit().unwrap();
        assert_eq!(c.handle(&server_proof), Err(HandshakeError::BadCookie));
        assert_failed_quietly(&mut c);
    }

    #[test]
    fn replayed_client_messages_fail() {
        let mut c = Handshake::client(client_cfg(), NC);
        let mut s = Handshake::server(server_cfg(), NS);
        let log = pump(&mut c, &mut s).unwrap();
        let client_messages: Vec<_> = log
            .into_iter()
            .filter(|(r, _)| *r == Role::Client)
            .map(|(_, m)| m)
            .collect();
        assert_eq!(client_messages.len(), 2);

        let mut fresh = Handshake::server(server_cfg(), [0x77; NONCE_LEN]);
        fresh.handle(&client_messages[0]).unwrap();
        assert!(fresh.poll_transmit().is_some());
        assert_eq!(
            fresh.handle(&client_messages[1]),
            Err(HandshakeError::BadCookie)
        );
        assert_failed_quietly(&mut fresh);
    }

    #[test]
    fn reflection_of_nonce_or_identity() {
        // A "client" that reuses the server's nonce.
        let mut s = Handshake::server(server_cfg(), NS);
        let mut c = Handshake::client(client_cfg(), NS);
        assert_eq!(
            s.handle(&c.poll_transmit().unwrap()),
            Err(HandshakeError::Reflection)
        );
        assert_failed_quietly(&mut s);

        // A "client" claiming the server's own identity (even with the right cookie).
        let mut s = Handshake::server(server_cfg(), NS);
        let mut c = Handshake::client(server_cfg(), NC);
        s.handle(&c.poll_transmit().unwrap()).unwrap();
        c.handle(&s.poll_transmit().unwrap()).unwrap();
        assert_eq!(
            s.handle(&c.poll_transmit().unwrap()),
            Err(HandshakeError::Reflection)
        );
        assert_failed_quietly(&mut s);

        // A "server" claiming the client's own identity (even with the right cookie).
        let mut s = Handshake::server(client_cfg(), NS);
        let mut c = Handshake::client(client_cfg(), NC);
        s.handle(&c.poll_transmit().unwrap()).unwrap();
        c.handle(&s.poll_transmit().unwrap()).unwrap();
        let forged = encode_message(
            TAG_SERVER_PROOF,
            &Proof {
                identity: client_cfg().local,
                mac: [0; 32],
            },
        )
        .unwrap();
        assert_eq!(c.handle(&forged), Err(HandshakeError::Reflection));
        assert_failed_quietly(&mut c);

        // A "server" that echoes the client's nonce back.
        let mut c = Handshake::client(client_cfg(), NC);
        let mut s = Handshake::server(server_cfg(), NC);
        // (The server refuses too, as its nonce equals the client's.)
        assert_eq!(
            s.handle(&c.poll_transmit().unwrap()),
            Err(HandshakeError::Reflection)
        );
        let forged = encode_message(
            TAG_CHALLENGE,
            &Challenge {
                version: PROTOCOL_VERSION,
                caps: 0,
                nonce_s: NC,
            },
        )
        .unwrap();
        assert_eq!(c.handle(&forged), Err(HandshakeError::Reflection));
        assert_failed_quietly(&mut c);

        // Mirror attack: node A runs a client and a server with the same cookie and identity.
        // The attacker copies A's client Hello to A's server, A's server Challenge back to A's
        // client and A's client proof to A's server, hoping A proves for itself. The proof
        // would verify (same cookie, same transcript); the identity check refuses it.
        let node_a = config("secret", "10.0.0.1:9000", 99);
        let mut a_client = Handshake::client(node_a.clone(), NC);
        let mut a_server = Handshake::server(node_a.clone(), NS);
        a_server.handle(&a_client.poll_transmit().unwrap()).unwrap();
        a_client.handle(&a_server.poll_transmit().unwrap()).unwrap();
        assert_eq!(
            a_server.handle(&a_client.poll_transmit().unwrap()),
            Err(HandshakeError::Reflection)
        );
        assert_failed_quietly(&mut a_server);
        // The same with an attacker's own Hello in front: A's server refuses A's proof.
        let mut a_client = Handshake::client(node_a.clone(), NC);
        let mut a_server = Handshake::server(node_a, NS);
        let mut attacker = Handshake::client(config("guess", "evil:2", 3), [9; NONCE_LEN]);
        a_server.handle(&attacker.poll_transmit().unwrap()).unwrap();
        let challenge = a_server.poll_transmit().unwrap();
        let _hello = a_client.poll_transmit().unwrap();
        a_client.handle(&challenge).unwrap();
        assert_eq!(
            a_server.handle(&a_client.poll_transmit().unwrap()),
            Err(HandshakeError::Reflection)
        );
        assert_failed_quietly(&mut a_server);
        let mut a_server = Handshake::server(config("secret", "10.0.0.1:9000", 99), NS);
        a_server.handle(&attacker_hello()).unwrap();
        let challenge = a_server.poll_transmit().unwrap();

        // A "client" that echoes the server's own Challenge back to it.
        assert_eq!(
            a_server.handle(&challenge),
            Err(HandshakeError::Unexpected("challenge"))
        );
        assert_failed_quietly(&mut a_server);

        // A "client" that sends another server's ServerProof (same nonces) as its proof: the
        // labels differ, so it does not verify.
        let mut c = Handshake::client(client_cfg(), NC);
        let mut s = Handshake::server(server_cfg(), NS);
        let log = pump(&mut c, &mut s).unwrap();
        let server_proof = &log[3].1;
        let mut s2 = Handshake::server(config("secret", "127.0.0.1:9002", 23), NS);
        let mut c2 = Handshake::client(client_cfg(), NC);
        s2.handle(&c2.poll_transmit().unwrap()).unwrap();
        let mut as_client_proof = server_proof.clone();
        as_client_proof[0] = TAG_CLIENT_PROOF;
        assert_eq!(s2.handle(&as_client_proof), Err(HandshakeError::BadCookie));
        assert_failed_quietly(&mut s2);
    }

    /// A Hello from some other client, for tests that need one.
    fn attacker_hello() -> Vec<u8> {
        Handshake::client(config("guess", "evil:2", 3), [9; NONCE_LEN])
            .poll_transmit()
            .unwrap()
    }

    #[test]
    fn unauthenticated_peer_learns_only_the_version() {
        // A client without the cookie talks to the server: everything the server sends before
        // failing is a Challenge holding only the version and a nonce, then a Reject.
        let mut c = Handshake::client(config("wrong", "127.0.0.1:9001", 11), NC);
        let mut s = Handshake::server(server_cfg(), NS);
        assert_eq!(
            pump(&mut c, &mut s).unwrap_err(),
            (Role::Server, HandshakeError::BadCookie)
        );
        let mut c = Handshake::client(config("wrong", "127.0.0.1:9001", 11), NC);
        let mut s = Handshake::server(server_cfg(), NS);
        s.handle(&c.poll_transmit().unwrap()).unwrap();
        let challenge = s.poll_transmit().unwrap();
        assert_eq!(challenge[0], TAG_CHALLENGE);
        // decode_body refuses trailing bytes: nothing else rides along.
        let body: Challenge = decode_body(&challenge[1..]).unwrap();
        assert_eq!((body.version, body.nonce_s), (PROTOCOL_VERSION, NS));
        c.handle(&challenge).unwrap();
        assert!(s.handle(&c.poll_transmit().unwrap()).is_err());
        let reject = s.poll_transmit().unwrap();
        let reason = reject_reason(&reject);
        assert!(!reason.contains("9000"), "{reason}");
        assert!(s.poll_transmit().is_none());
        // Nor does the client name itself before it has the server's Challenge.
        let hello = Handshake::client(client_cfg(), NC).poll_transmit().unwrap();
        let body: Hello = decode_body(&hello[1..]).unwrap();
        assert_eq!(body.nonce_c, NC);
        assert!(!hello.windows(4).any(|w| w == b"9001"));
    }

    #[test]
    fn unsupported_version() {
        let hello = Hello {
            magic: MAGIC,
            versions: (7, 9),
            caps: 0,
            nonce_c: NC,
        };
        let mut s = Handshake::server(server_cfg(), NS);
        assert_eq!(
            s.handle(&encode_message(TAG_HELLO, &hello).unwrap()),
            Err(HandshakeError::UnsupportedVersion {
                ours: PROTOCOL_VERSION,
                theirs: 9
            })
        );
        let reject = s.poll_transmit().unwrap();
        assert!(reject_reason(&reject).starts_with("unsupported protocol version"));
        assert_failed_quietly(&mut s);

        // The client hears about it.
        let mut c = Handshake::client(client_cfg(), NC);
        let _ = c.poll_transmit();
        match c.handle(&reject) {
            Err(HandshakeError::Rejected(reason)) => {
                assert!(reason.starts_with("unsupported protocol version"))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_failed_quietly(&mut c);

        // A server choosing a version the client does not speak (newer, or the retired 1).
        for version in [PROTOCOL_VERSION + 1, 1] {
            let mut c = Handshake::client(client_cfg(), NC);
            let challenge = Challenge {
                version,
                caps: 0,
                nonce_s: NS,
            };
            assert_eq!(
                c.handle(&encode_message(TAG_CHALLENGE, &challenge).unwrap()),
                Err(HandshakeError::UnsupportedVersion {
                    ours: PROTOCOL_VERSION,
                    theirs: version
                })
            );
            assert_failed_quietly(&mut c);
        }

        // A client that speaks only the retired version 1 is refused.
        let hello = Hello {
            magic: MAGIC,
            versions: (1, 1),
            caps: 0,
            nonce_c: NC,
        };
        let mut s = Handshake::server(server_cfg(), NS);
        assert_eq!(
            s.handle(&encode_message(TAG_HELLO, &hello).unwrap()),
            Err(HandshakeError::UnsupportedVersion {
                ours: PROTOCOL_VERSION,
                theirs: 1
            })
        );

        // A newer client that also speaks ours is served ours.
        let hello = Hello {
            magic: MAGIC,
            versions: (1, 9),
            caps: 0,
            nonce_c: NC,
        };
        let mut s = Handshake::server(server_cfg(), NS);
        s.handle(&encode_message(TAG_HELLO, &hello).unwrap())
            .unwrap();
        let m = s.poll_transmit().unwrap();
        let challenge: Challenge = decode_body(&m[1..]).unwrap();
        assert_eq!(challenge.version, PROTOCOL_VERSION);
    }

    #[test]
    fn malformed_messages() {
        let valid_hello = Handshake::client(client_cfg(), NC).poll_transmit().unwrap();

        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            ("unknown tag", vec![0xff, 1, 2, 3]),
            ("tag only", vec![TAG_HELLO]),
            ("truncated", valid_hello[..valid_hello.len() - 1].to_vec()),
            ("trailing", {
                let mut m = valid_hello.clone();
                m.push(0);
                m
            }),
            ("bad magic", {
                let mut m = valid_hello.clone();
                m[1] = b'x';
                m
            }),
            ("wrong state", {
                encode_message(
                    TAG_CLIENT_PROOF,
                    &Proof {
                        identity: ident("x:1", 1),
                        mac: [0; 32],
                    },
                )
                .unwrap()
            }),
            ("oversized", {
                let mut m = valid_hello.clone();
                m.resize(DEFAULT_MAX_MESSAGE + 1, 0);
                m
            }),
            ("huge length prefix", {
                // A Reject whose reason claims u64::MAX bytes.
                let mut m = vec![TAG_REJECT, 0xff];
                m.extend_from_slice(&u64::MAX.to_le_bytes());
                m
            }),
            ("bad reject", vec![TAG_REJECT, 0xfb, 0xff, 0xff]),
        ];
        for (what, bytes) in cases {
            let mut s = Handshake::server(server_cfg(), NS);
            let result = s.handle(&bytes);
            assert!(result.is_err(), "{what}: accepted");
            match (what, result.unwrap_err()) {
                ("oversized", e) => assert_eq!(
                    e,
                    HandshakeError::TooLarge {
                        len: DEFAULT_MAX_MESSAGE + 1,
                        max: DEFAULT_MAX_MESSAGE
                    }
                ),
                ("wrong state", e) => {
                    assert_eq!(e, HandshakeError::Unexpected("client proof"))
                }
                (_, e) => assert!(matches!(e, HandshakeError::Malformed(_)), "{what}: {e:?}"),
            }
            assert_failed_quietly(&mut s);
        }

        // The oversize limit is configurable and checked before parsing.
        let mut cfg = server_cfg();
        cfg.max_message = 8;
        let mut s = Handshake::server(cfg, NS);
        assert!(matches!(
            s.handle(&valid_hello),
            Err(HandshakeError::TooLarge { max: 8, .. })
        ));

        // The client's side too: a Hello in place of a Challenge, and an empty message.
        let mut c = Handshake::client(client_cfg(), NC);
        assert_eq!(
            c.handle(&valid_hello),
            Err(HandshakeError::Unexpected("hello"))
        );
        assert_failed_quietly(&mut c);
        let mut c = Handshake::client(client_cfg(), NC);
        assert!(matches!(c.handle(&[]), Err(HandshakeError::Malformed(_))));
        assert_failed_quietly(&mut c);
    }

    #[test]
    fn hostile_reject_reason_is_sanitized() {
        let long = format!("\x1b[31m{}", "x".repeat(10_000));
        let mut cfg = client_cfg();
        cfg.max_message = 20_000;
        let mut c = Handshake::client(cfg, NC);
        let m = encode_message(TAG_REJECT, &Reject { reason: long }).unwrap();
        match c.handle(&m) {
            Err(HandshakeError::Rejected(reason)) => {
                assert!(reason.chars().count() <= MAX_REASON);
                assert!(!reason.chars().any(char::is_control));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn channel_binding_mismatch() {
        let mut ccfg = client_cfg();
        ccfg.channel_binding = b"exporter-a".to_vec();
        let mut scfg = server_cfg();
        scfg.channel_binding = b"exporter-b".to_vec();
        let mut c = Handshake::client(ccfg.clone(), NC);
        let mut s = Handshake::server(scfg, NS);
        assert_eq!(
            pump(&mut c, &mut s).unwrap_err(),
            (Role::Server, HandshakeError::BadCookie)
        );
        assert_failed_quietly(&mut s);

        // Same binding on both sides works.
        let mut scfg = server_cfg();
        scfg.channel_binding = ccfg.channel_binding.clone();
        let mut c = Handshake::client(ccfg, NC);
        let mut s = Handshake::server(scfg, NS);
        pump(&mut c, &mut s).unwrap();
        assert!(c.is_done() && s.is_done());
    }

    #[test]
    fn transcript_is_unambiguous() {
        // Moving bytes between adjacent variable fields changes the transcript.
        let a = client_transcript(2, [0, 0], &NC, &NS, &ident("ab", 1), b"");
        let b = client_transcript(2, [0, 0], &NC, &NS, &ident("a", 1), b"b");
        assert_ne!(a, b);
        let a = server_transcript(
            client_transcript(2, [0, 0], &NC, &NS, &ident("a", 1), b"x"),
            &ident("b", 2),
        );
        let b = server_transcript(
            client_transcript(2, [0, 0], &NC, &NS, &ident("a", 1), b""),
            &ident("xb", 2),
        );
        assert_ne!(a, b);
        // Swapping the nonces changes it too.
        assert_ne!(
            client_transcript(2, [0, 0], &NC, &NS, &ident("a", 1), b""),
            client_transcript(2, [0, 0], &NS, &NC, &ident("a", 1), b"")
        );
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A valid message and a way to build a fresh machine in the state that expects it.
    fn corpus() -> Vec<(Vec<u8>, Maker)> {
        let mut c = Handshake::client(client_cfg(), NC);
        let mut s = Handshake::server(server_cfg(), NS);
        let log = pump(&mut c, &mut s).unwrap();
        let hello = log[0].1.clone();
        let challenge = log[1].1.clone();
        let reject = encode_message(
            TAG_REJECT,
            &Reject {
                reason: "no".into(),
            },
        )
        .unwrap();
        let fresh_server: Maker = Box::new(|| Handshake::server(server_cfg(), NS));
        let fresh_client: Maker = Box::new(|| Handshake::client(client_cfg(), NC));
        let h = hello.clone();
        let server_after_hello: Maker = Box::new(move || {
            let mut s = Handshake::server(server_cfg(), NS);
            s.handle(&h).unwrap();
            s
        });
        let ch = challenge.clone();
        let client_after_challenge: Maker = Box::new(move || {
            let mut c = Handshake::client(client_cfg(), NC);
            c.handle(&ch).unwrap();
            c
        });
        vec![
            (hello, fresh_server),
            (challenge, fresh_client),
            (log[2].1.clone(), server_after_hello),
            (log[3].1.clone(), client_after_challenge),
            (reject, Box::new(|| Handshake::client(client_cfg(), NC))),
        ]
    }

    fn feed(mut h: Handshake, message: &[u8]) {
        let before_failed = h.is_failed();
        match h.handle(message) {
            Ok(()) => assert!(!h.is_failed()),
            Err(_) => {
                assert!(before_failed || h.is_failed() || h.is_done());
                if h.is_failed() {
                    assert_failed_quietly(&mut h);
                }
            }
        }
        while h.poll_transmit().is_some() {}
        let _ = h.handle(message);
    }

    #[test]
    fn robustness_truncations_and_mutations() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for (message, make) in corpus() {
            // The valid message itself is accepted (or, for Reject, reported as a rejection).
            let mut h = make();
            let _ = h.poll_transmit();
            let ok = h.handle(&message);
            assert!(
                ok.is_ok() || matches!(ok, Err(HandshakeError::Rejected(_))),
                "{ok:?}"
            );
            // Every truncation.
            for len in 0..message.len() {
                let mut h = make();
                assert!(
                    h.handle(&message[..len]).is_err(),
                    "truncation {len} accepted"
                );
                assert_failed_quietly(&mut h);
            }
            // Random mutations.
            for _ in 0..3000 {
                let mut m = message.clone();
                for _ in 0..=rng.below(4) {
                    match rng.below(5) {
                        0 if !m.is_empty() => {
                            let i = rng.below(m.len());
                            m[i] ^= 1 << rng.below(8);
                        }
                        1 if !m.is_empty() => {
                            let i = rng.below(m.len());
                            m[i] = rng.next() as u8;
                        }
                        2 => {
                            let i = rng.below(m.len() + 1);
                            m.insert(i, rng.next() as u8);
                        }
                        3 if !m.is_empty() => {
                            let i = rng.below(m.len());
                            m.remove(i);
                        }
                        _ if !m.is_empty() => {
                            let i = rng.below(m.len());
                            m[i] = [0x00, 0xfb, 0xfc, 0xfd, 0xff][rng.below(5)];
                        }
                        _ => {}
                    }
                }
                feed(make(), &m);
            }
        }
    }

    #[test]
    fn cookie_basics() {
        let cookie = Cookie::new(b"hunter2".to_vec()).unwrap();
        let debug = format!("{cookie:?}");
        assert_eq!(debug, "Cookie(<redacted>)");
        assert!(!debug.contains("hunter2"));
        let cfg_debug = format!("{:?}", HandshakeConfig::new(cookie.clone(), ident("a", 1)));
        assert!(!cfg_debug.contains("hunter2"));
        assert_eq!(cookie.as_bytes(), b"hunter2");

        let parsed: Cookie = "  hunter2\n".parse().unwrap();
        assert_eq!(parsed.as_bytes(), b"hunter2");
        assert_eq!(" \t\n".parse::<Cookie>().unwrap_err(), CookieError::Empty);
        assert_eq!("".parse::<Cookie>().unwrap_err(), CookieError::Empty);
        assert_eq!(Cookie::new(Vec::new()).unwrap_err(), CookieError::Empty);
        assert_eq!(CookieError::Empty.to_string(), "the cookie is empty");
    }

    #[test]
    fn error_messages_are_lower_case() {
        let errors = [
            HandshakeError::UnsupportedVersion { ours: 1, theirs: 9 },
            HandshakeError::Malformed("x".into()),
            HandshakeError::Unexpected("hello"),
            HandshakeError::TooLarge { len: 2, max: 1 },
            HandshakeError::BadCookie,
            HandshakeError::Reflection,
            HandshakeError::Rejected("x".into()),
            HandshakeError::Failed,
        ];
        for e in errors {
            let s = e.to_string();
            assert!(s.starts_with(|c: char| c.is_lowercase()), "{s}");
        }
    }

    /// Capability flags: both sides learn the flags both offer; a flag stripped in transit
    /// (a Hello rewritten by someone in the middle) fails the proofs.
    #[test]
    fn capabilities_are_agreed_and_cannot_be_stripped() {
        let mut ccfg = client_cfg();
        ccfg.capabilities = 0b101;
        let mut scfg = server_cfg();
        scfg.capabilities = 0b110;
        let mut c = Handshake::client(ccfg.clone(), NC);
        let mut s = Handshake::server(scfg.clone(), NS);
        while !(c.is_done() && s.is_done()) {
            let mut moved = false;
            while let Some(m) = c.poll_transmit() {
                s.handle(&m).unwrap();
                moved = true;
            }
            while let Some(m) = s.poll_transmit() {
                c.handle(&m).unwrap();
                moved = true;
            }
            assert!(moved, "the handshake stalled");
        }
        assert_eq!(c.capabilities(), Some(0b100));
        assert_eq!(s.capabilities(), Some(0b100));
        // Someone in the middle clears the client's offer in its Hello: the server's check of
        // the client's proof fails.
        let mut c = Handshake::client(ccfg, NC);
        let mut s = Handshake::server(scfg, NS);
        let hello = c.poll_transmit().unwrap();
        let mut forged: Hello = decode_body(&hello[1..]).unwrap();
        forged.caps = 0;
        s.handle(&encode_message(TAG_HELLO, &forged).unwrap())
            .unwrap();
        let challenge = s.poll_transmit().unwrap();
        c.handle(&challenge).unwrap();
        let proof = c.poll_transmit().unwrap();
        assert!(s.handle(&proof).is_err());
        assert_eq!(s.capabilities(), None);
    }
}
