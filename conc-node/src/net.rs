//! The node's side of the network: the hook installed into the runtime, the sink per peer that
//! encodes messages into frames, and the handler of frames from peers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::SystemTime;

use conc_core::{
    BoxFuture, CallFailure, DeliverError, DownFn, ExitReason, MonitorRef, NodeHook, ProcessId,
    RemoteError, RemoteSink, ReplyRequest, Runtime, SendRequest, Target,
};
use conc_wire::frame::{self, ErrorCode, Frame};
use conc_wire::{FrameMeta, Inbound, Link, LinkError, NodeIdentity, Transport, bin};

use crate::stats::{Counters, PeerCounters};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Calls to a peer that are waiting for replies are remembered so that they fail at once when
/// the peer is lost. Ended calls are pruned once a peer's set grows past this.
const PRUNE_PENDING_AT: usize = 4096;

pub(crate) struct Net {
    pub(crate) rt: Runtime,
    pub(crate) name: Arc<str>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) counters: Counters,
    pub(crate) max_frame: usize,
    /// How many peers the node keeps state for ([`conc_wire::Limits::max_peers`]).
    max_peers: usize,
    pub(crate) me: Weak<Net>,
    sinks: Mutex<HashMap<String, Arc<PeerSink>>>,
    pending_calls: Mutex<HashMap<String, HashSet<u64>>>,
    /// Monitors this node holds on processes of peers: (peer, monitor id) → callback.
    watching: Mutex<HashMap<(String, u64), DownFn>>,
    /// Monitors peers hold on processes of this node.
    watched: Mutex<HashMap<(String, u64), (ProcessId, MonitorRef)>>,
    /// Links between local processes and processes of peers.
    links: Mutex<Vec<RemoteLink>>,
    /// Node up/down events for subscribers.
    pub(crate) events: tokio::sync::broadcast::Sender<NodeEvent>,
}

/// A link between a local process and a process of a peer.
struct RemoteLink {
    peer: String,
    local_pid: ProcessId,
    remote: ProcessId,
    mref: MonitorRef,
}

/// A node came up or went down (see [`crate::Node::node_events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A connection to the node was established and authenticated.
    Up {
        /// The node's name.
        name: String,
        /// Its incarnation.
        incarnation: u64,
    },
    /// The node was lost (connection closed, silent beyond the heartbeat bound, a failed
    /// delivery or probe, or it said goodbye).
    Down {
        /// The node's name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl Net {
    pub(crate) fn new(
        rt: Runtime,
        name: Arc<str>,
        transport: Arc<dyn Transport>,
        max_frame: usize,
        max_peers: usize,
    ) -> Arc<Net> {
        Arc::new_cyclic(|me| Net {
            rt,
            name,
            transport,
            counters: Counters::default(),
            max_frame,
            max_peers: max_peers.max(1),
            me: me.clone(),
            sinks: Mutex::new(HashMap::new()),
            pending_calls: Mutex::new(HashMap::new()),
            watching: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashMap::new()),
            links: Mutex::new(Vec::new()),
            events: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Bytes and frames queued for `peer` and not yet written.
    pub(crate) fn queued(&self, peer: &str) -> (u64, u64) {
        lock(&self.sinks)
            .get(peer)
            .and_then(|s| s.link.as_ref().map(|l| l.queued()))
            .map(|(b, f)| (b as u64, f as u64))
            .unwrap_or((0, 0))
    }

    pub(crate) fn sink(&self, peer: &str) -> Arc<PeerSink> {
        if let Some(s) = lock(&self.sinks).get(peer) {
            return s.clone();
        }
        if !self.make_room(peer) {
            tracing::warn!(peer, "too many peer nodes: not reaching another");
            self.counters.rejected("too many peer nodes");
            // A sink that refuses everything, kept nowhere.
            return Arc::new(PeerSink {
                net: self.me.clone(),
                peer: peer.to_string(),
                link: None,
                refused: true,
                counters: Arc::default(),
                max_frame: self.max_frame,
            });
        }
        let mut sinks = lock(&self.sinks);
        if let Some(s) = sinks.get(peer) {
            return s.clone();
        }
        let link = match self.transport.link(peer) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(peer, error = %e, "no link to peer");
                None
            }
        };
        let s = Arc::new(PeerSink {
            net: self.me.clone(),
            peer: peer.to_string(),
            link,
            refused: false,
            counters: self.counters.peer(peer),
            max_frame: self.max_frame,
        });
        sinks.insert(peer.to_string(), s.clone());
        s
    }

    /// How many peers the node keeps state for: those with a sink or counters.
    fn peer_count(&self) -> usize {
        let sinks = lock(&self.sinks);
        let counters = lock(&self.counters.peers);
        sinks.len() + counters.keys().filter(|k| !sinks.contains_key(*k)).count()
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
        busy.extend(lock(&self.watching).keys().map(|(p, _)| p.clone()));
        busy.extend(lock(&self.watched).keys().map(|(p, _)| p.clone()));
        busy.extend(lock(&self.links).iter().map(|l| l.peer.clone()));
        let forgotten: Vec<String> = {
            let mut sinks = lock(&self.sinks);
            let mut counters = lock(&self.counters.peers);
            let mut names: HashSet<String> = sinks.keys().cloned().collect();
            names.extend(counters.keys().cloned());
            let idle: Vec<String> = names
                .into_iter()
                .filter(|name| {
                    !busy.contains(name)
                        && sinks.get(name).is_none_or(|s| {
                            // The map's is the only reference, and nothing is queued.
                            Arc::strong_count(s) == 1
                                && s.link.as_ref().is_none_or(|l| l.queued() == (0, 0))
                        })
                        && counters
                            .get(name)
                            .is_none_or(|c| lock(&c.connected_since).is_none())
                })
                .collect();
            for name in &idle {
                sinks.remove(name);
                counters.remove(name);
            }
            idle
        };
        if !forgotten.is_empty() {
            tracing::debug!(n = forgotten.len(), "forgot idle peers");
            let mut pending = lock(&self.pending_calls);
            for name in &forgotten {
                pending.remove(name);
            }
        }
        for name in &forgotten {
            self.transport.forget(name);
        }
    }

    fn note_call(&self, peer: &str, reply_id: u64) {
        let mut pending = lock(&self.pending_calls);
        let set = pending.entry(peer.to_string()).or_default();
        if set.len() >= PRUNE_PENDING_AT {
            set.retain(|id| self.rt.is_call_waiting(*id));
        }
        set.insert(reply_id);
    }

    /// Fails every call waiting on `peer`.
    fn fail_calls(&self, peer: &str, failure: CallFailure) {
        let ids = lock(&self.pending_calls).remove(peer).unwrap_or_default();
        for id in ids {
            self.rt.fail_call(id, failure.clone());
        }
    }

    fn send_error(&self, back: &dyn Link, call_ref: Option<u64>, err: &DeliverError) {
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
        if let Some(link) = &sink.link {
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

    fn handle(
        &self,
        from: &NodeIdentity,
        frame: Frame<'_>,
        back: &dyn Link,
        may_wait: bool,
    ) -> Option<BoxFuture<'static, ()>> {
        match frame {
            Frame::Send {
                target,
                tag,
                call_ref,
                body,
            } => {
                let res = self.rt.deliver_body(&target, tag, body, |deliver| {
                    bin::with_deserializer(body, |de| deliver(de))
                });
                if matches!(res, Err(DeliverError::MailboxFull)) && may_wait {
                    return Some(self.rt.room(&target));
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
                let res =
                    bin::with_deserializer(body, |de| self.rt.deliver_reply(reply_id, tag, de));
                if let Some(set) = lock(&self.pending_calls).get_mut(&from.name) {
                    set.remove(&reply_id);
                }
                match res {
                    Ok(()) => {}
                    Err(DeliverError::NoCaller) => {
                        self.counters
                            .late_replies
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(reply_id, "late reply dropped");
                    }
                    Err(e) => {
                        tracing::warn!(peer = %from.name, error = %e, "reply refused");
                        self.counters.dead_letter(
                            &from.name,
                            &format!("reply refused: {}", category(&e)),
                            1,
                        );
                        self.rt.fail_call(
                            reply_id,
                            CallFailure::Remote(RemoteError::Refused {
                                peer: from.name.clone(),
                                detail: format!("reply could not be decoded: {e}"),
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
                    self.rt.fail_call(reply_id, failure);
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
                    self.rt.fail_call(
                        id,
                        CallFailure::Remote(RemoteError::Refused {
                            peer: from.name.clone(),
                            detail,
                        }),
                    );
                }
            }
            Frame::Monitor { target, monitor } => {
                let peer = from.name.clone();
                let pid_cell: Arc<OnceLock<ProcessId>> = Arc::new(OnceLock::new());
                let cell = pid_cell.clone();
                let weak = self.me.clone();
                let fallback = match &target {
                    Target::Id(p) => *p,
                    Target::Name(_) => ProcessId {
                        incarnation: 0,
                        id: 0,
                    },
                };
                let fire: DownFn = Box::new(move |reason| {
                    if let Some(net) = weak.upgrade() {
                        lock(&net.watched).remove(&(peer.clone(), monitor));
                        let pid = cell.get().copied().unwrap_or(fallback);
                        net.send_down(&peer, monitor, pid, &reason);
                    }
                });
                if let Some((mref, pid)) = self.rt.monitor_target(&target, fire) {
                    let _ = pid_cell.set(pid);
                    lock(&self.watched).insert((from.name.clone(), monitor), (pid, mref));
                }
            }
            Frame::Demonitor { monitor, .. } => {
                if let Some((pid, mref)) = lock(&self.watched).remove(&(from.name.clone(), monitor))
                {
                    self.rt.demonitor_target(pid, mref);
                }
            }
            Frame::Down {
                monitor, reason, ..
            } => {
                let fire = lock(&self.watching).remove(&(from.name.clone(), monitor));
                if let Some(fire) = fire {
                    fire(reason);
                }
            }

            Frame::Link {
                target,
                from: remote,
            } => self.add_link(&from.name, target, remote),
            Frame::Unlink {
                target,
                from: remote,
            } => self.forget_link(&from.name, &target, remote),
            Frame::LinkExit {
                target,
                from: remote,
                reason,
            } => {
                self.forget_link(&from.name, &target, remote);
                self.rt.exit_signal(&target, remote, reason);
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

    /// Records a link between a local process and a process of `peer`, with a watcher that
    /// sends the local process's exit to the peer.
    fn add_link(&self, peer: &str, local: Target, remote: ProcessId) {
        let weak = self.me.clone();
        let p = peer.to_string();
        let cell: Arc<OnceLock<ProcessId>> = Arc::new(OnceLock::new());
        let local_cell = cell.clone();
        let fire: DownFn = Box::new(move |reason| {
            let Some(net) = weak.upgrade() else {
                return;
            };
            let local_pid = local_cell.get().copied().unwrap_or(ProcessId {
                incarnation: 0,
                id: 0,
            });
            lock(&net.links)
                .retain(|l| !(l.peer == p && l.remote == remote && l.local_pid == local_pid));
            let sink = net.sink(&p);
            if let Some(link) = &sink.link {
                let target = Target::Id(remote);
                let _ = link.send(
                    &mut |out: &mut Vec<u8>| {
                        frame::encode_link_exit(out, &target, local_pid, &reason)
                    },
                    FrameMeta {
                        after_all: true,
                        ..FrameMeta::default()
                    },
                );
            }
        });
        // The local pid is known only once resolved; the watcher may fire at once (no such
        // process), so resolve names first.
        let resolved = match &local {
            Target::Id(id) => Some(*id),
            Target::Name(_) => None,
        };
        if let Some(id) = resolved {
            let _ = cell.set(id);
        }
        if let Some((mref, local_pid)) = self.rt.monitor_target(&local, fire) {
            let _ = cell.set(local_pid);
            lock(&self.links).push(RemoteLink {
                peer: peer.to_string(),
                local_pid,
                remote,
                mref,
            });
        }
    }

    fn forget_link(&self, peer: &str, target: &Target, remote: ProcessId) {
        let mut links = lock(&self.links);
        let mut removed = Vec::new();
        links.retain(|l| {
            let hit = l.peer == peer
                && l.remote == remote
                && match target {
                    Target::Id(id) => l.local_pid == *id,
                    Target::Name(_) => true,
                };
            if hit {
                removed.push((l.local_pid, l.mref));
            }
            !hit
        });
        drop(links);
        for (pid, mref) in removed {
            self.rt.demonitor_target(pid, mref);
        }
    }

    /// The peer is lost: fail its calls, fire monitors and links with no-connection, and tell
    /// subscribers.
    pub(crate) fn node_down(&self, peer: &NodeIdentity, reason: &str) {
        if let Some(c) = self.counters.get(&peer.name) {
            *lock(&c.connected_since) = None;
        }
        self.fail_calls(&peer.name, CallFailure::Exited(ExitReason::NoConnection));
        let fired: Vec<DownFn> = {
            let mut w = lock(&self.watching);
            let keys: Vec<_> = w.keys().filter(|(p, _)| *p == peer.name).cloned().collect();
            keys.into_iter().filter_map(|k| w.remove(&k)).collect()
        };
        for f in fired {
            f(ExitReason::NoConnection);
        }
        let dropped: Vec<(ProcessId, MonitorRef)> = {
            let mut w = lock(&self.watched);
            let keys: Vec<_> = w.keys().filter(|(p, _)| *p == peer.name).cloned().collect();
            keys.into_iter().filter_map(|k| w.remove(&k)).collect()
        };
        for (pid, mref) in dropped {
            self.rt.demonitor_target(pid, mref);
        }
        let links: Vec<RemoteLink> = {
            let mut l = lock(&self.links);
            let (gone, keep): (Vec<_>, Vec<_>) = l.drain(..).partition(|x| x.peer == peer.name);
            *l = keep;
            gone
        };
        for l in links {
            self.rt.demonitor_target(l.local_pid, l.mref);
            self.rt
                .exit_signal(&Target::Id(l.local_pid), l.remote, ExitReason::NoConnection);
        }
        let _ = self.events.send(NodeEvent::Down {
            name: peer.name.clone(),
            reason: reason.to_string(),
        });
    }

    /// Whether anything on this node waits on `peer` (calls, monitors, links): per-message
    /// TCP probes only such peers.
    fn depends_on(&self, peer: &str) -> bool {
        lock(&self.pending_calls)
            .get(peer)
            .is_some_and(|s| s.iter().any(|id| self.rt.is_call_waiting(*id)))
            || lock(&self.watching).keys().any(|(p, _)| p == peer)
            || lock(&self.links).iter().any(|l| l.peer == peer)
    }

    /// Per-message TCP has no connection whose loss tells that a peer is down: every
    /// `interval`, peers that something here depends on are sent a ping on a connection of
    /// its own; a failed probe (connect refused, handshake or answer timing out) declares the
    /// peer down, as a lost connection does on the pooled transports.
    pub(crate) fn spawn_prober(self: &Arc<Self>, interval: std::time::Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(net) = weak.upgrade() else {
                    return;
                };
                if net.rt.is_shutting_down() {
                    return;
                }
                let peers: Vec<Arc<PeerSink>> = lock(&net.sinks).values().cloned().collect();
                for sink in peers {
                    if !net.depends_on(&sink.peer) {
                        continue;
                    }
                    if let Some(link) = &sink.link {
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

    fn remote_sink(&self, node: &str) -> Arc<dyn RemoteSink> {
        match self.0.upgrade() {
            Some(net) => net.sink(node),
            None => Arc::new(PeerSink {
                net: Weak::new(),
                peer: node.to_string(),
                link: None,
                refused: false,
                counters: Arc::default(),
                max_frame: 0,
            }),
        }
    }
}

/// The way to one peer, shared by every pid and reply handle that points there.
pub(crate) struct PeerSink {
    net: Weak<Net>,
    pub(crate) peer: String,
    pub(crate) link: Option<Arc<dyn Link>>,
    /// Refused for want of room (see [`Net::make_room`]): every send fails.
    refused: bool,
    counters: Arc<PeerCounters>,
    max_frame: usize,
}

impl PeerSink {
    /// The link, or why there is none.
    fn link(&self) -> Result<&Arc<dyn Link>, RemoteError> {
        match &self.link {
            Some(link) => Ok(link),
            None if self.refused => Err(RemoteError::TooManyPeers(self.peer.clone())),
            None => Err(RemoteError::ShuttingDown),
        }
    }

    fn map_err(&self, e: LinkError) -> RemoteError {
        match e {
            LinkError::Busy => RemoteError::PeerBusy(self.peer.clone()),
            LinkError::Unreachable(detail) => RemoteError::Connection {
                peer: self.peer.clone(),
                detail,
            },
            LinkError::Shutdown => RemoteError::ShuttingDown,
            LinkError::Frame(e) => RemoteError::Encode(e.to_string()),
        }
    }

    fn count_out(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.msgs_out.fetch_add(1, Relaxed);
        self.counters.bytes_out.fetch_add(bytes as u64, Relaxed);
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
        let link = self.link()?;
        let net = self.net.upgrade();
        // Remember the call before the frame can fail on another thread, so the failure
        // finds it.
        if let (Some(id), Some(net)) = (req.call_ref, &net) {
            net.note_call(&self.peer, id);
        }
        let mut size = 0;
        let max = self.max_frame;
        let res = link.send(
            &mut |out: &mut Vec<u8>| {
                let before = out.len();
                frame::encode_send(out, &req, max)?;
                size = out.len() - before;
                Ok(())
            },
            FrameMeta {
                call_ref: req.call_ref,
                lane: lane_of(req.target),
                after_all: false,
            },
        );
        if let Err(e) = res {
            if let (Some(id), Some(net)) = (req.call_ref, &net)
                && let Some(set) = lock(&net.pending_calls).get_mut(&self.peer)
            {
                set.remove(&id);
            }
            return Err(self.map_err(e));
        }
        self.count_out(size);
        Ok(())
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        match &self.link {
            Some(link) => link.ready(),
            None => Box::pin(async {}),
        }
    }

    fn reply(&self, req: ReplyRequest<'_>) -> Result<(), RemoteError> {
        let link = self.link()?;
        let mut size = 0;
        let max = self.max_frame;
        link.send(
            &mut |out: &mut Vec<u8>| {
                let before = out.len();
                frame::encode_reply(out, &req, max)?;
                size = out.len() - before;
                Ok(())
            },
            FrameMeta {
                call_ref: None,
                lane: req.reply_id,
                after_all: false,
            },
        )
        .map_err(|e| self.map_err(e))?;
        self.count_out(size);
        Ok(())
    }

    fn reply_dropped(&self, incarnation: u64, reply_id: u64, panicking: bool) {
        if let Some(link) = &self.link {
            let _ = link.send(
                &mut |out: &mut Vec<u8>| {
                    frame::encode_reply_dropped(out, incarnation, reply_id, panicking)
                },
                FrameMeta::default(),
            );
        }
    }

    fn monitor(&self, target: &Target, monitor: u64, fire: DownFn) {
        let (Some(net), Some(link)) = (self.net.upgrade(), &self.link) else {
            fire(ExitReason::NoConnection);
            return;
        };
        lock(&net.watching).insert((self.peer.clone(), monitor), fire);
        let sent = link.send(
            &mut |out: &mut Vec<u8>| frame::encode_monitor(out, target, monitor, false),
            // On the target's lane: messages sent to it after the monitor do not overtake it.
            FrameMeta {
                lane: lane_of(target),
                ..FrameMeta::default()
            },
        );
        if sent.is_err() {
            let fire = lock(&net.watching).remove(&(self.peer.clone(), monitor));
            if let Some(fire) = fire {
                fire(ExitReason::NoConnection);
            }
        }
    }

    fn link(&self, target: &Target, from: ProcessId, link: bool) {
        let Some(net) = self.net.upgrade() else {
            return;
        };
        let sent = match &self.link {
            Some(l) => l
                .send(
                    &mut |out: &mut Vec<u8>| frame::encode_link(out, target, from, !link),
                    FrameMeta {
                        lane: lane_of(target),
                        ..FrameMeta::default()
                    },
                )
                .is_ok(),
            None => false,
        };
        let Target::Id(remote) = target else {
            // Links need a process identity; a name is resolved by the peer, which reports
            // the exit of whatever process held it under the id it had.
            if link && !sent {
                net.rt
                    .exit_signal(&Target::Id(from), from, ExitReason::NoConnection);
            }
            return;
        };
        if link {
            if sent {
                net.add_link(&self.peer, Target::Id(from), *remote);
            } else {
                net.rt
                    .exit_signal(&Target::Id(from), *remote, ExitReason::NoConnection);
            }
        } else {
            net.forget_link(&self.peer, &Target::Id(from), *remote);
        }
    }

    fn demonitor(&self, target: &Target, monitor: u64) {
        let Some(net) = self.net.upgrade() else {
            return;
        };
        if lock(&net.watching)
            .remove(&(self.peer.clone(), monitor))
            .is_some()
            && let Some(link) = &self.link
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
        back: &dyn Link,
        may_wait: bool,
    ) -> Option<BoxFuture<'static, ()>> {
        let net = self.0.upgrade()?;
        let c = net.counters.peer(&from.name);
        // A frame offered again after waiting for room is counted once.
        if may_wait {
            c.msgs_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Frame::Send { body, .. } | Frame::Reply { body, .. } = &frame {
                c.bytes_in
                    .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        net.handle(from, frame, back, may_wait)
    }

    fn admit(&self, peer: &NodeIdentity) -> bool {
        self.0
            .upgrade()
            .is_some_and(|net| net.make_room(&peer.name))
    }

    fn peer_up(&self, peer: &NodeIdentity) {
        if let Some(net) = self.0.upgrade() {
            tracing::info!(peer = %peer.name, incarnation = peer.incarnation, "node up");
            *lock(&net.counters.peer(&peer.name).connected_since) = Some(SystemTime::now());
            let _ = net.events.send(NodeEvent::Up {
                name: peer.name.clone(),
                incarnation: peer.incarnation,
            });
        }
    }

    fn peer_down(&self, peer: &NodeIdentity, reason: &str) {
        if let Some(net) = self.0.upgrade() {
            tracing::info!(peer = %peer.name, %reason, "node down");
            net.node_down(peer, reason);
        }
    }

    fn undeliverable(&self, peer: &str, frames: usize, call_refs: &[u64], error: &str) {
        let Some(net) = self.0.upgrade() else {
            return;
        };
        tracing::warn!(peer, frames, %error, "messages undeliverable");
        if frames > 0 {
            net.counters
                .dead_letter(peer, "no connection", frames as u64);
        }
        let failure = CallFailure::Remote(RemoteError::Connection {
            peer: peer.to_string(),
            detail: error.to_string(),
        });
        for id in call_refs {
            net.rt.fail_call(*id, failure.clone());
        }
        // A peer that cannot be reached is down: whatever waits on it learns so now.
        net.fail_calls(peer, failure);
        net.node_down(
            &NodeIdentity {
                name: peer.to_string(),
                incarnation: 0,
            },
            error,
        );
    }

    fn rejected(&self, remote: &str, reason: &str) {
        if let Some(net) = self.0.upgrade() {
            tracing::warn!(%remote, %reason, "peer refused");
            net.counters.rejected(reason);
        }
    }
}
