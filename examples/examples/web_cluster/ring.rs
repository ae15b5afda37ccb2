//! A consistent-hash ring with virtual nodes: each live worker owns `vnodes` points on a ring of
//! 64-bit hashes, and a key belongs to the worker owning the first point at or after the key's
//! hash. Removing a worker moves only the keys it owned; adding it back moves only those keys
//! back.
//!
//! Plain std code, shared with the integration test (`tests/tests/web_cluster.rs` includes this
//! file), so the hash must not change between builds: FNV-1a with a SplitMix64 finish, not
//! std's randomly keyed hasher.

use std::collections::BTreeMap;

/// Virtual nodes per worker: enough for an even spread over a handful of workers.
pub(crate) const VNODES: u32 = 128;

/// A stable 64-bit hash of `bytes`: FNV-1a, then SplitMix64's finisher to spread similar keys.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The ring: hash point → worker number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ring {
    points: BTreeMap<u64, usize>,
}

impl Ring {
    /// A ring over `workers`, each with `vnodes` points.
    pub(crate) fn new(workers: impl IntoIterator<Item = usize>, vnodes: u32) -> Ring {
        let mut points = BTreeMap::new();
        for worker in workers {
            for v in 0..vnodes {
                // On the (astronomically unlikely) collision the first worker keeps the point.
                points
                    .entry(hash(format!("worker-{worker}#{v}").as_bytes()))
                    .or_insert(worker);
            }
        }
        Ring { points }
    }

    /// Every worker on the ring, each once, in the order met walking the ring from `key`'s
    /// position: the owner first, then the fallbacks.
    pub(crate) fn successors(&self, key: &str) -> Vec<usize> {
        let h = hash(key.as_bytes());
        let mut out: Vec<usize> = Vec::new();
        for (_, &w) in self.points.range(h..).chain(self.points.range(..h)) {
            if !out.contains(&w) {
                out.push(w);
            }
        }
        out
    }
}
