//! The `proxy_stream` example, run as an OS process (it starts its other node as a child OS
//! process of its own) on every transport: its stdout, written from the other node through a
//! proxy, shows the 100 lines in order, and the SHA-256 of a file read through a proxy matches.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A bound against hangs, not a performance bar.
const RUN: Duration = Duration::from_secs(120);

/// The example binary, built once per test process (cargo's lock serializes parallel builds).
fn proxy_stream() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| build_example("proxy_stream"))
}

fn build_example(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root).args([
        "build",
        "-p",
        "examples",
        "--example",
        name,
        "--message-format=json-render-diagnostics",
    ]);
    let names = conc_node::transport_names();
    let mut features = Vec::new();
    if names.contains(&"quic") {
        features.push("quic");
    }
    if names.contains(&"pooled-tcp-tls") {
        features.push("tls");
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build of {name} failed");
    let json = String::from_utf8_lossy(&out.stdout);
    executables(&json)
        .into_iter()
        .find(|p| p.file_stem().is_some_and(|s| s == name))
        .unwrap_or_else(|| panic!("cargo did not report the {name} executable"))
}

/// The `"executable"` paths in cargo's JSON messages.
fn executables(json: &str) -> Vec<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    json.lines()
        .filter_map(|line| {
            let rest = &line[line.find(KEY)? + KEY.len()..];
            let mut path = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => return Some(PathBuf::from(path)),
                    '\\' => path.push(chars.next()?),
                    c => path.push(c),
                }
            }
            None
        })
        .collect()
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "conc-proxy-stream-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child whose output is collected; killed and reaped on drop, whatever happens.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, reader)
}

impl Proc {
    fn spawn(exe: &Path, args: &[&str], home: &Path) -> Proc {
        let mut child = Command::new(exe)
            .args(args)
            .env_remove("CONC_COOKIE")
            // Whatever happens, ~/.conc of the user running the tests is not touched.
            .env("HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let (stdout, r1) = collect(child.stdout.take().unwrap());
        let (stderr, r2) = collect(child.stderr.take().unwrap());
        Proc {
            child,
            stdout,
            stderr,
            readers: vec![r1, r2],
        }
    }

    /// Waits for the exit (at most `timeout`), then for the rest of the output.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(transport: &str) {
    if !conc_node::transport_names().contains(&transport) {
        eprintln!("skipped: {transport} is not compiled in");
        return;
    }
    let home = TempDir::new();
    let mut p = Proc::spawn(proxy_stream(), &["--transport", transport], &home.0);
    let Some(status) = p.wait_exit(RUN) else {
        panic!(
            "proxy_stream ({transport}) did not finish\n--- stdout:\n{}\n--- stderr:\n{}",
            p.stdout(),
            p.stderr()
        );
    };
    let out = p.stdout();
    let report = format!(
        "proxy_stream ({transport}) {status}\n--- stdout:\n{out}\n--- stderr:\n{}",
        p.stderr()
    );
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
    let home = TempDir::new();
    let mut p = Proc::spawn(proxy_stream(), &["--transport", "carrier-pigeon"], &home.0);
    let status = p.wait_exit(RUN).expect("exits");
    assert!(!status.success());
    assert!(p.stderr().contains("carrier-pigeon"), "{}", p.stderr());
    let mut p = Proc::spawn(proxy_stream(), &["--help"], &home.0);
    assert!(p.wait_exit(RUN).expect("exits").success());
    assert!(p.stdout().contains("pooled-tcp"), "{}", p.stdout());
}
