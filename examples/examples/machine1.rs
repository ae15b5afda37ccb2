//! Machine 1 of the seed post: starts a node (the seed's `"" 9000 start-node`), registers
//! `process1`, which answers every request with `Message Received!`, and `logger`, which prints
//! each string it receives on a line of its own. Prints `listening on conc://host:port` once it
//! accepts connections, then serves until killed, Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run --release --example machine1 -- --listen 127.0.0.1:9000 [--transport pooled-tcp]
//!     [--cookie-file PATH]
//! ```

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use conc_node::{Inbox, Node};
use examples::{LISTENING_PREFIX, LOGGER, NodeArgs, PROCESS1, Ping, REPLY_TEXT};

/// Machine 1 of the seed: serves `process1` and `logger`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The address to listen on (`host:port`; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Warnings (for example a peer that failed the cookie check) go to stderr.
    examples::init_tracing("warn");
    // The node, built in the open: where it listens, over which transport, with which cookie
    // (--cookie-file; without it $CONC_COOKIE, else ~/.conc/cookie, created on first use).
    let transport = match conc_node::transport_by_name(&args.node.transport) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = Node::builder()
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

    // The seed's `process1`: blocks until a message arrives, answers it, and loops.
    let process1 = node.spawn(|mut inbox: Inbox<Ping>| async move {
        while let Some(Ping { text: _, reply }) = inbox.recv().await {
            if let Err(e) = reply.send(REPLY_TEXT.to_string()) {
                tracing::warn!("{PROCESS1}: {e}");
            }
        }
    });
    // The seed's `logger`: prints what it receives.
    let logger = node.spawn(|mut inbox: Inbox<String>| async move {
        while let Some(line) = inbox.recv().await {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
    for (name, result) in [
        (PROCESS1, node.register(PROCESS1, &process1)),
        (LOGGER, node.register(LOGGER, &logger)),
    ] {
        if let Err(e) = result {
            eprintln!("error: cannot register {name}: {e}");
            return ExitCode::FAILURE;
        }
    }

    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{LISTENING_PREFIX}{}", node.uri());
        let _ = out.flush();
    }

    if let Err(e) = shutdown_signal().await {
        eprintln!("error: cannot wait for a shutdown signal: {e}");
        return ExitCode::FAILURE;
    }
    node.shutdown().await;
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
