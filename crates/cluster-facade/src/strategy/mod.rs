//! Selection strategies: pure functions over one candidate list of a
//! snapshot, with time and randomness passed in.
//!
//! The health filter ([`filter`]) decides which list a request draws from
//! (healthy first, degraded only when no healthy node is usable, saturated
//! nodes only when nothing else is left, a half-open probe last); each
//! strategy then picks one node from that list.

pub(crate) mod cache_aware;
pub(crate) mod cache_score;
pub(crate) mod filter;
pub(crate) mod least_loaded;
pub(crate) mod p2c;
pub(crate) mod round_robin;
pub(crate) mod session;

use cluster_types::{CostTerms, NodeId, RoutingReason};

use crate::snapshot::{ClusterSnapshot, SnapNode, Tier};

/// One candidate list of a snapshot, with the per-request filters
/// (excluded nodes, saturation) applied lazily.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidates<'a> {
    pub(crate) snap: &'a ClusterSnapshot,
    pub(crate) ids: &'a [u32],
    pub(crate) tier: Tier,
    pub(crate) model: Option<&'a str>,
    pub(crate) excluded: &'a [NodeId],
    /// Encoded "now"; nodes saturated past it are skipped.
    pub(crate) now_enc: u64,
    pub(crate) check_saturation: bool,
}

impl<'a> Candidates<'a> {
    /// Raw list length (before lazy filters).
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Snapshot index of list position `k`.
    pub(crate) fn index(&self, k: usize) -> u32 {
        self.ids[k]
    }

    pub(crate) fn node(&self, k: usize) -> &'a SnapNode {
        self.snap.node(self.ids[k])
    }

    /// Whether the node at snapshot index `i` passes the lazy filters.
    pub(crate) fn allowed_index(&self, i: u32) -> bool {
        self.allowed_node(self.snap.node(i))
    }

    /// Whether `n` passes the lazy filters.
    #[inline]
    pub(crate) fn allowed_node(&self, n: &SnapNode) -> bool {
        !((!self.excluded.is_empty() && self.excluded.contains(&n.entry.spec.id))
            || (self.check_saturation && n.live.is_saturated(self.now_enc)))
    }

    /// Whether list position `k` passes the lazy filters.
    pub(crate) fn allowed(&self, k: usize) -> bool {
        self.allowed_index(self.ids[k])
    }

    /// Whether snapshot index `i` belongs to this list and passes the filters
    /// (used for nodes found through the cache index).
    pub(crate) fn admits(&self, i: u32) -> bool {
        let n = self.snap.node(i);
        Tier::of(&n.entry) == Some(self.tier)
            && self.model.is_none_or(|m| n.entry.serves(m))
            && self.allowed_index(i)
    }

    /// Allowed list positions.
    pub(crate) fn allowed_positions(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.ids.len()).filter(|&k| self.allowed(k))
    }
}

/// A strategy's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pick {
    /// Snapshot index.
    pub(crate) index: u32,
    pub(crate) reason: RoutingReason,
    pub(crate) confidence: f64,
    /// Blocks of the prompt believed cached on the node.
    pub(crate) cached_blocks: usize,
    /// Prompt tokens believed not cached on the node.
    pub(crate) uncached_tokens: u64,
    /// Prompt tokens the node is predicted to serve from its cache
    /// (cache-aware strategies; `None` for the others).
    pub(crate) predicted_cached: Option<u64>,
    /// The strategy's cost of the winner, seconds (cache-aware only).
    pub(crate) cost: Option<f64>,
    /// The winner's cost terms (cache-aware only).
    pub(crate) terms: Option<CostTerms>,
    /// The cheapest other evaluated node (cache-aware only).
    pub(crate) runner_up: Option<RunnerUpPick>,
    /// Nodes the strategy evaluated (0 = not reported).
    pub(crate) evaluated: u32,
}

/// The cheapest node a strategy evaluated but did not choose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RunnerUpPick {
    /// Snapshot index.
    pub(crate) index: u32,
    /// Its cost, seconds.
    pub(crate) cost: f64,
    /// Prompt tokens it was predicted to serve from its cache.
    pub(crate) predicted_cached: u64,
}

impl Pick {
    pub(crate) fn new(index: u32, reason: RoutingReason, confidence: f64) -> Self {
        Self {
            index,
            reason,
            confidence,
            cached_blocks: 0,
            uncached_tokens: 0,
            predicted_cached: None,
            cost: None,
            terms: None,
            runner_up: None,
            evaluated: 0,
        }
    }
}

/// `1 − best / other` (0 when equal or undefined): how clearly the winner
/// beat the runner-up.
pub(crate) fn margin(best: f64, other: f64) -> f64 {
    if other > 0.0 && best.is_finite() && other.is_finite() {
        (1.0 - best / other).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

pub(crate) use crate::live::as_f64;

#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::Arc;
    use std::time::Duration;

    use cluster_metrics::ManualClock;
    use cluster_types::{NodeSpec, NodeStatus};

    use super::*;
    use crate::live::{Epoch, NodeLive};
    use crate::snapshot::{NodeEntry, SnapNode};

    /// A snapshot of healthy nodes `n0..` with the given weights.
    pub(crate) fn snapshot(clock: &ManualClock, weights: &[u32]) -> ClusterSnapshot {
        let nodes = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let mut spec = NodeSpec::new(format!("n{i}"), format!("http://n{i}:1"));
                spec.weight = w;
                let live = Arc::new(NodeLive::new(
                    clock.shared(),
                    u32::try_from(i).unwrap(),
                    Duration::from_secs(30),
                    100,
                ));
                SnapNode::new(NodeEntry::new(spec, NodeStatus::Healthy), live)
            })
            .collect();
        ClusterSnapshot::build(1, nodes)
    }

    pub(crate) fn healthy<'a>(
        snap: &'a ClusterSnapshot,
        excluded: &'a [NodeId],
        epoch: Epoch,
        clock: &ManualClock,
    ) -> Candidates<'a> {
        Candidates {
            snap,
            ids: &snap.lists_for(None).healthy,
            tier: Tier::Healthy,
            model: None,
            excluded,
            now_enc: epoch.encode(cluster_metrics::Clock::now(clock)),
            check_saturation: true,
        }
    }
}
