//! Persistent references across OS processes, on every transport: `publish_ref serve` writes
//! the references of its processes to a file; `publish_ref send`, another OS process started
//! later, reads the file and calls `echo`. After the whole server restarts on the same address,
//! the references by name keep working, while a reference by identity to a process of the old
//! incarnation fails cleanly (a clear error, no hang).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conc_node::{CallError, Node, Pid, RemoteError, ReplyTo, SendErrorKind};

/// What `echo` receives (the same type as in the example: tags derive from the type's name).
type Echo = (String, ReplyTo<String>);

/// How long a server may take to start.
const START: Duration = Duration::from_secs(30);
/// A bound against hangs, not a performance bar.
const RUN: Duration = Duration::from_secs(60);
/// The timeout of each call made by this test.
const CALL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Building the example, temporary directories, children.

fn publish_ref() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| build_example("publish_ref"))
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

/// A private temporary directory with a fresh cookie file (mode 0600); removed on drop.
struct TempDir {
    dir: PathBuf,
    cookie: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "conc-persistent-refs-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cookie = dir.join("cookie");
        conc_node::create_cookie_file(&cookie).unwrap();
        TempDir { dir, cookie }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    fn cookie(&self) -> &str {
        self.cookie.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lines a child wrote to one pipe, filled by a reader thread.
#[derive(Default)]
struct Lines {
    state: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn read_from(pipe: impl Read + Send + 'static) -> (Arc<Lines>, JoinHandle<()>) {
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

    /// Waits for a line starting with `prefix`; returns the rest of it.
    fn wait_for(&self, timeout: Duration, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(l) = state.0.iter().find_map(|l| l.strip_prefix(prefix)) {
                return Some(l.to_string());
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                return None;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    fn text(&self) -> String {
        self.state.lock().unwrap().0.join("\n")
    }
}

/// A child OS process; killed and reaped on drop, whatever happens.
struct Proc {
    child: Child,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn(args: &[&str], home: &Path) -> Proc {
        let mut child = Command::new(publish_ref())
            .args(args)
            .env_remove("CONC_COOKIE")
            // Whatever happens, ~/.conc of the user running the tests is not touched.
            .env("HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start publish_ref");
        let (stdout, r1) = Lines::read_from(child.stdout.take().unwrap());
        let (stderr, r2) = Lines::read_from(child.stderr.take().unwrap());
        Proc {
            child,
            stdout,
            stderr,
            readers: vec![r1, r2],
        }
    }

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

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn report(&self) -> String {
        format!(
            "--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The two modes.

/// A running `publish_ref serve`, with what it printed.
struct Server {
    proc: Proc,
    /// `host:port`.
    address: String,
    /// The reference by identity to this run's `echo`.
    echo_by_id: String,
}

impl Server {
    fn start(t: &str, tmp: &TempDir, listen: &str) -> Server {
        let refs = tmp.path("refs");
        let args = [
            "serve",
            "--listen",
            listen,
            "--refs",
            &refs,
            "--cookie-file",
            tmp.cookie(),
            "--transport",
            t,
        ];
        // The address of a killed server may take a moment to be free again.
        let deadline = Instant::now() + START;
        loop {
            let mut proc = Proc::spawn(&args, &tmp.dir);
            if let Some(uri) = proc.stdout.wait_for(START, "listening on conc://") {
                let echo_by_id = proc
                    .stdout
                    .wait_for(START, "pid echo ")
                    .expect("serve prints the echo pid");
                return Server {
                    proc,
                    address: uri.trim().to_string(),
                    echo_by_id,
                };
            }
            let status = proc.wait_exit(RUN);
            assert!(
                Instant::now() < deadline,
                "publish_ref serve ({t}) did not start: {status:?}\n{}",
                proc.report()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs `publish_ref send`; returns its exit status, stdout and stderr.
fn send(t: &str, tmp: &TempDir, text: &str) -> (ExitStatus, String, String) {
    let refs = tmp.path("refs");
    let mut proc = Proc::spawn(
        &[
            "send",
            "--refs",
            &refs,
            "--cookie-file",
            tmp.cookie(),
            "--transport",
            t,
            text,
        ],
        &tmp.dir,
    );
    let Some(status) = proc.wait_exit(RUN) else {
        panic!("publish_ref send ({t}) hung\n{}", proc.report());
    };
    let out = proc.stdout.text();
    let err = proc.stderr.text();
    (status, out, err)
}

/// A node in this test process, with the shared cookie.
async fn test_node(t: &str, tmp: &TempDir) -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(conc_node::read_cookie_file(&tmp.cookie).unwrap())
        .transport_arc(conc_node::transport_by_name(t).unwrap())
        .start()
        .await
        .unwrap()
}

/// Calls `echo` until it answers (a pooled connection to a server that was restarted may
/// fail once), at most for a bound.
async fn call_until_ok(p: &Pid<Echo>, text: &str) -> String {
    let deadline = Instant::now() + RUN;
    loop {
        match p.call(|r| (text.to_string(), r), CALL).await {
            Ok(answer) => return answer,
            Err(CallError::Timeout(_)) => panic!("call to {p} hung"),
            Err(e) => {
                assert!(Instant::now() < deadline, "{p} never answered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn scenario(t: &str) {
    if !conc_node::transport_names().contains(&t) {
        eprintln!("skipped: {t} is not compiled in");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Resolving a pid of another node may start transport tasks: inside the runtime.
    let _entered = rt.enter();
    let tmp = TempDir::new();

    // One run of the server publishes its references.
    let mut server = Server::start(t, &tmp, "127.0.0.1:0");
    let addr = server.address.clone();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let refs = std::fs::read_to_string(tmp.path("refs")).unwrap();
    assert_eq!(
        refs,
        format!("conc://{addr}/name/echo\nconc://{addr}/name/logger\n")
    );
    let old_by_id = server.echo_by_id.clone();
    assert!(
        old_by_id.starts_with(&format!("conc://{addr}/")),
        "{old_by_id}"
    );

    // Another program, started later, uses them.
    let (status, out, err) = send(t, &tmp, "hello, stored reference");
    assert!(status.success(), "send ({t}) failed: {err}");
    assert_eq!(out, "hello, stored reference");

    // The reference by identity works while its incarnation lives.
    let node = rt.block_on(test_node(t, &tmp));
    let by_name: Pid<Echo> = node.resolve(&format!("conc://{addr}/name/echo")).unwrap();
    let by_id: Pid<Echo> = node.resolve(&old_by_id).unwrap();
    rt.block_on(async {
        assert_eq!(call_until_ok(&by_id, "by id").await, "by id");
        assert_eq!(call_until_ok(&by_name, "by name").await, "by name");
    });

    // The whole server restarts, on the same address: a new incarnation.
    server.proc.kill();
    let server = Server::start(t, &tmp, &addr);
    assert_eq!(server.address, addr);
    assert_ne!(server.echo_by_id, old_by_id, "a new incarnation");
    let refs_again = std::fs::read_to_string(tmp.path("refs")).unwrap();
    assert_eq!(refs_again, refs, "the references by name are the same");

    // A later program uses the stored reference by name: it still works.
    let (status, out, err) = send(t, &tmp, "after the restart");
    assert!(
        status.success(),
        "send ({t}) after the restart failed: {err}"
    );
    assert_eq!(out, "after the restart");

    rt.block_on(async {
        // So does the pid by name held across the restart, and the logger's reference.
        assert_eq!(call_until_ok(&by_name, "again").await, "again");
        let logger: Pid<String> = node.resolve(&format!("conc://{addr}/name/logger")).unwrap();
        logger.send("stored logger works".to_string()).unwrap();

        // The pid of the old incarnation fails cleanly: refused, neither delivered nor hung.
        let deadline = Instant::now() + RUN;
        for p in [by_id.clone(), node.resolve::<Echo>(&old_by_id).unwrap()] {
            loop {
                let started = Instant::now();
                match p.call(|r| ("old".to_string(), r), CALL).await {
                    Ok(answer) => panic!("a pid of the old incarnation answered {answer:?}"),
                    Err(CallError::Send(SendErrorKind::Remote(RemoteError::Refused {
                        detail,
                        ..
                    }))) => {
                        assert!(detail.contains("no such process"), "{detail}");
                        assert!(started.elapsed() < CALL);
                        break;
                    }
                    Err(CallError::Timeout(_)) => panic!("a call to the old pid hung"),
                    // A connection to the old server may still be failing.
                    Err(e) => {
                        assert!(Instant::now() < deadline, "unexpected error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    assert!(
        server
            .proc
            .stdout
            .wait_for(RUN, "log: stored logger works")
            .is_some(),
        "the logger got the message\n{}",
        server.proc.report()
    );

    // With the server gone, `send` fails cleanly: exit status 1 and a message, no hang.
    drop(server);
    let (status, out, err) = send(t, &tmp, "anyone there?");
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("error:"), "{err}");
    rt.block_on(node.shutdown());
}

#[test]
fn per_message_tcp() {
    scenario("per-message-tcp");
}

#[test]
fn pooled_tcp() {
    scenario("pooled-tcp");
}

#[test]
fn pooled_tcp_tls() {
    scenario("pooled-tcp-tls");
}

#[test]
fn quic() {
    scenario("quic");
}

/// `send` with a refs file that holds no reference to `echo`, or that does not exist, fails
/// with exit status 1 and a message.
#[test]
fn send_without_a_reference_fails() {
    let tmp = TempDir::new();
    std::fs::write(
        tmp.path("refs"),
        "conc://127.0.0.1:1/name/logger\nnot a uri\n",
    )
    .unwrap();
    let (status, _, err) = send("pooled-tcp", &tmp, "x");
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("no reference to echo"), "{err}");
    std::fs::remove_file(tmp.path("refs")).unwrap();
    let (status, _, err) = send("pooled-tcp", &tmp, "x");
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("cannot read"), "{err}");
}
