//! What the transports call: frames, proven identities, peers up and down, losses.

use super::*;

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
            net.report_up(peer);
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
