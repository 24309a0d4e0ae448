//! [`LayeredSource`]: the configured discovery source (swappable on config
//! reload) plus the static nodes added at run time through the admin API.
//!
//! Runtime nodes are kept in memory only — a restart forgets them — and are
//! listed after the configured source's nodes, so a runtime node whose id
//! or URL a discovered node already has is dropped by discovery's dedupe.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use cluster_discovery::{
    DiscoveredNode, DiscoveryError, DiscoverySnapshot, DiscoverySource, NodeOrigin, SnapshotStream,
};
use cluster_types::{NodeId, NodeSpec};
use futures::StreamExt;
use parking_lot::Mutex;

/// Origin name of nodes added through the admin API.
pub const RUNTIME_ORIGIN: &str = "runtime";
/// Tag on nodes added through the admin API (value `"admin"`): shown in
/// status so an operator sees which nodes a restart will forget.
pub const TAG_RUNTIME: &str = "mlx-cluster.runtime";

pub(crate) struct LayeredSource {
    base: ArcSwap<Arc<dyn DiscoverySource>>,
    runtime: Arc<Mutex<Vec<NodeSpec>>>,
}

impl LayeredSource {
    pub(crate) fn new(base: Arc<dyn DiscoverySource>) -> Self {
        Self {
            base: ArcSwap::from_pointee(base),
            runtime: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Replaces the configured source (the discovery loop must be restarted
    /// to follow a new source's watch stream).
    pub(crate) fn set_base(&self, base: Arc<dyn DiscoverySource>) {
        self.base.store(Arc::new(base));
    }

    /// Adds a runtime node; false when one with that id exists.
    pub(crate) fn add(&self, mut spec: NodeSpec) -> bool {
        let mut nodes = self.runtime.lock();
        if nodes.iter().any(|n| n.id == spec.id) {
            return false;
        }
        spec.tags.insert(TAG_RUNTIME.to_owned(), "admin".to_owned());
        nodes.push(spec);
        true
    }

    /// Removes a runtime node; false when there is none with that id.
    pub(crate) fn remove(&self, id: &NodeId) -> bool {
        let mut nodes = self.runtime.lock();
        let before = nodes.len();
        nodes.retain(|n| &n.id != id);
        nodes.len() != before
    }

    pub(crate) fn runtime_nodes(&self) -> Vec<NodeSpec> {
        self.runtime.lock().clone()
    }
}

fn with_runtime(
    mut snapshot: DiscoverySnapshot,
    runtime: &Mutex<Vec<NodeSpec>>,
) -> DiscoverySnapshot {
    snapshot.nodes.extend(
        runtime
            .lock()
            .iter()
            .cloned()
            .map(|spec| DiscoveredNode::new(spec, NodeOrigin::Other(RUNTIME_ORIGIN.to_owned()))),
    );
    snapshot
}

#[async_trait]
impl DiscoverySource for LayeredSource {
    fn name(&self) -> String {
        self.base.load().name()
    }

    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        let base = Arc::clone(&**self.base.load());
        let snapshot = base.discover().await?;
        Ok(with_runtime(snapshot, &self.runtime))
    }

    fn watch(&self) -> Option<SnapshotStream> {
        let runtime = Arc::clone(&self.runtime);
        self.base.load().watch().map(|stream| {
            stream
                .map(move |item| item.map(|snapshot| with_runtime(snapshot, &runtime)))
                .boxed()
        })
    }
}

#[cfg(test)]
mod tests {
    use cluster_discovery::StaticSource;

    use super::*;

    #[tokio::test]
    async fn runtime_nodes_follow_the_configured_ones() {
        let layered = LayeredSource::new(Arc::new(StaticSource::new(vec![NodeSpec::new(
            "a",
            "http://127.0.0.1:1",
        )])));
        assert!(layered.add(NodeSpec::new("r", "http://127.0.0.1:9")));
        assert!(!layered.add(NodeSpec::new("r", "http://127.0.0.1:8")));
        let snap = layered.discover().await.unwrap();
        let ids: Vec<_> = snap.nodes.iter().map(|n| n.id().to_string()).collect();
        assert_eq!(ids, ["a", "r"]);
        assert_eq!(snap.nodes[1].spec.tags[TAG_RUNTIME], "admin");
        assert_eq!(snap.nodes[1].origin.backend(), "other");

        layered.set_base(Arc::new(StaticSource::new(vec![NodeSpec::new(
            "b",
            "http://127.0.0.1:2",
        )])));
        let ids: Vec<_> = layered
            .discover()
            .await
            .unwrap()
            .nodes
            .iter()
            .map(|n| n.id().to_string())
            .collect();
        assert_eq!(ids, ["b", "r"]);
        assert!(layered.remove(&NodeId::from("r")));
        assert!(!layered.remove(&NodeId::from("r")));
        assert_eq!(layered.discover().await.unwrap().nodes.len(), 1);
        assert!(layered.watch().is_none());
    }
}
