//! Spawning a process on another node: named *kinds* registered by the node that runs them,
//! each a factory with a typed argument, spawned from any node with [`Spawner::spawn_on`]
//! (Erlang's `spawn/4` and `erpc`-style `spawn_request`, with a registered factory in place of
//! a module and function, since Rust cannot ship code).
//!
//! A kind is one conc process per kind, registered as [`KIND_PREFIX`]`<kind>`; its message
//! type is [`SpawnRequest<A, M>`], whose type tag covers the argument type `A` and the
//! spawned process's message type `M`. So a spawn with the wrong argument or message type is
//! refused by the peer's type check before anything is decoded, and reported as
//! [`SpawnError::TypeMismatch`]; an unknown kind is an unknown name there
//! ([`SpawnError::UnknownKind`]).
//!
//! # Atomic link and monitor
//!
//! [`Spawner::spawn_link_on`] and [`Spawner::spawn_monitor_on`] leave no moment in which the
//! child runs unwatched: the child is spawned *held* and starts its factory only once the link
//! or monitor is in place on both nodes.
//!
//! 1. The caller's node spawns a *gate*, a small process of its own, and asks the kind to spawn
//!    the child held, naming the gate.
//! 2. The held child traps exits, links itself to the gate, and sends the gate its pid.
//! 3. The caller links to (or monitors) the child, then ends the gate normally. The link or
//!    monitor request and the gate's exit travel from the caller's node to the child's in
//!    that order (a link's exit is sent after everything queued before it, on every
//!    transport), so the child's node has installed the link or monitor before the gate's
//!    exit reaches the child.
//! 4. On the gate's normal exit the child stops trapping exits, answers the spawn request and
//!    runs its factory. Any other end of the gate (the caller gave up, its node was lost)
//!    makes the held child end without running the factory.
//!
//! Messages sent to the child from then on are delivered after the link or monitor, so its
//! `Down` or exit cannot be missed. A plain [`Spawner::spawn_on`] starts the child at once.
//!
//! ```
//! use conc_cluster::spawn::Spawner;
//! use conc_node::{Cookie, Inbox, Node, ReplyTo};
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() {
//! let cookie = Cookie::new("doc-cookie").unwrap();
//! let worker = Node::builder().listen("127.0.0.1:0").cookie(cookie.clone()).start().await.unwrap();
//! let front = Node::builder().listen("127.0.0.1:0").cookie(cookie).start().await.unwrap();
//! // The worker offers sessions: the argument is the user's name.
//! Spawner::new(&worker)
//!     .register_kind("session", |user: String, mut inbox: Inbox<ReplyTo<String>>| async move {
//!         while let Some(reply) = inbox.recv().await {
//!             let _ = reply.send(format!("hello {user}"));
//!         }
//!     })
//!     .unwrap();
//! let session = Spawner::new(&front)
//!     .spawn_on::<String, ReplyTo<String>>(worker.name(), "session", "ada".to_string())
//!     .await
//!     .unwrap();
//! let hello = session.call(|reply| reply, Duration::from_secs(5)).await.unwrap();
//! assert_eq!(hello, "hello ada");
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use conc_core::supervisor::{ChildPid, ChildSpec, StartError};
use conc_core::{
    CallError, Event, ExitReason, Message, MonitorRef, Pid, Refusal, ReplyTo, SendErrorKind,
};
use conc_node::{Inbox, Node, RegisterError};
use serde::{Deserialize, Serialize};

/// The prefix of the registered name of each kind's process: kind `session` is the process
/// `conc.spawn.session`.
pub const KIND_PREFIX: &str = "conc.spawn.";

/// The default bound on a whole remote spawn (request, start, answer): 10 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to a kind's process. Public only so that it can cross nodes; applications use
/// [`Spawner`].
#[doc(hidden)]
#[derive(Serialize, Deserialize)]
#[serde(bound(
    deserialize = "A: Message, M: Message",
    serialize = "A: Message, M: Message"
))]
pub struct SpawnRequest<A, M> {
    arg: A,
    /// `Some`: spawn held, released by the gate's normal exit.
    gate: Option<Pid<GateMsg<M>>>,
    reply: ReplyTo<Pid<M>>,
}

/// What a held child sends its gate. Public only so that it can cross nodes.
#[doc(hidden)]
#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "M: Message", serialize = "M: Message"))]
pub enum GateMsg<M> {
    /// The held child's pid.
    Held(Pid<M>),
}

/// Why a remote spawn failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The peer has no kind of that name.
    #[error("{peer} has no spawnable kind {kind:?}")]
    UnknownKind {
        /// The peer.
        peer: String,
        /// The kind asked for.
        kind: String,
    },
    /// The kind exists, but its argument type or its process's message type is not the one
    /// asked for (their type tags differ).
    #[error("kind {kind:?} on {peer} takes another argument type or message type")]
    TypeMismatch {
        /// The peer.
        peer: String,
        /// The kind.
        kind: String,
    },
    /// The peer could not be reached, or was lost before the child started.
    #[error("{peer} is down or unreachable: {source}")]
    PeerDown {
        /// The peer.
        peer: String,
        /// What the call to it reported.
        source: CallError,
    },
    /// The spawn did not complete within the timeout (the held child, if any, does not start).
    #[error("remote spawn timed out after {0:?}")]
    Timeout(Duration),
    /// The child ended before it started (killed while held), or the peer refused the request
    /// for another reason (shutting down, mailbox full).
    #[error("remote spawn on {peer} failed: {source}")]
    Failed {
        /// The peer.
        peer: String,
        /// What the call to it reported.
        source: CallError,
    },
    /// The given kind name is empty, longer than 200 bytes or contains `/`.
    #[error("invalid kind name {0:?}")]
    InvalidKind(String),
}

/// Why a kind could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterKindError {
    /// A kind of that name is registered already on this node, or the name is invalid (1 to 200
    /// bytes, no `/`).
    #[error("cannot register the kind: {0}")]
    Register(#[from] RegisterError),
}

/// Registers kinds on its node and spawns kinds on other nodes. Cheap to clone; make one per
/// node with [`Spawner::new`].
#[derive(Clone, Debug)]
pub struct Spawner {
    node: Node,
    timeout: Duration,
}

fn kind_name(kind: &str) -> Option<String> {
    (!kind.is_empty() && kind.len() <= 200 && !kind.contains('/'))
        .then(|| format!("{KIND_PREFIX}{kind}"))
}

impl Spawner {
    /// A spawner on `node`, with [`DEFAULT_TIMEOUT`].
    pub fn new(node: &Node) -> Spawner {
        Spawner {
            node: node.clone(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same spawner with another bound on each spawn (request, start and answer).
    pub fn with_timeout(mut self, timeout: Duration) -> Spawner {
        self.timeout = timeout;
        self
    }

    /// Offers the kind `kind` to other nodes: each spawn of it runs `factory(arg, inbox)` as a
    /// new process of this node whose messages are `M`. Kinds live as long as the node.
    ///
    /// # Errors
    /// [`RegisterKindError::Register`] if the kind is registered already or its name is
    /// invalid.
    pub fn register_kind<A, M, F, Fut>(
        &self,
        kind: &str,
        factory: F,
    ) -> Result<(), RegisterKindError>
    where
        A: Message,
        M: Message,
        F: Fn(A, Inbox<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let name = kind_name(kind).ok_or_else(|| RegisterError::InvalidName(kind.to_string()))?;
        let node = self.node.clone();
        let factory = Arc::new(factory);
        let kind_label = kind.to_string();
        let pid = self
            .node
            .spawn(move |mut inbox: Inbox<SpawnRequest<A, M>>| async move {
                while let Some(req) = inbox.recv().await {
                    let factory = factory.clone();
                    let SpawnRequest { arg, gate, reply } = req;
                    tracing::debug!(kind = %kind_label, held = gate.is_some(), "remote spawn");
                    match gate {
                        None => {
                            let child = node.spawn(move |inbox: Inbox<M>| factory(arg, inbox));
                            let _ = reply.send(child);
                        }
                        Some(gate) => {
                            node.spawn(move |mut inbox: Inbox<M>| async move {
                                if hold(&mut inbox, &gate).await {
                                    let _ = reply.send(inbox.pid());
                                    factory(arg, inbox).await;
                                }
                            });
                        }
                    }
                }
            });
        if let Err(e) = self.node.register(&name, &pid) {
            pid.kill();
            return Err(e.into());
        }
        Ok(())
    }

    /// Spawns a process of kind `kind` on `peer` with argument `arg` and returns its pid (the
    /// child starts at once; nothing watches it).
    ///
    /// # Errors
    /// See [`SpawnError`]: unknown kind, type mismatch, peer down or unreachable, timeout.
    pub async fn spawn_on<A: Message, M: Message>(
        &self,
        peer: &str,
        kind: &str,
        arg: A,
    ) -> Result<Pid<M>, SpawnError> {
        let target = self.kind_pid::<A, M>(peer, kind)?;
        let result = target
            .call(
                |reply| SpawnRequest {
                    arg,
                    gate: None,
                    reply,
                },
                self.timeout,
            )
            .await;
        result.map_err(|e| self.error(peer, kind, e))
    }

    /// Spawns a process of kind `kind` on `peer` linked to the calling process `caller`
    /// (Erlang's `spawn_link/4`): the link is in place on both nodes before the child runs
    /// (see the [module docs](self)).
    ///
    /// # Errors
    /// As [`Spawner::spawn_on`]; on an error after the link was made, the link stays and its
    /// exit arrives as usual.
    pub async fn spawn_link_on<A: Message, M: Message, C: Send + 'static>(
        &self,
        caller: &Inbox<C>,
        peer: &str,
        kind: &str,
        arg: A,
    ) -> Result<Pid<M>, SpawnError> {
        self.spawn_held(peer, kind, arg, |pid| caller.link(pid))
            .await
            .map(|(pid, ())| pid)
    }

    /// Spawns a process of kind `kind` on `peer` monitored by the calling process `caller`
    /// (Erlang's `spawn_monitor/4`): the monitor is in place before the child runs (see the
    /// [module docs](self)); its `Down` arrives through [`Inbox::recv_event`].
    ///
    /// # Errors
    /// As [`Spawner::spawn_on`]; on an error after the monitor was made, the monitor stays and
    /// its `Down` arrives as usual.
    pub async fn spawn_monitor_on<A: Message, M: Message, C: Send + 'static>(
        &self,
        caller: &Inbox<C>,
        peer: &str,
        kind: &str,
        arg: A,
    ) -> Result<(Pid<M>, MonitorRef), SpawnError> {
        self.spawn_held(peer, kind, arg, |pid| caller.monitor(pid))
            .await
    }

    /// Starts a supervisor's child of kind `kind` with argument `arg` on the first of
    /// `candidates` (node names, in order of preference) where the spawn succeeds: the body of a
    /// start function for a child on another node (see [`remote_child`]). Called from a
    /// supervisor's start function, the supervisor is linked to the child while the child is
    /// still held ([`conc_core::supervisor::link_parent`]), so no exit of it is missed; the
    /// supervisor links to the returned pid again when the start function returns. Each
    /// candidate is tried with this spawner's timeout.
    ///
    /// # Errors
    /// [`StartError::NoNode`] if `candidates` is empty; [`StartError::Remote`] with the last
    /// [`SpawnError`] if the spawn failed on every candidate.
    pub async fn start_child_on<A: Message + Clone, M: Message>(
        &self,
        candidates: &[String],
        kind: &str,
        arg: A,
    ) -> Result<ChildPid, StartError> {
        let mut last = None;
        for peer in candidates {
            match self
                .spawn_held::<A, M, bool>(peer, kind, arg.clone(), |pid| {
                    conc_core::supervisor::link_parent(pid)
                })
                .await
            {
                Ok((pid, _)) => {
                    tracing::debug!(kind, peer = %peer, "remote child started");
                    return Ok(pid.into());
                }
                Err(e) => {
                    tracing::debug!(kind, peer = %peer, "remote child not started there: {e}");
                    last = Some(e);
                }
            }
        }
        Err(match last {
            Some(e) => StartError::Remote(Box::new(e)),
            None => StartError::NoNode,
        })
    }

    /// The held spawn of the module docs; `watch` makes the link or monitor.
    async fn spawn_held<A: Message, M: Message, W>(
        &self,
        peer: &str,
        kind: &str,
        arg: A,
        watch: impl FnOnce(&Pid<M>) -> W,
    ) -> Result<(Pid<M>, W), SpawnError> {
        let target = self.kind_pid::<A, M>(peer, kind)?;
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<Pid<M>>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let gate = self
            .node
            .spawn(move |mut inbox: Inbox<GateMsg<M>>| async move {
                // The held child's pid; a child that exits while held ends the gate too.
                inbox.trap_exit(true);
                loop {
                    match inbox.recv_event().await {
                        Some(Event::Message(GateMsg::Held(pid))) => {
                            let _ = held_tx.send(pid);
                            break;
                        }
                        Some(Event::Exit(_)) | None => return,
                        Some(Event::Down(_)) => {}
                    }
                }
                // Released: a normal exit starts the child; if the caller gave up, the gate is
                // killed and the held child ends.
                if go_rx.await.is_err() {
                    inbox.exit(ExitReason::Killed);
                    std::future::pending::<()>().await;
                }
            });
        let call = target.call(
            |reply| SpawnRequest {
                arg,
                gate: Some(gate.clone()),
                reply,
            },
            self.timeout,
        );
        let run = async {
            tokio::pin!(call);
            let watched = tokio::select! {
                held = held_rx => match held {
                    Ok(pid) => watch(&pid),
                    // The gate ended before the child reported: the call tells why.
                    Err(_) => {
                        return Err(match call.await {
                            Err(e) => self.error(peer, kind, e),
                            Ok(_) => SpawnError::Failed {
                                peer: peer.to_string(),
                                source: CallError::NoReply,
                            },
                        });
                    }
                },
                early = &mut call => {
                    return Err(match early {
                        Err(e) => self.error(peer, kind, e),
                        Ok(_) => SpawnError::Failed { peer: peer.to_string(), source: CallError::NoReply },
                    });
                }
            };
            let _ = go_tx.send(());
            match call.await {
                Ok(pid) => Ok((pid, watched)),
                Err(e) => Err(self.error(peer, kind, e)),
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => {
                // Dropping the `go` sender kills the gate; the held child ends.
                Err(SpawnError::Timeout(self.timeout))
            }
        }
    }

    fn kind_pid<A: Message, M: Message>(
        &self,
        peer: &str,
        kind: &str,
    ) -> Result<Pid<SpawnRequest<A, M>>, SpawnError> {
        let name = kind_name(kind).ok_or_else(|| SpawnError::InvalidKind(kind.to_string()))?;
        self.node
            .remote::<SpawnRequest<A, M>>(peer, &name)
            .map_err(|e| SpawnError::PeerDown {
                peer: peer.to_string(),
                source: CallError::Send(SendErrorKind::Remote(e)),
            })
    }

    fn error(&self, peer: &str, kind: &str, e: CallError) -> SpawnError {
        let peer = peer.to_string();
        match e {
            CallError::Refused {
                reason: Refusal::UnknownName,
                ..
            } => SpawnError::UnknownKind {
                peer,
                kind: kind.to_string(),
            },
            CallError::Refused {
                reason: Refusal::TypeMismatch | Refusal::Undecodable,
                ..
            } => SpawnError::TypeMismatch {
                peer,
                kind: kind.to_string(),
            },
            CallError::Timeout(d) => SpawnError::Timeout(d),
            CallError::Send(_) | CallError::Exited(ExitReason::NoConnection) => {
                SpawnError::PeerDown { peer, source: e }
            }
            other => SpawnError::Failed {
                peer,
                source: other,
            },
        }
    }
}

/// A supervisor's child that runs on another node: a [`ChildSpec`] with id `id` whose start
/// function asks `placement` for the candidate nodes (node names, in order of preference; for
/// example the live nodes, [`Node::nodes`], or the nodes of a [pg](crate::pg) group's members)
/// and spawns kind `kind` with argument `arg` (cloned for every start) on the first of them
/// where the spawn succeeds ([`Spawner::start_child_on`]), linked to the supervisor.
///
/// When the child's node goes down, the link's exit arrives at the supervisor with reason
/// [`ExitReason::NoConnection`] and the child is restarted by the supervisor's strategy, on a
/// node `placement` names then: on a live node if it names only live nodes (a node just lost
/// may still be named; the spawn there fails, and the next candidate is tried). Restart type
/// [`conc_core::supervisor::Restart::Permanent`] and the other defaults of [`ChildSpec::new`];
/// change them on the returned spec.
///
/// # Partitions: the child may run twice
///
/// A lost connection is not a dead node. If the connection to the child's node is lost while
/// that node keeps running (a network partition, or a peer too slow to answer its heartbeats),
/// the supervisor sees the same `NoConnection` exit and starts a new child elsewhere. The old
/// child's node detects the loss on its own (its own connection error or heartbeat timeout),
/// possibly later, and then sends the old child the exit of its link to the supervisor with
/// reason no-connection: a child that does not trap exits ends then; one that traps exits
/// receives it as an event and keeps running unless it chooses to stop. So for a while (until
/// the old side notices, or for as long as a trapping child chooses) **the child runs twice**,
/// once on each side of the partition, and nothing reconciles the two when the nodes meet
/// again. This is what Erlang does (its supervisors cannot tell a dead node from an unreachable
/// one either); a child that must run at most once cluster-wide needs more, for example a
/// name in [`global`](crate::global) that the child takes before it acts.
///
/// # Stopping
///
/// The supervisor stops the child (its own stop, a restart of its group, `terminate_child`) by
/// its shutdown policy, as a local one: the exit signal with reason shutdown crosses to the
/// child's node, so a child that traps exits can clean up before it exits, and a kill follows
/// if the policy's time runs out. (A node that does not take exit signals is sent a kill at
/// once.)
///
/// Erlang: `exit(Child, shutdown)` from the supervisor, then `exit(Child, kill)` on timeout;
/// the child is a child spec whose start function calls `spawn_link/4` on a node it chooses.
pub fn remote_child<A, M, P>(
    spawner: &Spawner,
    id: impl Into<String>,
    kind: &str,
    arg: A,
    placement: P,
) -> ChildSpec
where
    A: Message + Clone + Sync,
    M: Message,
    P: Fn() -> Vec<String> + Send + Sync + 'static,
{
    let spawner = spawner.clone();
    let kind = kind.to_string();
    let placement = Arc::new(placement);
    ChildSpec::new(id, move || {
        let spawner = spawner.clone();
        let kind = kind.clone();
        let arg = arg.clone();
        let candidates = placement();
        async move {
            spawner
                .start_child_on::<A, M>(&candidates, &kind, arg)
                .await
        }
    })
}

/// Holds a child until its gate ends: true (start) on the gate's normal exit, false on any
/// other end. Messages cannot arrive while held (no one else has the child's pid yet); any that
/// do are dropped and logged.
async fn hold<M: Message>(inbox: &mut Inbox<M>, gate: &Pid<GateMsg<M>>) -> bool {
    inbox.trap_exit(true);
    inbox.link(gate);
    if gate.send(GateMsg::Held(inbox.pid())).is_err() {
        return false;
    }
    let gate_id = gate.id();
    loop {
        match inbox.recv_event().await {
            Some(Event::Exit(exit)) if Some(exit.pid) == gate_id => {
                if !exit.reason.is_normal() {
                    return false;
                }
                inbox.trap_exit(false);
                return true;
            }
            Some(Event::Message(_)) => {
                tracing::warn!("remote spawn: a message for a held child was dropped");
            }
            Some(_) => {}
            None => return false,
        }
    }
}
