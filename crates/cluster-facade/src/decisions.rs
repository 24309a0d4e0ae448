//! The decision log: a [`DecisionRecord`] for each of the most recent
//! routed requests, kept in a bounded ring buffer.
//!
//! `select` fills a [`DecisionDraft`] from the strategy's pick (reason,
//! prediction, cost terms, runner-up) and the request guard completes it
//! when the request ends (the node's reported usage, timings, outcome),
//! then pushes it here. A push takes one short mutex and moves the record
//! into a slot; the oldest record is dropped once the log is full. Records
//! never hold prompt text.

use std::collections::VecDeque;

use cluster_types::{CostTerms, DecisionOutcome, DecisionRecord, NodeId, RoutingReason, RunnerUp};
use parking_lot::Mutex;

/// What a decision query selects. Default: the 100 newest records of any
/// node and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionQuery {
    /// Most records returned. Default 100.
    pub limit: usize,
    /// Only records of this node. Default any.
    pub node: Option<NodeId>,
    /// Only records with this reason. Default any.
    pub reason: Option<RoutingReason>,
}

impl Default for DecisionQuery {
    fn default() -> Self {
        Self {
            limit: 100,
            node: None,
            reason: None,
        }
    }
}

#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<DecisionRecord>,
    /// Records pushed since start (the last `seq`).
    pushed: u64,
}

/// The most recent decision records, newest last, at most `capacity`.
///
/// Default capacity 1000 (`observability.decision_log_size`); capacity 0
/// keeps nothing and `select` then builds no record at all.
///
/// ```
/// use cluster_facade::{DecisionQuery, NodeEntry, RequestOutcome, Router, RouterParams};
/// use cluster_metrics::ManualClock;
/// use cluster_types::{NodeSpec, NodeStatus, RoutingContext};
///
/// let router = Router::new(RouterParams::default(), ManualClock::new().shared());
/// router.publish(vec![NodeEntry::new(NodeSpec::new("a", "http://127.0.0.1:8081"), NodeStatus::Healthy)]);
/// let sel = router.select(&RoutingContext::default()).unwrap();
/// sel.guard.finish(RequestOutcome::success_with_usage(100, 0, 5));
/// let records = router.decisions().recent(&DecisionQuery::default());
/// assert_eq!(records.len(), 1);
/// assert_eq!(records[0].node.as_str(), "a");
/// assert_eq!(records[0].reported_prompt_tokens, Some(100));
/// ```
#[derive(Debug)]
pub struct DecisionLog {
    capacity: usize,
    ring: Mutex<Ring>,
}

impl Default for DecisionLog {
    fn default() -> Self {
        Self::new(1000)
    }
}

impl DecisionLog {
    /// An empty log keeping at most `capacity` records.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Mutex::new(Ring {
                // Grows to `capacity` as records arrive (no large up-front
                // allocation for a large log).
                records: VecDeque::with_capacity(capacity.min(1024)),
                pushed: 0,
            }),
        }
    }

    /// Most records kept.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether records are kept at all (capacity above 0).
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Records held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ring.lock().records.len()
    }

    /// Whether no record is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records pushed since start: the `seq` of the newest one.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.ring.lock().pushed
    }

    /// Appends `record` with the next `seq`, dropping the oldest one when
    /// full.
    pub(crate) fn push(&self, mut record: DecisionRecord) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock();
        ring.pushed += 1;
        record.seq = ring.pushed;
        let evicted = if ring.records.len() >= self.capacity {
            ring.records.pop_front()
        } else {
            None
        };
        ring.records.push_back(record);
        drop(ring);
        // The old record's strings are freed outside the lock.
        drop(evicted);
    }

    /// The newest records matching `query`, newest first.
    #[must_use]
    pub fn recent(&self, query: &DecisionQuery) -> Vec<DecisionRecord> {
        let ring = self.ring.lock();
        ring.records
            .iter()
            .rev()
            .filter(|r| query.node.as_ref().is_none_or(|n| r.node == *n))
            .filter(|r| query.reason.is_none_or(|x| r.reason == x))
            .take(query.limit)
            .cloned()
            .collect()
    }

    /// Calls `visit` on every record with a `seq` above `after`, oldest
    /// first, and returns the newest `seq` seen (`after` when none). Records
    /// already dropped from the ring are skipped.
    pub fn visit_since(&self, after: u64, mut visit: impl FnMut(&DecisionRecord)) -> u64 {
        let ring = self.ring.lock();
        let newer = usize::try_from(ring.pushed.saturating_sub(after)).unwrap_or(usize::MAX);
        let skip = ring.records.len().saturating_sub(newer);
        for r in ring.records.iter().skip(skip) {
            visit(r);
        }
        ring.pushed.max(after)
    }
}

/// What `select` knows about a decision; completed by the guard.
#[derive(Debug, Clone)]
pub(crate) struct DecisionDraft {
    pub(crate) strategy_reason: RoutingReason,
    pub(crate) confidence: f64,
    pub(crate) attempt: u32,
    pub(crate) candidates: u32,
    pub(crate) prompt_tokens_estimate: u64,
    pub(crate) prompt_blocks: u32,
    pub(crate) matched_blocks: u32,
    pub(crate) predicted_cached: Option<u64>,
    pub(crate) cost: Option<CostTerms>,
    pub(crate) runner_up: Option<RunnerUp>,
    /// Set by the guard when it learns from the node's report.
    pub(crate) prediction_error_blocks: Option<f64>,
    /// Set by the caller (the gateway's tracing).
    pub(crate) trace_id: Option<String>,
}

/// The end of a request, as the guard saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) routed_at_unix_ms: u64,
    pub(crate) reason: RoutingReason,
    pub(crate) gate_wait_ms: Option<f64>,
    pub(crate) ttft_ms: Option<f64>,
    pub(crate) total_ms: f64,
    pub(crate) outcome: DecisionOutcome,
    pub(crate) prompt_tokens: Option<u32>,
    pub(crate) cached_tokens: Option<u32>,
    pub(crate) completion_tokens: Option<u32>,
}

impl DecisionDraft {
    /// The finished record of a request on `node` (`seq` is set by the
    /// log).
    pub(crate) fn complete(self, node: NodeId, end: Completion) -> DecisionRecord {
        DecisionRecord {
            seq: 0,
            routed_at_unix_ms: end.routed_at_unix_ms,
            node,
            reason: end.reason,
            strategy_reason: self.strategy_reason,
            confidence: self.confidence,
            attempt: self.attempt,
            candidates: self.candidates,
            prompt_tokens_estimate: self.prompt_tokens_estimate,
            prompt_blocks: self.prompt_blocks,
            matched_blocks: self.matched_blocks,
            predicted_cached_tokens: self.predicted_cached,
            reported_prompt_tokens: end.prompt_tokens.map(u64::from),
            reported_cached_tokens: end.cached_tokens.map(u64::from),
            completion_tokens: end.completion_tokens.map(u64::from),
            prediction_error_blocks: self.prediction_error_blocks,
            cost: self.cost,
            runner_up: self.runner_up,
            gate_wait_ms: end.gate_wait_ms,
            ttft_ms: end.ttft_ms,
            total_ms: end.total_ms,
            outcome: end.outcome,
            trace_id: self.trace_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str, reason: RoutingReason) -> DecisionRecord {
        DecisionDraft {
            strategy_reason: reason,
            confidence: 1.0,
            attempt: 1,
            candidates: 1,
            prompt_tokens_estimate: 10,
            prompt_blocks: 1,
            matched_blocks: 0,
            predicted_cached: None,
            cost: None,
            runner_up: None,
            prediction_error_blocks: None,
            trace_id: None,
        }
        .complete(
            NodeId::from(node),
            Completion {
                routed_at_unix_ms: 0,
                reason,
                gate_wait_ms: None,
                ttft_ms: None,
                total_ms: 1.0,
                outcome: DecisionOutcome::Success,
                prompt_tokens: None,
                cached_tokens: None,
                completion_tokens: None,
            },
        )
    }

    #[test]
    fn keeps_the_newest_and_filters() {
        let log = DecisionLog::new(3);
        for (node, reason) in [
            ("a", RoutingReason::CacheHit),
            ("b", RoutingReason::Rendezvous),
            ("a", RoutingReason::Retry),
            ("b", RoutingReason::CacheHit),
        ] {
            log.push(record(node, reason));
        }
        assert_eq!((log.len(), log.total(), log.capacity()), (3, 4, 3));
        let seqs = |q: &DecisionQuery| log.recent(q).iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&DecisionQuery::default()), [4, 3, 2]);
        let a = DecisionQuery {
            node: Some("a".into()),
            ..DecisionQuery::default()
        };
        assert_eq!(seqs(&a), [3]);
        let hits = DecisionQuery {
            reason: Some(RoutingReason::CacheHit),
            limit: 1,
            ..DecisionQuery::default()
        };
        assert_eq!(seqs(&hits), [4]);

        let mut seen = Vec::new();
        assert_eq!(log.visit_since(2, |r| seen.push(r.seq)), 4);
        assert_eq!(seen, [3, 4]);
        // Records already dropped are skipped; nothing new: `after` back.
        seen.clear();
        assert_eq!(log.visit_since(0, |r| seen.push(r.seq)), 4);
        assert_eq!(seen, [2, 3, 4]);
        assert_eq!(log.visit_since(9, |_| panic!("nothing newer")), 9);
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let log = DecisionLog::new(0);
        assert!(!log.is_enabled());
        log.push(record("a", RoutingReason::CacheHit));
        assert!(log.is_empty());
        assert_eq!(log.total(), 0);
    }
}
