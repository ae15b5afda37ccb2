//! Timers: a message sent to a process after a delay, cancellable (Erlang's
//! `erlang:send_after/3` and `erlang:cancel_timer/1`).
//!
//! A timer is a small tokio task that sleeps and then sends; it needs no process of its own,
//! so plain processes and [servers](crate::server) use it alike (a server reaches it through
//! [`ServerContext::send_after`](crate::server::ServerContext::send_after)). It runs on tokio's
//! clock, so tests with paused time (`#[tokio::test(start_paused = true)]`) drive it without
//! waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::pid::Pid;

const PENDING: u8 = 0;
const FIRED: u8 = 1;
const CANCELLED: u8 = 2;

/// A timer started with [`send_after`]. Dropping it does not cancel the timer (as in Erlang);
/// [`TimerRef::cancel`] does.
#[derive(Debug, Clone)]
pub struct TimerRef {
    state: Arc<AtomicU8>,
    task: tokio::task::AbortHandle,
}

impl TimerRef {
    /// Cancels the timer. Returns `true` if it was still pending, so its message will never be
    /// sent (and is dropped); `false` if it had already fired (its message was sent, or the
    /// send was attempted) or was cancelled before.
    pub fn cancel(&self) -> bool {
        let was_pending = self
            .state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if was_pending {
            self.task.abort();
        }
        was_pending
    }

    /// Whether the timer has neither fired nor been cancelled yet.
    pub fn is_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) == PENDING
    }
}

/// Sends `msg` to `pid` once `after` has passed (Erlang's `erlang:send_after(Time, Pid, Msg)`).
/// The send is an ordinary [`Pid::send`]: to a process that has exited by then (or a full
/// mailbox) it fails silently, as in Erlang. Returns a [`TimerRef`] to cancel it.
///
/// Must be called within a tokio runtime. A zero `after` sends on the timer task's first run.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// use conc_core::{Inbox, Runtime, timer::send_after};
/// use std::time::Duration;
/// let rt = Runtime::new();
/// let (tx, rx) = tokio::sync::oneshot::channel();
/// let pid = rt.spawn(|mut inbox: Inbox<String>| async move {
///     let _ = tx.send(inbox.recv().await);
/// });
/// let first = send_after(&pid, "too late".to_string(), Duration::from_secs(10));
/// let _second = send_after(&pid, "tick".to_string(), Duration::from_secs(1));
/// assert!(first.cancel());
/// assert_eq!(rx.await.unwrap().as_deref(), Some("tick"));
/// # }
/// ```
pub fn send_after<M: Send + 'static>(pid: &Pid<M>, msg: M, after: Duration) -> TimerRef {
    let state = Arc::new(AtomicU8::new(PENDING));
    let fired = state.clone();
    let pid = pid.clone();
    let deadline = tokio::time::Instant::now() + after;
    let task = tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        if fired
            .compare_exchange(PENDING, FIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && let Err(e) = pid.send(msg)
        {
            tracing::debug!(pid = %pid, "timer message not delivered: {}", e.kind);
        }
    });
    TimerRef {
        state,
        task: task.abort_handle(),
    }
}
