//! The one-command demo of the seed post: two machines on one computer.
//!
//! Starts Machine 1 (the `machine1` example) as a child OS process listening on a free port,
//! reads the address it prints, then runs Machine 2 in this process against it: a synchronous
//! call to `process1` (which answers `Message Received!`) and an asynchronous `Log Message!` to
//! `logger`, which Machine 1 prints. Every line of either side is shown, prefixed `[machine1] `
//! or `[machine2] `. Both sides share a fresh random cookie in a private temporary file, so
//! nothing is needed in `~/.conc`. Exits 0 only if everything worked.
//!
//! ```text
//! cargo run --example demo [-- --transport per-message-tcp|pooled-tcp|quic]
//! ```
//!
//! The `machine1` binary is looked for next to this one (`target/<profile>/examples/`); if it
//! is missing or older than this one, it is built with `cargo build --example machine1`.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, SystemTime};

use clap::Parser;
use conc_node::Node;
use examples::{LISTENING_PREFIX, LOG_TEXT, Machine2, Output};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long Machine 1 may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after Machine 2 is done `Log Message!` may take to show up on Machine 1.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The seed's two machines in one command.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The transport: per-message-tcp (the seed's one connection per message), pooled-tcp or
    /// quic (if compiled in).
    #[arg(long, default_value = examples::DEFAULT_TRANSPORT, value_parser = examples::parse_transport)]
    transport: String,
}

const DEMO: Output = Output::new("[demo] ");
const MACHINE1: Output = Output::new("[machine1] ");
const MACHINE2: Output = Output::new("[machine2] ");

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    examples::init_tracing("warn");
    match run(&args).await {
        Ok(()) => {
            DEMO.line("success: Machine 2 got its answer and Machine 1 printed the log message");
            ExitCode::SUCCESS
        }
        Err(e) => {
            DEMO.warn(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// What the demo has seen on Machine 1's stdout.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// The address from the `listening on conc://...` line.
    address: Option<String>,
    /// Whether a `Log Message!` line came.
    log: bool,
    /// Whether stdout was closed (the child exited).
    closed: bool,
}

async fn run(args: &Args) -> Result<(), String> {
    let tmp = TempDir::new()?;
    let cookie_path = tmp.path().join("cookie");
    conc_node::create_cookie_file(&cookie_path)
        .map_err(|e| format!("cannot create the demo cookie: {e}"))?;
    let cookie = conc_node::read_cookie_file(&cookie_path)
        .map_err(|e| format!("cannot read the demo cookie: {e}"))?;
    DEMO.line(&format!(
        "fresh cookie in {} (mode 0600), shared by both machines",
        cookie_path.display()
    ));

    let machine1 = machine1_binary()?;
    DEMO.line(&format!(
        "starting Machine 1: {} --listen 127.0.0.1:0 --transport {}",
        machine1.display(),
        args.transport
    ));
    let mut child = Command::new(&machine1)
        .args(["--listen", "127.0.0.1:0", "--transport", &args.transport])
        .arg("--cookie-file")
        .arg(&cookie_path)
        // The demo's cookie file is the one to use, whatever the environment says.
        .env_remove(conc_node::COOKIE_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", machine1.display()))?;

    let (seen_tx, mut seen) = watch::channel(Seen::default());
    let stdout = child.stdout.take().map(|out| {
        tokio::spawn(async move {
            forward(out, |line| {
                MACHINE1.line(line);
                seen_tx.send_modify(|s| {
                    if let Some(uri) = line.strip_prefix(LISTENING_PREFIX) {
                        s.address.get_or_insert_with(|| uri.trim().to_string());
                    }
                    if line == LOG_TEXT {
                        s.log = true;
                    }
                });
            })
            .await;
            seen_tx.send_modify(|s| s.closed = true);
        })
    });
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(forward(err, |line| MACHINE1.warn(line))));

    let result = drive(&mut child, &mut seen, &cookie, &args.transport).await;

    // Stop Machine 1 in every case, and let its last lines through.
    let _ = child.start_kill();
    let status = child.wait().await;
    for task in [stdout, stderr].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    match status {
        Ok(status) => DEMO.line(&format!("stopped Machine 1 ({status})")),
        Err(e) => DEMO.warn(&format!("warning: waiting for Machine 1: {e}")),
    }
    result
}

/// Waits for Machine 1's address, runs Machine 2 against it, and waits for the log line.
async fn drive(
    child: &mut Child,
    seen: &mut watch::Receiver<Seen>,
    cookie: &conc_node::Cookie,
    transport: &str,
) -> Result<(), String> {
    let started = tokio::time::timeout(
        START_TIMEOUT,
        seen.wait_for(|s| s.address.is_some() || s.closed),
    )
    .await
    .map_err(|_| format!("Machine 1 did not print its address within {START_TIMEOUT:?}"))?
    .map_err(|_| "lost Machine 1's output".to_string())?
    .clone();
    let Some(uri) = started.address else {
        let status = child
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        return Err(format!("Machine 1 exited before listening ({status})"));
    };

    // Machine 2's node, built in the open: any free port, the chosen transport, the demo's
    // cookie (the one Machine 1 was given).
    let node = Node::builder()
        .listen("127.0.0.1:0")
        .transport_arc(conc_node::transport_by_name(transport).map_err(|e| e.to_string())?)
        .cookie(cookie.clone())
        .start()
        .await
        .map_err(|e| format!("cannot start a node on 127.0.0.1:0: {e}"))?;
    DEMO.line(&format!(
        "Machine 2 runs in this process as node {}; it calls process1 and logs to logger on {uri}",
        node.uri()
    ));
    let machine2 = Machine2 {
        connect: uri,
        repeat: None,
        every: Duration::ZERO,
    };
    let result = machine2.run(&node, MACHINE2).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), node.shutdown()).await;
    result.map_err(|e| format!("Machine 2: {e}"))?;

    tokio::time::timeout(LOG_TIMEOUT, seen.wait_for(|s| s.log || s.closed))
        .await
        .ok()
        .and_then(|r| r.ok().map(|s| s.log))
        .filter(|&log| log)
        .map(|_| ())
        .ok_or_else(|| format!("Machine 1 did not print {LOG_TEXT:?}"))
}

/// Reads lines from a child's pipe and hands each to `each` until the pipe closes.
async fn forward(pipe: impl AsyncRead + Unpin, mut each: impl FnMut(&str)) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        each(&line);
    }
}

/// The `machine1` binary next to this one, built first if it is missing or older than this one.
fn machine1_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the demo binary: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let path = dir.join(format!("machine1{}", std::env::consts::EXE_SUFFIX));
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    match (modified(&path), modified(&exe)) {
        (None, _) => {
            DEMO.line(&format!("{} is missing: building it", path.display()));
            build_machine1(dir)?;
            if !path.exists() {
                return Err(format!(
                    "cargo built machine1, but {} is still missing",
                    path.display()
                ));
            }
        }
        (Some(m1), Some(demo)) if m1 < demo => {
            DEMO.line(&format!(
                "{} is older than the demo: rebuilding it",
                path.display()
            ));
            if let Err(e) = build_machine1(dir) {
                DEMO.warn(&format!("warning: {e}; using the existing binary"));
            }
        }
        _ => {}
    }
    Ok(path)
}

/// Runs `cargo build --example machine1` with this binary's profile, features and target
/// directory (`dir` is `<target>/<profile>/examples`).
fn build_machine1(dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "-p", "examples", "--example", "machine1"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    if cfg!(feature = "quic") {
        cmd.args(["--features", "quic"]);
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    if let Some(target) = dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == profile))
        .and_then(Path::parent)
    {
        cmd.arg("--target-dir").arg(target);
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if manifest_dir.is_dir() {
        cmd.current_dir(manifest_dir);
    }
    // Cargo's progress goes to stderr, as usual.
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build --example machine1 failed ({status})"))
    }
}

/// A private temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("conc-demo-{}-{nanos}", std::process::id()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
