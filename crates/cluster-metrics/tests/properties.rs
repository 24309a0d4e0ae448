//! Property tests for `RollingWindow`, the EWMAs and `NodeCounters`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_metrics::{Ewma, ManualClock, NodeCounters, PeakEwma, RequestOutcome, RollingWindow};
use proptest::prelude::*;

/// One operation on a window: advance time by `gap_ms`, then record.
#[derive(Debug, Clone)]
enum Op {
    Success {
        gap_ms: u64,
        latency_ms: Option<u64>,
    },
    Failure {
        gap_ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..5_000, proptest::option::of(0u64..60_000))
            .prop_map(|(gap_ms, latency_ms)| Op::Success { gap_ms, latency_ms }),
        (0u64..5_000).prop_map(|gap_ms| Op::Failure { gap_ms }),
    ]
}

/// Applies `ops` to a window and to a naive model (every sample kept),
/// returning the final instant and the model's samples (at, success, latency).
fn run(
    w: &mut RollingWindow,
    t0: Instant,
    ops: &[Op],
) -> (Instant, Vec<(Instant, bool, Option<Duration>)>) {
    let mut now = t0;
    let mut model = Vec::new();
    for op in ops {
        match *op {
            Op::Success { gap_ms, latency_ms } => {
                now += Duration::from_millis(gap_ms);
                let latency = latency_ms.map(Duration::from_millis);
                w.record_success(now, latency);
                model.push((now, true, latency));
            }
            Op::Failure { gap_ms } => {
                now += Duration::from_millis(gap_ms);
                w.record_failure(now);
                model.push((now, false, None));
            }
        }
    }
    (now, model)
}

proptest! {
    #[test]
    fn window_never_holds_more_than_its_max(
        max in 1usize..50,
        window_ms in 1u64..60_000,
        ops in proptest::collection::vec(op(), 0..300),
        probe_ms in 0u64..120_000,
    ) {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::from_millis(window_ms), max);
        let (end, _) = run(&mut w, t0, &ops);
        prop_assert!(w.stored_samples() <= max);
        let snap = w.snapshot(end + Duration::from_millis(probe_ms));
        prop_assert!(snap.total_samples <= max);
        prop_assert!(snap.total_samples <= ops.len());
    }

    #[test]
    fn rates_stay_in_unit_interval(
        max in 1usize..50,
        window_ms in 1u64..60_000,
        ops in proptest::collection::vec(op(), 0..300),
        probe_ms in 0u64..120_000,
    ) {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::from_millis(window_ms), max);
        let (end, _) = run(&mut w, t0, &ops);
        let snap = w.snapshot(end + Duration::from_millis(probe_ms));
        prop_assert!((0.0..=1.0).contains(&snap.success_rate));
        let runs = snap.consecutive_successes as usize + snap.consecutive_failures as usize;
        prop_assert!(runs <= snap.total_samples);
        prop_assert!(snap.consecutive_successes == 0 || snap.consecutive_failures == 0);
    }

    /// The snapshot equals a naive recomputation over the newest `max`
    /// samples whose age is below the window: so samples older than the
    /// window never count, and overwritten samples never count.
    #[test]
    fn snapshot_matches_naive_model(
        max in 1usize..50,
        window_ms in 1u64..60_000,
        ops in proptest::collection::vec(op(), 0..300),
        probe_ms in 0u64..120_000,
    ) {
        let t0 = Instant::now();
        let window = Duration::from_millis(window_ms);
        let mut w = RollingWindow::new(window, max);
        let (end, model) = run(&mut w, t0, &ops);
        let now = end + Duration::from_millis(probe_ms);
        let snap = w.snapshot(now);

        let kept = &model[model.len().saturating_sub(max)..];
        let live: Vec<_> = kept
            .iter()
            .filter(|(at, _, _)| now.saturating_duration_since(*at) < window)
            .collect();
        prop_assert_eq!(snap.total_samples, live.len());
        if live.is_empty() {
            prop_assert_eq!(snap.success_rate, 1.0);
            prop_assert_eq!(snap.avg_latency, None);
        } else {
            let successes = live.iter().filter(|(_, ok, _)| *ok).count();
            let expected = successes as f64 / live.len() as f64;
            prop_assert!((snap.success_rate - expected).abs() < 1e-12);
            let lat: Vec<u128> = live.iter().filter_map(|(_, _, l)| l.map(|d| d.as_nanos())).collect();
            let expected_avg = (!lat.is_empty())
                .then(|| Duration::from_nanos((lat.iter().sum::<u128>() / lat.len() as u128) as u64));
            prop_assert_eq!(snap.avg_latency, expected_avg);
            let newest = live.last().unwrap().1;
            let run = live.iter().rev().take_while(|(_, ok, _)| *ok == newest).count() as u32;
            if newest {
                prop_assert_eq!((snap.consecutive_successes, snap.consecutive_failures), (run, 0));
            } else {
                prop_assert_eq!((snap.consecutive_successes, snap.consecutive_failures), (0, run));
            }
        }
    }

    #[test]
    fn expired_window_is_empty(
        max in 1usize..50,
        window_ms in 1u64..60_000,
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        let t0 = Instant::now();
        let window = Duration::from_millis(window_ms);
        let mut w = RollingWindow::new(window, max);
        let (end, _) = run(&mut w, t0, &ops);
        let snap = w.snapshot(end + window);
        prop_assert_eq!(snap.total_samples, 0);
        prop_assert_eq!(snap.success_rate, 1.0);
    }

    /// The EWMA stays between the smallest and largest sample.
    #[test]
    fn ewma_stays_within_sample_range(
        samples in proptest::collection::vec((0u64..100_000, 1u64..10_000_000), 1..100),
        tau_ms in 1u64..60_000,
    ) {
        let t0 = Instant::now();
        let mut e = Ewma::new(Duration::from_millis(tau_ms));
        let mut now = t0;
        let (mut lo, mut hi) = (u64::MAX, 0);
        for (gap_ms, us) in samples {
            now += Duration::from_millis(gap_ms);
            e.observe(now, Duration::from_micros(us));
            lo = lo.min(us);
            hi = hi.max(us);
        }
        let est = e.estimate().unwrap().as_secs_f64() * 1e6;
        prop_assert!(est >= lo as f64 - 1e-3 && est <= hi as f64 + 1e-3);
    }

    /// Peak-EWMA never reports less than the latest sample at the instant
    /// it was observed, never more than the largest one seen, and its cost
    /// grows with pending.
    #[test]
    fn peak_ewma_is_peak_sensitive(
        samples in proptest::collection::vec((0u64..100_000, 1u64..10_000_000), 1..100),
        pending in 0u32..100,
    ) {
        let t0 = Instant::now();
        let mut p = PeakEwma::new(Duration::from_secs(10), Duration::from_micros(1));
        let mut now = t0;
        let mut hi = 1u64;
        for (gap_ms, us) in samples {
            now += Duration::from_millis(gap_ms);
            p.observe(now, Duration::from_micros(us));
            hi = hi.max(us);
            let est = p.peek(now).as_secs_f64() * 1e6;
            prop_assert!(est <= hi as f64 + 1e-3);
        }
        let c0 = { let mut q = p; q.cost(now, pending) };
        let c1 = { let mut q = p; q.cost(now, pending + 1) };
        prop_assert!(c1 >= c0);
    }

    /// requests = successes + failures + cancelled + in_flight, always.
    #[test]
    fn counters_balance(actions in proptest::collection::vec(0u8..4, 0..200)) {
        let clock = ManualClock::new();
        let c = Arc::new(NodeCounters::with_clock(clock.shared()));
        let mut open = Vec::new();
        for a in actions {
            match a {
                0 => open.push(c.begin()),
                1 => if let Some(g) = open.pop() { g.finish(RequestOutcome::success()) },
                2 => if let Some(g) = open.pop() { g.finish(RequestOutcome::failure()) },
                _ => drop(open.pop()),
            }
            clock.advance(Duration::from_millis(10));
            let s = c.snapshot();
            prop_assert_eq!(s.in_flight, open.len() as u64);
            prop_assert_eq!(s.requests, s.completed() + s.in_flight);
            prop_assert!((0.0..=1.0).contains(&s.error_rate()));
        }
    }
}
