//! A cluster member: starts a node, joins the cluster through the seeds (see
//! `conc_cluster::Cluster`) and prints, one per line, as events happen:
//!
//! ```text
//! node <its name>                  once, at start
//! member up <name>
//! member down <name> <reason>      reason: unresponsive, restarted, or left (a graceful leave)
//! members <n>                      after every change of the view (this member included)
//! group <G> <n>                    with --group G: after every change of G's size
//! ```
//!
//! With `--group G` it starts the process-group scope (`conc_cluster::pg`) and joins group `G`
//! with one process.
//!
//! It runs until killed; on Ctrl-C or SIGTERM it leaves the cluster gracefully first.
//!
//! ```text
//! cargo run --example cluster_node -- --listen 127.0.0.1:9000 [--seed HOST:PORT]...
//!     [--transport pooled-tcp] [--cookie-file PATH] [--group G]
//! ```

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use conc_cluster::pg::{Pg, PgEvent};
use conc_cluster::{Cluster, ClusterConfig, MemberEvent};
use conc_node::Inbox;
use examples::NodeArgs;

/// A cluster member printing membership events.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The address to listen on (`host:port`; port 0 picks a free port).
    #[arg(long)]
    listen: String,
    /// A member to join through (`host:port`); may be repeated. Without: this node waits to
    /// be joined.
    #[arg(long = "seed", value_name = "HOST:PORT")]
    seeds: Vec<String>,
    /// Join process group G with one process, and print its size as it changes.
    #[arg(long, value_name = "G")]
    group: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
}

/// Prints one line and flushes (scripts read the lines as they come).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    examples::init_tracing("warn");
    // The node, built in the open: where it listens, over which transport, with which cookie
    // (--cookie-file; without it $CONC_COOKIE, else ~/.conc/cookie).
    let transport = match conc_node::transport_by_name(&args.node.transport) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = conc_node::Node::builder()
        .listen(&args.listen)
        .transport_arc(transport);
    if let Some(path) = &args.node.cookie_file {
        builder = builder.cookie_file(path);
    }
    let node = match builder.start().await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: cannot start a node on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let seeds: Vec<String> = args
        .seeds
        .iter()
        .map(|s| examples::node_address(s).to_string())
        .collect();
    // The group scope (scopes find each other whichever starts first; see conc_cluster::pg).
    let mut group_printer = None;
    if let Some(group) = args.group.clone() {
        let pg = match Pg::start(&node) {
            Ok(pg) => pg,
            Err(e) => {
                eprintln!("error: cannot start the process-group scope: {e}");
                return ExitCode::FAILURE;
            }
        };
        let member = node
            .spawn(|mut inbox: Inbox<String>| async move { while inbox.recv().await.is_some() {} });
        // Subscribed before joining: the stream starts with the current members, then every
        // change, so the size printed follows each event.
        let mut monitor = pg.monitor(&group);
        if let Err(e) = pg.join(&group, &member) {
            eprintln!("error: cannot join group {group}: {e}");
            return ExitCode::FAILURE;
        }
        group_printer = Some(tokio::spawn(async move {
            let mut size = 0usize;
            let mut last = None;
            while let Some(event) = monitor.recv().await {
                match event {
                    PgEvent::Joined { members, .. } => size += members.len(),
                    PgEvent::Left { members, .. } => size = size.saturating_sub(members.len()),
                    _ => continue,
                }
                if last != Some(size) {
                    last = Some(size);
                    say(&format!("group {group} {size}"));
                }
            }
            // Keeps the scope (and the member) alive as long as the printer runs.
            drop((pg, member));
        }));
    }
    let cluster = match Cluster::start(&node, ClusterConfig::new().seed_nodes(seeds)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    say(&format!("node {}", node.name()));
    let mut events = cluster.events();
    // The count follows the events (the stream starts with the current state), so each
    // `members` line is the view right after its event.
    let printer = tokio::spawn(async move {
        let mut members = 1usize;
        while let Some(event) = events.recv().await {
            match event {
                MemberEvent::Up(m) => {
                    members += 1;
                    say(&format!("member up {}", m.name));
                }
                MemberEvent::Down { member, reason } => {
                    members = members.saturating_sub(1);
                    say(&format!("member down {} {reason}", member.name));
                }
                MemberEvent::Left(m) => {
                    members = members.saturating_sub(1);
                    say(&format!("member down {} left", m.name));
                }
                _ => continue,
            }
            say(&format!("members {members}"));
        }
    });
    if let Err(e) = shutdown_signal().await {
        eprintln!("error: cannot wait for a shutdown signal: {e}");
        return ExitCode::FAILURE;
    }
    cluster.leave().await;
    node.shutdown().await;
    printer.abort();
    if let Some(p) = group_printer {
        p.abort();
    }
    ExitCode::SUCCESS
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
