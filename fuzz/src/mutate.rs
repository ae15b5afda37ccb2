//! The random generator and the mutations.

/// A small, fast, seedable generator (xorshift64*). Deterministic for a given seed, so a run
/// can be repeated with `--seed`.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced, xorshift needs a non-zero state).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability 1/n.
    pub(crate) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random byte.
    pub(crate) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Byte values that tend to matter: bounds, and bincode's varint markers (251 = u16 follows,
/// 252 = u32, 253 = u64).
const INTERESTING_BYTES: [u8; 12] = [
    0, 1, 2, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff, 0x10,
];

/// Integers that tend to matter as lengths and counts.
fn interesting_int(rng: &mut Rng, len: usize) -> u64 {
    const FIXED: [u64; 14] = [
        0,
        1,
        2,
        250,
        251,
        255,
        256,
        0xffff,
        0x1_0000,
        0x7fff_ffff,
        0xffff_ffff,
        1 << 32,
        1 << 60,
        u64::MAX,
    ];
    match rng.below(4) {
        0 => len as u64,
        1 => (len as u64)
            .wrapping_add(rng.below(9) as u64)
            .wrapping_sub(4),
        _ => FIXED[rng.below(FIXED.len())],
    }
}

/// Bincode's varint encoding of `v` (as the standard configuration writes lengths).
fn varint(v: u64) -> Vec<u8> {
    if v < 251 {
        vec![v as u8]
    } else if v <= u64::from(u16::MAX) {
        let mut out = vec![251];
        out.extend_from_slice(&(v as u16).to_le_bytes());
        out
    } else if v <= u64::from(u32::MAX) {
        let mut out = vec![252];
        out.extend_from_slice(&(v as u32).to_le_bytes());
        out
    } else {
        let mut out = vec![253];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }
}

/// Replaces `data[at..at + old]` by `new`.
fn splice_in(data: &mut Vec<u8>, at: usize, old: usize, new: &[u8]) {
    let at = at.min(data.len());
    let end = (at + old).min(data.len());
    data.splice(at..end, new.iter().copied());
}

/// Applies one to a few random mutations to `data`, using `corpus` for splicing; keeps the
/// result at most `max_len` bytes.
pub(crate) fn mutate(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng, max_len: usize) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        mutate_once(data, corpus, rng, max_len);
    }
    data.truncate(max_len);
}

fn mutate_once(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng, max_len: usize) {
    let len = data.len();
    match rng.below(12) {
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Set a byte to an interesting value.
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        // Set a byte at random.
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.byte();
        }
        // Insert random bytes.
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            splice_in(data, at, 0, &bytes);
        }
        // Delete a range.
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below(16.min(len - at));
            data.drain(at..at + n);
        }
        // Copy a range elsewhere.
        5 if len > 1 => {
            let from = rng.below(len);
            let n = 1 + rng.below(32.min(len - from));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            splice_in(data, at, 0, &chunk);
        }
        // Repeat a short range many times (deep nesting, long runs).
        6 if len > 0 => {
            let from = rng.below(len);
            let n = 1 + rng.below(4.min(len - from));
            let chunk = data[from..from + n].to_vec();
            let reps = 1 + rng
                .below((max_len / 2).saturating_sub(len) / n + 1)
                .min(50_000);
            let repeated: Vec<u8> = chunk.iter().copied().cycle().take(n * reps).collect();
            splice_in(data, from, 0, &repeated);
        }
        // A length field: a bincode varint, overwriting or inserted.
        7 => {
            let v = varint(interesting_int(rng, len));
            let at = rng.below(len + 1);
            let old = if rng.one_in(2) { 0 } else { v.len() };
            splice_in(data, at, old, &v);
        }
        // A length field: a big-endian u32 (the frame length prefix).
        8 => {
            let v = (interesting_int(rng, len) as u32).to_be_bytes();
            let at = if rng.one_in(2) { 0 } else { rng.below(len + 1) };
            splice_in(data, at, 4, &v);
        }
        // Splice with another corpus entry.
        9 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Truncate.
        10 if len > 0 => {
            data.truncate(rng.below(len));
        }
        // Overwrite a range with part of another entry.
        _ if !corpus.is_empty() && len > 0 => {
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let n = 1 + rng.below(16.min(other.len() - from));
                let at = rng.below(len);
                splice_in(data, at, n, &other[from..from + n]);
            }
        }
        _ => {
            data.push(rng.byte());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_bincode() {
        assert_eq!(varint(5), vec![5]);
        assert_eq!(varint(300), vec![251, 0x2c, 0x01]);
        assert_eq!(varint(1 << 20).len(), 5);
        assert_eq!(varint(u64::MAX).len(), 9);
    }

    #[test]
    fn mutations_stay_bounded() {
        let mut rng = Rng::new(7);
        let corpus = vec![vec![1u8; 40], vec![2u8; 3]];
        let mut data = vec![0u8; 10];
        for _ in 0..10_000 {
            mutate(&mut data, &corpus, &mut rng, 256);
            assert!(data.len() <= 256);
            if data.is_empty() {
                data.push(0);
            }
        }
    }
}
