//! What observability costs on the send path: 1,000 remote sends (pooled TCP over loopback, to
//! a process on a second node in this OS process, then one call through the same pair so that
//! all were received) measured
//!
//! - `no_recorder`: no `metrics` recorder, no `tracing` subscriber (the default);
//! - `recorder`: a `metrics` recorder installed (metrics-util's debugging recorder, atomics in
//!   a registry, as an exporter's);
//! - `recorder_subscriber_no_span`: also a subscriber with the [`TraceLayer`], sends made
//!   outside any span (so no trace context: the check for one is the whole cost);
//! - `recorder_subscriber_in_span`: the same, sends made inside a span (each frame carries a
//!   trace context, and each received message gets a `conc.recv` span).
//!
//! `cargo bench -p conc-node --bench observe`; CI builds it (`cargo bench --no-run`).

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use conc_node::trace::TraceLayer;
use conc_node::{Cookie, Inbox, Node, Pid, ReplyTo, Tcp};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const N: u64 = 1_000;
const T: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
enum Msg {
    Data(u64),
    Sync(ReplyTo<u64>),
}

/// Two nodes (made under whatever recorder is installed now) and a pid on the second, seen
/// from the first, with the connection up.
async fn pair() -> (Node, Node, Pid<Msg>) {
    let cookie = Cookie::new("bench-observe-cookie").unwrap();
    let b = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie.clone())
        .transport(Tcp::pooled())
        .start()
        .await
        .unwrap();
    let sink = b.spawn(|mut inbox: Inbox<Msg>| async move {
        let mut got = 0;
        while let Some((msg, span)) = inbox.recv_traced().await {
            let _entered = span.enter();
            match msg {
                Msg::Data(_) => got += 1,
                Msg::Sync(reply) => {
                    let _ = reply.send(got);
                }
            }
        }
    });
    b.register("sink", &sink).unwrap();
    let a = Node::builder()
        .cookie(cookie)
        .transport(Tcp::pooled())
        .start()
        .await
        .unwrap();
    let p = a.remote::<Msg>(b.name(), "sink").unwrap();
    p.call(Msg::Sync, T).await.unwrap();
    (a, b, p)
}

/// `iters` rounds of N sends and one call; the time of all.
async fn rounds(p: &Pid<Msg>, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        for i in 0..N {
            p.send_wait(Msg::Data(i)).await.unwrap();
        }
        p.call(Msg::Sync, T).await.unwrap();
    }
    start.elapsed()
}

fn observe(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("send_1k_remote");
    g.throughput(Throughput::Elements(N));

    let (_a, _b, p) = tokio.block_on(pair());
    g.bench_function("no_recorder", |b| {
        b.iter_custom(|iters| tokio.block_on(rounds(&p, iters)))
    });

    metrics_util::debugging::DebuggingRecorder::new()
        .install()
        .unwrap();
    let (_a2, _b2, p) = tokio.block_on(pair());
    g.bench_function("recorder", |b| {
        b.iter_custom(|iters| tokio.block_on(rounds(&p, iters)))
    });

    // The subscriber is this thread's (where block_on runs the sends) and, for the receiving
    // side's spans, the global one.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(TraceLayer::new()))
        .unwrap();
    let (_a3, _b3, p) = tokio.block_on(pair());
    g.bench_function("recorder_subscriber_no_span", |b| {
        b.iter_custom(|iters| tokio.block_on(rounds(&p, iters)))
    });
    g.bench_function("recorder_subscriber_in_span", |b| {
        b.iter_custom(|iters| {
            tokio.block_on(rounds(&p, iters).instrument(tracing::info_span!("bench")))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = observe
}
criterion_main!(benches);
