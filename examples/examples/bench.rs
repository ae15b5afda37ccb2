//! The transport bench: the same work on every transport (see "The bench example" in the
//! design brief).
//!
//! ```text
//! cargo run --release --example bench -- --transport <per-message-tcp|pooled-tcp|quic|all>
//! ```
//!
//! Figures, one line each as they are measured:
//!
//! - `local_async msgs_per_s`: 10,000,000 messages with a 32-byte payload from one process to
//!   another on one node; the receiver replies once it has them all.
//! - `spawn_mem bytes_per_process`: growth of the resident set per idle process (1,000,000
//!   processes blocked in `recv`).
//! - `<transport> remote_async msgs_per_s`: 1,000,000 messages with a 32-byte payload from one
//!   process to a named sink on a node in another OS process, which replies once it has them all.
//! - `<transport> remote_rpc p50_us|p99_us|calls_per_s`: 100,000 sequential calls with a 32-byte
//!   payload to a named echo process on the other node.
//!
//! - `<transport> remote_many msgs_per_s`: 8 senders on this node to 8 sinks on the other, each
//!   `--async-messages / 8` messages; the aggregate rate.
//! - `<transport> remote_large bytes_per_s`: `--large-messages` messages of a 1 MiB `Vec<u8>`.
//! - `<transport> remote_hol idle_p99_us` and `p99_us`: the p99 of `--hol-calls` small calls
//!   with the connection idle, then while another process streams 8 MiB messages over it
//!   (both nodes allow 16 MiB frames for it).
//!
//! With `--with-floor` the floors run first, in the same run (`floor tokio_rtt p50_us|p99_us`,
//! `floor tokio_stream msgs_per_s|bytes_per_s`, and the C floor's `floor c_rtt ...`,
//! `floor c_connect_per_msg msgs_per_s` where `cc` is found), and each conc figure that has a
//! floor is followed by `<transport> <workload> <metric>_vs_floor <ratio>`.
//!
//! Per-message TCP opens a connection per message, so it runs 20,000 messages and calls instead
//! (and says so). The server node is this same executable, started again with a hidden `--serve`
//! flag; it is killed whatever happens. After the figures comes a table; `--json` and `--chart`
//! write the results as JSON (`serde_json`) and as an SVG chart (`plotters`, with the floors
//! drawn); progress goes to stderr through `indicatif`.
//!
//! `--local-messages`, `--spawn`, `--async-messages` and `--rpc-calls` scale the workloads down
//! for a quick run; `--workloads` picks some of them. `--payload bytes` sends the 32 bytes as one
//! byte string instead of a `[u8; 32]` (which serde walks as a tuple of 32 `u8`), and
//! `--yield-every N` makes the senders yield to the scheduler every N messages (a plain loop of
//! `send` never does): both show where the time goes.

#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/local.rs"]
mod local;
#[path = "bench/msgs.rs"]
mod msgs;
#[path = "bench/progress.rs"]
mod progress;
#[path = "bench/remote.rs"]
mod remote;
#[path = "bench/report.rs"]
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use msgs::Bytes32;
use report::Results;

/// How the 32-byte payload is serialized, for `--payload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PayloadKind {
    /// `[u8; 32]`: serde sees a tuple of 32 `u8`.
    Array,
    /// A newtype around `[u8; 32]` that serializes as one byte string (like `serde_bytes`).
    Bytes,
}

/// The workloads, for `--workloads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// Messages between two processes of one node.
    LocalAsync,
    /// Memory of idle processes.
    SpawnMem,
    /// Messages to a sink on another node.
    RemoteAsync,
    /// Sequential calls to an echo process on another node.
    RemoteRpc,
    /// 8 senders to 8 receivers on another node.
    RemoteMany,
    /// 1 MiB messages to another node.
    RemoteLarge,
    /// Small calls while 8 MiB messages stream over the same connection.
    RemoteHol,
}

/// Command line.
#[derive(Parser, Debug)]
#[command(
    about = "conc transport bench: the same work on every transport",
    after_help = "Figures go to stdout, one per line (`<transport> <workload> <metric> <value>`, \
                  or `<workload> <metric> <value>` for the local ones), then a table. Progress \
                  goes to stderr."
)]
pub(crate) struct Args {
    /// Transport for the remote workloads: per-message-tcp, pooled-tcp, quic, or all (every
    /// transport compiled in).
    #[arg(long, default_value = "all")]
    pub(crate) transport: String,
    /// Messages of `local_async`.
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) local_messages: u64,
    /// Idle processes of `spawn_mem`.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) spawn: u64,
    /// Messages of `remote_large` (1 MiB each).
    #[arg(long, default_value_t = 256)]
    pub(crate) large_messages: u64,
    /// Calls of `remote_hol`, idle and again while large messages stream.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) hol_calls: u64,
    /// Also measure the floors in the same run (the tokio floor and, where `cc` is found, the
    /// C floor, from `--floor-tools`) and print every figure's ratio to its floor.
    #[arg(long)]
    pub(crate) with_floor: bool,
    /// Where the floors live (`tokio-floor/`, `c-floor/`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/tools"))]
    pub(crate) floor_tools: PathBuf,
    /// Messages of `remote_async`.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) async_messages: u64,
    /// Calls of `remote_rpc`.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) rpc_calls: u64,
    /// The most messages or calls per-message TCP runs in a remote workload.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) per_message_limit: u64,
    /// In `local_async` and `remote_async`, the sender yields to the scheduler after every this
    /// many messages (0: never, as a plain loop of `send` does).
    #[arg(long, default_value_t = 0)]
    pub(crate) yield_every: u64,
    /// Overall deadline of each workload, in seconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout_secs: u64,
    /// Workloads to run (comma-separated); default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) workloads: Vec<Workload>,
    /// How the payload is serialized: `array` (`[u8; 32]`, a tuple of 32 `u8` to serde) or
    /// `bytes` (one byte string).
    #[arg(long, value_enum, default_value = "array")]
    pub(crate) payload: PayloadKind,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Draw the results as an SVG bar chart into this file.
    #[arg(long)]
    pub(crate) chart: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// Internal: run the server node of the remote workloads.
    #[arg(long, hide = true)]
    pub(crate) serve: bool,
    /// Internal: the cookie file of the server node.
    #[arg(long, hide = true)]
    pub(crate) cookie_file: Option<PathBuf>,
}

impl Args {
    fn runs(&self, w: Workload) -> bool {
        self.workloads.is_empty() || self.workloads.contains(&w)
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

/// The tokio runtime of the bench and of its server: the multi-thread scheduler with two
/// workers.
fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let rt = match tokio_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.serve {
        return match rt.block_on(remote::serve(&args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench server: {e}");
                ExitCode::FAILURE
            }
        };
    }

    // Which transports: refuse one that is not compiled in before measuring anything.
    let known = conc_node::transport_names();
    let transports: Vec<String> = if args.transport == "all" {
        known.iter().map(|s| s.to_string()).collect()
    } else {
        if let Err(e) = conc_node::transport_by_name(&args.transport) {
            let hint = if args.transport == "quic" {
                " (build with `--features quic`)"
            } else {
                ""
            };
            eprintln!("error: {e}{hint}");
            return ExitCode::from(2);
        }
        vec![args.transport.clone()]
    };

    let mut results = Results {
        payload: match args.payload {
            PayloadKind::Array => "array",
            PayloadKind::Bytes => "bytes",
        },
        ..Results::default()
    };
    results.note(&format!(
        "payload: 32 bytes as {}",
        match args.payload {
            PayloadKind::Array => "[u8; 32] (serde: a tuple of 32 u8)",
            PayloadKind::Bytes => "a byte string (serde: serialize_bytes)",
        }
    ));
    if args.transport == "all" && !known.contains(&"quic") {
        results.note("quic: not compiled into this build (build with `--features quic`), skipped");
    }

    if args.with_floor {
        floor::run(&args.floor_tools, &mut results);
    }

    // Memory first, while the heap is fresh: memory freed by other workloads and kept by the
    // allocator would hide part of the growth.
    if args.runs(Workload::SpawnMem) {
        match rt.block_on(local::spawn_mem(&args)) {
            Ok(bytes) => results.figure(None, "spawn_mem", "bytes_per_process", bytes, args.spawn),
            Err(e) => results.error(None, "spawn_mem", &e),
        }
    }
    if args.runs(Workload::LocalAsync) {
        let run = match args.payload {
            PayloadKind::Array => rt.block_on(local::local_async::<[u8; 32]>(&args)),
            PayloadKind::Bytes => rt.block_on(local::local_async::<Bytes32>(&args)),
        };
        match run {
            Ok(rate) => {
                results.figure(None, "local_async", "msgs_per_s", rate, args.local_messages)
            }
            Err(e) => results.error(None, "local_async", &e),
        }
    }
    if [
        Workload::RemoteAsync,
        Workload::RemoteRpc,
        Workload::RemoteMany,
        Workload::RemoteLarge,
        Workload::RemoteHol,
    ]
    .into_iter()
    .any(|w| args.runs(w))
    {
        for t in &transports {
            match args.payload {
                PayloadKind::Array => {
                    rt.block_on(remote::run_transport::<[u8; 32]>(&args, t, &mut results))
                }
                PayloadKind::Bytes => {
                    rt.block_on(remote::run_transport::<Bytes32>(&args, t, &mut results))
                }
            }
        }
    }

    results.print_table();
    let mut failed = !results.errors.is_empty();
    if let Some(path) = &args.json {
        match std::fs::write(path, results.json()) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                failed = true;
            }
        }
    }
    if let Some(path) = &args.chart {
        match results
            .svg()
            .and_then(|svg| std::fs::write(path, svg).map_err(|e| e.to_string()))
        {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                failed = true;
            }
        }
    }
    // Do not wait for processes still parked in the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
