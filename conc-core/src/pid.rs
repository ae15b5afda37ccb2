//! `Pid<M>`: the address of a process, local or remote, and everything sent through it.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::Message;
use crate::call::{CallSlot, ReplyTo};
use crate::error::{CallError, SendError, SendErrorKind};
use crate::exit::{MonitorRef, ProcessId};
use crate::process::{AnyProc, Proc, Watcher};
use crate::remote::{EncodeInto, ProcessUri, RemoteFns, RemotePid, SendRequest, Target};
use crate::runtime::{RtInner, Runtime, add_watcher, remove_watcher};

/// How much sending a thread does between two yields of `send_wait`, in units: a send costs
/// one unit plus one per [`BYTES_PER_UNIT`] bytes it queued for a peer (a local send costs
/// one). So a loop of small sends yields every 1,024 sends, and one that queues large
/// messages about every 256 KiB (every send, for messages of that size or more).
pub const SEND_BUDGET: u32 = 1024;

/// The bytes a remote send queues per unit of [`SEND_BUDGET`] (Erlang charges reductions by
/// a message's size in the same way).
pub const BYTES_PER_UNIT: usize = 256;

thread_local! {
    /// Units of sending since this thread last yielded in `send_wait` (a scheduling heuristic,
    /// not shared state).
    static SENT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// What a send that queued `bytes` for a peer (0 for a local send) costs.
fn send_cost(bytes: usize) -> u32 {
    1 + u32::try_from(bytes / BYTES_PER_UNIT).unwrap_or(u32::MAX - 1)
}

/// Charges a send of `cost` units; true when this thread has spent its budget and should yield.
fn charge_send(cost: u32) -> bool {
    SENT.with(|c| {
        let n = c.get().saturating_add(cost);
        if n >= SEND_BUDGET {
            c.set(0);
            true
        } else {
            c.set(n);
            false
        }
    })
}

/// The default timeout of [`Pid::call_default`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The address of a process that receives messages of type `M`, on this node or on another.
///
/// A pid is cheap to clone, `Send + Sync`, and sends the same way whether the process is local
/// or remote. Put inside a message (anywhere: a field, a `Vec`, an `Option`), it travels as a
/// remote reference and arrives as a working pid on the other node. It prints as a URI
/// (`conc://host:port/<incarnation>/<id>` or `conc://host:port/name/<name>`).
pub struct Pid<M> {
    pub(crate) inner: PidInner<M>,
}

pub(crate) enum PidInner<M> {
    /// A process of this node.
    Local(Arc<Proc<M>>),
    /// A process of another node.
    Remote(Arc<RemotePid>, RemoteFns<M>),
    /// A process of this node that had exited when the pid was decoded.
    Dead(Arc<str>, ProcessId),
}

impl<M> Clone for Pid<M> {
    fn clone(&self) -> Self {
        Pid {
            inner: match &self.inner {
                PidInner::Local(p) => PidInner::Local(p.clone()),
                PidInner::Remote(r, e) => PidInner::Remote(r.clone(), *e),
                PidInner::Dead(n, id) => PidInner::Dead(n.clone(), *id),
            },
        }
    }
}

/// What identifies a pid for equality: a process id, or a name on a node.
#[derive(PartialEq, Eq, Hash)]
enum Key<'a> {
    Id(ProcessId),
    Name(&'a str, &'a str),
}

impl<M: Send + 'static> Pid<M> {
    pub(crate) fn local(proc: Arc<Proc<M>>) -> Self {
        Pid {
            inner: PidInner::Local(proc),
        }
    }

    pub(crate) fn remote(remote: Arc<RemotePid>, fns: RemoteFns<M>) -> Self {
        Pid {
            inner: PidInner::Remote(remote, fns),
        }
    }

    pub(crate) fn dead(node: Arc<str>, id: ProcessId) -> Self {
        Pid {
            inner: PidInner::Dead(node, id),
        }
    }

    fn key(&self) -> Key<'_> {
        match &self.inner {
            PidInner::Local(p) => Key::Id(p.process_id_inner()),
            PidInner::Dead(_, id) => Key::Id(*id),
            PidInner::Remote(r, _) => match &r.target {
                Target::Id(id) => Key::Id(*id),
                Target::Name(n) => Key::Name(&r.node, n),
            },
        }
    }

    /// Whether the process lives on this node.
    pub fn is_local(&self) -> bool {
        !matches!(self.inner, PidInner::Remote(..))
    }

    /// The process's identity, or `None` for a remote reference by name.
    pub fn id(&self) -> Option<ProcessId> {
        match self.key() {
            Key::Id(id) => Some(id),
            Key::Name(..) => None,
        }
    }

    /// The process's identity for signals; a reference by name gets a placeholder with id 0.
    pub(crate) fn process_id(&self) -> ProcessId {
        self.id().unwrap_or(ProcessId {
            incarnation: 0,
            id: 0,
        })
    }

    pub(crate) fn remote_parts(&self) -> Option<(&Target, &Arc<dyn crate::RemoteSink>)> {
        match &self.inner {
            PidInner::Remote(r, _) => Some((&r.target, &r.sink)),
            _ => None,
        }
    }

    pub(crate) fn local_proc(&self) -> Option<Arc<dyn AnyProc>> {
        match &self.inner {
            PidInner::Local(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// The persistent form of this pid. See [`ProcessUri`].
    pub fn uri(&self) -> ProcessUri {
        match &self.inner {
            PidInner::Local(p) => ProcessUri {
                node: p
                    .rt
                    .upgrade()
                    .and_then(|rt| rt.node_name())
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "local".to_string()),
                target: Target::Id(p.process_id_inner()),
            },
            PidInner::Dead(node, id) => ProcessUri {
                node: node.to_string(),
                target: Target::Id(*id),
            },
            PidInner::Remote(r, _) => ProcessUri {
                node: r.node.to_string(),
                target: r.target.clone(),
            },
        }
    }

    /// Sends a message. Never blocks and never waits for the network: a remote message is
    /// encoded and queued for its peer.
    ///
    /// # Error or dead letter
    ///
    /// `send` returns an error, handing the message back in [`SendError::message`], only for
    /// what this node knows at the moment of the send; anything learnt later is a dead letter,
    /// counted by the node (`Node::dead_letters`, `Node::stats`, the `conc_dead_letters_total`
    /// metric, by reason) and logged, as Erlang's `!` never fails and loses messages silently
    /// only where this node cannot know.
    ///
    /// | case | `send` | afterwards |
    /// |---|---|---|
    /// | local: the process has exited (or the pid is of an exited process) | `Err(NoSuchProcess)` | — |
    /// | local: its bounded mailbox is full | `Err(MailboxFull)` | — (or use [`Pid::send_wait`]) |
    /// | remote: the peer's outbound queue is full | `Err(Remote(PeerBusy))` | — (or [`Pid::send_wait`]) |
    /// | remote: the peer is known unreachable (in reconnect backoff), refused by the dial policy, or one peer too many | `Err(Remote(Connection / DialRefused / TooManyPeers))` | — |
    /// | remote: this node is shutting down | `Err(Remote(ShuttingDown))` | — |
    /// | remote: the message cannot be encoded, or its frame exceeds `max_frame` | `Err(Remote(Encode))` | — |
    /// | remote: queued, then the connection fails before it was written (or, per-message TCP, acknowledged) | `Ok` | dead letter `no connection` on this node |
    /// | remote: delivered, and the peer refuses it (no such process, unknown name, type mismatch, mailbox still full after the backpressure wait, undecodable) | `Ok` | dead letter `refused by peer: …` on this node and `refused: …` on the peer |
    /// | remote: sent to a pid of an earlier incarnation of a restarted node | `Ok` | refused by the new incarnation: dead letter as above |
    /// | accepted into the mailbox, but the process exits before receiving it | `Ok` | dropped uncounted, as in Erlang |
    ///
    /// A [`call`](Pid::call) reports the same cases as a [`CallError`](crate::CallError)
    /// instead: `Send` for an error of `send`, `Refused` or `Exited(NoConnection)` for what is
    /// learnt later, and fails at once rather than by its timeout.
    pub fn send(&self, msg: M) -> Result<(), SendError<M>> {
        self.send_inner(msg, None).map(drop)
    }

    /// Sends; returns the bytes queued for a peer (0 for a local send).
    fn send_inner(&self, msg: M, call_ref: Option<u64>) -> Result<usize, SendError<M>> {
        match &self.inner {
            PidInner::Local(p) => p
                .push(msg)
                .map(|()| 0)
                .map_err(|(kind, message)| SendError { kind, message }),
            PidInner::Remote(r, fns) => {
                let res = {
                    let m = &msg;
                    let encode = fns.encode.map(|e| move |out: &mut Vec<u8>| e(m, out));
                    r.sink.send(SendRequest {
                        target: &r.target,
                        tag: r.tag,
                        call_ref,
                        body: (fns.erase)(m),
                        encode: encode.as_ref().map(|f| f as &EncodeInto<'_>),
                    })
                };
                match res {
                    Ok(bytes) => Ok(bytes),
                    Err(e) => Err(SendError {
                        kind: SendErrorKind::Remote(e),
                        message: msg,
                    }),
                }
            }
            PidInner::Dead(..) => Err(SendError {
                kind: SendErrorKind::NoSuchProcess,
                message: msg,
            }),
        }
    }

    /// Sends a message, waiting for room when the target's bounded mailbox (local) or the
    /// peer's outbound queue (remote) is full. Other failures return at once. Prefer it to
    /// `send` in long send loops: it yields to the scheduler now and then, so the receiver and
    /// the transport run meanwhile (a loop of plain `send`s never yields).
    ///
    /// How often it yields depends on what was sent, as Erlang charges a send reductions by
    /// its size: each send costs one unit, plus one per [`BYTES_PER_UNIT`] bytes it queued for
    /// a peer, and the thread yields once it has spent [`SEND_BUDGET`] units: every 1,024
    /// small sends, after every send of 256 KiB or more. A process streaming large messages
    /// thus gives its thread back to the connection's writer and to other processes between
    /// messages, instead of encoding one after another.
    pub async fn send_wait(&self, mut msg: M) -> Result<(), SendError<M>> {
        let sent = match &self.inner {
            PidInner::Local(p) => p
                .push_wait(msg)
                .await
                .map(|()| 0)
                .map_err(|(kind, message)| SendError { kind, message }),
            PidInner::Remote(r, _) => loop {
                match self.send_inner(msg, None) {
                    Err(SendError {
                        kind: SendErrorKind::Remote(crate::RemoteError::PeerBusy(_)),
                        message,
                    }) => {
                        msg = message;
                        r.sink.ready().await;
                    }
                    other => break other,
                }
            },
            PidInner::Dead(..) => return self.send(msg),
        };
        let bytes = sent?;
        // Cooperative: charged by size, like Erlang's reductions, so that the receiver, the
        // transport's tasks woken by these sends and other processes get to run.
        if charge_send(send_cost(bytes)) {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// A synchronous call (the seed's `send-synchronous`): builds the request with a fresh
    /// [`ReplyTo`], sends it, and waits for the reply to that exact request. A full bounded
    /// mailbox or a full outbound queue is waited on (within the same timeout). Fails at once if the
    /// request cannot be sent, if the callee exits (or drops the reply handle) before replying,
    /// or if its node reports the request undeliverable; fails with
    /// [`CallError::Timeout`] after `timeout`. A reply that arrives after the timeout is dropped.
    pub async fn call<R: Message>(
        &self,
        make: impl FnOnce(ReplyTo<R>) -> M,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let slot = Arc::new(CallSlot::<R>::new());
        match &self.inner {
            PidInner::Local(p) => {
                let proc: Arc<dyn AnyProc> = p.clone();
                let rt = p.rt.upgrade();
                let mref = rt.as_ref().map(|rt| rt.next_ref()).unwrap_or(MonitorRef(0));
                slot.set_callee(p.id);
                add_watcher(&proc, mref, Watcher::Call(slot.clone()));
                // Cleans up however the call ends, including when its future is dropped.
                let _guard = CallGuard {
                    slot: &*slot,
                    cleanup: Cleanup::Watcher(&*proc, mref),
                };
                let reply = ReplyTo::local(slot.clone(), p.rt.clone(), None);
                // A full bounded mailbox is waited on, within the call's timeout.
                let deadline = tokio::time::Instant::now() + timeout;
                match tokio::time::timeout_at(deadline, p.push_wait(make(reply))).await {
                    Ok(Ok(())) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        slot.wait(left, Some(&proc)).await.map_err(|e| match e {
                            CallError::Timeout(_) => CallError::Timeout(timeout),
                            other => other,
                        })
                    }
                    Ok(Err((kind, _msg))) => Err(CallError::Send(kind)),
                    Err(_) => Err(CallError::Timeout(timeout)),
                }
            }
            PidInner::Remote(r, _) => {
                let Some(rt) = r.sink.runtime() else {
                    return Err(CallError::Send(SendErrorKind::Remote(
                        crate::RemoteError::ShuttingDown,
                    )));
                };
                let reply_id = rt.inner.export_reply(slot.clone());
                slot.set_exported(reply_id);
                let _guard = CallGuard {
                    slot: &*slot,
                    cleanup: Cleanup::Export(&rt.inner, reply_id),
                };
                let reply = ReplyTo::local(slot.clone(), Arc::downgrade(&rt.inner), Some(reply_id));
                // A full outbound queue is waited on, within the call's timeout.
                let deadline = tokio::time::Instant::now() + timeout;
                let mut msg = make(reply);
                loop {
                    let ready = r.sink.ready();
                    match self.send_inner(msg, Some(reply_id)) {
                        Ok(_) => break,
                        Err(SendError {
                            kind: SendErrorKind::Remote(crate::RemoteError::PeerBusy(_)),
                            message,
                        }) => {
                            msg = message;
                            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                                return Err(CallError::Timeout(timeout));
                            }
                        }
                        Err(e) => return Err(CallError::Send(e.kind)),
                    }
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                slot.wait(left, None).await.map_err(|e| match e {
                    CallError::Timeout(_) => CallError::Timeout(timeout),
                    other => other,
                })
            }
            PidInner::Dead(..) => Err(CallError::Send(SendErrorKind::NoSuchProcess)),
        }
    }

    /// [`Pid::call`] with the default timeout of five seconds.
    pub async fn call_default<R: Message>(
        &self,
        make: impl FnOnce(ReplyTo<R>) -> M,
    ) -> Result<R, CallError> {
        self.call(make, DEFAULT_CALL_TIMEOUT).await
    }

    /// Registers a watcher on this pid's process: local processes directly, remote ones
    /// through the node hook.
    pub(crate) fn add_watcher_with(
        &self,
        make: impl FnOnce(MonitorRef) -> Watcher,
        rt: &Weak<RtInner>,
    ) -> MonitorRef {
        let mref = rt
            .upgrade()
            .map(|rt| rt.next_ref())
            .unwrap_or(MonitorRef(0));
        match &self.inner {
            PidInner::Local(p) => {
                let proc: Arc<dyn AnyProc> = p.clone();
                add_watcher(&proc, mref, make(mref));
            }
            PidInner::Dead(_, id) => {
                crate::runtime::fire(make(mref), mref, *id, crate::ExitReason::NoSuchProcess);
            }
            PidInner::Remote(r, _) => {
                let watcher = make(mref);
                let pid = self.process_id();
                let fire: crate::remote::DownFn = Box::new(move |reason, actual| {
                    // A monitor made through a name reports the process that held it.
                    crate::runtime::fire(watcher, mref, actual.unwrap_or(pid), reason);
                });
                r.sink.monitor(&r.target, mref.0, fire);
            }
        }
        mref
    }

    pub(crate) fn remove_watcher(&self, mref: MonitorRef) {
        match &self.inner {
            PidInner::Local(p) => remove_watcher(&**p, mref),
            PidInner::Dead(..) => {}
            PidInner::Remote(r, _) => r.sink.demonitor(&r.target, mref.0),
        }
    }

    /// Kills the process with reason killed, which it cannot trap (Erlang's `exit(Pid, kill)`).
    /// A remote process is killed by its node when the signal arrives (fire and forget, ordered
    /// after the messages sent to it before; monitor it to learn of its exit). A dead pid: nothing.
    pub fn kill(&self) {
        match &self.inner {
            PidInner::Local(p) => {
                let p: Arc<dyn AnyProc> = p.clone();
                crate::runtime::kill_with(&p, crate::ExitReason::Killed)
            }
            PidInner::Remote(r, _) => r.sink.kill(&r.target),
            PidInner::Dead(..) => {}
        }
    }

    /// An exit signal from `from` (see [`crate::Inbox::send_exit`]).
    pub(crate) fn exit_from(&self, from: ProcessId, reason: crate::ExitReason) {
        match &self.inner {
            PidInner::Local(p) => {
                let p: Arc<dyn AnyProc> = p.clone();
                crate::runtime::send_exit(&p, from, reason)
            }
            PidInner::Remote(r, _) => r.sink.exit(&r.target, from, reason),
            PidInner::Dead(..) => {}
        }
    }

    /// Whether the process may be alive, as far as this node knows. A local process: it has not
    /// exited (exact). A remote process: `false` once its node is known to be lost, or, for a
    /// pid by id, to have restarted since (a new incarnation was proven); otherwise `true` —
    /// the process may have exited without this node hearing of it. To learn of a remote
    /// exit, monitor the pid.
    pub fn is_alive(&self) -> bool {
        match &self.inner {
            PidInner::Local(p) => !crate::process::lock(&p.ctl).exited,
            PidInner::Dead(..) => false,
            PidInner::Remote(r, _) => r.sink.presumed_alive(&r.target),
        }
    }

    /// The runtime of a local pid.
    pub fn runtime(&self) -> Option<Runtime> {
        match &self.inner {
            PidInner::Local(p) => Runtime::from_weak(&p.rt),
            PidInner::Remote(r, _) => r.sink.runtime(),
            PidInner::Dead(..) => None,
        }
    }
}

impl<M: Send + 'static> PartialEq for Pid<M> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<M: Send + 'static> Eq for Pid<M> {}

impl<M: Send + 'static> Hash for Pid<M> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl<M: Send + 'static> fmt::Display for Pid<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.uri(), f)
    }
}

impl<M: Send + 'static> fmt::Debug for Pid<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pid({})", self.uri())
    }
}

impl<M: Send + 'static> Proc<M> {
    pub(crate) fn process_id_inner(&self) -> ProcessId {
        ProcessId {
            incarnation: self.incarnation,
            id: self.id,
        }
    }
}

/// What a call must undo when it ends.
enum Cleanup<'a> {
    /// Remove the call's watcher from a local callee.
    Watcher(&'a dyn AnyProc, MonitorRef),
    /// Withdraw the reply id exported for a remote callee.
    Export(&'a RtInner, u64),
}

/// Ends a call however it ends (reply, error, timeout, or the call future being dropped): the
/// slot is finished so a late reply is refused, and the watcher or export is removed.
struct CallGuard<'a, R: Send + 'static> {
    slot: &'a CallSlot<R>,
    cleanup: Cleanup<'a>,
}

impl<R: Send + 'static> Drop for CallGuard<'_, R> {
    fn drop(&mut self) {
        self.slot.finish();
        match self.cleanup {
            Cleanup::Watcher(proc, mref) => remove_watcher(proc, mref),
            Cleanup::Export(rt, id) => rt.unexport_reply(id),
        }
    }
}
