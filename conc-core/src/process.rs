//! A process's mailbox and control block, and the `Inbox` a process receives from.

use std::any::Any;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{DeliverError, RecvError, SendErrorKind};
use crate::exit::{Down, Event, Exit, ExitReason, MonitorRef, ProcessId, Signal};
use crate::pid::Pid;
use crate::runtime::{RtInner, Runtime};
use crate::tag::TypeTag;

tokio::task_local! {
    /// The local id of the process whose task is running (set around every process future).
    static CURRENT_PROCESS: u64;
}

/// The local id of the process running on this task, if any.
pub(crate) fn current_process() -> Option<u64> {
    CURRENT_PROCESS.try_with(|id| *id).ok()
}

/// Runs a process future with its id as the current process.
pub(crate) fn in_process<F: std::future::Future>(
    id: u64,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    CURRENT_PROCESS.scope(id, fut)
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it. No lock in this crate
/// is held across user code, so the data is always consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Decodes a message of type `M` from any serde format (the node supplies bincode).
pub(crate) type DecodeFn<M> =
    fn(&mut dyn erased_serde::Deserializer<'_>) -> Result<M, erased_serde::Error>;

/// How a process decodes messages from other nodes: through type erasure (any format), and
/// with the node's codec for its type when one was registered before it was spawned.
pub(crate) struct Decoders<M> {
    pub(crate) erased: DecodeFn<M>,
    pub(crate) body: Option<crate::remote::DecodeBody<M>>,
    /// The message type's tag.
    pub(crate) tag: TypeTag,
}

/// A queued message, with the span its handling runs in when it came from another node inside
/// a traced span (boxed: a message without one costs a null pointer).
pub(crate) struct Envelope<M> {
    pub(crate) msg: M,
    pub(crate) span: Option<Box<tracing::Span>>,
}

impl<M> Envelope<M> {
    fn plain(msg: M) -> Self {
        Envelope { msg, span: None }
    }
}

/// Mailbox state behind one lock: the hot path of every send and receive.
pub(crate) struct MailState<M> {
    pub(crate) queue: VecDeque<Envelope<M>>,
    /// Signals (`Down`, trapped `Exit`) waiting, allocated at the first (most processes never
    /// get one).
    #[allow(
        clippy::box_collection,
        reason = "one pointer in every mailbox instead of a 32-byte VecDeque"
    )]
    pub(crate) signals: Option<Box<VecDeque<Signal>>>,
    pub(crate) waker: Option<Waker>,
    /// Set when the process exits (sends fail) or the runtime shuts down (receives end).
    pub(crate) closed: bool,
}

/// Who is told when a process exits.
pub(crate) enum Watcher {
    /// A process receives `Down` as an event.
    Process(Weak<dyn AnyProc>),
    /// A future returned by [`Runtime::monitor`].
    Future(tokio::sync::oneshot::Sender<Down>),
    /// A call waiting for a reply from this process.
    Call(Arc<dyn CallWatch>),
    /// A callback, for monitors held by other nodes and remote monitors of this node.
    Callback(crate::remote::DownFn),
}

/// A pending call watches its callee so that it fails at once when the callee exits.
pub(crate) trait CallWatch: Send + Sync {
    fn callee_exited(&self, reason: &ExitReason);
}

/// Rarely used parts of a process's control block, allocated on first use so that an idle
/// process stays small.
#[derive(Default)]
pub(crate) struct Extras {
    pub(crate) monitors: Vec<(MonitorRef, Watcher)>,
    pub(crate) links: Vec<Weak<dyn AnyProc>>,
    pub(crate) names: Vec<String>,
    pub(crate) trap_exit: bool,
    /// Set by `kill` (or a linked exit) before the task is aborted: the reason it will exit with.
    pub(crate) kill: Option<ExitReason>,
}

/// The control block: exit state, kill handle, monitors, links, names.
#[derive(Default)]
pub(crate) struct Ctl {
    /// Set when the process has exited (its reason went to its monitors and links).
    pub(crate) exited: bool,
    pub(crate) abort: Option<tokio::task::AbortHandle>,
    pub(crate) extras: Option<Box<Extras>>,
}

impl Ctl {
    pub(crate) fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Default::default)
    }

    /// The reason a kill (or a linked exit) set, before the task is aborted.
    pub(crate) fn kill(&self) -> Option<&ExitReason> {
        self.extras.as_ref()?.kill.as_ref()
    }
}

/// A process: its mailbox and control block. Pids hold an `Arc` to it.
pub(crate) struct Proc<M> {
    pub(crate) id: u64,
    pub(crate) rt: Weak<RtInner>,
    pub(crate) incarnation: u64,
    pub(crate) mail: Mutex<MailState<M>>,
    pub(crate) ctl: Mutex<Ctl>,
    /// A bounded mailbox's capacity and waiting senders; `None`: unbounded (an idle process
    /// holds a pointer, not a `Notify`).
    pub(crate) bound: Option<Box<Bound>>,
    /// Messages the process's [`Inbox`] has taken from the queue into its private buffer and
    /// not yet received (its last count; for [`AnyProc::mailbox_len`]).
    pub(crate) buffered: AtomicUsize,
    pub(crate) decode: Option<Decoders<M>>,
}

/// A bounded mailbox's bound.
pub(crate) struct Bound {
    /// At most this many messages wait in the shared queue.
    pub(crate) capacity: usize,
    /// Senders waiting for room.
    pub(crate) room: Notify,
}

/// The type-erased face of a process, used by the registry, monitors, links and remote delivery.
pub(crate) trait AnyProc: Send + Sync + 'static {
    fn id(&self) -> u64;
    fn process_id(&self) -> ProcessId;
    fn ctl(&self) -> &Mutex<Ctl>;
    fn runtime_weak(&self) -> Weak<RtInner>;
    fn signal(&self, signal: Signal);
    fn close_mailbox(&self, exiting: bool);
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    fn type_name(&self) -> &'static str;
    fn type_tag(&self) -> TypeTag;
    fn deliver_erased(
        &self,
        de: &mut dyn erased_serde::Deserializer<'_>,
        span: Option<Box<tracing::Span>>,
    ) -> Result<(), DeliverError>;
    /// Decodes `body` with the process's codec and delivers it; `None` if it has no codec.
    fn deliver_body(
        &self,
        body: &[u8],
        span: &mut Option<Box<tracing::Span>>,
    ) -> Option<Result<(), DeliverError>>;
    /// Resolves when a bounded mailbox has room (at once for an unbounded one).
    fn room(self: Arc<Self>) -> crate::remote::BoxFuture<'static, ()>;
    /// Messages waiting: queued, and taken into the inbox's buffer but not yet received.
    fn mailbox_len(&self) -> usize;
}

impl<M: Send + 'static> Proc<M> {
    pub(crate) fn new(
        id: u64,
        rt: &Arc<RtInner>,
        capacity: usize,
        decode: Option<Decoders<M>>,
    ) -> Self {
        Proc {
            id,
            rt: Arc::downgrade(rt),
            incarnation: rt.incarnation,
            mail: Mutex::new(MailState {
                queue: VecDeque::new(),
                signals: None,
                waker: None,
                closed: false,
            }),
            ctl: Mutex::new(Ctl::default()),
            buffered: AtomicUsize::new(0),
            bound: (capacity > 0).then(|| {
                Box::new(Bound {
                    capacity,
                    room: Notify::new(),
                })
            }),
            decode,
        }
    }

    /// Queues a message from another node, decoded by `decode` only once it is known that there
    /// is room: a message decoded and then dropped would drop the reply handles inside it,
    /// failing their callers.
    fn accept(
        &self,
        decode: impl FnOnce() -> Result<M, DeliverError>,
        span: Option<Box<tracing::Span>>,
    ) -> Result<(), DeliverError> {
        {
            let mail = lock(&self.mail);
            if mail.closed {
                return Err(DeliverError::NoSuchProcess);
            }
            if self.full(&mail) {
                return Err(DeliverError::MailboxFull);
            }
        }
        let msg = decode()?;
        let waker = {
            let mut mail = lock(&self.mail);
            if mail.closed {
                return Err(DeliverError::NoSuchProcess);
            }
            // Room was checked above; a concurrent local sender may overshoot the bound by one.
            mail.queue.push_back(Envelope { msg, span });
            mail.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether a bounded mailbox's shared queue is full.
    fn full(&self, mail: &MailState<M>) -> bool {
        self.bound
            .as_ref()
            .is_some_and(|b| mail.queue.len() >= b.capacity)
    }

    /// Tells senders waiting for room in a bounded mailbox to look again.
    pub(crate) fn notify_room(&self) {
        if let Some(bound) = &self.bound {
            bound.room.notify_waiters();
        }
    }

    /// Queues a message; never blocks.
    pub(crate) fn push(&self, msg: M) -> Result<(), (SendErrorKind, M)> {
        let waker = {
            let mut mail = lock(&self.mail);
            if mail.closed {
                return Err((SendErrorKind::NoSuchProcess, msg));
            }
            if self.full(&mail) {
                return Err((SendErrorKind::MailboxFull, msg));
            }
            mail.queue.push_back(Envelope::plain(msg));
            mail.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues a message, waiting for room in a bounded mailbox.
    pub(crate) async fn push_wait(&self, mut msg: M) -> Result<(), (SendErrorKind, M)> {
        loop {
            let Some(bound) = &self.bound else {
                return self.push(msg);
            };
            let notified = bound.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.push(msg) {
                Err((SendErrorKind::MailboxFull, back)) => msg = back,
                other => return other,
            }
            notified.await;
        }
    }
}

impl<M: Send + 'static> AnyProc for Proc<M> {
    fn id(&self) -> u64 {
        self.id
    }

    fn process_id(&self) -> ProcessId {
        ProcessId {
            incarnation: self.incarnation,
            id: self.id,
        }
    }

    fn ctl(&self) -> &Mutex<Ctl> {
        &self.ctl
    }

    fn runtime_weak(&self) -> Weak<RtInner> {
        self.rt.clone()
    }

    fn signal(&self, signal: Signal) {
        let waker = {
            let mut mail = lock(&self.mail);
            if mail.closed {
                return;
            }
            mail.signals.get_or_insert_default().push_back(signal);
            mail.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn close_mailbox(&self, exiting: bool) {
        let (queue, waker) = {
            let mut mail = lock(&self.mail);
            mail.closed = true;
            let queue = if exiting {
                mail.signals = None;
                std::mem::take(&mut mail.queue)
            } else {
                VecDeque::new()
            };
            (queue, mail.waker.take())
        };
        // Dropped outside the lock: dropping a message may run user code (a `ReplyTo`).
        drop(queue);
        self.notify_room();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<M>()
    }

    fn type_tag(&self) -> TypeTag {
        match &self.decode {
            Some(d) => d.tag,
            // A local-only process takes nothing from other nodes; its name-based tag only
            // names it.
            None => TypeTag::of_name(std::any::type_name::<M>()),
        }
    }

    fn deliver_erased(
        &self,
        de: &mut dyn erased_serde::Deserializer<'_>,
        span: Option<Box<tracing::Span>>,
    ) -> Result<(), DeliverError> {
        let decode = self.decode.as_ref().ok_or(DeliverError::LocalOnly)?.erased;
        self.accept(
            || decode(de).map_err(|e| DeliverError::Decode(e.to_string())),
            span,
        )
    }

    fn deliver_body(
        &self,
        body: &[u8],
        span: &mut Option<Box<tracing::Span>>,
    ) -> Option<Result<(), DeliverError>> {
        let decode = self.decode.as_ref()?.body?;
        Some(self.accept(|| decode(body).map_err(DeliverError::Decode), span.take()))
    }

    fn mailbox_len(&self) -> usize {
        lock(&self.mail).queue.len() + self.buffered.load(Ordering::Relaxed)
    }

    fn room(self: Arc<Self>) -> crate::remote::BoxFuture<'static, ()> {
        Box::pin(async move {
            let Some(bound) = &self.bound else {
                return;
            };
            loop {
                let notified = bound.room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mail = lock(&self.mail);
                    if mail.closed || mail.queue.len() < bound.capacity {
                        return;
                    }
                }
                notified.await;
            }
        })
    }
}

/// What a process receives from: its own mailbox. It is handed to the process's function by
/// `spawn` and is the process's handle to itself (its pid, monitors, links).
///
/// Messages are taken from the shared queue in batches into a private buffer, which is also the
/// save queue of selective receive: messages that [`Inbox::recv_matching`] passes over stay
/// there, in order, and later receives see them first.
pub struct Inbox<M: Send + 'static> {
    pub(crate) proc: Arc<Proc<M>>,
    pub(crate) buf: VecDeque<Envelope<M>>,
    /// Keeps the runtime (registry, process table) alive while the process runs.
    pub(crate) rt: Arc<RtInner>,
}

impl<M: Send + 'static> std::fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("pid", &self.process_id())
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl<M: Send + 'static> Inbox<M> {
    /// This process's pid.
    pub fn pid(&self) -> Pid<M> {
        Pid::local(self.proc.clone())
    }

    /// This process's identity.
    pub fn process_id(&self) -> ProcessId {
        self.proc.process_id()
    }

    /// The runtime this process runs on (to spawn, register, look up names). A running
    /// process keeps its runtime alive, even when every other `Runtime` handle is dropped.
    pub fn runtime(&self) -> Runtime {
        Runtime {
            inner: self.rt.clone(),
        }
    }

    /// Moves whatever the shared queue holds into the private buffer; registers the waker when
    /// it is empty. Returns `Ready(false)` when the mailbox is closed and empty.
    fn fill(&mut self, cx: &mut Context<'_>, with_signals: bool) -> Poll<bool> {
        let mut mail = lock(&self.proc.mail);
        if !mail.queue.is_empty() {
            if self.buf.is_empty() {
                std::mem::swap(&mut self.buf, &mut mail.queue);
            } else {
                self.buf.extend(mail.queue.drain(..));
            }
            self.note_buffered();
            drop(mail);
            self.proc.notify_room();
            return Poll::Ready(true);
        }
        if with_signals && mail.signals.as_ref().is_some_and(|s| !s.is_empty()) {
            return Poll::Ready(true);
        }
        if mail.closed {
            return Poll::Ready(false);
        }
        match &mail.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => mail.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Publishes how many messages the private buffer holds (a relaxed store).
    fn note_buffered(&self) {
        self.proc.buffered.store(self.buf.len(), Ordering::Relaxed);
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope<M>>> {
        // Each receive spends a unit of tokio's cooperative budget, as a tokio channel's does:
        // a process that always finds a message waiting still yields now and then, so the
        // timers and connections on its worker thread are not starved.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            if let Some(msg) = self.buf.pop_front() {
                coop.made_progress();
                self.note_buffered();
                return Poll::Ready(Some(msg));
            }
            match self.fill(cx, false) {
                Poll::Ready(true) => continue,
                Poll::Ready(false) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Receives the next message, waiting as long as it takes. Returns `None` only when the
    /// runtime shuts down (see [`Runtime::shutdown`]).
    pub async fn recv(&mut self) -> Option<M> {
        poll_fn(|cx| self.poll_recv(cx)).await.map(|e| e.msg)
    }

    /// [`Inbox::recv`], with the span to handle the message in: when the message came from
    /// another node and was sent from inside a traced span, a span `conc.recv` whose parent is
    /// that remote span, so the handling is part of the sender's trace; otherwise
    /// [`Span::none()`](tracing::Span::none) (entering it does nothing). The node made the span
    /// when the message arrived (crate `conc-node`, module `trace`), so its duration includes
    /// the time the message waited in the mailbox. Returns `None` only when the runtime shuts
    /// down.
    ///
    /// Run the handling inside it, e.g. `let _entered = span.enter();` in synchronous code,
    /// or `tracing::Instrument::instrument(fut, span)` around a future; sends and calls made
    /// there carry the trace on.
    ///
    /// ```
    /// # use conc_core::{Inbox, Runtime};
    /// # #[tokio::main] async fn main() {
    /// let rt = Runtime::new();
    /// let pid = rt.spawn(|mut inbox: Inbox<String>| async move {
    ///     while let Some((text, span)) = inbox.recv_traced().await {
    ///         let _entered = span.enter();
    ///         tracing::info!(%text, "handled");
    ///     }
    /// });
    /// pid.send("hello".to_string()).unwrap();
    /// # }
    /// ```
    pub async fn recv_traced(&mut self) -> Option<(M, tracing::Span)> {
        poll_fn(|cx| self.poll_recv(cx)).await.map(|e| {
            let span = e.span.map_or_else(tracing::Span::none, |s| *s);
            (e.msg, span)
        })
    }

    /// Takes a message if one is queued now, without waiting.
    pub fn try_recv(&mut self) -> Option<M> {
        if let Some(e) = self.buf.pop_front() {
            self.note_buffered();
            return Some(e.msg);
        }
        let mut mail = lock(&self.proc.mail);
        std::mem::swap(&mut self.buf, &mut mail.queue);
        drop(mail);
        self.proc.notify_room();
        let msg = self.buf.pop_front().map(|e| e.msg);
        self.note_buffered();
        msg
    }

    /// Receives the next message, or fails with [`RecvError::Timeout`] after `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<M, RecvError> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(RecvError::Closed),
            Err(_) => Err(RecvError::Timeout),
        }
    }

    /// Selective receive: returns the first queued message for which `pred` is true, waiting for
    /// one if none is queued. Messages that do not match stay queued in their order and are seen
    /// by later receives (Erlang's save queue, Factor's `receive-if`). Returns `None` only when
    /// the runtime shuts down.
    pub async fn recv_matching(&mut self, mut pred: impl FnMut(&M) -> bool) -> Option<M> {
        let mut checked = 0;
        poll_fn(|cx| {
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            loop {
                if let Some(pos) = self.buf.iter().skip(checked).position(|e| pred(&e.msg)) {
                    coop.made_progress();
                    let msg = self.buf.remove(checked + pos).map(|e| e.msg);
                    self.note_buffered();
                    return Poll::Ready(msg);
                }
                checked = self.buf.len();
                match self.fill(cx, false) {
                    Poll::Ready(true) => continue,
                    Poll::Ready(false) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    /// Selective receive with a timeout.
    pub async fn recv_matching_timeout(
        &mut self,
        pred: impl FnMut(&M) -> bool,
        timeout: Duration,
    ) -> Result<M, RecvError> {
        match tokio::time::timeout(timeout, self.recv_matching(pred)).await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(RecvError::Closed),
            Err(_) => Err(RecvError::Timeout),
        }
    }

    /// Receives the next message or signal: a message, a [`Down`] from a monitor, or an
    /// [`Exit`] from a link (when trapping exits). Queued messages come before queued signals.
    /// Returns `None` only when the runtime shuts down.
    pub async fn recv_event(&mut self) -> Option<Event<M>> {
        poll_fn(|cx| {
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            loop {
                if let Some(e) = self.buf.pop_front() {
                    coop.made_progress();
                    self.note_buffered();
                    return Poll::Ready(Some(Event::Message(e.msg)));
                }
                {
                    let mut mail = lock(&self.proc.mail);
                    if mail.queue.is_empty()
                        && let Some(signal) = mail.signals.as_mut().and_then(|s| s.pop_front())
                    {
                        coop.made_progress();
                        return Poll::Ready(Some(match signal {
                            Signal::Down(d) => Event::Down(d),
                            Signal::Exit(e) => Event::Exit(e),
                        }));
                    }
                }
                match self.fill(cx, true) {
                    Poll::Ready(true) => continue,
                    Poll::Ready(false) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    /// Like [`Inbox::recv_event`] with a timeout.
    pub async fn recv_event_timeout(&mut self, timeout: Duration) -> Result<Event<M>, RecvError> {
        match tokio::time::timeout(timeout, self.recv_event()).await {
            Ok(Some(ev)) => Ok(ev),
            Ok(None) => Err(RecvError::Closed),
            Err(_) => Err(RecvError::Timeout),
        }
    }

    /// Number of messages waiting (buffered and queued).
    pub fn len(&self) -> usize {
        self.buf.len() + lock(&self.proc.mail).queue.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Monitors `pid`: when it exits, this process receives [`Event::Down`] from
    /// [`Inbox::recv_event`]. Monitoring a process that has already exited delivers `Down` with
    /// [`ExitReason::NoSuchProcess`] at once.
    pub fn monitor<N: Send + 'static>(&self, pid: &Pid<N>) -> MonitorRef {
        let me: Arc<dyn AnyProc> = self.proc.clone();
        pid.add_watcher_with(|_| Watcher::Process(Arc::downgrade(&me)), &self.proc.rt)
    }

    /// Removes a monitor; a `Down` for it that is already queued stays queued.
    pub fn demonitor<N: Send + 'static>(&self, pid: &Pid<N>, monitor: MonitorRef) {
        pid.remove_watcher(monitor);
    }

    /// Links this process with `pid`: when either exits abnormally, the other exits with the same
    /// reason, unless it traps exits, in which case it receives [`Event::Exit`]. Linking to a
    /// process that has already exited acts as if it exited with [`ExitReason::NoSuchProcess`].
    pub fn link<N: Send + 'static>(&self, pid: &Pid<N>) {
        let me: Arc<dyn AnyProc> = self.proc.clone();
        match pid.local_proc() {
            Some(other) => crate::runtime::link(&me, &other),
            None => match pid.remote_parts() {
                Some((target, sink)) => sink.link(target, me.process_id(), true),
                None => {
                    crate::runtime::exit_signal(&me, pid.process_id(), ExitReason::NoSuchProcess)
                }
            },
        }
    }

    /// Removes a link in both directions.
    pub fn unlink<N: Send + 'static>(&self, pid: &Pid<N>) {
        let me: Arc<dyn AnyProc> = self.proc.clone();
        if let Some((target, sink)) = pid.remote_parts() {
            sink.link(target, me.process_id(), false);
        }
        if let Some(other) = pid.local_proc() {
            crate::runtime::unlink(&me, &other);
        }
    }

    /// Whether exits of linked processes arrive as [`Event::Exit`] (true) or end this process
    /// (false, the default), like Erlang's `process_flag(trap_exit, true)`.
    pub fn trap_exit(&self, trap: bool) {
        lock(&self.proc.ctl).extras().trap_exit = trap;
    }

    /// Sends an exit signal with `reason` to `pid`, local or on another node (Erlang's
    /// `exit(Pid, Reason)`). No link is needed. What the target does:
    /// - reason [`ExitReason::Killed`]: it is killed, whether it traps exits or not (Erlang's
    ///   `exit(Pid, kill)`; same as [`Pid::kill`]);
    /// - it traps exits: it receives [`Event::Exit`] with this process's id and `reason`;
    /// - otherwise it exits with `reason`, unless `reason` is normal (then nothing happens).
    ///
    /// Fire and forget: nothing is reported back (monitor the target to learn of its exit). A
    /// signal to a remote process travels after the messages sent to it before. A peer that
    /// does not take exit signals (an older node without conc-wire's `EXIT_SIGNAL`
    /// capability, or one this node has not connected to yet) is sent a kill instead when
    /// `reason` is abnormal, and nothing when it is normal. A dead pid: nothing.
    ///
    /// This is how a supervisor stops a child with [`ExitReason::Shutdown`], on this node or on
    /// another.
    pub fn send_exit<N: Send + 'static>(&self, pid: &Pid<N>, reason: ExitReason) {
        pid.exit_from(self.proc.process_id(), reason);
    }

    /// Ends this process now with `reason` (abnormal unless `Normal`): linked processes see it.
    /// The current task stops at its next `.await`.
    pub fn exit(&self, reason: ExitReason) {
        let me: Arc<dyn AnyProc> = self.proc.clone();
        crate::runtime::kill_with(&me, reason);
    }
}

/// Makes the `Down` for `pid` with monitor `mref`.
pub(crate) fn down(mref: MonitorRef, pid: ProcessId, reason: ExitReason) -> Signal {
    Signal::Down(Down {
        monitor: mref,
        pid,
        reason,
    })
}

/// Makes the `Exit` signal for a trapped link exit.
pub(crate) fn exit(pid: ProcessId, reason: ExitReason) -> Signal {
    Signal::Exit(Exit { pid, reason })
}
