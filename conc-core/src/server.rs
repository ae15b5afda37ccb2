//! The server behaviour (Erlang/OTP's `gen_server`): a process that holds a state and
//! answers calls, casts and other messages through the callbacks of the [`Server`] trait, with
//! a typed client handle, [`ServerRef`].
//!
//! A server is an ordinary process on [`Inbox`]: its messages are [`Request`]s (a call with
//! its reply handle, a cast, an info message, or a stop), serializable when the server's own
//! types are, so a server can be called from another node like any process. Monitors' `Down`s,
//! links' exits (when the server traps exits) and timers ([`ServerContext::send_after`]) reach
//! [`Server::handle_info`].
//!
//! The callbacks run one at a time, in the server's process, in the order the messages
//! arrived. [`Server::terminate`] runs when the server stops: after a callback asked for it
//! ([`ServerContext::stop`]), after [`ServerRef::stop`], when a callback panics (then the
//! process exits with the panic), or, when the server traps exits, on an exit signal from its
//! parent (the supervisor that started it: its orderly [`ExitReason::Shutdown`]), as in
//! Erlang.
//!
//! ```
//! use conc_core::server::{Server, ServerContext, ServerRef};
//! use conc_core::Runtime;
//! use std::time::Duration;
//!
//! struct Counter(u64);
//!
//! impl Server for Counter {
//!     type Call = ();       // "what is the count?"
//!     type Reply = u64;
//!     type Cast = u64;      // "add this"
//!     type Info = ();
//!
//!     async fn handle_call(&mut self, _: (), _ctx: &mut ServerContext<Self>) -> u64 {
//!         self.0
//!     }
//!     async fn handle_cast(&mut self, n: u64, _ctx: &mut ServerContext<Self>) {
//!         self.0 += n;
//!     }
//! }
//!
//! # #[tokio::main] async fn main() {
//! let rt = Runtime::new();
//! let counter = ServerRef::start(&rt, Counter(0)).await.unwrap();
//! counter.cast(2).unwrap();
//! counter.cast(3).unwrap();
//! assert_eq!(counter.call((), Duration::from_secs(5)).await.unwrap(), 5);
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::Message;
use crate::call::ReplyTo;
use crate::error::{CallError, SendError, SendErrorKind};
use crate::exit::{Down, Event, Exit, ExitReason, MonitorRef, ProcessId};
use crate::pid::Pid;
use crate::process::Inbox;
use crate::runtime::{Runtime, SpawnOptions};
use crate::supervisor::{ChildPid, StartError, current_parent};
use crate::timer::{TimerRef, send_after};

/// A server's callbacks (Erlang's `gen_server` callbacks). Only `handle_call` must be written;
/// the others default to doing nothing.
///
/// The associated types are the server's protocol: what a call carries and what it answers,
/// what a cast carries, and what other messages (timers, plain sends with [`ServerRef::info`])
/// carry. When all four are serializable, so is the server's message type, and the server
/// can be called from other nodes.
pub trait Server: Sized + Send + 'static {
    /// A call's request.
    type Call: Send + 'static;
    /// A call's reply.
    type Reply: Send + 'static;
    /// A cast (a request without a reply).
    type Cast: Send + 'static;
    /// Any other message: timers' messages and messages sent with [`ServerRef::info`].
    type Info: Send + 'static;

    /// Runs in the new process before anything else; [`ServerRef::start`] returns once it has.
    /// An error ends the process with that reason, and the start fails with
    /// [`StartError::Exited`].
    fn init(
        &mut self,
        ctx: &mut ServerContext<Self>,
    ) -> impl Future<Output = Result<(), ExitReason>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Answers a call (Erlang's `handle_call` returning `{reply, Reply, State}`): the reply goes
    /// to the caller when this returns. To answer later, override
    /// [`Server::handle_call_from`].
    fn handle_call(
        &mut self,
        request: Self::Call,
        ctx: &mut ServerContext<Self>,
    ) -> impl Future<Output = Self::Reply> + Send;

    /// Takes a call together with its reply handle `from` (Erlang's `handle_call(Request, From,
    /// State)`). The default answers at once with [`Server::handle_call`]'s reply. Override it
    /// to defer the reply, as Erlang's `{noreply, State}` with a later `gen_server:reply(From,
    /// Reply)` does: keep `from` in the server's state and answer it from a later callback
    /// ([`ReplyTo::send`]), or hand it to another process (it is a [`Message`] when the reply
    /// type is, so it may cross nodes). Calls that are not deferred can be passed on to
    /// `handle_call`.
    ///
    /// The caller still waits at most its own timeout; a handle dropped without an answer
    /// fails the call at once ([`CallError::NoReply`]). Answering after the caller gave up is
    /// an error of [`ReplyTo::send`] that hands the reply back.
    fn handle_call_from(
        &mut self,
        request: Self::Call,
        from: ReplyTo<Self::Reply>,
        ctx: &mut ServerContext<Self>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let answer = self.handle_call(request, ctx).await;
            if let Err(e) = from.send(answer) {
                tracing::debug!(target: "conc::server", "reply not delivered: {}", e.kind);
            }
        }
    }

    /// Handles a cast (Erlang's `handle_cast`).
    fn handle_cast(
        &mut self,
        message: Self::Cast,
        ctx: &mut ServerContext<Self>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (message, ctx);
        async {}
    }

    /// Handles anything else (Erlang's `handle_info`): a message of type `Info` (a timer's, or
    /// one sent with [`ServerRef::info`]), a monitor's `Down`, or a linked process's exit when
    /// the server traps exits (except its parent's, which stops the server).
    fn handle_info(
        &mut self,
        info: Info<Self::Info>,
        ctx: &mut ServerContext<Self>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (info, ctx);
        async {}
    }

    /// Runs when the server stops in order (see the module docs), with the reason it will exit
    /// with. Not run when the server is killed, or stopped by an exit signal it does not trap.
    fn terminate(
        &mut self,
        reason: &ExitReason,
        ctx: &mut ServerContext<Self>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, ctx);
        async {}
    }
}

/// What [`Server::handle_info`] receives.
#[derive(Debug)]
pub enum Info<I> {
    /// A message of the server's `Info` type.
    Message(I),
    /// A process the server monitors went down.
    Down(Down),
    /// A linked process exited (the server traps exits).
    Exit(Exit),
}

/// A server's messages: what [`ServerRef`] sends. Serializable when the server's types are
/// (the reply type must be a [`Message`]).
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "C: Serialize, R: Message, K: Serialize, I: Serialize",
    deserialize = "C: Deserialize<'de>, R: Message, K: Deserialize<'de>, I: Deserialize<'de>"
))]
pub enum Request<C, R, K, I> {
    /// A call and where its reply goes.
    Call(C, ReplyTo<R>),
    /// A cast.
    Cast(K),
    /// An info message.
    Info(I),
    /// Stop with this reason (after [`Server::terminate`]).
    Stop(ExitReason),
}

impl<C, R, K, I> fmt::Debug for Request<C, R, K, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Request::Call(..) => "Request::Call",
            Request::Cast(_) => "Request::Cast",
            Request::Info(_) => "Request::Info",
            Request::Stop(_) => "Request::Stop",
        })
    }
}

/// The message type of the server `S`.
pub type ServerMsg<S> =
    Request<<S as Server>::Call, <S as Server>::Reply, <S as Server>::Cast, <S as Server>::Info>;

/// The server's view of its own process, passed to every callback: its pid, monitors, links,
/// timers, and the way to stop.
pub struct ServerContext<S: Server> {
    inbox: Inbox<ServerMsg<S>>,
    parent: Option<ProcessId>,
    stop: Option<ExitReason>,
}

impl<S: Server> fmt::Debug for ServerContext<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerContext")
            .field("pid", &self.inbox.process_id())
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

impl<S: Server> ServerContext<S> {
    /// A handle to this server.
    pub fn server_ref(&self) -> ServerRef<S> {
        ServerRef {
            pid: self.inbox.pid(),
        }
    }

    /// This server's pid.
    pub fn pid(&self) -> Pid<ServerMsg<S>> {
        self.inbox.pid()
    }

    /// The runtime the server runs on.
    pub fn runtime(&self) -> Runtime {
        self.inbox.runtime()
    }

    /// The supervisor that started this server, if one did.
    pub fn parent(&self) -> Option<ProcessId> {
        self.parent
    }

    /// Monitors `pid`: its `Down` arrives in [`Server::handle_info`].
    pub fn monitor<N: Send + 'static>(&self, pid: &Pid<N>) -> MonitorRef {
        self.inbox.monitor(pid)
    }

    /// Removes a monitor.
    pub fn demonitor<N: Send + 'static>(&self, pid: &Pid<N>, monitor: MonitorRef) {
        self.inbox.demonitor(pid, monitor)
    }

    /// Links the server with `pid` (see [`Inbox::link`]).
    pub fn link<N: Send + 'static>(&self, pid: &Pid<N>) {
        self.inbox.link(pid)
    }

    /// Removes a link.
    pub fn unlink<N: Send + 'static>(&self, pid: &Pid<N>) {
        self.inbox.unlink(pid)
    }

    /// Whether linked processes' exits arrive in [`Server::handle_info`] (and the parent's
    /// stops the server through [`Server::terminate`]) instead of ending the server.
    pub fn trap_exit(&self, trap: bool) {
        self.inbox.trap_exit(trap)
    }

    /// Sends `info` to this server's [`Server::handle_info`] after `after` (see
    /// [`crate::timer::send_after`]).
    pub fn send_after(&self, info: S::Info, after: Duration) -> TimerRef {
        send_after(&self.inbox.pid(), Request::Info(info), after)
    }

    /// Stops the server with `reason` once the current callback returns (a call's reply is
    /// still sent): [`Server::terminate`] runs, then the process exits.
    pub fn stop(&mut self, reason: ExitReason) {
        self.stop = Some(reason);
    }
}

/// A typed handle to a server: its pid with `call` and `cast`. Cheap to clone; works for a
/// server on another node (when the server's types are serializable).
pub struct ServerRef<S: Server> {
    pid: Pid<ServerMsg<S>>,
}

impl<S: Server> Clone for ServerRef<S> {
    fn clone(&self) -> Self {
        ServerRef {
            pid: self.pid.clone(),
        }
    }
}

impl<S: Server> fmt::Debug for ServerRef<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerRef({})", self.pid)
    }
}

impl<S: Server> PartialEq for ServerRef<S> {
    fn eq(&self, other: &Self) -> bool {
        self.pid == other.pid
    }
}

impl<S: Server> From<ServerRef<S>> for ChildPid {
    fn from(s: ServerRef<S>) -> ChildPid {
        ChildPid::from(s.pid)
    }
}

impl<S: Server> ServerRef<S> {
    /// Starts `server` in a new process of `rt` and waits for its [`Server::init`]. Called from
    /// a supervisor's start function, the server takes that supervisor as its parent.
    pub async fn start(rt: &Runtime, server: S) -> Result<ServerRef<S>, StartError>
    where
        ServerMsg<S>: Message,
    {
        let parent = current_parent();
        let (tx, rx) = oneshot::channel();
        let pid = rt.spawn(move |inbox| run(inbox, server, parent, tx));
        ServerRef::started(rt, pid, rx).await
    }

    /// [`ServerRef::start`] for a server whose types are not serializable: it takes messages
    /// from this node only (see [`Runtime::spawn_local`]).
    pub async fn start_local(rt: &Runtime, server: S) -> Result<ServerRef<S>, StartError> {
        let parent = current_parent();
        let (tx, rx) = oneshot::channel();
        let pid = rt.spawn_local(SpawnOptions::default(), move |inbox| {
            run(inbox, server, parent, tx)
        });
        ServerRef::started(rt, pid, rx).await
    }

    async fn started(
        rt: &Runtime,
        pid: Pid<ServerMsg<S>>,
        rx: oneshot::Receiver<Result<(), ExitReason>>,
    ) -> Result<ServerRef<S>, StartError> {
        let down = rt.monitor(&pid);
        match rx.await {
            Ok(Ok(())) => Ok(ServerRef { pid }),
            Ok(Err(reason)) => Err(StartError::Exited(reason)),
            Err(_) => Err(StartError::Exited(down.await.reason)),
        }
    }

    /// A handle from the server's pid (for example one found with `whereis`, or received).
    pub fn from_pid(pid: Pid<ServerMsg<S>>) -> ServerRef<S> {
        ServerRef { pid }
    }

    /// The server's pid.
    pub fn pid(&self) -> &Pid<ServerMsg<S>> {
        &self.pid
    }

    /// Calls the server (Erlang's `gen_server:call`): waits for [`Server::handle_call`]'s
    /// reply, at most `timeout`. Fails at once if the server exits before replying (see
    /// [`Pid::call`]).
    pub async fn call(&self, request: S::Call, timeout: Duration) -> Result<S::Reply, CallError>
    where
        S::Reply: Message,
    {
        self.pid
            .call(|reply| Request::Call(request, reply), timeout)
            .await
    }

    /// Casts to the server (Erlang's `gen_server:cast`): queues the message for
    /// [`Server::handle_cast`] and returns at once. Fails, handing the message back, as
    /// [`Pid::send`] does.
    pub fn cast(&self, message: S::Cast) -> Result<(), SendError<S::Cast>> {
        self.pid
            .send(Request::Cast(message))
            .map_err(|e| SendError {
                kind: e.kind,
                message: match e.message {
                    Request::Cast(m) => m,
                    _ => unreachable!("a cast is handed back as sent"),
                },
            })
    }

    /// Sends a message to the server's [`Server::handle_info`] (Erlang's `Pid ! Msg`).
    pub fn info(&self, message: S::Info) -> Result<(), SendError<S::Info>> {
        self.pid
            .send(Request::Info(message))
            .map_err(|e| SendError {
                kind: e.kind,
                message: match e.message {
                    Request::Info(m) => m,
                    _ => unreachable!("an info message is handed back as sent"),
                },
            })
    }

    /// Stops the server (Erlang's `gen_server:stop`): it runs [`Server::terminate`] with
    /// `reason` and exits with it. Returns the reason it exited with (a server that was already
    /// gone: no-such-process), or fails with [`CallError::Timeout`] after `timeout`.
    pub async fn stop(
        &self,
        reason: ExitReason,
        timeout: Duration,
    ) -> Result<ExitReason, CallError> {
        let rt = self
            .pid
            .runtime()
            .ok_or(CallError::Send(SendErrorKind::NoSuchProcess))?;
        let down = rt.monitor(&self.pid);
        if let Err(e) = self.pid.send(Request::Stop(reason))
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

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs one callback; a panic in it runs `terminate` with the panic and goes on unwinding (so
/// the process exits with the panic).
async fn guarded<S: Server, T>(
    state: &mut S,
    ctx: &mut ServerContext<S>,
    f: impl AsyncFnOnce(&mut S, &mut ServerContext<S>) -> T,
) -> T {
    // The callback's future borrows `state` and `ctx`; on a panic they are used again only
    // to run `terminate`, as Erlang does with the last state it had.
    let outcome = AssertUnwindSafe(f(state, ctx)).catch_unwind().await;
    match outcome {
        Ok(v) => v,
        Err(panic) => {
            let reason = ExitReason::Panic(panic_message(&*panic));
            let _ = AssertUnwindSafe(state.terminate(&reason, ctx))
                .catch_unwind()
                .await;
            std::panic::resume_unwind(panic)
        }
    }
}

async fn run<S: Server>(
    inbox: Inbox<ServerMsg<S>>,
    mut state: S,
    parent: Option<ProcessId>,
    started: oneshot::Sender<Result<(), ExitReason>>,
) {
    let mut ctx = ServerContext {
        inbox,
        parent,
        stop: None,
    };
    let init = guarded(&mut state, &mut ctx, async |s, c| s.init(c).await).await;
    if let Err(reason) = init {
        let _ = started.send(Err(reason.clone()));
        ctx.inbox.exit(reason);
        // The exit aborts this task at its next await.
        std::future::pending::<()>().await;
        return;
    }
    let _ = started.send(Ok(()));
    let reason = loop {
        let Some(event) = ctx.inbox.recv_event().await else {
            // The runtime shuts down.
            break ExitReason::Shutdown;
        };
        match event {
            Event::Message(Request::Call(request, reply)) => {
                guarded(&mut state, &mut ctx, async |s, c| {
                    s.handle_call_from(request, reply, c).await
                })
                .await
            }
            Event::Message(Request::Cast(message)) => {
                guarded(&mut state, &mut ctx, async |s, c| {
                    s.handle_cast(message, c).await
                })
                .await
            }
            Event::Message(Request::Info(message)) => {
                guarded(&mut state, &mut ctx, async |s, c| {
                    s.handle_info(Info::Message(message), c).await
                })
                .await
            }
            Event::Message(Request::Stop(reason)) => break reason,
            Event::Down(down) => {
                guarded(&mut state, &mut ctx, async |s, c| {
                    s.handle_info(Info::Down(down), c).await
                })
                .await
            }
            Event::Exit(exit) if Some(exit.pid) == ctx.parent => break exit.reason,
            Event::Exit(exit) => {
                guarded(&mut state, &mut ctx, async |s, c| {
                    s.handle_info(Info::Exit(exit), c).await
                })
                .await
            }
        }
        if let Some(reason) = ctx.stop.take() {
            break reason;
        }
    };
    guarded(&mut state, &mut ctx, async |s, c| {
        s.terminate(&reason, c).await
    })
    .await;
    if !reason.is_normal() {
        ctx.inbox.exit(reason);
        std::future::pending::<()>().await;
    }
}
