//! Two peer sessions ([`PeerSession`]) driven against each other on a simulated network and a
//! simulated clock: no sockets, no tasks, no sleeping; every run is determined by its seed.
//!
//! The network carries each connection's lanes in both directions with a random delay per
//! write (FIFO within a lane, so lanes reorder against each other), and the simulation's nodes
//! follow the transports' rules around the session: a frame queued while nothing is connected
//! dials; the acceptor of a connection completes its handshake before the dialler; writers take
//! what the session gives them per lane and retire a connection the session says lost (a
//! `Retire` frame, then the end of the lane); readers hold a lane at an unreached barrier,
//! reassemble fragments, deliver nothing from a connection the session holds back, and tell the
//! session when a connection was read to its end. Faults: simultaneous connects (both nodes
//! start sending at once, and again after every break), broken connections (what is in flight
//! is lost) and restarts (a new incarnation).
//!
//! Checked: FIFO per (sender, receiver) pair across every connection event; a frame that must
//! not overtake anything (`after_all`, as a `Down`) arrives after everything queued before it;
//! and, in runs without faults, every frame queued arrives (what the session drops it counts).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use conc_wire::frame::{FRAGMENT_CHUNK, Frame, LEN_PREFIX, Reassembly, kind};
use conc_wire::handshake::NodeIdentity;
use conc_wire::session::{ConnKey, Ended, Established, LaneModel, PeerSession, Queued, Take};
use conc_wire::{FrameMeta, RouteError};

/// The kind byte of the simulation's messages (not a conc frame kind).
const MSG: u8 = 0x7e;
/// The kind byte of the simulation's signals (`after_all`, like a `Down`).
const SIGNAL: u8 = 0x7d;
/// Sending processes per node.
const KEYS: u64 = 4;

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// One direction of one lane of a connection.
#[derive(Default)]
struct Wire {
    /// Writes in flight: (arrival time, bytes).
    in_flight: VecDeque<(u64, Vec<u8>)>,
    /// The writer ended the lane (after its last write).
    fin: bool,
    /// Arrived, not yet read.
    buf: Vec<u8>,
    /// The lane's end arrived.
    eof: bool,
}

/// One direction of a connection, as its reader sees it.
struct Reader {
    wires: Vec<Wire>,
    /// Frames taken per lane (for barriers).
    taken: Vec<u64>,
    pieces: Reassembly,
    /// The peer's `Retire` came.
    retired: bool,
    /// Read to its end and reported to the session.
    ended: bool,
}

struct Conn {
    id: u64,
    /// Index of the node that dialled.
    initiator: usize,
    /// The incarnations of the two nodes when it was dialled.
    incarnations: [u64; 2],
    /// When each side completes the handshake.
    ready_at: [u64; 2],
    established: [bool; 2],
    /// `dirs[i]`: what node `i` writes.
    dirs: [Reader; 2],
    /// Node `i`'s writer retired or ended its side.
    writer_done: [bool; 2],
    broken: bool,
}

struct Node {
    name: String,
    incarnation: u64,
    session: PeerSession<u64>,
    /// Next sequence number per sending process (key).
    next_seq: HashMap<u64, u64>,
    /// Per (sender incarnation, key): the next sequence number expected.
    expect: HashMap<(u64, u64), u64>,
    /// Messages this node queued (accepted by the session) and dropped by its session.
    queued: u64,
    dropped: u64,
    delivered: u64,
}

impl Node {
    fn new(name: &str, incarnation: u64, model: LaneModel) -> Node {
        Node {
            name: name.to_string(),
            incarnation,
            session: PeerSession::new(model, 4 << 20),
            next_seq: HashMap::new(),
            expect: HashMap::new(),
            queued: 0,
            dropped: 0,
            delivered: 0,
        }
    }

    fn identity(&self) -> NodeIdentity {
        NodeIdentity {
            name: self.name.clone(),
            incarnation: self.incarnation,
        }
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    base: Instant,
    model: LaneModel,
    nodes: [Node; 2],
    conns: Vec<Conn>,
    next_conn: u64,
    /// Faults happened (breaks, restarts): frames in flight may have been lost.
    faults: bool,
}

fn lanes(model: LaneModel) -> usize {
    model.lanes()
}

impl Sim {
    fn new(seed: u64, model: LaneModel) -> Sim {
        Sim {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            now: 0,
            base: Instant::now(),
            model,
            nodes: [Node::new("a:1", 1, model), Node::new("b:1", 1, model)],
            conns: Vec::new(),
            next_conn: 1,
            faults: false,
        }
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    /// Node `from` queues a message of process `key` (large with `large`), or a signal that
    /// must not overtake anything queued before it.
    fn send(&mut self, from: usize, key: u64, large: bool, signal: bool) {
        let now = self.instant();
        let node = &mut self.nodes[from];
        let seq = *node.next_seq.get(&key).unwrap_or(&0);
        let mut payload = vec![if signal { SIGNAL } else { MSG }];
        payload.extend_from_slice(&node.incarnation.to_be_bytes());
        payload.extend_from_slice(&key.to_be_bytes());
        payload.extend_from_slice(&seq.to_be_bytes());
        if signal {
            // What the sender had queued before the signal, per process: the receiver must have
            // all of it when the signal arrives.
            for k in 0..KEYS {
                let queued = *node.next_seq.get(&k).unwrap_or(&0);
                payload.extend_from_slice(&queued.to_be_bytes());
            }
        } else if large {
            payload.resize(FRAGMENT_CHUNK + 1 + (seq as usize % 1000), 0xab);
        }
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let meta = FrameMeta {
            lane: key,
            after_all: signal,
            ..FrameMeta::default()
        };
        match node.session.push(&bytes, &meta, || now) {
            Ok(queued) => {
                node.next_seq.insert(key, seq + 1);
                node.queued += 1;
                if queued == Queued::Connect {
                    self.dial(from);
                }
            }
            Err(RouteError::Busy | RouteError::Unreachable(_)) => {}
            Err(e) => panic!("push: {e}"),
        }
    }

    /// Node `from` dials the other: the acceptor completes its handshake first.
    fn dial(&mut self, from: usize) {
        let id = self.next_conn;
        self.next_conn += 1;
        let accept = self.now + 1 + self.rng.below(8);
        let dialled = accept + 1 + self.rng.below(8);
        let mut ready_at = [0; 2];
        ready_at[from] = dialled;
        ready_at[1 - from] = accept;
        let n = lanes(self.model) + 1;
        let reader = || Reader {
            wires: (0..n).map(|_| Wire::default()).collect(),
            taken: vec![0; n],
            pieces: Reassembly::new(usize::MAX),
            retired: false,
            ended: false,
        };
        self.conns.push(Conn {
            id,
            initiator: from,
            incarnations: [self.nodes[0].incarnation, self.nodes[1].incarnation],
            ready_at,
            established: [false; 2],
            dirs: [reader(), reader()],
            writer_done: [false; 2],
            broken: false,
        });
    }

    /// The lane index of the retire stream (after the lanes of frames).
    fn control(&self) -> usize {
        lanes(self.model)
    }

    fn step(&mut self) {
        self.now += 1;
        self.handshakes();
        self.writers();
        self.network();
        for side in 0..2 {
            self.readers(side);
        }
        self.conns.retain(|c| {
            !(c.broken || (c.dirs[0].ended && c.dirs[1].ended && c.writer_done.iter().all(|d| *d)))
        });
    }

    fn handshakes(&mut self) {
        for ci in 0..self.conns.len() {
            for side in 0..2 {
                let c = &self.conns[ci];
                if c.broken || c.established[side] || c.ready_at[side] > self.now {
                    continue;
                }
                // A connection to an incarnation that is gone fails.
                let other = 1 - side;
                if c.incarnations[other] != self.nodes[other].incarnation
                    || c.incarnations[side] != self.nodes[side].incarnation
                {
                    self.break_conn(ci);
                    continue;
                }
                let initiator = &self.nodes[c.initiator];
                let key = ConnKey {
                    id: c.id,
                    initiator: (initiator.name.clone(), initiator.incarnation),
                    peer: self.nodes[other].identity(),
                };
                let id = c.id;
                self.conns[ci].established[side] = true;
                match self.nodes[side].session.establish(key, id, true) {
                    Established::Current { .. } | Established::Duplicate => {}
                }
            }
        }
    }

    fn writers(&mut self) {
        let n = lanes(self.model);
        for ci in 0..self.conns.len() {
            for side in 0..2 {
                let c = &self.conns[ci];
                if c.broken || !c.established[side] || c.writer_done[side] {
                    continue;
                }
                let id = c.id;
                for lane in 0..n {
                    // Each lane's writer is a task of its own: some are late.
                    if self.rng.chance(300) {
                        continue;
                    }
                    let mut out = Vec::new();
                    match self.nodes[side].session.take(id, lane, &mut out, true) {
                        Take::Took => {
                            let delay = 1 + self.rng.below(15);
                            self.write(ci, side, lane, out, delay);
                        }
                        Take::TookLarge(frame) => {
                            // Written after what `out` holds (its barrier), on the same stream.
                            out.extend_from_slice(&frame);
                            let delay = 1 + self.rng.below(15);
                            self.write(ci, side, lane, out, delay);
                        }
                        Take::Empty => {}
                        _ => {
                            // Retired: say so on the retire stream (or the one stream), then end
                            // every lane.
                            let mut retire = Vec::new();
                            conc_wire::frame::encode_retire(&mut retire, n as u32).unwrap();
                            let at = if n == 1 { 0 } else { self.control() };
                            let delay = 1 + self.rng.below(15);
                            self.write(ci, side, at, retire, delay);
                            let c = &mut self.conns[ci];
                            for w in &mut c.dirs[side].wires {
                                w.fin = true;
                            }
                            c.writer_done[side] = true;
                            break;
                        }
                    }
                }
            }
        }
    }

    fn write(&mut self, ci: usize, side: usize, lane: usize, bytes: Vec<u8>, delay: u64) {
        let w = &mut self.conns[ci].dirs[side].wires[lane];
        let at = w
            .in_flight
            .back()
            .map_or(self.now + delay, |(last, _)| (*last).max(self.now + delay));
        w.in_flight.push_back((at, bytes));
    }

    fn network(&mut self) {
        let now = self.now;
        for c in &mut self.conns {
            for dir in &mut c.dirs {
                for w in &mut dir.wires {
                    while w.in_flight.front().is_some_and(|(at, _)| *at <= now) {
                        let (_, bytes) = w.in_flight.pop_front().unwrap();
                        w.buf.extend_from_slice(&bytes);
                    }
                    if w.fin && w.in_flight.is_empty() {
                        w.eof = true;
                    }
                }
            }
        }
    }

    /// Node `side` reads what the other wrote on each connection.
    fn readers(&mut self, side: usize) {
        let writer = 1 - side;
        for ci in 0..self.conns.len() {
            if self.conns[ci].broken
                || !self.conns[ci].established[side]
                || self.conns[ci].dirs[writer].ended
            {
                continue;
            }
            let id = self.conns[ci].id;
            let mut progress = true;
            while progress {
                progress = false;
                for lane in 0..self.conns[ci].dirs[writer].wires.len() {
                    while let Some(frame) = self.next_frame(ci, writer, lane) {
                        match self.take_frame(ci, side, lane, &frame) {
                            true => {
                                let dir = &mut self.conns[ci].dirs[writer];
                                dir.wires[lane].buf.drain(..LEN_PREFIX + frame.len());
                                if lane < dir.taken.len() {
                                    dir.taken[lane] += 1;
                                }
                                progress = true;
                            }
                            false => break,
                        }
                    }
                }
            }
            // Read to its end (and, with the handover, retired): the session is told.
            let dir = &self.conns[ci].dirs[writer];
            if dir.wires.iter().all(|w| w.eof && w.buf.is_empty()) && dir.retired {
                let session = &mut self.nodes[side].session;
                if session.slot().is_current(id) {
                    // Retired by the peer while still the current one here: the connection
                    // that replaces it is on its way.
                    continue;
                }
                self.conns[ci].dirs[writer].ended = true;
                match session.lost(id) {
                    Some(Ended::Current { .. }) => panic!("a retired connection was current"),
                    Some(Ended::Retired { .. }) | None => {}
                    Some(_) => {}
                }
            }
        }
    }

    /// The next whole frame's payload on a lane, if one arrived.
    fn next_frame(&self, ci: usize, writer: usize, lane: usize) -> Option<Vec<u8>> {
        let buf = &self.conns[ci].dirs[writer].wires[lane].buf;
        if buf.len() < LEN_PREFIX {
            return None;
        }
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        (buf.len() >= LEN_PREFIX + len).then(|| buf[LEN_PREFIX..LEN_PREFIX + len].to_vec())
    }

    /// Node `side` takes one frame from a lane of connection `ci`; false if it must wait.
    fn take_frame(&mut self, ci: usize, side: usize, lane: usize, payload: &[u8]) -> bool {
        let writer = 1 - side;
        let id = self.conns[ci].id;
        match payload[0] {
            kind::RETIRE => {
                self.conns[ci].dirs[writer].retired = true;
                true
            }
            kind::BARRIER => {
                let Ok(Frame::Barrier(counts)) = Frame::decode(payload) else {
                    panic!("a malformed barrier");
                };
                let taken = &self.conns[ci].dirs[writer].taken;
                counts.iter().zip(taken).all(|(want, have)| have >= want)
            }
            kind::FRAGMENT | kind::FRAGMENT_END => {
                // Rule 3 applies to what a fragment completes; a piece is only buffered.
                if self.nodes[side].session.holds_delivery(id) {
                    return false;
                }
                let last = payload[0] == kind::FRAGMENT_END;
                let whole = self.conns[ci].dirs[writer]
                    .pieces
                    .push(last, &payload[1..])
                    .unwrap();
                if let Some(whole) = whole {
                    self.deliver(side, &whole);
                }
                true
            }
            MSG | SIGNAL => {
                if self.nodes[side].session.holds_delivery(id) {
                    return false;
                }
                self.deliver(side, payload);
                let _ = lane;
                true
            }
            other => panic!("unexpected frame kind {other:#x}"),
        }
    }

    fn deliver(&mut self, side: usize, payload: &[u8]) {
        let field = |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().unwrap());
        let (incarnation, key, seq) = (field(1), field(9), field(17));
        let faults = self.faults;
        let node = &mut self.nodes[side];
        let next = node.expect.entry((incarnation, key)).or_insert(0);
        if faults {
            // What was in flight on a broken connection is lost: gaps, never reordering.
            assert!(
                seq >= *next,
                "{}: process {key} of incarnation {incarnation}: {seq} after {}",
                node.name,
                *next
            );
        } else {
            assert_eq!(
                seq, *next,
                "{}: process {key}: message {seq} where {} was due",
                node.name, *next
            );
        }
        *next = seq + 1;
        node.delivered += 1;
        if payload[0] == SIGNAL && !faults {
            // Nothing queued before the signal by any process of the sender is still due.
            for k in 0..KEYS {
                let before = field(25 + 8 * k as usize);
                let have = *node.expect.get(&(incarnation, k)).unwrap_or(&0);
                let have = if k == key { have - 1 } else { have };
                assert!(
                    have >= before,
                    "{}: a signal of process {key} overtook message {have} of process {k}",
                    node.name
                );
            }
        }
    }

    /// A connection breaks: what is in flight is lost; both ends' readers end.
    fn break_conn(&mut self, ci: usize) {
        self.faults = true;
        let c = &mut self.conns[ci];
        if c.broken {
            return;
        }
        c.broken = true;
        let id = c.id;
        let established = c.established;
        let initiator = c.initiator;
        let now = self.instant();
        for (side, (node, established)) in self.nodes.iter_mut().zip(established).enumerate() {
            if established {
                if let Some(Ended::Current { dropped, .. }) = node.session.lost(id) {
                    node.dropped += dropped as u64;
                }
            } else if side == initiator
                && let Some(dropped) = node.session.connect_failed(now)
            {
                node.dropped += dropped as u64;
            }
        }
    }

    /// Node `i` restarts: a new incarnation with a new session; its connections break.
    fn restart(&mut self, i: usize) {
        for ci in 0..self.conns.len() {
            self.break_conn(ci);
        }
        let inc = self.nodes[i].incarnation + 1;
        let name = self.nodes[i].name.clone();
        self.nodes[i] = Node::new(&name, inc, self.model);
    }

    /// The state, for a failure's message.
    fn describe(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let s = &n.session;
            out += &format!(
                "\n{} inc {}: queued {} bytes / {} frames, current {:?}, connecting {}, holding {}, draining {}",
                n.name,
                n.incarnation,
                s.outbound().bytes(),
                s.outbound().frames(),
                s.slot().current_id(),
                s.slot().is_connecting(),
                s.is_holding(),
                s.draining(),
            );
        }
        for c in &self.conns {
            out += &format!(
                "\nconn {} by {} incs {:?} established {:?} writer_done {:?} broken {} ended {:?} retired {:?} bufs {:?}",
                c.id,
                c.initiator,
                c.incarnations,
                c.established,
                c.writer_done,
                c.broken,
                [c.dirs[0].ended, c.dirs[1].ended],
                [c.dirs[0].retired, c.dirs[1].retired],
                c.dirs
                    .iter()
                    .map(|d| d
                        .wires
                        .iter()
                        .map(|w| (w.buf.len(), w.in_flight.len(), w.eof))
                        .collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            );
        }
        out
    }

    /// Everything queued was delivered: no queue holds anything and nothing is in flight.
    fn settled(&self) -> bool {
        self.nodes.iter().all(|n| n.session.outbound().is_empty())
            && self.conns.iter().all(|c| {
                c.dirs.iter().all(|d| {
                    d.wires
                        .iter()
                        .all(|w| w.in_flight.is_empty() && w.buf.is_empty())
                })
            })
    }
}

/// Both nodes start sending at once (a simultaneous connect), from several processes, with
/// large messages and signals mixed in; optionally with faults. Returns the simulation once
/// everything queued has been delivered.
fn run(seed: u64, model: LaneModel, faults: bool) -> Sim {
    let mut sim = Sim::new(seed, model);
    for t in 0..3_000u64 {
        for from in 0..2 {
            for key in 0..KEYS {
                if sim.rng.chance(150) {
                    let signal = sim.rng.chance(10);
                    let large = !signal && sim.rng.chance(20);
                    sim.send(from, key, large, signal);
                }
            }
        }
        if faults && t < 2_500 {
            if sim.rng.chance(3) && !sim.conns.is_empty() {
                let ci = sim.rng.below(sim.conns.len() as u64) as usize;
                sim.break_conn(ci);
            }
            if sim.rng.chance(1) {
                let i = sim.rng.below(2) as usize;
                sim.restart(i);
            }
        }
        sim.step();
    }
    // Quiet: no new messages; everything queued and in flight arrives.
    for _ in 0..20_000 {
        if sim.settled() {
            break;
        }
        // A frame still queued with nothing connected dials again, as a transport's next send
        // would after a break.
        for from in 0..2 {
            if sim.nodes[from].session.slot().is_idle()
                && !sim.nodes[from].session.outbound().is_empty()
            {
                sim.dial(from);
            }
        }
        sim.step();
    }
    assert!(
        sim.settled(),
        "seed {seed}: the simulation did not settle: {}",
        sim.describe()
    );
    sim
}

/// Runs 60 seeds without faults: nothing is dropped and each node gets all the other queued
/// (FIFO and the signals' order are asserted as frames arrive).
fn without_faults(model: LaneModel) {
    for seed in 0..60 {
        let sim = run(seed, model, false);
        for n in &sim.nodes {
            assert_eq!(n.dropped, 0, "seed {seed}: nothing is lost without faults");
        }
        let (a, b) = (&sim.nodes[0], &sim.nodes[1]);
        assert_eq!(a.queued, b.delivered, "seed {seed}: b got all a queued");
        assert_eq!(b.queued, a.delivered, "seed {seed}: a got all b queued");
    }
}

#[test]
fn one_stream_keeps_fifo_through_simultaneous_connects() {
    without_faults(LaneModel::Fragments);
}

#[test]
fn streams_keep_fifo_and_barriers_through_simultaneous_connects() {
    without_faults(LaneModel::Streams { ordinary: 3 });
}

#[test]
fn breaks_and_restarts_never_reorder_and_recover() {
    for seed in 0..40 {
        for model in [LaneModel::Fragments, LaneModel::Streams { ordinary: 2 }] {
            let sim = run(seed, model, true);
            assert!(sim.faults, "seed {seed}: faults happened");
            // The last 500 ms had no faults: each process's last message (sent then) arrived,
            // so the pair recovered whatever the faults were.
            for (from, to) in [(0, 1), (1, 0)] {
                let (s, r) = (&sim.nodes[from], &sim.nodes[to]);
                for (&k, &next) in &s.next_seq {
                    let got = *r.expect.get(&(s.incarnation, k)).unwrap_or(&0);
                    assert_eq!(got, next, "seed {seed}: {} got {k}'s last message", r.name);
                }
            }
        }
    }
}
