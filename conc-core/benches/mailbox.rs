//! Micro-benchmarks of the mailbox and call hot paths on one node: 10,000 messages pushed into
//! a process's mailbox and taken by its `recv` (one thread; two threads; a bounded mailbox
//! through `send_wait`), a selective receive that passes over saved messages, and a local call
//! (request, reply slot, reply). `cargo bench -p conc-core`; CI builds them
//! (`cargo bench --no-run`).

#![allow(missing_docs)]

use std::time::Duration;

use conc_core::{Inbox, Pid, ReplyTo, Runtime, SpawnOptions};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const N: u64 = 10_000;

/// Spawns a process that receives `N` numbers and reports their sum.
fn summer(rt: &Runtime, options: SpawnOptions) -> (Pid<u64>, tokio::sync::oneshot::Receiver<u64>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = rt.spawn_with(options, move |mut inbox: Inbox<u64>| async move {
        let mut sum = 0u64;
        for _ in 0..N {
            sum += inbox.recv().await.unwrap_or(0);
        }
        let _ = tx.send(sum);
    });
    (p, rx)
}

fn mailbox(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio.block_on(async { Runtime::new() });
    let mut g = c.benchmark_group("mailbox");
    g.throughput(Throughput::Elements(N));
    // Push and pop on one thread: the sender fills the mailbox, then the receiver drains it.
    g.bench_function("push_recv_10k", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let (p, rx) = summer(&rt, SpawnOptions::default());
                for i in 0..N {
                    p.send(i).unwrap();
                }
                assert_eq!(rx.await.unwrap(), N * (N - 1) / 2);
            })
        })
    });
    // A bounded mailbox of 64 through `send_wait`: sender and receiver take turns as it fills.
    g.bench_function("bounded_send_wait_recv_10k", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let (p, rx) = summer(&rt, SpawnOptions::bounded(64));
                for i in 0..N {
                    p.send_wait(i).await.unwrap();
                }
                assert_eq!(rx.await.unwrap(), N * (N - 1) / 2);
            })
        })
    });
    // Selective receive: 10,000 messages queued, the odd ones taken first (each scan passes
    // over the saved even ones already seen), then the even ones from the save queue.
    g.bench_function("recv_matching_10k", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
                    let mut sum = 0u64;
                    for _ in 0..N / 2 {
                        sum += inbox.recv_matching(|m| m % 2 == 1).await.unwrap_or(0);
                    }
                    for _ in 0..N / 2 {
                        sum += inbox.recv().await.unwrap_or(0);
                    }
                    let _ = tx.send(sum);
                });
                for i in 0..N {
                    p.send(i).unwrap();
                }
                assert_eq!(rx.await.unwrap(), N * (N - 1) / 2);
            })
        })
    });
    g.throughput(Throughput::Elements(1));
    let echo = tokio.block_on(async {
        rt.spawn(|mut inbox: Inbox<(u64, ReplyTo<u64>)>| async move {
            while let Some((n, reply)) = inbox.recv().await {
                let _ = reply.send(n);
            }
        })
    });
    // The call slot: a request with a fresh `ReplyTo`, the reply matched to it.
    g.bench_function("local_call", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let n = echo.call(|r| (7, r), Duration::from_secs(5)).await.unwrap();
                assert_eq!(n, 7);
            })
        })
    });
    g.finish();

    // Sender and receiver on two worker threads, as `local_async` runs them: the mailbox's
    // shared queue is contended.
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt2 = multi.block_on(async { Runtime::new() });
    let mut g = c.benchmark_group("mailbox_two_threads");
    g.throughput(Throughput::Elements(N));
    g.bench_function("send_wait_recv_10k", |b| {
        b.iter(|| {
            multi.block_on(async {
                let (p, rx) = summer(&rt2, SpawnOptions::default());
                let sender = rt2.spawn(move |_inbox: Inbox<()>| async move {
                    for i in 0..N {
                        p.send_wait(i).await.unwrap();
                    }
                });
                assert_eq!(rx.await.unwrap(), N * (N - 1) / 2);
                drop(sender);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, mailbox);
criterion_main!(benches);
