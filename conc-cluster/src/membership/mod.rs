//! Membership: which nodes are in the cluster, who is up, and events when that changes.
//!
//! Each node runs one membership process, registered as [`MEMBERSHIP_NAME`]. The processes
//! run SWIM (Das, Gupta and Motivala, *SWIM: Scalable Weakly-consistent Infection-style Process
//! Group Membership Protocol*, 2002) through the [`foca`] crate, whose packets travel as
//! ordinary conc messages between them: nothing changes on the wire. The state machine is
//! sans-IO ([`Machine`]), so a simulation drives the same code on a simulated clock.
//!
//! A member is a node's name (`host:port`) and its incarnation ([`conc_node::Node::incarnation`]):
//! a node that restarts is a new member, and the old one goes down with
//! [`MemberDownReason::Restarted`].

mod machine;

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conc_core::DownReason;
use conc_node::{Inbox, Node, NodeEvent, Pid};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

pub use machine::{Machine, MachineError, MachineTimer, Output};

/// The name under which each node's membership process is registered.
pub const MEMBERSHIP_NAME: &str = "conc.membership";

/// A member of the cluster: a node's name (`host:port`) and its incarnation. A restarted node
/// (a new incarnation) is a different member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node's name, `host:port`.
    pub name: String,
    /// The node's incarnation ([`conc_node::Node::incarnation`]).
    pub incarnation: u64,
}

/// Why a member went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum MemberDownReason {
    /// The failure detector declared it down: it did not answer direct and indirect probes and
    /// did not refute the suspicion within [`ClusterConfig::suspect_to_down_after`] (a crash,
    /// a pause, a partition).
    #[error("unresponsive")]
    Unresponsive,
    /// A new incarnation of the same node joined: the old one is gone.
    #[error("restarted")]
    Restarted,
}

/// A change of the member view.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A member joined (or rejoined after being down).
    Up(Member),
    /// A member failed.
    Down {
        /// The member.
        member: Member,
        /// Why.
        reason: MemberDownReason,
    },
    /// A member left gracefully ([`Cluster::leave`], or its node shut down).
    Left(Member),
}

/// Settings of a node's membership. With the defaults every member sees a crashed or cut-off
/// member down within about 2.5 s (2.4–2.6 s in the simulation at 8, 32 and 200 members;
/// 3.2 s for the last of 10 % failing at once among 200), while a member paused for 1 s is not
/// declared down (see the README's "Cluster" section for the arithmetic and measurements).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterConfig {
    seeds: Vec<String>,
    probe_period: Duration,
    probe_rtt: Duration,
    suspect_to_down_after: Duration,
    gossip_every: Duration,
    announce_every: Duration,
    max_packet_size: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            seeds: Vec::new(),
            probe_period: Duration::from_millis(300),
            probe_rtt: Duration::from_millis(150),
            suspect_to_down_after: Duration::from_millis(1500),
            gossip_every: Duration::from_millis(200),
            announce_every: Duration::from_secs(2),
            max_packet_size: 16 * 1024,
        }
    }
}

impl ClusterConfig {
    /// The defaults (see [`ClusterConfig`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Nodes (`host:port`) to join through. The node asks each in turn, with backoff (100 ms
    /// doubling to 2 s), until one lets it in; while it is alone it keeps asking (a seed that
    /// starts later is found). Reaching any member is enough: its answer names the others.
    pub fn seed_nodes<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// How often each member probes one other member (default 300 ms). Lower detects sooner
    /// and costs more traffic.
    pub fn with_probe_period(mut self, period: Duration) -> Self {
        self.probe_period = period.max(Duration::from_millis(2));
        self.probe_rtt = self.probe_rtt.min(self.probe_period / 2);
        self
    }

    /// How long a direct probe waits for its answer before asking others to probe
    /// (default 150 ms; kept at most half the probe period).
    pub fn with_probe_rtt(mut self, rtt: Duration) -> Self {
        self.probe_rtt = rtt.min(self.probe_period / 2).max(Duration::from_millis(1));
        self
    }

    /// How long a suspected member has to refute before it is declared down (default 1.5 s).
    /// A member paused for longer than about this is declared down (and rejoins when it
    /// resumes).
    pub fn with_suspect_to_down_after(mut self, after: Duration) -> Self {
        self.suspect_to_down_after = after.max(Duration::from_millis(1));
        self
    }

    /// The seeds.
    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// The suspicion time.
    pub fn suspect_to_down_after(&self) -> Duration {
        self.suspect_to_down_after
    }

    /// The probe period.
    pub fn probe_period(&self) -> Duration {
        self.probe_period
    }

    pub(crate) fn foca_config(&self) -> foca::Config {
        let mut c = foca::Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
        c.max_transmissions = NonZeroU8::new(20).unwrap_or(NonZeroU8::MIN);
        c.suspect_to_down_after = self.suspect_to_down_after;
        c.max_packet_size = NonZeroUsize::new(self.max_packet_size).unwrap_or(NonZeroUsize::MIN);
        c.notify_down_members = true;
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_every,
            num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
        });
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: self.announce_every,
            num_members: NonZeroUsize::MIN,
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_every,
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        c
    }
}

/// What the membership processes send each other.
#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    /// A foca packet.
    Swim(Vec<u8>),
    /// The sender leaves the cluster: its going is "left", not "down".
    Leaving { name: String, incarnation: u64 },
    /// Sent to each member seen up, so that every pair of members is connected (a full mesh,
    /// as Erlang's `connect_all`); ignored.
    Connect,
}

/// Why [`Cluster::join`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The node was not seen as a member before the deadline (it did not answer, or refused).
    #[error("{name} was not reached within {timeout:?}")]
    Timeout {
        /// The node asked.
        name: String,
        /// The deadline given.
        timeout: Duration,
    },
    /// The membership process is gone (the node shut down or the cluster was left).
    #[error("the membership process has stopped")]
    Stopped,
}

/// Why [`Cluster::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterStartError {
    /// A node that does not listen cannot be a member (others could not reach it).
    #[error("the node does not listen: a member needs a listen address")]
    NotListening,
    /// The name [`MEMBERSHIP_NAME`] is taken on this node (a second `Cluster::start`).
    #[error("the membership process could not be registered: {0}")]
    Register(#[from] conc_core::RegisterError),
}

enum Control {
    Join(String),
    Leave(oneshot::Sender<()>),
}

struct Shared {
    view: Mutex<BTreeMap<String, Member>>,
    events: broadcast::Sender<MemberEvent>,
}

/// A node's membership in the cluster: the handle to its membership process. Cheap to clone.
///
/// ```no_run
/// use conc_cluster::{Cluster, ClusterConfig, MemberEvent};
/// use conc_node::{Node, Tcp};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let node = Node::builder().listen("127.0.0.1:0").transport(Tcp::pooled()).start().await?;
/// let cluster = Cluster::start(&node, ClusterConfig::new().seed_nodes(["127.0.0.1:9000"]))?;
/// let mut events = cluster.events();
/// while let Some(event) = events.recv().await {
///     match event {
///         MemberEvent::Up(m) => println!("member up {}", m.name),
///         MemberEvent::Down { member, reason } => println!("member down {} {reason}", member.name),
///         MemberEvent::Left(m) => println!("member left {}", m.name),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    me: Member,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

impl Cluster {
    /// Starts the membership process of `node` (registered as [`MEMBERSHIP_NAME`]) and, if
    /// `config` names seeds, starts joining through them in the background (see
    /// [`ClusterConfig::seed_nodes`]). Returns at once. The node must listen.
    ///
    /// Errors: [`ClusterStartError::NotListening`], [`ClusterStartError::Register`] if a
    /// membership process already runs on this node.
    pub fn start(node: &Node, config: ClusterConfig) -> Result<Cluster, ClusterStartError> {
        if node.local_addr().is_none() {
            return Err(ClusterStartError::NotListening);
        }
        let me = Member {
            name: node.name().to_string(),
            incarnation: node.incarnation(),
        };
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            view: Mutex::new(BTreeMap::new()),
            events,
        });
        let (control, control_rx) = mpsc::unbounded_channel();
        let seed = me.incarnation ^ fnv(&me.name);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let machine = Machine::new(&me.name, me.incarnation, started, &config, seed);
        let node_events = node.node_events();
        let driver = Driver {
            node: node.clone(),
            machine,
            shared: shared.clone(),
            pids: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            seeds: config
                .seeds
                .iter()
                .filter(|s| **s != me.name)
                .cloned()
                .collect(),
            join_backoff: Duration::from_millis(100),
            next_join: Instant::now(),
        };
        let pid = node.spawn(move |inbox: Inbox<Wire>| driver.run(inbox, control_rx, node_events));
        node.register(MEMBERSHIP_NAME, &pid)?;
        Ok(Cluster {
            me,
            shared,
            control,
        })
    }

    /// This member.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The members seen up now, this one included, sorted by name.
    pub fn members(&self) -> Vec<Member> {
        let view = self.shared.view.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Member> = view.values().cloned().collect();
        v.push(self.me.clone());
        v.sort();
        v
    }

    /// Whether a member of this name is seen up (this node included).
    pub fn is_member(&self, name: &str) -> bool {
        name == self.me.name
            || self
                .shared
                .view
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name)
    }

    /// Member events starting from the current state: first a [`MemberEvent::Up`] for every
    /// other member seen up now, then every change as it happens (no event is lost between
    /// the two). A subscriber more than 4,096 events behind skips the oldest.
    pub fn events(&self) -> MemberEvents {
        let view = self.shared.view.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.shared.events.subscribe();
        let initial = view.values().cloned().map(MemberEvent::Up).collect();
        MemberEvents { initial, rx }
    }

    /// Joins the cluster of the node `name` (`host:port`) at run time, asking it with backoff
    /// (connections refused during a start-up storm are retried) until it is seen as a member
    /// or `timeout` passes.
    ///
    /// Errors: [`JoinError::Timeout`], [`JoinError::Stopped`].
    pub async fn join(&self, name: &str, timeout: Duration) -> Result<(), JoinError> {
        let mut events = self.events();
        if self.is_member(name) {
            return Ok(());
        }
        self.control
            .send(Control::Join(name.to_string()))
            .map_err(|_| JoinError::Stopped)?;
        let wait = async {
            loop {
                match events.recv().await {
                    Some(MemberEvent::Up(m)) if m.name == name => return Ok(()),
                    Some(_) => {}
                    None => return Err(JoinError::Stopped),
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(JoinError::Timeout {
                name: name.to_string(),
                timeout,
            }),
        }
    }

    /// Asks the node `name` to let this one in, without waiting; false if the membership
    /// process has stopped.
    pub(crate) fn announce(&self, name: &str) -> bool {
        self.control.send(Control::Join(name.to_string())).is_ok()
    }

    /// Leaves the cluster gracefully: tells every member (they see [`MemberEvent::Left`]),
    /// gossips the departure, and stops the membership process. Returns once the messages are
    /// queued.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Leave(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Member events starting from the current state (see [`Cluster::events`]).
#[derive(Debug)]
pub struct MemberEvents {
    initial: std::collections::VecDeque<MemberEvent>,
    rx: broadcast::Receiver<MemberEvent>,
}

impl MemberEvents {
    /// The next event; `None` once the membership process has stopped.
    pub async fn recv(&mut self) -> Option<MemberEvent> {
        if let Some(e) = self.initial.pop_front() {
            return Some(e);
        }
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "member events subscriber lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

struct PendingTimer {
    at: Instant,
    seq: u64,
    timer: MachineTimer,
}

impl PartialEq for PendingTimer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for PendingTimer {}
impl PartialOrd for PendingTimer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PendingTimer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: the heap pops the earliest.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The membership process: drives a [`Machine`] with the node's messages, a timer heap and
/// the node's events, and carries its packets as conc messages.
struct Driver {
    node: Node,
    machine: Machine,
    shared: Arc<Shared>,
    pids: HashMap<String, Pid<Wire>>,
    timers: BinaryHeap<PendingTimer>,
    timer_seq: u64,
    seeds: Vec<String>,
    join_backoff: Duration,
    next_join: Instant,
}

const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Driver {
    async fn run(
        mut self,
        mut inbox: Inbox<Wire>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut node_events: broadcast::Receiver<NodeEvent>,
    ) {
        let far = Duration::from_secs(3600);
        loop {
            let next_timer = self.timers.peek().map(|t| t.at);
            let joining = !self.seeds.is_empty() && self.machine.len() == 1;
            let wake = match (next_timer, joining) {
                (Some(t), true) => t.min(self.next_join),
                (Some(t), false) => t,
                (None, true) => self.next_join,
                (None, false) => Instant::now() + far,
            };
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(Wire::Swim(packet)) => {
                        if let Err(e) = self.machine.handle_packet(&packet) {
                            tracing::debug!(error = %e, "membership packet refused");
                        }
                    }
                    Some(Wire::Leaving { name, incarnation }) => {
                        self.machine.leaving(&name, Some(incarnation));
                    }
                    Some(Wire::Connect) => {}
                    None => break,
                },
                cmd = control.recv() => match cmd {
                    Some(Control::Join(name)) => {
                        if !self.seeds.contains(&name) && name != self.machine.me().name {
                            self.seeds.push(name.clone());
                        }
                        self.join_backoff = Duration::from_millis(100);
                        self.next_join = Instant::now() + self.join_backoff;
                        if let Err(e) = self.machine.join(&name) {
                            tracing::debug!(error = %e, "announce refused");
                        }
                    }
                    Some(Control::Leave(done)) => {
                        self.leave();
                        let _ = done.send(());
                        break;
                    }
                    None => {}
                },
                ev = node_events.recv() => match ev {
                    Ok(NodeEvent::Down { name, reason }) => {
                        if reason == DownReason::Goodbye {
                            self.machine.leaving(&name, None);
                        }
                        if let Err(e) = self.machine.suspect(&name) {
                            tracing::debug!(error = %e, "suspicion refused");
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    while self.timers.peek().is_some_and(|t| t.at <= now) {
                        if let Some(t) = self.timers.pop()
                            && let Err(e) = self.machine.handle_timer(t.timer)
                        {
                            tracing::debug!(error = %e, "membership timer refused");
                        }
                    }
                    if joining && self.next_join <= now {
                        self.announce_to_seeds();
                    }
                }
            }
            self.flush();
        }
        // A stopped membership process is seen by the others as a failed (or, after leave,
        // a left) member; close the event stream for subscribers.
        let mut view = self.shared.view.lock().unwrap_or_else(|p| p.into_inner());
        view.clear();
    }

    fn announce_to_seeds(&mut self) {
        for seed in self.seeds.clone() {
            if let Err(e) = self.machine.join(&seed) {
                tracing::debug!(error = %e, "announce refused");
            }
        }
        self.next_join = Instant::now() + self.join_backoff;
        self.join_backoff = (self.join_backoff * 2).min(JOIN_BACKOFF_MAX);
    }

    fn leave(&mut self) {
        let me = self.machine.me().clone();
        for m in self.machine.members() {
            if m.name != me.name {
                self.send(
                    &m.name,
                    Wire::Leaving {
                        name: me.name.clone(),
                        incarnation: me.incarnation,
                    },
                );
            }
        }
        if let Err(e) = self.machine.leave() {
            tracing::debug!(error = %e, "leave refused");
        }
        self.flush();
    }

    fn send(&mut self, to: &str, msg: Wire) {
        if !self.pids.contains_key(to) {
            match self.node.remote::<Wire>(to, MEMBERSHIP_NAME) {
                Ok(pid) => {
                    // Bounded: one entry per member name seen; forgotten when it goes down.
                    self.pids.insert(to.to_string(), pid);
                }
                Err(e) => {
                    tracing::debug!(peer = to, error = %e, "no route to member");
                    return;
                }
            }
        }
        if let Some(pid) = self.pids.get(to)
            && let Err(e) = pid.send(msg)
        {
            tracing::trace!(peer = to, error = %e.kind, "membership packet not sent");
        }
    }

    fn flush(&mut self) {
        let outputs: Vec<Output> = self.machine.drain().collect();
        for out in outputs {
            match out {
                Output::Send { to, packet } => self.send(&to, Wire::Swim(packet)),
                Output::Timer { after, timer } => {
                    self.timer_seq += 1;
                    self.timers.push(PendingTimer {
                        at: Instant::now() + after,
                        seq: self.timer_seq,
                        timer,
                    });
                }
                Output::Event(event) => {
                    match &event {
                        MemberEvent::Up(m) => {
                            tracing::info!(member = %m.name, "member up");
                            metrics::counter!("conc_member_up_total").increment(1);
                            self.send(&m.name.clone(), Wire::Connect);
                        }
                        MemberEvent::Down { member, reason } => {
                            tracing::info!(member = %member.name, %reason, "member down");
                            let reason = match reason {
                                MemberDownReason::Unresponsive => "unresponsive",
                                MemberDownReason::Restarted => "restarted",
                            };
                            metrics::counter!("conc_member_down_total", "reason" => reason)
                                .increment(1);
                            self.pids.remove(&member.name);
                        }
                        MemberEvent::Left(m) => {
                            tracing::info!(member = %m.name, "member left");
                            metrics::counter!("conc_member_down_total", "reason" => "left")
                                .increment(1);
                            self.pids.remove(&m.name);
                        }
                    }
                    let mut view = self.shared.view.lock().unwrap_or_else(|p| p.into_inner());
                    match &event {
                        MemberEvent::Up(m) => {
                            view.insert(m.name.clone(), m.clone());
                        }
                        MemberEvent::Down { member, .. } | MemberEvent::Left(member) => {
                            if view.get(&member.name) == Some(member) {
                                view.remove(&member.name);
                            }
                        }
                    }
                    let _ = self.shared.events.send(event);
                    drop(view);
                }
            }
        }
    }
}

/// FNV-1a of a name: mixes the name into the random seed (nodes with one incarnation seed
/// differently).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
