//! Benchmarks for the request hot path in cluster-types: fingerprinting a
//! ~100 KB agent prompt, raw XXH64 throughput, and prefix comparison.
//!
//! Run with `cargo bench -p cluster-types` (or `cargo xtask bench`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use cluster_types::fingerprint::xxh64;
use cluster_types::{PrefixFingerprint, SegmentKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A prompt shaped like an agentic turn: 60 KB system prompt, 20 KB tools,
/// ten 2 KB messages (≈ 100 KB in total).
fn prompt() -> (String, String, Vec<(&'static str, String)>) {
    let system = "You are a careful coding agent. Follow the repository conventions. ".repeat(900);
    let tools = r#"{"name":"read_file","parameters":{"path":"string"}},"#.repeat(400);
    let messages = (0..10)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            (role, format!("message {i}: ").repeat(160))
        })
        .collect();
    (system, tools, messages)
}

fn fingerprint(system: &str, tools: &str, messages: &[(&str, String)]) -> PrefixFingerprint {
    let mut b = PrefixFingerprint::builder(256);
    b.push_segment(SegmentKind::Model, "mlx-community/Qwen3-30B-A3B-4bit")
        .push_segment(SegmentKind::System, system)
        .push_segment(SegmentKind::Tools, tools);
    for (role, content) in messages {
        b.push_segment(SegmentKind::Message { role }, content);
    }
    b.finish()
}

fn benches(c: &mut Criterion) {
    let (system, tools, messages) = prompt();
    let total = system.len() + tools.len() + messages.iter().map(|m| m.1.len()).sum::<usize>();

    let mut group = c.benchmark_group("fingerprint");
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("build (~100 KB prompt, 256 B blocks)", |b| {
        b.iter(|| fingerprint(black_box(&system), black_box(&tools), black_box(&messages)));
    });
    let flat: Vec<u8> = system.bytes().chain(tools.bytes()).collect();
    group.throughput(Throughput::Bytes(flat.len() as u64));
    group.bench_function("xxh64 (one ~80 KB slice)", |b| {
        b.iter(|| xxh64(black_box(&flat), 0));
    });
    group.finish();

    let a = fingerprint(&system, &tools, &messages);
    let mut longer = messages.clone();
    longer.push(("user", "one more turn".to_owned()));
    let b2 = fingerprint(&system, &tools, &longer);
    c.bench_function("fingerprint/common_prefix_len (~400 blocks)", |b| {
        b.iter(|| black_box(&a).common_prefix_len(black_box(&b2)));
    });
}

criterion_group!(fingerprint_benches, benches);
criterion_main!(fingerprint_benches);
