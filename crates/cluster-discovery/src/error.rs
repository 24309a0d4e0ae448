//! [`DiscoveryError`]: everything that can go wrong while finding nodes.

use std::time::Duration;

use cluster_types::NodeId;

/// A boxed error from a library below (hickory, kube, cluster-health).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the discovery layer, with the context needed to act on them:
/// which source, which node, which URL, which server answer.
///
/// The enum is the same whatever features are enabled: errors of optional
/// backends (hickory, kube) are kept as boxed `#[source]`s.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// [`ClusterDiscovery::start`](crate::ClusterDiscovery::start) was called
    /// while the refresh loop was already running.
    #[error("discovery is already running")]
    AlreadyRunning,

    /// The discovery configuration cannot work (empty service name, bad
    /// nameserver address, ...).
    #[error("invalid discovery configuration at `{path}`: {message}")]
    InvalidConfig {
        /// Dotted path of the offending field, e.g. `discovery.service`.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// The configuration asks for a backend this build does not contain.
    #[error(
        "{backend} discovery is not compiled in: enable the `{feature}` feature of cluster-discovery"
    )]
    BackendNotCompiled {
        /// `dns`, `kubernetes` or `mdns`.
        backend: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
    },

    /// A discovered node's URL is not an `http://` or `https://` base URL.
    #[error("node {node} has an unusable URL {url:?}: {reason}")]
    InvalidNodeUrl {
        /// The node.
        node: NodeId,
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A newly seen node did not answer `GET /v1/models` as an
    /// OpenAI-compatible server; it is not announced (it is tried again at
    /// the next refresh).
    #[error("node {node} at {url} failed validation: {reason}")]
    Validation {
        /// The node.
        node: NodeId,
        /// Its base URL.
        url: String,
        /// What went wrong, in a few words.
        reason: String,
        /// HTTP status of the answer, when there was one.
        status: Option<u16>,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// Validation of a newly seen node took longer than its timeout.
    #[error("node {node} at {url} did not answer validation within {timeout:?}")]
    ValidationTimeout {
        /// The node.
        node: NodeId,
        /// Its base URL.
        url: String,
        /// The validation timeout in force.
        timeout: Duration,
    },

    /// The DNS name does not exist (`NXDOMAIN`).
    #[error("DNS name {name} does not exist ({code})")]
    DnsNameNotFound {
        /// The queried name.
        name: String,
        /// The response code, `NXDOMAIN`.
        code: String,
    },

    /// The DNS name exists but has no records of the queried type (or only
    /// SRV records whose target is `.`, "service decidedly not available").
    #[error("DNS name {name} has no usable {record_type} records ({code})")]
    DnsNoRecords {
        /// The queried name.
        name: String,
        /// `SRV`, `A` or `AAAA`.
        record_type: &'static str,
        /// The response code (`NOERROR` for an empty answer).
        code: String,
    },

    /// A DNS query failed: timeout, refused connection, server failure.
    #[error("DNS {record_type} lookup of {name} failed: {source}")]
    DnsLookup {
        /// The queried name.
        name: String,
        /// `SRV`, `A` or `AAAA`.
        record_type: &'static str,
        /// hickory's error.
        #[source]
        source: BoxError,
    },

    /// The DNS resolver could not be built (bad system configuration).
    #[error("cannot build the DNS resolver: {source}")]
    DnsResolver {
        /// hickory's error.
        #[source]
        source: BoxError,
    },

    /// No Kubernetes client could be configured (no kubeconfig, not in a
    /// cluster, bad API URL).
    #[error("cannot configure the Kubernetes client: {source}")]
    KubernetesClient {
        /// kube's error.
        #[source]
        source: BoxError,
    },

    /// Listing or watching EndpointSlices failed.
    #[error(
        "Kubernetes {operation} of EndpointSlices in namespace {namespace} ({selector}) failed: {source}"
    )]
    Kubernetes {
        /// `list` or `watch`.
        operation: &'static str,
        /// The namespace watched.
        namespace: String,
        /// The label selector used.
        selector: String,
        /// HTTP or Status code from the API server, when there is one
        /// (e.g. 403 for missing RBAC, 410 for an expired resourceVersion).
        code: Option<u16>,
        /// kube's error.
        #[source]
        source: BoxError,
    },

    /// The mDNS daemon could not start, a browse of a service type ended, or
    /// an announcement could not be made or withdrawn. A browsing source
    /// keeps its last snapshot and restarts the browse with backoff.
    #[error("mDNS {operation} of {service_type} failed: {message}")]
    Mdns {
        /// `daemon`, `browse`, `register` or `unregister`.
        operation: &'static str,
        /// The service type (or instance) concerned.
        service_type: String,
        /// mdns-sd's error, in words (its errors are plain messages).
        message: String,
    },

    /// A discovery source outside this crate failed.
    #[error("discovery source {source_name} failed: {message}")]
    Source {
        /// The source's [`name`](crate::DiscoverySource::name).
        source_name: String,
        /// What went wrong.
        message: String,
    },
}

impl DiscoveryError {
    /// A stable short code for logs and metrics labels, e.g.
    /// `"dns_nxdomain"`, `"validation_timeout"`, `"kubernetes_watch"`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRunning => "already_running",
            Self::InvalidConfig { .. } => "invalid_config",
            Self::BackendNotCompiled { .. } => "backend_not_compiled",
            Self::InvalidNodeUrl { .. } => "invalid_node_url",
            Self::Validation { .. } => "validation_failed",
            Self::ValidationTimeout { .. } => "validation_timeout",
            Self::DnsNameNotFound { .. } => "dns_nxdomain",
            Self::DnsNoRecords { .. } => "dns_no_records",
            Self::DnsLookup { .. } => "dns_lookup",
            Self::DnsResolver { .. } => "dns_resolver",
            Self::KubernetesClient { .. } => "kubernetes_client",
            Self::Kubernetes { operation, .. } => {
                if *operation == "list" {
                    "kubernetes_list"
                } else {
                    "kubernetes_watch"
                }
            }
            Self::Mdns { .. } => "mdns",
            Self::Source { .. } => "source",
        }
    }

    /// The node the error is about, if it is about one node.
    #[must_use]
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            Self::InvalidNodeUrl { node, .. }
            | Self::Validation { node, .. }
            | Self::ValidationTimeout { node, .. } => Some(node),
            _ => None,
        }
    }

    /// The URL of the node the error is about, if it is about one node.
    #[must_use]
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::InvalidNodeUrl { url, .. }
            | Self::Validation { url, .. }
            | Self::ValidationTimeout { url, .. } => Some(url),
            _ => None,
        }
    }

    /// Whether the error concerns one node only (validation, bad URL) rather
    /// than the whole source. Node errors never touch other nodes; source
    /// errors keep the last good snapshot.
    #[must_use]
    pub fn is_node_error(&self) -> bool {
        self.node().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_nodes() {
        let e = DiscoveryError::ValidationTimeout {
            node: NodeId::from("a"),
            url: "http://127.0.0.1:1".into(),
            timeout: Duration::from_secs(2),
        };
        assert_eq!(e.code(), "validation_timeout");
        assert_eq!(e.node().map(NodeId::as_str), Some("a"));
        assert!(e.is_node_error());
        assert!(e.to_string().contains("http://127.0.0.1:1"));

        let e = DiscoveryError::DnsNameNotFound {
            name: "_mlx._tcp.example.".into(),
            code: "NXDOMAIN".into(),
        };
        assert_eq!(e.code(), "dns_nxdomain");
        assert!(!e.is_node_error());
        assert!(e.to_string().contains("does not exist"));
    }

    #[test]
    fn source_chain_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = DiscoveryError::DnsLookup {
            name: "x.".into(),
            record_type: "SRV",
            source: Box::new(io),
        };
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("refused"));
    }
}
