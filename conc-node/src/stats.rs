//! Counters and the stats snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Counters of one peer.
#[derive(Default)]
pub(crate) struct PeerCounters {
    pub(crate) msgs_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) msgs_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) connected_since: Mutex<Option<SystemTime>>,
}

/// The node's counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) dead_letters: Mutex<BTreeMap<String, u64>>,
    pub(crate) rejected: Mutex<BTreeMap<String, u64>>,
    pub(crate) late_replies: AtomicU64,
    pub(crate) peers: Mutex<HashMap<String, std::sync::Arc<PeerCounters>>>,
}

impl Counters {
    pub(crate) fn dead_letter(&self, reason: &str, n: u64) {
        *self
            .dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_string())
            .or_insert(0) += n;
    }

    pub(crate) fn rejected(&self, reason: &str) {
        // Reasons are grouped by their first words so that hostile input cannot grow the map.
        let key: String = reason
            .split(':')
            .next()
            .unwrap_or(reason)
            .chars()
            .take(48)
            .collect();
        let mut m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() < 64 || m.contains_key(&key) {
            *m.entry(key).or_insert(0) += 1;
        } else {
            *m.entry("other".to_string()).or_insert(0) += 1;
        }
    }

    pub(crate) fn peer(&self, name: &str) -> std::sync::Arc<PeerCounters> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

/// A snapshot of one peer's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's node name.
    pub name: String,
    /// When its current connection was established (`None` if not connected, and always for
    /// per-message TCP, which has no long-lived connection).
    pub connected_since: Option<SystemTime>,
    /// Frames sent to it.
    pub msgs_out: u64,
    /// Bytes of message bodies sent to it.
    pub bytes_out: u64,
    /// Frames received from it.
    pub msgs_in: u64,
    /// Bytes of frames received from it.
    pub bytes_in: u64,
}

/// A snapshot of a node's state and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub(crate) fn snapshot(&self, name: &str) -> PeerStats {
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
        }
    }
}
