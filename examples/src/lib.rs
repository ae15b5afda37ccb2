//! Shared code of the conc examples: the messages of the seed's two machines, the command-line
//! options every example that starts a node takes, and Machine 2's logic (used by the `machine2`
//! example and, in-process, by the `demo`).
//!
//! The seed (`distributed-concurrency-in-factor.txt`) runs two Factor nodes: Machine 1 registers
//! `process1`, which answers every message with `"Message Received!"`, and `logger`, which prints
//! what it receives; Machine 2 sends `"test-message"` synchronously to `process1`, prints the
//! answer, and sends `"Log Message!"` asynchronously to `logger`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use conc_node::{Node, ReplyTo};
use serde::{Deserialize, Serialize};

/// The name Machine 1 registers its answering process under.
pub const PROCESS1: &str = "process1";
/// The name Machine 1 registers its logger under.
pub const LOGGER: &str = "logger";
/// What Machine 2 sends to `process1`.
pub const REQUEST_TEXT: &str = "test-message";
/// What `process1` answers.
pub const REPLY_TEXT: &str = "Message Received!";
/// What Machine 2 sends to `logger`.
pub const LOG_TEXT: &str = "Log Message!";
/// How long Machine 2 waits for each answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The start of the line Machine 1 prints once it accepts connections; the node's URI
/// (`conc://host:port`) follows.
pub const LISTENING_PREFIX: &str = "listening on ";
/// The transport the examples use unless told otherwise: the seed's one connection per message.
pub const DEFAULT_TRANSPORT: &str = "per-message-tcp";

/// The request `process1` answers: the seed's `send-synchronous` message. The reply handle
/// travels inside the message and arrives on Machine 1 as a working reference to the caller.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ping {
    /// The text sent (the seed sends `"test-message"`).
    pub text: String,
    /// Where the answer goes.
    pub reply: ReplyTo<String>,
}

/// The command-line options of every example that starts a node.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// The transport: per-message-tcp (the seed's one connection per message), pooled-tcp or
    /// quic (if compiled in).
    #[arg(long, default_value = DEFAULT_TRANSPORT, value_parser = parse_transport)]
    pub transport: String,
    /// Read the shared cookie from this file (mode 0600). Without it: CONC_COOKIE, else
    /// ~/.conc/cookie. CONC_COOKIE, if set, wins over the file.
    #[arg(long, value_name = "PATH")]
    pub cookie_file: Option<PathBuf>,
}

/// Checks a `--transport` value against the transports compiled in.
pub fn parse_transport(name: &str) -> Result<String, String> {
    conc_node::transport_by_name(name)
        .map(|_| name.to_string())
        .map_err(|e| e.to_string())
}

/// Strips an optional `conc://` scheme and trailing `/` from a node address, so that both
/// `127.0.0.1:9000` and the `conc://127.0.0.1:9000` Machine 1 prints are accepted.
pub fn node_address(addr: &str) -> &str {
    let addr = addr.trim();
    addr.strip_prefix("conc://")
        .unwrap_or(addr)
        .trim_end_matches('/')
}

/// Installs a tracing subscriber writing to stderr, filtered by `RUST_LOG` (else `default`, for
/// example `"warn"`), with colours only on a terminal.
pub fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Where a program's lines go: stdout (flushed after each line) and stderr, each line prefixed
/// (the demo prefixes `[machine2] `; the `machine2` example prints bare lines).
#[derive(Debug, Clone, Copy)]
pub struct Output {
    prefix: &'static str,
}

impl Output {
    /// Lines with this prefix.
    pub const fn new(prefix: &'static str) -> Output {
        Output { prefix }
    }

    /// Prints a line to stdout and flushes it. A closed stdout is ignored.
    pub fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}{text}", self.prefix);
        let _ = out.flush();
    }

    /// Prints a line to stderr.
    pub fn warn(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}{text}", self.prefix);
        let _ = err.flush();
    }
}

/// What Machine 2 does once its node is up.
#[derive(Debug, Clone)]
pub struct Machine2 {
    /// Machine 1's address (`host:port`).
    pub connect: String,
    /// `Some(n)`: make `n` calls, printing `ok <microseconds>` or `error <reason>` for each.
    /// `None`: one call, printing the answer.
    pub repeat: Option<u64>,
    /// The interval between calls when repeating.
    pub every: Duration,
}

impl Machine2 {
    /// Runs Machine 2 on `node`: calls `process1` on Machine 1 (printing the answer, or with
    /// `repeat` one line per call), sends `"Log Message!"` to `logger`, and makes a last round
    /// trip to `process1` so the log message is known delivered (messages from one node to
    /// another arrive in order on every transport). Returns a one-line error on failure; when
    /// repeating, fails only if no call succeeded.
    pub async fn run(&self, node: &Node, out: Output) -> Result<(), String> {
        let peer = node_address(&self.connect);
        let process1 = node
            .remote::<Ping>(peer, PROCESS1)
            .map_err(|e| format!("cannot address {PROCESS1} on {peer}: {e}"))?;
        let logger = node
            .remote::<String>(peer, LOGGER)
            .map_err(|e| format!("cannot address {LOGGER} on {peer}: {e}"))?;
        let call = |text: &str| {
            let text = text.to_string();
            let process1 = process1.clone();
            async move {
                let answer = process1
                    .call(|reply| Ping { text, reply }, CALL_TIMEOUT)
                    .await
                    .map_err(|e| format!("call to {PROCESS1} failed: {e}"))?;
                if answer == REPLY_TEXT {
                    Ok(answer)
                } else {
                    Err(format!(
                        "call to {PROCESS1} got an unexpected answer: {answer:?}"
                    ))
                }
            }
        };

        match self.repeat {
            None => {
                let answer = call(REQUEST_TEXT).await?;
                out.line(&answer);
                logger
                    .send(LOG_TEXT.to_string())
                    .map_err(|e| format!("send to {LOGGER} failed: {}", e.kind))?;
                call(REQUEST_TEXT).await.map_err(|e| {
                    format!("cannot confirm that the log message was delivered: {e}")
                })?;
                Ok(())
            }
            Some(n) => {
                let mut ok = 0u64;
                let mut ticks = tokio::time::interval(self.every.max(Duration::from_millis(1)));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for _ in 0..n {
                    ticks.tick().await;
                    let started = Instant::now();
                    match call(REQUEST_TEXT).await {
                        Ok(_) => {
                            ok += 1;
                            out.line(&format!("ok {}", started.elapsed().as_micros()));
                        }
                        Err(e) => out.line(&format!("error {e}")),
                    }
                }
                // Best effort: the log message and its confirmation.
                match logger.send(LOG_TEXT.to_string()) {
                    Ok(()) => {
                        if let Err(e) = call(REQUEST_TEXT).await {
                            out.warn(&format!(
                                "warning: cannot confirm that the log message was delivered: {e}"
                            ));
                        }
                    }
                    Err(e) => out.warn(&format!("warning: send to {LOGGER} failed: {}", e.kind)),
                }
                if ok == 0 && n > 0 {
                    Err(format!("all {n} calls to {PROCESS1} failed"))
                } else {
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_accept_the_uri_form() {
        assert_eq!(node_address("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(node_address("conc://127.0.0.1:9000/"), "127.0.0.1:9000");
    }

    #[test]
    fn transports_are_checked() {
        assert!(parse_transport("per-message-tcp").is_ok());
        assert!(parse_transport("pooled-tcp").is_ok());
        assert!(parse_transport("carrier-pigeon").is_err());
    }
}
