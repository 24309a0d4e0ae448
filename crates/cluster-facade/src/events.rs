//! What a [`Cluster`](crate::Cluster) announces on its event stream.

use cluster_types::{ClusterStatus, NodeId, NodeStatus};
use serde::Serialize;

/// Something that happened to the cluster. Serialized as JSON with a `type`
/// field in snake case (`{"type": "node_status_changed", "node": "a", ...}`)
/// for status streams.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClusterEvent {
    /// Discovery found and validated a node.
    NodeDiscovered {
        /// The node.
        node: NodeId,
        /// Its base URL.
        url: String,
        /// Models it serves (empty when unknown).
        models: Vec<String>,
    },
    /// A node left discovery's set.
    NodeLost {
        /// The node.
        node: NodeId,
    },
    /// A node's weight, tags or API key changed.
    NodeUpdated {
        /// The node.
        node: NodeId,
    },
    /// Health changed a node's status.
    NodeStatusChanged {
        /// The node.
        node: NodeId,
        /// Status before.
        from: NodeStatus,
        /// Status after.
        to: NodeStatus,
    },
    /// A node answered 429/503 and is skipped for a while.
    NodeSaturated {
        /// The node.
        node: NodeId,
        /// How long it is skipped, milliseconds.
        retry_after_ms: u64,
    },
    /// The operator drained a node (no new requests).
    NodeDrained {
        /// The node.
        node: NodeId,
    },
    /// The operator undrained a node.
    NodeUndrained {
        /// The node.
        node: NodeId,
    },
    /// The aggregated cluster status changed.
    ClusterStatusChanged {
        /// Status before.
        from: ClusterStatus,
        /// Status after.
        to: ClusterStatus,
    },
    /// A discovery refresh failed (the last good node set is kept) or a new
    /// node failed validation.
    DiscoveryFailed {
        /// The error, as text.
        message: String,
    },
    /// Warm-up of a node with the configured system prompts finished.
    WarmupFinished {
        /// The node.
        node: NodeId,
        /// Prompts that were cached.
        warmed: usize,
        /// Prompts that failed after every retry.
        failed: usize,
    },
    /// The cache model of a node was corrected from the cache state the node
    /// reports itself.
    CacheSynced {
        /// The node.
        node: NodeId,
        /// Prompt-cache entries the node reported.
        entries: usize,
    },
    /// `shutdown` was called.
    ShuttingDown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_a_type_tag() {
        let e = ClusterEvent::NodeStatusChanged {
            node: "a".into(),
            from: NodeStatus::Healthy,
            to: NodeStatus::Degraded,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"node_status_changed","node":"a","from":"healthy","to":"degraded"}"#
        );
        assert_eq!(
            serde_json::to_string(&ClusterEvent::ShuttingDown).unwrap(),
            r#"{"type":"shutting_down"}"#
        );
    }
}
