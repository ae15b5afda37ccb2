//! The runtime: owns processes, the name registry and the exported reply handles of one node.

use crate::tag::TypeTag;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::task::{Context, Poll};

use futures_util::FutureExt;

use crate::Message;
use crate::call::ReplySink;
use crate::error::{RegisterError, WhereisError};
use crate::exit::{Down, ExitReason, MonitorRef, ProcessId};
use crate::pid::Pid;
use crate::process::{AnyProc, DecodeFn, Decoders, Inbox, Proc, Watcher, down, exit, lock};
use crate::remote::{Codec, NodeHook, Target};

const SHARDS: usize = 16;

/// How a process is spawned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpawnOptions {
    /// `None` (the default, as in Erlang): the mailbox is unbounded. `Some(n)`: at most `n`
    /// messages wait in the mailbox's shared queue; a `send` to a full mailbox fails at once with
    /// [`crate::SendErrorKind::MailboxFull`] and hands the message back, and `send_wait` waits
    /// for room. Messages the process has already taken into its private buffer (a batch it is
    /// working through, or messages passed over by selective receive) do not count.
    pub mailbox_capacity: Option<usize>,
}

impl SpawnOptions {
    /// A bounded mailbox of `capacity` messages (at least 1).
    pub fn bounded(capacity: usize) -> Self {
        SpawnOptions {
            mailbox_capacity: Some(capacity.max(1)),
        }
    }
}

pub(crate) struct RtInner {
    pub(crate) incarnation: u64,
    next_id: AtomicU64,
    next_ref: AtomicU64,
    procs: [Mutex<HashMap<u64, Arc<dyn AnyProc>>>; SHARDS],
    names: Mutex<HashMap<String, Arc<dyn AnyProc>>>,
    pub(crate) hook: OnceLock<Arc<dyn NodeHook>>,
    pub(crate) replies: Mutex<HashMap<u64, Arc<dyn ReplySink>>>,
    next_reply: AtomicU64,
    /// The secret key that turns the reply counter into reply ids (SipHash of the counter), so
    /// that a peer cannot guess the id of a call it was not sent and answer or fail it.
    reply_key: std::collections::hash_map::RandomState,
    shutting_down: AtomicBool,
    /// The node's codecs by message type (each a `Codec<M>`), see [`Runtime::register_codec`].
    codecs: RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    /// Whether `codecs` holds anything, so that runtimes without a node skip the lookup.
    has_codecs: AtomicBool,
    /// Each message type's [`TypeTag`], computed once (tracing a type's shape takes
    /// microseconds).
    tags: RwLock<HashMap<TypeId, TypeTag>>,
}

impl RtInner {
    pub(crate) fn next_ref(&self) -> MonitorRef {
        MonitorRef(self.next_ref.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn proc_by_id(&self, id: u64) -> Option<Arc<dyn AnyProc>> {
        lock(&self.procs[(id as usize) % SHARDS]).get(&id).cloned()
    }

    pub(crate) fn registered_mailbox_lengths(&self) -> Vec<(String, usize)> {
        let procs: Vec<(String, Arc<dyn AnyProc>)> = lock(&self.names)
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        // Each mailbox is locked on its own, after the names (never both at once).
        let mut v: Vec<(String, usize)> = procs
            .into_iter()
            .filter(|(_, p)| alive(&**p))
            .map(|(n, p)| (n, p.mailbox_len()))
            .collect();
        v.sort();
        v
    }

    pub(crate) fn proc_by_name(&self, name: &str) -> Option<Arc<dyn AnyProc>> {
        let p = lock(&self.names).get(name).cloned()?;
        alive(&*p).then_some(p)
    }

    pub(crate) fn export_reply(&self, sink: Arc<dyn ReplySink>) -> u64 {
        use std::hash::BuildHasher;
        let mut replies = lock(&self.replies);
        loop {
            let n = self.next_reply.fetch_add(1, Ordering::Relaxed);
            // A keyed pseudo-random function of a counter: unique but for a 2^-64 chance per
            // pair, which the table check turns into a retry.
            let id = self.reply_key.hash_one(n);
            if let std::collections::hash_map::Entry::Vacant(slot) = replies.entry(id) {
                slot.insert(sink);
                return id;
            }
        }
    }

    /// The tag of `T`, computed once per runtime.
    pub(crate) fn tag_of<T: crate::Message>(&self) -> TypeTag {
        self.tag_by_id(TypeId::of::<T>(), TypeTag::of::<T>)
    }

    /// The tag of the type `id`, computed with `compute` the first time.
    pub(crate) fn tag_by_id(&self, id: TypeId, compute: fn() -> TypeTag) -> TypeTag {
        if let Some(tag) = self.tags.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return *tag;
        }
        // Computed outside the lock: tracing may decode pids, which look tags up.
        let tag = compute();
        *self
            .tags
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert(tag)
    }

    pub(crate) fn unexport_reply(&self, id: u64) {
        lock(&self.replies).remove(&id);
    }

    pub(crate) fn node_name(&self) -> Option<Arc<str>> {
        self.hook.get().map(|h| h.node_name())
    }

    /// The codec registered for `M`, if any.
    pub(crate) fn codec<M: 'static>(&self) -> Option<Codec<M>> {
        if !self.has_codecs.load(Ordering::Acquire) {
            return None;
        }
        let codecs = self.codecs.read().unwrap_or_else(|p| p.into_inner());
        codecs
            .get(&TypeId::of::<M>())
            .and_then(|c| c.downcast_ref::<Codec<M>>())
            .copied()
    }
}

/// The runtime of one node: it owns its processes, its registry of names and its exported reply
/// handles. There is no global state: two runtimes in one OS process do not see each other.
///
/// A `Runtime` is a cheap handle (`Clone`); it spawns processes onto the caller's tokio runtime
/// (use the multi-thread scheduler to run processes on all cores).
///
/// ```
/// # #[tokio::main] async fn main() {
/// use conc_core::Runtime;
/// let rt = Runtime::new();
/// let echo = rt.spawn(|mut inbox: conc_core::Inbox<(String, conc_core::ReplyTo<String>)>| async move {
///     while let Some((text, reply)) = inbox.recv().await {
///         let _ = reply.send(text);
///     }
/// });
/// rt.register("echo", &echo).unwrap();
/// let echo = rt.whereis::<(String, conc_core::ReplyTo<String>)>("echo").unwrap();
/// let answer = echo
///     .call(|reply| ("hi".to_string(), reply), std::time::Duration::from_secs(1))
///     .await
///     .unwrap();
/// assert_eq!(answer, "hi");
/// # }
/// ```
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RtInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("incarnation", &self.inner.incarnation)
            .field("processes", &self.process_count())
            .finish()
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new()
    }
}

/// A random 64-bit number from the standard library's randomly keyed hasher and the clock:
/// enough to make incarnations distinct (this is not used for security).
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn alive(p: &dyn AnyProc) -> bool {
    !lock(p.ctl()).exited
}

impl Runtime {
    /// A new runtime with a fresh random incarnation.
    pub fn new() -> Runtime {
        let mut incarnation = random_u64();
        if incarnation == 0 {
            incarnation = 1;
        }
        Runtime {
            inner: Arc::new(RtInner {
                incarnation,
                next_id: AtomicU64::new(1),
                next_ref: AtomicU64::new(1),
                procs: std::array::from_fn(|_| Mutex::new(HashMap::new())),
                names: Mutex::new(HashMap::new()),
                hook: OnceLock::new(),
                replies: Mutex::new(HashMap::new()),
                next_reply: AtomicU64::new(1),
                reply_key: std::collections::hash_map::RandomState::new(),
                shutting_down: AtomicBool::new(false),
                codecs: RwLock::new(HashMap::new()),
                has_codecs: AtomicBool::new(false),
                tags: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub(crate) fn from_weak(w: &Weak<RtInner>) -> Option<Runtime> {
        w.upgrade().map(|inner| Runtime { inner })
    }

    /// This runtime's incarnation: chosen at random when it was created, part of every pid.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Spawns a process that receives messages of type `M` (which can also come from other
    /// nodes). `f` gets the process's [`Inbox`]; the process ends when the future it returns
    /// completes (reason normal), panics (reason panic, with the message: the panic is caught and
    /// never takes the runtime down) or is killed.
    pub fn spawn<M, F, Fut>(&self, f: F) -> Pid<M>
    where
        M: Message,
        F: FnOnce(Inbox<M>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_with(SpawnOptions::default(), f)
    }

    /// [`Runtime::spawn`] with options (a bounded mailbox).
    pub fn spawn_with<M, F, Fut>(&self, options: SpawnOptions, f: F) -> Pid<M>
    where
        M: Message,
        F: FnOnce(Inbox<M>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let decoders = Decoders {
            erased: decode_message::<M> as DecodeFn<M>,
            body: self.inner.codec::<M>().map(|c| c.decode),
            tag: self.inner.tag_of::<M>(),
        };
        self.spawn_inner(options, Some(decoders), f)
    }

    /// Registers the node's [`Codec`] for messages of type `M`: pids of type `M` resolved or
    /// decoded afterwards encode with it, and processes of type `M` spawned afterwards decode
    /// with it. The first registration for a type stays; later ones are ignored. The node layer
    /// does this for the types it sees; others take the type-erased path.
    pub fn register_codec<M: Message>(&self, codec: Codec<M>) {
        let id = TypeId::of::<M>();
        {
            let codecs = self.inner.codecs.read().unwrap_or_else(|p| p.into_inner());
            if codecs.contains_key(&id) {
                return;
            }
        }
        let mut codecs = self.inner.codecs.write().unwrap_or_else(|p| p.into_inner());
        codecs.insert(id, Box::new(codec));
        self.inner.has_codecs.store(true, Ordering::Release);
    }

    /// Spawns a process whose messages need not be serializable; it cannot receive messages from
    /// other nodes (they are refused with [`DeliverError::LocalOnly`](crate::DeliverError::LocalOnly)).
    pub fn spawn_local<M, F, Fut>(&self, options: SpawnOptions, f: F) -> Pid<M>
    where
        M: Send + 'static,
        F: FnOnce(Inbox<M>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_inner(options, None, f)
    }

    fn spawn_inner<M, F, Fut>(
        &self,
        options: SpawnOptions,
        decode: Option<Decoders<M>>,
        f: F,
    ) -> Pid<M>
    where
        M: Send + 'static,
        F: FnOnce(Inbox<M>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let capacity = options.mailbox_capacity.unwrap_or(0);
        let proc = Arc::new(Proc::new(id, &self.inner, capacity, decode));
        let erased: Arc<dyn AnyProc> = proc.clone();
        lock(&self.inner.procs[(id as usize) % SHARDS]).insert(id, erased.clone());
        if self.inner.shutting_down.load(Ordering::Acquire) {
            erased.close_mailbox(false);
        }
        let inbox = Inbox {
            proc: proc.clone(),
            buf: Default::default(),
            rt: self.inner.clone(),
        };
        let guard = ExitGuard { proc: erased };
        let fut = crate::process::in_process(id, f(inbox));
        // Built from combinators rather than an `async` block, which would hold the user's
        // future twice in the task (measured: a full size class more per process).
        // The guard holds the process only (no room for the outcome): a process's task is
        // allocated in steps of 128 bytes, and 32 bytes more cost one more step.
        let task = AssertUnwindSafe(fut).catch_unwind().map(move |outcome| {
            let reason = match outcome {
                Ok(()) => ExitReason::Normal,
                Err(panic) => ExitReason::Panic(panic_message(&*panic)),
            };
            guard.exit(Some(reason));
        });
        let handle = tokio::spawn(task);
        let abort = handle.abort_handle();
        {
            let mut ctl = lock(&proc.ctl);
            if ctl.kill().is_some() && !ctl.exited {
                drop(ctl);
                abort.abort();
            } else if !ctl.exited {
                ctl.abort = Some(abort);
            }
        }
        Pid::local(proc)
    }

    /// Registers `pid` under `name`. A name held by a live process is refused; a process's names
    /// are freed when it exits. Only local processes can be registered.
    pub fn register<M: Send + 'static>(
        &self,
        name: &str,
        pid: &Pid<M>,
    ) -> Result<(), RegisterError> {
        if name.is_empty() || name.len() > 255 || name.contains('/') {
            return Err(RegisterError::InvalidName(name.to_string()));
        }
        let Some(proc) = pid.local_proc() else {
            return Err(RegisterError::NotLocalOrDead(name.to_string()));
        };
        if !Weak::ptr_eq(&proc_rt(&*proc), &Arc::downgrade(&self.inner)) {
            return Err(RegisterError::NotLocalOrDead(name.to_string()));
        }
        let mut names = lock(&self.inner.names);
        if let Some(existing) = names.get(name)
            && alive(&**existing)
        {
            return Err(RegisterError::Taken(name.to_string()));
        }
        let mut ctl = lock(proc.ctl());
        if ctl.exited {
            return Err(RegisterError::NotLocalOrDead(name.to_string()));
        }
        ctl.extras().names.push(name.to_string());
        drop(ctl);
        names.insert(name.to_string(), proc);
        Ok(())
    }

    /// Removes a name; returns whether it was registered.
    pub fn unregister(&self, name: &str) -> bool {
        let removed = lock(&self.inner.names).remove(name);
        match removed {
            Some(proc) => {
                if let Some(extras) = lock(proc.ctl()).extras.as_mut() {
                    extras.names.retain(|n| n != name);
                }
                alive(&*proc)
            }
            None => false,
        }
    }

    /// Looks up the live process registered as `name`, typed: a process of another message type
    /// is an error, never a mis-typed pid.
    pub fn whereis<M: Send + 'static>(&self, name: &str) -> Result<Pid<M>, WhereisError> {
        let proc = self
            .inner
            .proc_by_name(name)
            .ok_or_else(|| WhereisError::NotFound(name.to_string()))?;
        let actual = proc.type_name();
        proc.as_any()
            .downcast::<Proc<M>>()
            .map(Pid::local)
            .map_err(|_| WhereisError::WrongType {
                name: name.to_string(),
                requested: std::any::type_name::<M>(),
                actual,
            })
    }

    /// The names currently registered to live processes, sorted.
    pub fn registered(&self) -> Vec<String> {
        let names = lock(&self.inner.names);
        let mut v: Vec<String> = names
            .iter()
            .filter(|(_, p)| alive(&***p))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Number of live processes.
    pub fn process_count(&self) -> usize {
        self.inner.procs.iter().map(|s| lock(s).len()).sum()
    }

    /// Kills a process with reason killed (see [`Pid::kill`]: a remote one too). Killing a
    /// dead pid does nothing.
    pub fn kill<M: Send + 'static>(&self, pid: &Pid<M>) {
        pid.kill();
    }

    /// The node-facing interface of this runtime (delivery of what arrives from peers, calls
    /// failed by the network, monitors and exit signals on behalf of peers). For node
    /// implementations; applications do not need it.
    pub fn node_side(&self) -> crate::NodeSide<'_> {
        crate::NodeSide(self)
    }

    /// Monitors `pid` from outside any process: the returned [`Monitor`] resolves to the
    /// [`Down`] when the process exits (at once, with no-such-process, if it already has).
    pub fn monitor<M: Send + 'static>(&self, pid: &Pid<M>) -> Monitor {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let mref = pid.add_watcher_with(
            |_| {
                Watcher::Future(
                    tx.take()
                        .unwrap_or_else(|| tokio::sync::oneshot::channel().0),
                )
            },
            &Arc::downgrade(&self.inner),
        );
        Monitor {
            monitor: mref,
            pid: pid.process_id(),
            rx,
        }
    }

    /// Resolves a local process by target (a live process of this incarnation, or by name).
    pub(crate) fn target_proc(&self, target: &Target) -> Option<Arc<dyn AnyProc>> {
        match target {
            Target::Id(pid) if pid.incarnation == self.inner.incarnation => {
                self.inner.proc_by_id(pid.id)
            }
            Target::Id(_) => None,
            Target::Name(name) => self.inner.proc_by_name(name),
        }
    }

    /// Begins shutting down: every mailbox is closed (sends fail; each process's `recv` returns
    /// what is still queued, then `None`), and no new process receives anything.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let all: Vec<Arc<dyn AnyProc>> = self
            .inner
            .procs
            .iter()
            .flat_map(|s| lock(s).values().cloned().collect::<Vec<_>>())
            .collect();
        for p in all {
            p.close_mailbox(false);
        }
    }

    /// Whether [`Runtime::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }
}

fn decode_message<M: Message>(
    de: &mut dyn erased_serde::Deserializer<'_>,
) -> Result<M, erased_serde::Error> {
    erased_serde::deserialize::<M>(de)
}

fn proc_rt(p: &dyn AnyProc) -> Weak<RtInner> {
    p.runtime_weak()
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs the exit of a process when its task ends, however it ends (completion, panic, abort,
/// runtime shutdown).
struct ExitGuard {
    proc: Arc<dyn AnyProc>,
}

impl ExitGuard {
    /// The exit, with the task's outcome when it completed (a kill's reason comes first);
    /// `None`: the task was dropped unfinished (killed). Later calls do nothing.
    fn exit(&self, outcome: Option<ExitReason>) {
        let kill = lock(self.proc.ctl()).kill().cloned();
        let reason = kill.or(outcome).unwrap_or(ExitReason::Killed);
        finish(&self.proc, reason);
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.exit(None);
    }
}

/// The exit of a process: record the reason, close the mailbox, free names, fire monitors and
/// links, leave the process table.
pub(crate) fn finish(proc: &Arc<dyn AnyProc>, reason: ExitReason) {
    let extras = {
        let mut ctl = lock(proc.ctl());
        if ctl.exited {
            return;
        }
        ctl.exited = true;
        ctl.abort = None;
        ctl.extras.take()
    };
    let me = proc.process_id();
    tracing::trace!(pid = %me, %reason, "process exited");
    let rt = proc.runtime_weak().upgrade();
    let Some(extras) = extras else {
        proc.close_mailbox(true);
        if let Some(rt) = rt {
            lock(&rt.procs[(proc.id() as usize) % SHARDS]).remove(&proc.id());
        }
        return;
    };
    if let Some(rt) = &rt {
        let mut names = lock(&rt.names);
        for name in &extras.names {
            if names.get(name).is_some_and(|p| Arc::ptr_eq(p, proc)) {
                names.remove(name);
            }
        }
        drop(names);
        lock(&rt.procs[(proc.id() as usize) % SHARDS]).remove(&proc.id());
    }
    // The mailbox refuses new messages before anyone learns of the exit: a send made after
    // the `Down` fails (and hands the message back) instead of landing in a dead mailbox.
    proc.close_mailbox(false);
    // Monitors (and the calls waiting on this process) learn the exit reason before the
    // queued messages are dropped: a reply handle dropped with them must not turn a call's
    // "exited: killed" into "no reply".
    for (mref, watcher) in extras.monitors {
        fire(watcher, mref, me, reason.clone());
    }
    proc.close_mailbox(true);
    for link in extras.links {
        if let Some(other) = link.upgrade() {
            if let Some(x) = lock(other.ctl()).extras.as_mut() {
                x.links.retain(|l| !ptr_eq_weak(l, proc));
            }
            exit_signal(&other, me, reason.clone());
        }
    }
}

fn ptr_eq_weak(w: &Weak<dyn AnyProc>, p: &Arc<dyn AnyProc>) -> bool {
    std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(p))
}

/// Tells one watcher that `pid` went down.
pub(crate) fn fire(watcher: Watcher, mref: MonitorRef, pid: ProcessId, reason: ExitReason) {
    match watcher {
        Watcher::Process(w) => {
            if let Some(p) = w.upgrade() {
                p.signal(down(mref, pid, reason));
            }
        }
        Watcher::Future(tx) => {
            let _ = tx.send(Down {
                monitor: mref,
                pid,
                reason,
            });
        }
        Watcher::Call(c) => c.callee_exited(&reason),
        Watcher::Callback(f) => f(reason, Some(pid)),
    }
}

/// A linked process `from` exited with `reason`: `target` traps it or exits too.
pub(crate) fn exit_signal(target: &Arc<dyn AnyProc>, from: ProcessId, reason: ExitReason) {
    let trap = lock(target.ctl())
        .extras
        .as_ref()
        .is_some_and(|x| x.trap_exit);
    if trap {
        target.signal(exit(from, reason));
    } else if !reason.is_normal() {
        kill_with(target, reason);
    }
}

/// An exit signal sent to `target` by `from` (Erlang's `exit(Pid, Reason)`): reason killed
/// kills it (untrappable); any other reason is delivered as a link's exit would be.
pub(crate) fn send_exit(target: &Arc<dyn AnyProc>, from: ProcessId, reason: ExitReason) {
    if reason == ExitReason::Killed {
        kill_with(target, reason);
    } else {
        exit_signal(target, from, reason);
    }
}

/// Ends a process with `reason`: its task is aborted and its exit runs with that reason.
pub(crate) fn kill_with(proc: &Arc<dyn AnyProc>, reason: ExitReason) {
    let abort = {
        let mut ctl = lock(proc.ctl());
        if ctl.exited || ctl.kill().is_some() {
            return;
        }
        ctl.extras().kill = Some(reason);
        ctl.abort.take()
    };
    if let Some(abort) = abort {
        abort.abort();
    }
}

/// Links two local processes both ways.
pub(crate) fn link(a: &Arc<dyn AnyProc>, b: &Arc<dyn AnyProc>) {
    if Arc::ptr_eq(a, b) {
        return;
    }
    // Lock order by address: ids are unique only within one runtime, and processes of two
    // runtimes of one OS process can be linked.
    let (first, second) = if Arc::as_ptr(a).cast::<()>() < Arc::as_ptr(b).cast::<()>() {
        (a, b)
    } else {
        (b, a)
    };
    let mut c1 = lock(first.ctl());
    let mut c2 = lock(second.ctl());
    let dead = if c1.exited {
        Some((second, first.process_id()))
    } else if c2.exited {
        Some((first, second.process_id()))
    } else {
        None
    };
    if let Some((survivor, dead_pid)) = dead {
        drop(c1);
        drop(c2);
        exit_signal(survivor, dead_pid, ExitReason::NoSuchProcess);
        return;
    }
    let l1 = &mut c1.extras().links;
    if !l1.iter().any(|l| ptr_eq_weak(l, second)) {
        l1.push(Arc::downgrade(second));
    }
    let l2 = &mut c2.extras().links;
    if !l2.iter().any(|l| ptr_eq_weak(l, first)) {
        l2.push(Arc::downgrade(first));
    }
}

/// Removes a link both ways.
pub(crate) fn unlink(a: &Arc<dyn AnyProc>, b: &Arc<dyn AnyProc>) {
    if let Some(x) = lock(a.ctl()).extras.as_mut() {
        x.links.retain(|l| !ptr_eq_weak(l, b));
    }
    if let Some(x) = lock(b.ctl()).extras.as_mut() {
        x.links.retain(|l| !ptr_eq_weak(l, a));
    }
}

/// Adds a watcher to a local process; fires at once with no-such-process if it has exited.
pub(crate) fn add_watcher(proc: &Arc<dyn AnyProc>, mref: MonitorRef, watcher: Watcher) {
    let mut ctl = lock(proc.ctl());
    if ctl.exited {
        drop(ctl);
        fire(watcher, mref, proc.process_id(), ExitReason::NoSuchProcess);
        return;
    }
    ctl.extras().monitors.push((mref, watcher));
}

/// Removes a watcher from a local process.
pub(crate) fn remove_watcher(proc: &dyn AnyProc, mref: MonitorRef) {
    if let Some(x) = lock(proc.ctl()).extras.as_mut() {
        x.monitors.retain(|(r, _)| *r != mref);
    }
}

/// A monitor set with [`Runtime::monitor`]: a future that resolves to the [`Down`].
#[derive(Debug)]
pub struct Monitor {
    monitor: MonitorRef,
    pid: ProcessId,
    rx: tokio::sync::oneshot::Receiver<Down>,
}

impl Monitor {
    /// The monitor's reference.
    pub fn monitor_ref(&self) -> MonitorRef {
        self.monitor
    }
}

impl Future for Monitor {
    type Output = Down;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Down> {
        let monitor = self.monitor;
        let pid = self.pid;
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or(Down {
                monitor,
                pid,
                reason: ExitReason::NoConnection,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::process::{Ctl, Proc};

    /// An idle process's control block stays in glibc's 192-byte chunk (with the `Arc`'s
    /// counts and malloc's header): the bound, the signals, the kill reason and the exit
    /// reason live elsewhere or are allocated when first needed (see README, "2026-12-08:
    /// conc-core").
    #[test]
    fn an_idle_process_control_block_stays_small() {
        assert!(
            size_of::<Proc<u64>>() <= 168,
            "Proc<u64> is {} bytes",
            size_of::<Proc<u64>>()
        );
        assert!(size_of::<Ctl>() <= 24, "Ctl is {} bytes", size_of::<Ctl>());
    }
}
