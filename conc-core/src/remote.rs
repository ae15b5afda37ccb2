//! The boundary with the node layer: the hook a node installs so that remote pids hand their
//! messages to the network, the serde forms of pids and reply handles, and persistent URIs.
//!
//! Core knows nothing of the wire format: a message for another node is handed to the node's
//! [`RemoteSink`] as an [`erased_serde::Serialize`], and a message from another node arrives as
//! an [`erased_serde::Deserializer`]; the node chooses the format (bincode, in conc-wire).
//!
//! Type erasure costs a dynamic call per serde primitive (a `[u8; 32]` is 32 of them), so a node
//! may also register a [`Codec`] for a message type ([`Runtime::register_codec`]): two
//! functions made where both the type and the format are known, which core calls with opaque
//! byte buffers, one dynamic call per message. Pids and processes of a type with a codec use
//! it; everything else takes the erased path, with the same result.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Message;
use crate::call::{ReplyInner, ReplyTo};
use crate::error::RemoteError;
use crate::exit::{ExitReason, ProcessId};
use crate::pid::{Pid, PidInner};
use crate::process::Proc;
use crate::runtime::{RtInner, Runtime};
use crate::tag::TypeTag;

/// A boxed future, as returned by [`RemoteSink::ready`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a `&M` into a serializable trait object; captured where `M: Serialize` is known.
pub(crate) type EraseFn<M> = fn(&M) -> &dyn erased_serde::Serialize;

fn erase<M: Message>(m: &M) -> &dyn erased_serde::Serialize {
    m
}

/// Appends the node's encoding of a message body to a buffer (see [`Codec`]).
pub type EncodeBody<M> = fn(&M, &mut Vec<u8>) -> Result<(), String>;

/// Decodes a message body in the node's encoding (see [`Codec`]).
pub type DecodeBody<M> = fn(&[u8]) -> Result<M, String>;

/// A message's body encoder with the message captured: appends the body's bytes (see
/// [`SendRequest::encode`]).
pub type EncodeInto<'a> = dyn Fn(&mut Vec<u8>) -> Result<(), String> + 'a;

/// A node's wire format for messages of type `M`, made where both are known (the node layer
/// registers one with [`Runtime::register_codec`] for the types it sees in `spawn`, `remote`
/// and `resolve`). Core does not look inside the bytes; the codec must agree exactly with the
/// format the node uses on the erased path.
pub struct Codec<M> {
    /// Encodes a message body.
    pub encode: EncodeBody<M>,
    /// Decodes a message body.
    pub decode: DecodeBody<M>,
}

impl<M> Clone for Codec<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Codec<M> {}

impl<M> fmt::Debug for Codec<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

/// How a remote pid turns its messages into something a sink can send.
pub(crate) struct RemoteFns<M> {
    pub(crate) erase: EraseFn<M>,
    pub(crate) encode: Option<EncodeBody<M>>,
}

impl<M> Clone for RemoteFns<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for RemoteFns<M> {}

/// Called once when a monitor held for or on another node fires: with the exit reason and,
/// when known, the identity of the process that went down (a monitor made through a name
/// learns it from the peer; a node that was lost cannot say).
pub type DownFn = Box<dyn FnOnce(ExitReason, Option<ProcessId>) + Send>;

/// Which process on a node a message is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A process by identity (incarnation and id).
    Id(ProcessId),
    /// The process registered under a name at delivery time.
    Name(String),
}

/// A message for a remote process, handed to [`RemoteSink::send`].
pub struct SendRequest<'a> {
    /// The process on the peer.
    pub target: &'a Target,
    /// The message type's tag; the peer refuses the frame if it does not match the target.
    pub tag: TypeTag,
    /// For a call: the reply id under which the caller waits (the peer reports a refused
    /// request against it, so the call fails at once).
    pub call_ref: Option<u64>,
    /// The message.
    pub body: &'a dyn erased_serde::Serialize,
    /// The message's encoder, when its type has a [`Codec`]: the sink should prefer it to
    /// `body` (same bytes, one dynamic call instead of one per serde primitive).
    pub encode: Option<&'a EncodeInto<'a>>,
}

impl fmt::Debug for SendRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendRequest")
            .field("target", &self.target)
            .field("tag", &self.tag)
            .field("call_ref", &self.call_ref)
            .finish_non_exhaustive()
    }
}

/// A reply for a caller on another node, handed to [`RemoteSink::reply`].
pub struct ReplyRequest<'a> {
    /// The incarnation of the caller's node (a restarted node has no such call).
    pub incarnation: u64,
    /// The reply id the caller waits under.
    pub reply_id: u64,
    /// The reply type's tag.
    pub tag: TypeTag,
    /// The reply.
    pub body: &'a dyn erased_serde::Serialize,
}

impl fmt::Debug for ReplyRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyRequest")
            .field("incarnation", &self.incarnation)
            .field("reply_id", &self.reply_id)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// What a node installs into its runtime (see [`NodeSide::install_hook`](crate::NodeSide::install_hook)).
pub trait NodeHook: Send + Sync + 'static {
    /// This node's name: its listen address (`host:port`) or a generated name if it does not
    /// listen. Local pids serialize with it.
    fn node_name(&self) -> Arc<str>;
    /// Whether `node` names this node (its own name, or an alias of it that the node
    /// recognises, such as `localhost:P` for `127.0.0.1:P`). References to this node resolve
    /// to local processes.
    fn is_self(&self, node: &str) -> bool {
        node == &*self.node_name()
    }
    /// The sink that carries messages to the node named `node`.
    fn remote_sink(&self, node: &str) -> Arc<dyn RemoteSink>;
}

/// The way to one peer node. Implemented by the node layer.
pub trait RemoteSink: Send + Sync + 'static {
    /// The peer's node name.
    fn peer(&self) -> &str;
    /// The runtime of the node that owns this sink (replies to calls are exported into it).
    fn runtime(&self) -> Option<Runtime>;
    /// Encodes and queues a message for the peer. Must not block or wait for the network.
    /// Returns the bytes it queued (the encoded frame's length): `Pid::send_wait` charges the
    /// sending thread by them, so that a process sending large messages yields often (see
    /// [`crate::SEND_BUDGET`]).
    fn send(&self, req: SendRequest<'_>) -> Result<usize, RemoteError>;
    /// Resolves when a send that failed with [`RemoteError::PeerBusy`] may succeed.
    fn ready(&self) -> BoxFuture<'_, ()>;
    /// Encodes and queues a reply for a caller on the peer.
    fn reply(&self, req: ReplyRequest<'_>) -> Result<(), RemoteError>;
    /// Tells the peer that a reply handle of one of its calls was dropped unanswered.
    fn reply_dropped(&self, incarnation: u64, reply_id: u64, panicking: bool);
    /// Monitors a process on the peer; `fire` is called once when it goes down or the peer is
    /// lost. `monitor` identifies it for [`RemoteSink::demonitor`].
    fn monitor(&self, target: &Target, monitor: u64, fire: DownFn);
    /// Removes a monitor set with [`RemoteSink::monitor`].
    fn demonitor(&self, target: &Target, monitor: u64);
    /// Links (or, with `link == false`, unlinks) the local process `from` with a process on
    /// the peer: an abnormal exit of either reaches the other, and losing the peer reaches the
    /// local process as an exit with reason no-connection.
    fn link(&self, target: &Target, from: ProcessId, link: bool);
    /// Kills a process on the peer (reason killed, which it cannot trap): Erlang's
    /// `exit(Pid, kill)`. Nothing is reported back; monitor the process to learn of its exit.
    fn kill(&self, target: &Target);
    /// Sends an exit signal with `reason` from the local process `from` to a process on the
    /// peer (Erlang's `exit(Pid, Reason)`; see [`crate::Inbox::send_exit`]). Fire and forget,
    /// ordered after the messages sent to the target before.
    fn exit(&self, target: &Target, from: ProcessId, reason: ExitReason);
    /// Whether the process may be alive as far as this node knows: `false` once the peer's
    /// node is known to be lost, or (for a process by id) to have restarted since.
    fn presumed_alive(&self, target: &Target) -> bool;
}

/// A remote process: its node, which process, its type tag, and the way there.
pub(crate) struct RemotePid {
    pub(crate) node: Arc<str>,
    pub(crate) target: Target,
    pub(crate) tag: TypeTag,
    pub(crate) sink: Arc<dyn RemoteSink>,
}

/// A reply handle of a call made on another node.
pub(crate) struct RemoteReply {
    pub(crate) node: Arc<str>,
    pub(crate) incarnation: u64,
    pub(crate) reply_id: u64,
    pub(crate) tag: TypeTag,
    pub(crate) sink: Arc<dyn RemoteSink>,
    /// Set once the handle was answered or forwarded: its drop then tells nobody.
    used: AtomicBool,
}

impl RemoteReply {
    pub(crate) fn mark_used(&self) {
        self.used.store(true, Ordering::Release);
    }

    /// Returns true (once) if the handle was neither answered nor forwarded.
    pub(crate) fn take_unused(&self) -> bool {
        !self.used.swap(true, Ordering::AcqRel)
    }
}

thread_local! {
    static DECODE_CONTEXT: RefCell<Vec<Arc<RtInner>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `rt` as the runtime into which pids and reply handles being decoded are
/// resolved. Serde derives offer no way to pass context down to nested values, so the context
/// is a scoped thread-local: set for the duration of one decode on the decoding thread only.
pub(crate) fn with_decode_context<T>(rt: &Arc<RtInner>, f: impl FnOnce() -> T) -> T {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            DECODE_CONTEXT.with(|c| c.borrow_mut().pop());
        }
    }
    DECODE_CONTEXT.with(|c| c.borrow_mut().push(rt.clone()));
    let _pop = Pop;
    f()
}

fn decode_context() -> Option<Arc<RtInner>> {
    DECODE_CONTEXT.with(|c| c.borrow().last().cloned())
}

impl Runtime {
    /// Runs `f` so that pids and reply handles deserialized inside it resolve against this
    /// runtime. The node layer wraps every decode of a peer's message in it; applications need
    /// it only to decode pids from their own storage (see also [`ProcessUri`]).
    pub fn decode_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        with_decode_context(&self.inner, f)
    }

    /// A typed pid for a persistent reference. A reference to a process of this node resolves
    /// locally (to a dead pid if that process is gone or of an earlier incarnation); any other
    /// goes through the node's sink for its node. Fails if no node is started.
    pub fn resolve<M: Message>(&self, uri: &ProcessUri) -> Result<Pid<M>, RemoteError> {
        let hook = self.inner.hook.get().ok_or(RemoteError::NotStarted)?;
        let me = hook.node_name();
        if uri.node == *me || hook.is_self(&uri.node) {
            return match &uri.target {
                Target::Id(pid) if pid.incarnation == self.inner.incarnation => Ok(self
                    .inner
                    .proc_by_id(pid.id)
                    .and_then(|p| p.as_any().downcast::<Proc<M>>().ok())
                    .map(Pid::local)
                    .unwrap_or_else(|| Pid::dead(me.clone(), *pid))),
                Target::Id(pid) => Ok(Pid::dead(me.clone(), *pid)),
                Target::Name(name) => Ok(self.whereis::<M>(name).unwrap_or_else(|_| {
                    remote_pid(&self.inner, hook.as_ref(), &uri.node, uri.target.clone())
                })),
            };
        }
        Ok(remote_pid(
            &self.inner,
            hook.as_ref(),
            &uri.node,
            uri.target.clone(),
        ))
    }
}

fn remote_pid<M: Message>(rt: &RtInner, hook: &dyn NodeHook, node: &str, target: Target) -> Pid<M> {
    Pid::remote(
        Arc::new(RemotePid {
            node: node.into(),
            target,
            tag: rt.tag_of::<M>(),
            sink: hook.remote_sink(node),
        }),
        RemoteFns {
            erase: erase::<M>,
            encode: rt.codec::<M>().map(|c| c.encode),
        },
    )
}

/// The persistent, printable form of a pid: `conc://host:port/<incarnation>/<id>` for a process
/// by identity, `conc://host:port/name/<name>` for whatever process holds a name. It parses back
/// with [`FromStr`], so references can be stored in files or pages and used later with
/// [`Runtime::resolve`]. A reference by name keeps working when the named process restarts; a
/// reference by identity to a process of an earlier incarnation of its node is refused.
///
/// ```
/// use conc_core::ProcessUri;
/// let uri: ProcessUri = "conc://127.0.0.1:9000/name/logger".parse().unwrap();
/// assert_eq!(uri.to_string(), "conc://127.0.0.1:9000/name/logger");
/// let uri: ProcessUri = "conc://127.0.0.1:9000/42/7".parse().unwrap();
/// assert_eq!(uri.node, "127.0.0.1:9000");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProcessUri {
    /// The node's name (`host:port`).
    pub node: String,
    /// Which process.
    pub target: Target,
}

impl ProcessUri {
    /// A reference to whatever process holds `name` on `node`.
    pub fn named(node: impl Into<String>, name: impl Into<String>) -> Self {
        ProcessUri {
            node: node.into(),
            target: Target::Name(name.into()),
        }
    }
}

impl fmt::Display for ProcessUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Id(p) => write!(f, "conc://{}/{}/{}", self.node, p.incarnation, p.id),
            Target::Name(n) => write!(f, "conc://{}/name/{}", self.node, n),
        }
    }
}

/// Why a string is not a pid URI.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid pid uri {uri:?}: {reason}")]
pub struct ParseUriError {
    uri: String,
    reason: &'static str,
}

impl FromStr for ProcessUri {
    type Err = ParseUriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseUriError {
            uri: s.to_string(),
            reason,
        };
        let rest = s
            .strip_prefix("conc://")
            .ok_or_else(|| err("must start with conc://"))?;
        let (node, path) = rest
            .split_once('/')
            .ok_or_else(|| err("missing path after the node"))?;
        if node.is_empty() {
            return Err(err("empty node"));
        }
        let (first, second) = path
            .split_once('/')
            .ok_or_else(|| err("path must be <incarnation>/<id> or name/<name>"))?;
        let target = if first == "name" {
            if second.is_empty() || second.contains('/') {
                return Err(err("bad name"));
            }
            Target::Name(second.to_string())
        } else {
            let incarnation = first.parse().map_err(|_| err("bad incarnation"))?;
            let id = second.parse().map_err(|_| err("bad id"))?;
            Target::Id(ProcessId { incarnation, id })
        };
        Ok(ProcessUri {
            node: node.to_string(),
            target,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct PidRepr {
    node: String,
    target: Target,
    tag: TypeTag,
}

#[derive(Serialize, Deserialize)]
struct ReplyRepr {
    node: String,
    incarnation: u64,
    reply_id: u64,
    tag: TypeTag,
}

impl<M: Message> Serialize for Pid<M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let repr = match &self.inner {
            PidInner::Local(p) => {
                let rt =
                    p.rt.upgrade()
                        .ok_or_else(|| S::Error::custom(RemoteError::NotStarted))?;
                let node = rt
                    .node_name()
                    .ok_or_else(|| S::Error::custom(RemoteError::NotStarted))?;
                PidRepr {
                    node: node.to_string(),
                    target: Target::Id(p.process_id_inner()),
                    tag: rt.tag_of::<M>(),
                }
            }
            PidInner::Dead(node, id) => PidRepr {
                node: node.to_string(),
                target: Target::Id(*id),
                tag: TypeTag::of::<M>(),
            },
            PidInner::Remote(r, _) => PidRepr {
                node: r.node.to_string(),
                target: r.target.clone(),
                tag: r.tag,
            },
        };
        repr.serialize(s)
    }
}

impl<'de, M: Message> Deserialize<'de> for Pid<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = PidRepr::deserialize(d)?;
        if crate::shape::tracing() {
            // Tracing a message type's shape: a pid is its wire form, whatever its type.
            return Ok(Pid {
                inner: PidInner::Dead(
                    repr.node.into(),
                    ProcessId {
                        incarnation: 0,
                        id: 0,
                    },
                ),
            });
        }
        let rt = decode_context()
            .ok_or_else(|| D::Error::custom("a pid can only be decoded by a node"))?;
        if repr.tag != rt.tag_of::<M>() {
            return Err(D::Error::custom(format!(
                "pid type mismatch: expected a pid of {}",
                std::any::type_name::<M>()
            )));
        }
        let rt = Runtime { inner: rt };
        rt.resolve::<M>(&ProcessUri {
            node: repr.node,
            target: repr.target,
        })
        .map_err(D::Error::custom)
    }
}

impl<R: Message> Serialize for ReplyTo<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let repr = match &self.inner {
            ReplyInner::Local { slot, rt } => {
                let rt = rt
                    .upgrade()
                    .ok_or_else(|| S::Error::custom(RemoteError::ShuttingDown))?;
                let node = rt
                    .node_name()
                    .ok_or_else(|| S::Error::custom(RemoteError::NotStarted))?;
                let reply_id = match slot.exported() {
                    Some(id) => id,
                    None => {
                        let id = rt.export_reply(slot.clone());
                        slot.set_exported(id);
                        id
                    }
                };
                ReplyRepr {
                    node: node.to_string(),
                    incarnation: rt.incarnation,
                    reply_id,
                    tag: rt.tag_of::<R>(),
                }
            }
            ReplyInner::Remote(r, _) => {
                r.mark_used();
                ReplyRepr {
                    node: r.node.to_string(),
                    incarnation: r.incarnation,
                    reply_id: r.reply_id,
                    tag: r.tag,
                }
            }
            ReplyInner::Spent => return Err(S::Error::custom("reply handle already used")),
        };
        repr.serialize(s)
    }
}

impl<'de, R: Message> Deserialize<'de> for ReplyTo<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = ReplyRepr::deserialize(d)?;
        if crate::shape::tracing() {
            // Tracing a message type's shape: a reply handle is its wire form.
            return Ok(ReplyTo {
                inner: ReplyInner::Spent,
            });
        }
        let rt = decode_context()
            .ok_or_else(|| D::Error::custom("a reply handle can only be decoded by a node"))?;
        if repr.tag != rt.tag_of::<R>() {
            return Err(D::Error::custom(format!(
                "reply handle type mismatch: expected a reply of {}",
                std::any::type_name::<R>()
            )));
        }
        let hook = rt
            .hook
            .get()
            .ok_or_else(|| D::Error::custom(RemoteError::NotStarted))?;
        Ok(ReplyTo {
            inner: ReplyInner::Remote(
                Arc::new(RemoteReply {
                    sink: hook.remote_sink(&repr.node),
                    node: repr.node.into(),
                    incarnation: repr.incarnation,
                    reply_id: repr.reply_id,
                    tag: repr.tag,
                    used: AtomicBool::new(false),
                }),
                erase::<R>,
            ),
        })
    }
}
