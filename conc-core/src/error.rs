//! Error types, one per operation.

use std::fmt;
use std::time::Duration;

use crate::exit::ExitReason;

/// Why a message could not be handed to a remote node (the node layer fills in the detail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// This runtime has no node: start one to send to other nodes.
    #[error("remote send needs a started node: start one with Node::builder().start() first")]
    NotStarted,
    /// The peer's outbound queue is full; the message was not queued.
    #[error("peer busy: outbound queue to {0} is full")]
    PeerBusy(String),
    /// The peer could not be reached or the connection failed.
    #[error("no connection to {peer}: {reason}")]
    Connection {
        /// The peer's name.
        peer: String,
        /// Why.
        reason: DownReason,
    },
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The remote node refused the message (for example a type mismatch or an unknown name).
    #[error("refused by {peer}: {reason}")]
    Refused {
        /// The peer's name.
        peer: String,
        /// The peer's reason.
        reason: Refusal,
    },
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The node already keeps state for as many peer nodes as its limits allow, none of them
    /// idle, so it does not reach this one (the node layer's `Limits::max_peers`).
    #[error("too many peer nodes: not reaching {0}")]
    TooManyPeers(String),
    /// The node's dial policy does not allow reaching this node (the node layer's
    /// `DialPolicy`): a pid that names it, received in a message, cannot be used.
    #[error("not allowed to dial {0} (dial policy)")]
    DialRefused(String),
    /// A call over per-message TCP from a node that does not listen: the reply would come back
    /// on a new connection to the caller, which has no address. Give the node a listen address
    /// (or use a pooled transport, which answers on the caller's own connection).
    #[error(
        "per-message TCP answers calls on a new connection to the caller: this node must listen"
    )]
    NoListener,
}

/// Why a peer node refused a frame it received (the wire's error code, as the user sees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No live process has that id (or the id is of an earlier incarnation of the node).
    #[error("no such process")]
    NoSuchProcess,
    /// No process is registered under that name.
    #[error("unknown name")]
    UnknownName,
    /// The message type does not match the process's.
    #[error("type mismatch")]
    TypeMismatch,
    /// The message (or reply) could not be decoded.
    #[error("undecodable message")]
    Undecodable,
    /// The target's bounded mailbox stayed full.
    #[error("mailbox full")]
    MailboxFull,
    /// The target takes only local messages.
    #[error("the process takes only local messages")]
    LocalOnly,
    /// The frame was malformed.
    #[error("malformed frame")]
    Malformed,
    /// The peer is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A reason this version does not know (a newer peer's).
    #[error("refused")]
    Other,
}

/// Why a peer node is down, the same on every transport: a goodbye (a planned shutdown) is
/// told apart from a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DownReason {
    /// The peer shut down cleanly and said goodbye.
    #[error("the peer said goodbye")]
    Goodbye,
    /// The connection ended without a goodbye (closed, reset, or a write failed).
    #[error("connection lost")]
    ConnectionLost,
    /// The peer sent nothing for longer than the heartbeat timeout.
    #[error("the peer was silent beyond the heartbeat timeout")]
    Silent,
    /// A handshake proved a new incarnation of the peer: the old one is gone.
    #[error("the peer restarted")]
    Restarted,
    /// The peer could not be reached (connect failed or timed out, or a per-message delivery
    /// failed).
    #[error("the peer could not be reached")]
    Unreachable,
    /// The handshake failed: the peer does not know the cookie, speaks an incompatible
    /// version, or its certificate was refused.
    #[error("the handshake failed (wrong cookie, incompatible version or refused certificate)")]
    HandshakeFailed,
    /// The peer broke the protocol (a malformed frame, a frame out of place); its connection
    /// was closed.
    #[error("the peer broke the protocol")]
    ProtocolViolation,
    /// The node reached proved a name that another live node (another incarnation) had
    /// already proved here: two nodes claim one name, and the newcomer was refused.
    #[error("another live node already proved this name")]
    NameConflict,
    /// This node is shutting down.
    #[error("this node is shutting down")]
    ShuttingDown,
}

/// Why `send` failed; the message is handed back.
pub struct SendError<M> {
    /// Why the send failed.
    pub kind: SendErrorKind,
    /// The message that was not sent.
    pub message: M,
}

impl<M> SendError<M> {
    /// Takes the message back.
    pub fn into_message(self) -> M {
        self.message
    }
}

/// The reason part of a [`SendError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// The target process has exited (or never existed).
    #[error("no such process")]
    NoSuchProcess,
    /// The target's bounded mailbox is full.
    #[error("mailbox full")]
    MailboxFull,
    /// The target is a process of this node that accepts only local (non-serializable)
    /// messages, or a remote delivery failed at once.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "send failed: {}", self.kind)
    }
}

impl<M> std::error::Error for SendError<M> {}

/// Why a [`crate::ReplyTo::send`] failed; the reply is handed back.
pub struct ReplyError<R> {
    /// Why.
    pub kind: ReplyErrorKind,
    /// The reply that was not delivered.
    pub reply: R,
}

/// The reason part of a [`ReplyError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyErrorKind {
    /// The caller is no longer waiting (it timed out or was dropped). The reply is dropped.
    #[error("caller is no longer waiting")]
    CallerGone,
    /// The reply could not be sent to the caller's node.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl<R> fmt::Debug for ReplyError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<R> fmt::Display for ReplyError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reply failed: {}", self.kind)
    }
}

impl<R> std::error::Error for ReplyError<R> {}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply came within the timeout. A reply that arrives later is dropped.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The callee exited (or its node was lost) before replying.
    #[error("callee exited before replying: {0}")]
    Exited(ExitReason),
    /// The callee dropped the reply handle without replying.
    #[error("callee dropped the reply handle without replying")]
    NoReply,
    /// The request could not be sent (it never left this node, or its connection failed before
    /// it was delivered).
    #[error("request not sent: {0}")]
    Send(SendErrorKind),
    /// The request reached the callee's node, which refused it (for example no such process,
    /// an unknown name or a type mismatch).
    #[error("request refused by {peer}: {reason}")]
    Refused {
        /// The callee's node.
        peer: String,
        /// Why.
        reason: Refusal,
    },
    /// The caller's own node began shutting down while the call was pending (see
    /// `Node::shutdown`): it fails at once rather than waiting for its timeout. A call made after
    /// shutdown began fails with [`CallError::Send`] and [`RemoteError::ShuttingDown`] instead.
    #[error("call abandoned: this node is shutting down")]
    ShuttingDown,
    /// The callee answered, but its node could not send the reply back (it is larger than the
    /// frame limit, or it could not be encoded): the call fails at once with the reason the
    /// callee's node knows, as it does when the reply handle is dropped.
    #[error("the callee's reply could not be sent: {0}")]
    ReplyNotSent(ReplyFailure),
}

/// Why a callee's node could not send its reply to a remote caller (carried back to the caller
/// in [`CallError::ReplyNotSent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyFailure {
    /// The encoded reply is larger than the callee node's frame limit (`Limits::max_frame`).
    #[error("reply too large for the frame limit")]
    TooLarge,
    /// The reply could not be encoded (its `Serialize` implementation failed).
    #[error("reply could not be encoded")]
    Encode,
}

/// Why a receive with a timeout returned no message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing arrived within the timeout.
    #[error("receive timed out")]
    Timeout,
    /// The runtime is shutting down: no message will arrive.
    #[error("mailbox closed: the runtime is shutting down")]
    Closed,
}

/// Why a name could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The name belongs to another live process.
    #[error("name {0:?} is already registered")]
    Taken(String),
    /// The process has exited (or is remote: only local processes can be registered).
    #[error("cannot register {0:?}: the process is not a live local process")]
    NotLocalOrDead(String),
    /// Names must be non-empty, at most 255 bytes, and must not contain `/`.
    #[error("invalid name {0:?}: names are 1 to 255 bytes without '/'")]
    InvalidName(String),
}

/// Why a name could not be looked up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WhereisError {
    /// No live process has this name.
    #[error("no process registered as {0:?}")]
    NotFound(String),
    /// A process has this name, but it receives another message type.
    #[error("process registered as {name:?} receives {actual}, not {requested}")]
    WrongType {
        /// The name.
        name: String,
        /// The type asked for.
        requested: &'static str,
        /// The type the process receives.
        actual: &'static str,
    },
}

/// Why a frame from another node could not be delivered to a local process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// No live process has that id (or the id is of another incarnation of this node).
    #[error("no such process")]
    NoSuchProcess,
    /// No live process has that name.
    #[error("no process registered as {0:?}")]
    UnknownName(String),
    /// The frame's type tag does not match the process's message type.
    #[error("type mismatch: the process receives {expected}")]
    TypeMismatch {
        /// The type the target receives.
        expected: &'static str,
    },
    /// The target accepts only local messages.
    #[error("the process accepts only local messages")]
    LocalOnly,
    /// The body could not be decoded.
    #[error("cannot decode message: {0}")]
    Decode(String),
    /// The target's bounded mailbox is full.
    #[error("mailbox full")]
    MailboxFull,
    /// The reply id is unknown (the call timed out or never existed); the reply is dropped.
    #[error("no call is waiting for this reply")]
    NoCaller,
}

/// Why the node hook could not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// A node is already started on this runtime.
    #[error("a node is already started on this runtime")]
    AlreadyInstalled,
}
