//! Stream proxies in one command: the seed's "future extension", where a stream sent in a
//! message arrives as a proxy whose writes come back to the original.
//!
//! ```text
//! cargo run --example proxy_stream [-- --transport per-message-tcp|pooled-tcp|quic]
//! ```
//!
//! The program starts a second node as a child OS process (itself, with a hidden flag), both
//! on loopback and sharing a fresh random cookie in a private temporary file (mode 0600). Then:
//!
//! 1. It wraps its own stdout in a [`WriteProxy`] and sends it in a message to the `lines`
//!    process on the other node, which writes `proxied line 1` … `proxied line 100` into it.
//!    The lines travel back and appear here, in order. (The proxy also keeps a copy of what it
//!    wrote, so the program can check the lines.)
//! 2. It writes a temporary file of a few hundred KB of pseudo-random bytes, wraps the open
//!    file in a [`ReadProxy`] and sends it to the `hasher` process on the other node, which
//!    reads it through the proxy and answers its SHA-256. Both digests are printed:
//!
//! ```text
//! proxied line 1
//! …
//! proxied line 100
//! lines: 100 proxied lines arrived in order
//! sha256 local  <hex> (<n> bytes)
//! sha256 remote <hex> (<n> bytes)
//! sha256: match
//! all matched
//! ```
//!
//! Exits 0 only if the lines and the digests all matched. Errors go to stderr.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use clap::Parser;
use conc_node::{Inbox, Node, ReadProxy, ReplyTo, WriteProxy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// How many lines the other node writes.
const LINES: u32 = 100;
/// The size of the file read through the proxy.
const FILE_BYTES: usize = 300_000 + 1_234;
/// How long the other node may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// What the child prints once it serves; its node's URI follows.
const LISTENING: &str = "listening on ";

/// Stream proxies between two nodes, in one command.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The transport: per-message-tcp, pooled-tcp or quic (if compiled in).
    #[arg(long, default_value = "pooled-tcp", value_parser = check_transport)]
    transport: String,
    /// Internal: run as the other node, with this cookie file.
    #[arg(long, hide = true, value_name = "COOKIE_FILE")]
    serve: Option<PathBuf>,
}

fn check_transport(name: &str) -> Result<String, String> {
    conc_node::transport_by_name(name)
        .map(|_| name.to_string())
        .map_err(|e| e.to_string())
}

/// "Write `count` numbered lines into `out`", answered with the number written.
#[derive(Serialize, Deserialize)]
struct WriteLines {
    out: WriteProxy,
    count: u32,
    done: ReplyTo<Result<u32, String>>,
}

/// "Read `input` to its end", answered with the SHA-256 (hex) and the number of bytes.
#[derive(Serialize, Deserialize)]
struct HashFile {
    input: ReadProxy,
    done: ReplyTo<Result<(String, u64), String>>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let res = match &args.serve {
        Some(cookie) => serve(&args.transport, cookie).await,
        None => run(&args.transport).await,
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start_node(transport: &str, cookie_file: &Path) -> Result<Node, String> {
    let cookie = conc_node::read_cookie_file(cookie_file).map_err(|e| e.to_string())?;
    let transport = conc_node::transport_by_name(transport).map_err(|e| e.to_string())?;
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie)
        .transport_arc(transport)
        .start()
        .await
        .map_err(|e| format!("cannot start a node: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The other node.

/// Serves `lines` and `hasher` until stdin closes (the parent is done or gone).
async fn serve(transport: &str, cookie_file: &Path) -> Result<(), String> {
    let node = start_node(transport, cookie_file).await?;
    let lines = node.spawn(|mut inbox: Inbox<WriteLines>| async move {
        while let Some(WriteLines { out, count, done }) = inbox.recv().await {
            let mut w = out.into_writer();
            let res = async {
                for i in 1..=count {
                    w.write_all(format!("proxied line {i}\n").as_bytes())
                        .await?;
                }
                w.flush().await
            }
            .await;
            drop(w);
            let _ = done.send(res.map(|()| count).map_err(|e| e.to_string()));
        }
    });
    let hasher = node.spawn(|mut inbox: Inbox<HashFile>| async move {
        while let Some(HashFile { input, done }) = inbox.recv().await {
            let mut r = input.into_reader();
            let res = async {
                let mut hash = Sha256::new();
                let mut total = 0u64;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = r.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    total += n as u64;
                }
                std::io::Result::Ok((hex(&hash.finalize()), total))
            }
            .await;
            drop(r);
            let _ = done.send(res.map_err(|e| e.to_string()));
        }
    });
    node.register("lines", &lines).map_err(|e| e.to_string())?;
    node.register("hasher", &hasher)
        .map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{LISTENING}{}", node.uri());
        let _ = out.flush();
    }
    // Serve until the parent closes our stdin (or exits).
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    node.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// This node.

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("conc-proxy-stream-{}-{nanos}", std::process::id()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Our stdout, keeping a copy of what goes through it.
struct Tee {
    out: tokio::io::Stdout,
    copy: Arc<Mutex<Vec<u8>>>,
}

impl AsyncWrite for Tee {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.out).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            self.copy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..*n]);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.out).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.out).poll_shutdown(cx)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Pseudo-random bytes (xorshift seeded from the clock).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x2545_f491_4f6c_dd1d)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run(transport: &str) -> Result<(), String> {
    let dir = TempDir::new()?;
    let cookie_file = dir.0.join("cookie");
    conc_node::create_cookie_file(&cookie_file).map_err(|e| e.to_string())?;
    let node = start_node(transport, &cookie_file).await?;

    // The other node: this program again, in serve mode. Killed if we leave early.
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--transport")
        .arg(transport)
        .arg("--serve")
        .arg(&cookie_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the other node: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the other node has no stdout pipe")?;
    let mut child_lines = BufReader::new(stdout).lines();
    let peer = tokio::time::timeout(START_TIMEOUT, async {
        while let Ok(Some(line)) = child_lines.next_line().await {
            if let Some(uri) = line.strip_prefix(LISTENING) {
                return Some(uri.trim_start_matches("conc://").to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or("the other node did not start")?;

    let result = jobs(&node, &peer, &dir.0).await;

    // Let the other node go: close its stdin, then wait (bounded) for it.
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    node.shutdown().await;
    result
}

async fn jobs(node: &Node, peer: &str, dir: &Path) -> Result<(), String> {
    let lines = node
        .remote::<WriteLines>(peer, "lines")
        .map_err(|e| e.to_string())?;
    let hasher = node
        .remote::<HashFile>(peer, "hasher")
        .map_err(|e| e.to_string())?;

    // 1. Our stdout, written from the other node.
    let copy = Arc::new(Mutex::new(Vec::new()));
    let tee = Tee {
        out: tokio::io::stdout(),
        copy: copy.clone(),
    };
    let out = WriteProxy::new(node, tee);
    let written = lines
        .call(
            |done| WriteLines {
                out,
                count: LINES,
                done,
            },
            JOB_TIMEOUT,
        )
        .await
        .map_err(|e| format!("the lines job failed: {e}"))?
        .map_err(|e| format!("the other node could not write: {e}"))?;
    let expected: String = (1..=LINES).map(|i| format!("proxied line {i}\n")).collect();
    let got = copy.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lines_ok = written == LINES && got == expected.as_bytes();
    if lines_ok {
        say(&format!("lines: {LINES} proxied lines arrived in order"));
    } else {
        say(&format!(
            "lines: MISMATCH ({written} written, {} bytes arrived, {} expected)",
            got.len(),
            expected.len()
        ));
    }

    // 2. A local file, read from the other node.
    let data = random_bytes(FILE_BYTES);
    let path = dir.join("data.bin");
    std::fs::write(&path, &data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let local = hex(&Sha256::digest(&data));
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let input = ReadProxy::new(node, file);
    let (remote, remote_len) = hasher
        .call(|done| HashFile { input, done }, JOB_TIMEOUT)
        .await
        .map_err(|e| format!("the hash job failed: {e}"))?
        .map_err(|e| format!("the other node could not read: {e}"))?;
    say(&format!("sha256 local  {local} ({} bytes)", data.len()));
    say(&format!("sha256 remote {remote} ({remote_len} bytes)"));
    let hash_ok = remote == local && remote_len == data.len() as u64;
    say(if hash_ok {
        "sha256: match"
    } else {
        "sha256: MISMATCH"
    });

    if lines_ok && hash_ok {
        say("all matched");
        Ok(())
    } else {
        Err("something did not match".to_string())
    }
}
