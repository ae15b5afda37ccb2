//! 32 cluster members, each an OS process (`cluster_node`) in a network namespace of its own
//! with its own IP address, joined by a bridge: all join through one seed; each sees 32
//! members and process group g holds 32; one member stopped with SIGSTOP is seen down by all
//! others and rejoins after SIGCONT; one member's link is cut (a partition of it from the rest)
//! and healed, and every view converges back to all 32; the link between two members only is
//! cut (they lose their connection, while both still reach the others) and healed, and again
//! every view and the group converge to all 32.
//!
//! The network: a "switch" namespace holds a bridge; each member's namespace holds one end of
//! a veth pair (address `10.214.S.(i+1)/24`, where S is derived from the test's PID), the other
//! end is a port of the bridge. Nothing is added to the host's namespace (the veth pairs are
//! made there and moved at once), and deleting the namespaces removes everything: a drop guard
//! does, whatever happens. The partition is `ip link set <port> down` on the member's bridge
//! port (its traffic to everyone is dropped), the heal is `up`; the cut between two members is
//! a blackhole route to each other's address in both namespaces (iproute2 only, no firewall
//! tool needed).
//!
//! Measured and printed (not asserted: waited for, with generous deadlines): the time until
//! every other member saw the stopped member down, the time until it was back in every view,
//! the partition's detection and healing times, and the resident memory (VmRSS from
//! /proc/PID/status) of idle members at 1, 8 and 32 members, from which the memory per member
//! connection follows. Start staged: the seed alone, then 7 members, then 24 at once.
//!
//! It needs root and iproute2; where namespaces cannot be created it fails and says why, unless
//! `CONC_ALLOW_SKIP=1` is set, in which case it prints why and skips.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Example, KillOnDrop, Lines, TempCookie, effective_uid, ip};

mod common;

static CLUSTER_NODE: Example = Example::new("cluster_node");

/// Members in the cluster.
const MEMBERS: usize = 32;
/// Generous bound on each awaited state: a failure means it never came.
const DEADLINE: Duration = Duration::from_secs(90);

/// A switch namespace with a bridge, and one namespace per member with a veth pair to the
/// bridge; all removed on drop.
struct Network {
    /// The switch's namespace (holds the bridge and the members' ports).
    switch: String,
    /// Each member's namespace.
    members: Vec<String>,
    /// Each member's port on the bridge (in the switch's namespace).
    ports: Vec<String>,
    /// Each member's address.
    addrs: Vec<String>,
    /// veth names made in the host's namespace and not yet moved out (deleted on drop).
    pending: Vec<String>,
}

impl Network {
    /// Creates the namespaces, the bridge and the links, or says why it cannot.
    fn create(n: usize) -> Result<Network, String> {
        let uid = effective_uid();
        if uid != "0" {
            return Err(format!(
                "not root (effective uid {uid}): network namespaces need CAP_SYS_ADMIN"
            ));
        }
        ip(&["-V"]).map_err(|e| format!("iproute2 is not usable: {e}"))?;
        let pid = std::process::id();
        let subnet = pid % 250 + 1;
        let mut net = Network {
            switch: format!("conc-c-{pid}-sw"),
            members: Vec::new(),
            ports: Vec::new(),
            addrs: Vec::new(),
            pending: Vec::new(),
        };
        // From here on, drop cleans up whatever was made.
        ip(&["netns", "add", &net.switch])?;
        ip(&["-n", &net.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.switch, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("conc-c-{pid}-{i}");
            ip(&["netns", "add", &ns])?;
            net.members.push(ns.clone());
            // Interface names are at most 15 bytes; both ends are made in the host's
            // namespace, so they carry the PID to be unique there for the moment they live.
            let inner = format!("c{pid}m{i}");
            let port = format!("c{pid}p{i}");
            ip(&["link", "add", &inner, "type", "veth", "peer", "name", &port])?;
            net.pending.push(inner.clone());
            ip(&["link", "set", &port, "netns", &net.switch])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            net.pending.pop();
            ip(&["-n", &net.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &net.switch, "link", "set", &port, "up"])?;
            let addr = format!("10.214.{subnet}.{}", i + 1);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            net.ports.push(port);
            net.addrs.push(addr);
        }
        Ok(net)
    }

    /// Cuts (`cut` true) or heals the link between members `i` and `j` only: a blackhole
    /// route to the other's address in each one's namespace, so their packets to each other
    /// are dropped while both still reach everyone else.
    fn set_pair(&self, i: usize, j: usize, cut: bool) {
        for (from, to) in [(i, j), (j, i)] {
            ip(&[
                "-n",
                &self.members[from],
                "route",
                if cut { "add" } else { "del" },
                "blackhole",
                &format!("{}/32", self.addrs[to]),
            ])
            .unwrap();
        }
    }

    /// Sets member `i`'s bridge port down (`up` false: the member is cut off) or up.
    fn set_port(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.ports[i],
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth ends in it, and so the pairs.
        for ns in &self.members {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
        for dev in &self.pending {
            let _ = ip(&["link", "del", dev]);
        }
    }
}

/// One `cluster_node` process in its namespace.
struct Member {
    name: String,
    child: KillOnDrop,
    out: Arc<Lines>,
    err: Arc<Lines>,
}

impl Member {
    fn start(cookie: &TempCookie, ns: &str, addr: &str, seed: Option<&str>) -> Member {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(CLUSTER_NODE.path())
            .args([
                "--listen",
                &format!("{addr}:0"),
                "--transport",
                "pooled-tcp",
                "--group",
                "g",
                "--cookie-file",
                cookie.arg(),
            ])
            .env_remove("CONC_COOKIE")
            .env("HOME", cookie.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(seed) = seed {
            cmd.args(["--seed", seed]);
        }
        let mut child = cmd.spawn().unwrap();
        let (out, _) = Lines::read_from(child.stdout.take().unwrap());
        let (err, _) = Lines::read_from(child.stderr.take().unwrap());
        let child = KillOnDrop(child);
        let name = out.wait_for_prefix(DEADLINE, "node ").unwrap_or_else(|| {
            panic!(
                "no node line from the member in {ns}:\n{}\n{}",
                out.text(),
                err.text()
            )
        });
        Member {
            name,
            child,
            out,
            err,
        }
    }

    /// `ip netns exec` execs the program: the child's pid is the member's.
    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} failed");
    }

    /// The resident set size in KiB, from /proc/PID/status.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Waits until the last line starting with `prefix` says `n`.
    fn wait_latest(&self, prefix: &str, n: usize, deadline: Instant) {
        let found = self.out.wait_until(
            deadline.saturating_duration_since(Instant::now()),
            |lines| (latest(lines, prefix) == Some(n)).then_some(()),
        );
        assert!(
            found.is_some(),
            "{} never settled at `{prefix}{n}` (last: {:?}):\n{}\n--- stderr:\n{}",
            self.name,
            latest(&self.out.snapshot(), prefix),
            self.out.text(),
            self.err.text()
        );
    }

    /// Waits for the line `line` after the first `after` lines.
    fn wait_line_after(&self, after: usize, line: &str, deadline: Instant) {
        let found = self.out.wait_until(
            deadline.saturating_duration_since(Instant::now()),
            |lines| lines.iter().skip(after).any(|l| l == line).then_some(()),
        );
        assert!(
            found.is_some(),
            "{} never printed {line:?}:\n{}\n--- stderr:\n{}",
            self.name,
            self.out.text(),
            self.err.text()
        );
    }

    fn lines(&self) -> usize {
        self.out.snapshot().len()
    }
}

/// The number in the last line starting with `prefix`.
fn latest(lines: &[String], prefix: &str) -> Option<usize> {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|n| n.parse().ok())
}

/// Waits until every member's view holds `n` members and group g holds `n` processes.
fn wait_all(members: &[Member], n: usize) {
    let deadline = Instant::now() + DEADLINE;
    for m in members {
        m.wait_latest("members ", n, deadline);
    }
    for m in members {
        m.wait_latest("group g ", n, deadline);
    }
    // Settled everywhere at once: nobody moved away while the later ones were waited for.
    for m in members {
        m.wait_latest("members ", n, deadline);
    }
}

/// Mean and maximum VmRSS of `members`, in KiB.
fn rss(members: &[Member]) -> (u64, u64) {
    let all: Vec<u64> = members.iter().map(Member::rss_kib).collect();
    let sum: u64 = all.iter().sum();
    (sum / all.len() as u64, *all.iter().max().unwrap())
}

#[test]
fn thirty_two_members_in_namespaces() {
    let net = match Network::create(MEMBERS) {
        Ok(net) => net,
        Err(reason) => {
            common::precondition_missing(&format!("cannot create network namespaces: {reason}"));
            return;
        }
    };
    // Built before the clock starts.
    CLUSTER_NODE.path();
    let cookie = TempCookie::new("cluster-netns");
    let t = Instant::now();

    // The seed alone: one member.
    let seed = Member::start(&cookie, &net.members[0], &net.addrs[0], None);
    let seed_name = seed.name.clone();
    let mut members = vec![seed];
    members[0].wait_latest("group g ", 1, Instant::now() + DEADLINE);
    let (rss1, _) = rss(&members);

    // 7 more, then 24 at once, all through the seed.
    let mut means = Vec::new();
    for stage in [8, MEMBERS] {
        for i in members.len()..stage {
            members.push(Member::start(
                &cookie,
                &net.members[i],
                &net.addrs[i],
                Some(&seed_name),
            ));
        }
        wait_all(&members, stage);
        let (mean, max) = rss(&members);
        println!(
            "{stage} members: all see {stage}, group g holds {stage} ({:?} since the first \
             start); VmRSS per member mean {mean} KiB, max {max} KiB",
            t.elapsed()
        );
        means.push(mean);
    }
    let (rss8, rss32) = (means[0], means[1]);
    println!(
        "idle member VmRSS: {rss1} KiB alone, {rss8} KiB among 8, {rss32} KiB among 32; per \
         member connection (and member entry): ({rss32} - {rss8}) / 24 = {:.0} KiB",
        (rss32 as f64 - rss8 as f64) / 24.0
    );

    // SIGSTOP one: every other member sees it down; SIGCONT: it is back in every view.
    let stopped = 5;
    let stopped_name = members[stopped].name.clone();
    let marks: Vec<usize> = members.iter().map(Member::lines).collect();
    let t = Instant::now();
    members[stopped].signal("-STOP");
    let deadline = Instant::now() + DEADLINE;
    for (i, m) in members.iter().enumerate() {
        if i != stopped {
            m.wait_line_after(
                marks[i],
                &format!("member down {stopped_name} unresponsive"),
                deadline,
            );
        }
    }
    println!(
        "SIGSTOP: seen down by all {} others after {:?}",
        MEMBERS - 1,
        t.elapsed()
    );
    let marks: Vec<usize> = members.iter().map(Member::lines).collect();
    let t = Instant::now();
    members[stopped].signal("-CONT");
    let deadline = Instant::now() + DEADLINE;
    for (i, m) in members.iter().enumerate() {
        if i != stopped {
            m.wait_line_after(marks[i], &format!("member up {stopped_name}"), deadline);
        }
    }
    println!(
        "SIGCONT: back up at all {} others after {:?}",
        MEMBERS - 1,
        t.elapsed()
    );
    wait_all(&members, MEMBERS);
    println!(
        "SIGCONT: all views and group g at 32 after {:?}",
        t.elapsed()
    );

    // Cut one member's link (a partition of it from the other 31), then heal it.
    let cut = 9;
    let cut_name = members[cut].name.clone();
    let marks: Vec<usize> = members.iter().map(Member::lines).collect();
    let t = Instant::now();
    net.set_port(cut, false);
    let deadline = Instant::now() + DEADLINE;
    for (i, m) in members.iter().enumerate() {
        if i != cut {
            m.wait_line_after(
                marks[i],
                &format!("member down {cut_name} unresponsive"),
                deadline,
            );
        }
    }
    println!(
        "link cut: {cut_name} seen down by all {} others after {:?}",
        MEMBERS - 1,
        t.elapsed()
    );
    members[cut].wait_latest("members ", 1, deadline);
    println!(
        "link cut: {cut_name} sees itself alone after {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    net.set_port(cut, true);
    wait_all(&members, MEMBERS);
    println!(
        "link healed: all views and group g at 32 after {:?}",
        t.elapsed()
    );

    // Cut the link between two members only (the others still reach both: an overlapping
    // partition, what Erlang's `prevent_overlapping_partitions` is about). Their connection
    // to each other is lost, so each one's group g loses the other's member; heal it, and
    // every view and the group converge to all 32 again: no one-sided state stays.
    let (a, b) = (12, 20);
    let marks: Vec<usize> = members.iter().map(Member::lines).collect();
    let t = Instant::now();
    net.set_pair(a, b, true);
    let deadline = Instant::now() + DEADLINE;
    for i in [a, b] {
        members[i].wait_line_after(marks[i], "group g 31", deadline);
    }
    println!(
        "pair cut: {} and {} lost each other's group member after {:?}",
        members[a].name,
        members[b].name,
        t.elapsed()
    );
    let t = Instant::now();
    net.set_pair(a, b, false);
    wait_all(&members, MEMBERS);
    println!(
        "pair healed: all views and group g at 32 after {:?}",
        t.elapsed()
    );
}
