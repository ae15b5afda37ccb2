//! Helpers shared by the integration tests of this directory: building the examples with cargo
//! and finding their executables, temporary directories and cookie files, child OS processes
//! that are killed on drop and whose output is collected line by line, loopback nodes and a
//! tokio runtime.
//!
//! Each file of `tests/tests` is a crate of its own that includes this module with `mod common;`.

// Each test crate uses a different subset of these helpers; what one does not use would
// otherwise be reported as dead code in that crate.
#![allow(dead_code)]

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conc_node::{Node, NodeBuilder};

// ---------------------------------------------------------------------------------------------
// Building the examples.

/// The workspace's root directory (the tests crate is one of its members).
pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
}

/// An example of the `examples` package, built with cargo on first use, once per test process
/// (cargo's lock serializes the builds of tests running in parallel processes; all but the first
/// are no-ops). Meant for a `static`.
pub(crate) struct Example {
    name: &'static str,
    transport_features: bool,
    exe: OnceLock<PathBuf>,
}

impl Example {
    /// The example `name`, built without features.
    pub(crate) const fn new(name: &'static str) -> Example {
        Example {
            name,
            transport_features: false,
            exe: OnceLock::new(),
        }
    }

    /// The example `name`, built with the [`transport_features`] of this build.
    pub(crate) const fn with_transport_features(name: &'static str) -> Example {
        Example {
            name,
            transport_features: true,
            exe: OnceLock::new(),
        }
    }

    /// The executable; the first call builds it.
    pub(crate) fn path(&self) -> &Path {
        self.exe.get_or_init(|| {
            let features = if self.transport_features {
                transport_features()
            } else {
                Vec::new()
            };
            build_example(self.name, &features)
        })
    }
}

/// Builds the examples `names` of the `examples` package with
/// `cargo build -p examples --example NAME... --message-format=json-render-diagnostics`,
/// adding `--features` with `features` joined by commas unless it is empty; returns their
/// executables, in the order of `names`.
///
/// Callers keep the result in a `OnceLock` (or use [`Example`]) to build once per test process;
/// cargo's lock serializes the builds of tests running in parallel processes (all but the first
/// are no-ops).
pub(crate) fn build_examples(names: &[&str], features: &[&str]) -> Vec<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "examples"]);
    for name in names {
        cmd.args(["--example", name]);
    }
    cmd.arg("--message-format=json-render-diagnostics");
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build of the examples {names:?} failed"
    );
    let json = String::from_utf8_lossy(&out.stdout);
    let exes = executables(&json);
    names
        .iter()
        .map(|name| {
            exes.iter()
                .find(|p| p.file_stem().is_some_and(|s| s == *name))
                .cloned()
                .unwrap_or_else(|| panic!("cargo did not report the {name} executable"))
        })
        .collect()
}

/// Builds the example `name` (see [`build_examples`]); returns its executable.
pub(crate) fn build_example(name: &str, features: &[&str]) -> PathBuf {
    build_examples(&[name], features)
        .pop()
        .expect("one executable per example")
}

/// The features of the `examples` package for the transports compiled into this test (`quic`,
/// `tls`), so that the examples offer the same transports.
pub(crate) fn transport_features() -> Vec<&'static str> {
    let names = conc_node::transport_names();
    let mut features = Vec::new();
    if names.contains(&"quic") {
        features.push("quic");
    }
    if names.contains(&"pooled-tcp-tls") {
        features.push("tls");
    }
    features
}

/// The `"executable"` paths in cargo's JSON messages.
pub(crate) fn executables(json: &str) -> Vec<PathBuf> {
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

// ---------------------------------------------------------------------------------------------
// Temporary directories and cookies.

/// A private temporary directory with a unique name (`PREFIX-PID-N-NANOS`); removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates a new, empty directory named after `prefix` in the system's temporary directory.
    pub(crate) fn new(prefix: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private temporary directory holding a fresh cookie file `cookie` (mode 0600, made by
/// `conc_node::create_cookie_file`); removed on drop.
pub(crate) struct TempCookie {
    dir: TempDir,
    /// The cookie file.
    pub(crate) path: PathBuf,
}

impl TempCookie {
    /// A new directory named after `prefix` (see [`TempDir::new`]) with a new cookie.
    pub(crate) fn new(prefix: &str) -> TempCookie {
        let dir = TempDir::new(prefix);
        let path = dir.path().join("cookie");
        conc_node::create_cookie_file(&path).unwrap();
        TempCookie { dir, path }
    }

    /// The directory (also a good `HOME` for children: the user's `~/.conc` is not touched).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cookie file's path as a command-line argument.
    pub(crate) fn arg(&self) -> &str {
        self.path.to_str().expect("temp paths are UTF-8")
    }

    /// The path of the file `name` in the directory, as a command-line argument.
    pub(crate) fn file(&self, name: &str) -> String {
        self.dir()
            .join(name)
            .to_str()
            .expect("temp paths are UTF-8")
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Children and their output.

/// A child process; killed and reaped on drop, whatever happens.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl KillOnDrop {
    /// Kills the child (if it still runs) and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines a child wrote to one pipe (without trailing white space), filled by a reader
/// thread.
#[derive(Default)]
pub(crate) struct Lines {
    state: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    /// Starts a thread that reads `pipe` to its end, line by line.
    pub(crate) fn read_from(pipe: impl Read + Send + 'static) -> (Arc<Lines>, JoinHandle<()>) {
        Lines::read_echoing(pipe, None)
    }

    /// As [`Lines::read_from`]; with a `tag`, every line is also written to the test's stderr
    /// as `[tag] line`.
    pub(crate) fn read_echoing(
        pipe: impl Read + Send + 'static,
        tag: Option<&'static str>,
    ) -> (Arc<Lines>, JoinHandle<()>) {
        let lines = Arc::new(Lines::default());
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match pipe.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if let Some(tag) = tag {
                            eprintln!("[{tag}] {line}");
                        }
                        sink.state.lock().unwrap().0.push(line);
                        sink.changed.notify_all();
                    }
                }
            }
            sink.state.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        (lines, reader)
    }

    /// Waits for a line matching `pred`, until `timeout` or the end of the output.
    pub(crate) fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.wait_until(timeout, |lines| lines.iter().find(|l| pred(l)).cloned())
    }

    /// Waits for a line starting with `prefix`, until `timeout` or the end of the output;
    /// returns the rest of it.
    pub(crate) fn wait_for_prefix(&self, timeout: Duration, prefix: &str) -> Option<String> {
        self.wait_until(timeout, |lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_string)
        })
    }

    /// Waits until `check` finds something in the lines so far, until `timeout` or the end of
    /// the output.
    pub(crate) fn wait_until<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(found) = check(&state.0) {
                return Some(found);
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                return None;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// The lines so far.
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.state.lock().unwrap().0.clone()
    }

    /// The lines so far, joined with `\n`.
    pub(crate) fn text(&self) -> String {
        self.state.lock().unwrap().0.join("\n")
    }
}

/// A child process whose stdout and stderr are collected; killed and reaped on drop, whatever
/// happens.
pub(crate) struct Proc {
    name: &'static str,
    child: KillOnDrop,
    pub(crate) stdout: Arc<Lines>,
    pub(crate) stderr: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `exe ARGS` (called `name` in reports) without `CONC_COOKIE` in its environment,
    /// with `HOME` set to `home` if given, stdin closed and stdout and stderr collected.
    pub(crate) fn spawn(
        name: &'static str,
        exe: &Path,
        args: &[&str],
        home: Option<&Path>,
    ) -> Proc {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env_remove("CONC_COOKIE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(home) = home {
            // Whatever happens, ~/.conc of the user running the tests is not touched.
            cmd.env("HOME", home);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let (stdout, out_reader) = Lines::read_from(child.stdout.take().unwrap());
        let (stderr, err_reader) = Lines::read_from(child.stderr.take().unwrap());
        Proc {
            name,
            child: KillOnDrop(child),
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    /// Waits for the child to exit, at most `timeout`; then waits for the rest of its output.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the child has not exited yet.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_none()
    }

    /// Kills the child (if it still runs) and reaps it.
    pub(crate) fn kill(&mut self) {
        self.child.kill();
    }

    /// The output so far: `--- stdout:`, the stdout lines, `--- stderr:`, the stderr lines.
    pub(crate) fn report(&self) -> String {
        format!(
            "--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

/// The output so far, under `--- NAME stdout:` and `--- NAME stderr:`, one line each.
impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- {} stdout:", self.name)?;
        for line in self.stdout.snapshot() {
            writeln!(f, "{line}")?;
        }
        writeln!(f, "--- {} stderr:", self.name)?;
        for line in self.stderr.snapshot() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes and runtimes in the test process.

/// A node builder listening on a free port of 127.0.0.1, on the transport named `transport`
/// (one of `conc_node::transport_names()`); the caller adds the cookie and starts it.
pub(crate) fn loopback_node(transport: &str) -> NodeBuilder {
    Node::builder()
        .listen("127.0.0.1:0")
        .transport_arc(conc_node::transport_by_name(transport).unwrap())
}

/// A multi-thread tokio runtime with two workers (the test machines have two cores), with IO
/// and time, for tests that drive async code from a plain `#[test]`.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Preconditions of the environment.

/// A precondition of the environment that a test needs is missing (for example network
/// namespaces, which need root and iproute2): the test fails with `reason`, unless the
/// environment variable `CONC_ALLOW_SKIP` is `1`, in which case this prints that the test was
/// skipped and why, and returns (the caller then returns without checking anything). A missing
/// precondition is never a silent pass: where skipping is not explicitly allowed, it is a
/// failure.
pub(crate) fn precondition_missing(reason: &str) {
    if std::env::var("CONC_ALLOW_SKIP").as_deref() == Ok("1") {
        println!("SKIPPED (CONC_ALLOW_SKIP=1): {reason}");
    } else {
        panic!(
            "precondition missing: {reason}\n\
             (set CONC_ALLOW_SKIP=1 to skip this test where the precondition cannot be met)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces.

/// Runs `ip` with `args`; the error names the command and what it printed.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The effective uid, from /proc/self/status.
pub(crate) fn effective_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default()
}
