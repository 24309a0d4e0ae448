//! Cluster-wide aggregation of per-node counters into
//! [`cluster_types::ClusterMetrics`], and per-node conversion into
//! [`cluster_types::NodeMetrics`].

use std::time::Duration;

use cluster_types::{ClusterMetrics, NodeId, NodeMetrics, NodeStatus};

use crate::NodeCountersSnapshot;

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Aggregates per-node snapshots into the cluster's [`ClusterMetrics`].
///
/// * node counts per status (`total_nodes`, `healthy_nodes`, ...);
/// * sums of `in_flight`, requests, successes, failures, cancellations and
///   prompt / cached / completion tokens over every node given, whatever its
///   status (a node that went offline still served the requests it served);
/// * `cache_hit_ratio` = Σ cached / Σ prompt tokens (0.0 without prompt
///   tokens);
/// * `avg_latency_ms` = Σ latency / Σ successful requests over all nodes —
///   the request-weighted mean of the nodes' mean latencies (`None` without
///   successes);
/// * `avg_ttft_ms` = the same for time to first token.
///
/// Node ids are not needed for the sums; they are part of the item so the
/// call reads like the registry's iteration (`(id, status, snapshot)`). A
/// node listed twice is counted twice.
///
/// ```
/// use cluster_metrics::{NodeCountersSnapshot, aggregate_cluster_metrics};
/// use cluster_types::{NodeId, NodeStatus};
///
/// let a = NodeId::from("a");
/// let b = NodeId::from("b");
/// let snap_a = NodeCountersSnapshot { requests: 3, successes: 3, prompt_tokens: 100, cached_tokens: 50, ..Default::default() };
/// let snap_b = NodeCountersSnapshot { requests: 1, failures: 1, in_flight: 0, ..Default::default() };
/// let m = aggregate_cluster_metrics([
///     (&a, NodeStatus::Healthy, &snap_a),
///     (&b, NodeStatus::Unhealthy, &snap_b),
/// ]);
/// assert_eq!((m.total_nodes, m.healthy_nodes, m.unhealthy_nodes), (2, 1, 1));
/// assert_eq!((m.requests_total, m.successes_total, m.failures_total), (4, 3, 1));
/// assert_eq!(m.cache_hit_ratio, 0.5);
/// ```
#[must_use]
pub fn aggregate_cluster_metrics<'a, I>(nodes: I) -> ClusterMetrics
where
    I: IntoIterator<Item = (&'a NodeId, NodeStatus, &'a NodeCountersSnapshot)>,
{
    let mut m = ClusterMetrics::default();
    let mut statuses = Vec::new();
    let mut latency_sum = Duration::ZERO;
    let mut latency_count: u64 = 0;
    let mut ttft_sum = Duration::ZERO;
    let mut ttft_count: u64 = 0;
    for (_id, status, s) in nodes {
        statuses.push(status);
        m.in_flight = m.in_flight.saturating_add(s.in_flight);
        m.requests_total = m.requests_total.saturating_add(s.requests);
        m.successes_total = m.successes_total.saturating_add(s.successes);
        m.failures_total = m.failures_total.saturating_add(s.failures);
        m.cancelled_total = m.cancelled_total.saturating_add(s.cancelled);
        m.prompt_tokens_total = m.prompt_tokens_total.saturating_add(s.prompt_tokens);
        m.cached_tokens_total = m.cached_tokens_total.saturating_add(s.cached_tokens);
        m.completion_tokens_total = m
            .completion_tokens_total
            .saturating_add(s.completion_tokens);
        latency_sum = latency_sum.saturating_add(s.latency.sum);
        latency_count = latency_count.saturating_add(s.latency.count);
        ttft_sum = ttft_sum.saturating_add(s.time_to_first_token.sum);
        ttft_count = ttft_count.saturating_add(s.time_to_first_token.count);
    }
    m.count_statuses(statuses);
    m.cache_hit_ratio = ratio(m.cached_tokens_total, m.prompt_tokens_total);
    {
        m.avg_latency_ms = (latency_count > 0).then(|| millis(latency_sum) / latency_count as f64);
        m.avg_ttft_ms = (ttft_count > 0).then(|| millis(ttft_sum) / ttft_count as f64);
    }
    m
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        (num as f64 / den as f64).clamp(0.0, 1.0)
    }
}

impl NodeCountersSnapshot {
    /// Converts to the published [`NodeMetrics`] (milliseconds as `f64`).
    ///
    /// `ewma_latency_ms` is the peak-EWMA time-to-first-token estimate
    /// ([`latency_estimate`](Self::latency_estimate)); the percentiles are
    /// those of the latency histogram; `avg_ttft_ms` is the exact mean time
    /// to first token. `last_request_unix_ms` stays `None`: this crate only
    /// knows monotonic time, so the caller fills in wall-clock fields.
    #[must_use]
    pub fn to_node_metrics(&self) -> NodeMetrics {
        NodeMetrics {
            in_flight: self.in_flight,
            requests_total: self.requests,
            successes_total: self.successes,
            failures_total: self.failures,
            cancelled_total: self.cancelled,
            prompt_tokens_total: self.prompt_tokens,
            cached_tokens_total: self.cached_tokens,
            completion_tokens_total: self.completion_tokens,
            ewma_latency_ms: Some(millis(self.latency_estimate)),
            latency_p50_ms: self.latency.p50.map(millis),
            latency_p90_ms: self.latency.p90.map(millis),
            latency_p99_ms: self.latency.p99.map(millis),
            avg_ttft_ms: self.time_to_first_token.mean.map(millis),
            last_request_unix_ms: None,
            cache_predictions_total: self.cache_prediction.count,
            cache_prediction_within_block: self.cache_prediction.within_one_block_ratio(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{HistogramSummary, ManualClock, NodeCounters, RequestOutcome};

    #[test]
    fn empty_cluster() {
        let m = aggregate_cluster_metrics(std::iter::empty());
        assert_eq!(m, ClusterMetrics::default());
    }

    #[test]
    fn sums_counts_and_weights_latency_by_requests() {
        let a = NodeId::from("a");
        let b = NodeId::from("b");
        let c = NodeId::from("c");
        let sa = NodeCountersSnapshot {
            in_flight: 2,
            requests: 12,
            successes: 10,
            prompt_tokens: 1000,
            cached_tokens: 900,
            completion_tokens: 50,
            latency: HistogramSummary {
                count: 10,
                sum: Duration::from_secs(10),
                ..HistogramSummary::default()
            },
            time_to_first_token: HistogramSummary {
                count: 10,
                sum: Duration::from_secs(1),
                ..HistogramSummary::default()
            },
            ..NodeCountersSnapshot::default()
        };
        let sb = NodeCountersSnapshot {
            in_flight: 1,
            requests: 4,
            successes: 2,
            failures: 1,
            prompt_tokens: 1000,
            cached_tokens: 100,
            latency: HistogramSummary {
                count: 2,
                sum: Duration::from_secs(8),
                ..HistogramSummary::default()
            },
            ..NodeCountersSnapshot::default()
        };
        let sc = NodeCountersSnapshot {
            cancelled: 3,
            requests: 3,
            ..NodeCountersSnapshot::default()
        };
        let m = aggregate_cluster_metrics([
            (&a, NodeStatus::Healthy, &sa),
            (&b, NodeStatus::Degraded, &sb),
            (&c, NodeStatus::Offline, &sc),
        ]);
        assert_eq!(m.total_nodes, 3);
        assert_eq!(
            (m.healthy_nodes, m.degraded_nodes, m.offline_nodes),
            (1, 1, 1)
        );
        assert_eq!(m.routable_nodes(), 2);
        assert_eq!(m.in_flight, 3);
        assert_eq!(m.requests_total, 19);
        assert_eq!(
            (m.successes_total, m.failures_total, m.cancelled_total),
            (12, 1, 3)
        );
        assert_eq!(
            (
                m.prompt_tokens_total,
                m.cached_tokens_total,
                m.completion_tokens_total
            ),
            (2000, 1000, 50)
        );
        assert_eq!(m.cache_hit_ratio, 0.5);
        // (10 s + 8 s) / 12 successes = 1.5 s.
        assert!((m.avg_latency_ms.unwrap() - 1500.0).abs() < 1e-9);
        assert!((m.avg_ttft_ms.unwrap() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn node_metrics_conversion() {
        let clock = ManualClock::new();
        let c = Arc::new(NodeCounters::with_clock(clock.shared()));
        let mut g = c.begin();
        clock.advance(Duration::from_millis(250));
        g.mark_first_token();
        clock.advance(Duration::from_millis(750));
        g.finish(
            RequestOutcome::success()
                .with_tokens(10, 5)
                .with_completion_tokens(3),
        );
        let nm = c.snapshot().to_node_metrics();
        assert_eq!(nm.requests_total, 1);
        assert_eq!(nm.successes_total, 1);
        assert_eq!(nm.completion_tokens_total, 3);
        assert_eq!(nm.cache_hit_ratio(), 0.5);
        assert!((nm.avg_ttft_ms.unwrap() - 250.0).abs() < 1e-9);
        assert!((nm.latency_p50_ms.unwrap() - 1000.0).abs() < 1.0);
        assert!((nm.ewma_latency_ms.unwrap() - 250.0).abs() < 1e-6);
        assert_eq!(nm.last_request_unix_ms, None);
    }
}
