//! Gauges sampled by the node: per-peer outbound queue depth and the mailbox length of
//! registered processes.

use super::*;

impl Net {
    /// Sets the gauges `conc_outbound_queue_bytes` / `conc_outbound_queue_frames` (label
    /// `peer`, the proven name) and `conc_mailbox_length` (label `name`) to their values now.
    /// A peer or name seen at the previous sample and gone now is set to 0, so an exporter
    /// does not keep showing a stale value. Recording with no recorder installed does nothing.
    pub(crate) fn sample_gauges(&self) {
        let sinks: Vec<Arc<PeerSink>> = lock(&self.sinks).values().cloned().collect();
        let mut queues: HashMap<String, (u64, u64)> = HashMap::new();
        for sink in sinks {
            let (bytes, frames) = sink
                .route
                .as_ref()
                .map(|r| r.queued())
                .map_or((0, 0), |(b, f)| (b as u64, f as u64));
            let q = queues.entry(self.canon(&sink.peer)).or_default();
            q.0 += bytes;
            q.1 += frames;
        }
        let mailboxes = self.rt.node_side().registered_mailbox_lengths();
        let mut seen = lock(&self.counters.gauged);
        for (peer, (bytes, frames)) in &queues {
            metrics::gauge!("conc_outbound_queue_bytes", "peer" => peer.clone()).set(*bytes as f64);
            metrics::gauge!("conc_outbound_queue_frames", "peer" => peer.clone())
                .set(*frames as f64);
        }
        for (name, len) in &mailboxes {
            metrics::gauge!("conc_mailbox_length", "name" => name.clone()).set(*len as f64);
        }
        for peer in seen.peers.iter().filter(|p| !queues.contains_key(*p)) {
            metrics::gauge!("conc_outbound_queue_bytes", "peer" => peer.clone()).set(0.0);
            metrics::gauge!("conc_outbound_queue_frames", "peer" => peer.clone()).set(0.0);
        }
        for name in seen
            .names
            .iter()
            .filter(|n| !mailboxes.iter().any(|(m, _)| m == *n))
        {
            metrics::gauge!("conc_mailbox_length", "name" => name.clone()).set(0.0);
        }
        seen.peers = queues.into_keys().collect();
        seen.names = mailboxes.into_iter().map(|(n, _)| n).collect();
    }

    /// Samples the gauges every `interval` until the node shuts down.
    pub(crate) fn spawn_gauge_sampler(self: &Arc<Self>, interval: std::time::Duration) {
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
                net.sample_gauges();
            }
        });
    }
}
