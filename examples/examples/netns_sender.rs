//! A load sender for Machine 1 (the `machine1` example): sends N messages in a row to its
//! `logger` (`netns 0`, `netns 1`, ...), then calls `process1`, which answers only after the
//! logger's messages ahead of the call were delivered (messages between two nodes arrive in
//! order on every transport). Used by the test that runs two nodes in two network namespaces
//! (tests/tests/netns_per_message.rs).
//!
//! Prints one line `sent N errors E dead_letters D seconds S msgs_per_s R` and exits 0 if every
//! message was sent and delivered without error, 1 otherwise (the first errors go to stderr).
//!
//! ```text
//! cargo run --release --example netns_sender -- --connect 10.213.1.1:9000 \
//!     --listen 10.213.1.2:0 --count 100000 [--transport per-message-tcp] [--cookie-file PATH]
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use conc_node::Node;
use examples::{LOGGER, NodeArgs, PROCESS1, Ping, REPLY_TEXT};

/// Sends N messages to Machine 1's logger and checks that all were delivered.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Machine 1's address (`host:port`, or the `conc://host:port` it prints).
    #[arg(long)]
    connect: String,
    /// This node's listen address (replies over per-message TCP come back to it).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// How many messages to send.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    #[command(flatten)]
    node: NodeArgs,
}

/// How many errors are printed in full.
const SHOWN_ERRORS: u64 = 10;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
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
    let peer = examples::node_address(&args.connect);
    let (logger, process1) = match (
        node.remote::<String>(peer, LOGGER),
        node.remote::<Ping>(peer, PROCESS1),
    ) {
        (Ok(l), Ok(p)) => (l, p),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot address {peer}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let call = || async {
        process1
            .call(
                |reply| Ping {
                    text: "netns".to_string(),
                    reply,
                },
                Duration::from_secs(60),
            )
            .await
    };
    let mut errors = 0u64;
    let started = Instant::now();
    for i in 0..args.count {
        // Waits while the queue to the peer is full (backpressure, not an error).
        if let Err(e) = logger.send_wait(format!("netns {i}")).await {
            errors += 1;
            if errors <= SHOWN_ERRORS {
                eprintln!("error: message {i}: {}", e.kind);
            }
        }
    }
    // The call travels behind every message sent above.
    match call().await {
        Ok(answer) if answer == REPLY_TEXT => {}
        Ok(answer) => {
            errors += 1;
            eprintln!("error: unexpected answer {answer:?}");
        }
        Err(e) => {
            errors += 1;
            eprintln!("error: final call: {e}");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let dead_letters = node.dead_letters();
    if dead_letters > 0 {
        eprintln!("error: dead letters: {:?}", node.stats().dead_letters);
    }
    println!(
        "sent {} errors {errors} dead_letters {dead_letters} seconds {seconds:.1} msgs_per_s {:.0}",
        args.count,
        args.count as f64 / seconds.max(1e-9)
    );
    // Liveness probes queued while the last call was pending may still be on their way (one
    // connection each); let them finish so that the receiver sees no connection cut short.
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.shutdown().await;
    if errors == 0 && dead_letters == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
