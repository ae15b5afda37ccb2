//! What the transports call: frames, proven identities, peers up and down, losses.
//!
//! Frames arrive one call each ([`Inbound::frame`]); a message frame is the hot path. What a
//! stream of them needs again and again is remembered between calls ([`Recent`]): the
//! counters of the peer they come from (otherwise a lock and a hash of its name per frame)
//! and the local processes they were delivered to (otherwise a registry lookup per frame, see
//! [`DeliveryCache`]). A message that is delivered needs neither the node's tables nor a
//! strong reference to the node: only the runtime, the counters and that cache.

use std::sync::TryLockError;

use conc_core::node_side::DeliveryCache;

use super::*;

/// What the transport calls; holds the node weakly (the node owns the transport).
pub(crate) struct NetInbound {
    net: Weak<Net>,
    /// The node's runtime (which holds the node only weakly, through its hook).
    rt: Runtime,
    /// The node's counters.
    counters: Arc<Counters>,
    /// What the last frames needed; a frame finding it taken by another connection's frame
    /// does without it.
    recent: Mutex<Recent>,
}

/// What recent frames needed, kept between frames (see the module docs).
#[derive(Default)]
struct Recent {
    /// The counters of the peer the last counted frame came from.
    peer: Option<RecentPeer>,
    /// The processes recent messages were delivered to.
    targets: DeliveryCache,
}

/// A peer's counters, as fetched when [`Counters::generation`] had the value kept here.
struct RecentPeer {
    name: String,
    generation: u64,
    counters: Arc<PeerCounters>,
}

impl Recent {
    /// The counters of `peer`: those kept, if they are `peer`'s and none were removed since;
    /// else fetched from `all` (and kept).
    fn counters_of(&mut self, all: &Counters, peer: &str) -> &PeerCounters {
        let generation = all.generation.load(Ordering::Acquire);
        let fresh = self
            .peer
            .as_ref()
            .is_some_and(|r| r.generation == generation && r.name == peer);
        if !fresh {
            self.peer = None;
        }
        &self
            .peer
            .get_or_insert_with(|| RecentPeer {
                name: peer.to_string(),
                generation,
                counters: all.peer(peer),
            })
            .counters
    }
}

/// Counts one message or reply frame of `wire_len` bytes received.
fn count_in(c: &PeerCounters, wire_len: usize) {
    c.msgs_in.fetch_add(1, Ordering::Relaxed);
    c.bytes_in.fetch_add(wire_len as u64, Ordering::Relaxed);
    c.metrics.msgs_in.increment(1);
    c.metrics.bytes_in.increment(wire_len as u64);
}

impl NetInbound {
    pub(crate) fn new(net: &Arc<Net>) -> NetInbound {
        NetInbound {
            net: Arc::downgrade(net),
            rt: net.rt.clone(),
            counters: net.counters.clone(),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// The cache of recent frames, unless another frame holds it now.
    fn recent(&self) -> Option<MutexGuard<'_, Recent>> {
        match self.recent.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl Inbound for NetInbound {
    fn frame(
        &self,
        from: &NodeIdentity,
        frame: Frame<'_>,
        wire_len: usize,
        back: &dyn Route,
        may_wait: bool,
    ) -> Option<BoxFuture<'static, ()>> {
        // The node is gone (the transport outlived it for a moment): nothing is delivered.
        if self.net.strong_count() == 0 {
            return None;
        }
        // Counted as the sender counts its out: messages and replies, whole frames on the
        // wire. A frame offered again after waiting for room is counted once.
        let counted = may_wait && matches!(frame, Frame::Send { .. } | Frame::Reply { .. });
        let Some(mut recent) = self.recent() else {
            if counted {
                count_in(&self.counters.peer(&from.name), wire_len);
            }
            return self.net.upgrade()?.handle(from, frame, back, may_wait);
        };
        if counted {
            count_in(recent.counters_of(&self.counters, &from.name), wire_len);
        }
        let Frame::Send {
            target,
            tag,
            call_ref,
            body,
            trace,
        } = frame
        else {
            drop(recent);
            return self.net.upgrade()?.handle(from, frame, back, may_wait);
        };
        let span = trace.as_ref().and_then(crate::trace::recv_span);
        let res = self.rt.node_side().deliver_body_cached(
            &mut recent.targets,
            &target,
            tag,
            body,
            |deliver| bin::with_deserializer(body, |de| deliver(de)),
            span,
        );
        drop(recent);
        match res {
            Ok(()) => None,
            Err(DeliverError::MailboxFull) if may_wait => Some(self.rt.node_side().room(&target)),
            Err(e) => {
                self.net
                    .upgrade()?
                    .refused(from, &target, call_ref, back, &e);
                None
            }
        }
    }

    fn admit(&self, peer: &NodeIdentity) -> bool {
        self.net
            .upgrade()
            .is_some_and(|net| net.make_room(&peer.name))
    }

    fn peer_proven(&self, proof: Proven<'_>) -> bool {
        self.net.upgrade().is_none_or(|net| net.proven(proof))
    }

    fn peer_up(&self, peer: &NodeIdentity) {
        if let Some(net) = self.net.upgrade() {
            net.report_up(peer);
        }
    }

    fn peer_down(&self, peer: &NodeIdentity, reason: DownReason) {
        if let Some(net) = self.net.upgrade() {
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
        let Some(net) = self.net.upgrade() else {
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
        if let Some(net) = self.net.upgrade() {
            tracing::warn!(%remote, %reason, "peer refused");
            net.counters.rejected(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters kept between frames are those a snapshot reads: after the peer was
    /// forgotten (its counters dropped from the map), the next frame's count lands in the new
    /// counters, not in the forgotten ones.
    #[test]
    fn kept_counters_follow_a_forgotten_peer() {
        let all = Counters::default();
        let mut recent = Recent::default();
        count_in(recent.counters_of(&all, "a:1"), 10);
        count_in(recent.counters_of(&all, "a:1"), 10);
        let a = all.get("a:1").unwrap();
        assert_eq!(a.msgs_in.load(Ordering::Relaxed), 2);
        assert_eq!(a.bytes_in.load(Ordering::Relaxed), 20);

        // Another peer in between, then the first again: each counted under its own name.
        count_in(recent.counters_of(&all, "b:2"), 5);
        count_in(recent.counters_of(&all, "a:1"), 10);
        assert_eq!(a.msgs_in.load(Ordering::Relaxed), 3);
        assert_eq!(all.get("b:2").unwrap().msgs_in.load(Ordering::Relaxed), 1);

        all.forget(&["a:1".to_string()]);
        assert!(all.get("a:1").is_none());
        count_in(recent.counters_of(&all, "a:1"), 7);
        let again = all.get("a:1").unwrap();
        assert!(!Arc::ptr_eq(&a, &again));
        assert_eq!(again.msgs_in.load(Ordering::Relaxed), 1);
        assert_eq!(again.bytes_in.load(Ordering::Relaxed), 7);
        assert_eq!(
            a.msgs_in.load(Ordering::Relaxed),
            3,
            "the forgotten ones stay as they were"
        );
    }
}
