//! The local workloads: `local_async` and `spawn_mem`, on a runtime without a node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conc_node::{Inbox, Runtime};

use crate::Args;
use crate::msgs::{Payload, Sink, sink_loop};
use crate::progress::Progress;

/// `local_async msgs_per_s`: one process sends `--local-messages` messages to another, then
/// asks it how many it got; the time runs from the first send to the answer.
pub(crate) async fn local_async<P: Payload>(args: &Args) -> Result<f64, String> {
    let n = args.local_messages.max(1);
    let progress = Progress::start("local_async".into(), n, !args.no_progress);
    let sent = progress.counter();
    let rt = Runtime::new();
    let sink = rt.spawn(sink_loop::<P>);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let call_timeout = args.timeout();
    let yield_every = args.yield_every;
    let sender = rt.spawn(move |_inbox: Inbox<()>| async move {
        let payload = P::filled(7);
        let start = Instant::now();
        for i in 0..n {
            if let Err(e) = sink.send_wait(Sink::Data(payload)).await {
                let _ = tx.send(Err(format!("send {i} failed: {e}")));
                return;
            }
            if i & 0xffff == 0 {
                sent.set_position(i);
            }
            if yield_every > 0 && i % yield_every == yield_every - 1 {
                tokio::task::yield_now().await;
            }
        }
        let got = sink.call(Sink::Done, call_timeout).await;
        let elapsed = start.elapsed();
        let _ = tx.send(
            got.map(|count| (count, elapsed))
                .map_err(|e| format!("the done call failed: {e}")),
        );
    });
    let outcome = tokio::time::timeout(args.timeout(), rx).await;
    drop(progress);
    rt.kill(&sender);
    rt.shutdown();
    let (count, elapsed) = match outcome {
        Err(_) => return Err(format!("timed out after {:?}", args.timeout())),
        Ok(Err(_)) => return Err("the sender ended without an answer".into()),
        Ok(Ok(res)) => res?,
    };
    if count != n {
        return Err(format!("the receiver counted {count} of {n} messages"));
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Processes of `spawn_mem` that have started (and so are parked in `recv`). A static, so that
/// counting them adds nothing to each process.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// The resident set of this OS process, in bytes (`VmRSS` of `/proc/self/status`).
fn rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|e| format!("bad VmRSS line {line:?}: {e}"))?;
    Ok(kb * 1024)
}

/// Waits until `done()` holds, or fails after `timeout`.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// `spawn_mem bytes_per_process`: spawns `--spawn` processes that wait in `recv`, and divides
/// the growth of the resident set by their number. Then shuts them down.
pub(crate) async fn spawn_mem(args: &Args) -> Result<f64, String> {
    let n = args.spawn.max(1);
    let progress = Progress::start("spawn_mem".into(), n, !args.no_progress);
    let spawned = progress.counter();
    let rt = Runtime::new();
    STARTED.store(0, Ordering::Relaxed);
    let before = rss_bytes()?;
    for i in 0..n {
        // The pid is dropped at once: the runtime's process table keeps the process.
        rt.spawn(|mut inbox: Inbox<u64>| async move {
            STARTED.fetch_add(1, Ordering::Relaxed);
            let _ = inbox.recv().await;
        });
        if i & 0xffff == 0 {
            spawned.set_position(i);
        }
    }
    let started = wait_until(args.timeout(), || {
        let s = STARTED.load(Ordering::Relaxed);
        spawned.set_position(s);
        s >= n
    })
    .await;
    let after = rss_bytes();
    drop(progress);
    let live = rt.process_count() as u64;
    rt.shutdown();
    let ended = wait_until(args.timeout(), || rt.process_count() == 0).await;
    if started.is_err() {
        return Err(format!(
            "only {} of {n} processes started within {:?}",
            STARTED.load(Ordering::Relaxed),
            args.timeout()
        ));
    }
    if ended.is_err() {
        return Err(format!(
            "{} processes still live {:?} after the shutdown",
            rt.process_count(),
            args.timeout()
        ));
    }
    if live != n {
        return Err(format!("{live} processes live, {n} spawned"));
    }
    let after = after?;
    Ok(after.saturating_sub(before) as f64 / n as f64)
}
