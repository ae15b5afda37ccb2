//! Micro-benchmarks of the frame hot paths: encoding a `Send` frame (header and a 32-byte body)
//! into a queue buffer, splitting frames off a receive buffer, and decoding a frame's header.
//! `cargo bench -p conc-wire`; CI builds them (`cargo bench --no-run`) so a regression can be
//! bisected.

#![allow(missing_docs)]

use conc_core::{SendRequest, Target, TypeTag};
use conc_wire::frame::{self, FrameSplitter};
use conc_wire::{Frame, bin};
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};

fn frames(c: &mut Criterion) {
    let target = Target::Name("sink".into());
    let payload = [7u8; 32];
    let body: Vec<u8> = bin::encode_to_vec(&payload).unwrap();
    let req = SendRequest {
        target: &target,
        tag: TypeTag(0x1122_3344_5566_7788),
        call_ref: None,
        body: &payload,
        encode: None,
    };
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    // With the per-type codec a node registers (one dynamic call for the whole body).
    let codec = |out: &mut Vec<u8>| bin::encode_body(&payload, out);
    let with_codec = SendRequest {
        encode: Some(&codec),
        ..req
    };
    g.bench_function("encode_send_32B_codec", |b| {
        let mut out = Vec::with_capacity(1 << 20);
        b.iter(|| {
            if out.len() > (1 << 20) - 128 {
                out.clear();
            }
            frame::encode_send(&mut out, black_box(&with_codec), 1 << 20).unwrap();
        })
    });
    // Through erased-serde (a type the node has no codec for: one call per serde primitive).
    g.bench_function("encode_send_32B_erased", |b| {
        let mut out = Vec::with_capacity(1 << 20);
        b.iter(|| {
            if out.len() > (1 << 20) - 128 {
                out.clear();
            }
            frame::encode_send(&mut out, black_box(&req), 1 << 20).unwrap();
        })
    });
    // A buffer of 1,000 frames, as a reader finds it.
    let mut buf = Vec::new();
    for _ in 0..1000 {
        frame::encode_send(&mut buf, &req, 1 << 20).unwrap();
    }
    g.throughput(Throughput::Elements(1000));
    g.bench_function("split_and_decode_1000", |b| {
        let splitter = FrameSplitter::new(1 << 20);
        b.iter(|| {
            let mut at = 0;
            let mut n = 0;
            while let Some((range, total)) = splitter.split(&buf[at..]).unwrap() {
                let payload = &buf[at + range.start..at + range.end];
                if let Frame::Send { body, .. } = Frame::decode(black_box(payload)).unwrap() {
                    n += body.len();
                }
                at += total;
            }
            assert_eq!(n, 1000 * body.len());
        })
    });
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
