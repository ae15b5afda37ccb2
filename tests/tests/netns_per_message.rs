//! Per-message TCP between two network namespaces joined by a veth pair: 100,000 messages in
//! a row complete with zero errors.
//!
//! On loopback the kernel's TIME_WAIT reuse hides what one connection per message does to a
//! real network path; a veth pair between two namespaces behaves like two hosts. The test
//! creates two namespaces with a veth pair (10.213.x.1 and 10.213.x.2, addresses that exist
//! only inside them), runs the `machine1` example in one and the `netns_sender` example in the
//! other (as OS processes, through `ip netns exec`), and checks that Machine 1's logger printed
//! every message exactly once and in order, that the sender saw no error and no dead letter,
//! and that Machine 1 logged no warning.
//!
//! It needs root and iproute2; where namespaces cannot be created it fails and says why, unless
//! `CONC_ALLOW_SKIP=1` is set, in which case it prints why and skips.
//! Everything it creates is removed on the way out (a drop guard deletes the namespaces, which
//! takes their veth ends with them). `CONC_NETNS_MESSAGES` overrides the message count.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{KillOnDrop, effective_uid, ip};

mod common;

/// Messages sent in a row.
const MESSAGES: u64 = 100_000;
/// How long Machine 1 may take to print its address.
const START: Duration = Duration::from_secs(30);
/// A bound against hangs for the whole run (per-message TCP does a few thousand messages a
/// second; the bound is far above that).
const RUN: Duration = Duration::from_secs(600);

/// Two namespaces joined by a veth pair; removed on drop.
struct Netns {
    a: String,
    b: String,
    veth_a: String,
    addr_a: String,
    addr_b: String,
}

impl Netns {
    /// Creates the namespaces and the link, or says why it cannot.
    fn create() -> Result<Netns, String> {
        let uid = effective_uid();
        if uid != "0" {
            return Err(format!(
                "not root (effective uid {uid}): network namespaces need CAP_SYS_ADMIN"
            ));
        }
        ip(&["-V"]).map_err(|e| format!("iproute2 is not usable: {e}"))?;
        let pid = std::process::id();
        let subnet = pid % 200 + 20;
        let ns = Netns {
            a: format!("conc-t-{pid}-a"),
            b: format!("conc-t-{pid}-b"),
            veth_a: format!("cva{pid}"),
            addr_a: format!("10.213.{subnet}.1"),
            addr_b: format!("10.213.{subnet}.2"),
        };
        let veth_b = format!("cvb{pid}");
        // From here on, drop cleans up whatever was made.
        ip(&["netns", "add", &ns.a])?;
        ip(&["netns", "add", &ns.b])?;
        ip(&[
            "link", "add", &ns.veth_a, "type", "veth", "peer", "name", &veth_b,
        ])?;
        ip(&["link", "set", &ns.veth_a, "netns", &ns.a])?;
        ip(&["link", "set", &veth_b, "netns", &ns.b])?;
        for (ns_name, dev, addr) in [
            (&ns.a, &ns.veth_a, &ns.addr_a),
            (&ns.b, &veth_b, &ns.addr_b),
        ] {
            ip(&[
                "-n",
                ns_name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns_name, "link", "set", dev, "up"])?;
            ip(&["-n", ns_name, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end in it, and so the pair. The link is
        // deleted by name too in case it was made but not yet moved.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
        let _ = ip(&["link", "del", &self.veth_a]);
    }
}

/// A private cookie file, removed on drop.
struct CookieFile(PathBuf);

impl CookieFile {
    fn new() -> CookieFile {
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("conc-netns-cookie-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"netns-test-cookie\n").unwrap();
        CookieFile(path)
    }
}

impl Drop for CookieFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What Machine 1's logger printed.
#[derive(Debug, Default)]
struct Received {
    /// Lines `netns i` in order i = 0, 1, 2, ...
    in_order: u64,
    /// Any other line (or one out of order).
    unexpected: u64,
    first_unexpected: Option<String>,
}

#[test]
fn per_message_tcp_between_namespaces() {
    let messages: u64 = std::env::var("CONC_NETNS_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MESSAGES);
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(reason) => {
            common::precondition_missing(&format!("cannot create network namespaces: {reason}"));
            return;
        }
    };
    let [machine1, sender] = common::build_examples(&["machine1", "netns_sender"], &[])
        .try_into()
        .expect("one executable per example");
    let cookie = CookieFile::new();
    let cookie_path = cookie.0.to_str().unwrap().to_string();
    let listen = format!("{}:9000", ns.addr_a);

    let mut m1 = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns.a])
            .arg(&machine1)
            .args([
                "--listen",
                &listen,
                "--transport",
                "per-message-tcp",
                "--cookie-file",
                &cookie_path,
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start machine1 in the namespace"),
    );
    let mut stdout = BufReader::new(m1.0.stdout.take().unwrap());
    let mut stderr = m1.0.stderr.take().unwrap();
    let stderr_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // The first line is the address; the rest are what the logger receives.
    let (first_tx, first_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = first_tx.send(line.trim().to_string());
        let mut got = Received::default();
        loop {
            line.clear();
            match stdout.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = line.trim_end();
            if text == format!("netns {}", got.in_order) {
                got.in_order += 1;
                if got.in_order == messages {
                    let _ = done_tx.send(());
                }
            } else {
                got.unexpected += 1;
                got.first_unexpected.get_or_insert_with(|| text.to_string());
            }
        }
        got
    });
    let first = first_rx
        .recv_timeout(START)
        .expect("machine1 did not print its address");
    assert_eq!(first, format!("listening on conc://{listen}"));

    let started = Instant::now();
    let mut sender = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns.b])
            .arg(&sender)
            .args([
                "--connect",
                &listen,
                "--listen",
                &format!("{}:0", ns.addr_b),
                "--count",
                &messages.to_string(),
                "--transport",
                "per-message-tcp",
                "--cookie-file",
                &cookie_path,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the sender in the other namespace"),
    );
    let status = loop {
        if let Some(status) = sender.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < RUN,
            "the sender did not finish within {RUN:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let _ = sender.0.stdout.take().unwrap().read_to_string(&mut out);
    let mut err = String::new();
    let _ = sender.0.stderr.take().unwrap().read_to_string(&mut err);
    println!(
        "sender: {} (finished at {:?})",
        out.trim(),
        std::time::SystemTime::now()
    );
    // The logger prints what it receives as it goes; give it time for the last lines.
    let all_printed = done_rx.recv_timeout(Duration::from_secs(30)).is_ok();
    drop(m1);
    let got = reader.join().unwrap();
    let m1_log = stderr_thread.join().unwrap();
    assert!(
        status.success(),
        "the sender failed: {status}\n{out}\n{err}"
    );
    assert!(
        out.contains(&format!("sent {messages} errors 0 dead_letters 0 ")),
        "sender: {out}\n{err}"
    );
    assert!(
        all_printed && got.in_order == messages && got.unexpected == 0,
        "machine1's logger printed {} of {messages} messages in order, {} unexpected lines \
         (first: {:?})",
        got.in_order,
        got.unexpected,
        got.first_unexpected
    );
    let warnings: Vec<&str> = m1_log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        warnings.is_empty(),
        "machine1 logged {} warnings: {:?}",
        warnings.len(),
        warnings
    );
    println!(
        "{messages} messages between namespaces {} ({}) and {} ({}): all delivered in order, \
         zero errors",
        ns.a, ns.addr_a, ns.b, ns.addr_b
    );
}
