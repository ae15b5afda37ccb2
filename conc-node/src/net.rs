//! The node's side of the network: the hook installed into the runtime, the sink per peer that
//! encodes messages into frames, and the handler of frames from peers.
//!
//! Everything the node knows of a peer is keyed by the identity the peer *proved* in the
//! handshake (its name and incarnation), whatever name was used to reach it: a name that turned
//! out to be an alias (`localhost:P` for `127.0.0.1:P`) is mapped to the proven name as soon as
//! a handshake through it completes ([`Inbound::peer_proven`]), and every table (pending calls,
//! monitors, links) is searched through that mapping. A handshake that proves a new incarnation
//! of a known peer fires everything that depended on the old one at once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use conc_core::{
    BoxFuture, CallFailure, DeliverError, DownFn, ExitReason, MonitorRef, NodeHook, ProcessId,
    Refusal, RemoteError, RemoteSink, ReplyFailure, ReplyRequest, Runtime, SendRequest, Target,
};
use conc_wire::frame::{self, ErrorCode, Frame, FrameError};
use conc_wire::{
    DownReason, FrameMeta, Inbound, NodeIdentity, Proven, Route, RouteError, Transport, bin,
};

use crate::stats::{Counters, PeerCounters};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Calls to a peer that are waiting for replies are remembered so that they fail at once when
/// the peer is lost. Ended calls are pruned once a peer's set grows past this.
const PRUNE_PENDING_AT: usize = 4096;

/// The pid reported when the process is not known (a name that resolved to nothing).
const NO_PID: ProcessId = ProcessId {
    incarnation: 0,
    id: 0,
};

/// What the node knows of a peer, by its proven name.
#[derive(Default)]
struct Known {
    /// The incarnation proven last (0: none yet).
    incarnation: u64,
    /// Whether a `Down` event was sent since the peer was last proven or up.
    down: bool,
}

/// A call of this node waiting for a peer's reply.
#[derive(Clone, Copy)]
struct PendingCall {
    /// The incarnation of the callee's node it reaches (0: not known yet).
    incarnation: u64,
    /// When the request was queued (for the call-duration histogram).
    since: std::time::Instant,
}

/// A monitor this node holds on a process of a peer.
struct Watching {
    /// The name the monitor was made through (an alias or the proven name).
    peer: String,
    /// The incarnation of the peer the monitored process belongs to (0: not known yet).
    incarnation: u64,
    fire: DownFn,
}

pub(crate) struct Net {
    pub(crate) rt: Runtime,
    pub(crate) name: Arc<str>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) counters: Counters,
    pub(crate) max_frame: usize,
    /// How many peers the node keeps state for ([`conc_wire::Limits::max_peers`]).
    max_peers: usize,
    /// The address the node listens on, to recognise itself behind an alias.
    local_addr: Option<SocketAddr>,
    /// Which nodes this node may dial.
    dial: DialPolicy,
    pub(crate) me: Weak<Net>,
    sinks: Mutex<HashMap<String, Arc<PeerSink>>>,
    /// Calls waiting for replies, by the name of the peer they were made through: reply id →
    /// the incarnation of the callee's node (0 if not known when the call was made).
    pending_calls: Mutex<HashMap<String, HashMap<u64, PendingCall>>>,
    /// Monitors this node holds on processes of peers, by monitor id (unique on this node).
    watching: Mutex<HashMap<u64, Watching>>,
    /// Monitors peers hold on processes of this node: (peer's proven name, monitor id).
    watched: Mutex<HashMap<(String, u64), (ProcessId, MonitorRef)>>,
    /// Links between local processes and processes of peers.
    links: Mutex<Vec<RemoteLink>>,
    next_link: AtomicU64,
    /// Names under which peers were reached that turned out to be aliases: alias → proven name.
    aliases: Mutex<HashMap<String, String>>,
    /// What is known of each peer, by proven name.
    known: Mutex<HashMap<String, Known>>,
    /// Set when [`crate::Node::shutdown`] begins: every operation towards peers fails at once.
    closing: AtomicBool,
    /// Node up/down events for subscribers.
    pub(crate) events: tokio::sync::broadcast::Sender<NodeEvent>,
}

/// A link between a local process and a process of a peer.
struct RemoteLink {
    /// Unique on this node.
    id: u64,
    /// The name of the peer the link was made through (an alias or the proven name).
    peer: String,
    local_pid: ProcessId,
    /// The peer's process; `None` while a link made through a name waits for the peer to say
    /// which process held it ([`Frame::Linked`]).
    remote: Option<ProcessId>,
    /// The name the link was made through, on either side.
    via: Option<String>,
    /// The watcher on the local process (set once installed).
    mref: Option<MonitorRef>,
}

impl RemoteLink {
    /// Whether a link frame from the peer about `(target, remote)` names this link.
    fn matches(&self, target: &Target, remote: ProcessId) -> bool {
        let remote_ok = match self.remote {
            Some(r) => r == remote,
            // A link through a name the peer could not resolve is refused with no pid.
            None => remote == NO_PID,
        };
        remote_ok
            && match target {
                Target::Id(id) => self.local_pid == *id,
                Target::Name(n) => self.via.as_deref() == Some(n.as_str()),
            }
    }
}

/// A node came up or went down (see [`crate::Node::node_events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection to the node was established and authenticated.
    Up {
        /// The node's name.
        name: String,
        /// Its incarnation.
        incarnation: u64,
    },
    /// The node was lost (connection closed, silent beyond the heartbeat bound, a failed
    /// delivery or probe, it said goodbye, or it restarted: a new incarnation was proven).
    Down {
        /// The node's (proven) name.
        name: String,
        /// Why: a goodbye (the peer shut down cleanly) is told apart from every kind of
        /// failure.
        reason: DownReason,
    },
}

impl Net {
    pub(crate) fn new(
        rt: Runtime,
        name: Arc<str>,
        transport: Arc<dyn Transport>,
        limits: &conc_wire::Limits,
        local_addr: Option<SocketAddr>,
        dial: DialPolicy,
    ) -> Arc<Net> {
        Arc::new_cyclic(|me| Net {
            rt,
            name,
            transport,
            counters: Counters::default(),
            max_frame: limits.max_frame,
            max_peers: limits.max_peers.max(1),
            local_addr,
            dial,
            me: me.clone(),
            sinks: Mutex::new(HashMap::new()),
            pending_calls: Mutex::new(HashMap::new()),
            watching: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashMap::new()),
            links: Mutex::new(Vec::new()),
            next_link: AtomicU64::new(1),
            aliases: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            events: tokio::sync::broadcast::channel(1024).0,
        })
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.rt.is_shutting_down()
    }

    /// Begins shutting down: from now on every send, call, monitor and link towards a peer
    /// fails at once, and every call still waiting for a reply fails now with
    /// [`CallFailure::ShuttingDown`].
    pub(crate) fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        let ids: Vec<u64> = lock(&self.pending_calls)
            .drain()
            .flat_map(|(_, calls)| calls.into_keys())
            .collect();
        for id in ids {
            self.rt.node_side().fail_call(id, CallFailure::ShuttingDown);
        }
        // Calls whose reply handle went to a peer inside a message to a third process.
        self.rt
            .node_side()
            .fail_waiting_calls(CallFailure::ShuttingDown);
    }

    /// The proven name of the node reached as `name` (itself if no alias is known).
    pub(crate) fn canon(&self, name: &str) -> String {
        lock(&self.aliases)
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }

    /// Every name the node with proven name `canonical` is known under here.
    fn names_of(&self, canonical: &str) -> HashSet<String> {
        let mut names: HashSet<String> = lock(&self.aliases)
            .iter()
            .filter(|(_, proven)| *proven == canonical)
            .map(|(alias, _)| alias.clone())
            .collect();
        names.insert(canonical.to_string());
        names
    }

    /// The peers proven and not seen down since (name, incarnation), sorted by name.
    pub(crate) fn up_peers(&self) -> Vec<(String, u64)> {
        let mut up: Vec<(String, u64)> = lock(&self.known)
            .iter()
            .filter(|(_, k)| !k.down && k.incarnation != 0)
            .map(|(n, k)| (n.clone(), k.incarnation))
            .collect();
        up.sort();
        up
    }

    /// The incarnation of the node reached as `name` that is up now, as far as this node
    /// knows (0: none yet, or it was seen down: the next one proven is the one reached).
    fn live_incarnation(&self, name: &str) -> u64 {
        let c = self.canon(name);
        lock(&self.known)
            .get(&c)
            .filter(|k| !k.down)
            .map_or(0, |k| k.incarnation)
    }

    /// Whether `node` names this node: its own name, or `host:port` with this node's port and
    /// a host that is its bound address (or loopback, when it listens on loopback or on every
    /// address). Checked without resolving names.
    pub(crate) fn is_self(&self, node: &str) -> bool {
        node == &*self.name
            || self
                .local_addr
                .is_some_and(|bound| names_bound(node, bound))
    }

    /// Bytes and frames queued for `peer` and not yet written.
    pub(crate) fn queued(&self, peer: &str) -> (u64, u64) {
        let sink = lock(&self.sinks).get(peer).cloned();
        sink.and_then(|s| s.route.as_ref().map(|l| l.queued()))
            .map(|(b, f)| (b as u64, f as u64))
            .unwrap_or((0, 0))
    }

    pub(crate) fn sink(&self, peer: &str) -> Arc<PeerSink> {
        if let Some(s) = lock(&self.sinks).get(peer) {
            return s.clone();
        }
        if self.is_self(peer) {
            // This node, perhaps through an alias: delivered here, never over the network;
            // what is kept under the alias is found under the node's own name.
            if peer != &*self.name {
                lock(&self.aliases).insert(peer.to_string(), self.name.to_string());
            }
            let s = Arc::new(PeerSink {
                net: self.me.clone(),
                peer: peer.to_string(),
                route: Some(Arc::new(Loopback {
                    net: self.me.clone(),
                    name: peer.to_string(),
                })),
                refused: None,
                counters: Arc::default(),
                max_frame: self.max_frame,
            });
            return lock(&self.sinks)
                .entry(peer.to_string())
                .or_insert(s)
                .clone();
        }
        if !self.dial.allows(peer) && !lock(&self.known).contains_key(&self.canon(peer)) {
            tracing::warn!(peer, "dial policy: not reaching this node");
            self.counters.rejected("dial not allowed");
            return Arc::new(PeerSink {
                net: self.me.clone(),
                peer: peer.to_string(),
                route: None,
                refused: Some(Refused::DialPolicy),
                counters: Arc::default(),
                max_frame: self.max_frame,
            });
        }
        if !self.make_room(peer) {
            tracing::warn!(peer, "too many peer nodes: not reaching another");
            self.counters.rejected("too many peer nodes");
            // A sink that refuses everything, kept nowhere.
            return Arc::new(PeerSink {
                net: self.me.clone(),
                peer: peer.to_string(),
                route: None,
                refused: Some(Refused::TooManyPeers),
                counters: Arc::default(),
                max_frame: self.max_frame,
            });
        }
        let mut sinks = lock(&self.sinks);
        if let Some(s) = sinks.get(peer) {
            return s.clone();
        }
        let link = match self.transport.route(peer) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(peer, error = %e, "no link to peer");
                None
            }
        };
        let s = Arc::new(PeerSink {
            net: self.me.clone(),
            peer: peer.to_string(),
            route: link,
            refused: None,
            counters: self.counters.peer(peer),
            max_frame: self.max_frame,
        });
        sinks.insert(peer.to_string(), s.clone());
        s
    }

    /// How many peers the node keeps state for: those with a sink or counters. Takes the two
    /// maps one after the other, never both at once.
    fn peer_count(&self) -> usize {
        let mut names: HashSet<String> = lock(&self.sinks).keys().cloned().collect();
        names.extend(lock(&self.counters.peers).keys().cloned());
        names.len()
    }

    /// Whether the node may keep state for `peer`: it already does, or it has room for one more
    /// ([`conc_wire::Limits::max_peers`]), if need be after forgetting idle peers.
    pub(crate) fn make_room(&self, peer: &str) -> bool {
        if lock(&self.sinks).contains_key(peer) || self.counters.get(peer).is_some() {
            return true;
        }
        if self.peer_count() < self.max_peers {
            return true;
        }
        self.forget_idle();
        self.peer_count() < self.max_peers
    }

    /// Forgets every idle peer: not connected, nothing queued for it, and no pid, reply handle,
    /// call, monitor or link referring to it. Its stats go too.
    fn forget_idle(&self) {
        let mut busy: HashSet<String> = lock(&self.pending_calls)
            .iter()
            .filter(|(_, calls)| !calls.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        busy.extend(lock(&self.watching).values().map(|w| w.peer.clone()));
        busy.extend(lock(&self.watched).keys().map(|(p, _)| p.clone()));
        busy.extend(lock(&self.links).iter().map(|l| l.peer.clone()));
        // A name is busy if any name of its node is.
        let aliases = lock(&self.aliases).clone();
        let busy_nodes: HashSet<String> = busy
            .iter()
            .map(|n| aliases.get(n).cloned().unwrap_or_else(|| n.clone()))
            .collect();
        let is_busy =
            |n: &String| busy_nodes.contains(aliases.get(n).unwrap_or(n)) || busy.contains(n);
        // Candidates from the sinks, then from the counters (one map at a time).
        let mut idle: Vec<String> = lock(&self.sinks)
            .iter()
            .filter(|(name, s)| {
                !is_busy(name)
                    && Arc::strong_count(s) == 1
                    && s.route.as_ref().is_none_or(|l| l.queued() == (0, 0))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let with_sink: HashSet<String> = lock(&self.sinks).keys().cloned().collect();
        idle.extend(
            lock(&self.counters.peers)
                .keys()
                .filter(|n| !with_sink.contains(*n) && !is_busy(n))
                .cloned(),
        );
        let idle: Vec<String> = idle
            .into_iter()
            .filter(|n| {
                self.counters
                    .get(n)
                    .is_none_or(|c| lock(&c.connected_since).is_none())
            })
            .collect();
        if idle.is_empty() {
            return;
        }
        {
            let mut sinks = lock(&self.sinks);
            for name in &idle {
                // Still the only reference (a pid may have taken one meanwhile).
                if sinks.get(name).is_some_and(|s| Arc::strong_count(s) == 1) {
                    sinks.remove(name);
                }
            }
        }
        {
            let mut counters = lock(&self.counters.peers);
            for name in &idle {
                counters.remove(name);
            }
        }
        {
            let mut pending = lock(&self.pending_calls);
            for name in &idle {
                pending.remove(name);
            }
        }
        {
            let mut aliases = lock(&self.aliases);
            let mut known = lock(&self.known);
            for name in &idle {
                aliases.remove(name);
                known.remove(name);
            }
        }
        tracing::debug!(n = idle.len(), "forgot idle peers");
        for name in &idle {
            self.transport.forget(name);
        }
    }

    fn note_call(&self, peer: &str, reply_id: u64, incarnation: u64) {
        let mut pending = lock(&self.pending_calls);
        let calls = pending.entry(peer.to_string()).or_default();
        if calls.len() >= PRUNE_PENDING_AT {
            calls.retain(|id, _| self.rt.node_side().is_call_waiting(*id));
        }
        calls.insert(
            reply_id,
            PendingCall {
                incarnation,
                since: std::time::Instant::now(),
            },
        );
    }

    /// Forgets a pending call (it ended); returns it if it was pending.
    fn end_call(&self, reply_id: u64) -> Option<PendingCall> {
        lock(&self.pending_calls)
            .values_mut()
            .find_map(|calls| calls.remove(&reply_id))
    }

    /// Fails every call waiting on a node known under `names` (only those made on incarnation
    /// `only` or before it was known, if given).
    fn fail_calls(&self, names: &HashSet<String>, only: Option<u64>, failure: CallFailure) {
        let ids: Vec<u64> = {
            let mut pending = lock(&self.pending_calls);
            let mut ids = Vec::new();
            for name in names {
                if let Some(calls) = pending.get_mut(name) {
                    calls.retain(|id, call| {
                        let hit = only.is_none_or(|o| call.incarnation == o);
                        if hit {
                            ids.push(*id);
                        }
                        !hit
                    });
                }
            }
            ids
        };
        for id in ids {
            self.rt.node_side().fail_call(id, failure.clone());
        }
    }

    fn send_error(&self, back: &dyn Route, call_ref: Option<u64>, err: &DeliverError) {
        let code = match err {
            DeliverError::NoSuchProcess => ErrorCode::NoSuchProcess,
            DeliverError::UnknownName(_) => ErrorCode::UnknownName,
            DeliverError::TypeMismatch { .. } => ErrorCode::TypeMismatch,
            DeliverError::LocalOnly => ErrorCode::LocalOnly,
            DeliverError::Decode(_) => ErrorCode::Decode,
            DeliverError::MailboxFull => ErrorCode::MailboxFull,
            DeliverError::NoCaller => return,
        };
        let detail = err.to_string();
        let _ = back.send(
            &mut |out: &mut Vec<u8>| frame::encode_error(out, call_ref, code, &detail),
            FrameMeta::default(),
        );
    }

    fn send_down(&self, peer: &str, monitor: u64, pid: ProcessId, reason: &ExitReason) {
        let sink = self.sink(peer);
        if let Some(link) = &sink.route {
            let _ = link.send(
                &mut |out: &mut Vec<u8>| frame::encode_down(out, monitor, pid, reason),
                // After the last messages of the process that went down, on every lane.
                FrameMeta {
                    after_all: true,
                    ..FrameMeta::default()
                },
            );
        }
    }

    /// Sends the exit of a linked local process to the peer side of `l`.
    fn send_link_exit(&self, l: &RemoteLink, reason: &ExitReason) {
        let target = match (&l.remote, &l.via) {
            (Some(r), _) => Target::Id(*r),
            // The peer has not said yet which process held the name; it knows its side of
            // the link by the name (the frame follows the link request).
            (None, Some(name)) => Target::Name(name.clone()),
            (None, None) => return,
        };
        let sink = self.sink(&l.peer);
        if let Some(link) = &sink.route {
            let _ = link.send(
                &mut |out: &mut Vec<u8>| frame::encode_link_exit(out, &target, l.local_pid, reason),
                FrameMeta {
                    after_all: true,
                    ..FrameMeta::default()
                },
            );
        }
    }

    fn handle(
        &self,
        from: &NodeIdentity,
        frame: Frame<'_>,
        back: &dyn Route,
        may_wait: bool,
    ) -> Option<BoxFuture<'static, ()>> {
        match frame {
            Frame::Send {
                target,
                tag,
                call_ref,
                body,
            } => {
                let res = self
                    .rt
                    .node_side()
                    .deliver_body(&target, tag, body, |deliver| {
                        bin::with_deserializer(body, |de| deliver(de))
                    });
                if matches!(res, Err(DeliverError::MailboxFull)) && may_wait {
                    return Some(self.rt.node_side().room(&target));
                }
                if let Err(e) = res {
                    tracing::warn!(peer = %from.name, ?target, error = %e, "message refused");
                    self.counters
                        .dead_letter(&from.name, &format!("refused: {}", category(&e)), 1);
                    self.send_error(back, call_ref, &e);
                }
            }
            Frame::Reply {
                incarnation,
                reply_id,
                tag,
                body,
            } => {
                if incarnation != self.rt.incarnation() {
                    self.counters
                        .dead_letter(&from.name, "reply for an earlier incarnation", 1);
                    return None;
                }
                // The call's duration is recorded before the caller can see its reply.
                if let Some(call) = self.end_call(reply_id) {
                    metrics::histogram!("conc_call_duration_seconds")
                        .record(call.since.elapsed().as_secs_f64());
                }
                let res = bin::with_deserializer(body, |de| {
                    self.rt.node_side().deliver_reply(reply_id, tag, de)
                });
                match res {
                    Ok(()) => {}
                    Err(DeliverError::NoCaller) => {
                        self.counters.late_replies.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(reply_id, "late reply dropped");
                    }
                    Err(e) => {
                        tracing::warn!(peer = %from.name, error = %e, "reply refused");
                        self.counters.dead_letter(
                            &from.name,
                            &format!("reply refused: {}", category(&e)),
                            1,
                        );
                        self.rt.node_side().fail_call(
                            reply_id,
                            CallFailure::Remote(RemoteError::Refused {
                                peer: from.name.clone(),
                                reason: refusal_of(&e),
                            }),
                        );
                    }
                }
            }
            Frame::ReplyDropped {
                incarnation,
                reply_id,
                panicking,
            } => {
                if incarnation == self.rt.incarnation() {
                    let failure = if panicking {
                        CallFailure::Exited(ExitReason::Panic(
                            "callee panicked before replying".to_string(),
                        ))
                    } else {
                        CallFailure::Dropped { panicking: false }
                    };
                    self.end_call(reply_id);
                    self.rt.node_side().fail_call(reply_id, failure);
                }
            }
            Frame::ReplyFailed {
                incarnation,
                reply_id,
                code,
            } => {
                if incarnation == self.rt.incarnation() {
                    let why = match code {
                        ErrorCode::ReplyTooLarge => ReplyFailure::TooLarge,
                        _ => ReplyFailure::Encode,
                    };
                    self.end_call(reply_id);
                    self.rt
                        .node_side()
                        .fail_call(reply_id, CallFailure::ReplyNotSent(why));
                }
            }
            Frame::Error {
                call_ref,
                code,
                detail,
            } => {
                tracing::warn!(peer = %from.name, ?code, %detail, "peer refused a message");
                self.counters
                    .dead_letter(&from.name, &format!("refused by peer: {code:?}"), 1);
                if let Some(id) = call_ref {
                    self.end_call(id);
                    self.rt.node_side().fail_call(
                        id,
                        CallFailure::Remote(RemoteError::Refused {
                            peer: from.name.clone(),
                            reason: refusal_from_code(code),
                        }),
                    );
                }
            }
            Frame::Monitor { target, monitor } => {
                let peer = from.name.clone();
                let weak = self.me.clone();
                let fire: DownFn = Box::new(move |reason, pid| {
                    if let Some(net) = weak.upgrade() {
                        lock(&net.watched).remove(&(peer.clone(), monitor));
                        net.send_down(&peer, monitor, pid.unwrap_or(NO_PID), &reason);
                    }
                });
                if let Some((mref, pid)) = self.rt.node_side().monitor_target(&target, fire) {
                    lock(&self.watched).insert((from.name.clone(), monitor), (pid, mref));
                }
            }
            Frame::Demonitor { monitor, .. } => {
                if let Some((pid, mref)) = lock(&self.watched).remove(&(from.name.clone(), monitor))
                {
                    self.rt.node_side().demonitor_target(pid, mref);
                }
            }
            Frame::Down {
                monitor,
                pid,
                reason,
            } => {
                let names = self.names_of(&from.name);
                let fire = {
                    let mut w = lock(&self.watching);
                    match w.get(&monitor) {
                        Some(entry) if names.contains(&entry.peer) => w.remove(&monitor),
                        _ => None,
                    }
                };
                if let Some(entry) = fire {
                    (entry.fire)(reason, Some(pid));
                }
            }
            Frame::Link {
                target,
                from: remote,
            } => {
                let via = match &target {
                    Target::Name(n) => Some(n.clone()),
                    Target::Id(_) => None,
                };
                match self.add_link(&from.name, &target, Some(remote), via.clone()) {
                    Some(local) => {
                        if let Some(name) = via
                            && let Some(link) = &self.sink(&from.name).route
                        {
                            // Tell the asking side which process held the name (through the
                            // peer's queue: per-message TCP answers a frame only with an ack).
                            let _ = link.send(
                                &mut |out: &mut Vec<u8>| {
                                    frame::encode_linked(out, &name, remote, local)
                                },
                                FrameMeta {
                                    after_all: true,
                                    ..FrameMeta::default()
                                },
                            );
                        }
                    }
                    None => {
                        // No such process (or name): the asking process gets noproc, as a
                        // link to a dead process does in Erlang.
                        let from_pid = match &target {
                            Target::Id(p) => *p,
                            Target::Name(_) => NO_PID,
                        };
                        if let Some(link) = &self.sink(&from.name).route {
                            let _ = link.send(
                                &mut |out: &mut Vec<u8>| {
                                    frame::encode_link_exit(
                                        out,
                                        &Target::Id(remote),
                                        from_pid,
                                        &ExitReason::NoSuchProcess,
                                    )
                                },
                                FrameMeta {
                                    after_all: true,
                                    ..FrameMeta::default()
                                },
                            );
                        }
                    }
                }
            }
            Frame::Linked {
                name,
                target,
                from: holder,
            } => {
                let names = self.names_of(&from.name);
                let mut links = lock(&self.links);
                if let Some(l) = links.iter_mut().find(|l| {
                    names.contains(&l.peer)
                        && l.local_pid == target
                        && l.remote.is_none()
                        && l.via.as_deref() == Some(name.as_str())
                }) {
                    l.remote = Some(holder);
                }
            }
            Frame::Kill { target } => {
                tracing::debug!(peer = %from.name, ?target, "killed by a peer");
                self.rt.node_side().kill_target(&target);
            }
            Frame::Unlink {
                target,
                from: remote,
            } => {
                self.remove_links(&from.name, &target, remote);
            }
            Frame::LinkExit {
                target,
                from: remote,
                reason,
            } => {
                // Only a link that exists carries an exit (an unlinked or unknown one is
                // dropped), and a name is never looked up again: the exit goes to the process
                // that held it when the link was made.
                for l in self.remove_links(&from.name, &target, remote) {
                    self.rt.node_side().exit_signal(
                        &Target::Id(l.local_pid),
                        remote,
                        reason.clone(),
                    );
                }
            }
            Frame::Handshake(_)
            | Frame::Ack
            | Frame::Ping
            | Frame::Pong
            | Frame::Goodbye
            | Frame::Lane(_)
            | Frame::Barrier(_) => {}
        }
        None
    }

    /// Records a link between the local process `local` and a process of `peer` (`remote`,
    /// or, for a link made through a name that the peer has yet to resolve, `None`), with a
    /// watcher that sends the local process's exit to the peer. Returns the local process, or
    /// `None` if there is no such process (nothing is recorded then).
    fn add_link(
        &self,
        peer: &str,
        local: &Target,
        remote: Option<ProcessId>,
        via: Option<String>,
    ) -> Option<ProcessId> {
        let local_pid = self.rt.node_side().local_process_id(local)?;
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        lock(&self.links).push(RemoteLink {
            id,
            peer: peer.to_string(),
            local_pid,
            remote,
            via,
            mref: None,
        });
        let weak = self.me.clone();
        let fire: DownFn = Box::new(move |reason, _| {
            let Some(net) = weak.upgrade() else {
                return;
            };
            let entry = {
                let mut links = lock(&net.links);
                links
                    .iter()
                    .position(|l| l.id == id)
                    .map(|i| links.swap_remove(i))
            };
            if let Some(l) = entry {
                net.send_link_exit(&l, &reason);
            }
        });
        // If the process exited meanwhile, the watcher fires at once and sends its exit.
        if let Some((mref, _)) = self
            .rt
            .node_side()
            .monitor_target(&Target::Id(local_pid), fire)
        {
            let mut links = lock(&self.links);
            match links.iter_mut().find(|l| l.id == id) {
                Some(l) => l.mref = Some(mref),
                None => {
                    drop(links);
                    self.rt.node_side().demonitor_target(local_pid, mref);
                }
            }
        }
        Some(local_pid)
    }

    /// Removes the links with the node known as `peer` that a frame from it about
    /// `(target, remote)` names (`target` a process of this node, `remote` one of the peer's),
    /// and their watchers; returns them.
    fn remove_links(&self, peer: &str, target: &Target, remote: ProcessId) -> Vec<RemoteLink> {
        self.take_links(peer, |l| l.matches(target, remote))
    }

    /// Removes the links with the node known as `peer` that `pred` picks, and their watchers.
    fn remove_links_where(&self, peer: &str, pred: impl Fn(&RemoteLink) -> bool) {
        drop(self.take_links(peer, pred));
    }

    fn take_links(&self, peer: &str, pred: impl Fn(&RemoteLink) -> bool) -> Vec<RemoteLink> {
        let names = self.names_of(&self.canon(peer));
        let removed: Vec<RemoteLink> = {
            let mut links = lock(&self.links);
            let (gone, keep): (Vec<_>, Vec<_>) = links
                .drain(..)
                .partition(|l| names.contains(&l.peer) && pred(l));
            *links = keep;
            gone
        };
        for l in &removed {
            if let Some(mref) = l.mref {
                self.rt.node_side().demonitor_target(l.local_pid, mref);
            }
        }
        removed
    }

    /// A handshake proved `who`: learns the alias it was reached through, and whether it is a
    /// new incarnation of a known node (a restart), which fires everything that depended on
    /// the old one.
    pub(crate) fn proven(&self, proof: Proven<'_>) -> bool {
        let who = proof.peer;
        if let Some(d) = proof.dialled
            && d != who.name
        {
            // A name reached through another address while a live node of another
            // incarnation holds it: two nodes claim one name. The newcomer is refused rather
            // than let it take the other's traffic (a restart of the same node is seen through
            // its own name, or once the old one is down).
            let conflict = lock(&self.known)
                .get(&who.name)
                .is_some_and(|k| !k.down && k.incarnation != 0 && k.incarnation != who.incarnation);
            if conflict {
                tracing::warn!(dialled = d, claimed = %who.name, "two nodes claim one name: refused");
                self.counters.rejected("name conflict");
                return false;
            }
            let mut aliases = lock(&self.aliases);
            if aliases.get(d) != Some(&who.name) {
                tracing::debug!(alias = d, node = %who.name, "alias of a node");
                aliases.insert(d.to_string(), who.name.clone());
            }
        }
        // The call or monitor this connection carries reaches this incarnation.
        if let Some(id) = proof.carrying.call_ref {
            for calls in lock(&self.pending_calls).values_mut() {
                if let Some(call) = calls.get_mut(&id) {
                    call.incarnation = who.incarnation;
                }
            }
        }
        if let Some(m) = proof.carrying.monitor
            && let Some(w) = lock(&self.watching).get_mut(&m)
        {
            w.incarnation = who.incarnation;
        }
        let restarted = {
            let mut known = lock(&self.known);
            let k = known.entry(who.name.clone()).or_default();
            let old = k.incarnation;
            k.incarnation = who.incarnation;
            let was_down = std::mem::replace(&mut k.down, false);
            (old != 0 && old != who.incarnation).then_some((old, was_down))
        };
        if let Some((old, was_down)) = restarted {
            tracing::info!(peer = %who.name, old, new = who.incarnation, "node restarted");
            self.lost(&who.name, Some(old), DownReason::Restarted, !was_down);
        }
        self.bind_unbound(&who.name, who.incarnation);
        true
    }

    /// Calls and monitors made through a name while no incarnation of the node was known to
    /// be up (never reached yet, or seen down) reach the one proven now.
    fn bind_unbound(&self, canonical: &str, incarnation: u64) {
        let names = self.names_of(canonical);
        {
            let mut pending = lock(&self.pending_calls);
            for name in &names {
                if let Some(calls) = pending.get_mut(name) {
                    for call in calls.values_mut().filter(|c| c.incarnation == 0) {
                        call.incarnation = incarnation;
                    }
                }
            }
        }
        for w in lock(&self.watching).values_mut() {
            if w.incarnation == 0 && names.contains(&w.peer) {
                w.incarnation = incarnation;
            }
        }
    }

    /// The node known as `peer` is lost: fail its calls, fire monitors and links with
    /// no-connection, and tell subscribers (once until it is proven or up again). A peer
    /// reported with an incarnation that is no longer its current one was already handled.
    pub(crate) fn node_down(&self, peer: &NodeIdentity, reason: DownReason) {
        let c = self.canon(&peer.name);
        let emit = {
            let mut known = lock(&self.known);
            let k = known.entry(c.clone()).or_default();
            if peer.incarnation != 0 && k.incarnation != 0 && k.incarnation != peer.incarnation {
                // The old incarnation of a restarted peer: handled when the new one was proven.
                return;
            }
            !std::mem::replace(&mut k.down, true)
        };
        self.lost(&c, None, reason, emit);
    }

    /// Fires everything that depends on the node with proven name `c` (only what belongs to
    /// incarnation `only`, if given).
    fn lost(&self, c: &str, only: Option<u64>, reason: DownReason, emit: bool) {
        if only.is_none()
            && let Some(counters) = self.counters.get(c)
        {
            *lock(&counters.connected_since) = None;
        }
        let names = self.names_of(c);
        self.fail_calls(&names, only, CallFailure::Exited(ExitReason::NoConnection));
        let fired: Vec<Watching> = {
            let mut w = lock(&self.watching);
            let keys: Vec<u64> = w
                .iter()
                .filter(|(_, e)| names.contains(&e.peer) && only.is_none_or(|o| e.incarnation == o))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter().filter_map(|k| w.remove(&k)).collect()
        };
        for e in fired {
            (e.fire)(ExitReason::NoConnection, None);
        }
        // Monitors the peer held here belong to the incarnation that is gone.
        let dropped: Vec<(ProcessId, MonitorRef)> = {
            let mut w = lock(&self.watched);
            let keys: Vec<_> = w.keys().filter(|(p, _)| *p == c).cloned().collect();
            keys.into_iter().filter_map(|k| w.remove(&k)).collect()
        };
        for (pid, mref) in dropped {
            self.rt.node_side().demonitor_target(pid, mref);
        }
        let links: Vec<RemoteLink> = {
            let mut l = lock(&self.links);
            let (gone, keep): (Vec<_>, Vec<_>) = l.drain(..).partition(|x| {
                names.contains(&x.peer)
                    && only.is_none_or(|o| x.remote.is_none_or(|r| r.incarnation == o))
            });
            *l = keep;
            gone
        };
        for l in links {
            if let Some(mref) = l.mref {
                self.rt.node_side().demonitor_target(l.local_pid, mref);
            }
            self.rt.node_side().exit_signal(
                &Target::Id(l.local_pid),
                l.remote.unwrap_or(NO_PID),
                ExitReason::NoConnection,
            );
        }
        if emit {
            metrics::counter!("conc_node_down_total", "reason" => format!("{reason:?}"))
                .increment(1);
            let _ = self.events.send(NodeEvent::Down {
                name: c.to_string(),
                reason,
            });
        }
    }

    /// Whether anything on this node waits on `peer` (calls, monitors, links): per-message
    /// TCP probes only such peers.
    fn depends_on(&self, peer: &str) -> bool {
        lock(&self.pending_calls)
            .get(peer)
            .is_some_and(|s| s.keys().any(|id| self.rt.node_side().is_call_waiting(*id)))
            || lock(&self.watching).values().any(|w| w.peer == peer)
            || lock(&self.links).iter().any(|l| l.peer == peer)
    }

    /// Per-message TCP has no connection whose loss tells that a peer is down: every
    /// `interval`, peers that something here depends on are sent a ping on a connection of
    /// its own; a failed probe (connect refused, handshake or answer timing out) declares the
    /// peer down, as a lost connection does on the pooled transports, and a probe whose
    /// handshake proves a new incarnation declares the old one restarted.
    pub(crate) fn spawn_prober(self: &Arc<Self>, interval: std::time::Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(net) = weak.upgrade() else {
                    return;
                };
                if net.is_closing() {
                    return;
                }
                let peers: Vec<Arc<PeerSink>> = lock(&net.sinks).values().cloned().collect();
                for sink in peers {
                    if !net.depends_on(&sink.peer) {
                        continue;
                    }
                    if let Some(link) = &sink.route {
                        let _ = link.send(
                            &mut |out: &mut Vec<u8>| {
                                frame::encode_bare(out, frame::kind::PING);
                                Ok(())
                            },
                            FrameMeta::default(),
                        );
                    }
                }
            }
        });
    }
}

/// The reason of a refused delivery, from a fixed set (names and details stay in the log).
fn category(e: &DeliverError) -> &'static str {
    match e {
        DeliverError::NoSuchProcess => "no such process",
        DeliverError::UnknownName(_) => "unknown name",
        DeliverError::TypeMismatch { .. } => "type mismatch",
        DeliverError::LocalOnly => "local-only process",
        DeliverError::Decode(_) => "undecodable",
        DeliverError::MailboxFull => "mailbox full",
        DeliverError::NoCaller => "no caller",
    }
}

/// Whether `node` (`host:port`) names the listener bound at `bound`: the port as it prints (no
/// leading zeros), and a host that is the bound address in its canonical spelling (IPv6 in
/// brackets), or — when the node listens on loopback or on every address — `localhost`,
/// `127.0.0.1` or `[::1]`. Only these few spellings count, so a peer cannot mint endless
/// aliases of this node (each would be kept).
fn names_bound(node: &str, bound: SocketAddr) -> bool {
    let Some((host, port)) = node.rsplit_once(':') else {
        return false;
    };
    if port != bound.port().to_string() {
        return false;
    }
    let bound_ip = bound.ip();
    if host == "localhost" {
        return bound_ip.is_loopback() || bound_ip.is_unspecified();
    }
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => match v6.parse::<std::net::Ipv6Addr>() {
            Ok(ip) if ip.to_string() == v6 => std::net::IpAddr::V6(ip),
            _ => return false,
        },
        None => match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) if ip.to_string() == host => std::net::IpAddr::V4(ip),
            _ => return false,
        },
    };
    let usual_loopback = ip == std::net::IpAddr::from([127, 0, 0, 1])
        || ip == std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
    ip == bound_ip || (bound_ip.is_unspecified() && (usual_loopback || ip.is_unspecified()))
}

/// The refusal a local delivery error amounts to.
fn refusal_of(e: &DeliverError) -> Refusal {
    match e {
        DeliverError::NoSuchProcess => Refusal::NoSuchProcess,
        DeliverError::UnknownName(_) => Refusal::UnknownName,
        DeliverError::TypeMismatch { .. } => Refusal::TypeMismatch,
        DeliverError::LocalOnly => Refusal::LocalOnly,
        DeliverError::Decode(_) => Refusal::Undecodable,
        DeliverError::MailboxFull => Refusal::MailboxFull,
        DeliverError::NoCaller => Refusal::Other,
    }
}

/// The refusal a peer's wire error code stands for.
fn refusal_from_code(code: ErrorCode) -> Refusal {
    match code {
        ErrorCode::NoSuchProcess => Refusal::NoSuchProcess,
        ErrorCode::UnknownName => Refusal::UnknownName,
        ErrorCode::TypeMismatch => Refusal::TypeMismatch,
        ErrorCode::Decode => Refusal::Undecodable,
        ErrorCode::MailboxFull => Refusal::MailboxFull,
        ErrorCode::LocalOnly => Refusal::LocalOnly,
        ErrorCode::Malformed => Refusal::Malformed,
        ErrorCode::ShuttingDown => Refusal::ShuttingDown,
        ErrorCode::ReplyTooLarge | ErrorCode::ReplyEncode => Refusal::Other,
    }
}

/// The lane of a message: its target process, so FIFO per (sender, receiver) pair holds on
/// transports with several streams.
fn lane_of(target: &Target) -> u64 {
    match target {
        Target::Id(p) => p.id,
        Target::Name(n) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in n.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            h
        }
    }
}

/// The hook installed into the runtime.
pub(crate) struct Hook(pub(crate) Weak<Net>, pub(crate) Arc<str>);

impl NodeHook for Hook {
    fn node_name(&self) -> Arc<str> {
        self.1.clone()
    }

    fn is_self(&self, node: &str) -> bool {
        match self.0.upgrade() {
            Some(net) => net.is_self(node),
            None => node == &*self.1,
        }
    }

    fn remote_sink(&self, node: &str) -> Arc<dyn RemoteSink> {
        match self.0.upgrade() {
            Some(net) => net.sink(node),
            None => Arc::new(PeerSink {
                net: Weak::new(),
                peer: node.to_string(),
                route: None,
                refused: None,
                counters: Arc::default(),
                max_frame: 0,
            }),
        }
    }
}

/// The way from this node to itself, for pids and reply handles that name this node through
/// an alias (or a name not registered yet): each frame is handled here at once, as if it had
/// come from a peer, without touching the network.
struct Loopback {
    net: Weak<Net>,
    name: String,
}

impl Route for Loopback {
    fn peer(&self) -> &str {
        &self.name
    }

    fn send(&self, encode: conc_wire::EncodeFn<'_>, _meta: FrameMeta) -> Result<(), RouteError> {
        let net = self.net.upgrade().ok_or(RouteError::Shutdown)?;
        let mut buf = Vec::new();
        conc_wire::queue_frame(&mut buf, encode, usize::MAX, net.max_frame)?;
        let payload = buf.get(frame::LEN_PREFIX..).unwrap_or_default();
        let decoded = Frame::decode(payload)?;
        let me = NodeIdentity {
            name: net.name.to_string(),
            incarnation: net.rt.incarnation(),
        };
        // Never waits: a full mailbox refuses the message (the sender is told at once).
        let _ = net.handle(&me, decoded, self, false);
        Ok(())
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Why a sink refuses everything.
#[derive(Clone, Copy, Debug)]
enum Refused {
    /// The node keeps state for as many peers as it may ([`conc_wire::Limits::max_peers`]).
    TooManyPeers,
    /// The node's [`DialPolicy`] does not allow dialling this peer.
    DialPolicy,
}

/// Which nodes a node may dial. A pid received in a message names its node, and using it makes
/// this node connect there (that is how replies reach third nodes); an operator who does not
/// want peers to steer the node's outbound connections restricts them here. A node that
/// connected to this one may always be answered. Refusals fail the send with
/// [`RemoteError::DialRefused`], are logged, and are counted in `NodeStats::rejected` under
/// `"dial not allowed"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialPolicy {
    /// Any node (the default, as in Erlang).
    #[default]
    Any,
    /// Only nodes matching one of these: `host:port` exactly, or `host:*` for any port of a
    /// host (hosts compared as written: `localhost` and `127.0.0.1` are different entries).
    AllowList(Vec<String>),
}

impl DialPolicy {
    /// Whether the node named `node` (`host:port`) may be dialled.
    pub fn allows(&self, node: &str) -> bool {
        match self {
            DialPolicy::Any => true,
            DialPolicy::AllowList(list) => list.iter().any(|entry| {
                entry == node
                    || entry
                        .strip_suffix(":*")
                        .is_some_and(|host| node.rsplit_once(':').is_some_and(|(h, _)| h == host))
            }),
        }
    }
}

/// The way to one peer, shared by every pid and reply handle that points there.
pub(crate) struct PeerSink {
    net: Weak<Net>,
    pub(crate) peer: String,
    pub(crate) route: Option<Arc<dyn Route>>,
    /// Refused (for want of room, see [`Net::make_room`], or by the dial policy): every send
    /// fails.
    refused: Option<Refused>,
    counters: Arc<PeerCounters>,
    max_frame: usize,
}

impl PeerSink {
    /// The link, or why there is none (or why it may not be used).
    fn route(&self) -> Result<&Arc<dyn Route>, RemoteError> {
        if self.net.upgrade().is_none_or(|n| n.is_closing()) {
            return Err(RemoteError::ShuttingDown);
        }
        match &self.route {
            Some(link) => Ok(link),
            None => match self.refused {
                Some(Refused::TooManyPeers) => Err(RemoteError::TooManyPeers(self.peer.clone())),
                Some(Refused::DialPolicy) => Err(RemoteError::DialRefused(self.peer.clone())),
                None => Err(RemoteError::ShuttingDown),
            },
        }
    }

    fn map_err(&self, e: RouteError) -> RemoteError {
        match e {
            RouteError::Busy => RemoteError::PeerBusy(self.peer.clone()),
            RouteError::Unreachable(detail) => {
                tracing::debug!(peer = %self.peer, %detail, "peer unreachable");
                RemoteError::Connection {
                    peer: self.peer.clone(),
                    reason: DownReason::Unreachable,
                }
            }
            RouteError::Shutdown => RemoteError::ShuttingDown,
            RouteError::Frame(e) => RemoteError::Encode(e.to_string()),
        }
    }

    /// Counts a frame out: called when it is encoded, before it is queued, so a peer that
    /// answers it can never be seen to have counted it in first.
    fn count_out(&self, bytes: usize) {
        self.counters.msgs_out.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records a frame that was queued on the `metrics` facade (whose counters only go up, so
    /// this waits until the frame is queued).
    fn record_out(&self, bytes: usize) {
        self.counters.metrics.msgs_out.increment(1);
        self.counters.metrics.bytes_out.increment(bytes as u64);
    }

    /// Takes back a count of a frame that was then not queued.
    fn uncount_out(&self, bytes: usize) {
        self.counters.msgs_out.fetch_sub(1, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_sub(bytes as u64, Ordering::Relaxed);
    }
}

impl RemoteSink for PeerSink {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn runtime(&self) -> Option<Runtime> {
        self.net.upgrade().map(|n| n.rt.clone())
    }

    fn send(&self, req: SendRequest<'_>) -> Result<(), RemoteError> {
        let link = self.route()?;
        let net = self.net.upgrade();
        // Remember the call before the frame can fail on another thread, so the failure
        // finds it.
        if let (Some(id), Some(net)) = (req.call_ref, &net) {
            let incarnation = match req.target {
                Target::Id(p) => p.incarnation,
                Target::Name(_) => net.live_incarnation(&self.peer),
            };
            net.note_call(&self.peer, id, incarnation);
        }
        let mut size = 0;
        let max = self.max_frame;
        let res = link.send(
            &mut |out: &mut Vec<u8>| {
                let before = out.len();
                frame::encode_send(out, &req, max)?;
                size = out.len() - before;
                self.count_out(size);
                Ok(())
            },
            FrameMeta {
                call_ref: req.call_ref,
                lane: lane_of(req.target),
                after_all: false,
                monitor: None,
            },
        );
        if let Err(e) = res {
            if size > 0 {
                self.uncount_out(size);
            }
            if let (Some(id), Some(net)) = (req.call_ref, &net) {
                net.end_call(id);
            }
            return Err(self.map_err(e));
        }
        self.record_out(size);
        Ok(())
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        match &self.route {
            Some(link) => link.ready(),
            None => Box::pin(async {}),
        }
    }

    fn reply(&self, req: ReplyRequest<'_>) -> Result<(), RemoteError> {
        let link = self.route()?;
        let mut size = 0;
        let max = self.max_frame;
        let res = link.send(
            &mut |out: &mut Vec<u8>| {
                let before = out.len();
                frame::encode_reply(out, &req, max)?;
                size = out.len() - before;
                self.count_out(size);
                Ok(())
            },
            FrameMeta {
                call_ref: None,
                lane: req.reply_id,
                after_all: false,
                monitor: None,
            },
        );
        if let Err(e) = res {
            if size > 0 {
                self.uncount_out(size);
            }
            // A reply this node cannot send for a reason it knows fails the caller's call at
            // once with that reason, instead of leaving it to time out.
            let code = match &e {
                RouteError::Frame(FrameError::TooLarge { .. }) => Some(ErrorCode::ReplyTooLarge),
                RouteError::Frame(_) => Some(ErrorCode::ReplyEncode),
                RouteError::Busy | RouteError::Unreachable(_) | RouteError::Shutdown => None,
            };
            if let Some(code) = code {
                tracing::warn!(peer = %self.peer, error = %e, "reply could not be sent");
                let _ = link.send(
                    &mut |out: &mut Vec<u8>| {
                        frame::encode_reply_failed(out, req.incarnation, req.reply_id, code)
                    },
                    FrameMeta {
                        call_ref: None,
                        lane: req.reply_id,
                        after_all: false,
                        monitor: None,
                    },
                );
            }
            return Err(self.map_err(e));
        }
        self.record_out(size);
        Ok(())
    }

    fn reply_dropped(&self, incarnation: u64, reply_id: u64, panicking: bool) {
        if let Some(link) = &self.route {
            let _ = link.send(
                &mut |out: &mut Vec<u8>| {
                    frame::encode_reply_dropped(out, incarnation, reply_id, panicking)
                },
                FrameMeta::default(),
            );
        }
    }

    fn monitor(&self, target: &Target, monitor: u64, fire: DownFn) {
        let Some(net) = self.net.upgrade() else {
            fire(ExitReason::NoConnection, None);
            return;
        };
        let Ok(link) = self.route() else {
            fire(ExitReason::NoConnection, None);
            return;
        };
        let incarnation = match target {
            Target::Id(p) => p.incarnation,
            Target::Name(_) => net.live_incarnation(&self.peer),
        };
        lock(&net.watching).insert(
            monitor,
            Watching {
                peer: self.peer.clone(),
                incarnation,
                fire,
            },
        );
        let sent = link.send(
            &mut |out: &mut Vec<u8>| frame::encode_monitor(out, target, monitor, false),
            // On the target's lane: messages sent to it after the monitor do not overtake it.
            FrameMeta {
                lane: lane_of(target),
                monitor: Some(monitor),
                ..FrameMeta::default()
            },
        );
        if sent.is_err() {
            let entry = lock(&net.watching).remove(&monitor);
            if let Some(e) = entry {
                (e.fire)(ExitReason::NoConnection, None);
            }
        }
    }

    fn link(&self, target: &Target, from: ProcessId, link: bool) {
        let Some(net) = self.net.upgrade() else {
            return;
        };
        let remote_pid = match target {
            Target::Id(p) => *p,
            Target::Name(_) => NO_PID,
        };
        if !link {
            match target {
                Target::Id(p) => drop(net.remove_links(&self.peer, &Target::Id(from), *p)),
                // A link through a name: whichever process held it, answered or not yet.
                Target::Name(n) => net.remove_links_where(&self.peer, |l| {
                    l.local_pid == from && l.via.as_deref() == Some(n.as_str())
                }),
            }
            if let Ok(l) = self.route() {
                let _ = l.send(
                    &mut |out: &mut Vec<u8>| frame::encode_link(out, target, from, true),
                    FrameMeta {
                        lane: lane_of(target),
                        ..FrameMeta::default()
                    },
                );
            }
            return;
        }
        let Ok(l) = self.route() else {
            net.rt
                .node_side()
                .exit_signal(&Target::Id(from), remote_pid, ExitReason::NoConnection);
            return;
        };
        // Recorded before the request goes out, so the peer's answer (or its loss) finds it.
        // A link through a name is a link to the process holding the name when the peer
        // receives the request (Erlang's link/1 on a registered name resolves it first); the
        // peer answers with that process ([`Frame::Linked`]).
        let (remote, via) = match target {
            Target::Id(p) => (Some(*p), None),
            Target::Name(n) => (None, Some(n.clone())),
        };
        let Some(_) = net.add_link(&self.peer, &Target::Id(from), remote, via) else {
            return;
        };
        let sent = l.send(
            &mut |out: &mut Vec<u8>| frame::encode_link(out, target, from, false),
            FrameMeta {
                lane: lane_of(target),
                ..FrameMeta::default()
            },
        );
        if sent.is_err() {
            net.remove_links_where(&self.peer, |x| {
                x.local_pid == from
                    && x.remote == remote
                    && x.via.as_deref()
                        == match target {
                            Target::Name(n) => Some(n.as_str()),
                            Target::Id(_) => None,
                        }
            });
            net.rt
                .node_side()
                .exit_signal(&Target::Id(from), remote_pid, ExitReason::NoConnection);
        }
    }

    fn kill(&self, target: &Target) {
        if let Ok(link) = self.route() {
            let _ = link.send(
                &mut |out: &mut Vec<u8>| frame::encode_kill(out, target),
                // On the target's lane: after the messages sent to it before.
                FrameMeta {
                    lane: lane_of(target),
                    ..FrameMeta::default()
                },
            );
        }
    }

    fn presumed_alive(&self, target: &Target) -> bool {
        let Some(net) = self.net.upgrade() else {
            return false;
        };
        let c = net.canon(&self.peer);
        let known = lock(&net.known);
        match known.get(&c) {
            None => true,
            Some(k) if k.down => false,
            Some(k) => match target {
                Target::Id(p) => k.incarnation == 0 || p.incarnation == k.incarnation,
                Target::Name(_) => true,
            },
        }
    }

    fn demonitor(&self, target: &Target, monitor: u64) {
        let Some(net) = self.net.upgrade() else {
            return;
        };
        if lock(&net.watching).remove(&monitor).is_some()
            && let Some(link) = &self.route
        {
            let _ = link.send(
                &mut |out: &mut Vec<u8>| frame::encode_monitor(out, target, monitor, true),
                FrameMeta {
                    lane: lane_of(target),
                    ..FrameMeta::default()
                },
            );
        }
    }
}

/// What the transport calls; holds the node weakly (the node owns the transport).
pub(crate) struct NetInbound(pub(crate) Weak<Net>);

impl Inbound for NetInbound {
    fn frame(
        &self,
        from: &NodeIdentity,
        frame: Frame<'_>,
        wire_len: usize,
        back: &dyn Route,
        may_wait: bool,
    ) -> Option<BoxFuture<'static, ()>> {
        let net = self.0.upgrade()?;
        // Counted as the sender counts its out: messages and replies, whole frames on the
        // wire. A frame offered again after waiting for room is counted once.
        if may_wait && matches!(frame, Frame::Send { .. } | Frame::Reply { .. }) {
            let c = net.counters.peer(&from.name);
            c.msgs_in.fetch_add(1, Ordering::Relaxed);
            c.bytes_in.fetch_add(wire_len as u64, Ordering::Relaxed);
            c.metrics.msgs_in.increment(1);
            c.metrics.bytes_in.increment(wire_len as u64);
        }
        net.handle(from, frame, back, may_wait)
    }

    fn admit(&self, peer: &NodeIdentity) -> bool {
        self.0
            .upgrade()
            .is_some_and(|net| net.make_room(&peer.name))
    }

    fn peer_proven(&self, proof: Proven<'_>) -> bool {
        self.0.upgrade().is_none_or(|net| net.proven(proof))
    }

    fn peer_up(&self, peer: &NodeIdentity) {
        if let Some(net) = self.0.upgrade() {
            tracing::info!(peer = %peer.name, incarnation = peer.incarnation, "node up");
            *lock(&net.counters.peer(&peer.name).connected_since) = Some(SystemTime::now());
            if let Some(k) = lock(&net.known).get_mut(&peer.name) {
                k.down = false;
            }
            metrics::counter!("conc_node_up_total").increment(1);
            let _ = net.events.send(NodeEvent::Up {
                name: peer.name.clone(),
                incarnation: peer.incarnation,
            });
        }
    }

    fn peer_down(&self, peer: &NodeIdentity, reason: DownReason) {
        if let Some(net) = self.0.upgrade() {
            tracing::info!(peer = %peer.name, %reason, "node down");
            net.node_down(peer, reason);
        }
    }

    fn undeliverable(
        &self,
        peer: &str,
        frames: usize,
        call_refs: Option<&[u64]>,
        reason: DownReason,
    ) {
        let Some(net) = self.0.upgrade() else {
            return;
        };
        tracing::warn!(peer, frames, %reason, "messages undeliverable");
        if frames > 0 {
            net.counters
                .dead_letter(peer, "no connection", frames as u64);
        }
        let failure = CallFailure::Remote(RemoteError::Connection {
            peer: peer.to_string(),
            reason,
        });
        let c = net.canon(peer);
        match call_refs {
            // The requests known to be lost were never delivered; other calls reached the
            // peer, and fail with no-connection below, as its node is lost.
            Some(refs) => {
                for id in refs {
                    net.end_call(*id);
                    net.rt.node_side().fail_call(*id, failure.clone());
                }
            }
            // Any call waiting on the peer may have had its request among the lost frames.
            None => net.fail_calls(&net.names_of(&c), None, failure),
        }
        // A peer that cannot be reached is down: whatever waits on it learns so now.
        net.node_down(
            &NodeIdentity {
                name: c,
                incarnation: 0,
            },
            reason,
        );
    }

    fn rejected(&self, remote: &str, reason: &str) {
        if let Some(net) = self.0.upgrade() {
            tracing::warn!(%remote, %reason, "peer refused");
            net.counters.rejected(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_knows_the_few_spellings_of_itself() {
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let lan: SocketAddr = "10.1.2.3:9000".parse().unwrap();
        for name in ["localhost:9000", "127.0.0.1:9000"] {
            assert!(names_bound(name, lo), "{name}");
        }
        for name in [
            "localhost:9000",
            "127.0.0.1:9000",
            "[::1]:9000",
            "0.0.0.0:9000",
        ] {
            assert!(names_bound(name, any), "{name}");
        }
        assert!(names_bound("10.1.2.3:9000", lan));
        // Other ports, other addresses, other spellings: not this node (or not recognised).
        for (name, bound) in [
            ("localhost:9001", lo),
            ("localhost:09000", lo),
            ("LOCALHOST:9000", lo),
            ("127.0.0.2:9000", lo),
            ("127.1.2.3:9000", any),
            ("[[::1]]:9000", any),
            ("[0:0:0:0:0:0:0:1]:9000", any),
            ("::1:9000", any),
            ("localhost:9000", lan),
            ("127.0.0.1:9000", lan),
            ("10.1.2.3", lan),
        ] {
            assert!(!names_bound(name, bound), "{name} for {bound}");
        }
    }
}
