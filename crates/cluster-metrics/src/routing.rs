//! [`RoutingCounters`]: what the router decided for one node — decisions
//! by reason, and how much of each prompt the cache model believed the
//! node held (the matched prefix ratio).
//!
//! Fixed arrays of atomics: no lock, no allocation on the request path.

use std::sync::atomic::{AtomicU64, Ordering};

use cluster_types::RoutingReason;

/// Routing reasons counted, in [`RoutingReason::ALL`] order.
pub const ROUTING_REASONS: usize = RoutingReason::ALL.len();

/// Upper bounds of the matched-prefix-ratio buckets: 0 (nothing matched),
/// 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1, plus `+Inf`.
pub const PREFIX_MATCH_BUCKETS: [f64; 8] = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];

/// Per-node routing decisions. Default: all zero.
///
/// ```
/// use cluster_metrics::RoutingCounters;
/// use cluster_types::RoutingReason;
///
/// let r = RoutingCounters::default();
/// r.record(RoutingReason::CacheHit, Some(0.95));
/// r.record(RoutingReason::Rendezvous, Some(0.0));
/// r.record(RoutingReason::RoundRobin, None);
/// let s = r.snapshot();
/// assert_eq!(s.decisions(RoutingReason::CacheHit), 1);
/// assert_eq!(s.prefix_match_count, 2);
/// assert_eq!(s.prefix_match_buckets[0], 1); // exactly 0
/// ```
#[derive(Debug, Default)]
pub struct RoutingCounters {
    decisions: [AtomicU64; ROUTING_REASONS],
    /// Per bucket (not cumulative), `+Inf` last.
    match_buckets: [AtomicU64; PREFIX_MATCH_BUCKETS.len() + 1],
    /// Sum of ratios in millionths.
    match_sum_micro: AtomicU64,
}

/// A copy of [`RoutingCounters`]. Plain data; default all zero.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RoutingSnapshot {
    /// Decisions per reason, in [`RoutingReason::ALL`] order.
    pub by_reason: [u64; ROUTING_REASONS],
    /// Decisions that observed a matched prefix ratio.
    pub prefix_match_count: u64,
    /// Sum of the observed ratios.
    pub prefix_match_sum: f64,
    /// Count per bucket of [`PREFIX_MATCH_BUCKETS`] (not cumulative),
    /// `+Inf` last.
    pub prefix_match_buckets: [u64; PREFIX_MATCH_BUCKETS.len() + 1],
}

impl RoutingSnapshot {
    /// Decisions counted for `reason`.
    #[must_use]
    pub fn decisions(&self, reason: RoutingReason) -> u64 {
        reason_index(reason).map_or(0, |i| self.by_reason[i])
    }

    /// Decisions over every reason.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.by_reason.iter().sum()
    }
}

fn reason_index(reason: RoutingReason) -> Option<usize> {
    RoutingReason::ALL.iter().position(|r| *r == reason)
}

impl RoutingCounters {
    /// Counts one decision for `reason`, with the share of the prompt's
    /// blocks the cache model believed the node held (`None` when the
    /// strategy keeps no cache model; clamped to `[0, 1]`, NaN as 0).
    pub fn record(&self, reason: RoutingReason, prefix_match: Option<f64>) {
        if let Some(i) = reason_index(reason) {
            self.decisions[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ratio) = prefix_match {
            let r = if ratio.is_nan() {
                0.0
            } else {
                ratio.clamp(0.0, 1.0)
            };
            let idx = PREFIX_MATCH_BUCKETS.partition_point(|&b| b < r);
            self.match_buckets[idx].fetch_add(1, Ordering::Relaxed);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let micro = (r * 1e6).round() as u64;
            self.match_sum_micro.fetch_add(micro, Ordering::Relaxed);
        }
    }

    /// A copy of the counts.
    #[must_use]
    pub fn snapshot(&self) -> RoutingSnapshot {
        let mut by_reason = [0u64; ROUTING_REASONS];
        for (v, a) in by_reason.iter_mut().zip(&self.decisions) {
            *v = a.load(Ordering::Relaxed);
        }
        let mut buckets = [0u64; PREFIX_MATCH_BUCKETS.len() + 1];
        for (v, a) in buckets.iter_mut().zip(&self.match_buckets) {
            *v = a.load(Ordering::Relaxed);
        }
        #[allow(clippy::cast_precision_loss)]
        let sum = self.match_sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        RoutingSnapshot {
            by_reason,
            prefix_match_count: buckets.iter().sum(),
            prefix_match_sum: sum,
            prefix_match_buckets: buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_buckets() {
        let r = RoutingCounters::default();
        for reason in RoutingReason::ALL {
            r.record(*reason, None);
        }
        r.record(RoutingReason::Retry, None);
        for ratio in [0.0, 0.05, 0.5, 0.999, 1.0, 2.0, -1.0, f64::NAN] {
            r.record(RoutingReason::CacheHit, Some(ratio));
        }
        let s = r.snapshot();
        assert_eq!(s.decisions(RoutingReason::Retry), 2);
        assert_eq!(s.decisions(RoutingReason::CacheHit), 9);
        assert_eq!(s.total(), RoutingReason::ALL.len() as u64 + 1 + 8);
        assert_eq!(s.prefix_match_count, 8);
        // 0, -1 (as 0), NaN (as 0) → "le 0"; 0.05 → 0.1; 0.5 → 0.5;
        // 0.999 → 1; 1.0 and 2.0 (as 1) → 1.
        assert_eq!(s.prefix_match_buckets, [3, 1, 0, 1, 0, 0, 0, 3, 0]);
        assert!((s.prefix_match_sum - (0.05 + 0.5 + 0.999 + 1.0 + 1.0)).abs() < 1e-6);
    }
}
