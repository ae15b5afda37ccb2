//! The way from local pids and reply handles to one peer (`PeerSink`), to this node itself
//! (`Loopback`), and the dial policy.

use super::*;

/// The way from this node to itself, for pids and reply handles that name this node through
/// an alias (or a name not registered yet): each frame is handled here at once, as if it had
/// come from a peer, without touching the network.
pub(super) struct Loopback {
    pub(super) net: Weak<Net>,
    pub(super) name: String,
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
pub(super) enum Refused {
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
    pub(super) net: Weak<Net>,
    /// The node's shutdown flag ([`Net::begin_shutdown`]), and its runtime (`None`: no node),
    /// so that a send checks that the node is open without upgrading `net`: an upgrade and its
    /// drop were two contended atomic operations per message.
    pub(super) closing: Arc<AtomicBool>,
    pub(super) rt: Option<Runtime>,
    pub(crate) peer: String,
    pub(crate) route: Option<Arc<dyn Route>>,
    /// Refused (for want of room, see [`Net::make_room`], or by the dial policy): every send
    /// fails.
    pub(super) refused: Option<Refused>,
    pub(super) counters: Arc<PeerCounters>,
    pub(super) max_frame: usize,
}

impl PeerSink {
    /// The link, or why there is none (or why it may not be used).
    pub(super) fn route(&self) -> Result<&Arc<dyn Route>, RemoteError> {
        // What `Net::is_closing` reads, and whether the node is still there, with plain loads.
        let closing = self.net.strong_count() == 0
            || self.closing.load(Ordering::Acquire)
            || self.rt.as_ref().is_none_or(|rt| rt.is_shutting_down());
        if closing {
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

    /// What a route's refusal of a frame means to the caller.
    pub(super) fn route_error(&self, e: RouteError) -> RemoteError {
        self.map_err(e)
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

    fn send(&self, req: SendRequest<'_>) -> Result<usize, RemoteError> {
        let link = self.route()?;
        // Only a call needs the node itself (its table of pending calls).
        let net = if req.call_ref.is_some() {
            Some(self.net.upgrade().ok_or(RemoteError::ShuttingDown)?)
        } else {
            None
        };
        if req.call_ref.is_some() && net.as_ref().is_some_and(|n| n.replies_unreachable()) {
            return Err(RemoteError::NoListener);
        }
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
        // The sender's trace context, only for a peer that reads it.
        let trace = if self.counters.capabilities.load(Ordering::Relaxed) & TRACE_CONTEXT != 0 {
            crate::trace::current()
        } else {
            None
        };
        let res = link.send(
            &mut |out: &mut Vec<u8>| {
                let before = out.len();
                match &trace {
                    Some(tp) => frame::encode_send_traced(out, &req, tp, max)?,
                    None => frame::encode_send(out, &req, max)?,
                }
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
        Ok(size)
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

    fn exit(&self, target: &Target, from: ProcessId, reason: ExitReason) {
        let Ok(link) = self.route() else { return };
        // On the target's lane: after the messages sent to it before.
        let meta = FrameMeta {
            lane: lane_of(target),
            ..FrameMeta::default()
        };
        if self.counters.capabilities.load(Ordering::Relaxed) & EXIT_SIGNAL != 0 {
            let _ = link.send(
                &mut |out: &mut Vec<u8>| frame::encode_exit(out, target, from, &reason),
                meta,
            );
        } else if !reason.is_normal() {
            // A peer that takes no exit signals (or whose capabilities are not known yet) can
            // only be asked to kill.
            tracing::debug!(peer = %self.peer, ?target, %reason, "peer takes no exit signals: sending a kill");
            let _ = link.send(
                &mut |out: &mut Vec<u8>| frame::encode_kill(out, target),
                meta,
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
