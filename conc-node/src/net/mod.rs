//! The node's side of the network: the hook installed into the runtime, the sink per peer that
//! encodes messages into frames, and the handler of frames from peers. One job a file:
//! `mod.rs` the table of peers, pending calls and frame dispatch; [`identity`] who a peer is
//! (proven name, aliases, restarts, losses); [`links`] links with processes of peers; [`sink`]
//! the way to a peer (and to this node itself) and the dial policy; [`inbound`] what the
//! transports call.
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::SystemTime;

use conc_core::{
    BoxFuture, CallFailure, DeliverError, DownFn, ExitReason, MonitorRef, NodeHook, ProcessId,
    Refusal, RemoteError, RemoteSink, ReplyFailure, ReplyRequest, Runtime, SendRequest, Target,
};
use conc_wire::frame::{self, ErrorCode, Frame, FrameError};
use conc_wire::handshake::{EXIT_SIGNAL, TRACE_CONTEXT};
use conc_wire::{
    DownReason, FrameMeta, Inbound, NodeIdentity, Proven, Route, RouteError, Transport, bin,
};

use crate::stats::{Counters, PeerCounters};

mod gauges;
mod identity;
mod inbound;
mod links;
mod sink;

pub(crate) use inbound::NetInbound;
use links::RemoteLink;
pub use sink::DialPolicy;
use sink::{Loopback, PeerSink, Refused};

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
    /// Connectionless transports (per-message TCP): whether an `Up` event was sent since the
    /// peer was first proven or last seen down.
    up: bool,
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
    /// Shared with the inbound path ([`NetInbound`]), which counts frames without the node.
    pub(crate) counters: Arc<Counters>,
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
    /// Shared with every [`PeerSink`], which checks it per send without upgrading its weak
    /// reference to the node.
    closing: Arc<AtomicBool>,
    /// Node up/down events for subscribers.
    pub(crate) events: tokio::sync::broadcast::Sender<NodeEvent>,
    /// Woken whenever a handshake proves a peer (what [`Net::up_peers`] reads changed):
    /// per-message TCP reports no node-up events, so [`crate::Node::connect`] waits on this.
    pub(crate) proven_changed: tokio::sync::Notify,
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
            counters: Arc::default(),
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
            closing: Arc::new(AtomicBool::new(false)),
            events: tokio::sync::broadcast::channel(1024).0,
            proven_changed: tokio::sync::Notify::new(),
        })
    }

    /// Whether replies to this node's calls cannot reach it: per-message TCP answers on a new
    /// connection to the caller, and this node has no address to connect to.
    pub(crate) fn replies_unreachable(&self) -> bool {
        self.transport.needs_probes()
            && self.local_addr.is_none()
            && self.name.starts_with("client-")
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
                closing: self.closing.clone(),
                rt: Some(self.rt.clone()),
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
                closing: self.closing.clone(),
                rt: Some(self.rt.clone()),
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
                closing: self.closing.clone(),
                rt: Some(self.rt.clone()),
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
            closing: self.closing.clone(),
            rt: Some(self.rt.clone()),
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
        self.counters.forget(&idle);
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
        // The peer's entry is there for every call but its first: no name copied per call.
        let calls = match pending.get_mut(peer) {
            Some(calls) => calls,
            None => pending.entry(peer.to_string()).or_default(),
        };
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

    /// A message from `from` for a local process was refused with `e`: counted as a dead
    /// letter, logged, and the peer told (through `back`) so that a call fails at once.
    fn refused(
        &self,
        from: &NodeIdentity,
        target: &Target,
        call_ref: Option<u64>,
        back: &dyn Route,
        e: &DeliverError,
    ) {
        tracing::warn!(peer = %from.name, ?target, error = %e, "message refused");
        self.counters
            .dead_letter(&from.name, &format!("refused: {}", category(e)), 1);
        self.send_error(back, call_ref, e);
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
                trace,
            } => {
                let span = trace.as_ref().and_then(crate::trace::recv_span);
                let res = self.rt.node_side().deliver_body_traced(
                    &target,
                    tag,
                    body,
                    |deliver| bin::with_deserializer(body, |de| deliver(de)),
                    span,
                );
                if matches!(res, Err(DeliverError::MailboxFull)) && may_wait {
                    return Some(self.rt.node_side().room(&target));
                }
                if let Err(e) = res {
                    self.refused(from, &target, call_ref, back, &e);
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
                // A monitor id the peer already uses replaces that monitor (ids are the peer's
                // references, unique while in use): the old one is taken down first, so it can
                // neither leak nor send a second `Down` under the same id.
                let key = (from.name.clone(), monitor);
                if let Some((pid, mref)) = lock(&self.watched).remove(&key) {
                    tracing::debug!(peer = %from.name, monitor, "monitor id reused");
                    self.rt.node_side().demonitor_target(pid, mref);
                }
                let peer = from.name.clone();
                let weak = self.me.clone();
                // This monitor's own reference, and whether it fired (perhaps before the entry
                // below was made, if the target was exiting).
                let mine = Arc::new((OnceLock::<MonitorRef>::new(), AtomicBool::new(false)));
                let mine_in_fire = mine.clone();
                let fire: DownFn = Box::new(move |reason, pid| {
                    mine_in_fire.1.store(true, Ordering::SeqCst);
                    if let Some(net) = weak.upgrade() {
                        let key = (peer.clone(), monitor);
                        let mut watched = lock(&net.watched);
                        // Only this monitor's own entry (a later one may hold the id now).
                        let own = mine_in_fire.0.get().copied();
                        if own.is_some() && watched.get(&key).map(|(_, m)| *m) == own {
                            watched.remove(&key);
                        }
                        drop(watched);
                        net.send_down(&peer, monitor, pid.unwrap_or(NO_PID), &reason);
                    }
                });
                if let Some((mref, pid)) = self.rt.node_side().monitor_target(&target, fire) {
                    let _ = mine.0.set(mref);
                    let mut watched = lock(&self.watched);
                    watched.insert(key.clone(), (pid, mref));
                    if mine.1.load(Ordering::SeqCst) {
                        watched.remove(&key);
                    }
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
                let holder = self.rt.node_side().local_process_id(&target);
                if let (Some(name), Some(holder)) = (&via, holder)
                    && let Some(link) = &self.sink(&from.name).route
                {
                    // Tell the asking side which process holds the name (through the peer's
                    // queue: per-message TCP answers a frame only with an ack) before the link
                    // is made, so that the holder's exit, if it is exiting now, comes after it
                    // and finds the link.
                    let _ = link.send(
                        &mut |out: &mut Vec<u8>| frame::encode_linked(out, name, remote, holder),
                        FrameMeta {
                            after_all: true,
                            ..FrameMeta::default()
                        },
                    );
                }
                let linked = holder
                    .and_then(|h| self.add_link(&from.name, &Target::Id(h), Some(remote), via));
                if linked.is_none() {
                    // No such process (or name): the asking process gets noproc, as a
                    // link to a dead process does in Erlang (from the holder it was told
                    // of, if any).
                    let from_pid = match (holder, &target) {
                        (Some(h), _) => h,
                        (None, Target::Id(p)) => *p,
                        (None, Target::Name(_)) => NO_PID,
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
            Frame::Exit {
                target,
                from: remote,
                reason,
            } => {
                tracing::debug!(peer = %from.name, ?target, %reason, "exit signal from a peer");
                self.rt.node_side().exit_target(&target, remote, reason);
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
            | Frame::Barrier(_)
            | Frame::Retire(_)
            | Frame::Fragment { .. } => {}
        }
        None
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

    /// Queues a ping for the node reached as `peer`, which makes the transport dial it (and
    /// run the handshake) if it has no connection: what [`crate::Node::connect`] starts each
    /// attempt with. The ping itself is ignored by the peer.
    ///
    /// Errors: the peer may not be dialled ([`RemoteError::DialRefused`],
    /// [`RemoteError::TooManyPeers`]), the node shuts down, or the route refused the frame now
    /// ([`RemoteError::PeerBusy`], or [`RemoteError::Connection`] while a failed connect
    /// backs off).
    pub(crate) fn ping(&self, peer: &str) -> Result<(), RemoteError> {
        let sink = self.sink(peer);
        let route = sink.route()?;
        route
            .send(
                &mut |out: &mut Vec<u8>| {
                    frame::encode_bare(out, frame::kind::PING);
                    Ok(())
                },
                FrameMeta::default(),
            )
            .map_err(|e| sink.route_error(e))
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
                closing: Arc::new(AtomicBool::new(true)),
                rt: None,
                peer: node.to_string(),
                route: None,
                refused: None,
                counters: Arc::default(),
                max_frame: 0,
            }),
        }
    }
}
