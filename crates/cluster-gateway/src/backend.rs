//! What the gateway needs from the cluster, as a trait.
//!
//! [`ClusterHandle`] is implemented by `cluster_facade::Cluster` (discovery,
//! health, routing, cache coordination: what `serve` runs) and by
//! `cluster_facade::Router` alone (a fixed node set whose statuses the
//! caller publishes: tests that must control node states exactly, and
//! benchmarks of the proxy path).

use cluster_facade::{Cluster, DecisionLog, FacadeError, Router, Selection};
use cluster_types::{ClusterState, Node, NodeId, RoutingContext};
use futures::future::BoxFuture;

/// The cluster operations the gateway uses.
pub trait ClusterHandle: Send + Sync + 'static {
    /// Chooses a node for a request (see `cluster_facade::Router::select`).
    fn select(&self, ctx: &RoutingContext) -> Result<Selection, FacadeError>;
    /// The cluster state served by `/v1/cluster/status`.
    fn status(&self) -> ClusterState;
    /// Union of the nodes' models, deduplicated and sorted.
    fn models(&self) -> Vec<String>;
    /// Whether at least one node is routable.
    fn is_ready(&self) -> bool;
    /// The cluster's metrics in the Prometheus text format.
    fn encode_prometheus(&self) -> String;
    /// Takes a node out of rotation.
    fn drain(&self, node: &NodeId) -> Result<(), FacadeError>;
    /// Returns a drained node to rotation.
    fn undrain(&self, node: &NodeId) -> Result<(), FacadeError>;
    /// Runs discovery now.
    fn refresh_discovery(&self) -> BoxFuture<'_, Result<(), FacadeError>>;
    /// The TLS settings of a node (for `https://` nodes), from its spec.
    fn node_tls(&self, node: &NodeId) -> Option<cluster_types::NodeTls>;
    /// The records of the most recent routed requests.
    fn decisions(&self) -> &DecisionLog;
}

fn set_drained(router: &Router, node: &NodeId, drained: bool) -> Result<(), FacadeError> {
    if router.snapshot().entry(node).is_none() {
        return Err(FacadeError::UnknownNode { node: node.clone() });
    }
    router.update(|entries| {
        for e in entries.iter_mut().filter(|e| e.id() == node) {
            e.drained = drained;
        }
    });
    Ok(())
}

/// A bare router: its published entries are the cluster; no discovery, no
/// health checks, no Prometheus exposition of its own.
impl ClusterHandle for Router {
    fn select(&self, ctx: &RoutingContext) -> Result<Selection, FacadeError> {
        Router::select(self, ctx)
    }

    fn node_tls(&self, node: &NodeId) -> Option<cluster_types::NodeTls> {
        self.snapshot().entry(node).map(|e| e.spec.tls.clone())
    }

    fn status(&self) -> ClusterState {
        let snapshot = self.snapshot();
        let nodes: Vec<Node> = snapshot
            .entries()
            .map(|entry| {
                let mut node = Node::new(entry.spec.clone());
                node.status = entry.status;
                node.models = entry.models.clone();
                node.metrics = self.node_metrics(entry.id()).unwrap_or_default();
                node.cache = self.cache_state(entry.id()).unwrap_or_default();
                node
            })
            .collect();
        let metrics = self.cluster_metrics();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ClusterState::new(nodes, metrics, now)
    }

    fn models(&self) -> Vec<String> {
        self.snapshot().models()
    }

    fn is_ready(&self) -> bool {
        self.snapshot().has_routable()
    }

    fn encode_prometheus(&self) -> String {
        String::new()
    }

    fn drain(&self, node: &NodeId) -> Result<(), FacadeError> {
        set_drained(self, node, true)
    }

    fn undrain(&self, node: &NodeId) -> Result<(), FacadeError> {
        set_drained(self, node, false)
    }

    fn refresh_discovery(&self) -> BoxFuture<'_, Result<(), FacadeError>> {
        Box::pin(async { Ok(()) })
    }

    fn decisions(&self) -> &DecisionLog {
        Router::decisions(self)
    }
}

/// The real cluster: discovery, health, routing and cache coordination.
impl ClusterHandle for Cluster {
    fn select(&self, ctx: &RoutingContext) -> Result<Selection, FacadeError> {
        Cluster::select(self, ctx)
    }

    fn node_tls(&self, node: &NodeId) -> Option<cluster_types::NodeTls> {
        self.router()
            .snapshot()
            .entry(node)
            .map(|e| e.spec.tls.clone())
    }

    fn status(&self) -> ClusterState {
        Cluster::status(self)
    }

    fn models(&self) -> Vec<String> {
        Cluster::models(self)
    }

    fn is_ready(&self) -> bool {
        Cluster::is_ready(self)
    }

    fn encode_prometheus(&self) -> String {
        Cluster::encode_prometheus(self)
    }

    fn drain(&self, node: &NodeId) -> Result<(), FacadeError> {
        Cluster::drain(self, node)
    }

    fn undrain(&self, node: &NodeId) -> Result<(), FacadeError> {
        Cluster::undrain(self, node)
    }

    fn refresh_discovery(&self) -> BoxFuture<'_, Result<(), FacadeError>> {
        Box::pin(Cluster::refresh_discovery(self))
    }

    fn decisions(&self) -> &DecisionLog {
        self.router().decisions()
    }
}
