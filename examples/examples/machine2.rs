//! Machine 2 of the seed post: starts its own node (listening on a free port, where replies
//! come back over the per-message transport), calls `process1` on Machine 1 with
//! `test-message` (the seed's `send-synchronous`, 5 s timeout) and prints the answer
//! (`Message Received!`), then sends `Log Message!` asynchronously to Machine 1's `logger`.
//! Exits 0 on success; on failure prints one line `error: ...` to stderr and exits 1.
//!
//! With `--repeat N --every MS` it makes N calls, one every MS milliseconds, printing one line
//! per call as it completes (`ok <microseconds>` or `error <reason>`), carries on after errors,
//! sends the log message at the end (best effort) and exits 0 if at least one call succeeded.
//!
//! ```text
//! cargo run --release --example machine2 -- --connect 127.0.0.1:9000 [--transport pooled-tcp]
//!     [--cookie-file PATH] [--repeat N --every MS]
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use conc_node::Node;
use examples::{Machine2, NodeArgs, Output};

/// Machine 2 of the seed: calls `process1` and logs to `logger` on Machine 1.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Machine 1's address (`host:port`, or the `conc://host:port` it prints).
    #[arg(long, default_value = "127.0.0.1:9000")]
    connect: String,
    /// This node's listen address: replies over per-message TCP come back to it, so when
    /// Machine 1 is on another computer give an address it can reach (e.g. 192.168.1.5:0).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Make this many calls, printing `ok <microseconds>` or `error <reason>` for each.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    repeat: Option<u64>,
    /// Milliseconds between calls with --repeat.
    #[arg(long, value_name = "MS", default_value_t = 1000, requires = "repeat")]
    every: u64,
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Failures are reported once, by the `error:` line; RUST_LOG=warn shows the details.
    examples::init_tracing("error");
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
    let machine2 = Machine2 {
        connect: args.connect,
        repeat: args.repeat,
        every: Duration::from_millis(args.every),
    };
    let result = machine2.run(&node, Output::new("")).await;
    // Say goodbye to connected peers, without letting a stuck peer hold up the exit.
    let _ = tokio::time::timeout(Duration::from_secs(2), node.shutdown()).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
