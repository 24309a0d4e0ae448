//! The global `node_tls` settings applied to every discovered node: a
//! [`DiscoverySource`] wrapper that fills each node's `tls` from the global
//! one (the node's own fields win), so validation, health probes, cache
//! sync and the gateway's proxy all read one place — the node's spec.

use std::sync::Arc;

use async_trait::async_trait;
use cluster_discovery::{DiscoveryError, DiscoverySnapshot, DiscoverySource, SnapshotStream};
use cluster_types::NodeTls;
use futures::StreamExt;

/// `inner`, with `global` under every node's TLS settings.
pub(crate) struct WithNodeTls {
    inner: Arc<dyn DiscoverySource>,
    global: NodeTls,
}

impl WithNodeTls {
    /// Wraps `inner` when `global` sets anything; returns it as is otherwise.
    pub(crate) fn wrap(
        inner: Arc<dyn DiscoverySource>,
        global: &NodeTls,
    ) -> Arc<dyn DiscoverySource> {
        if global.is_default() {
            return inner;
        }
        Arc::new(Self {
            inner,
            global: global.clone(),
        })
    }
}

fn apply(global: &NodeTls, mut snapshot: DiscoverySnapshot) -> DiscoverySnapshot {
    for node in &mut snapshot.nodes {
        node.spec.tls = node.spec.tls.over(global);
    }
    snapshot
}

#[async_trait]
impl DiscoverySource for WithNodeTls {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        Ok(apply(&self.global, self.inner.discover().await?))
    }

    fn watch(&self) -> Option<SnapshotStream> {
        let global = self.global.clone();
        self.inner
            .watch()
            .map(|stream| stream.map(move |s| s.map(|s| apply(&global, s))).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_discovery::StaticSource;
    use cluster_types::NodeSpec;

    #[tokio::test]
    async fn global_settings_fill_what_a_node_leaves_unset() {
        let mut own = NodeSpec::new("own", "https://127.0.0.1:1");
        own.tls.ca_file = Some("/own.pem".into());
        let plain = NodeSpec::new("plain", "https://127.0.0.1:2");
        let global = NodeTls {
            ca_file: Some("/lab.pem".into()),
            insecure_skip_verify: false,
        };
        let source = WithNodeTls::wrap(Arc::new(StaticSource::new(vec![own, plain])), &global);
        let snap = source.discover().await.unwrap();
        assert_eq!(
            snap.nodes[0].spec.tls.ca_file.as_deref(),
            Some("/own.pem".as_ref())
        );
        assert_eq!(
            snap.nodes[1].spec.tls.ca_file.as_deref(),
            Some("/lab.pem".as_ref())
        );
        assert_eq!(source.name(), "static");
    }
}
