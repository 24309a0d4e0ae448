//! From cluster-types' [`DiscoveryConfig`] to a running source.

use std::sync::Arc;

use cluster_types::DiscoveryConfig;

use crate::{
    ClusterDiscovery, ClusterDiscoveryBuilder, DiscoveryError, DiscoveryOptions, DiscoverySource,
    StaticSource,
};

/// The [`DiscoveryOptions`] a configuration asks for: its validation
/// timeout, and for static discovery its refresh interval (DNS follows the
/// records' TTLs; Kubernetes is pushed, and its periodic pass only retries
/// failed validations, every 30 s by default).
#[must_use]
pub fn options_from_config(config: &DiscoveryConfig) -> DiscoveryOptions {
    let mut options = DiscoveryOptions {
        validation_timeout: config.validation_timeout(),
        ..DiscoveryOptions::default()
    };
    if let DiscoveryConfig::Static(s) = config {
        options.refresh_interval = s.refresh_interval;
    }
    options
}

/// Builds the source a configuration describes.
///
/// - `static`: a [`StaticSource`] of the configured nodes;
/// - `dns` (feature `dns`): a [`DnsSource`](crate::DnsSource);
/// - `kubernetes` (feature `k8s`): a
///   [`KubernetesSource`](crate::KubernetesSource) with the in-cluster or
///   kubeconfig client;
/// - `mdns` (feature `mdns`): an [`MdnsSource`](crate::MdnsSource)
///   browsing the configured service types (must run inside a tokio
///   runtime).
///
/// # Errors
/// [`DiscoveryError::BackendNotCompiled`] when the mode's feature is off;
/// the backend's own construction errors otherwise.
pub async fn source_from_config(
    config: &DiscoveryConfig,
) -> Result<Arc<dyn DiscoverySource>, DiscoveryError> {
    match config {
        DiscoveryConfig::Static(s) => Ok(Arc::new(StaticSource::new(s.nodes.clone()))),
        DiscoveryConfig::Dns(d) => dns_source(d),
        DiscoveryConfig::Kubernetes(k) => kubernetes_source(k).await,
        DiscoveryConfig::Mdns(m) => mdns_source(m),
    }
}

#[cfg(feature = "mdns")]
fn mdns_source(
    m: &cluster_types::MdnsDiscovery,
) -> Result<Arc<dyn DiscoverySource>, DiscoveryError> {
    let config = crate::MdnsSourceConfig::from_discovery(m);
    Ok(Arc::new(crate::MdnsSource::new(config)?))
}

#[cfg(not(feature = "mdns"))]
fn mdns_source(
    _: &cluster_types::MdnsDiscovery,
) -> Result<Arc<dyn DiscoverySource>, DiscoveryError> {
    Err(DiscoveryError::BackendNotCompiled {
        backend: "mdns",
        feature: "mdns",
    })
}

#[cfg(feature = "dns")]
fn dns_source(d: &cluster_types::DnsDiscovery) -> Result<Arc<dyn DiscoverySource>, DiscoveryError> {
    let mut config = crate::DnsSourceConfig::new(d.srv_name.clone());
    config.nameservers.extend(d.nameserver);
    config.port_override = d.port_override;
    config.scheme = d.scheme;
    config.min_refresh = d.min_refresh;
    config.max_refresh = d.max_refresh;
    Ok(Arc::new(crate::DnsSource::new(config)?))
}

#[cfg(not(feature = "dns"))]
fn dns_source(_: &cluster_types::DnsDiscovery) -> Result<Arc<dyn DiscoverySource>, DiscoveryError> {
    Err(DiscoveryError::BackendNotCompiled {
        backend: "dns",
        feature: "dns",
    })
}

#[cfg(feature = "k8s")]
async fn kubernetes_source(
    k: &cluster_types::KubernetesDiscovery,
) -> Result<Arc<dyn DiscoverySource>, DiscoveryError> {
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    let config = crate::KubernetesSourceConfig {
        namespace: Some(k.namespace.clone()).filter(|n| !n.is_empty()),
        service_name: non_empty(&k.service_name),
        label_selector: non_empty(&k.label_selector),
        port_name: Some(k.port_name.clone()).filter(|p| !p.is_empty()),
        scheme: k.scheme,
        api_url: None,
    };
    Ok(Arc::new(crate::KubernetesSource::new(config).await?))
}

#[cfg(not(feature = "k8s"))]
async fn kubernetes_source(
    _: &cluster_types::KubernetesDiscovery,
) -> Result<Arc<dyn DiscoverySource>, DiscoveryError> {
    Err(DiscoveryError::BackendNotCompiled {
        backend: "kubernetes",
        feature: "k8s",
    })
}

impl ClusterDiscovery {
    /// A builder for the discovery a configuration describes: its source
    /// ([`source_from_config`]), its options ([`options_from_config`]) and
    /// the HTTP validator. Add callbacks, then
    /// [`build`](ClusterDiscoveryBuilder::build) and
    /// [`start`](ClusterDiscovery::start).
    ///
    /// # Errors
    /// As [`source_from_config`].
    pub async fn from_config(
        config: &DiscoveryConfig,
    ) -> Result<ClusterDiscoveryBuilder, DiscoveryError> {
        let source = source_from_config(config).await?;
        Ok(Self::builder(source).options(options_from_config(config)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cluster_types::{DnsDiscovery, KubernetesDiscovery, NodeSpec, StaticDiscovery};

    use super::*;

    #[tokio::test]
    async fn static_config_builds_a_static_source() {
        let config = DiscoveryConfig::Static(StaticDiscovery {
            nodes: vec![NodeSpec::new("a", "http://127.0.0.1:1")],
            refresh_interval: Duration::from_secs(7),
            validation_timeout: Duration::from_secs(3),
        });
        let options = options_from_config(&config);
        assert_eq!(options.refresh_interval, Duration::from_secs(7));
        assert_eq!(options.validation_timeout, Duration::from_secs(3));
        let source = source_from_config(&config).await.unwrap();
        assert_eq!(source.name(), "static");
        assert_eq!(source.discover().await.unwrap().nodes.len(), 1);
        let discovery = ClusterDiscovery::from_config(&config)
            .await
            .unwrap()
            .build();
        assert_eq!(discovery.options().refresh_interval, Duration::from_secs(7));
        assert!(!discovery.is_running());
    }

    #[tokio::test]
    async fn dns_config() {
        let config = DiscoveryConfig::Dns(DnsDiscovery {
            srv_name: "_mlx._tcp.cluster.test".into(),
            nameserver: Some("127.0.0.1:5353".parse().unwrap()),
            ..DnsDiscovery::default()
        });
        let result = source_from_config(&config).await;
        if cfg!(feature = "dns") {
            assert_eq!(result.unwrap().name(), "dns:_mlx._tcp.cluster.test.");
        } else {
            let err = result.err().unwrap();
            assert_eq!(err.code(), "backend_not_compiled");
            assert!(err.to_string().contains("`dns`"));
        }
    }

    #[tokio::test]
    async fn mdns_config_without_mdns_feature() {
        if cfg!(feature = "mdns") {
            return;
        }
        let config = DiscoveryConfig::Mdns(cluster_types::MdnsDiscovery::default());
        let err = source_from_config(&config).await.err().unwrap();
        assert_eq!(err.code(), "backend_not_compiled");
        assert!(err.to_string().contains("`mdns`"));
    }

    #[tokio::test]
    async fn kubernetes_config_without_k8s_feature() {
        if cfg!(feature = "k8s") {
            return;
        }
        let config = DiscoveryConfig::Kubernetes(KubernetesDiscovery::default());
        let err = source_from_config(&config).await.err().unwrap();
        assert_eq!(err.code(), "backend_not_compiled");
        assert!(err.to_string().contains("`k8s`"));
    }
}
