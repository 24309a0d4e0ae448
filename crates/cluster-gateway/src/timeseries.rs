//! The dashboard's memory: the cluster sampled every
//! `observability.sample_interval` (default 5 s) over
//! `observability.history` (default 15 min), in memory, served by
//! `GET /v1/cluster/timeseries`.
//!
//! Each [`Sample`] holds, over the interval that ended at its time:
//! requests per second (routed requests, from the nodes' counters), time to
//! first token p50 and p99 (from the decision records of the requests that
//! ended in the interval — at most `observability.decision_log_size` of
//! them, so a busier interval is summarised by its latest requests), the
//! cache hit ratio (cached / prompt tokens the nodes reported), and the
//! requests in flight per node at its time. A node changing status
//! between two samples is a [`StatusChange`] (drawn as a marker).
//!
//! A background task started with the gateway takes the samples; it stops
//! when the gateway is dropped. Nothing here runs on the request path.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cluster_facade::DecisionLog;
use cluster_types::{ClusterState, NodeStatus};
use http::{HeaderValue, header};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::gateway::Gateway;

/// The endpoint's path.
pub(crate) const TIMESERIES_PATH: &str = "/v1/cluster/timeseries";

/// One point of the time series. Rates are over the interval that ended at
/// `t_unix_ms`; `None` (JSON `null`) when nothing happened to measure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When it was taken, unix milliseconds.
    pub t_unix_ms: u64,
    /// Routed requests per second (`None` for the first sample).
    pub requests_per_second: Option<f64>,
    /// Median time to first token of the requests that ended, ms.
    pub ttft_p50_ms: Option<f64>,
    /// 99th percentile of the same, ms.
    pub ttft_p99_ms: Option<f64>,
    /// Cached / prompt tokens the nodes reported in the interval, 0 to 1.
    pub cache_hit_ratio: Option<f64>,
    /// Requests in flight per node at `t_unix_ms`.
    pub in_flight: BTreeMap<String, u64>,
}

/// A node whose status differed from the previous sample's (`from` is
/// `None` for a node that appeared, `to` for one that left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusChange {
    /// When the change was seen, unix milliseconds.
    pub t_unix_ms: u64,
    /// The node.
    pub node: String,
    /// Its status at the previous sample.
    pub from: Option<NodeStatus>,
    /// Its status now.
    pub to: Option<NodeStatus>,
}

/// What the previous sample saw, to compute the next one's rates.
#[derive(Debug)]
struct Cursor {
    at: Instant,
    requests: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    decision_seq: u64,
    statuses: BTreeMap<String, NodeStatus>,
}

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<Sample>,
    changes: VecDeque<StatusChange>,
    cursor: Option<Cursor>,
}

/// The sampled series, bounded to `observability.history`.
///
/// Default capacity: 180 samples 5 s apart (15 minutes).
#[derive(Debug)]
pub struct TimeSeries {
    interval: Duration,
    capacity: usize,
    series: Mutex<Series>,
}

/// The JSON of `GET /v1/cluster/timeseries`.
#[derive(Debug, Serialize)]
struct SeriesView {
    interval_ms: u64,
    history_ms: u64,
    samples: Vec<Sample>,
    status_changes: Vec<StatusChange>,
}

impl TimeSeries {
    /// An empty series of samples `interval` apart, at most `capacity` of
    /// them (and as many status changes).
    #[must_use]
    pub fn new(interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity: capacity.max(1),
            series: Mutex::new(Series::default()),
        }
    }

    /// Time between two samples.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Samples held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.series.lock().samples.len()
    }

    /// Whether no sample was taken yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the samples, oldest first.
    #[must_use]
    pub fn samples(&self) -> Vec<Sample> {
        self.series.lock().samples.iter().cloned().collect()
    }

    /// A copy of the status changes, oldest first.
    #[must_use]
    pub fn status_changes(&self) -> Vec<StatusChange> {
        self.series.lock().changes.iter().cloned().collect()
    }

    /// Takes one sample of `state` at `now` (`t_unix_ms` in wall-clock
    /// time), reading the time to first token of the requests recorded in
    /// `decisions` since the previous sample.
    pub fn record(
        &self,
        state: &ClusterState,
        decisions: &DecisionLog,
        now: Instant,
        t_unix_ms: u64,
    ) {
        let mut series = self.series.lock();
        let previous_seq = series.cursor.as_ref().map_or(0, |c| c.decision_seq);
        let mut ttfts: Vec<f64> = Vec::new();
        let decision_seq = decisions.visit_since(previous_seq, |r| {
            if let Some(t) = r.ttft_ms {
                ttfts.push(t);
            }
        });
        let m = &state.metrics;
        let statuses: BTreeMap<String, NodeStatus> = state
            .nodes
            .iter()
            .map(|n| (n.spec.id.as_str().to_owned(), n.status))
            .collect();
        let in_flight = state
            .nodes
            .iter()
            .map(|n| (n.spec.id.as_str().to_owned(), n.metrics.in_flight))
            .collect();
        let (requests_per_second, cache_hit_ratio) = match &series.cursor {
            Some(c) => {
                let secs = now.saturating_duration_since(c.at).as_secs_f64();
                // Counters shrink when a node leaves: no negative rates.
                let requests = m.requests_total.saturating_sub(c.requests);
                let prompt = m.prompt_tokens_total.saturating_sub(c.prompt_tokens);
                let cached = m.cached_tokens_total.saturating_sub(c.cached_tokens);
                (
                    (secs > 0.0).then(|| to_f64(requests) / secs),
                    (prompt > 0).then(|| (to_f64(cached) / to_f64(prompt)).clamp(0.0, 1.0)),
                )
            }
            None => (None, None),
        };
        let changes = match &series.cursor {
            Some(c) => status_changes(&c.statuses, &statuses, t_unix_ms),
            None => Vec::new(),
        };
        let sample = Sample {
            t_unix_ms,
            requests_per_second,
            ttft_p50_ms: quantile(&mut ttfts, 0.5),
            ttft_p99_ms: quantile(&mut ttfts, 0.99),
            cache_hit_ratio,
            in_flight,
        };
        series.cursor = Some(Cursor {
            at: now,
            requests: m.requests_total,
            prompt_tokens: m.prompt_tokens_total,
            cached_tokens: m.cached_tokens_total,
            decision_seq,
            statuses,
        });
        if series.samples.len() >= self.capacity {
            series.samples.pop_front();
        }
        series.samples.push_back(sample);
        for change in changes {
            if series.changes.len() >= self.capacity {
                series.changes.pop_front();
            }
            series.changes.push_back(change);
        }
    }

    /// Drops changes older than the oldest sample.
    fn trim_changes(series: &mut Series) {
        let oldest = series.samples.front().map_or(0, |s| s.t_unix_ms);
        while series.changes.front().is_some_and(|c| c.t_unix_ms < oldest) {
            series.changes.pop_front();
        }
    }

    fn view(&self) -> SeriesView {
        let mut series = self.series.lock();
        Self::trim_changes(&mut series);
        let interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        SeriesView {
            interval_ms,
            history_ms: interval_ms.saturating_mul(self.capacity as u64),
            samples: series.samples.iter().cloned().collect(),
            status_changes: series.changes.iter().cloned().collect(),
        }
    }
}

impl Default for TimeSeries {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), 180)
    }
}

#[allow(clippy::cast_precision_loss)]
fn to_f64(x: u64) -> f64 {
    x as f64
}

/// The `q` quantile (nearest rank) of `values`; sorts them.
fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

fn status_changes(
    before: &BTreeMap<String, NodeStatus>,
    after: &BTreeMap<String, NodeStatus>,
    t_unix_ms: u64,
) -> Vec<StatusChange> {
    let mut changes = Vec::new();
    for (node, to) in after {
        let from = before.get(node).copied();
        if from != Some(*to) {
            changes.push(StatusChange {
                t_unix_ms,
                node: node.clone(),
                from,
                to: Some(*to),
            });
        }
    }
    for (node, from) in before {
        if !after.contains_key(node) {
            changes.push(StatusChange {
                t_unix_ms,
                node: node.clone(),
                from: Some(*from),
                to: None,
            });
        }
    }
    changes
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Samples the gateway's cluster every interval until the gateway is
/// dropped (spawned by `Gateway::new`).
pub(crate) async fn run(gateway: Weak<Gateway>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(gw) = gateway.upgrade() else {
            return;
        };
        let state = gw.cluster().status();
        gw.timeseries().record(
            &state,
            gw.cluster().decisions(),
            Instant::now(),
            unix_ms_now(),
        );
    }
}

/// `GET /v1/cluster/timeseries` — the samples and status changes, oldest
/// first: `{"interval_ms", "history_ms", "samples": [...],
/// "status_changes": [...]}`.
pub(crate) async fn timeseries(State(gw): State<Arc<Gateway>>) -> Response {
    let mut response = Json(gw.timeseries().view()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use cluster_facade::{NodeEntry, RequestOutcome, Router, RouterParams};
    use cluster_metrics::ManualClock;
    use cluster_types::LoadBalanceStrategy;
    use cluster_types::{NodeSpec, RoutingContext};

    use super::*;
    use crate::backend::ClusterHandle;

    fn router(clock: &ManualClock) -> Router {
        let r = Router::new(
            RouterParams::default().with_strategy(LoadBalanceStrategy::RoundRobin),
            clock.shared(),
        );
        r.publish(
            ["a", "b"]
                .map(|id| {
                    NodeEntry::new(
                        NodeSpec::new(id, format!("http://{id}:1")),
                        NodeStatus::Healthy,
                    )
                })
                .to_vec(),
        );
        r
    }

    #[test]
    fn samples_rates_quantiles_in_flight_and_status_changes() {
        let clock = ManualClock::new();
        let r = router(&clock);
        let ts = TimeSeries::new(Duration::from_secs(5), 3);
        let t0 = Instant::now();
        ts.record(&r.status(), r.decisions(), t0, 1_000);
        // Ten requests in 5 s: TTFT 100..=1000 ms, half their prompt cached.
        for i in 1..=10u64 {
            let mut g = r.select(&RoutingContext::default()).unwrap().guard;
            clock.advance(Duration::from_millis(100 * i));
            g.first_byte();
            g.finish(RequestOutcome::success_with_usage(100, 50, 1));
        }
        let held = r.select(&RoutingContext::default()).unwrap().guard;
        ts.record(
            &r.status(),
            r.decisions(),
            t0 + Duration::from_secs(5),
            6_000,
        );
        let s = ts.samples();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].requests_per_second, None);
        assert_eq!(s[0].ttft_p50_ms, None);
        // 11 routed (one still in flight) in 5 s.
        assert!((s[1].requests_per_second.unwrap() - 2.2).abs() < 1e-9);
        assert_eq!(s[1].ttft_p50_ms, Some(500.0));
        assert_eq!(s[1].ttft_p99_ms, Some(1000.0));
        assert_eq!(s[1].cache_hit_ratio, Some(0.5));
        assert_eq!(s[1].in_flight.values().sum::<u64>(), 1);
        assert!(ts.status_changes().is_empty());

        // A node goes down and another leaves; nothing ran: no rate data.
        drop(held);
        r.update(|entries| {
            entries.retain(|e| e.spec.id.as_str() == "a");
            entries[0].status = NodeStatus::Unhealthy;
        });
        ts.record(
            &r.status(),
            r.decisions(),
            t0 + Duration::from_secs(10),
            11_000,
        );
        let s = ts.samples();
        assert_eq!(s[2].ttft_p50_ms, None);
        assert_eq!(s[2].cache_hit_ratio, None);
        assert_eq!(s[2].requests_per_second, Some(0.0));
        let changes = ts.status_changes();
        assert_eq!(
            changes,
            [
                StatusChange {
                    t_unix_ms: 11_000,
                    node: "a".into(),
                    from: Some(NodeStatus::Healthy),
                    to: Some(NodeStatus::Unhealthy),
                },
                StatusChange {
                    t_unix_ms: 11_000,
                    node: "b".into(),
                    from: Some(NodeStatus::Healthy),
                    to: None,
                },
            ]
        );
        // Bounded: the oldest sample goes, and changes older than the
        // oldest sample are not served.
        ts.record(
            &r.status(),
            r.decisions(),
            t0 + Duration::from_secs(15),
            16_000,
        );
        ts.record(
            &r.status(),
            r.decisions(),
            t0 + Duration::from_secs(20),
            21_000,
        );
        ts.record(
            &r.status(),
            r.decisions(),
            t0 + Duration::from_secs(25),
            26_000,
        );
        assert_eq!(ts.len(), 3);
        let view = ts.view();
        assert_eq!(view.samples[0].t_unix_ms, 16_000);
        assert!(view.status_changes.is_empty());
        assert_eq!((view.interval_ms, view.history_ms), (5_000, 15_000));
    }

    #[test]
    fn nearest_rank_quantiles() {
        let mut v = vec![3.0, 1.0, 2.0];
        assert_eq!(quantile(&mut v, 0.5), Some(2.0));
        assert_eq!(quantile(&mut v, 0.99), Some(3.0));
        assert_eq!(quantile(&mut [], 0.5), None);
        assert_eq!(quantile(&mut [7.0], 0.01), Some(7.0));
    }
}
