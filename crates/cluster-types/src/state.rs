//! Cluster-wide snapshots: aggregated metrics and the published state.

use serde::{Deserialize, Serialize};

use crate::node::{ClusterStatus, Node, NodeStatus};

/// Metrics aggregated over all nodes (the seeds' `ClusterMetrics`).
/// Built by `cluster_metrics::aggregate_cluster_metrics`.
///
/// Defaults: every count 0, `cache_hit_ratio` 0.0, latencies none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ClusterMetrics {
    /// Nodes known. Default 0.
    pub total_nodes: u32,
    /// Nodes initializing. Default 0.
    pub initializing_nodes: u32,
    /// Nodes healthy. Default 0.
    pub healthy_nodes: u32,
    /// Nodes degraded. Default 0.
    pub degraded_nodes: u32,
    /// Nodes unhealthy. Default 0.
    pub unhealthy_nodes: u32,
    /// Nodes offline. Default 0.
    pub offline_nodes: u32,
    /// Requests in flight over all nodes. Default 0.
    pub in_flight: u64,
    /// Requests sent. Default 0.
    pub requests_total: u64,
    /// Requests that succeeded. Default 0.
    pub successes_total: u64,
    /// Requests that failed. Default 0.
    pub failures_total: u64,
    /// Requests cancelled by the client. Default 0.
    pub cancelled_total: u64,
    /// Prompt tokens. Default 0.
    pub prompt_tokens_total: u64,
    /// Prompt tokens served from node caches. Default 0.
    pub cached_tokens_total: u64,
    /// Completion tokens. Default 0.
    pub completion_tokens_total: u64,
    /// `cached_tokens_total / prompt_tokens_total`, 0.0–1.0. Default 0.0.
    pub cache_hit_ratio: f64,
    /// Request-weighted mean of the nodes' smoothed latencies, milliseconds.
    /// Default none.
    pub avg_latency_ms: Option<f64>,
    /// Request-weighted mean time to first token, milliseconds. Default none.
    pub avg_ttft_ms: Option<f64>,
}

impl ClusterMetrics {
    /// Fills the per-status node counts from `statuses` (other fields
    /// unchanged).
    pub fn count_statuses(&mut self, statuses: impl IntoIterator<Item = NodeStatus>) {
        self.total_nodes = 0;
        self.initializing_nodes = 0;
        self.healthy_nodes = 0;
        self.degraded_nodes = 0;
        self.unhealthy_nodes = 0;
        self.offline_nodes = 0;
        for s in statuses {
            self.total_nodes += 1;
            *match s {
                NodeStatus::Initializing => &mut self.initializing_nodes,
                NodeStatus::Healthy => &mut self.healthy_nodes,
                NodeStatus::Degraded => &mut self.degraded_nodes,
                NodeStatus::Unhealthy => &mut self.unhealthy_nodes,
                NodeStatus::Offline => &mut self.offline_nodes,
            } += 1;
        }
    }

    /// Healthy + degraded nodes.
    #[must_use]
    pub fn routable_nodes(&self) -> u32 {
        self.healthy_nodes + self.degraded_nodes
    }
}

/// A point-in-time snapshot of the whole cluster (the seeds'
/// `ClusterState`), as served by the status API.
///
/// Default: status `starting`, no nodes, default metrics, timestamp 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    /// Aggregated status ([`ClusterStatus::aggregate`] of the nodes).
    pub status: ClusterStatus,
    /// Every known node, ordered by id.
    pub nodes: Vec<Node>,
    /// Aggregated metrics.
    pub metrics: ClusterMetrics,
    /// When the snapshot was taken, unix milliseconds.
    pub timestamp_unix_ms: u64,
}

impl ClusterState {
    /// Builds a snapshot from nodes: sorts them by id, aggregates the status
    /// and fills the node counts of `metrics`.
    #[must_use]
    pub fn new(mut nodes: Vec<Node>, mut metrics: ClusterMetrics, timestamp_unix_ms: u64) -> Self {
        nodes.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        let status = ClusterStatus::aggregate(nodes.iter().map(|n| n.status));
        metrics.count_statuses(nodes.iter().map(|n| n.status));
        Self {
            status,
            nodes,
            metrics,
            timestamp_unix_ms,
        }
    }

    /// The node with `id`, if present.
    #[must_use]
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.spec.id.as_str() == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeSpec;

    #[test]
    fn state_new_sorts_and_counts() {
        let mut b = Node::new(NodeSpec::new("b", "http://b:1"));
        b.status = NodeStatus::Healthy;
        let mut a = Node::new(NodeSpec::new("a", "http://a:1"));
        a.status = NodeStatus::Offline;
        let s = ClusterState::new(vec![b, a], ClusterMetrics::default(), 42);
        assert_eq!(s.nodes[0].id().as_str(), "a");
        assert_eq!(s.status, ClusterStatus::Degraded);
        assert_eq!(s.metrics.total_nodes, 2);
        assert_eq!(s.metrics.offline_nodes, 1);
        assert_eq!(s.metrics.routable_nodes(), 1);
        assert!(s.node("b").is_some());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["timestamp_unix_ms"], 42);
        let back: ClusterState = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }
}
