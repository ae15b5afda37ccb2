//! Micro-benchmarks of the message-body codec on large byte sequences: a 1 MiB `Vec<u8>` (which
//! serde walks one `u8` at a time) encoded with [`bin::encode_body`] and decoded with
//! [`bin::decode_body`] (the bounded, typed decode a node registers per message type), beside
//! bincode's own unbounded decode ([`bin::decode_exact`]) as the reference.
//! `cargo bench -p conc-wire --bench body`; CI builds it (`cargo bench --no-run`).

#![allow(missing_docs)]

use conc_wire::bin;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};

fn body(c: &mut Criterion) {
    let payload: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    let encoded = bin::encode_to_vec(&payload).unwrap();
    let mut g = c.benchmark_group("body_1MiB_vec_u8");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("encode_body", |b| {
        let mut out = Vec::with_capacity(2 << 20);
        b.iter(|| {
            out.clear();
            bin::encode_body(black_box(&payload), &mut out).unwrap();
        })
    });
    g.bench_function("decode_body", |b| {
        b.iter(|| {
            let v: Vec<u8> = bin::decode_body(black_box(&encoded)).unwrap();
            assert_eq!(v.len(), 1 << 20);
        })
    });
    g.bench_function("decode_erased", |b| {
        b.iter(|| {
            let v: Vec<u8> = bin::with_deserializer(black_box(&encoded), |de| {
                erased_serde::deserialize(de).unwrap()
            });
            assert_eq!(v.len(), 1 << 20);
        })
    });
    g.bench_function("decode_unbounded", |b| {
        b.iter(|| {
            let v: Vec<u8> = bin::decode_exact(black_box(&encoded)).unwrap();
            assert_eq!(v.len(), 1 << 20);
        })
    });
    g.finish();
}

criterion_group!(benches, body);
criterion_main!(benches);
