//! A web front with browser sessions kept by conc processes spread over worker nodes.
//!
//! ```text
//! cargo run --example web_cluster -- --port 8080 [--workers 3] [--transport pooled-tcp]
//!     [--cookie-file PATH]
//! ```
//!
//! One command starts an HTTP front (axum, on `127.0.0.1:PORT`) and N worker nodes, each a
//! separate OS process (this program again, with the hidden `--worker N` flag). It prints, for
//! each worker as it becomes ready, `worker <n> pid <os-pid> <node-uri>`, then
//! `front node <node-uri> cookie-file <path>` (for the `conc` operator CLI) and, last, once
//! everything serves, `front listening on http://127.0.0.1:PORT`.
//!
//! Each browser session (cookie `sid`) is a conc process on a worker, placed by consistent
//! hashing of the session id over the live workers (a hash ring with virtual nodes). The front
//! spawns it there with `conc_cluster::spawn` (the workers offer the kind `session`) and gets
//! its pid; every request of the browser is then a call to that pid. Each worker's `sessions`
//! process (which answers the front's probes) is a member of the process group `web.workers`
//! (`conc_cluster::pg`); the front takes a worker off the ring as soon as its member leaves. A session
//! counts its page views and shows a chat room, a process on worker 0 registered cluster-wide as
//! `web.chat` (`conc_cluster::global`), which it finds by that name and calls itself (worker to
//! worker). All nodes form one cluster (`conc_cluster::membership`; the front is the workers'
//! seed). `/stats` shows every node's stats from its `conc.admin` process.
//!
//! Session processes are children of the front's dynamic supervisor `web.sessions`, linked to
//! it across nodes. When a worker dies, the supervisor starts each of its sessions again on a
//! live worker (same session id, fresh state; the session's first page says that the state was
//! lost); a request that arrives meanwhile waits for that, and gets a 503 page ("your session's
//! worker is down") only if no worker takes the session within a few seconds. The others keep
//! working and new sessions go to the live workers. `POST /admin/restart/<n>` (a button on
//! `/stats`) starts a dead worker again on its old port; once a probe reaches it, it takes new
//! sessions again. Workers exit when the front does (they watch their standard input, a pipe
//! from the front).
//!
//! Without `--cookie-file` the cluster shares a fresh random cookie in a private temporary file,
//! removed when the front exits. Everything listens on 127.0.0.1 only: the restart route has no
//! authentication.

#[path = "web_cluster/front.rs"]
mod front;
#[path = "web_cluster/http.rs"]
mod http;
#[path = "web_cluster/msgs.rs"]
mod msgs;
#[path = "web_cluster/ring.rs"]
mod ring;
#[path = "web_cluster/worker.rs"]
mod worker;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use conc_node::Node;

/// An HTTP front and worker nodes keeping browser sessions as conc processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The front's HTTP port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// How many worker nodes to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// The transport between the nodes: pooled-tcp, per-message-tcp or quic (if compiled in).
    #[arg(long, default_value = "pooled-tcp", value_parser = parse_transport)]
    transport: String,
    /// The cookie file shared by all nodes. Default: a fresh one in a temporary directory.
    #[arg(long, value_name = "PATH")]
    cookie_file: Option<PathBuf>,
    /// Run as worker N (started by the front).
    #[arg(long, hide = true)]
    worker: Option<usize>,
    /// The worker's node address.
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    listen: String,
    /// Exit when standard input closes.
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
    /// A worker's seed: the front's node (`host:port`), through which it joins the cluster.
    #[arg(long, hide = true, value_name = "HOST:PORT")]
    seed: Vec<String>,
    /// A worker's fellow workers known when it starts: their global scopes are contacted at
    /// once (on transports where membership gossip is slow to mesh, per-message TCP).
    #[arg(long, hide = true, value_name = "HOST:PORT")]
    peer: Vec<String>,
}

fn parse_transport(name: &str) -> Result<String, String> {
    conc_node::transport_by_name(name)
        .map(|_| name.to_string())
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let result = match args.worker {
        Some(n) => {
            let cfg = worker::WorkerConfig {
                n,
                listen: args.listen.clone(),
                transport: args.transport.clone(),
                cookie_file: args.cookie_file.clone(),
                exit_with_stdin: args.exit_with_stdin,
                seeds: args.seed.clone(),
                peers: args.peer.clone(),
            };
            let result = worker::run(cfg).await;
            if let Err(e) = &result {
                eprintln!("[worker {n}] error: {e}");
            }
            // Do not wait for the thread blocked on standard input.
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
        None => run_front(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A private temporary directory with a fresh cookie file; removed on drop.
struct TempCookie {
    dir: PathBuf,
    path: PathBuf,
}

impl TempCookie {
    fn new() -> Result<TempCookie, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("conc-web-cluster-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("cookie");
        let cookie = TempCookie { dir, path };
        conc_node::create_cookie_file(&cookie.path)
            .map_err(|e| format!("cannot create a cookie file: {e}"))?;
        Ok(cookie)
    }
}

impl Drop for TempCookie {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the front: binds the HTTP port, starts the workers, serves until Ctrl-C or SIGTERM,
/// then stops the workers.
async fn run_front(args: &Args) -> Result<(), String> {
    let temp;
    let cookie_file = match &args.cookie_file {
        Some(path) => path.clone(),
        None => {
            temp = TempCookie::new()?;
            temp.path.clone()
        }
    };
    // The HTTP port first, so that a taken port fails before any worker is started.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?
        .port();
    // The recorder first, so that the node's metrics are recorded from its start.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let node = start_node("127.0.0.1:0", &args.transport, Some(&cookie_file)).await?;
    conc_node::admin::serve(&node).map_err(|e| format!("cannot serve conc.admin: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let cfg = front::FrontConfig {
        workers: usize::from(args.workers),
        transport: args.transport.clone(),
        cookie_file: cookie_file.clone(),
        exe,
    };
    let front = match front::Front::start(node.clone(), cfg).await {
        Ok(front) => front,
        Err(e) => {
            node.shutdown().await;
            return Err(e);
        }
    };
    say(&format!(
        "front node {} cookie-file {}",
        node.uri(),
        cookie_file.display()
    ));
    say(&format!("front listening on http://127.0.0.1:{port}"));
    let served = axum::serve(listener, http::router(front.clone(), metrics))
        .with_graceful_shutdown(async {
            if let Err(e) = shutdown_signal().await {
                note(&format!("cannot wait for a shutdown signal: {e}"));
                std::future::pending::<()>().await;
            }
        })
        .await;
    front.shutdown().await;
    node.shutdown().await;
    served.map_err(|e| format!("HTTP server failed: {e}"))
}

/// Starts a node on `listen` with the named transport and cookie file.
async fn start_node(
    listen: &str,
    transport: &str,
    cookie_file: Option<&Path>,
) -> Result<Node, String> {
    let transport = conc_node::transport_by_name(transport).map_err(|e| e.to_string())?;
    let mut builder = Node::builder().listen(listen).transport_arc(transport);
    if let Some(path) = cookie_file {
        builder = builder.cookie_file(path);
    }
    builder
        .start()
        .await
        .map_err(|e| format!("cannot start a node on {listen}: {e}"))
}

/// Prints a line on stdout and flushes it (scripts read these lines).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints a line on stderr.
fn note(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[front] {line}");
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Waits for Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
