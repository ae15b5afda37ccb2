//! `conc`: a small operator CLI. Connects to a node with the cookie and asks the node's admin
//! process (`conc.admin`, started on the node by `conc_node::admin::serve`) for its registered
//! names, its peers, its stats or its supervision trees, or has it send a string message to one
//! of its named processes: a remote shell's first steps.
//!
//! ```text
//! cargo run --example conc -- --node 127.0.0.1:9000 --cookie-file PATH [--transport T]
//!     [--timeout SECS] names|peers|stats|supervisors|send NAME TEXT
//! ```
//!
//! `--transport` must be the node's (default pooled-tcp). Without `--cookie-file` the cookie is
//! `CONC_COOKIE`, else `~/.conc/cookie`. Exits 0 on success, 1 on failure (a line on stderr),
//! 2 on bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use conc_node::admin::{ADMIN_NAME, AdminRequest, StatsReport};
use conc_node::{CallError, Node, Refusal, RemoteError, SendErrorKind};

/// Ask a conc node's admin process about the node, or send a string to a named process.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The node (`host:port` or `conc://host:port`).
    #[arg(long, value_name = "ADDR")]
    node: String,
    /// The cookie file (mode 0600). Without it: CONC_COOKIE, else ~/.conc/cookie.
    #[arg(long, value_name = "PATH")]
    cookie_file: Option<PathBuf>,
    /// The node's transport: pooled-tcp, per-message-tcp or quic (if compiled in).
    #[arg(long, default_value = "pooled-tcp", value_parser = parse_transport)]
    transport: String,
    /// How long to wait for the node, in seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    timeout: f64,
    #[command(subcommand)]
    command: Cmd,
}

/// What to ask.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// The registered names, one per line.
    Names,
    /// The connected peers: name, connected since, messages and bytes in and out.
    Peers,
    /// The node's stats, one `key value` per line, then one `peer ...` line per peer.
    Stats,
    /// The supervision trees of the node's registered supervisors: a line per supervisor (name,
    /// pid, strategy, restarts, intensity), then its children indented below it (id, status,
    /// pid, restarts, restart type), children that are supervisors with their own children.
    Supervisors,
    /// Sends TEXT as a `String` message to the process registered as NAME.
    Send {
        /// The registered name.
        name: String,
        /// The message.
        text: String,
    },
}

fn parse_transport(name: &str) -> Result<String, String> {
    conc_node::transport_by_name(name)
        .map(|_| name.to_string())
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(&args).await {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; returns the lines to print.
async fn run(args: &Args) -> Result<Vec<String>, String> {
    if !(args.timeout > 0.0 && args.timeout <= 3600.0) {
        return Err("--timeout must be between 0 and 3600 seconds".into());
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let addr = args.node.trim();
    let addr = addr
        .strip_prefix("conc://")
        .unwrap_or(addr)
        .trim_end_matches('/');

    let transport = conc_node::transport_by_name(&args.transport).map_err(|e| e.to_string())?;
    let mut builder = Node::builder().transport_arc(transport);
    // Per-message TCP carries each reply on a connection of its own, back to a listener.
    if args.transport == "per-message-tcp" {
        builder = builder.listen("127.0.0.1:0");
    }
    if let Some(path) = &args.cookie_file {
        builder = builder.cookie_file(path);
    }
    let node = builder
        .start()
        .await
        .map_err(|e| format!("cannot start a node: {e}"))?;
    let result = ask(&node, addr, &args.command, timeout).await;
    node.shutdown().await;
    result
}

async fn ask(node: &Node, addr: &str, cmd: &Cmd, timeout: Duration) -> Result<Vec<String>, String> {
    let admin = node
        .remote::<AdminRequest>(addr, ADMIN_NAME)
        .map_err(|e| format!("cannot address {ADMIN_NAME} on {addr}: {e}"))?;
    let failed = |e: CallError| explain(addr, e);
    match cmd {
        Cmd::Names => admin
            .call(AdminRequest::Names, timeout)
            .await
            .map_err(failed),
        Cmd::Peers => {
            let report = admin
                .call(AdminRequest::Stats, timeout)
                .await
                .map_err(failed)?;
            Ok(peer_table(&report))
        }
        Cmd::Stats => {
            let report = admin
                .call(AdminRequest::Stats, timeout)
                .await
                .map_err(failed)?;
            Ok(stats_lines(&report))
        }
        Cmd::Supervisors => {
            let trees = admin
                .call(AdminRequest::Supervisors, timeout)
                .await
                .map_err(failed)?;
            if trees.is_empty() {
                return Ok(vec!["no registered supervisors".to_string()]);
            }
            Ok(trees.iter().flat_map(|t| t.lines()).collect())
        }
        Cmd::Send { name, text } => {
            let outcome = admin
                .call(
                    |reply| AdminRequest::SendString {
                        name: name.clone(),
                        text: text.clone(),
                        reply,
                    },
                    timeout,
                )
                .await
                .map_err(failed)?;
            outcome
                .map(|()| vec![format!("sent to {name}")])
                .map_err(|e| format!("{addr} did not deliver the message: {e}"))
        }
    }
}

/// A failed call to the admin process, in an operator's words.
fn explain(addr: &str, e: CallError) -> String {
    let hint = match &e {
        CallError::Refused {
            reason: Refusal::UnknownName,
            ..
        } => " (the node does not run the admin process: call conc_node::admin::serve on it)",
        CallError::Send(SendErrorKind::Remote(RemoteError::Connection { .. }))
        | CallError::Exited(_) => {
            " (is the node running, with this transport, and is the cookie the same?)"
        }
        CallError::Timeout(_) => " (is the transport the node's, and is the cookie the same?)",
        _ => "",
    };
    format!("{ADMIN_NAME} on {addr}: {e}{hint}")
}

/// The `stats` lines.
fn stats_lines(r: &StatsReport) -> Vec<String> {
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        let total: u64 = m.values().sum();
        let mut s = total.to_string();
        for (reason, n) in m {
            s.push_str(&format!(" {}={n}", reason.replace(' ', "_")));
        }
        s
    };
    let mut lines = vec![
        format!("node {}", r.name),
        format!("transport {}", r.transport),
        format!("incarnation {}", r.incarnation),
        format!("taken_at {}", utc(r.taken_at)),
        format!("processes {}", r.processes),
        format!("registered {}", r.registered.join(" ")),
        format!("dead_letters {}", counts(&r.dead_letters)),
        format!("rejected {}", counts(&r.rejected)),
        format!("late_replies {}", r.late_replies),
        format!("peers {}", r.peers.len()),
    ];
    for p in &r.peers {
        lines.push(format!(
            "peer {} connected_since {} msgs_in {} msgs_out {} bytes_in {} bytes_out {}",
            p.name,
            p.connected_since.map(utc).unwrap_or_else(|| "-".into()),
            p.msgs_in,
            p.msgs_out,
            p.bytes_in,
            p.bytes_out
        ));
    }
    lines
}

/// The `peers` table.
fn peer_table(r: &StatsReport) -> Vec<String> {
    let rows: Vec<[String; 6]> = r
        .peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.connected_since.map(utc).unwrap_or_else(|| "-".into()),
                p.msgs_in.to_string(),
                p.msgs_out.to_string(),
                p.bytes_in.to_string(),
                p.bytes_out.to_string(),
            ]
        })
        .collect();
    let header = [
        "PEER",
        "CONNECTED SINCE",
        "MSGS IN",
        "MSGS OUT",
        "BYTES IN",
        "BYTES OUT",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            row.iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect()
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
