//! The [`DiscoverySource`] trait and the static source.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use cluster_types::NodeSpec;
use futures::stream::BoxStream;

use crate::{DiscoveredNode, DiscoveryError, DiscoverySnapshot, NodeOrigin};

/// A stream of full snapshots pushed by a source that can watch (Kubernetes).
/// An `Err` item reports a failure; the stream goes on after it (the source
/// applies its own backoff).
pub type SnapshotStream = BoxStream<'static, Result<DiscoverySnapshot, DiscoveryError>>;

/// Something that knows which nodes exist: a static list, a DNS SRV name, a
/// Kubernetes Service.
///
/// [`discover`](Self::discover) returns the whole current set each time
/// (reset style, as pingora's `ServiceDiscovery` does): the caller diffs
/// snapshots, so a source never has to compute deltas. A source that can
/// push changes also returns a stream from [`watch`](Self::watch).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait DiscoverySource: Send + Sync {
    /// Short name for logs and errors, e.g. `static`,
    /// `dns:_mlx._tcp.cluster.example.`, `kubernetes:inference/mlx`.
    fn name(&self) -> String;

    /// Every node the source knows now.
    ///
    /// # Errors
    /// Whatever kept the source from answering (DNS timeout, NXDOMAIN, API
    /// server down). The caller keeps its last good snapshot.
    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError>;

    /// A stream of snapshots pushed as the source changes, for sources that
    /// can watch. Called once per start of the refresh loop. Default: `None`
    /// (the caller polls [`discover`](Self::discover)).
    fn watch(&self) -> Option<SnapshotStream> {
        None
    }
}

/// Nodes listed in the configuration (the `static` discovery mode).
///
/// Every node gets origin [`NodeOrigin::Static`]; URLs are normalized (see
/// [`normalize_base_url`](crate::normalize_base_url)) when the snapshot is
/// taken, and a node with an unusable URL fails the whole snapshot (a typo in
/// the config should be loud, not silently drop a node). The list can be
/// replaced at run time with [`set_nodes`](Self::set_nodes) (config reload,
/// tests).
#[derive(Debug, Default)]
pub struct StaticSource {
    nodes: Mutex<Vec<NodeSpec>>,
}

impl StaticSource {
    /// A source that always answers `nodes`.
    #[must_use]
    pub fn new(nodes: Vec<NodeSpec>) -> Self {
        Self {
            nodes: Mutex::new(nodes),
        }
    }

    /// Replaces the list; the next refresh sees the new one.
    pub fn set_nodes(&self, nodes: Vec<NodeSpec>) {
        *self.nodes.lock().unwrap_or_else(PoisonError::into_inner) = nodes;
    }

    /// The list as configured.
    #[must_use]
    pub fn nodes(&self) -> Vec<NodeSpec> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl DiscoverySource for StaticSource {
    fn name(&self) -> String {
        "static".to_owned()
    }

    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        let nodes = self
            .nodes()
            .into_iter()
            .map(|mut spec| {
                spec.url = crate::normalize_base_url(&spec.id, &spec.url)?;
                Ok(DiscoveredNode::new(spec, NodeOrigin::Static))
            })
            .collect::<Result<Vec<_>, DiscoveryError>>()?;
        Ok(DiscoverySnapshot::new(nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_source_answers_its_list_normalized() {
        let source = StaticSource::new(vec![
            NodeSpec::new("a", "http://127.0.0.1:1/v1/"),
            NodeSpec::new("b", "http://127.0.0.1:2"),
        ]);
        assert_eq!(source.name(), "static");
        assert!(source.watch().is_none());
        let snapshot = source.discover().await.unwrap();
        let urls: Vec<_> = snapshot.nodes.iter().map(DiscoveredNode::url).collect();
        assert_eq!(urls, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert!(
            snapshot
                .nodes
                .iter()
                .all(|n| n.origin == NodeOrigin::Static)
        );
        assert_eq!(snapshot.valid_for, None);

        source.set_nodes(vec![NodeSpec::new("c", "http://127.0.0.1:3")]);
        let snapshot = source.discover().await.unwrap();
        assert_eq!(snapshot.nodes.len(), 1);
        assert_eq!(snapshot.nodes[0].id().as_str(), "c");
    }

    #[tokio::test]
    async fn static_source_refuses_a_bad_url() {
        let source = StaticSource::new(vec![NodeSpec::new("a", "127.0.0.1:1")]);
        let err = source.discover().await.unwrap_err();
        assert_eq!(err.code(), "invalid_node_url");
        assert_eq!(err.node().map(|n| n.as_str()), Some("a"));
    }
}
