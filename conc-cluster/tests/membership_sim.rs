//! 200 membership machines ([`conc_cluster::membership::Machine`], the code every node runs)
//! on a simulated clock and a simulated network: no sockets, deterministic. They join through
//! one seed at once (a start-up storm), 10 % fail at once, the rest split into two halves that
//! cannot reach each other, and the halves heal. After each step the test waits (in simulated
//! time) until every live member sees exactly the live members of its side, asserts that no
//! member sees one that does not see it back, and prints the simulated time each step took
//! and the membership traffic per member per second.
//!
//! Run with `--nocapture` to see the figures (they are in the README's "Cluster" section).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

use conc_cluster::membership::{Machine, MachineTimer, Output};
use conc_cluster::{ClusterConfig, MemberEvent};

const N: usize = 200;

enum What {
    Deliver {
        to: usize,
        from: usize,
        packet: Vec<u8>,
    },
    Timer {
        member: usize,
        timer: MachineTimer,
    },
}

struct Sim {
    /// Simulated time, microseconds.
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    pending: HashMap<u64, What>,
    machines: Vec<Machine>,
    index: HashMap<String, usize>,
    alive: Vec<bool>,
    /// `side[i]`: members can talk only within one side.
    side: Vec<u8>,
    rng: u64,
    /// A paused member handles nothing before this time (its packets and timers wait).
    paused_until: Vec<u64>,
    /// Down events seen by any member: (who saw it, the member that went down).
    downs: Vec<(usize, String)>,
    packets: u64,
    bytes: u64,
}

impl Sim {
    fn new(n: usize, config: &ClusterConfig) -> Sim {
        let mut machines = Vec::new();
        let mut index = HashMap::new();
        for i in 0..n {
            let name = format!("10.0.{}.{}:4369", i / 250, i % 250 + 1);
            index.insert(name.clone(), i);
            machines.push(Machine::new(&name, 1_000 + i as u64, 0, config, i as u64));
        }
        Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            machines,
            index,
            alive: vec![true; n],
            side: vec![0; n],
            rng: 0x9E37_79B9_7F4A_7C15,
            paused_until: vec![0; n],
            downs: Vec::new(),
            packets: 0,
            bytes: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn push(&mut self, at: u64, what: What) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, what);
    }

    /// Takes the outputs of member `i`: packets go on the network (0.2 to 2 ms), timers on
    /// the clock.
    fn drain(&mut self, i: usize) {
        let outputs: Vec<Output> = self.machines[i].drain().collect();
        for out in outputs {
            match out {
                Output::Send { to, packet } => {
                    let Some(&to) = self.index.get(&to) else {
                        continue;
                    };
                    self.packets += 1;
                    self.bytes += packet.len() as u64;
                    let latency = 200 + self.rand() % 1_800;
                    self.push(
                        self.now + latency,
                        What::Deliver {
                            to,
                            from: i,
                            packet,
                        },
                    );
                }
                Output::Timer { after, timer } => {
                    let at = self.now + after.as_micros() as u64;
                    self.push(at, What::Timer { member: i, timer });
                }
                Output::Event(MemberEvent::Down { member, .. }) => {
                    self.downs.push((i, member.name));
                }
                _ => {}
            }
        }
    }

    /// Runs until `until` (simulated microseconds).
    fn run_until(&mut self, until: u64) {
        while let Some(&Reverse((at, seq))) = self.queue.peek() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(what) = self.pending.remove(&seq) else {
                continue;
            };
            let target = match &what {
                What::Deliver { to, .. } => *to,
                What::Timer { member, .. } => *member,
            };
            if self.paused_until[target] > at {
                // A paused process: what reaches it waits, in order, until it resumes.
                self.push(self.paused_until[target], what);
                continue;
            }
            match what {
                What::Deliver { to, from, packet } => {
                    if self.alive[to] && self.alive[from] && self.side[to] == self.side[from] {
                        let _ = self.machines[to].handle_packet(&packet);
                        self.drain(to);
                    }
                }
                What::Timer { member, timer } => {
                    if self.alive[member] {
                        let _ = self.machines[member].handle_timer(timer);
                        self.drain(member);
                    }
                }
            }
        }
        self.now = until;
    }

    /// The live members that `i` should see: the live ones of its side.
    fn expected(&self, i: usize) -> BTreeSet<String> {
        (0..self.machines.len())
            .filter(|&j| self.alive[j] && self.side[j] == self.side[i])
            .map(|j| self.machines[j].me().name.clone())
            .collect()
    }

    fn view(&self, i: usize) -> BTreeSet<String> {
        self.machines[i]
            .members()
            .into_iter()
            .map(|m| m.name)
            .collect()
    }

    fn converged(&self) -> bool {
        let mut count = [0usize; 2];
        for j in (0..self.machines.len()).filter(|&j| self.alive[j]) {
            count[usize::from(self.side[j])] += 1;
        }
        // The sizes first (cheap), then the names.
        (0..self.machines.len())
            .filter(|&i| self.alive[i])
            .all(|i| self.machines[i].len() == count[usize::from(self.side[i])])
            && (0..self.machines.len())
                .filter(|&i| self.alive[i])
                .all(|i| self.view(i) == self.expected(i))
    }

    /// Advances in 10 ms steps until converged (joining members that are still alone ask
    /// the seed again every second, as the node's driver does with backoff); returns the
    /// simulated time it took. Panics after `limit`.
    fn converge(&mut self, limit: Duration, seed: Option<usize>) -> Duration {
        let start = self.now;
        let step = 50_000;
        let mut next_retry = self.now + 1_000_000;
        while !self.converged() {
            assert!(
                self.now - start < limit.as_micros() as u64,
                "not converged after {limit:?}: {}",
                self.describe()
            );
            self.run_until(self.now + step);
            // SIM_DEBUG=1 shows the progress every 2 simulated seconds.
            if std::env::var("SIM_DEBUG").is_ok() && (self.now - start).is_multiple_of(2_000_000) {
                eprintln!("{} s: {}", (self.now - start) / 1_000_000, self.describe());
            }
            if let Some(s) = seed
                && self.now >= next_retry
            {
                next_retry = self.now + 1_000_000;
                let seed_name = self.machines[s].me().name.clone();
                for i in 0..self.machines.len() {
                    if self.alive[i] && i != s && self.machines[i].len() == 1 {
                        let _ = self.machines[i].join(&seed_name);
                        self.drain(i);
                    }
                }
            }
        }
        self.assert_symmetric();
        Duration::from_micros(self.now - start)
    }

    /// No live member sees a member that does not see it back.
    fn assert_symmetric(&self) {
        for i in (0..self.machines.len()).filter(|&i| self.alive[i]) {
            let me = self.machines[i].me().name.clone();
            for other in self.view(i) {
                let j = self.index[&other];
                assert!(
                    self.alive[j] && self.view(j).contains(&me),
                    "{me} sees {other}, which does not see it"
                );
            }
        }
    }

    fn describe(&self) -> String {
        let mut wrong = 0;
        let mut sizes = BTreeSet::new();
        for i in (0..self.machines.len()).filter(|&i| self.alive[i]) {
            if self.view(i) != self.expected(i) {
                wrong += 1;
                sizes.insert(self.view(i).len());
            }
        }
        format!("{wrong} members with a wrong view (sizes {sizes:?})")
    }
}

#[test]
fn two_hundred_members_join_fail_split_and_heal() {
    let config = ClusterConfig::new();
    let mut sim = Sim::new(N, &config);
    // A start-up storm: all join through member 0 at once.
    let seed_name = sim.machines[0].me().name.clone();
    for i in 1..N {
        sim.machines[i].join(&seed_name).unwrap();
        sim.drain(i);
    }
    let join = sim.converge(Duration::from_secs(120), Some(0));

    // Steady state: traffic over 20 simulated seconds.
    let (p0, b0, t0) = (sim.packets, sim.bytes, sim.now);
    sim.run_until(sim.now + 20_000_000);
    let secs = (sim.now - t0) as f64 / 1e6;
    let per_member_packets = (sim.packets - p0) as f64 / N as f64 / secs;
    let per_member_bytes = (sim.bytes - b0) as f64 / N as f64 / secs;
    assert!(sim.converged(), "the view changed in a steady state");

    // 10 % fail at once.
    for i in (0..N).filter(|i| i % 10 == 7) {
        sim.alive[i] = false;
    }
    let fail = sim.converge(Duration::from_secs(120), None);

    // Split the live members into two halves.
    let live: Vec<usize> = (0..N).filter(|&i| sim.alive[i]).collect();
    for &i in &live[live.len() / 2..] {
        sim.side[i] = 1;
    }
    let split = sim.converge(Duration::from_secs(120), None);

    // Heal.
    for s in sim.side.iter_mut() {
        *s = 0;
    }
    let heal = sim.converge(Duration::from_secs(300), None);

    println!("simulation: {N} members, default ClusterConfig, 0.2-2 ms latency");
    println!(
        "join through one seed: converged in {:.1} s simulated",
        join.as_secs_f64()
    );
    println!(
        "steady state: {per_member_packets:.1} packets and {per_member_bytes:.0} bytes per member per second"
    );
    println!(
        "10% fail at once: converged in {:.1} s simulated",
        fail.as_secs_f64()
    );
    println!(
        "split in halves: converged in {:.1} s simulated",
        split.as_secs_f64()
    );
    println!("heal: converged in {:.1} s simulated", heal.as_secs_f64());
}

/// Eight members; one is paused (its packets and timers wait, as under SIGSTOP) for `pause`;
/// `phase` later than 5 s after joining (against the probe schedule); then the cluster runs 20
/// simulated seconds. Returns the down events seen.
fn pause_one(pause: Duration, phase: Duration) -> Vec<(usize, String)> {
    let config = ClusterConfig::new();
    let mut sim = Sim::new(8, &config);
    let seed_name = sim.machines[0].me().name.clone();
    for i in 1..8 {
        sim.machines[i].join(&seed_name).unwrap();
        sim.drain(i);
    }
    sim.converge(Duration::from_secs(60), Some(0));
    // Let the join settle: every member has probed a few times.
    sim.run_until(sim.now + 5_000_000 + phase.as_micros() as u64);
    sim.downs.clear();
    sim.paused_until[3] = sim.now + pause.as_micros() as u64;
    sim.run_until(sim.now + 20_000_000);
    assert!(sim.converged(), "{}", sim.describe());
    sim.downs.clone()
}

#[test]
fn a_member_paused_for_one_second_is_not_declared_down() {
    // Several pause phases against the probe schedule: none is declared down.
    for phase_ms in [0, 130, 270, 410] {
        let downs = pause_one(Duration::from_secs(1), Duration::from_millis(phase_ms));
        assert!(downs.is_empty(), "pause of 1 s: {downs:?}");
    }
}

#[test]
fn a_member_paused_for_four_seconds_is_declared_down_and_rejoins() {
    let downs = pause_one(Duration::from_secs(4), Duration::ZERO);
    let paused = "10.0.0.4:4369";
    assert!(
        downs.iter().any(|(_, name)| name == paused),
        "a 4 s pause went unnoticed: {downs:?}"
    );
    // and `pause_one` checked that the views converged again, with it back in.
}

/// Joins `n` members through member 0, lets them settle, fails the members `fail` at once and
/// returns the simulated time until every live member's view has lost them (in 50 ms steps),
/// and whether any live member was ever declared down (a false positive).
fn detect(n: usize, config: &ClusterConfig, fail: &[usize]) -> (Duration, bool) {
    let mut sim = Sim::new(n, config);
    let seed_name = sim.machines[0].me().name.clone();
    for i in 1..n {
        sim.machines[i].join(&seed_name).unwrap();
        sim.drain(i);
    }
    sim.converge(Duration::from_secs(120), Some(0));
    sim.run_until(sim.now + 5_000_000);
    sim.downs.clear();
    for &i in fail {
        sim.alive[i] = false;
    }
    let took = sim.converge(Duration::from_secs(120), None);
    let failed: BTreeSet<String> = fail
        .iter()
        .map(|&i| sim.machines[i].me().name.clone())
        .collect();
    let false_positive = sim.downs.iter().any(|(_, name)| !failed.contains(name));
    (took, false_positive)
}

/// How long until every live member has seen one failed member down, by cluster size, with
/// the default configuration (the worst of three failed members at 8 and 32 members, one at
/// 200; 10 % at once at 200 is measured by `two_hundred_members_join_fail_split_and_heal`).
/// Printed for the README; no live member is ever declared down.
#[test]
fn detection_time_by_size() {
    let config = ClusterConfig::new();
    for (n, fail) in [(8, &[3usize, 5, 7][..]), (32, &[7, 19, 30]), (200, &[123])] {
        let mut worst = Duration::ZERO;
        for &k in fail {
            let (took, false_positive) = detect(n, &config, &[k]);
            assert!(
                !false_positive,
                "{n} members: a live member was declared down"
            );
            worst = worst.max(took);
        }
        println!(
            "{n} members: one failed member seen down by every other member after {:.2} s \
             simulated (worst of {})",
            worst.as_secs_f64(),
            fail.len()
        );
    }
}

/// Eight members that never probe (a probe period of an hour): only gossip and suspicions
/// raised from outside SWIM (a lost connection, `Machine::suspect`) move the views.
fn no_probes() -> Sim {
    let config = ClusterConfig::new().with_probe_period(Duration::from_secs(3600));
    let mut sim = Sim::new(8, &config);
    let seed_name = sim.machines[0].me().name.clone();
    for i in 1..8 {
        sim.machines[i].join(&seed_name).unwrap();
        sim.drain(i);
    }
    sim.converge(Duration::from_secs(60), Some(0));
    sim.run_until(sim.now + 2_000_000);
    sim.downs.clear();
    sim
}

#[test]
fn a_lost_connection_declares_a_dead_member_down_without_a_probe() {
    let mut sim = no_probes();
    sim.alive[3] = false;
    let name = sim.machines[3].me().name.clone();
    sim.machines[0].suspect(&name).unwrap();
    sim.drain(0);
    // No member probes: only the suspicion's own timer can declare it down.
    sim.converge(Duration::from_secs(30), None);
    assert!(sim.downs.iter().any(|(i, n)| *i == 0 && *n == name));
}

#[test]
fn a_live_member_suspected_after_a_lost_connection_refutes() {
    let mut sim = no_probes();
    let name = sim.machines[3].me().name.clone();
    sim.machines[0].suspect(&name).unwrap();
    sim.drain(0);
    sim.run_until(sim.now + 10_000_000);
    assert!(sim.downs.is_empty(), "{:?}", sim.downs);
    assert!(sim.converged(), "{}", sim.describe());
}
