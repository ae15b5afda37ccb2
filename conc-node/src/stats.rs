//! Counters and the stats snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Counters of one peer, kept for [`crate::Node::stats`] and mirrored to the `metrics` facade
/// (the handles are registered once per peer, so recording is an atomic add, and nothing when
/// no recorder is installed).
#[derive(Default)]
pub(crate) struct PeerCounters {
    pub(crate) msgs_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) msgs_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) connected_since: Mutex<Option<SystemTime>>,
    pub(crate) dead_letters: Mutex<BTreeMap<String, u64>>,
    pub(crate) metrics: PeerMetrics,
    /// The capability flags the last handshake with the peer agreed on (0 until one has).
    pub(crate) capabilities: AtomicU64,
}

/// The `metrics` handles of one peer (see the crate docs' list of metrics).
pub(crate) struct PeerMetrics {
    pub(crate) msgs_out: metrics::Counter,
    pub(crate) bytes_out: metrics::Counter,
    pub(crate) msgs_in: metrics::Counter,
    pub(crate) bytes_in: metrics::Counter,
}

impl Default for PeerMetrics {
    /// Handles that record nothing (counters of a sink kept nowhere).
    fn default() -> Self {
        PeerMetrics {
            msgs_out: metrics::Counter::noop(),
            bytes_out: metrics::Counter::noop(),
            msgs_in: metrics::Counter::noop(),
            bytes_in: metrics::Counter::noop(),
        }
    }
}

impl PeerMetrics {
    fn for_peer(peer: &str) -> PeerMetrics {
        let labels = [("peer", peer.to_string())];
        PeerMetrics {
            msgs_out: metrics::counter!("conc_messages_sent_total", &labels),
            bytes_out: metrics::counter!("conc_bytes_sent_total", &labels),
            msgs_in: metrics::counter!("conc_messages_received_total", &labels),
            bytes_in: metrics::counter!("conc_bytes_received_total", &labels),
        }
    }
}

/// What the last gauge sample set (see `Net::sample_gauges`).
#[derive(Default)]
pub(crate) struct Gauged {
    pub(crate) peers: Vec<String>,
    pub(crate) names: Vec<String>,
}

/// The node's counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) gauged: Mutex<Gauged>,
    pub(crate) dead_letters: Mutex<BTreeMap<String, u64>>,
    pub(crate) rejected: Mutex<BTreeMap<String, u64>>,
    pub(crate) late_replies: AtomicU64,
    pub(crate) peers: Mutex<HashMap<String, std::sync::Arc<PeerCounters>>>,
    /// Bumped whenever peers' counters are removed from `peers` (idle peers forgotten), so that
    /// a holder of a peer's counters outside the map (the inbound path's cache) knows to look
    /// them up again instead of counting into counters no snapshot reads.
    pub(crate) generation: AtomicU64,
}

impl Counters {
    /// Counts `n` messages to or from `peer` that could not be delivered. Reasons come from a
    /// fixed set, so the maps stay small whatever peers send.
    pub(crate) fn dead_letter(&self, peer: &str, reason: &str, n: u64) {
        *self
            .dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_string())
            .or_insert(0) += n;
        metrics::counter!("conc_dead_letters_total", "reason" => reason.to_string()).increment(n);
        *self
            .peer(peer)
            .dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_string())
            .or_insert(0) += n;
    }

    pub(crate) fn rejected(&self, reason: &str) {
        // Reasons are grouped by their words before the first ':', with numbers (lengths, frame
        // kinds, durations) replaced by "N", so that hostile input can neither grow the map nor
        // fill it with one key per number it sends.
        let key: String = reason_key(reason);
        let mut m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        let key = if m.len() < 64 || m.contains_key(&key) {
            key
        } else {
            "other".to_string()
        };
        metrics::counter!("conc_refusals_total", "reason" => key.clone()).increment(1);
        *m.entry(key).or_insert(0) += 1;
    }

    /// Forgets the counters of `names` (idle peers), and tells whoever keeps counters outside
    /// the map to fetch them again ([`Counters::generation`]).
    pub(crate) fn forget(&self, names: &[String]) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            peers.remove(name);
        }
        // Bumped under the map's lock: whoever fetched counters before this looks again.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The counters of `name`, without creating them.
    pub(crate) fn get(&self, name: &str) -> Option<std::sync::Arc<PeerCounters>> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(name).cloned()
    }

    /// The counters of `name`, made (and their `metrics` handles registered) the first time.
    pub(crate) fn peer(&self, name: &str) -> std::sync::Arc<PeerCounters> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = peers.get(name) {
            return p.clone();
        }
        peers
            .entry(name.to_string())
            .or_insert_with(|| {
                std::sync::Arc::new(PeerCounters {
                    metrics: PeerMetrics::for_peer(name),
                    ..PeerCounters::default()
                })
            })
            .clone()
    }
}

/// The counter key of a rejection reason: its words before the first ':', each word that
/// starts with a digit replaced by "N", at most 48 characters.
fn reason_key(reason: &str) -> String {
    let head = reason.split(':').next().unwrap_or(reason);
    let words: Vec<&str> = head
        .split_whitespace()
        .map(|w| {
            if w.starts_with(|c: char| c.is_ascii_digit()) {
                "N"
            } else {
                w
            }
        })
        .collect();
    words.join(" ").chars().take(48).collect()
}

/// A snapshot of one peer's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The peer's node name.
    pub name: String,
    /// When its current connection was established (`None` if not connected). Per-message
    /// TCP has no long-lived connection: there it is when the peer was first proven, or proven
    /// again after it was seen down (the node reports such a peer up then), until it is seen
    /// down.
    pub connected_since: Option<SystemTime>,
    /// Messages and replies sent to it (frames queued for it; control frames such as pings,
    /// monitors and links are not counted).
    pub msgs_out: u64,
    /// Bytes of those frames as they go on the wire: length prefix, header and body.
    pub bytes_out: u64,
    /// Messages and replies received from it, counted as the sender counts its `msgs_out`.
    pub msgs_in: u64,
    /// Bytes of those frames as they came off the wire (length prefix, header and body): after
    /// a known exchange, one side's `bytes_out` is the other's `bytes_in`.
    pub bytes_in: u64,
    /// Bytes queued for it and not yet written (pooled transports; 0 on per-message TCP).
    pub queued_bytes: u64,
    /// Frames queued for it and not yet written (on per-message TCP: not yet delivered).
    pub queued_frames: u64,
    /// Messages to or from it that could not be delivered, by reason.
    pub dead_letters: BTreeMap<String, u64>,
}

/// A snapshot of a node's state and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// The node's name.
    pub name: String,
    /// Live processes.
    pub processes: usize,
    /// Registered names.
    pub registered: Vec<String>,
    /// Messages that could not be delivered, by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Connections or frames refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Replies that arrived after their call had ended (dropped).
    pub late_replies: u64,
    /// Per peer.
    pub peers: Vec<PeerStats>,
}

impl PeerCounters {
    pub(crate) fn snapshot(&self, name: &str, queued: (u64, u64)) -> PeerStats {
        PeerStats {
            name: name.to_string(),
            connected_since: *self
                .connected_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            msgs_out: self.msgs_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            msgs_in: self.msgs_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            queued_bytes: queued.0,
            queued_frames: queued.1,
            dead_letters: self
                .dead_letters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl PeerStats {
    /// Adds what was counted for the same node under another name (an alias) to this entry.
    pub(crate) fn absorb(&mut self, other: PeerStats) {
        self.connected_since = match (self.connected_since, other.connected_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.msgs_out += other.msgs_out;
        self.bytes_out += other.bytes_out;
        self.msgs_in += other.msgs_in;
        self.bytes_in += other.bytes_in;
        // An alias's queue forwards to the node's own: counted once.
        self.queued_bytes = self.queued_bytes.max(other.queued_bytes);
        self.queued_frames = self.queued_frames.max(other.queued_frames);
        for (reason, n) in other.dead_letters {
            *self.dead_letters.entry(reason).or_insert(0) += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_numbers_do_not_make_new_keys() {
        let c = Counters::default();
        for len in [1_230_414_714u64, 4_294_967_295, 180_218_133] {
            c.rejected(&format!(
                "frame of {len} bytes exceeds the limit of 1048576"
            ));
        }
        for k in ["0x15", "0x62", "0xad"] {
            c.rejected(&format!("unknown frame kind {k}"));
        }
        c.rejected("handshake failed: the peer failed to prove knowledge of the cookie");
        c.rejected("handshake timed out after 1s");
        let m = c.rejected.lock().unwrap().clone();
        assert_eq!(m.get("frame of N bytes exceeds the limit of N"), Some(&3));
        assert_eq!(m.get("unknown frame kind N"), Some(&3));
        assert_eq!(m.get("handshake failed"), Some(&1));
        assert_eq!(m.get("handshake timed out after N"), Some(&1));
        assert_eq!(m.len(), 4, "{m:?}");
    }
}
