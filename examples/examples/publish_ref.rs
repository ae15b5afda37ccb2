//! Persistent references: one program publishes the references of its processes in a file,
//! another program, started later, reads the file and uses them (the seed's last paragraph:
//! *you could store on a file system or web server serialized references to important
//! processes that clients can send messages to*).
//!
//! ```text
//! publish_ref serve --listen ADDR --refs FILE [--cookie-file PATH] [--transport NAME]
//! publish_ref send  --refs FILE TEXT          [--cookie-file PATH] [--transport NAME]
//! ```
//!
//! - `serve` starts a node listening on `ADDR` (`host:port`; port 0 picks a free port), registers
//!   `echo` (answers every request with exactly the text it was sent) and `logger` (prints every
//!   string it receives as `log: <text>`), writes their by-name references to `FILE`, one per
//!   line, and serves until SIGTERM or Ctrl-C:
//!
//!   ```text
//!   conc://127.0.0.1:9000/name/echo
//!   conc://127.0.0.1:9000/name/logger
//!   ```
//!
//!   The node's actual name is used, so with port 0 the file holds the real port. The file is
//!   written to a temporary name and renamed, so a reader never sees half of it. On stdout,
//!   `serve` prints `pid echo <uri>` and `pid logger <uri>` (the references by identity of this
//!   run, see below), then `listening on conc://host:port`.
//! - `send` reads `FILE`, takes the line that refers to `echo`, calls it with `TEXT`, prints the
//!   reply (exactly `TEXT`) on a line of its own and exits 0. It exits 1 with a message on
//!   stderr if the file cannot be read, holds no reference to `echo`, or the call fails.
//!
//! Both take `--cookie-file PATH` (mode 0600; without it `CONC_COOKIE`, else `~/.conc/cookie`)
//! and `--transport` (`per-message-tcp`, `pooled-tcp` (the default), or `quic` if compiled in;
//! both sides must use the same). Scripts rely on this interface.
//!
//! # The reference format (stable)
//!
//! A reference to a process is a URI of one of two forms:
//!
//! - `conc://<host>:<port>/name/<name>`: whatever process is registered as `<name>` on the node
//!   reachable at `<host>:<port>`, looked up by that node at each delivery. It keeps working when
//!   the process, or the whole node, restarts (on the same address) and registers the name again.
//!   Names are 1 to 255 bytes and contain no `/`.
//! - `conc://<host>:<port>/<incarnation>/<id>`: one process by identity; `<incarnation>` (the
//!   node's random 64-bit incarnation, chosen when it starts) and `<id>` (the process's number
//!   in it) are decimal. It names that process only: once it has exited, or once its node has
//!   restarted (a new incarnation), messages and calls to it are refused with "no such process";
//!   they are never delivered to another process.
//!
//! `<host>:<port>` is the node's name: its listen address (`127.0.0.1:9000`, `[::1]:9000`,
//! `node1.example.com:9000`) or the address it advertises. A pid prints in this form
//! (`Display`, `Pid::uri`) and `Node::resolve::<M>(uri)` turns the text back into a typed pid;
//! the message type is not part of the URI, so the program resolving it states it, and a
//! mismatch is refused by the target node with a type error rather than decoded wrongly.
//! The two forms will keep this meaning and spelling; new forms, if any, will use other
//! path shapes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use conc_node::{Inbox, Node, ProcessUri, ReplyTo, Target};

/// What `echo` receives: the text, and where the answer goes. `send` and `serve` agree on it
/// (and so does any program using the same type: the type's tag is derived from its name).
type Echo = (String, ReplyTo<String>);

/// The name of the echo process.
const ECHO: &str = "echo";
/// The name of the logger process.
const LOGGER: &str = "logger";

/// Publishes references to processes in a file, and uses them from another program.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve `echo` and `logger`, and write their references to the refs file.
    Serve {
        /// The address to listen on (`host:port`; port 0 picks a free port).
        #[arg(long)]
        listen: String,
        /// Where to write the references, one per line.
        #[arg(long)]
        refs: PathBuf,
        #[command(flatten)]
        node: NodeOpts,
    },
    /// Read the refs file, call `echo` with TEXT and print the reply.
    Send {
        /// The refs file written by `serve`.
        #[arg(long)]
        refs: PathBuf,
        /// How long to wait for the reply, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
        /// The text to send.
        text: String,
        #[command(flatten)]
        node: NodeOpts,
    },
}

#[derive(Debug, ClapArgs)]
struct NodeOpts {
    /// The transport: per-message-tcp, pooled-tcp or quic (if compiled in).
    #[arg(long, default_value = "pooled-tcp", value_parser = check_transport)]
    transport: String,
    /// Read the shared cookie from this file (mode 0600). Without it: CONC_COOKIE, else
    /// ~/.conc/cookie.
    #[arg(long, value_name = "PATH")]
    cookie_file: Option<PathBuf>,
}

fn check_transport(name: &str) -> Result<String, String> {
    conc_node::transport_by_name(name)
        .map(|_| name.to_string())
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Serve { listen, refs, node } => serve(&listen, &refs, &node).await,
        Command::Send {
            refs,
            timeout_secs,
            text,
            node,
        } => send(&refs, Duration::from_secs(timeout_secs), text, &node).await,
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start_node(listen: &str, opts: &NodeOpts) -> Result<Node, String> {
    let transport = conc_node::transport_by_name(&opts.transport).map_err(|e| e.to_string())?;
    let mut builder = Node::builder().listen(listen).transport_arc(transport);
    if let Some(path) = &opts.cookie_file {
        builder = builder.cookie_file(path);
    }
    builder
        .start()
        .await
        .map_err(|e| format!("cannot start a node on {listen}: {e}"))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn serve(listen: &str, refs: &Path, opts: &NodeOpts) -> Result<(), String> {
    let node = start_node(listen, opts).await?;
    let echo = node.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            let _ = reply.send(text);
        }
    });
    let logger = node.spawn(|mut inbox: Inbox<String>| async move {
        while let Some(line) = inbox.recv().await {
            say(&format!("log: {line}"));
        }
    });
    node.register(ECHO, &echo).map_err(|e| e.to_string())?;
    node.register(LOGGER, &logger).map_err(|e| e.to_string())?;

    let text: String = [ECHO, LOGGER]
        .iter()
        .map(|name| format!("{}\n", ProcessUri::named(node.name(), *name)))
        .collect();
    write_atomically(refs, &text)?;
    say(&format!("pid {ECHO} {echo}"));
    say(&format!("pid {LOGGER} {logger}"));
    say(&format!("listening on {}", node.uri()));

    shutdown_signal()
        .await
        .map_err(|e| format!("cannot wait for a shutdown signal: {e}"))?;
    node.shutdown().await;
    Ok(())
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

async fn send(refs: &Path, timeout: Duration, text: String, opts: &NodeOpts) -> Result<(), String> {
    let content = std::fs::read_to_string(refs)
        .map_err(|e| format!("cannot read {}: {e}", refs.display()))?;
    let uri = content
        .lines()
        .map(str::trim)
        .filter_map(|line| line.parse::<ProcessUri>().ok())
        .find(|uri| matches!(&uri.target, Target::Name(n) if n == ECHO))
        .ok_or_else(|| format!("{} holds no reference to {ECHO}", refs.display()))?;
    // A listener, so that replies can come back on per-message TCP too.
    let node = start_node("127.0.0.1:0", opts).await?;
    let echo = node
        .resolve::<Echo>(&uri.to_string())
        .map_err(|e| format!("cannot resolve {uri}: {e}"))?;
    let res = echo.call(|reply| (text, reply), timeout).await;
    node.shutdown().await;
    let reply = res.map_err(|e| format!("call to {uri} failed: {e}"))?;
    say(&reply);
    Ok(())
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
