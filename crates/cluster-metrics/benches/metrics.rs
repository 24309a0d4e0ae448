//! Benchmarks for the hot-path types: `RollingWindow` record/snapshot,
//! `Ewma` / `PeakEwma` updates, and the in-flight guard.
//!
//! Run with `cargo bench -p cluster-metrics` (or `cargo xtask bench`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster_metrics::{Ewma, LatencyHistogram, NodeCounters, PeakEwma, RollingWindow};
use criterion::{Criterion, criterion_group, criterion_main};

fn rolling_window(c: &mut Criterion) {
    let mut group = c.benchmark_group("rolling_window");
    let t0 = Instant::now();

    group.bench_function("record (full, 100 samples)", |b| {
        let mut w = RollingWindow::default();
        for i in 0..100 {
            w.record_success(t0, Some(Duration::from_millis(i)));
        }
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            if i.is_multiple_of(5) {
                w.record_failure(black_box(t0));
            } else {
                w.record_success(
                    black_box(t0),
                    black_box(Some(Duration::from_millis(i % 500))),
                );
            }
        });
    });

    group.bench_function("snapshot (full, 100 samples)", |b| {
        let mut w = RollingWindow::default();
        for i in 0..100u64 {
            let at = t0 + Duration::from_millis(i * 100);
            if i.is_multiple_of(7) {
                w.record_failure(at);
            } else {
                w.record_success(at, Some(Duration::from_millis(i)));
            }
        }
        let now = t0 + Duration::from_secs(15);
        b.iter(|| black_box(w.snapshot(black_box(now))));
    });
    group.finish();
}

fn ewma(c: &mut Criterion) {
    let mut group = c.benchmark_group("ewma");
    let t0 = Instant::now();
    group.bench_function("Ewma::observe", |b| {
        let mut e = Ewma::default();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            e.observe(
                black_box(t0 + Duration::from_micros(i)),
                black_box(Duration::from_millis(100 + i % 50)),
            );
        });
        black_box(e.estimate());
    });
    group.bench_function("PeakEwma::observe", |b| {
        let mut p = PeakEwma::default();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            p.observe(
                black_box(t0 + Duration::from_micros(i)),
                black_box(Duration::from_millis(100 + i % 50)),
            );
        });
    });
    group.bench_function("PeakEwma::cost", |b| {
        let mut p = PeakEwma::default();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(p.cost(black_box(t0 + Duration::from_micros(i)), black_box(3)))
        });
    });
    group.finish();
}

fn histogram(c: &mut Criterion) {
    let h = LatencyHistogram::new();
    let mut i = 0u64;
    c.bench_function("latency_histogram/record", |b| {
        b.iter(|| {
            i += 1;
            h.record(black_box(Duration::from_micros(1000 + i % 100_000)));
        });
    });
}

fn in_flight_guard(c: &mut Criterion) {
    let mut group = c.benchmark_group("in_flight_guard");
    let counters = Arc::new(NodeCounters::new());

    group.bench_function("begin+drop (1 thread)", |b| {
        b.iter(|| drop(black_box(counters.begin())));
    });

    group.bench_function("begin+drop (2 threads contended)", |b| {
        // A second thread hammers the same counters for the whole measurement.
        let stop = Arc::new(AtomicBool::new(false));
        let other = {
            let counters = Arc::clone(&counters);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    drop(black_box(counters.begin()));
                }
            })
        };
        b.iter(|| drop(black_box(counters.begin())));
        stop.store(true, Ordering::Relaxed);
        other.join().unwrap();
    });

    group.bench_function("begin+finish(success) (1 thread)", |b| {
        let outcome = cluster_metrics::RequestOutcome::success()
            .with_time_to_first_token(Duration::from_millis(200))
            .with_tokens(1000, 900);
        b.iter(|| counters.begin().finish(black_box(outcome)));
    });
    group.finish();
}

criterion_group!(benches, rolling_window, ewma, histogram, in_flight_guard);
criterion_main!(benches);
