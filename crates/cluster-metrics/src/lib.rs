//! Metrics for mlx-cluster: rolling health windows, latency estimators,
//! histograms, live per-node counters, and Prometheus text exposition.
//!
//! This crate sits just above `cluster-types` and below everything else. It
//! does no I/O and uses no async runtime; time always comes from a [`Clock`]
//! or an `Instant` argument, so every type is testable without sleeping.
//!
//! | type | job | cost |
//! |---|---|---|
//! | [`Clock`], [`SystemClock`], [`ManualClock`] | injected time | one `Instant::now` / one lock |
//! | [`RollingWindow`] | success rate, mean latency, runs over the last 30 s / 100 samples | record O(1), snapshot O(n), no allocation |
//! | [`Ewma`], [`PeakEwma`] | time-decayed latency estimates; `cost = estimate × (pending + 1)` | a few float ops |
//! | [`LatencyHistogram`] | p50 / p90 / p99 / max over 1 µs ..= 1 h | one short lock |
//! | [`NodeCounters`], [`InFlightGuard`] | lock-free per-node counters, RAII in-flight | atomics |
//! | [`RoutingCounters`] | routing decisions by reason, matched prefix ratio | atomics |
//! | [`aggregate_cluster_metrics`] | per-node snapshots → `cluster_types::ClusterMetrics` | O(nodes) |
//! | [`MetricsRegistry`] | node set + OpenMetrics text via `prometheus-client` (names in `docs/metrics.md`) | read at scrape time |
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cluster_metrics::{Clock, ManualClock, NodeCounters, RequestOutcome, RollingWindow};
//!
//! let clock = ManualClock::new();
//!
//! // Passive health: a rolling window fed by request outcomes.
//! let mut window = RollingWindow::default(); // 30 s, 100 samples
//! window.record_success(clock.now(), Some(Duration::from_millis(250)));
//! window.record_failure(clock.now());
//! assert_eq!(window.snapshot(clock.now()).success_rate, 0.5);
//!
//! // Live counters: one guard per request.
//! let counters = Arc::new(NodeCounters::with_clock(clock.shared()));
//! let guard = counters.begin();
//! clock.advance(Duration::from_millis(400));
//! guard.finish(RequestOutcome::success().with_tokens(12_000, 11_000));
//! let snap = counters.snapshot();
//! assert_eq!(snap.successes, 1);
//! assert_eq!(snap.latency.max, Some(Duration::from_millis(400)));
//! ```

#![forbid(unsafe_code)]

mod aggregate;
mod clock;
mod counters;
mod error;
pub mod ewma;
pub mod exposition;
mod histogram;
mod prediction;
mod routing;
mod window;

pub use aggregate::aggregate_cluster_metrics;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock, system_clock};
pub use counters::{
    InFlightGuard, NodeCounters, NodeCountersSnapshot, OutcomeStatus, RequestOutcome,
};
pub use error::MetricsError;
pub use ewma::{Ewma, PeakEwma, SharedPeakEwma};
pub use exposition::{LATENCY_BUCKETS, METRIC_NAMES, MetricsRegistry, OPENMETRICS_CONTENT_TYPE};
pub use histogram::{
    BucketCounts, HISTOGRAM_HIGHEST, HISTOGRAM_LOWEST, HISTOGRAM_SIGFIG, HistogramSummary,
    LatencyHistogram,
};
pub use prediction::{PREDICTION_ERROR_BUCKETS, PredictionHistogram, PredictionSnapshot};
pub use routing::{PREFIX_MATCH_BUCKETS, ROUTING_REASONS, RoutingCounters, RoutingSnapshot};
pub use window::{RollingWindow, WindowSnapshot};
