//! The seed's two machines as separate OS processes: the `machine1` and `machine2` examples
//! (and the `demo`) are built with cargo, run as children on loopback with private temporary
//! cookie files, and checked through their output and exit status, on every transport.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Proc, TempCookie};

mod common;

/// How long Machine 1 may take to print its address.
const START: Duration = Duration::from_secs(30);
/// How long a Machine 2 run may take (generous: a bound against hangs, not a performance bar).
const RUN: Duration = Duration::from_secs(60);
/// How long a failing Machine 2 may take to give up.
const FAIL: Duration = Duration::from_secs(30);

/// The transports compiled into this test (and, with the same features, into the examples).
fn transports() -> Vec<&'static str> {
    conc_node::transport_names()
}

// ---------------------------------------------------------------------------------------------
// Building the examples.

struct Binaries {
    machine1: PathBuf,
    machine2: PathBuf,
    demo: PathBuf,
}

/// The example binaries, built once per test process (cargo's lock serializes the builds of
/// tests running in parallel processes; all but the first are no-ops).
fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(build_examples)
}

fn build_examples() -> Binaries {
    let features: &[&str] = if transports().contains(&"quic") {
        &["quic"]
    } else {
        &[]
    };
    let [machine1, machine2, demo] =
        common::build_examples(&["machine1", "machine2", "demo"], features)
            .try_into()
            .expect("one executable per example");
    Binaries {
        machine1,
        machine2,
        demo,
    }
}

// ---------------------------------------------------------------------------------------------
// The machines and their output.

/// Machine 1 on a free port of 127.0.0.1, and the address it printed.
struct Machine1 {
    proc: Proc,
    address: String,
}

impl Machine1 {
    fn start(transport: &str, cookie: &TempCookie) -> Machine1 {
        let proc = Proc::spawn(
            "machine1",
            &binaries().machine1,
            &[
                "--listen",
                "127.0.0.1:0",
                "--transport",
                transport,
                "--cookie-file",
                cookie.arg(),
            ],
            Some(cookie.dir()),
        );
        let Some(line) = proc
            .stdout
            .wait_for(START, |l| l.starts_with("listening on conc://"))
        else {
            panic!("machine1 ({transport}) did not print its address\n{proc}");
        };
        let address = line["listening on conc://".len()..].trim().to_string();
        assert!(
            address.starts_with("127.0.0.1:") && !address.ends_with(":0"),
            "machine1 should print its real address: {line}"
        );
        Machine1 { proc, address }
    }

    fn wait_for_log(&self, timeout: Duration) -> bool {
        self.proc
            .stdout
            .wait_for(timeout, |l| l == "Log Message!")
            .is_some()
    }

    fn log_count(&self) -> usize {
        self.proc
            .stdout
            .snapshot()
            .iter()
            .filter(|l| *l == "Log Message!")
            .count()
    }
}

/// A finished Machine 2 run.
struct Run {
    status: ExitStatus,
    elapsed: Duration,
    proc: Proc,
}

impl Run {
    fn stdout(&self) -> Vec<String> {
        self.proc.stdout.snapshot()
    }

    fn stderr(&self) -> String {
        self.proc.stderr.snapshot().join("\n")
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "machine2 exited with {} after {:?}",
            self.status, self.elapsed
        )?;
        write!(f, "{}", self.proc)
    }
}

/// Runs Machine 2 with `args` (plus transport and cookie) to completion, at most `timeout`.
fn machine2(transport: &str, cookie: &TempCookie, args: &[&str], timeout: Duration) -> Run {
    let mut all = vec!["--transport", transport, "--cookie-file", cookie.arg()];
    all.extend_from_slice(args);
    let started = Instant::now();
    let mut proc = Proc::spawn("machine2", &binaries().machine2, &all, Some(cookie.dir()));
    let Some(status) = proc.wait_exit(timeout) else {
        panic!("machine2 {all:?} did not exit within {timeout:?}\n{proc}");
    };
    Run {
        status,
        elapsed: started.elapsed(),
        proc,
    }
}

/// A loopback port where nothing listens (TCP and UDP), as far as can be told.
fn dead_port() -> u16 {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    // The same port on UDP (QUIC) is most likely free too; bind it to be sure, then let go.
    let _udp = std::net::UdpSocket::bind(("127.0.0.1", port));
    port
}

/// `ok <microseconds>` lines.
fn ok_lines(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| {
            l.strip_prefix("ok ")
                .is_some_and(|n| n.parse::<u64>().is_ok())
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// The seed's scenario on each transport.

fn seed_scenario(transport: &str) {
    let cookie = TempCookie::new("conc-two-machines");
    let m1 = Machine1::start(transport, &cookie);
    let run = machine2(transport, &cookie, &["--connect", &m1.address], RUN);
    assert!(run.status.success(), "{run}{}", m1.proc);
    assert_eq!(run.stdout(), ["Message Received!"], "{run}");
    assert!(
        m1.wait_for_log(Duration::from_secs(10)),
        "machine1 did not print the log message\n{}{run}",
        m1.proc
    );
    assert_eq!(m1.log_count(), 1, "{}", m1.proc);
}

#[test]
fn seed_scenario_per_message_tcp() {
    seed_scenario("per-message-tcp");
}

#[test]
fn seed_scenario_pooled_tcp() {
    seed_scenario("pooled-tcp");
}

#[test]
fn seed_scenario_quic() {
    // The tests crate enables every transport feature of conc-node, quic included.
    assert!(
        transports().contains(&"quic"),
        "this build has no quic transport"
    );
    seed_scenario("quic");
}

#[test]
fn machine2_accepts_the_uri_machine1_prints() {
    let cookie = TempCookie::new("conc-two-machines");
    let m1 = Machine1::start("per-message-tcp", &cookie);
    let uri = format!("conc://{}", m1.address);
    // The default transport is per-message TCP, as in the seed.
    let args = ["--connect", &uri, "--cookie-file", cookie.arg()];
    let mut proc = Proc::spawn("machine2", &binaries().machine2, &args, Some(cookie.dir()));
    let status = proc.wait_exit(RUN).expect("machine2 exits");
    assert!(status.success(), "{proc}");
    assert_eq!(proc.stdout.snapshot(), ["Message Received!"], "{proc}");
    assert!(m1.wait_for_log(Duration::from_secs(10)), "{}", m1.proc);
}

// ---------------------------------------------------------------------------------------------
// Failures.

#[test]
fn wrong_cookie_is_refused() {
    for transport in transports() {
        let cookie = TempCookie::new("conc-two-machines");
        let other = TempCookie::new("conc-two-machines");
        let mut m1 = Machine1::start(transport, &cookie);
        let run = machine2(transport, &other, &["--connect", &m1.address], FAIL);
        assert!(!run.status.success(), "{transport}: {run}");
        assert!(
            run.stderr().contains("error: call to process1 failed"),
            "{transport}: {run}"
        );
        assert!(run.stdout().is_empty(), "{transport}: {run}");
        // Machine 1 saw the wrong cookie and refused the peer, so nothing of it was delivered.
        assert!(
            m1.proc
                .stderr
                .wait_for(START, |l| l.contains("peer refused"))
                .is_some(),
            "{transport}: machine1 did not report the refused peer\n{}",
            m1.proc
        );
        assert_eq!(m1.log_count(), 0, "{transport}: {}", m1.proc);
        assert!(m1.proc.is_running(), "{transport}: {}", m1.proc);
        // Machine 1 is unharmed and still serves the right cookie; the one log message it
        // printed is the good run's, which that run confirmed delivered before exiting.
        let good = machine2(transport, &cookie, &["--connect", &m1.address], RUN);
        assert!(good.status.success(), "{transport}: {good}{}", m1.proc);
        assert!(m1.wait_for_log(Duration::from_secs(10)), "{}", m1.proc);
        assert_eq!(m1.log_count(), 1, "{transport}: {}", m1.proc);
    }
}

#[test]
fn unreachable_machine1_fails_quickly() {
    for transport in transports() {
        let cookie = TempCookie::new("conc-two-machines");
        let address = format!("127.0.0.1:{}", dead_port());
        let run = machine2(transport, &cookie, &["--connect", &address], FAIL);
        assert!(!run.status.success(), "{transport}: {run}");
        let stderr = run.stderr();
        assert!(
            stderr.contains("error: call to process1 failed")
                && stderr.to_lowercase().contains("connection"),
            "{transport}: expected a connection error\n{run}"
        );
        assert!(run.stdout().is_empty(), "{transport}: {run}");
    }
}

#[test]
fn bad_transport_name_is_a_usage_error() {
    let cookie = TempCookie::new("conc-two-machines");
    let run = machine2(
        "carrier-pigeon",
        &cookie,
        &["--connect", "127.0.0.1:9"],
        FAIL,
    );
    assert!(!run.status.success(), "{run}");
    assert!(run.stderr().contains("unknown transport"), "{run}");
}

// ---------------------------------------------------------------------------------------------
// --repeat N --every MS.

#[test]
fn repeat_prints_one_line_per_call() {
    for transport in transports() {
        let cookie = TempCookie::new("conc-two-machines");
        let m1 = Machine1::start(transport, &cookie);
        let run = machine2(
            transport,
            &cookie,
            &["--connect", &m1.address, "--repeat", "5", "--every", "10"],
            RUN,
        );
        assert!(run.status.success(), "{transport}: {run}");
        let lines = run.stdout();
        assert_eq!(lines.len(), 5, "{transport}: {run}");
        assert_eq!(ok_lines(&lines), 5, "{transport}: {run}");
        assert!(
            m1.wait_for_log(Duration::from_secs(10)),
            "{transport}: {}",
            m1.proc
        );
    }
}

#[test]
fn repeat_carries_on_after_errors() {
    for transport in ["per-message-tcp", "pooled-tcp"] {
        let cookie = TempCookie::new("conc-two-machines");
        let mut m1 = Machine1::start(transport, &cookie);
        let args = [
            "--transport",
            transport,
            "--cookie-file",
            cookie.arg(),
            "--connect",
            &m1.address,
            "--repeat",
            "8",
            "--every",
            "100",
        ];
        let mut m2 = Proc::spawn("machine2", &binaries().machine2, &args, Some(cookie.dir()));
        // Two calls succeed; then Machine 1 dies and the remaining calls fail, each on a line.
        assert!(
            m2.stdout
                .wait_until(RUN, |lines| (ok_lines(lines) >= 2).then_some(()))
                .is_some(),
            "{transport}: {m2}"
        );
        m1.proc.kill();
        let status = m2.wait_exit(RUN).expect("machine2 exits");
        let lines = m2.stdout.snapshot();
        assert_eq!(lines.len(), 8, "{transport}: {m2}");
        let ok = ok_lines(&lines);
        assert!((2..8).contains(&ok), "{transport}: {m2}");
        assert!(
            lines.iter().filter(|l| l.starts_with("error ")).count() == 8 - ok,
            "{transport}: {m2}"
        );
        // Some calls succeeded, so the run counts as a success.
        assert!(status.success(), "{transport}: {m2}");
    }
}

#[test]
fn repeat_with_every_call_failing_exits_non_zero() {
    let cookie = TempCookie::new("conc-two-machines");
    let address = format!("127.0.0.1:{}", dead_port());
    let run = machine2(
        "per-message-tcp",
        &cookie,
        &["--connect", &address, "--repeat", "3", "--every", "10"],
        FAIL,
    );
    assert!(!run.status.success(), "{run}");
    let lines = run.stdout();
    assert_eq!(lines.len(), 3, "{run}");
    assert!(lines.iter().all(|l| l.starts_with("error ")), "{run}");
}

// ---------------------------------------------------------------------------------------------
// The demo.

#[test]
fn demo_runs_and_exits_zero() {
    for transport in transports() {
        let mut demo = Proc::spawn("demo", &binaries().demo, &["--transport", transport], None);
        let Some(status) = demo.wait_exit(Duration::from_secs(180)) else {
            panic!("demo --transport {transport} did not finish\n{demo}");
        };
        assert!(status.success(), "{transport}: {demo}");
        let out = demo.stdout.snapshot();
        for expected in ["[machine2] Message Received!", "[machine1] Log Message!"] {
            assert!(
                out.iter().any(|l| l == expected),
                "{transport}: no {expected:?}\n{demo}"
            );
        }
        assert!(
            out.iter()
                .any(|l| l.starts_with("[machine1] listening on conc://127.0.0.1:")),
            "{transport}: {demo}"
        );
    }
}
