//! The `proxy_stream` example, run as an OS process (it starts its other node as a child OS
//! process of its own) on every transport: its stdout, written from the other node through a
//! proxy, shows the 100 lines in order, and the SHA-256 of a file read through a proxy matches.

use std::time::Duration;

use common::{Example, Proc, TempDir};

mod common;

/// A bound against hangs, not a performance bar.
const RUN: Duration = Duration::from_secs(120);

/// The example, with the features of this build's transports.
static PROXY_STREAM: Example = Example::with_transport_features("proxy_stream");

/// Starts `proxy_stream ARGS` with `HOME` in `home`.
fn spawn(args: &[&str], home: &TempDir) -> Proc {
    Proc::spawn("proxy_stream", PROXY_STREAM.path(), args, Some(home.path()))
}

fn run(transport: &str) {
    // The tests crate enables every transport feature of conc-node, so each is compiled in.
    assert!(
        conc_node::transport_names().contains(&transport),
        "{transport} is not compiled in"
    );
    let home = TempDir::new("conc-proxy-stream-test");
    let mut p = spawn(&["--transport", transport], &home);
    let Some(status) = p.wait_exit(RUN) else {
        panic!("proxy_stream ({transport}) did not finish\n{}", p.report());
    };
    let out = p.stdout.text();
    let report = format!("proxy_stream ({transport}) {status}\n{}", p.report());
    assert!(status.success(), "{report}");
    let lines: Vec<&str> = out.lines().collect();

    // The proxied lines, in order, one block, before the report.
    let expected: Vec<String> = (1..=100).map(|i| format!("proxied line {i}")).collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with("proxied line"))
        .unwrap_or_else(|| panic!("no proxied line\n{report}"));
    assert_eq!(&lines[first..first + 100], &expected[..], "{report}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("proxied line"))
            .count(),
        100,
        "{report}"
    );
    assert!(lines.contains(&"lines: 100 proxied lines arrived in order"));

    // The digests: both printed, equal, of the same length.
    let digest = |prefix: &str| {
        let line = lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line\n{report}"));
        let (hex, rest) = line.split_once(' ').unwrap_or((line, ""));
        assert_eq!(hex.len(), 64, "{report}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{report}");
        (hex.to_string(), rest.to_string())
    };
    let local = digest("sha256 local  ");
    let remote = digest("sha256 remote ");
    assert_eq!(local, remote, "{report}");
    assert!(lines.contains(&"sha256: match"), "{report}");
    assert_eq!(lines.last(), Some(&"all matched"), "{report}");
}

#[test]
fn per_message_tcp() {
    run("per-message-tcp");
}

#[test]
fn pooled_tcp() {
    run("pooled-tcp");
}

#[test]
fn pooled_tcp_tls() {
    run("pooled-tcp-tls");
}

#[test]
fn quic() {
    run("quic");
}

/// The default transport is pooled TCP; an unknown one is refused with exit status 2 (clap).
#[test]
fn transport_flag() {
    let home = TempDir::new("conc-proxy-stream-test");
    let mut p = spawn(&["--transport", "carrier-pigeon"], &home);
    let status = p.wait_exit(RUN).expect("exits");
    assert!(!status.success());
    assert!(
        p.stderr.text().contains("carrier-pigeon"),
        "{}",
        p.stderr.text()
    );
    let mut p = spawn(&["--help"], &home);
    assert!(p.wait_exit(RUN).expect("exits").success());
    assert!(
        p.stdout.text().contains("pooled-tcp"),
        "{}",
        p.stdout.text()
    );
}
