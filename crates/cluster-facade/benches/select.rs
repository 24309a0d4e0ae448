//! Micro-benchmarks of the routing hot path.
//!
//! * `select/<strategy>/<nodes>`: one `Router::select` (its guard is
//!   dropped outside the timing), at 8, 64, 1 000 and 10 000 healthy nodes. The classic strategies
//!   get a context without a prompt (they ignore it); the cache-aware one a
//!   2 KB prompt whose system part is cached on 4 nodes.
//! * `fingerprint_100k/<nodes>`: fingerprinting a 100 KB chat prompt (60 KB
//!   shared system prompt + 40 KB conversation) and a cache-aware decision
//!   on it (guard finished inside the timing), with the system prompt
//!   cached on 8 nodes and the conversation on one.
//! * `fingerprint_only/100k`: the fingerprint alone.
//! * `select_and_finish/<strategy>/64`: select plus finishing the guard with
//!   usage — a request's whole bookkeeping.
//!
//! Targets (issue 6): ≤ 1 µs per select at 64 nodes for round-robin,
//! least-loaded and p2c; ≤ 50 µs for fingerprint + cache-aware decision,
//! growing ≤ 2× from 64 to 10 000 nodes.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use cluster_facade::{NodeEntry, RequestOutcome, Router, RouterParams};
use cluster_metrics::ManualClock;
use cluster_types::LoadBalanceStrategy;
use cluster_types::{NodeSpec, NodeStatus, PrefixFingerprint, RoutingContext, SegmentKind};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const SIZES: [usize; 4] = [8, 64, 1_000, 10_000];

fn router(strategy: LoadBalanceStrategy, n: usize) -> Router {
    let clock = ManualClock::new();
    let r = Router::new(
        RouterParams::default().with_strategy(strategy),
        clock.shared(),
    );
    r.publish(
        (0..n)
            .map(|i| {
                NodeEntry::new(
                    NodeSpec::new(
                        format!("node-{i:05}"),
                        format!("http://10.0.{}.{}:8080", i / 256, i % 256),
                    ),
                    NodeStatus::Healthy,
                )
            })
            .collect(),
    );
    r
}

fn chat(system: &str, conversation: &[(&str, &str)]) -> RoutingContext {
    let mut b = PrefixFingerprint::builder(256);
    b.push_segment(SegmentKind::Model, "qwen3-30b")
        .push_segment(SegmentKind::System, system);
    for (role, text) in conversation {
        b.push_segment(SegmentKind::Message { role }, text);
    }
    let fingerprint = b.finish();
    let tokens = u32::try_from(fingerprint.total_bytes() / 4).unwrap();
    RoutingContext {
        model: Some("qwen3-30b".into()),
        fingerprint,
        prompt_tokens_estimate: tokens,
        ..RoutingContext::default()
    }
}

/// Sends `ctx` through `r` `times` times so the chosen nodes hold it.
fn warm(r: &Router, ctx: &RoutingContext, times: usize) {
    let mut guards = Vec::new();
    for _ in 0..times {
        // Keep the guards so the next selects spread (queued work).
        guards.push(r.select(ctx).unwrap().guard);
    }
    for g in guards {
        g.finish(RequestOutcome::success());
    }
}

fn bench_select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    let empty = RoutingContext::default();
    for strategy in [
        LoadBalanceStrategy::RoundRobin,
        LoadBalanceStrategy::LeastLoaded,
        LoadBalanceStrategy::LatencyBased,
        LoadBalanceStrategy::CacheScore,
    ] {
        for n in SIZES {
            let r = router(strategy, n);
            // `select` alone: the guard is dropped outside the timing.
            group.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &n, |b, _| {
                b.iter_with_large_drop(|| r.select(black_box(&empty)).unwrap());
            });
        }
    }
    let system = "You are a coding agent. Use the tools. ".repeat(40); // ~1.6 KB
    let ctx = chat(
        &system,
        &[("user", &"Please fix the failing test. ".repeat(15))],
    );
    for n in SIZES {
        let r = router(LoadBalanceStrategy::CacheAware, n);
        warm(&r, &chat(&system, &[("user", "warm-up")]), 4);
        group.bench_with_input(BenchmarkId::new("cache-aware", n), &n, |b, _| {
            b.iter_with_large_drop(|| r.select(black_box(&ctx)).unwrap());
        });
    }
    group.finish();

    // A whole request's bookkeeping: select, then finish the guard with
    // usage (counters, histograms, success window, cache correction).
    let mut group = c.benchmark_group("select_and_finish");
    for strategy in [
        LoadBalanceStrategy::RoundRobin,
        LoadBalanceStrategy::CacheAware,
    ] {
        let r = router(strategy, 64);
        group.bench_function(BenchmarkId::new(strategy.as_str(), 64), |b| {
            b.iter(|| {
                let s = r.select(black_box(&ctx)).unwrap();
                s.guard
                    .finish(RequestOutcome::success_with_usage(600, 400, 10));
            });
        });
    }
    group.finish();
}

fn bench_fingerprint(c: &mut Criterion) {
    let system = "You are an expert software engineer working in a large repository. ".repeat(1040); // ~71 KB
    let history: Vec<(String, String)> = (0..10)
        .map(|i| {
            (
                format!("Tool result {i}: ").repeat(1)
                    + &"fn main() { println!(\"hi\"); }\n".repeat(60),
                format!("Step {i}: I will now edit the file. ").repeat(30),
            )
        })
        .collect();
    let conversation: Vec<(&str, &str)> = history
        .iter()
        .flat_map(|(u, a)| [("user", u.as_str()), ("assistant", a.as_str())])
        .collect();
    let build = || {
        let mut b = PrefixFingerprint::builder(256);
        b.push_segment(SegmentKind::Model, "qwen3-30b")
            .push_segment(SegmentKind::System, &system);
        for (role, text) in &conversation {
            b.push_segment(SegmentKind::Message { role }, text);
        }
        b.finish()
    };
    let fp = build();
    let bytes = fp.total_bytes();
    assert!((95_000..=110_000).contains(&bytes), "{bytes}");

    let mut group = c.benchmark_group("fingerprint_only");
    group.bench_function("100k", |b| b.iter(|| black_box(build())));
    group.finish();

    let mut group = c.benchmark_group("fingerprint_100k");
    for n in SIZES {
        let r = router(LoadBalanceStrategy::CacheAware, n);
        // System prompt on 8 nodes (other conversations), this conversation
        // on one.
        for k in 0..8 {
            let other = format!("other conversation {k}");
            warm(&r, &chat(&system, &[("user", &other)]), 1);
        }
        let ctx = RoutingContext {
            model: Some("qwen3-30b".into()),
            fingerprint: fp.clone(),
            prompt_tokens_estimate: u32::try_from(bytes / 4).unwrap(),
            ..RoutingContext::default()
        };
        warm(&r, &ctx, 1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let ctx = RoutingContext {
                    model: Some("qwen3-30b".into()),
                    fingerprint: build(),
                    prompt_tokens_estimate: u32::try_from(bytes / 4).unwrap(),
                    ..RoutingContext::default()
                };
                let s = r.select(black_box(&ctx)).unwrap();
                s.guard.finish(RequestOutcome::success());
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_select, bench_fingerprint);
criterion_main!(benches);
