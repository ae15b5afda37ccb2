//! The remote workloads: the server node (this executable again, with `--serve`) in another OS
//! process, and the client side of `remote_async` and `remote_rpc`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use conc_node::{CallError, Inbox, Node, Pid, RemoteError, SendErrorKind};

use conc_node::Limits;

use crate::msgs::{
    Bytes32, Echo, LargeSink, Payload, Sink, echo_loop, large_sink_loop, many_sink, sink_loop,
};
use crate::progress::Progress;
use crate::report::Results;
use crate::{Args, Workload};

/// How long the server may take to start and print its name.
const SERVER_START: Duration = Duration::from_secs(20);

/// The deadline of one call of `remote_rpc` (the workload as a whole has `--timeout-secs`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls made before `remote_rpc` is timed: the connection is set up, code and caches are warm.
const RPC_WARMUP: u64 = 1000;

/// Senders (on the client) and receivers (on the server) of `remote_many`.
pub(crate) const MANY: usize = 8;

/// The size of one `remote_large` message.
const LARGE: usize = 1 << 20;

/// The size of the messages streamed during `remote_hol`.
const HOL_LARGE: usize = 8 << 20;

/// Both nodes' limits: frames up to 16 MiB, so that `remote_hol`'s 8 MiB messages (and their
/// header) fit.
fn limits() -> Limits {
    Limits::default().with_max_frame(16 << 20)
}

/// The printed prefix of the server's one line on stdout.
const LISTENING: &str = "listening on conc://";

/// The server (`--serve --transport T --cookie-file F`): a node on 127.0.0.1:0 with a `sink`
/// and an `echo` process, which prints its name and serves until stdin closes.
pub(crate) async fn serve(args: &Args) -> Result<(), String> {
    let cookie = args
        .cookie_file
        .as_ref()
        .ok_or("--serve needs --cookie-file")?;
    let transport = conc_node::transport_by_name(&args.transport).map_err(|e| e.to_string())?;
    let node = Node::builder()
        .listen("127.0.0.1:0")
        .cookie_file(cookie)
        .limits(limits())
        .transport_arc(transport)
        .start()
        .await
        .map_err(|e| format!("cannot start the node: {e}"))?;
    register::<[u8; 32]>(&node)?;
    register::<Bytes32>(&node)?;
    let large = node.spawn(large_sink_loop);
    node.register("large", &large).map_err(|e| e.to_string())?;
    println!("{LISTENING}{}", node.name());
    // The client holds our stdin; when it closes (the client ended, however), so do we.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    node.shutdown().await;
    Ok(())
}

/// Spawns and registers the sink and the echo process for payload `P`.
fn register<P: Payload>(node: &Node) -> Result<(), String> {
    let sink = node.spawn(sink_loop::<P>);
    node.register(P::SINK, &sink).map_err(|e| e.to_string())?;
    let echo = node.spawn(echo_loop::<P>);
    node.register(P::ECHO, &echo).map_err(|e| e.to_string())?;
    for i in 0..MANY {
        let sink = node.spawn(sink_loop::<P>);
        node.register(&many_sink::<P>(i), &sink)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A temporary directory holding a fresh cookie (mode 0600), removed when dropped.
struct CookieDir {
    dir: PathBuf,
    file: PathBuf,
}

impl CookieDir {
    fn create() -> Result<CookieDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("conc-bench-{}-{nanos:09}", std::process::id()));
        let file = dir.join("cookie");
        let guard = CookieDir {
            dir,
            file: file.clone(),
        };
        conc_node::create_cookie_file(&file).map_err(|e| format!("cookie: {e}"))?;
        Ok(guard)
    }
}

impl Drop for CookieDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server's OS process; killed (and reaped) when dropped, on every path.
struct ServerChild {
    child: Child,
    /// The server node's name (`host:port`).
    node: String,
}

impl ServerChild {
    fn start(transport: &str, cookie: &Path) -> Result<ServerChild, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let child = Command::new(exe)
            .arg("--serve")
            .arg("--transport")
            .arg(transport)
            .arg("--cookie-file")
            .arg(cookie)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let mut server = ServerChild {
            child,
            node: String::new(),
        };
        let stdout = server.child.stdout.take().ok_or("no server stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let res = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send(res);
            // Keep reading so that the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(SERVER_START) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(format!("cannot read the server's name: {e}")),
            Err(_) => {
                return Err(format!(
                    "the server printed no name within {SERVER_START:?}"
                ));
            }
        };
        server.node = line
            .trim()
            .strip_prefix(LISTENING)
            .ok_or_else(|| format!("the server said {:?}, not its name", line.trim()))?
            .to_string();
        Ok(server)
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a process when dropped (a workload that timed out must not keep running).
struct KillOnDrop(Pid<()>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Runs the remote workloads on `transport` and adds their figures to `results`.
pub(crate) async fn run_transport<P: Payload>(args: &Args, transport: &str, results: &mut Results) {
    let per_message = transport == "per-message-tcp";
    let scaled = |n: u64| {
        if per_message {
            n.min(args.per_message_limit).max(1)
        } else {
            n.max(1)
        }
    };
    let async_n = scaled(args.async_messages);
    let rpc_n = scaled(args.rpc_calls);
    let mut skipped = Vec::new();
    let wanted: Vec<(Workload, &str, u64)> = [
        (
            Workload::RemoteAsync,
            "remote_async",
            async_n,
            args.async_messages,
        ),
        (Workload::RemoteRpc, "remote_rpc", rpc_n, args.rpc_calls),
        (
            Workload::RemoteMany,
            "remote_many",
            args.async_messages.max(MANY as u64),
            args.async_messages.max(MANY as u64),
        ),
        (
            Workload::RemoteLarge,
            "remote_large",
            args.large_messages.max(1),
            args.large_messages.max(1),
        ),
        (
            Workload::RemoteHol,
            "remote_hol",
            args.hol_calls.max(100),
            args.hol_calls.max(100),
        ),
    ]
    .into_iter()
    .filter(|(w, ..)| args.runs(*w))
    .filter(|(w, name, ..)| {
        let pooled_only = matches!(
            w,
            Workload::RemoteMany | Workload::RemoteLarge | Workload::RemoteHol
        );
        if pooled_only && per_message && args.workloads.contains(w) {
            skipped.push(format!(
                "{transport}: {name} runs on the pooled transports only"
            ));
        }
        !(pooled_only && per_message)
    })
    .map(|(w, name, n, full)| {
        if n != full {
            results.note(&format!(
                "{transport}: {name} uses {n} {} (one connection each; {full} on the other \
                 transports)",
                if w == Workload::RemoteRpc {
                    "calls"
                } else {
                    "messages"
                }
            ));
        }
        (w, name, n)
    })
    .collect();

    for note in skipped {
        results.note(&note);
    }
    let setup = async {
        let cookie = CookieDir::create()?;
        let server = ServerChild::start(transport, &cookie.file)?;
        let node = Node::builder()
            .listen("127.0.0.1:0")
            .cookie_file(&cookie.file)
            .limits(limits())
            .transport_arc(conc_node::transport_by_name(transport).map_err(|e| e.to_string())?)
            .start()
            .await
            .map_err(|e| format!("cannot start the client node: {e}"))?;
        Ok::<_, String>((cookie, server, node))
    };
    let (_cookie, server, node) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            for (_, name, _) in &wanted {
                results.error(Some(transport), name, &e);
            }
            return;
        }
    };

    for (w, name, n) in wanted {
        let dead_before = node.dead_letters();
        let mut waits = 0;
        let label = format!("{transport} {name}");
        let work = async {
            match w {
                Workload::RemoteAsync => remote_async::<P>(args, &node, &server.node, n, &label)
                    .await
                    .map(|(rate, waited)| {
                        waits = waited;
                        vec![("msgs_per_s", rate)]
                    }),
                Workload::RemoteMany => remote_many::<P>(args, &node, &server.node, n, &label)
                    .await
                    .map(|rate| vec![("msgs_per_s", rate)]),
                Workload::RemoteLarge => remote_large(args, &node, &server.node, n, &label)
                    .await
                    .map(|rate| vec![("bytes_per_s", rate)]),
                Workload::RemoteHol => remote_hol::<P>(args, &node, &server.node, n, &label)
                    .await
                    .map(|(idle, loaded)| vec![("idle_p99_us", idle), ("p99_us", loaded)]),
                _ => remote_rpc::<P>(args, &node, &server.node, n, &label)
                    .await
                    .map(|(p50, p99, rate)| {
                        vec![("p50_us", p50), ("p99_us", p99), ("calls_per_s", rate)]
                    }),
            }
        };
        match tokio::time::timeout(args.timeout(), work).await {
            Ok(Ok(figures)) => {
                for (metric, value) in figures {
                    results.figure(Some(transport), name, metric, value, n);
                }
            }
            Ok(Err(e)) => results.error(Some(transport), name, &e),
            Err(_) => results.error(
                Some(transport),
                name,
                &format!("timed out after {:?}", args.timeout()),
            ),
        }
        if waits > 0 {
            results.note(&format!(
                "{transport}: {name}: {waits} sends found the outbound queue full and waited"
            ));
        }
        let dead = node.dead_letters().saturating_sub(dead_before);
        if dead > 0 {
            results.note(&format!(
                "{transport}: {name}: {dead} dead letters on the client"
            ));
        }
    }
    node.shutdown().await;
    drop(server);
}

/// `remote_async msgs_per_s`: `n` messages to the remote `sink`, then a call that answers with
/// its count. The time runs from the first send to the answer.
async fn remote_async<P: Payload>(
    args: &Args,
    node: &Node,
    server: &str,
    n: u64,
    label: &str,
) -> Result<(f64, u64), String> {
    let sink: Pid<Sink<P>> = node.remote(server, P::SINK).map_err(|e| e.to_string())?;
    // Connect (and reset the count) before the clock starts.
    ask_count(&sink, CALL_TIMEOUT)
        .await
        .map_err(|e| format!("warm-up call failed: {e}"))?;
    let progress = Progress::start(label.to_string(), n, !args.no_progress);
    let sent = progress.counter();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done_timeout = args.timeout();
    let yield_every = args.yield_every;
    let sender = node.spawn(move |_inbox: Inbox<()>| async move {
        let payload = P::filled(7);
        let waited = 0u64;
        let start = Instant::now();
        for i in 0..n {
            // `send_wait` waits for room when the outbound queue is full and yields to the
            // scheduler now and then (the recommended way to send in a loop).
            if let Err(e) = sink.send_wait(Sink::Data(payload)).await {
                let _ = tx.send(Err(format!("send {i} failed: {e}")));
                return;
            }
            if i & 0x3ff == 0 {
                sent.set_position(i);
            }
            if yield_every > 0 && i % yield_every == yield_every - 1 {
                tokio::task::yield_now().await;
            }
        }
        sent.set_position(n);
        let got = ask_count(&sink, done_timeout).await;
        let elapsed = start.elapsed();
        let _ = tx.send(
            got.map(|count| (count, elapsed, waited))
                .map_err(|e| format!("the done call failed: {e}")),
        );
    });
    let _kill = KillOnDrop(sender);
    let (count, elapsed, waited) = rx
        .await
        .map_err(|_| "the sender ended without an answer".to_string())??;
    if count != n {
        return Err(format!("the sink counted {count} of {n} messages"));
    }
    Ok((n as f64 / elapsed.as_secs_f64(), waited))
}

/// Asks the sink for its count (a call waits for room in a full outbound queue; the retry on
/// "peer busy" is kept as a safety net).
async fn ask_count<P: Payload>(sink: &Pid<Sink<P>>, timeout: Duration) -> Result<u64, CallError> {
    loop {
        match sink.call(Sink::Done, timeout).await {
            Err(CallError::Send(SendErrorKind::Remote(RemoteError::PeerBusy(_)))) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => return other,
        }
    }
}

/// `remote_rpc`: `n` sequential calls to the remote `echo`; returns p50 and p99 latency (µs)
/// and calls per second.
async fn remote_rpc<P: Payload>(
    args: &Args,
    node: &Node,
    server: &str,
    n: u64,
    label: &str,
) -> Result<(f64, f64, f64), String> {
    let echo: Pid<Echo<P>> = node.remote(server, P::ECHO).map_err(|e| e.to_string())?;
    let warmup = RPC_WARMUP.min(n);
    let progress = Progress::start(label.to_string(), n, !args.no_progress);
    let done = progress.counter();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let caller = node.spawn(move |_inbox: Inbox<()>| async move {
        let payload = P::filled(7);
        let call = || echo.call(|reply| Echo { payload, reply }, CALL_TIMEOUT);
        for i in 0..warmup {
            if let Err(e) = call().await {
                let _ = tx.send(Err(format!("warm-up call {i} failed: {e}")));
                return;
            }
        }
        let mut lat = Vec::with_capacity(n as usize);
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            match call().await {
                Ok(back) if back == payload => {}
                Ok(_) => {
                    let _ = tx.send(Err(format!("call {i}: the echo changed the payload")));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("call {i} failed: {e}")));
                    return;
                }
            }
            lat.push(t.elapsed().as_nanos() as u64);
            if i & 0xff == 0 {
                done.set_position(i);
            }
        }
        let _ = tx.send(Ok((lat, start.elapsed())));
    });
    let _kill = KillOnDrop(caller);
    let (mut lat, elapsed) = rx
        .await
        .map_err(|_| "the caller ended without an answer".to_string())??;
    drop(progress);
    lat.sort_unstable();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)] as f64 / 1000.0;
    Ok((pct(50), pct(99), n as f64 / elapsed.as_secs_f64()))
}

/// `remote_many msgs_per_s`: [`MANY`] senders on this node, each sending `n / MANY` messages
/// to its own sink on the server; the aggregate rate from the first send to the last answer.
async fn remote_many<P: Payload>(
    args: &Args,
    node: &Node,
    server: &str,
    n: u64,
    label: &str,
) -> Result<f64, String> {
    let per = n / MANY as u64;
    let progress = Progress::start(label.to_string(), per * MANY as u64, !args.no_progress);
    let bar = progress.counter();
    let mut sinks = Vec::new();
    for i in 0..MANY {
        let sink: Pid<Sink<P>> = node
            .remote(server, &many_sink::<P>(i))
            .map_err(|e| e.to_string())?;
        ask_count(&sink, CALL_TIMEOUT)
            .await
            .map_err(|e| format!("warm-up call failed: {e}"))?;
        sinks.push(sink);
    }
    let start = Instant::now();
    let mut answers = Vec::new();
    let mut kills = Vec::new();
    for sink in sinks {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done_timeout = args.timeout();
        let bar = bar.clone();
        let sender = node.spawn(move |_inbox: Inbox<()>| async move {
            let payload = P::filled(7);
            for i in 0..per {
                if let Err(e) = sink.send_wait(Sink::Data(payload)).await {
                    let _ = tx.send(Err(format!("send {i} failed: {e}")));
                    return;
                }
                if i & 0xfff == 0xfff {
                    bar.inc(0x1000);
                }
            }
            let got = ask_count(&sink, done_timeout).await;
            let _ = tx.send(got.map_err(|e| format!("the done call failed: {e}")));
        });
        kills.push(KillOnDrop(sender));
        answers.push(rx);
    }
    for rx in answers {
        let count = rx
            .await
            .map_err(|_| "a sender ended without an answer".to_string())??;
        if count != per {
            return Err(format!("a sink counted {count} of {per} messages"));
        }
    }
    let elapsed = start.elapsed();
    Ok((per * MANY as u64) as f64 / elapsed.as_secs_f64())
}

/// `remote_large bytes_per_s`: `n` messages of a 1 MiB `Vec<u8>` to the server's large sink,
/// then a call that answers with the bytes it counted.
async fn remote_large(
    args: &Args,
    node: &Node,
    server: &str,
    n: u64,
    label: &str,
) -> Result<f64, String> {
    let sink: Pid<LargeSink> = node.remote(server, "large").map_err(|e| e.to_string())?;
    sink.call(LargeSink::Done, CALL_TIMEOUT)
        .await
        .map_err(|e| format!("warm-up call failed: {e}"))?;
    let progress = Progress::start(label.to_string(), n, !args.no_progress);
    let bar = progress.counter();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done_timeout = args.timeout();
    let sender = node.spawn(move |_inbox: Inbox<()>| async move {
        let data = vec![7u8; LARGE];
        let start = Instant::now();
        for i in 0..n {
            if let Err(e) = sink.send_wait(LargeSink::Data(data.clone())).await {
                let _ = tx.send(Err(format!("send {i} failed: {e}")));
                return;
            }
            bar.set_position(i + 1);
        }
        let got = sink.call(LargeSink::Done, done_timeout).await;
        let _ = tx.send(
            got.map(|bytes| (bytes, start.elapsed()))
                .map_err(|e| format!("the done call failed: {e}")),
        );
    });
    let _kill = KillOnDrop(sender);
    let (bytes, elapsed) = rx
        .await
        .map_err(|_| "the sender ended without an answer".to_string())??;
    if bytes != n * LARGE as u64 {
        return Err(format!(
            "the sink counted {bytes} of {} bytes",
            n * LARGE as u64
        ));
    }
    Ok(bytes as f64 / elapsed.as_secs_f64())
}

/// `remote_hol idle_p99_us` and `p99_us`: the p99 of `n` sequential small calls to the echo,
/// first with nothing else on the connection, then while another process streams 8 MiB
/// messages to the large sink over the same connection.
async fn remote_hol<P: Payload>(
    args: &Args,
    node: &Node,
    server: &str,
    n: u64,
    label: &str,
) -> Result<(f64, f64), String> {
    let echo: Pid<Echo<P>> = node.remote(server, P::ECHO).map_err(|e| e.to_string())?;
    let sink: Pid<LargeSink> = node.remote(server, "large").map_err(|e| e.to_string())?;
    sink.call(LargeSink::Done, CALL_TIMEOUT)
        .await
        .map_err(|e| format!("warm-up call failed: {e}"))?;
    let progress = Progress::start(label.to_string(), 2 * n, !args.no_progress);
    let bar = progress.counter();
    let idle = p99_of_calls::<P>(node, &echo, n, &bar).await?;
    // The stream of large messages, until told to stop.
    let streamed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (s2, stop2) = (streamed.clone(), stop.clone());
    let streamer = node.spawn(move |_inbox: Inbox<()>| async move {
        let data = vec![7u8; HOL_LARGE];
        let stopped = stop2.notified();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                r = sink.send_wait(LargeSink::Data(data.clone())) => {
                    if let Err(e) = r {
                        let _ = tx.send(Err(format!("large send failed: {e}")));
                        return;
                    }
                    s2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let got = sink.call(LargeSink::Done, CALL_TIMEOUT).await;
        let _ = tx.send(got.map_err(|e| format!("the large sink's done call failed: {e}")));
    });
    let _kill = KillOnDrop(streamer);
    // Measure only once the stream is under way.
    while streamed.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let loaded = p99_of_calls::<P>(node, &echo, n, &bar).await;
    stop.notify_one();
    let bytes = rx
        .await
        .map_err(|_| "the streamer ended without an answer".to_string())??;
    let loaded = loaded?;
    if bytes == 0 {
        return Err("no large message arrived".into());
    }
    Ok((idle, loaded))
}

/// How long `remote_hol` calls for at most in each phase (at least [`HOL_MIN_CALLS`] calls).
const HOL_PHASE: Duration = Duration::from_secs(15);

/// The fewest calls a `remote_hol` phase makes before [`HOL_PHASE`] may end it.
const HOL_MIN_CALLS: usize = 100;

/// The p99 (µs) of `n` sequential calls to `echo`, made by a process of `node` (fewer if
/// [`HOL_PHASE`] runs out first, but at least [`HOL_MIN_CALLS`]).
async fn p99_of_calls<P: Payload>(
    node: &Node,
    echo: &Pid<Echo<P>>,
    n: u64,
    bar: &indicatif::ProgressBar,
) -> Result<f64, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let echo = echo.clone();
    let bar = bar.clone();
    let caller = node.spawn(move |_inbox: Inbox<()>| async move {
        let payload = P::filled(7);
        let mut lat = Vec::with_capacity(n as usize);
        let phase = Instant::now();
        for i in 0..n {
            if lat.len() >= HOL_MIN_CALLS && phase.elapsed() > HOL_PHASE {
                break;
            }
            let t = Instant::now();
            if let Err(e) = echo
                .call(|reply| Echo { payload, reply }, CALL_TIMEOUT)
                .await
            {
                let _ = tx.send(Err(format!("call {i} failed: {e}")));
                return;
            }
            lat.push(t.elapsed().as_nanos() as u64);
            bar.inc(1);
        }
        let _ = tx.send(Ok(lat));
    });
    let _kill = KillOnDrop(caller);
    let mut lat = rx
        .await
        .map_err(|_| "the caller ended without an answer".to_string())??;
    lat.sort_unstable();
    Ok(lat[(lat.len() * 99 / 100).min(lat.len() - 1)] as f64 / 1000.0)
}
