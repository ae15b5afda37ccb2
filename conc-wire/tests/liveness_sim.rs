//! Two connection ends' [`Liveness`] machines driven against each other on a simulated clock,
//! through a simulated link with delay, loss, partitions and paused processes: no sockets, no
//! sleeping, deterministic (loss comes from a seeded generator). Each end behaves as pooled TCP
//! does: it pings when it has written nothing for the interval, answers a ping with a pong,
//! counts every arrival as a read, and declares the peer down when its read deadline passes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use conc_wire::liveness::{Expired, Liveness};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Packet {
    Ping,
    Pong,
    Data,
}

/// How the link and the ends behave.
#[derive(Clone)]
struct World {
    interval: Duration,
    timeout: Duration,
    /// One-way delay.
    delay: Duration,
    /// Probability (per mille) that a packet is lost.
    loss_per_mille: u64,
    /// From then on, nothing crosses the link.
    partition_at: Option<Duration>,
    /// End `.0` (0 or 1) is paused (a stopped process: it reads, writes and decides nothing)
    /// from `.1` to `.2`.
    pause: Option<(usize, Duration, Duration)>,
    /// End 0 writes data every this long (a stream), from the start.
    stream_every: Option<Duration>,
    /// End 0 says goodbye then, and end 1 never closes.
    goodbye_at: Option<Duration>,
    /// How long to run.
    run: Duration,
}

impl World {
    fn default_link() -> World {
        World {
            interval: S,
            timeout: 3 * S,
            delay: MS / 10,
            loss_per_mille: 0,
            partition_at: None,
            pause: None,
            stream_every: None,
            goodbye_at: None,
            run: 3600 * S,
        }
    }
}

/// What happened to one end.
#[derive(Debug, Default)]
struct EndLog {
    pings: u64,
    down: Option<(Duration, Expired)>,
}

/// A tiny deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A packet arrives at end `to`.
    Arrive { to: usize, packet: Packet },
    /// End `end` checks its timers.
    Tick { end: usize },
}

fn simulate(w: &World, seed: u64) -> [EndLog; 2] {
    let t0 = Instant::now();
    let mut rng = Rng(seed);
    let mut ends = [
        Liveness::new(t0, w.interval, w.timeout),
        Liveness::new(t0, w.interval, w.timeout),
    ];
    let mut logs = [EndLog::default(), EndLog::default()];
    let mut queue: BinaryHeap<Reverse<(Duration, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<Reverse<(Duration, u64, Ev)>>, at: Duration, ev: Ev| {
        seq += 1;
        q.push(Reverse((at, seq, ev)));
    };
    // Each end's one pending timer (older ticks in the queue are stale and skipped).
    let mut timer: [Option<Duration>; 2] = [Some(Duration::ZERO); 2];
    for end in 0..2 {
        push(&mut queue, Duration::ZERO, Ev::Tick { end });
    }
    let mut next_data = w.stream_every;
    let paused = |end: usize, at: Duration| -> Option<Duration> {
        w.pause
            .filter(|&(e, from, to)| e == end && at >= from && at < to)
            .map(|(_, _, to)| to)
    };
    while let Some(Reverse((at, _, ev))) = queue.pop() {
        if at > w.run || logs.iter().all(|l| l.down.is_some()) {
            break;
        }
        let now = t0 + at;
        let end = match ev {
            Ev::Arrive { to, .. } | Ev::Tick { end: to } => to,
        };
        if logs[end].down.is_some() {
            continue;
        }
        if let Ev::Tick { .. } = ev {
            if timer[end] != Some(at) {
                continue;
            }
            timer[end] = None;
        }
        // A paused end does everything when it resumes.
        if let Some(resume) = paused(end, at) {
            if let Ev::Tick { .. } = ev {
                timer[end] = Some(resume);
            }
            push(&mut queue, resume, ev);
            continue;
        }
        let mut sends: Vec<Packet> = Vec::new();
        match ev {
            Ev::Arrive { to, packet } => {
                ends[to].on_read(now);
                if packet == Packet::Ping {
                    sends.push(Packet::Pong);
                }
            }
            Ev::Tick { end } => {
                if let Some(why) = ends[end].expired(now) {
                    logs[end].down = Some((at, why));
                    continue;
                }
                if end == 0
                    && let (Some(every), Some(due)) = (w.stream_every, next_data)
                    && at >= due
                {
                    sends.push(Packet::Data);
                    next_data = Some(due + every);
                }
                if end == 0
                    && let Some(g) = w.goodbye_at
                    && at >= g
                    && !ends[0].said_goodbye()
                {
                    ends[0].on_goodbye(now);
                } else if ends[end].ping_due(now) && !ends[end].said_goodbye() {
                    sends.push(Packet::Ping);
                    logs[end].pings += 1;
                }
            }
        }
        for packet in sends {
            ends[end].on_write(now);
            let lost = w.partition_at.is_some_and(|p| at >= p)
                || (w.loss_per_mille > 0 && rng.next() % 1000 < w.loss_per_mille);
            if !lost {
                push(
                    &mut queue,
                    at + w.delay,
                    Ev::Arrive {
                        to: 1 - end,
                        packet,
                    },
                );
            }
        }
        // The end's next decision: its earliest deadline (and the stream's next write).
        let mut next = (ends[end].ping_at().min(ends[end].read_deadline()) - t0).max(at);
        if end == 0
            && let Some(due) = next_data
        {
            next = next.min(due);
        }
        if let Some(g) = w.goodbye_at.filter(|_| end == 0 && !ends[0].said_goodbye()) {
            next = next.min(g);
        }
        if next == at {
            next = at + MS / 1000;
        }
        if timer[end].is_none_or(|t| next < t) {
            timer[end] = Some(next);
            push(&mut queue, next, Ev::Tick { end });
        }
    }
    logs
}

#[test]
fn an_idle_pair_stays_up_for_an_hour_pinging_once_an_interval() {
    let logs = simulate(&World::default_link(), 1);
    for (end, log) in logs.iter().enumerate() {
        assert_eq!(log.down, None, "end {end}");
        // About one ping a second, minus the seconds in which the peer's ping was answered
        // (a pong is a write too).
        assert!(
            (1000..=3601).contains(&log.pings),
            "end {end}: {} pings",
            log.pings
        );
    }
}

#[test]
fn a_partition_is_seen_by_both_ends_within_the_bound() {
    let w = World {
        partition_at: Some(100 * S),
        ..World::default_link()
    };
    let logs = simulate(&w, 2);
    for (end, log) in logs.iter().enumerate() {
        let (at, why) = log.down.expect("seen down");
        assert_eq!(why, Expired::Silent, "end {end}");
        // Down exactly the timeout after the last packet it read, which came before the cut.
        assert!(
            at > 100 * S && at <= 100 * S + w.timeout,
            "end {end}: {at:?}"
        );
    }
}

#[test]
fn a_peer_paused_for_a_second_is_not_declared_down() {
    for pause in [S, 2 * S] {
        let w = World {
            pause: Some((1, 50 * S, 50 * S + pause)),
            run: 120 * S,
            ..World::default_link()
        };
        let logs = simulate(&w, 3);
        assert_eq!(logs[0].down, None, "paused {pause:?}");
        assert_eq!(logs[1].down, None, "paused {pause:?}");
    }
}

#[test]
fn a_peer_paused_longer_than_the_bound_is_declared_down() {
    let w = World {
        pause: Some((1, 50 * S, 60 * S)),
        run: 120 * S,
        ..World::default_link()
    };
    let logs = simulate(&w, 4);
    let (at, why) = logs[0].down.expect("the live end sees the paused one down");
    assert_eq!(why, Expired::Silent);
    assert!(at > 50 * S && at <= 50 * S + w.timeout, "{at:?}");
}

#[test]
fn delay_and_some_loss_cause_no_false_positive() {
    let w = World {
        delay: 300 * MS,
        loss_per_mille: 50,
        ..World::default_link()
    };
    for seed in 10..14 {
        let logs = simulate(&w, seed);
        assert_eq!(logs[0].down, None, "seed {seed}");
        assert_eq!(logs[1].down, None, "seed {seed}");
    }
}

#[test]
fn a_streaming_end_sends_no_pings_and_its_peer_keeps_it_alive() {
    let w = World {
        stream_every: Some(MS),
        run: 60 * S,
        ..World::default_link()
    };
    let logs = simulate(&w, 5);
    assert_eq!(logs[0].down, None);
    assert_eq!(logs[1].down, None);
    assert_eq!(
        logs[0].pings, 0,
        "the streaming end always has something to write"
    );
    assert!(
        logs[1].pings >= 50,
        "the reading end pings: {}",
        logs[1].pings
    );
}

#[test]
fn a_goodbye_unanswered_ends_the_connection_after_the_grace() {
    let w = World {
        goodbye_at: Some(10 * S),
        // A silence bound far above the grace: the grace decides.
        timeout: 600 * S,
        run: 120 * S,
        ..World::default_link()
    };
    let logs = simulate(&w, 6);
    let (at, why) = logs[0]
        .down
        .expect("the end that said goodbye stops reading");
    assert_eq!(why, Expired::GoodbyeUnanswered);
    assert_eq!(at, 10 * S + Liveness::GOODBYE_GRACE);
}
