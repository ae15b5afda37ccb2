//! Micro-benchmark of the delivery of frames from other nodes (the node's receive path, without
//! the network): 10,000 messages to a process by its registered name, each looked up in the
//! registry (`NodeSide::deliver_body_traced`) or through a `DeliveryCache` kept between
//! messages (`NodeSide::deliver_body_cached`), as the node does. `cargo bench -p conc-core
//! --bench deliver`; CI builds it (`cargo bench --no-run`).

#![allow(missing_docs)]

use conc_core::erased_serde;
use conc_core::node_side::DeliveryCache;
use conc_core::{Inbox, Runtime, Target, TypeTag};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::de::IntoDeserializer;

const N: u64 = 10_000;

/// Runs `deliver` for each of `N` messages to a fresh process registered as `sink`, then
/// waits until the process has received them all.
fn round(
    tokio: &tokio::runtime::Runtime,
    rt: &Runtime,
    mut deliver: impl FnMut(&Runtime, &Target, u64),
) {
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
        rt.register("sink", &p).unwrap();
        let target = Target::Name("sink".to_string());
        for i in 0..N {
            deliver(rt, &target, i);
        }
        assert_eq!(rx.await.unwrap(), N * (N - 1) / 2);
        // The process has ended; its name is free for the next round.
        while rt.whereis::<u64>("sink").is_ok() {
            tokio::task::yield_now().await;
        }
    })
}

fn deliver(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio.block_on(async { Runtime::new() });
    let tag = TypeTag::of::<u64>();
    let erased = |v: u64| {
        move |deliver: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), conc_core::DeliverError>| {
            let de: serde::de::value::U64Deserializer<serde::de::value::Error> =
                v.into_deserializer();
            deliver(&mut <dyn erased_serde::Deserializer>::erase(de))
        }
    };
    let mut g = c.benchmark_group("deliver");
    g.throughput(Throughput::Elements(N));
    g.bench_function("by_name_lookup_10k", |b| {
        b.iter(|| {
            round(&tokio, &rt, |rt, target, v| {
                rt.node_side()
                    .deliver_body_traced(target, tag, &[], erased(v), None)
                    .unwrap()
            })
        })
    });
    let mut cache = DeliveryCache::new();
    g.bench_function("by_name_cached_10k", |b| {
        b.iter(|| {
            round(&tokio, &rt, |rt, target, v| {
                rt.node_side()
                    .deliver_body_cached(&mut cache, target, tag, &[], erased(v), None)
                    .unwrap()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, deliver);
criterion_main!(benches);
