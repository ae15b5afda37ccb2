//! Process groups across the cluster, after Erlang/OTP's [`pg`](https://www.erlang.org/doc/man/pg.html).
//!
//! A *scope* is one conc process per node, registered under the scope's name (by default
//! [`DEFAULT_SCOPE`], `conc.pg`). Each scope keeps the members its node's processes joined and a
//! copy of every other scope's local members. As in `pg.erl`:
//!
//! - a process joins and leaves groups through the scope of its own node ([`Pg::join`],
//!   [`Pg::leave`]); the scope tells every scope it knows (an ordinary message to each);
//! - when a node comes up ([`Node::monitor_nodes`], which starts with the nodes already up), the
//!   scope sends it `discover`; a scope answers `discover` with a `sync` of its local members,
//!   and a `discover` from a scope it did not know yet also with a `discover` back, so two
//!   scopes that meet exchange their full state whichever started first (a scope started after
//!   its node's connections exist finds the others, and they learn its members), and a join
//!   that follows a `sync` cannot overtake it (messages from one node to one process are
//!   delivered in order);
//! - every scope monitors the scopes it knows: when a node goes down (or its scope exits), the
//!   members it held leave their groups at once;
//! - every local member is monitored: a process that exits leaves all its groups at once and
//!   the other scopes are told.
//!
//! Reads ([`Pg::members`], [`Pg::local_members`], [`Pg::which_groups`]) read the scope's table
//! directly, as `pg` reads its ETS table: no message, no waiting.
//!
//! Differences from Erlang's `pg`: a process is in a group once (joining twice is one
//! membership, one leave ends it), only local processes may join, and members are typed:
//! [`Pg::members`] returns the members whose message type is the one asked for.
//!
//! ```
//! use conc_cluster::pg::Pg;
//! use conc_node::{Cookie, Inbox, Node};
//!
//! # #[tokio::main] async fn main() {
//! let node = Node::builder()
//!     .listen("127.0.0.1:0")
//!     .cookie(Cookie::new("doc-cookie").unwrap())
//!     .start()
//!     .await
//!     .unwrap();
//! let pg = Pg::start(&node).unwrap();
//! let worker = node.spawn(|mut inbox: Inbox<String>| async move {
//!     while let Some(_job) = inbox.recv().await {}
//! });
//! pg.join("workers", &worker).unwrap();
//! assert_eq!(pg.members::<String>("workers"), vec![worker.clone()]);
//! pg.leave("workers", &worker);
//! assert!(pg.members::<String>("workers").is_empty());
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use conc_core::{Event, Message, MonitorRef, Pid, ProcessId, ProcessUri, Target, TypeTag};
use conc_node::{Inbox, Node, NodeEvent, RegisterError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// The name of the scope [`Pg::start`] starts (Erlang's default scope is `pg`).
pub const DEFAULT_SCOPE: &str = "conc.pg";

/// The most members (over all groups) this scope keeps for any one other scope; joins beyond it
/// are ignored (and logged), so a peer cannot grow the table without bound.
pub const MAX_MEMBERS_PER_SCOPE: usize = 1 << 20;

/// How many events a [`GroupMonitor`] may fall behind before it loses the oldest
/// ([`PgEvent`]s are kept in one bounded broadcast queue per scope).
pub const EVENT_QUEUE: usize = 4096;

/// One member of a group, of any message type: its node, its identity there and the tag of its
/// message type. Turn it into a typed pid with [`Member::pid`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node the process runs on (its proven name, `host:port`).
    pub node: String,
    /// The process's identity on that node.
    pub id: ProcessId,
    /// The tag of the process's message type ([`TypeTag::of`]).
    pub tag: TypeTag,
}

impl Member {
    /// The member of a pid (a local pid, or a remote pid by identity); `None` for a remote
    /// reference by name.
    pub fn of<M: Message>(pid: &Pid<M>) -> Option<Member> {
        let uri = pid.uri();
        match uri.target {
            Target::Id(id) => Some(Member {
                node: uri.node,
                id,
                tag: TypeTag::of::<M>(),
            }),
            Target::Name(_) => None,
        }
    }

    /// A typed pid for this member, if its message type is `M` (`None` otherwise). A member of
    /// `node` itself resolves to the local pid.
    pub fn pid<M: Message>(&self, node: &Node) -> Option<Pid<M>> {
        if self.tag != TypeTag::of::<M>() {
            return None;
        }
        node.runtime()
            .resolve::<M>(&ProcessUri {
                node: self.node.clone(),
                target: Target::Id(self.id),
            })
            .ok()
    }
}

/// A change of a group, as seen by one scope.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgEvent {
    /// Processes joined `group` (or, first from a [`GroupMonitor`], were in it already).
    Joined {
        /// The group.
        group: String,
        /// Who joined.
        members: Vec<Member>,
    },
    /// Processes left `group`: they left, exited, or their node went down.
    Left {
        /// The group.
        group: String,
        /// Who left.
        members: Vec<Member>,
    },
}

impl PgEvent {
    /// The group the event is about.
    pub fn group(&self) -> &str {
        match self {
            PgEvent::Joined { group, .. } | PgEvent::Left { group, .. } => group,
        }
    }
}

/// Why a process could not join a group.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// Only processes of this node can join through its scope (as in `pg`).
    #[error("only a process of this node can join a group through its scope")]
    NotLocal,
    /// The scope has stopped (its node shut down).
    #[error("the pg scope has stopped")]
    ScopeStopped,
}

/// Why a scope could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The scope's name could not be registered (a scope of that name runs already, or the
    /// name is invalid).
    #[error("cannot register the scope: {0}")]
    Register(#[from] RegisterError),
}

/// What scopes send each other (the `pg` protocol). Public only so that it can cross nodes;
/// applications do not send it.
#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
pub enum PgMsg {
    /// "Send me your local members" (sent when a node comes up).
    Discover {
        /// The asking scope.
        scope: Pid<PgMsg>,
    },
    /// Every local member of the sending scope, by group (the answer to `Discover`).
    Sync {
        /// The sending scope.
        scope: Pid<PgMsg>,
        /// Its local members.
        groups: Vec<(String, Vec<Member>)>,
    },
    /// Local processes of the sender joined a group.
    Join {
        /// The sending scope.
        scope: Pid<PgMsg>,
        /// The group.
        group: String,
        /// Who.
        members: Vec<Member>,
    },
    /// Local processes of the sender left a group.
    Leave {
        /// The sending scope.
        scope: Pid<PgMsg>,
        /// The group.
        group: String,
        /// Who.
        members: Vec<Member>,
    },
}

/// What one scope knows of another.
struct PeerScope {
    scope: Pid<PgMsg>,
    monitor: MonitorRef,
    groups: HashMap<String, Vec<Member>>,
}

struct State {
    /// Local members by group, in the order they joined.
    local: BTreeMap<String, Vec<Member>>,
    /// The groups of each local member, and the task that waits for its exit.
    watched: HashMap<ProcessId, (usize, tokio::task::AbortHandle)>,
    /// Other scopes, by the identity of their process.
    peers: HashMap<ProcessId, PeerScope>,
    events: broadcast::Sender<PgEvent>,
    stopped: bool,
}

impl State {
    fn emit(&self, event: PgEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn broadcast(&self, msg: impl Fn() -> PgMsg) {
        for peer in self.peers.values() {
            if let Err(e) = peer.scope.send(msg()) {
                tracing::debug!(peer = %peer.scope, error = %e, "pg: a scope could not be told");
            }
        }
    }
}

struct Shared {
    node: Node,
    scope_name: String,
    me: Pid<PgMsg>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle on one node's pg scope (cheap to clone). See the [module docs](self).
#[derive(Clone)]
pub struct Pg {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("scope", &self.shared.me)
            .finish()
    }
}

impl Pg {
    /// Starts the default scope ([`DEFAULT_SCOPE`]) on `node`. Every node that takes part starts
    /// it; scopes find each other as nodes come up.
    ///
    /// # Errors
    /// [`StartError::Register`] if the scope runs already on this node.
    pub fn start(node: &Node) -> Result<Pg, StartError> {
        Pg::start_scope(node, DEFAULT_SCOPE)
    }

    /// Starts the scope `name` on `node` (Erlang's `pg:start_link(Scope)`): groups of different
    /// scopes are independent, and a scope talks only to the scopes of the same name.
    ///
    /// # Errors
    /// [`StartError::Register`] if `name` is taken or invalid (1 to 255 bytes, no `/`).
    pub fn start_scope(node: &Node, name: &str) -> Result<Pg, StartError> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Weak<Shared>>();
        let me = node.spawn(move |inbox: Inbox<PgMsg>| async move {
            if let Ok(shared) = rx.await {
                run_scope(shared, inbox).await;
            }
        });
        if let Err(e) = node.register(name, &me) {
            me.kill();
            return Err(e.into());
        }
        let shared = Arc::new(Shared {
            node: node.clone(),
            scope_name: name.to_string(),
            me: me.clone(),
            state: Mutex::new(State {
                local: BTreeMap::new(),
                watched: HashMap::new(),
                peers: HashMap::new(),
                events: broadcast::channel(EVENT_QUEUE).0,
                stopped: false,
            }),
        });
        let _ = tx.send(Arc::downgrade(&shared));
        discover_peers(node.clone(), name.to_string(), me.clone(), |scope| {
            PgMsg::Discover { scope }
        });
        Ok(Pg { shared })
    }

    /// The scope's process.
    pub fn scope(&self) -> &Pid<PgMsg> {
        &self.shared.me
    }

    /// Makes `pid` (a process of this node) a member of `group`; every scope learns it. Joining
    /// a group the process is in already changes nothing. The process leaves every group when it
    /// exits.
    ///
    /// # Errors
    /// [`JoinError::NotLocal`] for a process of another node, [`JoinError::ScopeStopped`] once
    /// the node is shutting down.
    pub fn join<M: Message>(&self, group: &str, pid: &Pid<M>) -> Result<(), JoinError> {
        if !pid.is_local() {
            return Err(JoinError::NotLocal);
        }
        let member = Member::of(pid).ok_or(JoinError::NotLocal)?;
        let mut st = self.shared.lock();
        if st.stopped {
            return Err(JoinError::ScopeStopped);
        }
        let list = st.local.entry(group.to_string()).or_default();
        if list.contains(&member) {
            return Ok(());
        }
        list.push(member.clone());
        match st.watched.get_mut(&member.id) {
            Some((n, _)) => *n += 1,
            None => {
                let monitor = self.shared.node.runtime().monitor(pid);
                let weak = Arc::downgrade(&self.shared);
                let id = member.id;
                let task = tokio::spawn(async move {
                    let _down = monitor.await;
                    if let Some(shared) = weak.upgrade() {
                        local_exit(&shared, id);
                    }
                });
                st.watched.insert(member.id, (1, task.abort_handle()));
            }
        }
        let me = self.shared.me.clone();
        st.broadcast(|| PgMsg::Join {
            scope: me.clone(),
            group: group.to_string(),
            members: vec![member.clone()],
        });
        st.emit(PgEvent::Joined {
            group: group.to_string(),
            members: vec![member],
        });
        Ok(())
    }

    /// Removes `pid` (a process of this node) from `group`; every scope learns it. Returns
    /// whether it was a member (Erlang's `pg:leave` returns `not_joined` otherwise).
    pub fn leave<M: Message>(&self, group: &str, pid: &Pid<M>) -> bool {
        let Some(member) = Member::of(pid) else {
            return false;
        };
        let mut st = self.shared.lock();
        let Some(list) = st.local.get_mut(group) else {
            return false;
        };
        let Some(at) = list.iter().position(|m| *m == member) else {
            return false;
        };
        list.remove(at);
        if list.is_empty() {
            st.local.remove(group);
        }
        if let Some((n, task)) = st.watched.get_mut(&member.id) {
            *n -= 1;
            if *n == 0 {
                task.abort();
                st.watched.remove(&member.id);
            }
        }
        let me = self.shared.me.clone();
        st.broadcast(|| PgMsg::Leave {
            scope: me.clone(),
            group: group.to_string(),
            members: vec![member.clone()],
        });
        st.emit(PgEvent::Left {
            group: group.to_string(),
            members: vec![member],
        });
        true
    }

    /// The members of `group` whose message type is `M`, those of this node first (in the
    /// order they joined), then those of other nodes (Erlang's `pg:get_members`).
    pub fn members<M: Message>(&self, group: &str) -> Vec<Pid<M>> {
        self.all_members(group)
            .iter()
            .filter_map(|m| m.pid::<M>(&self.shared.node))
            .collect()
    }

    /// The members of `group` on this node whose message type is `M` (Erlang's
    /// `pg:get_local_members`).
    pub fn local_members<M: Message>(&self, group: &str) -> Vec<Pid<M>> {
        let list: Vec<Member> = self
            .shared
            .lock()
            .local
            .get(group)
            .cloned()
            .unwrap_or_default();
        list.iter()
            .filter_map(|m| m.pid::<M>(&self.shared.node))
            .collect()
    }

    /// Every member of `group`, of any message type, local ones first.
    pub fn all_members(&self, group: &str) -> Vec<Member> {
        members_of(&self.shared.lock(), group)
    }

    /// The groups that have at least one member anywhere (Erlang's `pg:which_groups`), sorted.
    pub fn which_groups(&self) -> Vec<String> {
        let st = self.shared.lock();
        let mut groups: Vec<String> = st.local.keys().cloned().collect();
        for peer in st.peers.values() {
            groups.extend(
                peer.groups
                    .iter()
                    .filter(|(_, l)| !l.is_empty())
                    .map(|(g, _)| g.clone()),
            );
        }
        groups.sort();
        groups.dedup();
        groups
    }

    /// The names of the nodes whose scopes this scope knows (has exchanged state with).
    pub fn peer_scopes(&self) -> Vec<String> {
        let st = self.shared.lock();
        let mut nodes: Vec<String> = st.peers.values().map(|p| p.scope.uri().node).collect();
        nodes.sort();
        nodes
    }

    /// Sends this scope's `discover` to the scope of the same name on `peer` (connecting to
    /// it), as a node that comes up does: the way to join two nodes that do not know each other
    /// yet. Scopes of nodes that are already connected find each other without it.
    ///
    /// # Errors
    /// Why the message could not be queued (the peer's name cannot be used, the node is
    /// shutting down, the peer's queue is full).
    pub fn contact(&self, peer: &str) -> Result<(), conc_core::SendErrorKind> {
        let pid = self
            .shared
            .node
            .remote::<PgMsg>(peer, &self.shared.scope_name)
            .map_err(conc_core::SendErrorKind::from)?;
        pid.send(PgMsg::Discover {
            scope: self.shared.me.clone(),
        })
        .map_err(|e| e.kind)
    }

    /// Subscribes to the joins and leaves of `group` (Erlang's `pg:monitor/2`), starting with
    /// its current state: the first event is a [`PgEvent::Joined`] with the current members
    /// (if there are any), then every change as this scope sees it.
    pub fn monitor(&self, group: &str) -> GroupMonitor {
        let st = self.shared.lock();
        // Subscribed and read under the scope's lock, which every change holds while it
        // emits its event: nothing is missed or seen twice.
        let rx = st.events.subscribe();
        let current = members_of(&st, group);
        drop(st);
        let initial = if current.is_empty() {
            VecDeque::new()
        } else {
            VecDeque::from([PgEvent::Joined {
                group: group.to_string(),
                members: current,
            }])
        };
        GroupMonitor {
            group: Some(group.to_string()),
            initial,
            rx,
        }
    }

    /// Subscribes to the joins and leaves of every group, starting with the current state (one
    /// [`PgEvent::Joined`] per non-empty group first, in the order of the groups' names).
    pub fn monitor_scope(&self) -> GroupMonitor {
        let st = self.shared.lock();
        let rx = st.events.subscribe();
        let mut groups: Vec<String> = st.local.keys().cloned().collect();
        for peer in st.peers.values() {
            groups.extend(peer.groups.keys().cloned());
        }
        groups.sort();
        groups.dedup();
        let initial = groups
            .into_iter()
            .filter_map(|g| {
                let members = members_of(&st, &g);
                (!members.is_empty()).then_some(PgEvent::Joined { group: g, members })
            })
            .collect();
        drop(st);
        GroupMonitor {
            group: None,
            initial,
            rx,
        }
    }
}

/// Every member of `group`, local ones first.
fn members_of(st: &State, group: &str) -> Vec<Member> {
    let mut out: Vec<Member> = st.local.get(group).cloned().unwrap_or_default();
    for peer in st.peers.values() {
        if let Some(list) = peer.groups.get(group) {
            out.extend(list.iter().cloned());
        }
    }
    out
}

/// Joins and leaves of one group (from [`Pg::monitor`]) or of all (from
/// [`Pg::monitor_scope`]).
#[derive(Debug)]
pub struct GroupMonitor {
    group: Option<String>,
    initial: VecDeque<PgEvent>,
    rx: broadcast::Receiver<PgEvent>,
}

impl GroupMonitor {
    /// The next event; `None` once the scope is gone. A subscriber that falls more than
    /// [`EVENT_QUEUE`] events behind skips the oldest (read [`Pg::members`] again then).
    pub async fn recv(&mut self) -> Option<PgEvent> {
        if let Some(e) = self.initial.pop_front() {
            return Some(e);
        }
        loop {
            match self.rx.recv().await {
                Ok(e) => {
                    if self.group.as_deref().is_none_or(|g| g == e.group()) {
                        return Some(e);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "pg: a group monitor fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// A local member exited: it leaves all its groups.
fn local_exit(shared: &Shared, id: ProcessId) {
    let mut st = shared.lock();
    st.watched.remove(&id);
    let mut left: Vec<(String, Member)> = Vec::new();
    st.local.retain(|group, list| {
        list.retain(|m| {
            if m.id == id {
                left.push((group.clone(), m.clone()));
                false
            } else {
                true
            }
        });
        !list.is_empty()
    });
    for (group, member) in left {
        let me = shared.me.clone();
        st.broadcast(|| PgMsg::Leave {
            scope: me.clone(),
            group: group.clone(),
            members: vec![member.clone()],
        });
        st.emit(PgEvent::Left {
            group,
            members: vec![member],
        });
    }
}

/// Sends `discover(me)` to the process `scope_name` of every node that is up now or comes up
/// later. Shared by the scopes of this crate (pg, global).
pub(crate) fn discover_peers<W: Message>(
    node: Node,
    scope_name: String,
    me: Pid<W>,
    discover: fn(Pid<W>) -> W,
) {
    let mut events = node.monitor_nodes();
    // Ends with the scope (so that it does not keep the node alive after it).
    let scope_down = node.runtime().monitor(&me);
    tokio::spawn(async move {
        tokio::pin!(scope_down);
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = &mut scope_down => return,
            };
            let Some(event) = event else { return };
            if let NodeEvent::Up { name, .. } = event {
                match node.remote::<W>(&name, &scope_name) {
                    Ok(peer) => {
                        if let Err(e) = peer.send(discover(me.clone())) {
                            tracing::debug!(peer = %name, error = %e, "scope: discover not sent");
                        }
                    }
                    Err(e) => tracing::debug!(peer = %name, error = %e, "scope: no pid for peer"),
                }
            }
        }
    });
}

/// The scope process: answers `discover`, applies what other scopes send, and forgets a scope
/// that goes down (its node lost, or its process gone).
async fn run_scope(weak: Weak<Shared>, mut inbox: Inbox<PgMsg>) {
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
                    .find(|(_, p)| p.monitor == down.monitor)
                    .map(|(id, _)| *id);
                if let Some(id) = gone
                    && let Some(peer) = st.peers.remove(&id)
                {
                    for (group, members) in peer.groups {
                        if !members.is_empty() {
                            st.emit(PgEvent::Left { group, members });
                        }
                    }
                }
            }
            Event::Exit(_) => {}
        }
    }
    if let Some(shared) = weak.upgrade() {
        let mut st = shared.lock();
        st.stopped = true;
        for (_, (_, task)) in st.watched.drain() {
            task.abort();
        }
    }
}

/// The peer entry of `scope`, made (and monitored) if new; `None` for a pid without identity
/// or this scope itself.
fn peer_entry<'a>(
    st: &'a mut State,
    inbox: &Inbox<PgMsg>,
    scope: &Pid<PgMsg>,
) -> Option<&'a mut PeerScope> {
    let id = scope.id()?;
    if scope.is_local() {
        return None;
    }
    Some(st.peers.entry(id).or_insert_with(|| PeerScope {
        scope: scope.clone(),
        monitor: inbox.monitor(scope),
        groups: HashMap::new(),
    }))
}

/// Whether a member sent by `scope` is one of its node's processes (a scope speaks only for
/// its own node's processes; anything else from a peer is ignored).
fn owned_by(scope: &Pid<PgMsg>, m: &Member) -> bool {
    scope
        .id()
        .is_some_and(|s| s.incarnation == m.id.incarnation)
        && scope.uri().node == m.node
}

fn handle(shared: &Shared, inbox: &Inbox<PgMsg>, msg: PgMsg) {
    let mut st = shared.lock();
    match msg {
        PgMsg::Discover { scope } => {
            let groups: Vec<(String, Vec<Member>)> = st
                .local
                .iter()
                .map(|(g, l)| (g.clone(), l.clone()))
                .collect();
            let known = scope.id().is_some_and(|id| st.peers.contains_key(&id));
            if peer_entry(&mut st, inbox, &scope).is_none() {
                return;
            }
            if let Err(e) = scope.send(PgMsg::Sync {
                scope: shared.me.clone(),
                groups,
            }) {
                tracing::debug!(peer = %scope, error = %e, "pg: sync not sent");
            }
            // A scope heard of for the first time is asked for its members in turn, as Erlang's
            // pg does: the discover may be the only sign of it this node gets (a node that
            // reached this one without this one seeing it come up, or a scope started after
            // the nodes were connected).
            if !known
                && let Err(e) = scope.send(PgMsg::Discover {
                    scope: shared.me.clone(),
                })
            {
                tracing::debug!(peer = %scope, error = %e, "pg: discover not sent back");
            }
        }
        PgMsg::Sync { scope, groups } => {
            let Some(peer) = peer_entry(&mut st, inbox, &scope) else {
                return;
            };
            let mut new: HashMap<String, Vec<Member>> = HashMap::new();
            let mut room = MAX_MEMBERS_PER_SCOPE;
            for (g, list) in groups {
                let list: Vec<Member> = list
                    .into_iter()
                    .filter(|m| owned_by(&scope, m))
                    .take(room)
                    .collect();
                room -= list.len();
                if !list.is_empty() {
                    let entry = new.entry(g).or_default();
                    for m in list {
                        if !entry.contains(&m) {
                            entry.push(m);
                        }
                    }
                }
            }
            if room == 0 {
                tracing::warn!(peer = %scope, "pg: a scope sent too many members; the rest ignored");
            }
            let old = std::mem::replace(&mut peer.groups, new.clone());
            let mut events = Vec::new();
            for (g, list) in &old {
                let gone: Vec<Member> = list
                    .iter()
                    .filter(|m| !new.get(g).is_some_and(|n| n.contains(m)))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    events.push(PgEvent::Left {
                        group: g.clone(),
                        members: gone,
                    });
                }
            }
            for (g, list) in &new {
                let came: Vec<Member> = list
                    .iter()
                    .filter(|m| !old.get(g).is_some_and(|o| o.contains(m)))
                    .cloned()
                    .collect();
                if !came.is_empty() {
                    events.push(PgEvent::Joined {
                        group: g.clone(),
                        members: came,
                    });
                }
            }
            for e in events {
                st.emit(e);
            }
        }
        PgMsg::Join {
            scope,
            group,
            members,
        } => {
            let Some(peer) = peer_entry(&mut st, inbox, &scope) else {
                return;
            };
            let mut room =
                MAX_MEMBERS_PER_SCOPE.saturating_sub(peer.groups.values().map(Vec::len).sum());
            let list = peer.groups.entry(group.clone()).or_default();
            let mut came = Vec::new();
            for m in members {
                if room == 0 {
                    tracing::warn!(peer = %scope, "pg: a scope has too many members; join ignored");
                    break;
                }
                if owned_by(&scope, &m) && !list.contains(&m) {
                    room -= 1;
                    list.push(m.clone());
                    came.push(m);
                }
            }
            if !came.is_empty() {
                st.emit(PgEvent::Joined {
                    group,
                    members: came,
                });
            }
        }
        PgMsg::Leave {
            scope,
            group,
            members,
        } => {
            let Some(peer) = peer_entry(&mut st, inbox, &scope) else {
                return;
            };
            let mut gone = Vec::new();
            if let Some(list) = peer.groups.get_mut(&group) {
                list.retain(|m| {
                    if members.contains(m) {
                        gone.push(m.clone());
                        false
                    } else {
                        true
                    }
                });
                if list.is_empty() {
                    peer.groups.remove(&group);
                }
            }
            if !gone.is_empty() {
                st.emit(PgEvent::Left {
                    group,
                    members: gone,
                });
            }
        }
    }
}
