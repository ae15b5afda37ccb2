//! Calls: the one-shot `ReplyTo<R>` carried in a request, and the slot a caller waits on.

use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::Message;
use crate::error::{
    CallError, DeliverError, RemoteError, ReplyError, ReplyErrorKind, ReplyFailure,
};
use crate::exit::ExitReason;
use crate::process::{AnyProc, CallWatch, lock};
use crate::remote::{EraseFn, RemoteReply, ReplyRequest};
use crate::runtime::RtInner;
use crate::tag::TypeTag;

/// Why a remote call failed before a reply came, as reported by the node layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// The callee exited, or its node was lost.
    Exited(ExitReason),
    /// The callee dropped the reply handle. `panicking` tells whether it was dropped while the
    /// holder was panicking (a local callee's exit reason then follows through its monitor).
    Dropped {
        /// Dropped during a panic.
        panicking: bool,
    },
    /// The request was refused or could not be delivered.
    Remote(RemoteError),
    /// The local callee dropped the handle without panicking: if it is being killed, its
    /// exit reason follows; otherwise the call fails with no reply.
    DroppedByCallee,
    /// This node is shutting down.
    ShuttingDown,
    /// The callee's node could not send the reply.
    ReplyNotSent(ReplyFailure),
}

/// How long a call waits for the exit reason of a callee that dropped the reply handle while
/// panicking or being killed.
const EXIT_GRACE: Duration = Duration::from_millis(500);

enum SlotState<R> {
    Waiting(Option<Waker>),
    Replied(R),
    Failed(CallFailure),
    Finished,
}

/// Where a call's reply lands. Shared by the caller and the `ReplyTo`.
pub(crate) struct CallSlot<R> {
    state: Mutex<SlotState<R>>,
    /// Nonzero once the slot is reachable from another node under this reply id.
    exported: AtomicU64,
    /// The local id of a local callee (0 if remote): a handle dropped while that process
    /// panics or is killed waits for its exit reason.
    callee: AtomicU64,
}

impl<R: Send + 'static> CallSlot<R> {
    pub(crate) fn new() -> Self {
        CallSlot {
            state: Mutex::new(SlotState::Waiting(None)),
            exported: AtomicU64::new(0),
            callee: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_callee(&self, id: u64) {
        self.callee.store(id, Ordering::Release);
    }

    /// Ends the call: a reply arriving from now on is refused.
    pub(crate) fn finish(&self) {
        *lock(&self.state) = SlotState::Finished;
    }

    pub(crate) fn set_exported(&self, id: u64) {
        self.exported.store(id, Ordering::Release);
    }

    pub(crate) fn exported(&self) -> Option<u64> {
        match self.exported.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// Delivers the reply; hands it back if the caller is no longer waiting.
    pub(crate) fn complete(&self, reply: R) -> Result<(), R> {
        let mut st = lock(&self.state);
        match &mut *st {
            SlotState::Waiting(w) => {
                let w = w.take();
                *st = SlotState::Replied(reply);
                drop(st);
                if let Some(w) = w {
                    w.wake();
                }
                Ok(())
            }
            _ => Err(reply),
        }
    }

    pub(crate) fn fail(&self, failure: CallFailure) {
        let mut st = lock(&self.state);
        if let SlotState::Waiting(w) = &mut *st {
            let w = w.take();
            *st = SlotState::Failed(failure);
            drop(st);
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    /// Waits for the outcome. `callee` is the local callee, whose exit reason is awaited when
    /// the reply handle was dropped by a panicking or killed process.
    pub(crate) async fn wait(
        &self,
        timeout: Duration,
        callee: Option<&Arc<dyn AnyProc>>,
    ) -> Result<R, CallError> {
        // After a handle was dropped during a panic of the callee, its exit reason is awaited
        // for at most this long (the panic may have been caught, and the callee lives on).
        let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let outcome = tokio::time::timeout(
            timeout,
            poll_fn(|cx| {
                if let Some(g) = grace.as_mut()
                    && g.as_mut().poll(cx).is_ready()
                {
                    let mut st = lock(&self.state);
                    if let SlotState::Replied(r) = std::mem::replace(&mut *st, SlotState::Finished)
                    {
                        return Poll::Ready(Ok(r));
                    }
                    return Poll::Ready(Err(CallError::NoReply));
                }
                let mut st = lock(&self.state);
                match std::mem::replace(&mut *st, SlotState::Finished) {
                    SlotState::Replied(r) => Poll::Ready(Ok(r)),
                    SlotState::Failed(
                        failure @ (CallFailure::Dropped { .. } | CallFailure::DroppedByCallee),
                    ) => {
                        let exiting = callee.is_some_and(|p| {
                            let ctl = lock(p.ctl());
                            ctl.kill().is_some() || ctl.exited
                        });
                        let wait_for_exit = match failure {
                            CallFailure::Dropped { panicking } => panicking,
                            _ => exiting,
                        };
                        if wait_for_exit && callee.is_some() {
                            // The callee's exit reason arrives through its monitor.
                            *st = SlotState::Waiting(Some(cx.waker().clone()));
                            drop(st);
                            if grace.is_none() {
                                let mut g = Box::pin(tokio::time::sleep(EXIT_GRACE));
                                if g.as_mut().poll(cx).is_ready() {
                                    return Poll::Ready(Err(CallError::NoReply));
                                }
                                grace = Some(g);
                            }
                            Poll::Pending
                        } else {
                            Poll::Ready(Err(CallError::NoReply))
                        }
                    }
                    SlotState::Failed(CallFailure::Exited(reason)) => {
                        Poll::Ready(Err(CallError::Exited(reason)))
                    }
                    SlotState::Failed(CallFailure::Remote(RemoteError::Refused {
                        peer,
                        reason,
                    })) => Poll::Ready(Err(CallError::Refused { peer, reason })),
                    SlotState::Failed(CallFailure::Remote(e)) => {
                        Poll::Ready(Err(CallError::Send(e.into())))
                    }
                    SlotState::Failed(CallFailure::ShuttingDown) => {
                        Poll::Ready(Err(CallError::ShuttingDown))
                    }
                    SlotState::Failed(CallFailure::ReplyNotSent(f)) => {
                        Poll::Ready(Err(CallError::ReplyNotSent(f)))
                    }
                    SlotState::Waiting(_) | SlotState::Finished => {
                        *st = SlotState::Waiting(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                }
            }),
        )
        .await;
        // Whatever happened, a late reply now finds the slot finished and is dropped.
        let last = std::mem::replace(&mut *lock(&self.state), SlotState::Finished);
        match (outcome, last) {
            (Ok(result), _) => result,
            // The reply landed after the last poll but before the timer won: its sender was
            // told it was delivered, so it must not be lost.
            (Err(_), SlotState::Replied(r)) => Ok(r),
            (Err(_), _) => Err(CallError::Timeout(timeout)),
        }
    }
}

impl<R: Send + 'static> CallWatch for CallSlot<R> {
    fn callee_exited(&self, reason: &ExitReason) {
        let mut st = lock(&self.state);
        match &mut *st {
            SlotState::Waiting(w) => {
                let w = w.take();
                *st = SlotState::Failed(CallFailure::Exited(reason.clone()));
                drop(st);
                if let Some(w) = w {
                    w.wake();
                }
            }
            // The handle was dropped during the exit: report the exit reason instead.
            SlotState::Failed(CallFailure::Dropped { .. } | CallFailure::DroppedByCallee) => {
                *st = SlotState::Failed(CallFailure::Exited(reason.clone()));
            }
            _ => {}
        }
    }
}

/// The erased face of a call slot, through which replies from other nodes arrive.
pub(crate) trait ReplySink: Send + Sync {
    fn tag(&self, rt: &crate::runtime::RtInner) -> TypeTag;
    fn type_name(&self) -> &'static str;
    fn deliver(&self, de: &mut dyn erased_serde::Deserializer<'_>) -> Result<(), DeliverError>;
    fn fail(&self, failure: CallFailure);
}

impl<R: Message> ReplySink for CallSlot<R> {
    fn tag(&self, rt: &crate::runtime::RtInner) -> TypeTag {
        rt.tag_of::<R>()
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<R>()
    }

    fn deliver(&self, de: &mut dyn erased_serde::Deserializer<'_>) -> Result<(), DeliverError> {
        let reply: R =
            erased_serde::deserialize(de).map_err(|e| DeliverError::Decode(e.to_string()))?;
        self.complete(reply).map_err(|_| DeliverError::NoCaller)
    }

    fn fail(&self, failure: CallFailure) {
        CallSlot::fail(self, failure)
    }
}

/// A one-shot handle for answering one call, carried inside the request message (the seed's
/// `reply`). It can be sent to another node inside a message; the reply then travels back to
/// the caller's node. Dropping it without replying makes the call fail at once.
pub struct ReplyTo<R> {
    pub(crate) inner: ReplyInner<R>,
}

pub(crate) enum ReplyInner<R> {
    Local {
        slot: Arc<CallSlot<R>>,
        rt: Weak<RtInner>,
    },
    Remote(Arc<RemoteReply>, EraseFn<R>),
    Spent,
}

impl<R> std::fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            ReplyInner::Local { .. } => f.write_str("ReplyTo(local)"),
            ReplyInner::Remote(r, _) => write!(f, "ReplyTo({}#{})", r.node, r.reply_id),
            ReplyInner::Spent => f.write_str("ReplyTo(spent)"),
        }
    }
}

impl<R: Send + 'static> ReplyTo<R> {
    pub(crate) fn local(slot: Arc<CallSlot<R>>, rt: Weak<RtInner>, exported: Option<u64>) -> Self {
        if let Some(id) = exported {
            slot.set_exported(id);
        }
        ReplyTo {
            inner: ReplyInner::Local { slot, rt },
        }
    }

    /// Sends the reply to the caller. Fails, handing the reply back, if the caller stopped
    /// waiting (timed out) or its node cannot be reached.
    pub fn send(mut self, reply: R) -> Result<(), ReplyError<R>> {
        match std::mem::replace(&mut self.inner, ReplyInner::Spent) {
            ReplyInner::Local { slot, .. } => slot.complete(reply).map_err(|reply| ReplyError {
                kind: ReplyErrorKind::CallerGone,
                reply,
            }),
            ReplyInner::Remote(r, erase) => {
                r.mark_used();
                let res = r.sink.reply(ReplyRequest {
                    incarnation: r.incarnation,
                    reply_id: r.reply_id,
                    tag: r.tag,
                    body: erase(&reply),
                });
                res.map_err(|e| ReplyError {
                    kind: ReplyErrorKind::Remote(e),
                    reply,
                })
            }
            ReplyInner::Spent => Err(ReplyError {
                kind: ReplyErrorKind::CallerGone,
                reply,
            }),
        }
    }

    /// Whether the caller is on this node.
    pub fn is_local(&self) -> bool {
        matches!(self.inner, ReplyInner::Local { .. })
    }
}

impl<R> Drop for ReplyTo<R> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.inner, ReplyInner::Spent) {
            ReplyInner::Local { slot, .. } => {
                // An exported handle lives on in another node; that copy answers.
                if slot.exported.load(Ordering::Acquire) == 0 {
                    // Only a drop by the callee itself, while it panics or is being killed,
                    // waits for its exit reason; any other drop fails the call at once.
                    let callee = slot.callee.load(Ordering::Acquire);
                    let in_callee =
                        callee != 0 && crate::process::current_process() == Some(callee);
                    let panicking = in_callee && std::thread::panicking();
                    let in_callee_exiting = in_callee && !panicking;
                    let mut st = lock(&slot.state);
                    if let SlotState::Waiting(w) = &mut *st {
                        let w = w.take();
                        *st = SlotState::Failed(if in_callee_exiting {
                            CallFailure::DroppedByCallee
                        } else {
                            CallFailure::Dropped { panicking }
                        });
                        drop(st);
                        if let Some(w) = w {
                            w.wake();
                        }
                    }
                }
            }
            ReplyInner::Remote(r, _) => {
                if r.take_unused() {
                    r.sink
                        .reply_dropped(r.incarnation, r.reply_id, std::thread::panicking());
                }
            }
            ReplyInner::Spent => {}
        }
    }
}
