//! Hostile peers against a real node over real sockets, on pooled TCP and per-message TCP.
//!
//! A node (the victim) is started in the test process with a short handshake deadline and
//! small handshake caps; a raw client, written here from the sans-IO handshake machine and the
//! frame encoders, attacks it: random garbage, a 4 GiB length prefix, a length prefix and then
//! silence (slowloris), 1,000 connections that never finish the handshake, a flood of
//! handshakes with the wrong cookie, a valid handshake followed by garbage, truncated frames,
//! correct frames to a pid of another type, and one authenticated peer opening more
//! connections than `Limits::max_connections_per_peer` allows.
//!
//! After each attack the node still answers a legitimate peer's call, nothing reached its
//! processes (a sink counts every delivery), no name was registered, and the process's resident
//! memory grew by less than [`RSS_BOUND`] at its peak (VmHWM, reset before each attack). The figures are printed (run with
//! `--nocapture`, or see nextest's output of passing tests with `--success-output immediate`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conc_core::{ProcessId, SendRequest, Target, TypeTag};
use conc_node::{Cookie, Inbox, Limits, Node, ReplyTo};
use conc_wire::frame::{self, ErrorCode, Frame, FrameSplitter, kind};
use conc_wire::handshake::{Handshake, HandshakeConfig, NodeIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod common;

const COOKIE: &str = "hostile-suite-cookie";
/// The victim's handshake deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// The victim's silence bound for established pooled connections.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// The victim's caps on connections in the handshake.
const MAX_HANDSHAKES: usize = 64;
const MAX_HANDSHAKES_PER_IP: usize = 8;
/// The victim's cap on authenticated connections per peer node.
const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// The victim's frame limit.
const MAX_FRAME: usize = 1 << 20;
/// Allowed growth of the process's resident memory over one attack: generous, and far below
/// what the attacks ask for (a 4 GiB frame, 1,000 connections with partial frames).
const RSS_BOUND: u64 = 64 << 20;
/// A bound against hangs: how long anything the test waits for may take.
const T: Duration = Duration::from_secs(20);

type Echo = (String, ReplyTo<String>);

/// The tests share one process under `cargo test`; one attack at a time keeps the memory
/// figures of one attack apart from another's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A field of /proc/self/status in bytes (`VmRSS`: resident now, `VmHWM`: peak resident).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The process's resident set size in bytes.
fn rss() -> u64 {
    status_bytes("VmRSS")
}

/// Resets the peak resident set size (`VmHWM`) to the current one (Linux ≥ 4.0), so that the
/// peak of one attack can be read afterwards. Freed memory may go back to the system before the
/// attack ends, so the peak, not the resident size at the end, is what is bounded.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident set size since the last reset.
fn peak_rss() -> u64 {
    status_bytes("VmHWM")
}

/// A small deterministic random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The victim and the legitimate peer.

struct Victim {
    transport: &'static str,
    node: Node,
    addr: SocketAddr,
    /// Everything delivered to `sink` (must stay 0).
    delivered: Arc<AtomicUsize>,
    /// Deliveries to `control`, which only the tests' own correct frames reach.
    control: Arc<AtomicUsize>,
    sink_id: ProcessId,
    /// A legitimate peer.
    client: Node,
}

/// What was measured before an attack.
struct Before {
    rss: u64,
    /// Whether the peak resident size was reset (else only the size at the end is known).
    peak_reset: bool,
    rejected: u64,
    started: Instant,
}

fn victim_limits() -> Limits {
    Limits::default()
        .with_max_frame(MAX_FRAME)
        .with_handshake_timeout(HANDSHAKE_TIMEOUT)
        .with_max_handshakes(MAX_HANDSHAKES)
        .with_max_handshakes_per_ip(MAX_HANDSHAKES_PER_IP)
        .with_heartbeat_timeout(HEARTBEAT_TIMEOUT)
        .with_max_connections_per_peer(MAX_CONNECTIONS_PER_PEER)
}

fn rejected_total(node: &Node) -> u64 {
    node.stats().rejected.values().sum()
}

impl Victim {
    async fn start(transport: &'static str) -> Victim {
        let node = common::loopback_node(transport)
            .cookie(Cookie::new(COOKIE).unwrap())
            .limits(victim_limits())
            .start()
            .await
            .unwrap();
        let delivered = Arc::new(AtomicUsize::new(0));
        let d = delivered.clone();
        let sink = node.spawn(move |mut inbox: Inbox<String>| async move {
            while inbox.recv().await.is_some() {
                d.fetch_add(1, Ordering::SeqCst);
            }
        });
        node.register("sink", &sink).unwrap();
        let control = Arc::new(AtomicUsize::new(0));
        let c = control.clone();
        let ctl = node.spawn(move |mut inbox: Inbox<u64>| async move {
            while inbox.recv().await.is_some() {
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        node.register("control", &ctl).unwrap();
        let echo = node.spawn(|mut inbox: Inbox<Echo>| async move {
            while let Some((text, reply)) = inbox.recv().await {
                let _ = reply.send(format!("echo {text}"));
            }
        });
        node.register("echo", &echo).unwrap();
        let client = common::loopback_node(transport)
            .cookie(Cookie::new(COOKIE).unwrap())
            .start()
            .await
            .unwrap();
        let v = Victim {
            transport,
            addr: node.local_addr().unwrap(),
            sink_id: sink.id().unwrap(),
            node,
            delivered,
            control,
            client,
        };
        v.legit_call("warm-up").await;
        v
    }

    /// The legitimate peer calls `echo`; it must answer.
    async fn legit_call(&self, what: &str) {
        let echo = self
            .client
            .remote::<Echo>(self.node.name(), "echo")
            .unwrap();
        let started = Instant::now();
        let answer = echo
            .call(|r| (what.to_string(), r), T)
            .await
            .unwrap_or_else(|e| panic!("{}: legitimate call after {what}: {e}", self.transport));
        assert_eq!(answer, format!("echo {what}"));
        assert!(started.elapsed() < T);
    }

    fn begin(&self) -> Before {
        let peak_reset = reset_peak_rss();
        Before {
            rss: rss(),
            peak_reset,
            rejected: rejected_total(&self.node),
            started: Instant::now(),
        }
    }

    /// After an attack: the node answers a legitimate call, nothing was delivered or
    /// registered, and memory stayed within the bound. Prints the figures.
    async fn end(&self, before: Before, attack: &str) {
        let took = before.started.elapsed();
        self.legit_call(attack).await;
        let after = rss();
        let peak = if before.peak_reset { peak_rss() } else { after };
        let growth = peak.saturating_sub(before.rss);
        let rejected = rejected_total(&self.node) - before.rejected;
        println!(
            "{} {attack}: rss before {} KiB, peak {} KiB{}, after {} KiB, growth {} KiB \
             (bound {} KiB); rejected +{rejected}; attack took {took:?}; rejected by reason {:?}",
            self.transport,
            before.rss / 1024,
            peak / 1024,
            if before.peak_reset {
                ""
            } else {
                " (peak not measurable)"
            },
            after / 1024,
            growth / 1024,
            RSS_BOUND / 1024,
            self.node.stats().rejected,
        );
        assert!(
            growth < RSS_BOUND,
            "{} {attack}: resident memory grew by {} KiB",
            self.transport,
            growth / 1024
        );
        assert_eq!(
            self.delivered.load(Ordering::SeqCst),
            0,
            "{} {attack}: a hostile message reached the sink",
            self.transport
        );
        let mut registered = self.node.stats().registered;
        registered.sort();
        assert_eq!(registered, ["control", "echo", "sink"]);
    }
}

// ---------------------------------------------------------------------------------------------
// The raw client.

fn cookie(secret: &str) -> Cookie {
    Cookie::new(secret).unwrap()
}

fn fresh_nonce() -> [u8; 32] {
    conc_wire::io::fresh_nonce().unwrap()
}

fn attacker_identity() -> NodeIdentity {
    // A name of its own per raw client (so that the per-peer connection cap does not cut an
    // attack short), on a low loopback port where nothing listens: whatever the victim might
    // send back to this name goes nowhere.
    static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let port = 1 + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 1000;
    NodeIdentity {
        name: format!("127.0.0.1:{port}"),
        incarnation: u64::from_le_bytes(fresh_nonce()[..8].try_into().unwrap()),
    }
}

/// Connects from `source` (any 127.0.0.x address is loopback on Linux).
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(to).await
}

async fn connect(to: SocketAddr) -> TcpStream {
    TcpStream::connect(to).await.unwrap()
}

/// Reads whole frames from a raw stream.
struct RawReader {
    buf: Vec<u8>,
    splitter: FrameSplitter,
}

impl RawReader {
    fn new() -> RawReader {
        RawReader {
            buf: Vec::new(),
            splitter: FrameSplitter::new(MAX_FRAME),
        }
    }

    /// The next frame's payload, or `None` when the stream ended (or failed) first.
    async fn next(&mut self, stream: &mut TcpStream) -> Option<Vec<u8>> {
        loop {
            if let Ok(Some((range, total))) = self.splitter.split(&self.buf) {
                let payload = self.buf[range].to_vec();
                self.buf.drain(..total);
                return Some(payload);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(T, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("the victim neither answered nor closed within {T:?}"),
            }
        }
    }
}

/// How a raw handshake ended.
#[derive(Debug)]
enum Outcome {
    /// The victim accepted our proof.
    Done,
    /// The victim rejected us with this reason.
    Rejected(String),
    /// The connection ended without a reject.
    Closed,
}

/// Runs the client side of the cookie handshake over a raw stream, built only from the
/// sans-IO machine and the frame encoder. Returns the handshake frames the victim sent.
async fn raw_handshake(
    stream: &mut TcpStream,
    reader: &mut RawReader,
    secret: &str,
) -> (Outcome, Vec<Vec<u8>>) {
    raw_handshake_as(stream, reader, secret, attacker_identity()).await
}

/// [`raw_handshake`] claiming the given identity.
async fn raw_handshake_as(
    stream: &mut TcpStream,
    reader: &mut RawReader,
    secret: &str,
    identity: NodeIdentity,
) -> (Outcome, Vec<Vec<u8>>) {
    let config = HandshakeConfig::new(cookie(secret), identity);
    let mut hs = Handshake::client(config, fresh_nonce());
    let mut seen = Vec::new();
    loop {
        let mut out = Vec::new();
        while let Some(m) = hs.poll_transmit() {
            frame::encode_handshake(&mut out, &m);
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return (Outcome::Closed, seen);
        }
        if hs.is_done() {
            return (Outcome::Done, seen);
        }
        let Some(payload) = reader.next(stream).await else {
            return (Outcome::Closed, seen);
        };
        match Frame::decode(&payload) {
            Ok(Frame::Handshake(m)) => {
                seen.push(m.to_vec());
                if let Err(e) = hs.handle(m) {
                    return (Outcome::Rejected(e.to_string()), seen);
                }
            }
            other => {
                panic!("the victim sent a non-handshake frame during the handshake: {other:?}")
            }
        }
    }
}

/// An authenticated raw connection.
async fn authenticated(v: &Victim) -> (TcpStream, RawReader) {
    authenticated_from(Ipv4Addr::LOCALHOST, v.addr).await
}

/// An authenticated raw connection from `source`.
async fn authenticated_from(source: Ipv4Addr, to: SocketAddr) -> (TcpStream, RawReader) {
    let mut stream = connect_from(source, to).await.unwrap();
    let mut reader = RawReader::new();
    match raw_handshake(&mut stream, &mut reader, COOKIE).await {
        (Outcome::Done, _) => (stream, reader),
        (other, _) => {
            panic!("the raw client failed the handshake with the right cookie: {other:?}")
        }
    }
}

/// Runs the tasks concurrently and waits for all of them.
async fn all<F>(tasks: impl IntoIterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
    for h in handles {
        h.await.unwrap();
    }
}

/// Waits until the victim closes the stream (reading and discarding what it sends); returns
/// how long that took. Fails the test if it stays open for `T`.
async fn until_closed(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + T).into(), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the victim kept a hostile connection open for {T:?}"),
        }
    }
}

/// Waits (bounded) until the victim's rejected counter exceeds `than`.
async fn rejected_grows(v: &Victim, than: u64) {
    let deadline = Instant::now() + T;
    while rejected_total(&v.node) <= than {
        assert!(
            Instant::now() < deadline,
            "the rejected counter did not grow: {:?}",
            v.node.stats().rejected
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `Send` frame for `target` with the given tag, carrying `body`.
fn send_frame<B: serde::Serialize>(
    target: Target,
    tag: TypeTag,
    call_ref: Option<u64>,
    body: &B,
) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_send(
        &mut out,
        &SendRequest {
            target: &target,
            tag,
            call_ref,
            body,
            encode: None,
        },
        MAX_FRAME,
    )
    .unwrap();
    out
}

/// A valid `Hello` frame (for truncating).
fn hello_frame() -> Vec<u8> {
    let config = HandshakeConfig::new(cookie(COOKIE), attacker_identity());
    let mut hs = Handshake::client(config, fresh_nonce());
    let mut out = Vec::new();
    frame::encode_handshake(&mut out, &hs.poll_transmit().unwrap());
    out
}

// ---------------------------------------------------------------------------------------------
// The attacks.

/// Random garbage, an HTTP request, and garbage behind a small plausible length prefix, each on
/// fresh connections: the victim closes every one.
async fn random_garbage(v: &Victim) {
    let before = rejected_total(&v.node);
    let mut rng = Rng(0x5eed_0001);
    let mut buf = vec![0u8; 16 << 10];
    for i in 0..120 {
        let mut stream = connect(v.addr).await;
        rng.fill(&mut buf);
        let len = 1 + (rng.next() as usize % buf.len());
        match i % 3 {
            0 => {}
            // A small length prefix, so the garbage reaches the handshake decoder.
            1 => buf[..4].copy_from_slice(&(rng.next() as u32 % 200 + 1).to_be_bytes()),
            // A handshake frame kind with a garbage message.
            _ => {
                buf[..4].copy_from_slice(&100u32.to_be_bytes());
                buf[4] = kind::HANDSHAKE;
            }
        }
        let _ = stream.write_all(&buf[..len.max(105)]).await;
        until_closed(&mut stream).await;
    }
    let mut stream = connect(v.addr).await;
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    until_closed(&mut stream).await;
    rejected_grows(v, before + 100).await;
}

/// A 4 GiB length prefix, before and after the handshake, followed by a stream of bytes: the
/// victim refuses it at once without reserving memory for it.
async fn huge_length_prefix(v: &Victim) {
    let zeros = vec![0u8; 64 << 10];
    for authenticate in [false, true] {
        for prefix in [u32::MAX, 0x8000_0000, (MAX_FRAME + 1) as u32] {
            let mut stream = if authenticate {
                authenticated(v).await.0
            } else {
                connect(v.addr).await
            };
            let before = rejected_total(&v.node);
            let _ = stream.write_all(&prefix.to_be_bytes()).await;
            // Keep sending until the victim closes (a few MiB at most).
            for _ in 0..64 {
                if stream.write_all(&zeros).await.is_err() {
                    break;
                }
            }
            let took = until_closed(&mut stream).await;
            assert!(took < T);
            rejected_grows(v, before).await;
        }
    }
}

/// Before the handshake, frames as large as the frame limit (a handshake message is a few
/// hundred bytes): from many addresses at once, each announcing a frame of the limit and
/// sending all of it but the last byte. The victim must not buffer them.
async fn big_frames_before_the_handshake(v: &Victim) {
    let addr = v.addr;
    let before = rejected_total(&v.node);
    all((0..MAX_HANDSHAKES as u8).map(|i| async move {
        let source = Ipv4Addr::new(127, 0, 6, i + 1);
        let Ok(mut stream) = connect_from(source, addr).await else {
            return;
        };
        let mut data = vec![0u8; 64 << 10];
        data[..4].copy_from_slice(&(MAX_FRAME as u32).to_be_bytes());
        data[4] = kind::HANDSHAKE;
        let mut left = MAX_FRAME + 4 - 1;
        while left > 0 {
            let n = left.min(data.len());
            if stream.write_all(&data[..n]).await.is_err() {
                break;
            }
            data[..5].fill(0);
            left -= n;
        }
        until_closed(&mut stream).await;
    }))
    .await;
    rejected_grows(v, before + MAX_HANDSHAKES as u64 - 1).await;
}

/// How many connections the victim refused for a reason containing `pattern`.
fn rejected_for(v: &Victim, pattern: &str) -> u64 {
    v.node
        .stats()
        .rejected
        .iter()
        .filter(|(reason, _)| reason.contains(pattern))
        .map(|(_, n)| n)
        .sum()
}

/// Waits (bounded by [`T`]) until the victim has refused `n` connections for a reason containing
/// `pattern` (it may count a refusal just after closing the connection), then checks that it
/// has refused no more than that.
async fn rejected_for_reaches(v: &Victim, pattern: &str, n: u64) {
    let deadline = Instant::now() + T;
    while rejected_for(v, pattern) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} refusals for {pattern:?}: {:?}",
            v.node.stats().rejected
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rejected_for(v, pattern), n, "{:?}", v.node.stats().rejected);
}

/// A length prefix and then silence, and a valid Hello dribbled a byte at a time: the victim
/// drops both at the handshake deadline (each counted as a handshake that timed out). After the
/// handshake, a length prefix and silence is dropped too (per-message: the deadline for the
/// frame; pooled: the silence bound). Each wait for a close is bounded by [`T`], far above
/// those deadlines: a connection kept open fails the test there.
async fn slowloris(v: &Victim) {
    let timed_out = rejected_for(v, "timed out");
    // Many at once, from several source addresses so that the per-address cap does not refuse
    // them before the deadline does.
    let mut tasks = Vec::new();
    for i in 0..24u8 {
        let addr = v.addr;
        tasks.push(tokio::spawn(async move {
            let source = Ipv4Addr::new(127, 0, 0, 20 + i % 6);
            let mut stream = connect_from(source, addr).await.unwrap();
            stream.write_all(&100u32.to_be_bytes()).await.unwrap();
            until_closed(&mut stream).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Each was refused because its handshake timed out (not by a cap, not as malformed).
    rejected_for_reaches(v, "timed out", timed_out + 24).await;
    // A dribbled Hello: the deadline is for the whole handshake, not per read. The victim
    // closes the connection while bytes still arrive (paced so that all but the last byte take
    // ten times the deadline), and counts it as a handshake that timed out.
    let hello = hello_frame();
    let pace = 10 * HANDSHAKE_TIMEOUT / (hello.len() as u32 - 1);
    let mut stream = connect(v.addr).await;
    let mut closed_while_dribbling = false;
    for b in &hello[..hello.len() - 1] {
        if stream.write_all(&[*b]).await.is_err() {
            closed_while_dribbling = true;
            break;
        }
        tokio::time::sleep(pace).await;
    }
    until_closed(&mut stream).await;
    assert!(
        closed_while_dribbling,
        "the victim let a Hello dribble in for {:?} without closing",
        10 * HANDSHAKE_TIMEOUT
    );
    rejected_for_reaches(v, "timed out", timed_out + 25).await;
    // After the handshake: closed (until_closed fails the test if it stays open for T).
    let (mut stream, _) = authenticated(v).await;
    stream.write_all(&100u32.to_be_bytes()).await.unwrap();
    until_closed(&mut stream).await;
}

/// Opens `n` connections spread over `sources`, each sending the start of a Hello and never
/// finishing; returns the smallest number seen open at once after all connected and the number
/// of connects that failed, and checks that the victim closes every one.
async fn unfinished(v: &Victim, sources: &[Ipv4Addr], n: usize) -> (usize, usize) {
    let open = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let partial = hello_frame()[..12].to_vec();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (open, connected, failed) = (open.clone(), connected.clone(), failed.clone());
        let source = sources[i % sources.len()];
        let addr = v.addr;
        let partial = partial.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = match connect_from(source, addr).await {
                Ok(s) => s,
                Err(_) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    connected.fetch_add(1, Ordering::SeqCst);
                    return Duration::ZERO;
                }
            };
            open.fetch_add(1, Ordering::SeqCst);
            connected.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(&partial).await;
            let took = until_closed(&mut stream).await;
            open.fetch_sub(1, Ordering::SeqCst);
            took
        }));
    }
    let deadline = Instant::now() + T;
    while connected.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "connecting took too long");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut min_open = usize::MAX;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        min_open = min_open.min(open.load(Ordering::SeqCst));
    }
    let mut longest = Duration::ZERO;
    for t in tasks {
        longest = longest.max(t.await.unwrap());
    }
    println!(
        "{}: {n} unfinished handshakes from {} addresses: at most {min_open} kept open at once, \
         {} connects failed, all closed by the victim within {longest:?}",
        v.transport,
        sources.len(),
        failed.load(Ordering::SeqCst)
    );
    assert_eq!(open.load(Ordering::SeqCst), 0);
    (min_open, failed.load(Ordering::SeqCst))
}

/// 1,000 connections that never finish the handshake, first from one address (the per-address
/// cap applies), then from 125 addresses (the overall cap applies). A pooled peer with an
/// established connection is served throughout. Every connection is refused one way or the
/// other (at once by a cap, or at the handshake deadline) and counted.
async fn unfinished_handshakes(v: &Victim) {
    let too_many = |v: &Victim| {
        *v.node
            .stats()
            .rejected
            .get("too many connections in handshake")
            .unwrap_or(&0)
    };
    let before = rejected_total(&v.node);
    let one = [Ipv4Addr::new(127, 0, 0, 1)];
    let during = async {
        if v.transport == "pooled-tcp" {
            tokio::time::sleep(Duration::from_millis(100)).await;
            v.legit_call("during the flood").await;
        }
    };
    let ((open, failed), ()) = tokio::join!(unfinished(v, &one, 1000), during);
    assert!(
        open <= MAX_HANDSHAKES_PER_IP,
        "{open} connections from one address were kept in the handshake"
    );
    rejected_grows(v, before + (1000 - failed) as u64 - 1).await;
    let capped = too_many(v);
    assert!(capped > 0, "the per-address cap refused nothing");
    let before = rejected_total(&v.node);
    let many: Vec<Ipv4Addr> = (0..125).map(|i| Ipv4Addr::new(127, 0, 1, i + 1)).collect();
    let (open, failed) = unfinished(v, &many, 1000).await;
    assert!(
        open <= MAX_HANDSHAKES,
        "{open} connections were kept in the handshake overall"
    );
    rejected_grows(v, before + (1000 - failed) as u64 - 1).await;
    assert!(too_many(v) > capped, "the overall cap refused nothing");
}

/// Handshakes with the wrong cookie, 8 at a time from 8 addresses: every one is rejected, and
/// all the victim reveals is its handshake messages.
async fn wrong_cookie_flood(v: &Victim) {
    let before = rejected_total(&v.node);
    let rejects = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..8u8 {
        let addr = v.addr;
        let rejects = rejects.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let source = Ipv4Addr::new(127, 0, 2, w + 1);
                let mut stream = connect_from(source, addr).await.unwrap();
                let mut reader = RawReader::new();
                let (outcome, seen) =
                    raw_handshake(&mut stream, &mut reader, &format!("guess-{w}-{i}")).await;
                match outcome {
                    Outcome::Rejected(reason) => {
                        assert!(reason.contains("cookie"), "{reason}");
                        rejects.fetch_add(1, Ordering::SeqCst);
                    }
                    Outcome::Closed => {}
                    Outcome::Done => panic!("a wrong cookie was accepted"),
                }
                // Only the challenge and the reject came back.
                assert!(seen.len() <= 2, "{} handshake messages", seen.len());
                until_closed(&mut stream).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(rejects.load(Ordering::SeqCst), 400);
    rejected_grows(v, before + 399).await;
}

/// A valid handshake followed by garbage; and (pooled) frames after a goodbye.
async fn garbage_after_handshake(v: &Victim) {
    let before = rejected_total(&v.node);
    let addr = v.addr;
    all((0..40u8).map(|i| async move {
        let mut rng = Rng(0x5eed_0002 + u64::from(i));
        let mut buf = vec![0u8; 64 << 10];
        let (mut stream, _) = authenticated_from(Ipv4Addr::new(127, 0, 3, i + 1), addr).await;
        rng.fill(&mut buf);
        if i % 2 == 1 {
            // A plausible length and a Send kind, then garbage.
            buf[..4].copy_from_slice(&200u32.to_be_bytes());
            buf[4] = kind::SEND;
        }
        let _ = stream.write_all(&buf).await;
        until_closed(&mut stream).await;
    }))
    .await;
    rejected_grows(v, before + 39).await;
    if v.transport == "pooled-tcp" {
        // Bytes after a close: a goodbye, then a correct frame, which is not acted on.
        let (mut stream, _) = authenticated(v).await;
        let mut out = Vec::new();
        frame::encode_bare(&mut out, kind::GOODBYE);
        out.extend(send_frame(
            Target::Name("control".into()),
            TypeTag::of::<u64>(),
            None,
            &7u64,
        ));
        stream.write_all(&out).await.unwrap();
        until_closed(&mut stream).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(v.control.load(Ordering::SeqCst), 0);
    }
}

/// One authenticated peer opens more connections than the cap allows: the victim closes the
/// one over the cap right after its handshake, with its own reason. The connections within the
/// cap are kept alive with pings (pooled), or are waiting for their frame (per-message).
async fn too_many_connections_per_peer(v: &Victim) {
    let who = attacker_identity();
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_PEER {
        let mut stream = connect(v.addr).await;
        let mut reader = RawReader::new();
        let (outcome, _) = raw_handshake_as(&mut stream, &mut reader, COOKIE, who.clone()).await;
        assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
        held.push(stream);
    }
    let pingers: Vec<_> = if v.transport == "pooled-tcp" {
        std::mem::take(&mut held)
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    let mut ping = Vec::new();
                    frame::encode_bare(&mut ping, kind::PING);
                    while stream.write_all(&ping).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
            })
            .collect()
    } else {
        // Per-message connections (kept in `held`) wait for their frame until the deadline.
        Vec::new()
    };
    let before = rejected_total(&v.node);
    let mut stream = connect(v.addr).await;
    let mut reader = RawReader::new();
    let (outcome, _) = raw_handshake_as(&mut stream, &mut reader, COOKIE, who).await;
    // The handshake itself succeeds (the cap is per authenticated name); then it is closed.
    assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
    until_closed(&mut stream).await;
    rejected_grows(v, before).await;
    let reasons = v.node.stats().rejected;
    assert!(
        reasons
            .keys()
            .any(|k| k.starts_with("too many connections from this peer")),
        "{reasons:?}"
    );
    for p in pingers {
        p.abort();
    }
    drop(held);
}

/// Frames cut short: a Hello truncated at every length and then closed or left silent; after
/// the handshake, a Send frame cut at several places; and a Send frame whose length prefix is
/// consistent but whose body is cut (refused as undecodable).
async fn truncated_frames(v: &Victim) {
    let addr = v.addr;
    let hello = hello_frame();
    all((1..hello.len()).map(|cut| {
        let hello = hello.clone();
        async move {
            let source = Ipv4Addr::new(127, 0, 4, cut as u8);
            let mut stream = connect_from(source, addr).await.unwrap();
            stream.write_all(&hello[..cut]).await.unwrap();
            if cut % 2 == 0 {
                let _ = stream.shutdown().await;
            }
            until_closed(&mut stream).await;
        }
    }))
    .await;
    let whole = send_frame(
        Target::Name("sink".into()),
        TypeTag::of::<String>(),
        None,
        &"x".repeat(300),
    );
    let cuts = [1, 3, 4, 5, 9, 20, whole.len() / 2, whole.len() - 1];
    all(cuts.into_iter().enumerate().map(|(i, cut)| {
        let whole = whole.clone();
        async move {
            let source = Ipv4Addr::new(127, 0, 5, i as u8 + 1);
            let (mut stream, _) = authenticated_from(source, addr).await;
            stream.write_all(&whole[..cut]).await.unwrap();
            let _ = stream.shutdown().await;
            until_closed(&mut stream).await;
        }
    }))
    .await;
    // Consistent length prefix, body cut: the string claims 300 bytes, 100 are there.
    let mut cut = whole[..whole.len() - 200].to_vec();
    let len = (cut.len() - 4) as u32;
    cut[..4].copy_from_slice(&len.to_be_bytes());
    let (mut stream, mut reader) = authenticated(v).await;
    stream.write_all(&cut).await.unwrap();
    let code = next_error(&mut stream, &mut reader).await;
    assert_eq!(code, Some(ErrorCode::Decode));
}

/// Reads frames until an `Error` frame (skipping pings); its code.
async fn next_error(stream: &mut TcpStream, reader: &mut RawReader) -> Option<ErrorCode> {
    loop {
        let payload = reader.next(stream).await?;
        match Frame::decode(&payload).unwrap() {
            Frame::Error { code, .. } => return Some(code),
            Frame::Ping | Frame::Pong | Frame::Ack => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Correct frames to a pid of another type (by name and by id), a body that does not decode
/// as the target's type, a pid of another incarnation and an unknown name: each is refused
/// with an error frame naming the reason, and nothing is delivered. A correct frame from the
/// same raw client (the control) is delivered, so the refusals are not the raw client's fault.
async fn wrong_typed_pid(v: &Victim) {
    let sink = Target::Id(v.sink_id);
    let stale = Target::Id(ProcessId {
        incarnation: v.sink_id.incarnation ^ 1,
        id: v.sink_id.id,
    });
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (
            send_frame(
                Target::Name("sink".into()),
                TypeTag::of::<u64>(),
                Some(1),
                &42u64,
            ),
            ErrorCode::TypeMismatch,
        ),
        (
            send_frame(sink.clone(), TypeTag::of::<u64>(), Some(2), &42u64),
            ErrorCode::TypeMismatch,
        ),
        (
            send_frame(
                sink.clone(),
                TypeTag::of::<Vec<String>>(),
                Some(3),
                &vec!["a".to_string()],
            ),
            ErrorCode::TypeMismatch,
        ),
        (
            // The right tag, but the body is a u64 (200): as a String it claims 200 bytes.
            send_frame(sink.clone(), TypeTag::of::<String>(), Some(4), &200u64),
            ErrorCode::Decode,
        ),
        (
            send_frame(stale, TypeTag::of::<String>(), Some(5), &"x".to_string()),
            ErrorCode::NoSuchProcess,
        ),
        (
            send_frame(
                Target::Name("nobody".into()),
                TypeTag::of::<String>(),
                Some(6),
                &"x".to_string(),
            ),
            ErrorCode::UnknownName,
        ),
    ];
    let control = send_frame(
        Target::Name("control".into()),
        TypeTag::of::<u64>(),
        None,
        &7u64,
    );
    if v.transport == "per-message-tcp" {
        // One frame per connection, answered with an error (or an ack) and closed.
        for (bytes, code) in &cases {
            let (mut stream, mut reader) = authenticated(v).await;
            stream.write_all(bytes).await.unwrap();
            assert_eq!(next_error(&mut stream, &mut reader).await, Some(*code));
            until_closed(&mut stream).await;
        }
        let (mut stream, mut reader) = authenticated(v).await;
        stream.write_all(&control).await.unwrap();
        let answer = reader.next(&mut stream).await.unwrap();
        assert_eq!(Frame::decode(&answer).unwrap(), Frame::Ack);
    } else {
        // All on one connection, which stays up.
        let (mut stream, mut reader) = authenticated(v).await;
        for (bytes, code) in &cases {
            stream.write_all(bytes).await.unwrap();
            assert_eq!(next_error(&mut stream, &mut reader).await, Some(*code));
        }
        stream.write_all(&control).await.unwrap();
    }
    let deadline = Instant::now() + T;
    while v.control.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the control frame was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    v.control.store(0, Ordering::SeqCst);
}

/// An authenticated peer answers, fails and drops calls it was never sent, guessing their reply
/// ids: the victim's pending call to another peer ignores every forgery and gets the genuine
/// reply. (Reply ids are a keyed pseudo-random function of a counter; sequential ids made the
/// victim's first call id 1.)
async fn forged_replies(v: &Victim) {
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = v.client.spawn(move |mut inbox: Inbox<Echo>| async move {
        let (text, reply) = inbox.recv().await.unwrap();
        let _ = got_tx.send(());
        let _ = release_rx.await;
        let _ = reply.send(format!("genuine {text}"));
    });
    v.client.register("holder", &holder).unwrap();
    let to_holder = v.node.remote::<Echo>(v.client.name(), "holder").unwrap();
    let call = tokio::spawn(async move { to_holder.call(|r| ("x".to_string(), r), T).await });
    got_rx.await.unwrap();
    let incarnation = v.node.incarnation();
    let guesses: u64 = if v.transport == "per-message-tcp" {
        64
    } else {
        512
    };
    let mut forged = Vec::new();
    for id in 0..guesses {
        let mut reply = Vec::new();
        frame::encode_reply(
            &mut reply,
            &conc_core::ReplyRequest {
                incarnation,
                reply_id: id,
                tag: TypeTag::of::<String>(),
                body: &"forged".to_string(),
            },
            MAX_FRAME,
        )
        .unwrap();
        let mut dropped = Vec::new();
        frame::encode_reply_dropped(&mut dropped, incarnation, id, true).unwrap();
        let mut failed = Vec::new();
        frame::encode_reply_failed(&mut failed, incarnation, id, ErrorCode::ReplyTooLarge).unwrap();
        let mut error = Vec::new();
        frame::encode_error(&mut error, Some(id), ErrorCode::NoSuchProcess, "forged").unwrap();
        forged.extend([reply, dropped, failed, error]);
    }
    let control = send_frame(
        Target::Name("control".into()),
        TypeTag::of::<u64>(),
        None,
        &7u64,
    );
    if v.transport == "per-message-tcp" {
        // One frame per connection; the victim handles it and closes.
        for bytes in &forged {
            let (mut stream, _) = authenticated(v).await;
            let _ = stream.write_all(bytes).await;
            until_closed(&mut stream).await;
        }
    } else {
        // All on one connection, then the control: once the control is delivered, every
        // forgery before it was handled.
        let (mut stream, _) = authenticated(v).await;
        for bytes in &forged {
            stream.write_all(bytes).await.unwrap();
        }
        stream.write_all(&control).await.unwrap();
        let deadline = Instant::now() + T;
        while v.control.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the control frame was not delivered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        v.control.store(0, Ordering::SeqCst);
    }
    assert!(!call.is_finished(), "a forged reply ended the call");
    release_tx.send(()).unwrap();
    assert_eq!(call.await.unwrap().unwrap(), "genuine x");
}

/// A peer reuses a monitor id for a second target: the second monitor replaces the first (as a
/// reference names one monitor), so the first target's exit sends no `Down` under that id and
/// the second's sends exactly one. Pooled only: on per-message TCP a `Down` comes back on a new
/// connection to the watcher's listen address, which a raw client does not have.
async fn monitor_id_reuse(v: &Victim) {
    if v.transport == "per-message-tcp" {
        return;
    }
    let first = v
        .node
        .spawn(|mut inbox: Inbox<String>| async move { while inbox.recv().await.is_some() {} });
    let second = v
        .node
        .spawn(|mut inbox: Inbox<String>| async move { while inbox.recv().await.is_some() {} });
    let (first_id, second_id) = (first.id().unwrap(), second.id().unwrap());
    let (mut stream, mut reader) = authenticated(v).await;
    for target in [first_id, second_id] {
        let mut out = Vec::new();
        frame::encode_monitor(&mut out, &Target::Id(target), 5, false).unwrap();
        stream.write_all(&out).await.unwrap();
    }
    stream
        .write_all(&send_frame(
            Target::Name("control".into()),
            TypeTag::of::<u64>(),
            None,
            &7u64,
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    while v.control.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the control frame was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    v.control.store(0, Ordering::SeqCst);
    // Both monitors were handled. The first target exits first, then the second.
    let first_gone = v.node.runtime().monitor(&first);
    first.kill();
    first_gone.await;
    second.kill();
    let down = tokio::time::timeout(T, async {
        loop {
            let payload = reader.next(&mut stream).await.unwrap();
            match Frame::decode(&payload).unwrap() {
                Frame::Down { monitor, pid, .. } => return (monitor, pid),
                Frame::Ping | Frame::Pong | Frame::Ack => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    })
    .await
    .expect("no Down for the second monitor");
    assert_eq!(down, (5, second_id), "a Down came for the replaced monitor");
}

/// Frames other than a handshake before the handshake (a send, a monitor, a link), and a
/// handshake frame after it: refused, nothing delivered.
async fn frames_before_the_handshake(v: &Victim) {
    let mut frames = vec![send_frame(
        Target::Name("control".into()),
        TypeTag::of::<u64>(),
        None,
        &7u64,
    )];
    let mut out = Vec::new();
    frame::encode_monitor(&mut out, &Target::Name("sink".into()), 1, false).unwrap();
    frames.push(out);
    let mut out = Vec::new();
    frame::encode_link(&mut out, &Target::Id(v.sink_id), v.sink_id, false).unwrap();
    frames.push(out);
    for bytes in &frames {
        let before = rejected_total(&v.node);
        let mut stream = connect(v.addr).await;
        stream.write_all(bytes).await.unwrap();
        until_closed(&mut stream).await;
        rejected_grows(v, before).await;
    }
    if v.transport == "pooled-tcp" {
        let (mut stream, _) = authenticated(v).await;
        stream.write_all(&hello_frame()).await.unwrap();
        until_closed(&mut stream).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(v.control.load(Ordering::SeqCst), 0);
}

/// Pieces of a large frame that never ends (pooled TCP, which agreed fragments in the
/// handshake): the victim reassembles at most its frame limit, then closes the connection and
/// counts the refusal.
async fn endless_fragments(v: &Victim) {
    let (mut stream, _reader) = authenticated(v).await;
    let before = rejected_total(&v.node);
    let mut piece = Vec::new();
    frame::encode_fragment(&mut piece, false, &[frame::kind::SEND; 64 << 10]);
    for _ in 0..4 * MAX_FRAME / (64 << 10) {
        if stream.write_all(&piece).await.is_err() {
            break;
        }
    }
    until_closed(&mut stream).await;
    rejected_grows(v, before).await;
    rejected_for_reaches(v, "fragmented frame", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tcp_endless_fragments() {
    run("pooled-tcp", "endless_fragments").await;
}

macro_rules! attacks {
    ($($attack:ident),* $(,)?) => {
        mod pooled_tcp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $attack() {
                    super::run("pooled-tcp", stringify!($attack)).await;
                }
            )*
        }
        mod per_message_tcp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $attack() {
                    super::run("per-message-tcp", stringify!($attack)).await;
                }
            )*
        }
    };
}

async fn run(transport: &'static str, attack: &str) {
    let _one = ONE_AT_A_TIME.lock().await;
    let v = Victim::start(transport).await;
    let before = v.begin();
    match attack {
        "random_garbage" => random_garbage(&v).await,
        "huge_length_prefix" => huge_length_prefix(&v).await,
        "slowloris" => slowloris(&v).await,
        "big_frames_before_the_handshake" => big_frames_before_the_handshake(&v).await,
        "unfinished_handshakes" => unfinished_handshakes(&v).await,
        "wrong_cookie_flood" => wrong_cookie_flood(&v).await,
        "garbage_after_handshake" => garbage_after_handshake(&v).await,
        "truncated_frames" => truncated_frames(&v).await,
        "wrong_typed_pid" => wrong_typed_pid(&v).await,
        "frames_before_the_handshake" => frames_before_the_handshake(&v).await,
        "too_many_connections_per_peer" => too_many_connections_per_peer(&v).await,
        "forged_replies" => forged_replies(&v).await,
        "monitor_id_reuse" => monitor_id_reuse(&v).await,
        "endless_fragments" => endless_fragments(&v).await,
        other => unreachable!("{other}"),
    }
    v.end(before, attack).await;
    v.client.shutdown().await;
    v.node.shutdown().await;
}

attacks!(
    random_garbage,
    huge_length_prefix,
    big_frames_before_the_handshake,
    slowloris,
    unfinished_handshakes,
    wrong_cookie_flood,
    garbage_after_handshake,
    truncated_frames,
    wrong_typed_pid,
    frames_before_the_handshake,
    too_many_connections_per_peer,
    forged_replies,
    monitor_id_reuse,
);

/// A peer that never closes its side after the node's goodbye does not keep the node's end of
/// the connection open: the reader gives up after the goodbye's grace
/// (`conc_wire::liveness::Liveness::GOODBYE_GRACE`, 1 s), not after the silence bound (here
/// 10 minutes, far beyond this test's deadline). Seen from the peer: once the node's end is
/// closed, the peer's writes fail (the kernel answers them with a reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tcp_a_peer_that_never_closes_after_the_goodbye() {
    let _one = ONE_AT_A_TIME.lock().await;
    let node = common::loopback_node("pooled-tcp")
        .cookie(Cookie::new(COOKIE).unwrap())
        .limits(Limits::default().with_heartbeat_timeout(Duration::from_secs(600)))
        .start()
        .await
        .unwrap();
    let addr = node.local_addr().unwrap();
    let mut stream = connect(addr).await;
    let mut reader = RawReader::new();
    match raw_handshake(&mut stream, &mut reader, COOKIE).await {
        (Outcome::Done, _) => {}
        (other, _) => panic!("handshake: {other:?}"),
    }
    node.shutdown().await;
    // The goodbye, then the end of the node's writing side.
    let mut saw_goodbye = false;
    while let Some(payload) = tokio::time::timeout(T, reader.next(&mut stream))
        .await
        .expect("the goodbye within the deadline")
    {
        saw_goodbye |= matches!(Frame::decode(&payload), Ok(Frame::Goodbye));
    }
    assert!(saw_goodbye, "no goodbye before the end of the stream");
    // The peer keeps its side open and writes pings until a write fails: once the buffers
    // are full a write waits, and the node's close (a reset, since it leaves data unread)
    // ends it with an error.
    let mut pings = Vec::new();
    for _ in 0..4096 {
        frame::encode_bare(&mut pings, frame::kind::PING);
    }
    tokio::time::timeout(T, async { while stream.write_all(&pings).await.is_ok() {} })
        .await
        .unwrap_or_else(|_| {
            panic!("the node kept its end of the connection open for {T:?} after its goodbye")
        });
}
