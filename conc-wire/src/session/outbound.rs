//! What a node has queued for one peer, and in which order it goes out: the outbound half of
//! a peer session, sans-IO (no sockets, no tasks, no clock).
//!
//! A transport moves the bytes of one or more ordered *lanes* to the peer; [`Outbound`] decides
//! what each lane carries next. Two lane models cover conc's pooled transports:
//!
//! - [`LaneModel::Fragments`] (pooled TCP, one byte stream): small frames are written whole, all
//!   that is queued at once; a frame whose payload exceeds [`FRAGMENT_CHUNK`] goes to the *big
//!   lane* and out in [`Fragment`](crate::frame::Frame::Fragment) frames of at most
//!   `FRAGMENT_CHUNK` bytes, one per take, after everything small (so a small frame waits for at
//!   most one chunk of a large one). Order per lane key (the target process) is kept: while a
//!   key has a frame in the big lane, its later frames follow it there, and so does an
//!   `after_all` frame.
//! - [`LaneModel::Streams`] (QUIC, one stream per lane): a frame goes to the ordinary lane of
//!   its key (`key % ordinary`), a large frame to one more lane, the big lane (the last index).
//!   Order across lanes is kept by [`Barrier`](crate::frame::Frame::Barrier) frames counting
//!   the frames queued on each lane of the current connection: the receiver holds a lane back
//!   at a barrier until the other lanes have delivered that many frames. An `after_all` frame
//!   (a `Down`, an exit, the goodbye) is preceded by a barrier over every lane; a large frame by
//!   a barrier over its key's ordinary lane; the key's next ordinary frame by a barrier over the
//!   big lane.
//!
//! Bounds, the same for both models: at most `max_bytes` are queued; a frame that goes to the
//! big lane is refused once half of that is used, so a stream of large frames cannot take the
//! room small frames (a call, a reply) need.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use crate::frame::{FRAGMENT_CHUNK, LEN_PREFIX, encode_barrier, encode_fragment};
use crate::transport::{FrameMeta, RouteError};

/// How a transport carries a peer's frames (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LaneModel {
    /// One ordered byte stream; large frames interleaved in fragments (pooled TCP). One lane,
    /// index 0.
    Fragments,
    /// `ordinary` streams for frames by key, plus one for large frames (QUIC). Lanes
    /// `0..=ordinary`, the big lane last.
    Streams {
        /// Streams for ordinary frames (at least 1).
        ordinary: usize,
    },
}

impl LaneModel {
    /// How many lanes the transport writes: 1 for [`LaneModel::Fragments`], `ordinary + 1`
    /// for [`LaneModel::Streams`].
    pub fn lanes(self) -> usize {
        match self {
            LaneModel::Fragments => 1,
            LaneModel::Streams { ordinary } => ordinary.max(1) + 1,
        }
    }
}

/// The frames queued on one lane, encoded back to back.
#[derive(Debug, Default)]
struct Lane {
    buf: Vec<u8>,
    frames: usize,
    /// Frames queued on this lane for the current connection ([`LaneModel::Streams`]): what a
    /// barrier tells the peer to wait for. `total - frames` were taken for it.
    total: u64,
    /// The barriers in `buf` ([`LaneModel::Streams`]), in order: a writer takes the frames
    /// before the first one whose counts other lanes have not reached yet, not that barrier
    /// and what follows it.
    gates: VecDeque<Gate>,
}

/// A barrier queued on an ordinary lane.
#[derive(Debug)]
struct Gate {
    /// Where it starts in the lane's buffer, and the frames before it there.
    at: usize,
    frames: usize,
    counts: Vec<u64>,
}

/// A frame in the big lane of [`LaneModel::Fragments`].
#[derive(Debug)]
struct Big {
    /// [`LaneModel::Streams`]: the barrier that goes before the frame on the big lane's stream
    /// (empty if none), written with it.
    pre: Vec<u8>,
    /// The counts of `pre`, for the writer's check (see [`Gate`]).
    counts: Option<Vec<u64>>,
    /// The whole frame, length prefix included.
    bytes: Vec<u8>,
    /// Payload bytes already sent in fragments.
    sent: usize,
    key: u64,
}

/// What was queued for a peer, taken out to be queued behind another entry's frames (an alias
/// found to name a node known under another name).
#[derive(Debug, Default)]
pub struct Moved {
    lanes: Vec<(Vec<u8>, usize)>,
    big: VecDeque<Big>,
    frames: usize,
}

impl Moved {
    /// Frames it holds.
    pub fn frames(&self) -> usize {
        self.frames
    }
}

/// The outbound queues of one peer (see the module docs).
#[derive(Debug)]
pub struct Outbound {
    model: LaneModel,
    lanes: Vec<Lane>,
    max_bytes: usize,
    /// Bytes queued on every lane, the big lane's unsent bytes included.
    bytes: usize,
    /// The big lane's frames, each in a buffer of its own (moved in, not copied under the
    /// session's lock): with [`LaneModel::Fragments`] sent in fragments, with
    /// [`LaneModel::Streams`] whole on the big lane's stream (a barrier before one is an item
    /// of its own). With [`LaneModel::Fragments`], how many of its frames each key has there.
    big: VecDeque<Big>,
    big_keys: HashMap<u64, usize>,
    /// [`LaneModel::Streams`]: for each key that sent a large frame, the big lane's `total`
    /// just after it; the key's next ordinary frame waits for the peer to have taken that many.
    after_big: HashMap<u64, u64>,
    /// Lanes (bits) whose writer stopped at a barrier not reached yet: to be woken when another
    /// lane's writer takes something.
    waiting: u64,
}

/// What [`Outbound::take`] took.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Taken {
    /// Nothing was queued on the lane.
    Nothing,
    /// Bytes were put in `out`: write them.
    Bytes,
    /// A large frame of the big lane ([`LaneModel::Streams`]), its buffer handed over: write
    /// what was put in `out` (its barrier, if any), then it.
    Large(Vec<u8>),
}

/// What [`Outbound::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The lane the frame was queued on.
    pub lane: usize,
    /// The lane was empty before: its writer may be waiting.
    pub was_empty: bool,
}

impl Outbound {
    /// Empty queues for the lanes of `model`, bounded by `max_bytes` in all.
    pub fn new(model: LaneModel, max_bytes: usize) -> Outbound {
        Outbound {
            model,
            lanes: (0..model.lanes()).map(|_| Lane::default()).collect(),
            max_bytes,
            bytes: 0,
            big: VecDeque::new(),
            big_keys: HashMap::new(),
            after_big: HashMap::new(),
            waiting: 0,
        }
    }

    /// The lanes (bits) other than `except` whose writers wait for a barrier that another
    /// lane's progress may have reached; cleared. A writer that takes something wakes them.
    pub fn take_waiting(&mut self, except: usize) -> u64 {
        let own = 1u64.checked_shl(except as u32).unwrap_or(0);
        let bits = self.waiting & !own;
        self.waiting &= own;
        bits
    }

    /// The lane model.
    pub fn model(&self) -> LaneModel {
        self.model
    }

    /// Bytes queued (the big lane's unsent bytes included).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames queued (a barrier counts as one).
    pub fn frames(&self) -> usize {
        let lanes = self.lanes.iter().map(|l| l.frames).sum::<usize>();
        match self.model {
            LaneModel::Fragments => lanes + self.big.len(),
            // The big lane's items are counted on its lane.
            LaneModel::Streams { .. } => lanes,
        }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Whether `lane` has something to take.
    pub fn has_data(&self, lane: usize) -> bool {
        match self.model {
            LaneModel::Fragments => !self.is_empty(),
            LaneModel::Streams { .. } if lane == self.big_lane() => !self.big.is_empty(),
            LaneModel::Streams { .. } => self.lanes.get(lane).is_some_and(|l| !l.buf.is_empty()),
        }
    }

    /// Whether every frame would be refused as [`RouteError::Busy`] now.
    pub fn full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    /// Whether a sender waiting for room ([`Route::ready`](crate::Route::ready)) may go on:
    /// less than half the bound is used, so whatever it sends finds room.
    pub fn has_room(&self) -> bool {
        self.bytes < self.max_bytes / 2
    }

    fn big_lane(&self) -> usize {
        self.lanes.len() - 1
    }

    fn ordinary_lane(&self, key: u64) -> usize {
        match self.model {
            LaneModel::Fragments => 0,
            LaneModel::Streams { ordinary } => (key % ordinary.max(1) as u64) as usize,
        }
    }

    /// Whether a frame of `len` bytes (length prefix included) is large: it goes to the big
    /// lane, and is best handed over owned ([`Outbound::push_owned`]).
    pub fn is_large(len: usize) -> bool {
        len > LEN_PREFIX + FRAGMENT_CHUNK
    }

    /// Whether a frame of `len` bytes with `meta` goes to the big lane.
    fn goes_big(&self, len: usize, meta: &FrameMeta) -> bool {
        match self.model {
            LaneModel::Fragments => {
                Self::is_large(len)
                    || (!self.big.is_empty()
                        && (meta.after_all || self.big_keys.contains_key(&meta.lane)))
            }
            LaneModel::Streams { .. } => Self::is_large(len),
        }
    }

    /// Queues one encoded frame (length prefix included) with its `meta`, behind whatever it
    /// must not overtake. Refused with [`RouteError::Busy`] when the bound is reached (for a
    /// frame that goes to the big lane: half the bound), and with [`RouteError::Frame`] when a
    /// barrier cannot be encoded (more lanes than a barrier can name); the queues are then as
    /// they were.
    pub fn push(&mut self, bytes: &[u8], meta: &FrameMeta) -> Result<Pushed, RouteError> {
        self.push_cow(Cow::Borrowed(bytes), meta)
    }

    /// Like [`Outbound::push`], with the frame's buffer moved in: a large frame is queued
    /// without a copy (made by the caller before it takes the session's lock).
    pub fn push_owned(&mut self, bytes: Vec<u8>, meta: &FrameMeta) -> Result<Pushed, RouteError> {
        self.push_cow(Cow::Owned(bytes), meta)
    }

    fn push_cow(&mut self, bytes: Cow<'_, [u8]>, meta: &FrameMeta) -> Result<Pushed, RouteError> {
        if self.full() {
            return Err(RouteError::Busy);
        }
        let big = self.goes_big(bytes.len(), meta);
        if big && self.bytes >= self.max_bytes / 2 {
            return Err(RouteError::Busy);
        }
        match self.model {
            LaneModel::Fragments => Ok(self.push_one_stream(bytes, meta, big)),
            LaneModel::Streams { .. } => self.push_streams(bytes, meta, big),
        }
    }

    fn push_one_stream(&mut self, bytes: Cow<'_, [u8]>, meta: &FrameMeta, big: bool) -> Pushed {
        let was_empty = self.is_empty();
        self.bytes += bytes.len();
        if big {
            *self.big_keys.entry(meta.lane).or_insert(0) += 1;
            self.big.push_back(Big {
                pre: Vec::new(),
                counts: None,
                bytes: bytes.into_owned(),
                sent: 0,
                key: meta.lane,
            });
        } else {
            let lane = &mut self.lanes[0];
            lane.buf.extend_from_slice(&bytes);
            lane.frames += 1;
            lane.total += 1;
        }
        Pushed { lane: 0, was_empty }
    }

    fn push_streams(
        &mut self,
        bytes: Cow<'_, [u8]>,
        meta: &FrameMeta,
        big: bool,
    ) -> Result<Pushed, RouteError> {
        let ordinary = self.ordinary_lane(meta.lane);
        let big_lane = self.big_lane();
        let index = if big { big_lane } else { ordinary };
        let barrier: Option<Vec<u64>> = if meta.after_all {
            Some(self.lanes.iter().map(|l| l.total).collect())
        } else if big {
            let mut counts = vec![0; self.lanes.len()];
            counts[ordinary] = self.lanes[ordinary].total;
            Some(counts)
        } else {
            self.after_big.get(&meta.lane).map(|&after| {
                let mut counts = vec![0; self.lanes.len()];
                counts[big_lane] = after;
                counts
            })
        };
        if big {
            // Each in a buffer of its own: the large frame is not copied again.
            let was_empty = self.big.is_empty();
            let mut pre = Vec::new();
            if let Some(counts) = &barrier {
                encode_barrier(&mut pre, counts).map_err(RouteError::Frame)?;
            }
            let lane = &mut self.lanes[index];
            if !pre.is_empty() {
                lane.frames += 1;
                lane.total += 1;
            }
            lane.frames += 1;
            lane.total += 1;
            let total = lane.total;
            self.bytes += pre.len() + bytes.len();
            // The barrier and its frame stay together: a connection carries both or neither.
            self.big.push_back(Big {
                pre,
                counts: barrier,
                bytes: bytes.into_owned(),
                sent: 0,
                key: meta.lane,
            });
            self.after_big.insert(meta.lane, total);
            return Ok(Pushed {
                lane: index,
                was_empty,
            });
        }
        let lane = &mut self.lanes[index];
        let before = lane.buf.len();
        if let Some(counts) = &barrier {
            if let Err(e) = encode_barrier(&mut lane.buf, counts) {
                lane.buf.truncate(before);
                return Err(RouteError::Frame(e));
            }
            lane.gates.push_back(Gate {
                at: before,
                frames: lane.frames,
                counts: counts.clone(),
            });
            lane.frames += 1;
            lane.total += 1;
        }
        lane.buf.extend_from_slice(&bytes);
        lane.frames += 1;
        lane.total += 1;
        let total = lane.total;
        self.bytes += lane.buf.len() - before;
        if big {
            self.after_big.insert(meta.lane, total);
        } else if barrier.is_some() {
            // Behind its barrier on this lane: the key's later frames follow it here.
            self.after_big.remove(&meta.lane);
        }
        Ok(Pushed {
            lane: index,
            was_empty: before == 0,
        })
    }

    /// Takes what `lane` carries next into `out` (which the caller passes empty, and gets
    /// back holding bytes to write in one go): every frame queued on the lane, and with
    /// [`LaneModel::Fragments`] then one piece of the big lane (a fragment of its first frame
    /// when `fragments`, the whole frame otherwise). Returns whether anything was taken.
    pub fn take(&mut self, lane: usize, out: &mut Vec<u8>, fragments: bool) -> Taken {
        if let LaneModel::Streams { .. } = self.model
            && lane == self.big_lane()
        {
            // One frame of the big lane, with its barrier: the frame's buffer handed over
            // whole, not copied. Not before what its barrier waits for was taken.
            let taken = self.taken();
            let ready = self.big.front().is_some_and(|item| {
                item.counts
                    .as_ref()
                    .is_none_or(|c| reached(c, &taken, lane))
            });
            if !ready {
                self.waiting |= 1 << lane;
                return Taken::Nothing;
            }
            let Some(item) = self.big.pop_front() else {
                return Taken::Nothing;
            };
            let frames = if item.pre.is_empty() { 1 } else { 2 };
            self.lanes[lane].frames -= frames;
            self.bytes -= item.pre.len() + item.bytes.len();
            out.extend_from_slice(&item.pre);
            return Taken::Large(item.bytes);
        }
        let taken = match self.model {
            LaneModel::Fragments => Vec::new(),
            LaneModel::Streams { .. } => self.taken(),
        };
        let Some(l) = self.lanes.get_mut(lane) else {
            return Taken::Nothing;
        };
        // Everything before the first barrier whose counts the other lanes have not reached:
        // so a connection never carries a frame whose barrier waits for frames that will go
        // out on the next connection (a writer of another lane may be late).
        while l
            .gates
            .front()
            .is_some_and(|g| reached(&g.counts, &taken, lane))
        {
            l.gates.pop_front();
        }
        let mut took = false;
        if let Some(gate) = l.gates.front() {
            let (at, frames) = (gate.at, gate.frames);
            self.waiting |= 1 << lane;
            if at > 0 {
                let rest = l.buf.split_off(at);
                std::mem::swap(&mut l.buf, out);
                l.buf = rest;
                l.frames -= frames;
                for g in &mut l.gates {
                    g.at -= at;
                    g.frames -= frames;
                }
                self.bytes -= at;
                took = true;
            }
        } else if !l.buf.is_empty() {
            std::mem::swap(&mut l.buf, out);
            l.frames = 0;
            self.bytes -= out.len();
            took = true;
        }
        if self.model == LaneModel::Fragments {
            took |= self.take_big(out, fragments);
        }
        if took { Taken::Bytes } else { Taken::Nothing }
    }

    /// Frames taken per lane for the current connection.
    fn taken(&self) -> Vec<u64> {
        self.lanes
            .iter()
            .map(|l| l.total.saturating_sub(l.frames as u64))
            .collect()
    }

    fn take_big(&mut self, out: &mut Vec<u8>, fragments: bool) -> bool {
        let Some(head) = self.big.front_mut() else {
            return false;
        };
        let payload = head.bytes.len() - LEN_PREFIX;
        let done = if fragments && payload > FRAGMENT_CHUNK {
            let rest = &head.bytes[LEN_PREFIX + head.sent..];
            let n = rest.len().min(FRAGMENT_CHUNK);
            let last = n == rest.len();
            encode_fragment(out, last, &rest[..n]);
            head.sent += n;
            self.bytes -= n + if last { LEN_PREFIX } else { 0 };
            last
        } else {
            // Unsent: a frame is fragmented from its start or not at all.
            out.extend_from_slice(&head.bytes);
            self.bytes -= head.bytes.len();
            true
        };
        if done {
            let key = head.key;
            self.big.pop_front();
            if let Some(n) = self.big_keys.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.big_keys.remove(&key);
                }
            }
        }
        true
    }

    /// A new connection carries the peer's frames from now on: what is queued is what its
    /// lanes carry first, so barriers count from there, and a large frame partly sent in
    /// fragments is sent again from its start.
    pub fn connection_established(&mut self) {
        // A large frame partly sent in fragments on the connection before starts over: the
        // peer reassembles per connection, and the pieces sent are dropped with the old one.
        if let Some(head) = self.big.front_mut()
            && head.sent > 0
        {
            self.bytes += head.sent;
            head.sent = 0;
        }
        // Frames of each lane already taken for the connection before: the barriers still
        // queued counted them, and the new connection does not carry them.
        let taken: Vec<u64> = self
            .lanes
            .iter()
            .map(|l| l.total.saturating_sub(l.frames as u64))
            .collect();
        for lane in &mut self.lanes {
            lane.total = lane.frames as u64;
        }
        if taken.iter().any(|&t| t > 0) {
            for lane in &mut self.lanes {
                let before = lane.buf.len();
                lane.buf = rebase_barriers(&lane.buf, &taken);
                self.bytes = self.bytes + lane.buf.len() - before;
            }
            if let LaneModel::Streams { .. } = self.model {
                for lane in &mut self.lanes {
                    lane.gates = gates_of(&lane.buf);
                }
                for item in &mut self.big {
                    let before = item.pre.len();
                    item.pre = rebase_barriers(&item.pre, &taken);
                    self.bytes = self.bytes + item.pre.len() - before;
                    item.counts = gates_of(&item.pre).pop_front().map(|g| g.counts);
                }
            }
            let big = taken[taken.len() - 1];
            self.after_big
                .values_mut()
                .for_each(|v| *v = v.saturating_sub(big));
        }
    }

    /// Drops everything queued (the connection is gone); returns how many frames that was.
    pub fn clear(&mut self) -> usize {
        let n = self.frames();
        for lane in &mut self.lanes {
            *lane = Lane::default();
        }
        self.bytes = 0;
        self.big.clear();
        self.big_keys.clear();
        self.after_big.clear();
        n
    }

    /// Takes everything queued out, to be queued behind another entry's frames with
    /// [`Outbound::absorb`].
    pub fn take_all(&mut self) -> Moved {
        let frames = self.frames();
        let lanes = self
            .lanes
            .iter_mut()
            .map(|l| {
                let moved = (std::mem::take(&mut l.buf), l.frames);
                *l = Lane::default();
                moved
            })
            .collect();
        let big = std::mem::take(&mut self.big);
        self.bytes = 0;
        self.big_keys.clear();
        self.after_big.clear();
        Moved { lanes, big, frames }
    }

    /// Queues what [`Outbound::take_all`] took from another entry behind what is queued here
    /// (lane by lane; nothing of it was sent, so large frames start unfragmented). Not bounded:
    /// the frames were accepted already. Returns the lanes that were empty and now are not.
    pub fn absorb(&mut self, moved: Moved) -> Vec<usize> {
        let n = self.lanes.len();
        let was_empty: Vec<bool> = (0..n).map(|l| !self.has_data(l)).collect();
        for (i, (buf, frames)) in moved.lanes.into_iter().enumerate() {
            let lane = &mut self.lanes[i % n];
            self.bytes += buf.len();
            lane.buf.extend_from_slice(&buf);
            lane.frames += frames;
            lane.total += frames as u64;
        }
        for b in moved.big {
            self.bytes += b.pre.len() + b.bytes.len();
            if self.model == LaneModel::Fragments {
                *self.big_keys.entry(b.key).or_insert(0) += 1;
            }
            // Nothing of it was sent: a large frame starts unfragmented.
            self.big.push_back(Big { sent: 0, ..b });
        }
        (0..n)
            .filter(|&l| was_empty[l] && self.has_data(l))
            .collect()
    }
}

/// Whether `taken` (frames taken per lane) reaches a barrier's `counts` on every lane but
/// `own` (the barrier's own lane, which is in order by itself).
fn reached(counts: &[u64], taken: &[u64], own: usize) -> bool {
    counts
        .iter()
        .enumerate()
        .all(|(i, c)| i == own || taken.get(i).copied().unwrap_or(0) >= *c)
}

/// The barriers in `buf` (whole frames): where each starts, the frames before it, its counts.
fn gates_of(buf: &[u8]) -> VecDeque<Gate> {
    let mut gates = VecDeque::new();
    let (mut at, mut frames) = (0, 0);
    while buf.len() >= at + LEN_PREFIX {
        let mut len = [0u8; LEN_PREFIX];
        len.copy_from_slice(&buf[at..at + LEN_PREFIX]);
        let end = (at + LEN_PREFIX + u32::from_be_bytes(len) as usize).min(buf.len());
        if let Some(&crate::frame::kind::BARRIER) = buf.get(at + LEN_PREFIX)
            && let Ok(crate::frame::Frame::Barrier(counts)) =
                crate::frame::Frame::decode(&buf[at + LEN_PREFIX..end])
        {
            gates.push_back(Gate { at, frames, counts });
        }
        frames += 1;
        at = end;
    }
    gates
}

/// `buf` (whole frames) with every barrier's counts lowered by `taken` (per lane): the counts
/// of a new connection, which does not carry the frames taken for the one before.
fn rebase_barriers(buf: &[u8], taken: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len());
    let mut rest = buf;
    while rest.len() >= LEN_PREFIX {
        let mut len = [0u8; LEN_PREFIX];
        len.copy_from_slice(&rest[..LEN_PREFIX]);
        let end = (LEN_PREFIX + u32::from_be_bytes(len) as usize).min(rest.len());
        let (frame, next) = rest.split_at(end);
        rest = next;
        if let Some(&crate::frame::kind::BARRIER) = frame.get(LEN_PREFIX)
            && let Ok(crate::frame::Frame::Barrier(counts)) =
                crate::frame::Frame::decode(&frame[LEN_PREFIX..])
        {
            let counts: Vec<u64> = counts
                .iter()
                .zip(taken.iter().chain(std::iter::repeat(&0)))
                .map(|(c, t)| c.saturating_sub(*t))
                .collect();
            if encode_barrier(&mut out, &counts).is_ok() {
                continue;
            }
        }
        out.extend_from_slice(frame);
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_bare, kind};

    fn small(key: u64) -> (Vec<u8>, FrameMeta) {
        let mut out = Vec::new();
        encode_bare(&mut out, kind::PING);
        (
            out,
            FrameMeta {
                lane: key,
                ..FrameMeta::default()
            },
        )
    }

    fn large(key: u64) -> (Vec<u8>, FrameMeta) {
        let payload = FRAGMENT_CHUNK + 10;
        let mut out = Vec::with_capacity(LEN_PREFIX + payload);
        out.extend_from_slice(&(payload as u32).to_be_bytes());
        out.push(kind::PING);
        out.resize(LEN_PREFIX + payload, 0);
        (
            out,
            FrameMeta {
                lane: key,
                ..FrameMeta::default()
            },
        )
    }

    /// The frames in `bytes`, by what they are.
    fn kinds(mut bytes: &[u8]) -> Vec<&'static str> {
        let mut out = Vec::new();
        while bytes.len() >= LEN_PREFIX {
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            let p = &bytes[LEN_PREFIX..LEN_PREFIX + len];
            bytes = &bytes[LEN_PREFIX + len..];
            out.push(match p[0] {
                kind::BARRIER => "barrier",
                kind::FRAGMENT_END => "last-fragment",
                kind::FRAGMENT => "fragment",
                _ if p.len() > FRAGMENT_CHUNK => "large",
                _ => "small",
            });
        }
        assert!(bytes.is_empty());
        out
    }

    #[test]
    fn one_stream_interleaves_fragments_and_keeps_a_keys_order() {
        let mut q = Outbound::new(LaneModel::Fragments, 1 << 30);
        let (l, lm) = large(1);
        q.push(&l, &lm).unwrap();
        // Key 1's next small frame must follow its large one; key 2's may go first.
        let (s1, m1) = small(1);
        let (s2, m2) = small(2);
        q.push(&s1, &m1).unwrap();
        q.push(&s2, &m2).unwrap();
        let mut out = Vec::new();
        assert_eq!(q.take(0, &mut out, true), Taken::Bytes);
        assert_eq!(kinds(&out), ["small", "fragment"]);
        out.clear();
        assert_eq!(q.take(0, &mut out, true), Taken::Bytes);
        assert_eq!(kinds(&out), ["last-fragment"]);
        out.clear();
        assert_eq!(q.take(0, &mut out, true), Taken::Bytes);
        assert_eq!(kinds(&out), ["small"]);
        assert!(q.is_empty());
        assert_eq!(q.frames(), 0);
        out.clear();
        assert_eq!(q.take(0, &mut out, true), Taken::Nothing);
    }

    #[test]
    fn streams_put_barriers_where_order_crosses_lanes() {
        let mut q = Outbound::new(LaneModel::Streams { ordinary: 2 }, 1 << 30);
        let (s, m) = small(0);
        assert_eq!(q.push(&s, &m).unwrap().lane, 0);
        let (l, lm) = large(0);
        assert_eq!(q.push(&l, &lm).unwrap().lane, 2);
        assert_eq!(q.push(&s, &m).unwrap().lane, 0);
        let (s1, m1) = small(1);
        assert_eq!(q.push(&s1, &m1).unwrap().lane, 1);
        // The large frame waits for lane 0's first frame to be taken: a writer never gets a
        // frame whose barrier waits for frames no writer has yet.
        let mut out = Vec::new();
        assert_eq!(q.take(2, &mut out, false), Taken::Nothing);
        assert_eq!(
            q.take_waiting(0),
            1 << 2,
            "the big lane's writer is to be woken"
        );
        // Lane 0 gives what comes before its barrier (which waits for the large frame).
        assert_eq!(q.take(0, &mut out, false), Taken::Bytes);
        assert_eq!(kinds(&out), ["small"]);
        out.clear();
        assert_eq!(q.take(0, &mut out, false), Taken::Nothing);
        // The big lane hands over a large frame's buffer whole, its barrier in `out`.
        let Taken::Large(frame) = q.take(2, &mut out, false) else {
            panic!("the big lane holds a large frame");
        };
        assert_eq!(kinds(&out), ["barrier"]);
        assert_eq!(kinds(&frame), ["large"]);
        out.clear();
        q.take(0, &mut out, false);
        assert_eq!(kinds(&out), ["barrier", "small"]);
        out.clear();
        q.take(1, &mut out, false);
        assert_eq!(kinds(&out), ["small"]);
        let mut bye = Vec::new();
        encode_bare(&mut bye, kind::GOODBYE);
        let all = FrameMeta {
            after_all: true,
            ..FrameMeta::default()
        };
        q.push(&bye, &all).unwrap();
        out.clear();
        q.take(0, &mut out, false);
        assert_eq!(kinds(&out), ["barrier", "small"]);
        assert!(q.is_empty());
    }

    #[test]
    fn bounds_leave_room_for_small_frames() {
        let (l, lm) = large(0);
        let mut q = Outbound::new(LaneModel::Fragments, l.len() * 3);
        q.push(&l, &lm).unwrap();
        q.push(&l, &lm).unwrap();
        assert_eq!(q.push(&l, &lm), Err(RouteError::Busy));
        let (s, m) = small(3);
        q.push(&s, &m).unwrap();
        assert!(!q.has_room());
        assert_eq!(q.clear(), 3);
        assert!(q.has_room() && q.is_empty());
    }

    #[test]
    fn moved_frames_queue_behind_and_keep_counting() {
        let mut a = Outbound::new(LaneModel::Streams { ordinary: 1 }, 1 << 30);
        let mut b = Outbound::new(LaneModel::Streams { ordinary: 1 }, 1 << 30);
        let (s, m) = small(0);
        a.push(&s, &m).unwrap();
        b.push(&s, &m).unwrap();
        let moved = a.take_all();
        assert_eq!(moved.frames(), 1);
        assert!(a.is_empty());
        assert!(b.absorb(moved).is_empty());
        assert_eq!(b.frames(), 2);
        let mut out = Vec::new();
        b.take(0, &mut out, false);
        assert_eq!(kinds(&out), ["small", "small"]);
    }
}
