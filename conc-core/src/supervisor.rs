//! Supervisors: processes that start other processes, watch them through links, and restart
//! them when they exit (Erlang/OTP's `supervisor`, and Elixir's `DynamicSupervisor` for
//! [`DynamicSpec`]).
//!
//! A supervisor is an ordinary process (its messages are [`SupervisorRequest`]s) that traps
//! exits and links to each child. It holds an ordered list of [`ChildSpec`]s: an id, a start
//! function, a [`Restart`] type and a [`Shutdown`] policy. It starts the children in order and
//! stops them in reverse order. When a child exits, the [`Strategy`] says which children are
//! restarted:
//!
//! - [`Strategy::OneForOne`]: only that child;
//! - [`Strategy::OneForAll`]: all children (the others are stopped first, in reverse order);
//! - [`Strategy::RestForOne`]: that child and the children started after it.
//!
//! Restart intensity bounds the restarts: more than `max_restarts` within `period` (Erlang's
//! `intensity` and `period`, default 1 in 5 seconds) and the supervisor gives up: it stops all
//! its children and exits with [`ExitReason::Supervisor`] naming the child
//! ([`SupervisorExit::ReachedMaxRestartIntensity`]), so that its own supervisor can act. An
//! optional [`Backoff`] delays restarts.
//!
//! # Children may live on other nodes
//!
//! The start function is `Fn() -> BoxFuture<Result<ChildPid, StartError>>`: it may spawn a
//! local process, start a [server](crate::server) or a nested supervisor, or return a pid on
//! another node (a remote spawn). The supervisor needs only what works on every pid: it links
//! to the child (an exit signal reaches it across nodes; a lost node arrives as an exit with
//! [`ExitReason::NoConnection`]), monitors it while stopping it, sends it the orderly
//! [`ExitReason::Shutdown`] exit signal ([`Inbox::send_exit`](crate::Inbox::send_exit), which
//! crosses nodes), and kills it if its [`Shutdown`] policy's time runs out. What differs for a
//! remote child: a child name ([`ChildSpec::name`]) is registered only for local children (a
//! remote start function registers on its own node), and a node that does not take exit
//! signals (an older one) is sent a kill instead of the shutdown signal.
//!
//! `conc_cluster::spawn::remote_child` is such a start function: it spawns the child on a node
//! chosen by a placement function, held until the supervisor is linked to it
//! ([`link_parent`]), and so restarts it on a live node when its node goes down. What happens
//! during a network partition (the child may run twice, as in Erlang) is described there.
//!
//! # Example
//!
//! ```
//! use conc_core::supervisor::{ChildSpec, Restart, Strategy, SupervisorSpec};
//! use conc_core::{Inbox, Runtime};
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() {
//! let rt = Runtime::new();
//! let sup = SupervisorSpec::new(Strategy::OneForOne)
//!     .name("app")
//!     .child(
//!         ChildSpec::worker("logger", &rt, |mut inbox: Inbox<String>| async move {
//!             while let Some(line) = inbox.recv().await {
//!                 println!("{line}");
//!             }
//!         })
//!         .name("logger"),
//!     )
//!     .start(&rt)
//!     .await
//!     .unwrap();
//!
//! // The logger crashes (here: killed); the supervisor starts a new one under the same name.
//! let first = rt.whereis::<String>("logger").unwrap();
//! first.kill();
//! let children = loop {
//!     let children = sup.which_children(Duration::from_secs(5)).await.unwrap();
//!     if children[0].restarts == 1 && children[0].process.is_some() {
//!         break children;
//!     }
//!     tokio::task::yield_now().await;
//! };
//! assert_eq!(children[0].restart, Restart::Permanent);
//! assert_ne!(rt.whereis::<String>("logger").unwrap(), first);
//! # }
//! ```

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::Message;
use crate::call::ReplyTo;
use crate::error::{CallError, RegisterError, SendErrorKind};
use crate::exit::{Event, Exit, ExitReason, ProcessId, SupervisorExit};
use crate::pid::Pid;
use crate::process::Inbox;
use crate::remote::{BoxFuture, ProcessUri};
use crate::runtime::{Monitor, Runtime};

tokio::task_local! {
    /// The supervisor whose start function is running (set around every start future), so
    /// that a supervisor or server started by it knows its parent.
    static PARENT: ProcessId;
}

/// The process that is starting the current task's process as its child, if a supervisor's
/// start function is running on this task (servers use it to know their parent).
pub(crate) fn current_parent() -> Option<ProcessId> {
    PARENT.try_with(|p| *p).ok()
}

/// Links the supervisor whose start function is running to the remote process `pid` at once,
/// before the start function returns (the supervisor links to every child itself when its start
/// function returns; this lets a start function that spawns on another node make that link
/// while the child is still held, as `conc_cluster::spawn`'s held spawn does, so that no exit of
/// the child can be missed). Erlang's `spawn_link` from inside a supervisor's start function.
///
/// Returns `true` if the link was requested; `false` (nothing done) when called outside a
/// supervisor's start function or for a local `pid`.
pub fn link_parent<M: Send + 'static>(pid: &Pid<M>) -> bool {
    let Some(parent) = current_parent() else {
        return false;
    };
    match pid.remote_parts() {
        Some((target, sink)) => {
            sink.link(target, parent, true);
            true
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Child pids, erased

/// What a supervisor needs of a child's pid, whatever its message type.
trait AnyChild: Send + Sync + 'static {
    fn id(&self) -> Option<ProcessId>;
    fn uri(&self) -> ProcessUri;
    fn is_local(&self) -> bool;
    fn link(&self, inbox: &Inbox<SupervisorRequest>);
    fn unlink(&self, inbox: &Inbox<SupervisorRequest>);
    fn monitor(&self, rt: &Runtime) -> Monitor;
    fn kill(&self);
    fn shutdown(&self, from: ProcessId);
    fn register(&self, rt: &Runtime, name: &str) -> Result<(), RegisterError>;
    fn as_any(&self) -> &dyn Any;
}

impl<M: Send + 'static> AnyChild for Pid<M> {
    fn id(&self) -> Option<ProcessId> {
        Pid::id(self)
    }
    fn uri(&self) -> ProcessUri {
        Pid::uri(self)
    }
    fn is_local(&self) -> bool {
        Pid::is_local(self)
    }
    fn link(&self, inbox: &Inbox<SupervisorRequest>) {
        inbox.link(self)
    }
    fn unlink(&self, inbox: &Inbox<SupervisorRequest>) {
        inbox.unlink(self)
    }
    fn monitor(&self, rt: &Runtime) -> Monitor {
        rt.monitor(self)
    }
    fn kill(&self) {
        Pid::kill(self)
    }
    fn shutdown(&self, from: ProcessId) {
        self.exit_from(from, ExitReason::Shutdown)
    }
    fn register(&self, rt: &Runtime, name: &str) -> Result<(), RegisterError> {
        rt.register(name, self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A child's pid with its message type erased: what a start function returns. Made from any
/// [`Pid`] (local or remote) with `From`, and from a [`Supervisor`], a [`DynamicSupervisor`] or
/// a [`ServerRef`](crate::server::ServerRef).
#[derive(Clone)]
pub struct ChildPid(Arc<dyn AnyChild>);

impl<M: Send + 'static> From<Pid<M>> for ChildPid {
    fn from(pid: Pid<M>) -> Self {
        ChildPid(Arc::new(pid))
    }
}

impl ChildPid {
    /// The child's identity; `None` for a reference by name (a start function must return a pid
    /// by identity: see [`StartError::NoProcessId`]).
    pub fn id(&self) -> Option<ProcessId> {
        self.0.id()
    }

    /// The child's persistent form (see [`ProcessUri`]).
    pub fn uri(&self) -> ProcessUri {
        self.0.uri()
    }

    /// Whether the child runs on this node.
    pub fn is_local(&self) -> bool {
        self.0.is_local()
    }

    /// Kills the child (reason killed). Its supervisor sees the exit and restarts it as its
    /// restart type says.
    pub fn kill(&self) {
        self.0.kill()
    }

    /// The child's pid with its message type, if it receives `M`.
    pub fn downcast<M: Send + 'static>(&self) -> Option<Pid<M>> {
        self.0.as_any().downcast_ref::<Pid<M>>().cloned()
    }

    /// The child as a supervisor, if it is one.
    pub fn supervisor(&self) -> Option<Supervisor> {
        self.downcast::<SupervisorRequest>()
            .map(|pid| Supervisor { pid })
    }
}

impl fmt::Debug for ChildPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChildPid({})", self.uri())
    }
}

impl PartialEq for ChildPid {
    fn eq(&self, other: &Self) -> bool {
        self.uri() == other.uri()
    }
}

// ---------------------------------------------------------------------------------------------
// Specs

/// Why a child (or a supervisor, or a server) could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The process exited while it was starting (for a server: its `init` failed with this
    /// reason, or it panicked).
    #[error("the process exited while starting: {0}")]
    Exited(ExitReason),
    /// A call the start function made failed (for example a remote spawn request).
    #[error("the start call failed: {0}")]
    Call(#[from] CallError),
    /// The child could not be registered under its name ([`ChildSpec::name`]) or the
    /// supervisor under its own ([`SupervisorSpec::name`]).
    #[error("cannot register: {0}")]
    Register(#[from] RegisterError),
    /// The start function returned a reference by name, not a pid by identity: the supervisor
    /// could not tell its exit from another process's.
    #[error("the start function returned a pid without an identity (a reference by name)")]
    NoProcessId,
    /// A supervisor was asked to start a child whose id one of its children already has.
    #[error("the supervisor already has a child {0:?}")]
    DuplicateId(String),
    /// A dynamic supervisor already runs its maximum number of children.
    #[error("the supervisor already runs its maximum of {0} children")]
    MaxChildren(usize),
    /// A supervisor's child failed to start while the supervisor started, so the supervisor
    /// stopped (the children already started were stopped again).
    #[error("child {child:?} failed to start: {reason}")]
    Child {
        /// The child's id.
        child: String,
        /// Why it failed.
        reason: Box<StartError>,
    },
    /// The supervisor asked to start a child could not be reached, or exited before answering.
    #[error("the supervisor is not running")]
    SupervisorDown,
    /// `start_child` was asked of a supervisor on another node: a start function cannot
    /// travel.
    #[error("start_child needs a supervisor of this node (a start function cannot travel)")]
    NotLocal,
    /// The supervisor asked to start a child with an argument is not a dynamic supervisor of
    /// that argument type.
    #[error("not a dynamic supervisor of this argument type")]
    NotDynamic,
    /// A start function that places its child on another node found no node to place it on
    /// (its placement function named none).
    #[error("no node to start the child on")]
    NoNode,
    /// A start function's remote spawn failed on every node it tried; the error of the last.
    #[error("the remote spawn failed: {0}")]
    Remote(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The future a start function returns.
pub type StartFuture = BoxFuture<'static, Result<ChildPid, StartError>>;

/// A start function: called for the child's first start and for each restart.
pub type StartFn = Arc<dyn Fn() -> StartFuture + Send + Sync>;

/// When a child that exits is restarted (Erlang's `restart` of a child spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Restart {
    /// Always restarted (the default).
    Permanent,
    /// Restarted only if it exits abnormally: not after [`ExitReason::Normal`],
    /// [`ExitReason::Shutdown`] or a supervisor's own stop ([`ExitReason::is_shutdown`]).
    Transient,
    /// Never restarted; removed from the supervisor when it exits.
    Temporary,
}

/// How a supervisor stops a child (Erlang's `shutdown` of a child spec). The supervisor waits
/// for the child's exit in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shutdown {
    /// Killed at once (reason killed, which it cannot trap).
    BrutalKill,
    /// Sent an exit signal with [`ExitReason::Shutdown`] (a child that traps exits receives it
    /// as an [`Event::Exit`] and may clean up; one that does not exits at once); killed if it
    /// has not exited after this long. The default for workers: 5 seconds.
    Timeout(Duration),
    /// Sent the shutdown signal and waited for as long as it takes: for children that are
    /// supervisors, so that they stop their own children first (the default for them).
    Infinity,
}

/// Which children a supervisor restarts when one exits (Erlang's restart strategies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// Every child: the others are stopped (in reverse order), then all are started (in order).
    OneForAll,
    /// The child that exited and those started after it: those are stopped (in reverse order),
    /// then restarted with it (in order).
    RestForOne,
}

/// Delays restarts: the n-th restart of a child within the restart intensity's period waits
/// `initial * 2^(n-1)`, at most `max`. Without a backoff (Erlang's behaviour) a child is
/// restarted at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay of a child's first restart within the period.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before the `n`-th restart (1-based) within the period.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// The default shutdown timeout of a worker child (Erlang's 5000 ms).
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(5);

/// One child of a supervisor (Erlang's child spec): an id, a start function, a restart type, a
/// shutdown policy and optionally a name to register the child under after every start.
#[derive(Clone)]
pub struct ChildSpec {
    id: String,
    start: StartFn,
    restart: Restart,
    shutdown: Shutdown,
    name: Option<String>,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A child with id `id` (unique within its supervisor) started by `start`, which is called
    /// again for each restart. `start` runs inside the supervisor's process, which waits for
    /// it; it returns the child's pid (local or on another node), ideally once the child is
    /// ready (as Erlang's `start_link` returns after `init`). The supervisor links to the child
    /// when `start` returns: a child that has exited by then is seen as exiting with
    /// [`ExitReason::NoSuchProcess`]. Permanent, with a 5-second shutdown timeout, unless
    /// changed.
    pub fn new<F, Fut>(id: impl Into<String>, start: F) -> ChildSpec
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ChildPid, StartError>> + Send + 'static,
    {
        ChildSpec::from_fn(id, Arc::new(move || Box::pin(start()) as StartFuture))
    }

    /// [`ChildSpec::new`] with a start function already boxed.
    pub fn from_fn(id: impl Into<String>, start: StartFn) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            start,
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(DEFAULT_SHUTDOWN),
            name: None,
        }
    }

    /// A child that is a plain process of `rt` running `f` (spawned anew on each restart). The
    /// start returns as soon as the process is spawned, before it has run: a child that must be
    /// ready before the next one starts should be a [server](crate::server) or signal its
    /// readiness from a start function of its own ([`ChildSpec::new`]).
    pub fn worker<M, F, Fut>(id: impl Into<String>, rt: &Runtime, f: F) -> ChildSpec
    where
        M: Message,
        F: Fn(Inbox<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let rt = rt.clone();
        let f = Arc::new(f);
        ChildSpec::new(id, move || {
            let f = f.clone();
            let pid = rt.spawn(move |inbox| f(inbox));
            async move { Ok(ChildPid::from(pid)) }
        })
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> ChildSpec {
        self.restart = restart;
        self
    }

    /// Sets the shutdown policy.
    pub fn shutdown(mut self, shutdown: Shutdown) -> ChildSpec {
        self.shutdown = shutdown;
        self
    }

    /// Registers the child under `name` after each start, so that references by name (local
    /// `whereis`, and `remote(node, name)` from other nodes) reach the restarted child. Local
    /// children only; a name that is taken fails the start with [`StartError::Register`].
    pub fn name(mut self, name: impl Into<String>) -> ChildSpec {
        self.name = Some(name.into());
        self
    }

    /// The child's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The defaults of Erlang's supervisor flags: 1 restart in 5 seconds.
pub const DEFAULT_MAX_RESTARTS: u32 = 1;
/// See [`DEFAULT_MAX_RESTARTS`].
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);

/// Made from a [`DynamicSpec`]: the start function with its argument erased.
type MakeStart = Arc<dyn Fn(Box<dyn Any + Send + Sync>) -> Option<StartFn> + Send + Sync>;

#[derive(Clone)]
struct Template {
    make: MakeStart,
    restart: Restart,
    shutdown: Shutdown,
    max_children: Option<usize>,
}

/// What a supervisor process is started with.
#[derive(Clone)]
struct Config {
    strategy: Strategy,
    max_restarts: u32,
    period: Duration,
    backoff: Option<Backoff>,
    name: Option<String>,
    children: Vec<ChildSpec>,
    template: Option<Template>,
}

/// A supervisor's flags and children (Erlang's `{SupFlags, [ChildSpec]}`); [`SupervisorSpec::start`]
/// starts it, [`SupervisorSpec::into_child`] makes it a child of another supervisor.
#[derive(Clone)]
pub struct SupervisorSpec {
    cfg: Config,
}

impl fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("strategy", &self.cfg.strategy)
            .field("max_restarts", &self.cfg.max_restarts)
            .field("period", &self.cfg.period)
            .field("name", &self.cfg.name)
            .field("children", &self.cfg.children)
            .finish_non_exhaustive()
    }
}

impl SupervisorSpec {
    /// A supervisor with `strategy`, no children yet, and Erlang's default intensity (at most 1
    /// restart in 5 seconds).
    pub fn new(strategy: Strategy) -> SupervisorSpec {
        SupervisorSpec {
            cfg: Config {
                strategy,
                max_restarts: DEFAULT_MAX_RESTARTS,
                period: DEFAULT_PERIOD,
                backoff: None,
                name: None,
                children: Vec::new(),
                template: None,
            },
        }
    }

    /// Restart intensity: more than `max_restarts` restarts within `period` make the
    /// supervisor give up (stop its children and exit with
    /// [`SupervisorExit::ReachedMaxRestartIntensity`]). `max_restarts == 0`: the first exit
    /// that calls for a restart makes it give up.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> SupervisorSpec {
        self.cfg.max_restarts = max_restarts;
        self.cfg.period = period;
        self
    }

    /// Delays restarts (see [`Backoff`]).
    pub fn backoff(mut self, backoff: Backoff) -> SupervisorSpec {
        self.cfg.backoff = Some(backoff);
        self
    }

    /// Registers the supervisor under `name` (before it starts its children). Registered
    /// supervisors are the roots of the trees a node's admin process reports.
    pub fn name(mut self, name: impl Into<String>) -> SupervisorSpec {
        self.cfg.name = Some(name.into());
        self
    }

    /// Adds a child, after those added before (children start in this order).
    pub fn child(mut self, child: ChildSpec) -> SupervisorSpec {
        self.cfg.children.push(child);
        self
    }

    /// Starts the supervisor on `rt`: it starts its children in order and returns once all
    /// are started. If one fails, those already started are stopped (in reverse order), the
    /// supervisor exits with [`SupervisorExit::FailedToStartChild`], and this returns
    /// [`StartError::Child`]. Called from a supervisor's start function, the new supervisor
    /// takes that supervisor as its parent: an exit signal from it stops the new one.
    pub async fn start(self, rt: &Runtime) -> Result<Supervisor, StartError> {
        start_process(rt, self.cfg)
            .await
            .map(|pid| Supervisor { pid })
    }

    /// This supervisor as a child (id `id`) of another: started on `rt` by it, with shutdown
    /// [`Shutdown::Infinity`] and restart [`Restart::Permanent`] unless changed.
    pub fn into_child(self, id: impl Into<String>, rt: &Runtime) -> ChildSpec {
        let rt = rt.clone();
        let cfg = self.cfg;
        ChildSpec::new(id, move || {
            let rt = rt.clone();
            let cfg = cfg.clone();
            async move { start_process(&rt, cfg).await.map(ChildPid::from) }
        })
        .shutdown(Shutdown::Infinity)
    }
}

/// A dynamic supervisor (Erlang's `simple_one_for_one`, Elixir's `DynamicSupervisor`): no
/// children at start; children of one kind are started at run time with
/// [`DynamicSupervisor::start_child`]`(arg)`, each by the start function given the argument
/// (which is kept, cloned, for restarts). Strategy one-for-one; restart type, shutdown policy,
/// intensity, backoff and a maximum number of children are set here. Its children have no
/// order: when it stops, they all get the shutdown signal at once and share one timeout (as in
/// Erlang's `simple_one_for_one`).
pub struct DynamicSpec<A> {
    make: Arc<dyn Fn(A) -> StartFuture + Send + Sync>,
    restart: Restart,
    shutdown: Shutdown,
    max_children: Option<usize>,
    max_restarts: u32,
    period: Duration,
    backoff: Option<Backoff>,
    name: Option<String>,
}

impl<A> Clone for DynamicSpec<A> {
    fn clone(&self) -> Self {
        DynamicSpec {
            make: self.make.clone(),
            restart: self.restart,
            shutdown: self.shutdown,
            max_children: self.max_children,
            max_restarts: self.max_restarts,
            period: self.period,
            backoff: self.backoff,
            name: self.name.clone(),
        }
    }
}

impl<A> fmt::Debug for DynamicSpec<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamicSpec")
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("max_children", &self.max_children)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<A: Clone + Send + Sync + 'static> DynamicSpec<A> {
    /// Children started by `start(arg)`. Permanent, 5-second shutdown timeout, no maximum,
    /// intensity 1 in 5 seconds, unless changed.
    pub fn new<F, Fut>(start: F) -> DynamicSpec<A>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ChildPid, StartError>> + Send + 'static,
    {
        DynamicSpec {
            make: Arc::new(move |a| Box::pin(start(a)) as StartFuture),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(DEFAULT_SHUTDOWN),
            max_children: None,
            max_restarts: DEFAULT_MAX_RESTARTS,
            period: DEFAULT_PERIOD,
            backoff: None,
            name: None,
        }
    }

    /// The children's restart type. Children that are not restarted are removed.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// The children's shutdown policy.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// At most `max` children at once; [`DynamicSupervisor::start_child`] fails with
    /// [`StartError::MaxChildren`] beyond (Elixir's `max_children`).
    pub fn max_children(mut self, max: usize) -> Self {
        self.max_children = Some(max);
        self
    }

    /// Restart intensity, as [`SupervisorSpec::intensity`].
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Delays restarts (see [`Backoff`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Registers the supervisor under `name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn config(self) -> Config {
        let make = self.make;
        let make: MakeStart = Arc::new(move |arg: Box<dyn Any + Send + Sync>| {
            let arg = *arg.downcast::<A>().ok()?;
            let make = make.clone();
            Some(Arc::new(move || make(arg.clone())) as StartFn)
        });
        Config {
            strategy: Strategy::OneForOne,
            max_restarts: self.max_restarts,
            period: self.period,
            backoff: self.backoff,
            name: self.name,
            children: Vec::new(),
            template: Some(Template {
                make,
                restart: self.restart,
                shutdown: self.shutdown,
                max_children: self.max_children,
            }),
        }
    }

    /// Starts the dynamic supervisor on `rt`.
    pub async fn start(self, rt: &Runtime) -> Result<DynamicSupervisor<A>, StartError> {
        let pid = start_process(rt, self.config()).await?;
        Ok(DynamicSupervisor {
            sup: Supervisor { pid },
            _arg: PhantomData,
        })
    }

    /// This dynamic supervisor as a child (id `id`) of another supervisor, with shutdown
    /// [`Shutdown::Infinity`]. Its children are not kept when it is restarted.
    pub fn into_child(self, id: impl Into<String>, rt: &Runtime) -> ChildSpec {
        let rt = rt.clone();
        let cfg = self.config();
        ChildSpec::new(id, move || {
            let rt = rt.clone();
            let cfg = cfg.clone();
            async move { start_process(&rt, cfg).await.map(ChildPid::from) }
        })
        .shutdown(Shutdown::Infinity)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and introspection

/// What a supervisor process receives. Use the [`Supervisor`] and [`DynamicSupervisor`]
/// handles rather than sending these by hand. Serializable, so a supervisor on another node can
/// be asked the same (all but [`SupervisorRequest::StartChild`], which carries a start function
/// and is local-only: sending it to another node fails to encode).
#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SupervisorRequest {
    /// The supervisor's flags and children.
    Describe(ReplyTo<SupervisorInfo>),
    /// Erlang's `count_children`.
    CountChildren(ReplyTo<ChildCounts>),
    /// Stops the child `id` (by its shutdown policy) and keeps its spec, not running (a
    /// temporary child's spec is removed). Erlang's `terminate_child`.
    TerminateChild {
        /// The child's id.
        id: String,
        /// The outcome.
        reply: ReplyTo<Result<(), ChildError>>,
    },
    /// Stops the dynamic child with this identity and removes it.
    TerminatePid {
        /// The child's identity.
        pid: ProcessId,
        /// The outcome.
        reply: ReplyTo<Result<(), ChildError>>,
    },
    /// Starts the stopped child `id` again. Erlang's `restart_child`.
    RestartChild {
        /// The child's id.
        id: String,
        /// Its new identity, or why not.
        reply: ReplyTo<Result<ProcessId, ChildError>>,
    },
    /// Removes the stopped child `id`. Erlang's `delete_child`.
    DeleteChild {
        /// The child's id.
        id: String,
        /// The outcome.
        reply: ReplyTo<Result<(), ChildError>>,
    },
    /// Stops all children in reverse order and exits with [`ExitReason::Shutdown`].
    Stop,
    /// Adds and starts a child (local only: not serializable).
    #[serde(skip)]
    StartChild(LocalStart),
}

/// A local-only request to start a child: a spec, or the argument of a dynamic supervisor.
pub struct LocalStart {
    what: StartWhat,
    reply: oneshot::Sender<Result<ChildPid, StartError>>,
}

enum StartWhat {
    Spec(ChildSpec),
    Arg(Box<dyn Any + Send + Sync>),
}

impl fmt::Debug for LocalStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.what {
            StartWhat::Spec(s) => write!(f, "LocalStart({s:?})"),
            StartWhat::Arg(_) => f.write_str("LocalStart(arg)"),
        }
    }
}

/// Why a supervisor refused a request about one of its children.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// No child has this id (or identity).
    #[error("no such child")]
    NotFound,
    /// The child is running (delete and restart need a stopped child).
    #[error("the child is running")]
    Running,
    /// The child could not be started; the supervisor's log says why.
    #[error("the child failed to start")]
    StartFailed,
    /// The request needs a static child, or a dynamic one.
    #[error("not supported by this kind of supervisor")]
    WrongKind,
}

/// Why a request to a supervisor about a child failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChildRequestError {
    /// The supervisor could not be asked.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The supervisor refused.
    #[error(transparent)]
    Child(#[from] ChildError),
}

/// Whether a child runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChildStatus {
    /// It runs.
    Running,
    /// It exited and waits for its restart (a [`Backoff`] delay, or a restart that failed and
    /// is tried again).
    Restarting,
    /// It is not running and will not be restarted until asked (a transient child that ended,
    /// or one stopped with `terminate_child`).
    Stopped,
}

/// One child as its supervisor reports it (Erlang's `which_children`, with the restart count).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// The child's id (for children of a dynamic supervisor: a number given at start).
    pub id: String,
    /// The running child's identity.
    pub process: Option<ProcessId>,
    /// The running child's persistent form (see [`ProcessUri`]).
    pub uri: Option<String>,
    /// Whether it runs.
    pub status: ChildStatus,
    /// Its restart type.
    pub restart: Restart,
    /// Its shutdown policy.
    pub shutdown: Shutdown,
    /// How many times the supervisor restarted it.
    pub restarts: u64,
    /// The name it is registered under after each start.
    pub name: Option<String>,
    /// The running child as a supervisor, if it is one.
    pub supervisor: Option<Pid<SupervisorRequest>>,
}

/// A supervisor's flags and children, as it reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    /// The supervisor's identity.
    pub process: ProcessId,
    /// The name it registered at start.
    pub name: Option<String>,
    /// Its strategy.
    pub strategy: Strategy,
    /// Whether it is a dynamic supervisor.
    pub dynamic: bool,
    /// Its restart intensity: at most this many restarts...
    pub max_restarts: u32,
    /// ...within this many milliseconds.
    pub period_ms: u64,
    /// Restarts it made in all.
    pub restarts: u64,
    /// Its children, in start order.
    pub children: Vec<ChildInfo>,
}

/// Erlang's `count_children`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildCounts {
    /// Children the supervisor knows (running or not).
    pub specs: usize,
    /// Children running.
    pub active: usize,
    /// Running children that are supervisors.
    pub supervisors: usize,
    /// Running children that are not.
    pub workers: usize,
}

/// A supervision tree: a supervisor and, under each child that is a supervisor, its tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupervisionTree {
    /// The supervisor at the root.
    pub supervisor: SupervisorInfo,
    /// The trees of the children that are supervisors, in the order of `supervisor.children`
    /// (`None` for workers, and for supervisors that did not answer).
    pub subtrees: Vec<Option<SupervisionTree>>,
}

impl SupervisionTree {
    /// The tree as text, one line per supervisor and child, indented by depth:
    /// `<id> <status> <uri or -> restarts=<n> <restart type>`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.render(0, &mut out);
        out
    }

    fn render(&self, depth: usize, out: &mut Vec<String>) {
        let s = &self.supervisor;
        let indent = "  ".repeat(depth);
        if depth == 0 {
            out.push(format!(
                "{indent}{} {} {:?} restarts={} intensity={}/{}ms{}",
                s.name.as_deref().unwrap_or("-"),
                s.process,
                s.strategy,
                s.restarts,
                s.max_restarts,
                s.period_ms,
                if s.dynamic { " dynamic" } else { "" }
            ));
        }
        for (child, sub) in s.children.iter().zip(&self.subtrees) {
            out.push(format!(
                "{indent}  {} {:?} {} restarts={} {:?}{}{}",
                child.id,
                child.status,
                child.uri.as_deref().unwrap_or("-"),
                child.restarts,
                child.restart,
                child
                    .name
                    .as_deref()
                    .map(|n| format!(" name={n}"))
                    .unwrap_or_default(),
                if child.supervisor.is_some() {
                    format!(
                        " supervisor {:?}",
                        sub.as_ref().map(|t| t.supervisor.strategy)
                    )
                } else {
                    String::new()
                }
            ));
            if let Some(sub) = sub {
                sub.render(depth + 1, out);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handles

/// A handle to a supervisor process: its pid with typed requests. Cheap to clone; works for a
/// supervisor on another node too (all requests but [`Supervisor::start_child`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Supervisor {
    pid: Pid<SupervisorRequest>,
}

impl From<Supervisor> for ChildPid {
    fn from(s: Supervisor) -> ChildPid {
        ChildPid::from(s.pid)
    }
}

impl Supervisor {
    /// A handle from the supervisor's pid (for example one found with `whereis`).
    pub fn from_pid(pid: Pid<SupervisorRequest>) -> Supervisor {
        Supervisor { pid }
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> &Pid<SupervisorRequest> {
        &self.pid
    }

    /// The supervisor's flags, restart count and children.
    pub async fn describe(&self, timeout: Duration) -> Result<SupervisorInfo, CallError> {
        self.pid.call(SupervisorRequest::Describe, timeout).await
    }

    /// The children, in start order (Erlang's `which_children`, with restart counts).
    pub async fn which_children(&self, timeout: Duration) -> Result<Vec<ChildInfo>, CallError> {
        Ok(self.describe(timeout).await?.children)
    }

    /// Erlang's `count_children`.
    pub async fn count_children(&self, timeout: Duration) -> Result<ChildCounts, CallError> {
        self.pid
            .call(SupervisorRequest::CountChildren, timeout)
            .await
    }

    /// The whole tree under this supervisor: its children, and the trees of those that are
    /// supervisors (each asked with `timeout`; one that does not answer has no subtree, nor
    /// one already on the path from the root, nor one deeper than [`MAX_TREE_DEPTH`]). Every
    /// child is in the answer: a dynamic supervisor with very many children makes a large
    /// one (from another node, larger than the frame limit fails with
    /// [`CallError::ReplyNotSent`]).
    pub async fn tree(&self, timeout: Duration) -> Result<SupervisionTree, CallError> {
        tree_of(self.clone(), timeout, Vec::new()).await
    }

    /// Stops the child `id` by its shutdown policy; it is not restarted until
    /// [`Supervisor::restart_child`] (a temporary child is removed).
    pub async fn terminate_child(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<(), ChildRequestError> {
        let id = id.to_string();
        Ok(self
            .pid
            .call(
                |reply| SupervisorRequest::TerminateChild { id, reply },
                timeout,
            )
            .await??)
    }

    /// Starts the stopped child `id` again; returns its identity.
    pub async fn restart_child(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<ProcessId, ChildRequestError> {
        let id = id.to_string();
        Ok(self
            .pid
            .call(
                |reply| SupervisorRequest::RestartChild { id, reply },
                timeout,
            )
            .await??)
    }

    /// Removes the stopped child `id`.
    pub async fn delete_child(&self, id: &str, timeout: Duration) -> Result<(), ChildRequestError> {
        let id = id.to_string();
        Ok(self
            .pid
            .call(
                |reply| SupervisorRequest::DeleteChild { id, reply },
                timeout,
            )
            .await??)
    }

    /// Adds `spec` after the existing children and starts it (Erlang's `start_child` on a
    /// static supervisor). Local supervisors only ([`StartError::NotLocal`]).
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ChildPid, StartError> {
        self.local_start(StartWhat::Spec(spec)).await
    }

    async fn local_start(&self, what: StartWhat) -> Result<ChildPid, StartError> {
        if !self.pid.is_local() {
            return Err(StartError::NotLocal);
        }
        let (tx, rx) = oneshot::channel();
        self.pid
            .send(SupervisorRequest::StartChild(LocalStart {
                what,
                reply: tx,
            }))
            .map_err(|_| StartError::SupervisorDown)?;
        rx.await.unwrap_or(Err(StartError::SupervisorDown))
    }

    /// Stops the supervisor: its children are stopped in reverse order, then it exits with
    /// [`ExitReason::Shutdown`]. Returns the reason it exited with once it has (a supervisor
    /// that was already gone: no-such-process), or fails with [`CallError::Timeout`] after
    /// `timeout`.
    pub async fn stop(&self, timeout: Duration) -> Result<ExitReason, CallError> {
        let rt = self
            .pid
            .runtime()
            .ok_or(CallError::Send(SendErrorKind::NoSuchProcess))?;
        let down = rt.monitor(&self.pid);
        if let Err(e) = self.pid.send(SupervisorRequest::Stop)
            && e.kind != SendErrorKind::NoSuchProcess
        {
            return Err(CallError::Send(e.kind));
        }
        tokio::time::timeout(timeout, down)
            .await
            .map(|d| d.reason)
            .map_err(|_| CallError::Timeout(timeout))
    }
}

/// How deep [`Supervisor::tree`] descends (a start function could return a supervisor that
/// is already in the tree, making it a cycle; the walk also stops at a supervisor it has seen).
pub const MAX_TREE_DEPTH: usize = 32;

fn tree_of(
    sup: Supervisor,
    timeout: Duration,
    mut seen: Vec<ProcessId>,
) -> BoxFuture<'static, Result<SupervisionTree, CallError>> {
    Box::pin(async move {
        let info = sup.describe(timeout).await?;
        seen.push(info.process);
        let mut subtrees = Vec::with_capacity(info.children.len());
        for child in &info.children {
            let sub = match &child.supervisor {
                Some(pid)
                    if seen.len() < MAX_TREE_DEPTH
                        && pid.id().is_some_and(|id| !seen.contains(&id)) =>
                {
                    tree_of(Supervisor::from_pid(pid.clone()), timeout, seen.clone())
                        .await
                        .ok()
                }
                _ => None,
            };
            subtrees.push(sub);
        }
        Ok(SupervisionTree {
            supervisor: info,
            subtrees,
        })
    })
}

/// A handle to a dynamic supervisor whose children are started with an argument of type `A`.
pub struct DynamicSupervisor<A> {
    sup: Supervisor,
    _arg: PhantomData<fn(A)>,
}

impl<A> Clone for DynamicSupervisor<A> {
    fn clone(&self) -> Self {
        DynamicSupervisor {
            sup: self.sup.clone(),
            _arg: PhantomData,
        }
    }
}

impl<A> fmt::Debug for DynamicSupervisor<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DynamicSupervisor({})", self.sup.pid)
    }
}

impl<A> From<DynamicSupervisor<A>> for ChildPid {
    fn from(s: DynamicSupervisor<A>) -> ChildPid {
        ChildPid::from(s.sup.pid)
    }
}

impl<A: Send + Sync + 'static> DynamicSupervisor<A> {
    /// A handle from the supervisor's pid (for example [`ChildInfo::supervisor`]). The argument
    /// type is not checked here: a supervisor of another argument type (or a static one)
    /// refuses [`DynamicSupervisor::start_child`] with [`StartError::NotDynamic`].
    pub fn from_pid(pid: Pid<SupervisorRequest>) -> Self {
        DynamicSupervisor {
            sup: Supervisor { pid },
            _arg: PhantomData,
        }
    }

    /// Starts a child with `arg` (Erlang's `start_child(Sup, Args)`). Fails with
    /// [`StartError::MaxChildren`] when the supervisor runs its maximum, or with the start
    /// function's error. Local supervisors only ([`StartError::NotLocal`]).
    pub async fn start_child(&self, arg: A) -> Result<ChildPid, StartError> {
        self.sup.local_start(StartWhat::Arg(Box::new(arg))).await
    }

    /// Stops the child `child` by the shutdown policy and removes it.
    pub async fn terminate_child(
        &self,
        child: ProcessId,
        timeout: Duration,
    ) -> Result<(), ChildRequestError> {
        Ok(self
            .sup
            .pid
            .call(
                |reply| SupervisorRequest::TerminatePid { pid: child, reply },
                timeout,
            )
            .await??)
    }

    /// The supervisor behind this handle (introspection, stop).
    pub fn supervisor(&self) -> &Supervisor {
        &self.sup
    }
}

// ---------------------------------------------------------------------------------------------
// The supervisor process

/// Spawns a supervisor process with `cfg` and waits until it has started its children.
async fn start_process(rt: &Runtime, cfg: Config) -> Result<Pid<SupervisorRequest>, StartError> {
    let parent = current_parent();
    let (tx, rx) = oneshot::channel();
    let pid = rt.spawn(move |inbox: Inbox<SupervisorRequest>| run(inbox, cfg, parent, tx));
    let down = rt.monitor(&pid);
    match rx.await {
        Ok(Ok(())) => Ok(pid),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StartError::Exited(down.await.reason)),
    }
}

struct Child {
    spec: ChildSpec,
    pid: Option<ChildPid>,
    /// Restarts of this child in all.
    restarts: u64,
    /// Times of its recent restarts (for the backoff).
    recent: VecDeque<Instant>,
    /// When its pending restart is due.
    due: Option<Instant>,
    /// A child of a dynamic supervisor (removed rather than kept when it ends).
    dynamic: bool,
}

impl Child {
    fn new(spec: ChildSpec, dynamic: bool) -> Child {
        Child {
            spec,
            pid: None,
            restarts: 0,
            recent: VecDeque::new(),
            due: None,
            dynamic,
        }
    }

    fn info(&self) -> ChildInfo {
        let status = match (&self.pid, self.due) {
            (Some(_), _) => ChildStatus::Running,
            (None, Some(_)) => ChildStatus::Restarting,
            (None, None) => ChildStatus::Stopped,
        };
        ChildInfo {
            id: self.spec.id.clone(),
            process: self.pid.as_ref().and_then(|p| p.id()),
            uri: self.pid.as_ref().map(|p| p.uri().to_string()),
            status,
            restart: self.spec.restart,
            shutdown: self.spec.shutdown,
            restarts: self.restarts,
            name: self.spec.name.clone(),
            supervisor: self
                .pid
                .as_ref()
                .and_then(|p| p.downcast::<SupervisorRequest>()),
        }
    }
}

struct Sup {
    rt: Runtime,
    me: ProcessId,
    parent: Option<ProcessId>,
    cfg: Config,
    children: Vec<Child>,
    /// Times of the restarts within the intensity period.
    restarts: VecDeque<Instant>,
    total_restarts: u64,
    next_dynamic_id: u64,
}

/// What ends the supervisor's loop.
struct Stop(ExitReason);

async fn run(
    inbox: Inbox<SupervisorRequest>,
    cfg: Config,
    parent: Option<ProcessId>,
    started: oneshot::Sender<Result<(), StartError>>,
) {
    let mut inbox = inbox;
    inbox.trap_exit(true);
    let rt = inbox.runtime();
    if let Some(name) = &cfg.name
        && let Err(e) = rt.register(name, &inbox.pid())
    {
        let _ = started.send(Err(StartError::Register(e)));
        return;
    }
    let specs = cfg.children.clone();
    let mut sup = Sup {
        rt,
        me: inbox.process_id(),
        parent,
        cfg,
        children: specs.into_iter().map(|s| Child::new(s, false)).collect(),
        restarts: VecDeque::new(),
        total_restarts: 0,
        next_dynamic_id: 1,
    };
    for i in 0..sup.children.len() {
        if let Err(e) = sup.start_child(&inbox, i).await {
            let child = sup.children[i].spec.id.clone();
            tracing::warn!(target: "conc::supervisor", supervisor = %sup.me, %child, "child failed to start: {e}");
            sup.terminate_all(&inbox).await;
            let _ = started.send(Err(StartError::Child {
                child: child.clone(),
                reason: Box::new(e),
            }));
            exit(
                &inbox,
                ExitReason::Supervisor(SupervisorExit::FailedToStartChild { child }),
            )
            .await;
            return;
        }
    }
    let _ = started.send(Ok(()));
    let Stop(reason) = sup.serve(&mut inbox).await;
    exit(&inbox, reason).await;
}

/// Ends the process with `reason`.
async fn exit(inbox: &Inbox<SupervisorRequest>, reason: ExitReason) {
    inbox.exit(reason);
    // The exit aborts this task at its next await.
    std::future::pending::<()>().await;
}

impl Sup {
    async fn serve(&mut self, inbox: &mut Inbox<SupervisorRequest>) -> Stop {
        loop {
            let due = self.children.iter().filter_map(|c| c.due).min();
            let event = match due {
                Some(due) => {
                    tokio::select! {
                        biased;
                        ev = inbox.recv_event() => ev,
                        () = tokio::time::sleep_until(due) => {
                            if let Err(stop) = self.restart_due(inbox).await {
                                return stop;
                            }
                            continue;
                        }
                    }
                }
                None => inbox.recv_event().await,
            };
            let result = match event {
                // The runtime shuts down.
                None => return Stop(ExitReason::Shutdown),
                Some(Event::Message(req)) => self.handle(inbox, req).await,
                Some(Event::Exit(exit)) => self.on_exit(inbox, exit).await,
                Some(Event::Down(_)) => Ok(()),
            };
            if let Err(stop) = result {
                return stop;
            }
        }
    }

    async fn handle(
        &mut self,
        inbox: &Inbox<SupervisorRequest>,
        req: SupervisorRequest,
    ) -> Result<(), Stop> {
        match req {
            SupervisorRequest::Describe(reply) => {
                let _ = reply.send(self.describe());
            }
            SupervisorRequest::CountChildren(reply) => {
                let active: Vec<&Child> =
                    self.children.iter().filter(|c| c.pid.is_some()).collect();
                let supervisors = active
                    .iter()
                    .filter(|c| c.pid.as_ref().is_some_and(|p| p.supervisor().is_some()))
                    .count();
                let _ = reply.send(ChildCounts {
                    specs: self.children.len(),
                    active: active.len(),
                    supervisors,
                    workers: active.len() - supervisors,
                });
            }
            SupervisorRequest::TerminateChild { id, reply } => {
                let outcome = match self.index_of(&id) {
                    None => Err(ChildError::NotFound),
                    Some(i) if self.children[i].dynamic => Err(ChildError::WrongKind),
                    Some(i) => {
                        self.terminate(inbox, i).await;
                        self.children[i].due = None;
                        if self.children[i].spec.restart == Restart::Temporary {
                            self.children.remove(i);
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(outcome);
            }
            SupervisorRequest::TerminatePid { pid, reply } => {
                let found = self
                    .children
                    .iter()
                    .position(|c| c.pid.as_ref().and_then(|p| p.id()) == Some(pid));
                let outcome = match found {
                    None => Err(ChildError::NotFound),
                    Some(i) if !self.children[i].dynamic => Err(ChildError::WrongKind),
                    Some(i) => {
                        self.terminate(inbox, i).await;
                        self.children.remove(i);
                        Ok(())
                    }
                };
                let _ = reply.send(outcome);
            }
            SupervisorRequest::RestartChild { id, reply } => {
                let outcome = match self.index_of(&id) {
                    None => Err(ChildError::NotFound),
                    Some(i) if self.children[i].dynamic => Err(ChildError::WrongKind),
                    Some(i) if self.children[i].pid.is_some() => Err(ChildError::Running),
                    Some(i) => {
                        self.children[i].due = None;
                        match self.start_child(inbox, i).await {
                            Ok(pid) => pid.id().ok_or(ChildError::StartFailed),
                            Err(e) => {
                                tracing::warn!(target: "conc::supervisor", supervisor = %self.me, child = %id, "restart_child failed: {e}");
                                Err(ChildError::StartFailed)
                            }
                        }
                    }
                };
                let _ = reply.send(outcome);
            }
            SupervisorRequest::DeleteChild { id, reply } => {
                let outcome = match self.index_of(&id) {
                    None => Err(ChildError::NotFound),
                    Some(i) if self.children[i].dynamic => Err(ChildError::WrongKind),
                    Some(i) if self.children[i].pid.is_some() => Err(ChildError::Running),
                    Some(i) => {
                        self.children.remove(i);
                        Ok(())
                    }
                };
                let _ = reply.send(outcome);
            }
            SupervisorRequest::Stop => {
                self.terminate_all(inbox).await;
                return Err(Stop(ExitReason::Shutdown));
            }
            SupervisorRequest::StartChild(LocalStart { what, reply }) => {
                let outcome = self.add_child(inbox, what).await;
                let _ = reply.send(outcome);
            }
        }
        Ok(())
    }

    fn describe(&self) -> SupervisorInfo {
        SupervisorInfo {
            process: self.me,
            name: self.cfg.name.clone(),
            strategy: self.cfg.strategy,
            dynamic: self.cfg.template.is_some(),
            max_restarts: self.cfg.max_restarts,
            period_ms: u64::try_from(self.cfg.period.as_millis()).unwrap_or(u64::MAX),
            restarts: self.total_restarts,
            children: self.children.iter().map(Child::info).collect(),
        }
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.id == id)
    }

    async fn add_child(
        &mut self,
        inbox: &Inbox<SupervisorRequest>,
        what: StartWhat,
    ) -> Result<ChildPid, StartError> {
        let (spec, dynamic) = match (what, &self.cfg.template) {
            (StartWhat::Spec(spec), None) => {
                if self.index_of(&spec.id).is_some() {
                    return Err(StartError::DuplicateId(spec.id));
                }
                (spec, false)
            }
            (StartWhat::Arg(arg), Some(t)) => {
                if let Some(max) = t.max_children
                    && self.children.len() >= max
                {
                    return Err(StartError::MaxChildren(max));
                }
                let start = (t.make)(arg).ok_or(StartError::NotDynamic)?;
                let id = self.next_dynamic_id.to_string();
                self.next_dynamic_id += 1;
                let spec = ChildSpec::from_fn(id, start)
                    .restart(t.restart)
                    .shutdown(t.shutdown);
                (spec, true)
            }
            _ => return Err(StartError::NotDynamic),
        };
        self.children.push(Child::new(spec, dynamic));
        let i = self.children.len() - 1;
        match self.start_child(inbox, i).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                self.children.remove(i);
                Err(e)
            }
        }
    }

    /// Starts child `i` (not running): runs its start function with this supervisor as the
    /// parent, links to the child and registers its name.
    async fn start_child(
        &mut self,
        inbox: &Inbox<SupervisorRequest>,
        i: usize,
    ) -> Result<ChildPid, StartError> {
        let spec = self.children[i].spec.clone();
        let pid = PARENT.scope(self.me, (spec.start)()).await?;
        if pid.id().is_none() {
            pid.kill();
            return Err(StartError::NoProcessId);
        }
        pid.0.link(inbox);
        if let Some(name) = &spec.name
            && pid.is_local()
            && let Err(e) = pid.0.register(&self.rt, name)
        {
            pid.0.unlink(inbox);
            pid.kill();
            return Err(StartError::Register(e));
        }
        tracing::debug!(target: "conc::supervisor", supervisor = %self.me, child = %spec.id, pid = %pid.uri(), "child started");
        self.children[i].pid = Some(pid.clone());
        Ok(pid)
    }

    /// Stops child `i` by its shutdown policy and waits for its exit.
    async fn terminate(&mut self, inbox: &Inbox<SupervisorRequest>, i: usize) {
        let Some(pid) = self.children[i].pid.take() else {
            return;
        };
        let mut down = pid.0.monitor(&self.rt);
        pid.0.unlink(inbox);
        match self.children[i].spec.shutdown {
            Shutdown::BrutalKill => {
                pid.kill();
                down.await;
            }
            Shutdown::Timeout(limit) => {
                pid.0.shutdown(self.me);
                if tokio::time::timeout(limit, &mut down).await.is_err() {
                    tracing::debug!(target: "conc::supervisor", supervisor = %self.me, child = %self.children[i].spec.id, "shutdown timed out: killing");
                    pid.kill();
                    down.await;
                }
            }
            Shutdown::Infinity => {
                pid.0.shutdown(self.me);
                down.await;
            }
        }
    }

    /// Stops every running child, in reverse start order.
    async fn terminate_all(&mut self, inbox: &Inbox<SupervisorRequest>) {
        if let Some(t) = &self.cfg.template {
            let policy = t.shutdown;
            return self.terminate_all_at_once(inbox, policy).await;
        }
        for i in (0..self.children.len()).rev() {
            self.terminate(inbox, i).await;
        }
    }

    /// Stops every child of a dynamic supervisor at once (they have no order), as Erlang's
    /// `simple_one_for_one` does: the shutdown signal to all, one timeout for all, then a kill
    /// for those still running.
    async fn terminate_all_at_once(&mut self, inbox: &Inbox<SupervisorRequest>, policy: Shutdown) {
        use futures_util::StreamExt;
        let mut running = std::collections::HashMap::new();
        let mut downs = futures_util::stream::FuturesUnordered::new();
        for (k, c) in self.children.iter_mut().enumerate() {
            let Some(pid) = c.pid.take() else { continue };
            let down = pid.0.monitor(&self.rt);
            pid.0.unlink(inbox);
            match policy {
                Shutdown::BrutalKill => pid.kill(),
                Shutdown::Timeout(_) | Shutdown::Infinity => pid.0.shutdown(self.me),
            }
            running.insert(k, pid);
            downs.push(async move {
                down.await;
                k
            });
        }
        let deadline = match policy {
            Shutdown::Timeout(limit) => Some(Instant::now() + limit),
            Shutdown::BrutalKill | Shutdown::Infinity => None,
        };
        let mut killed = false;
        loop {
            let next = match deadline {
                Some(at) if !killed => {
                    tokio::select! {
                        next = downs.next() => next,
                        () = tokio::time::sleep_until(at) => {
                            tracing::debug!(target: "conc::supervisor", supervisor = %self.me, left = running.len(), "shutdown timed out: killing");
                            for pid in running.values() {
                                pid.kill();
                            }
                            killed = true;
                            continue;
                        }
                    }
                }
                _ => downs.next().await,
            };
            match next {
                Some(k) => {
                    running.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Records a restart; false when it exceeds the intensity.
    fn add_restart(&mut self, now: Instant) -> bool {
        self.restarts.push_back(now);
        let period = self.cfg.period;
        self.restarts.retain(|t| now.duration_since(*t) < period);
        self.total_restarts += 1;
        self.restarts.len() <= self.cfg.max_restarts as usize
    }

    /// When child `i`'s next restart is due (with the backoff).
    fn restart_at(&mut self, i: usize, now: Instant) -> Instant {
        let period = self.cfg.period;
        let child = &mut self.children[i];
        child.recent.push_back(now);
        child.recent.retain(|t| now.duration_since(*t) < period);
        let n = u32::try_from(child.recent.len()).unwrap_or(u32::MAX);
        match self.cfg.backoff {
            Some(b) => now + b.delay(n),
            None => now,
        }
    }

    async fn give_up(&mut self, inbox: &Inbox<SupervisorRequest>, child: String) -> Stop {
        tracing::warn!(target: "conc::supervisor", supervisor = %self.me, %child, "reached max restart intensity: stopping");
        self.terminate_all(inbox).await;
        Stop(ExitReason::Supervisor(
            SupervisorExit::ReachedMaxRestartIntensity { child },
        ))
    }

    async fn on_exit(&mut self, inbox: &Inbox<SupervisorRequest>, exit: Exit) -> Result<(), Stop> {
        if Some(exit.pid) == self.parent {
            self.terminate_all(inbox).await;
            return Err(Stop(exit.reason));
        }
        let Some(i) = self
            .children
            .iter()
            .position(|c| c.pid.as_ref().and_then(|p| p.id()) == Some(exit.pid))
        else {
            // A child already stopped (its exit signal came after its monitor), or a process
            // that linked itself to the supervisor.
            tracing::trace!(target: "conc::supervisor", supervisor = %self.me, pid = %exit.pid, reason = %exit.reason, "exit of a process that is not a child");
            return Ok(());
        };
        let id = self.children[i].spec.id.clone();
        tracing::debug!(target: "conc::supervisor", supervisor = %self.me, child = %id, reason = %exit.reason, "child exited");
        self.children[i].pid = None;
        let restart = match self.children[i].spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !(exit.reason.is_normal() || exit.reason.is_shutdown()),
            Restart::Temporary => false,
        };
        if !restart {
            if self.children[i].dynamic || self.children[i].spec.restart == Restart::Temporary {
                self.children.remove(i);
            }
            return Ok(());
        }
        let now = Instant::now();
        if !self.add_restart(now) {
            return Err(self.give_up(inbox, id).await);
        }
        let due = self.restart_at(i, now);
        // The group restarted with child `i`: the others are stopped in reverse order first.
        let range = match self.cfg.strategy {
            Strategy::OneForOne => i..i + 1,
            Strategy::OneForAll => 0..self.children.len(),
            Strategy::RestForOne => i..self.children.len(),
        };
        // Children that ended for good (a transient child's normal exit) stay stopped.
        let group: Vec<usize> = range
            .filter(|&j| j == i || self.children[j].pid.is_some() || self.children[j].due.is_some())
            .collect();
        for &j in group.iter().rev() {
            if j != i {
                self.terminate(inbox, j).await;
            }
        }
        for &j in &group {
            self.children[j].due = Some(due);
            if j != i {
                self.children[j].restarts += 1;
            }
        }
        self.children[i].restarts += 1;
        // Temporary children stopped with the group are not restarted (removed), as in Erlang.
        self.children
            .retain(|c| !(c.spec.restart == Restart::Temporary && c.pid.is_none()));
        if due <= now {
            self.restart_due(inbox).await
        } else {
            Ok(())
        }
    }

    /// Starts the children whose restart is due, in order. A child that fails to start counts
    /// as another restart and is tried again (after the backoff); the children after it wait.
    async fn restart_due(&mut self, inbox: &Inbox<SupervisorRequest>) -> Result<(), Stop> {
        let now = Instant::now();
        let mut i = 0;
        while i < self.children.len() {
            if self.children[i].due.is_some_and(|d| d <= now) {
                match self.start_child(inbox, i).await {
                    Ok(_) => self.children[i].due = None,
                    Err(e) => {
                        let id = self.children[i].spec.id.clone();
                        tracing::warn!(target: "conc::supervisor", supervisor = %self.me, child = %id, "restart failed: {e}");
                        let now = Instant::now();
                        if !self.add_restart(now) {
                            return Err(self.give_up(inbox, id).await);
                        }
                        let due = self.restart_at(i, now);
                        for c in &mut self.children[i..] {
                            if c.due.is_some() {
                                c.due = Some(due);
                            }
                        }
                        return Ok(());
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }
}

/// The supervision trees of the supervisors registered on `rt` (those not already part of
/// another registered supervisor's tree), each supervisor asked with `timeout`. What a node's
/// admin process reports.
pub async fn registered_trees(rt: &Runtime, timeout: Duration) -> Vec<SupervisionTree> {
    let mut trees = Vec::new();
    for name in rt.registered() {
        if let Ok(pid) = rt.whereis::<SupervisorRequest>(&name)
            && let Ok(tree) = Supervisor::from_pid(pid).tree(timeout).await
        {
            trees.push(tree);
        }
    }
    fn contains(t: &SupervisionTree, p: ProcessId) -> bool {
        t.subtrees
            .iter()
            .flatten()
            .any(|s| s.supervisor.process == p || contains(s, p))
    }
    let all = trees.clone();
    trees.retain(|t| {
        !all.iter()
            .any(|other| contains(other, t.supervisor.process))
    });
    trees
}
