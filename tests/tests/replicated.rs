//! The `replicated_kv` example as a service of three OS processes on loopback: a write on one
//! node is readable on the others; after one node is killed with SIGKILL the other two see it
//! down, keep every value, and take new writes between them; restarted on its port, the
//! killed node catches up from the others.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Example, KillOnDrop, Lines, TempCookie};

mod common;

static KV: Example = Example::new("replicated_kv");

/// How long a node may take to start (generous: a loaded machine).
const START: Duration = Duration::from_secs(60);
/// The bound on each awaited answer; a failure means it never came.
const DEADLINE: Duration = Duration::from_secs(30);

/// One node of the store: a child process, its stdin for commands and its output.
struct KvNode {
    addr: String,
    child: KillOnDrop,
    stdin: ChildStdin,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
}

impl KvNode {
    fn start(addr: &str, peers: &[&str], cookie: &TempCookie) -> KvNode {
        let mut args = vec!["--listen", addr, "--cookie-file", cookie.arg()];
        for p in peers {
            args.extend(["--peer", p]);
        }
        let mut child: Child = Command::new(KV.path())
            .args(&args)
            .env_remove("CONC_COOKIE")
            .env("HOME", cookie.dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = Lines::read_from(child.stdout.take().unwrap()).0;
        let stderr = Lines::read_from(child.stderr.take().unwrap()).0;
        let node = KvNode {
            addr: addr.to_string(),
            child: KillOnDrop(child),
            stdin,
            stdout,
            stderr,
        };
        node.expect(&format!("listening on conc://{addr}"), START);
        node
    }

    /// Waits for the line `line` (exactly), then returns. Panics with the node's output if it
    /// does not come within `within`.
    fn expect(&self, line: &str, within: Duration) {
        if self.stdout.wait_for(within, |l| l == line).is_none() {
            panic!(
                "node {} printed no {line:?} within {within:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.addr,
                self.stdout.text(),
                self.stderr.text()
            );
        }
    }

    /// Sends one command and waits for the first new line starting with `answer_prefix`;
    /// returns it.
    fn ask(&mut self, command: &str, answer_prefix: &str) -> String {
        self.ask_for(command, |l| l.starts_with(answer_prefix))
    }

    /// Sends one command and waits for the first new line for which `is_answer` holds.
    fn ask_for(&mut self, command: &str, is_answer: impl Fn(&str) -> bool) -> String {
        let before = self.stdout.snapshot().len();
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.stdout
            .wait_until(DEADLINE, |lines| {
                lines.iter().skip(before).find(|l| is_answer(l)).cloned()
            })
            .unwrap_or_else(|| {
                panic!(
                    "node {} did not answer {command:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.addr,
                    self.stdout.text(),
                    self.stderr.text()
                )
            })
    }

    /// `get KEY`: the answer, `value KEY VALUE` or `none KEY`.
    fn get(&mut self, key: &str) -> String {
        let (value, none) = (format!("value {key} "), format!("none {key}"));
        self.ask_for(&format!("get {key}"), |l| {
            l.starts_with(&value) || l == none
        })
    }
}

/// `n` distinct loopback ports free right now (the nodes must know each other's addresses up
/// front; the listeners are held until all are picked).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

#[test]
fn writes_replicate_and_survive_a_sigkill() {
    let cookie = TempCookie::new("replicated-kv");
    let addrs: Vec<String> = free_ports(3)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let others = |i: usize| -> Vec<&str> {
        (0..3)
            .filter(|j| *j != i)
            .map(|j| addrs[j].as_str())
            .collect()
    };
    let mut nodes: Vec<KvNode> = (0..3)
        .map(|i| KvNode::start(&addrs[i], &others(i), &cookie))
        .collect();
    // Each node sees the other two up.
    for (i, n) in nodes.iter().enumerate() {
        for peer in others(i) {
            n.expect(&format!("peer up {peer}"), DEADLINE);
        }
    }

    // A write on node 0 is taken by both others before it is answered...
    assert_eq!(
        nodes[0].ask("put colour blue", "ok put colour"),
        "ok put colour replicas=2"
    );
    // ...so it is readable on each of them at once.
    for n in nodes.iter_mut() {
        assert_eq!(n.get("colour"), "value colour blue");
    }
    // A later write on another node wins everywhere.
    assert_eq!(
        nodes[2].ask("put colour green", "ok put colour"),
        "ok put colour replicas=2"
    );
    for n in nodes.iter_mut() {
        assert_eq!(n.get("colour"), "value colour green");
    }

    // Node 0 killed with SIGKILL: the others see it down...
    nodes[0].child.kill();
    let killed = addrs[0].clone();
    for n in &nodes[1..] {
        n.stdout
            .wait_until(DEADLINE, |lines| {
                lines
                    .iter()
                    .find(|l| l.starts_with(&format!("peer down {killed} ")))
                    .cloned()
            })
            .unwrap_or_else(|| {
                panic!(
                    "node {} did not see {killed} down\n{}",
                    n.addr,
                    n.stdout.text()
                )
            });
    }
    // ...keep every value, and take new writes between the two of them.
    assert_eq!(nodes[1].get("colour"), "value colour green");
    assert_eq!(
        nodes[1].ask("put size 42", "ok put size"),
        "ok put size replicas=1"
    );
    assert_eq!(nodes[2].get("size"), "value size 42");
    assert_eq!(nodes[2].get("colour"), "value colour green");

    // Restarted on its port, node 0 catches up from the others (the write it missed too).
    nodes[0] = KvNode::start(&addrs[0], &others(0), &cookie);
    for peer in others(0) {
        nodes[0].expect(&format!("peer up {peer}"), DEADLINE);
    }
    assert_eq!(nodes[0].get("size"), "value size 42");
    assert_eq!(nodes[0].get("colour"), "value colour green");
    assert_eq!(nodes[0].get("nothing"), "none nothing");
}
