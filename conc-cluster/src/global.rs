//! Cluster-wide names, after Erlang/OTP's [`global`](https://www.erlang.org/doc/man/global.html).
//!
//! A name registered with [`Global::register_name`] names one process for the whole cluster:
//! [`Global::whereis_name`] finds it from any node, and it is released when its owner exits or
//! the owner's node goes down. Like `pg`, it is one conc process per node (registered as
//! [`SCOPE`], `conc.global`) holding a copy of the cluster's table; scopes find each other as
//! nodes come up (a `discover` answered with a `sync` of the names owned on the answering
//! node), monitor each other (a node that goes down takes its names with it), and monitor the
//! local owners (an owner that exits takes its names with it and every scope is told).
//!
//! # How registration is made safe against races
//!
//! Erlang's `global` takes a lock over all known nodes for each registration. This module uses
//! a simpler rule, checked by every node on its own and giving the same answer everywhere:
//!
//! - [`Global::register_name`] is refused ([`RegisterNameError::Taken`]) if the name is held in
//!   this node's view; otherwise it is recorded at once, with a [`Stamp`] (the registering
//!   node's wall-clock time in milliseconds, its name, and the owner's identity), and sent to
//!   every known scope.
//! - Two registrations of one name can still both succeed: made at the same moment on two
//!   nodes, or on two sides of a partition. Whenever a scope holds one and learns of the other
//!   (a registration arriving, or the `sync` when the nodes meet again), **the registration with
//!   the lowest stamp wins**: the earlier one, ties broken by node name and then by process
//!   identity. Every scope compares the same two stamps, so all agree on the winner without
//!   any further message.
//! - **The losing owner is killed** (exit reason [`ExitReason::Killed`](conc_core::ExitReason::Killed), by its own node, as
//!   Erlang's default resolver `random_exit_name` kills one of the two, here chosen by the rule
//!   instead of at random), and every scope emits [`GlobalEvent::Conflict`] naming winner and
//!   loser. Processes linked to or monitoring the loser learn it the usual way.
//!
//! So the name may have two owners for as long as the two registrations take to meet (a
//! message's flight, or until a partition heals), never longer; a process that must never run
//! twice should not rely on this module alone (nor on `global`, which has the same window
//! during partitions).
//!
//! ```
//! use conc_cluster::global::Global;
//! use conc_node::{Cookie, Inbox, Node};
//!
//! # #[tokio::main] async fn main() {
//! let node = Node::builder()
//!     .listen("127.0.0.1:0")
//!     .cookie(Cookie::new("doc-cookie").unwrap())
//!     .start()
//!     .await
//!     .unwrap();
//! let global = Global::start(&node).unwrap();
//! let room = node.spawn(|mut inbox: Inbox<String>| async move {
//!     while let Some(_line) = inbox.recv().await {}
//! });
//! global.register_name("chat_room", &room).unwrap();
//! assert_eq!(global.whereis_name::<String>("chat_room").unwrap(), room);
//! assert!(global.register_name("chat_room", &room).is_err());
//! global.unregister_name("chat_room");
//! assert!(global.whereis_name::<String>("chat_room").is_err());
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use conc_core::{Event, Message, MonitorRef, Pid, ProcessId, Target, TypeTag};
use conc_node::{Inbox, Node, RegisterError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::pg::{Member, discover_peers};

/// The name of the process that keeps the table on each node.
pub const SCOPE: &str = "conc.global";

/// The most names this scope keeps for any one other node; registrations beyond it are ignored
/// (and logged), so a peer cannot grow the table without bound.
pub const MAX_NAMES_PER_NODE: usize = 1 << 20;

/// How many events a [`GlobalEvents`] subscriber may fall behind before it loses the oldest.
pub const EVENT_QUEUE: usize = 4096;

/// When and where a registration was made; the lowest wins a conflict (see the
/// [module docs](self)). Fields compare in order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The registering node's wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The registering node's name.
    pub node: String,
    /// The owner's identity.
    pub owner: ProcessId,
}

/// One registration: a name, its owner and its stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The name.
    pub name: String,
    /// The owner, of any message type.
    pub owner: Member,
    /// When and where it was registered.
    pub stamp: Stamp,
}

/// A change of the table as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GlobalEvent {
    /// A name was registered (here or on another node), or won a conflict.
    Registered(Registration),
    /// A name was released.
    Unregistered {
        /// The registration that ended.
        registration: Registration,
        /// Why.
        reason: ReleaseReason,
    },
    /// The scope of another node became known (the two exchanged their names).
    ScopeUp {
        /// The other node.
        node: String,
    },
    /// The scope of another node was lost (its node went down or its scope stopped); its names
    /// are released.
    ScopeDown {
        /// The other node.
        node: String,
    },
    /// Two registrations of one name met in this scope; `winner` keeps it, `loser`'s owner is
    /// killed by its node. Emitted by each scope that held one of the two and learned of the
    /// other: always by the loser's node, by others only if the losing registration reached
    /// them before its owner was killed.
    Conflict {
        /// The registration with the lower stamp.
        winner: Registration,
        /// The other.
        loser: Registration,
    },
}

/// Why a name was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseReason {
    /// [`Global::unregister_name`] on the owner's node.
    Unregistered,
    /// The owner exited.
    OwnerExited,
    /// The owner's node went down (or its scope stopped).
    NodeDown,
}

/// Why [`Global::register_name`] failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterNameError {
    /// The name is held (in this node's view of the cluster).
    #[error("the name {0:?} is registered already")]
    Taken(String),
    /// Only a live process of this node can be registered through its scope.
    #[error("only a live process of this node can be registered")]
    NotLocal,
    /// The scope has stopped (its node shut down).
    #[error("the global scope has stopped")]
    ScopeStopped,
}

/// Why [`Global::whereis_name`] found no pid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhereisNameError {
    /// No process holds the name (in this node's view).
    #[error("no process is registered as {0:?}")]
    NotFound(String),
    /// A process holds the name, but its message type is not the one asked for.
    #[error("the process registered as {0:?} receives another message type")]
    WrongType(String),
}

/// Why a scope could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// [`SCOPE`] could not be registered (the scope runs already on this node).
    #[error("cannot register the scope: {0}")]
    Register(#[from] RegisterError),
}

/// What scopes send each other. Public only so that it can cross nodes; applications do not
/// send it.
#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
pub enum GlobalMsg {
    /// "Send me the names your node's processes hold."
    Discover {
        /// The asking scope.
        scope: Pid<GlobalMsg>,
    },
    /// The names owned on the sender's node.
    Sync {
        /// The sending scope.
        scope: Pid<GlobalMsg>,
        /// Its registrations.
        names: Vec<Registration>,
    },
    /// A registration made on the sender's node.
    Register {
        /// The sending scope.
        scope: Pid<GlobalMsg>,
        /// The registration.
        registration: Registration,
    },
    /// A registration of the sender's node ended.
    Unregister {
        /// The sending scope.
        scope: Pid<GlobalMsg>,
        /// The registration.
        registration: Registration,
        /// Why it ended (the owner exited or was unregistered).
        exited: bool,
    },
}

struct State {
    names: HashMap<String, Registration>,
    /// Local owners, each with the task that waits for its exit.
    watched: HashMap<ProcessId, tokio::task::AbortHandle>,
    /// Other scopes by the identity of their process: the pid and the monitor on it.
    peers: HashMap<ProcessId, (Pid<GlobalMsg>, MonitorRef)>,
    events: broadcast::Sender<GlobalEvent>,
    stopped: bool,
}

struct Shared {
    node: Node,
    me: Pid<GlobalMsg>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_local(&self, m: &Member) -> bool {
        m.node == self.node.name() && m.id.incarnation == self.node.incarnation()
    }

    fn broadcast(&self, st: &State, msg: impl Fn() -> GlobalMsg) {
        for (peer, _) in st.peers.values() {
            if let Err(e) = peer.send(msg()) {
                tracing::debug!(peer = %peer, error = %e, "global: a scope could not be told");
            }
        }
    }

    /// Applies a registration from anywhere: taken if the name is free, else the conflict rule.
    fn offer(&self, st: &mut State, reg: Registration) {
        let current = st.names.get(&reg.name).cloned();
        match current {
            None => {
                st.names.insert(reg.name.clone(), reg.clone());
                let _ = st.events.send(GlobalEvent::Registered(reg));
            }
            Some(cur) if cur.owner == reg.owner => {}
            Some(cur) => {
                let cur_before = cur.clone();
                let (winner, loser) = if reg.stamp < cur.stamp {
                    (reg, cur)
                } else {
                    (cur, reg)
                };
                tracing::info!(name = %winner.name, winner = ?winner.stamp, loser = ?loser.stamp,
                    "global: name conflict resolved");
                st.names.insert(winner.name.clone(), winner.clone());
                let _ = st.events.send(GlobalEvent::Conflict {
                    winner: winner.clone(),
                    loser: loser.clone(),
                });
                if self.is_local(&loser.owner) {
                    // The loser is told by its own node, the only one that can be sure of it;
                    // scopes that knew only the loser's registration drop it.
                    self.node
                        .runtime()
                        .node_side()
                        .kill_target(&Target::Id(loser.owner.id));
                    let me = self.me.clone();
                    self.broadcast(st, || GlobalMsg::Unregister {
                        scope: me.clone(),
                        registration: loser.clone(),
                        exited: true,
                    });
                }
                if winner != cur_before {
                    let _ = st.events.send(GlobalEvent::Registered(winner));
                }
            }
        }
    }

    /// Removes `reg` if it is the current registration of its name.
    fn release(&self, st: &mut State, reg: &Registration, reason: ReleaseReason) -> bool {
        if st.names.get(&reg.name) == Some(reg) {
            st.names.remove(&reg.name);
            let _ = st.events.send(GlobalEvent::Unregistered {
                registration: reg.clone(),
                reason,
            });
            true
        } else {
            false
        }
    }
}

/// A handle on one node's global scope (cheap to clone). See the [module docs](self).
#[derive(Clone)]
pub struct Global {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Global")
            .field("scope", &self.shared.me)
            .finish()
    }
}

impl Global {
    /// Starts the scope on `node`; every node that takes part starts it.
    ///
    /// # Errors
    /// [`StartError::Register`] if it runs already on this node.
    pub fn start(node: &Node) -> Result<Global, StartError> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Weak<Shared>>();
        let me = node.spawn(move |inbox: Inbox<GlobalMsg>| async move {
            if let Ok(shared) = rx.await {
                run_scope(shared, inbox).await;
            }
        });
        if let Err(e) = node.register(SCOPE, &me) {
            me.kill();
            return Err(e.into());
        }
        let shared = Arc::new(Shared {
            node: node.clone(),
            me: me.clone(),
            state: Mutex::new(State {
                names: HashMap::new(),
                watched: HashMap::new(),
                peers: HashMap::new(),
                events: broadcast::channel(EVENT_QUEUE).0,
                stopped: false,
            }),
        });
        let _ = tx.send(Arc::downgrade(&shared));
        discover_peers(node.clone(), SCOPE.to_string(), me, |scope| {
            GlobalMsg::Discover { scope }
        });
        Ok(Global { shared })
    }

    /// Registers `pid` (a live process of this node) as `name` for the whole cluster (Erlang's
    /// `global:register_name/2`). A process may hold several names. The name is released when
    /// the process exits.
    ///
    /// # Errors
    /// [`RegisterNameError::Taken`] if the name is held in this node's view,
    /// [`RegisterNameError::NotLocal`] for a process of another node or one that has exited,
    /// [`RegisterNameError::ScopeStopped`] once the node is shutting down. A registration that
    /// succeeds here can still lose a conflict later (see the [module docs](self)).
    pub fn register_name<M: Message>(
        &self,
        name: &str,
        pid: &Pid<M>,
    ) -> Result<(), RegisterNameError> {
        let owner = Member::of(pid).ok_or(RegisterNameError::NotLocal)?;
        if !pid.is_local() || !self.shared.is_local(&owner) {
            return Err(RegisterNameError::NotLocal);
        }
        let mut st = self.shared.lock();
        if st.stopped {
            return Err(RegisterNameError::ScopeStopped);
        }
        if st.names.contains_key(name) {
            return Err(RegisterNameError::Taken(name.to_string()));
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let reg = Registration {
            name: name.to_string(),
            stamp: Stamp {
                at_ms,
                node: self.shared.node.name().to_string(),
                owner: owner.id,
            },
            owner,
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = st.watched.entry(reg.owner.id) {
            let monitor = self.shared.node.runtime().monitor(pid);
            let weak = Arc::downgrade(&self.shared);
            let id = reg.owner.id;
            let task = tokio::spawn(async move {
                let _down = monitor.await;
                if let Some(shared) = weak.upgrade() {
                    owner_exited(&shared, id);
                }
            });
            slot.insert(task.abort_handle());
        }
        st.names.insert(name.to_string(), reg.clone());
        let _ = st.events.send(GlobalEvent::Registered(reg.clone()));
        let me = self.shared.me.clone();
        self.shared.broadcast(&st, || GlobalMsg::Register {
            scope: me.clone(),
            registration: reg.clone(),
        });
        Ok(())
    }

    /// Releases `name` if a process of this node holds it (Erlang's
    /// `global:unregister_name/1`, which may be called on any node: here on the owner's node
    /// only). Returns whether it was released.
    pub fn unregister_name(&self, name: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(reg) = st.names.get(name).cloned() else {
            return false;
        };
        if !self.shared.is_local(&reg.owner) {
            return false;
        }
        self.shared
            .release(&mut st, &reg, ReleaseReason::Unregistered);
        let me = self.shared.me.clone();
        self.shared.broadcast(&st, || GlobalMsg::Unregister {
            scope: me.clone(),
            registration: reg.clone(),
            exited: false,
        });
        true
    }

    /// The process registered as `name`, from this node's view of the cluster (Erlang's
    /// `global:whereis_name/1`), typed.
    ///
    /// # Errors
    /// [`WhereisNameError::NotFound`] if no process holds it, [`WhereisNameError::WrongType`]
    /// if the holder's message type is not `M`.
    pub fn whereis_name<M: Message>(&self, name: &str) -> Result<Pid<M>, WhereisNameError> {
        let reg = self
            .shared
            .lock()
            .names
            .get(name)
            .cloned()
            .ok_or_else(|| WhereisNameError::NotFound(name.to_string()))?;
        if reg.owner.tag != TypeTag::of::<M>() {
            return Err(WhereisNameError::WrongType(name.to_string()));
        }
        reg.owner
            .pid::<M>(&self.shared.node)
            .ok_or_else(|| WhereisNameError::NotFound(name.to_string()))
    }

    /// The registration of `name` (owner of any type, and stamp), if any.
    pub fn registration(&self, name: &str) -> Option<Registration> {
        self.shared.lock().names.get(name).cloned()
    }

    /// Every registered name, sorted (Erlang's `global:registered_names/0`).
    pub fn registered_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.lock().names.keys().cloned().collect();
        names.sort();
        names
    }

    /// The names of the nodes whose scopes this scope knows.
    pub fn peer_scopes(&self) -> Vec<String> {
        let st = self.shared.lock();
        let mut nodes: Vec<String> = st.peers.values().map(|(p, _)| p.uri().node).collect();
        nodes.sort();
        nodes
    }

    /// Subscribes to changes of the table, starting with its current state (one
    /// [`GlobalEvent::Registered`] per name held now).
    pub fn events(&self) -> GlobalEvents {
        let st = self.shared.lock();
        let rx = st.events.subscribe();
        let mut initial: Vec<Registration> = st.names.values().cloned().collect();
        drop(st);
        initial.sort_by(|a, b| a.name.cmp(&b.name));
        GlobalEvents {
            initial: initial.into_iter().map(GlobalEvent::Registered).collect(),
            rx,
        }
    }

    /// Sends this node's scope state to the scope on `peer` (connecting to it), as a node that
    /// comes up does: the way to join two nodes that do not know each other yet. Scopes of
    /// nodes that are already connected find each other without it.
    ///
    /// # Errors
    /// Why the message could not be queued (the peer's name cannot be used, the node is
    /// shutting down, the peer's queue is full).
    pub fn contact(&self, peer: &str) -> Result<(), conc_core::SendErrorKind> {
        let pid = self
            .shared
            .node
            .remote::<GlobalMsg>(peer, SCOPE)
            .map_err(conc_core::SendErrorKind::from)?;
        pid.send(GlobalMsg::Discover {
            scope: self.shared.me.clone(),
        })
        .map_err(|e| e.kind)
    }
}

/// Changes of the global table, from [`Global::events`].
#[derive(Debug)]
pub struct GlobalEvents {
    initial: std::collections::VecDeque<GlobalEvent>,
    rx: broadcast::Receiver<GlobalEvent>,
}

impl GlobalEvents {
    /// The next event; `None` once the scope is gone. A subscriber more than [`EVENT_QUEUE`]
    /// events behind skips the oldest.
    pub async fn recv(&mut self) -> Option<GlobalEvent> {
        if let Some(e) = self.initial.pop_front() {
            return Some(e);
        }
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "global: an event subscriber fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// A local owner exited: its names are released everywhere.
fn owner_exited(shared: &Shared, id: ProcessId) {
    let mut st = shared.lock();
    st.watched.remove(&id);
    let owned: Vec<Registration> = st
        .names
        .values()
        .filter(|r| r.owner.id == id && shared.is_local(&r.owner))
        .cloned()
        .collect();
    for reg in owned {
        shared.release(&mut st, &reg, ReleaseReason::OwnerExited);
        let me = shared.me.clone();
        shared.broadcast(&st, || GlobalMsg::Unregister {
            scope: me.clone(),
            registration: reg.clone(),
            exited: true,
        });
    }
}

async fn run_scope(weak: Weak<Shared>, mut inbox: Inbox<GlobalMsg>) {
    while let Some(event) = inbox.recv_event().await {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        match event {
            Event::Message(msg) => handle(&shared, &inbox, msg),
            Event::Down(down) => {
                let mut st = shared.lock();
                let gone = st
                    .peers
                    .iter()
                    .find(|(_, (_, m))| *m == down.monitor)
                    .map(|(id, (p, _))| (*id, p.uri().node));
                if let Some((id, node)) = gone {
                    st.peers.remove(&id);
                    let owned: Vec<Registration> = st
                        .names
                        .values()
                        .filter(|r| {
                            r.owner.node == node && r.owner.id.incarnation == id.incarnation
                        })
                        .cloned()
                        .collect();
                    for reg in owned {
                        shared.release(&mut st, &reg, ReleaseReason::NodeDown);
                    }
                    let _ = st.events.send(GlobalEvent::ScopeDown { node });
                }
            }
            Event::Exit(_) => {}
        }
    }
    if let Some(shared) = weak.upgrade() {
        let mut st = shared.lock();
        st.stopped = true;
        for (_, task) in st.watched.drain() {
            task.abort();
        }
    }
}

/// Records `scope` as a peer (monitored) if new; false for a pid without identity or a local
/// one.
fn know(st: &mut State, inbox: &Inbox<GlobalMsg>, scope: &Pid<GlobalMsg>) -> bool {
    let Some(id) = scope.id() else {
        return false;
    };
    if scope.is_local() {
        return false;
    }
    if let std::collections::hash_map::Entry::Vacant(slot) = st.peers.entry(id) {
        slot.insert((scope.clone(), inbox.monitor(scope)));
        let _ = st.events.send(GlobalEvent::ScopeUp {
            node: scope.uri().node,
        });
    }
    true
}

/// Whether `reg` is one a scope may speak for: owned on its own node.
fn owned_by(scope: &Pid<GlobalMsg>, reg: &Registration) -> bool {
    let node = scope.uri().node;
    scope
        .id()
        .is_some_and(|s| s.incarnation == reg.owner.id.incarnation)
        && node == reg.owner.node
        // The stamp must be the owner's node's own: a scope cannot claim another node's stamp.
        && reg.stamp.node == node
        && reg.stamp.owner == reg.owner.id
}

/// Whether `scope`'s node may hold one more name in this scope's table.
fn has_room(st: &State, scope: &Pid<GlobalMsg>, name: &str) -> bool {
    let node = scope.uri().node;
    if st.names.get(name).is_some_and(|r| r.owner.node == node) {
        return true;
    }
    let held = st.names.values().filter(|r| r.owner.node == node).count();
    if held >= MAX_NAMES_PER_NODE {
        tracing::warn!(peer = %node, "global: a node holds too many names; registration ignored");
        return false;
    }
    true
}

fn handle(shared: &Shared, inbox: &Inbox<GlobalMsg>, msg: GlobalMsg) {
    let mut st = shared.lock();
    match msg {
        GlobalMsg::Discover { scope } => {
            let new = scope.id().is_some_and(|id| !st.peers.contains_key(&id));
            if !know(&mut st, inbox, &scope) {
                return;
            }
            let names: Vec<Registration> = st
                .names
                .values()
                .filter(|r| shared.is_local(&r.owner))
                .cloned()
                .collect();
            if let Err(e) = scope.send(GlobalMsg::Sync {
                scope: shared.me.clone(),
                names,
            }) {
                tracing::debug!(peer = %scope, error = %e, "global: sync not sent");
            }
            // A scope not known until now is discovered back, so it sends the names it
            // registered while it knew no scope (as pg's scopes do).
            if new
                && let Err(e) = scope.send(GlobalMsg::Discover {
                    scope: shared.me.clone(),
                })
            {
                tracing::debug!(peer = %scope, error = %e, "global: discover not sent");
            }
        }
        GlobalMsg::Sync { scope, names } => {
            if !know(&mut st, inbox, &scope) {
                return;
            }
            for reg in names {
                if owned_by(&scope, &reg) && has_room(&st, &scope, &reg.name) {
                    shared.offer(&mut st, reg);
                }
            }
        }
        GlobalMsg::Register {
            scope,
            registration,
        } => {
            if know(&mut st, inbox, &scope)
                && owned_by(&scope, &registration)
                && has_room(&st, &scope, &registration.name)
            {
                shared.offer(&mut st, registration);
            }
        }
        GlobalMsg::Unregister {
            scope,
            registration,
            exited,
        } => {
            if know(&mut st, inbox, &scope) && owned_by(&scope, &registration) {
                let reason = if exited {
                    ReleaseReason::OwnerExited
                } else {
                    ReleaseReason::Unregistered
                };
                shared.release(&mut st, &registration, reason);
            }
        }
    }
}
