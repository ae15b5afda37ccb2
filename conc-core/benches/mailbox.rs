//! Micro-benchmarks of the mailbox and call hot paths on one node: 10,000 messages pushed into
//! a process's mailbox and taken by its `recv`, and a local call (request, reply slot, reply).
//! `cargo bench -p conc-core`; CI builds them (`cargo bench --no-run`).

#![allow(missing_docs)]

use std::time::Duration;

use conc_core::{Inbox, ReplyTo, Runtime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const N: u64 = 10_000;

fn mailbox(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio.block_on(async { Runtime::new() });
    let mut g = c.benchmark_group("mailbox");
    g.throughput(Throughput::Elements(N));
    g.bench_function("push_recv_10k", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let mut tx = Some(tx);
                let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
                    let mut sum = 0u64;
                    for _ in 0..N {
                        sum += inbox.recv().await.unwrap_or(0);
                    }
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(sum);
                    }
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
    g.bench_function("local_call", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let n = echo.call(|r| (7, r), Duration::from_secs(5)).await.unwrap();
                assert_eq!(n, 7);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, mailbox);
criterion_main!(benches);
