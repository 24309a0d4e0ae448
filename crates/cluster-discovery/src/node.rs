//! What a discovery source produces: [`DiscoveredNode`]s in a
//! [`DiscoverySnapshot`], and what validation adds: [`ValidatedNode`].

use std::time::Duration;

use cluster_types::{NodeId, NodeKind, NodeProfile, NodeSpec};

use crate::DiscoveryError;

/// Where a discovered node came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeOrigin {
    /// Listed in the configuration.
    Static,
    /// One SRV record of a DNS service name.
    Dns {
        /// The SRV name queried, e.g. `_mlx._tcp.cluster.example.`.
        service: String,
        /// The record's target host, e.g. `mac-1.cluster.example.`.
        target: String,
        /// The record's port.
        port: u16,
        /// The record's priority (lower is preferred).
        priority: u16,
        /// The record's weight.
        weight: u16,
    },
    /// One ready endpoint of a Kubernetes EndpointSlice.
    Kubernetes {
        /// Namespace of the slice.
        namespace: String,
        /// Name of the Service the slice belongs to (its
        /// `kubernetes.io/service-name` label), when it has one.
        service: Option<String>,
        /// Name of the EndpointSlice.
        slice: String,
        /// `kind/name` of the endpoint's target (usually `Pod/name`), when
        /// the slice names one.
        target: Option<String>,
    },
    /// One DNS-SD instance found by mDNS browsing.
    Mdns {
        /// The service type browsed, e.g. `_mlx-lm._tcp.local.`.
        service_type: String,
        /// The instance's full name, e.g. `mac-1._mlx-lm._tcp.local.`.
        instance: String,
        /// The host its SRV record names, e.g. `mac-1.local.`.
        host: String,
        /// The SRV record's port.
        port: u16,
    },
    /// A source outside this crate, by name.
    Other(String),
}

impl NodeOrigin {
    /// The backend's short name: `static`, `dns`, `kubernetes`, `mdns` or
    /// `other`.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dns { .. } => "dns",
            Self::Kubernetes { .. } => "kubernetes",
            Self::Mdns { .. } => "mdns",
            Self::Other(_) => "other",
        }
    }
}

/// One node as a discovery source sees it: how to reach it (its
/// [`NodeSpec`]: id, base URL, weight, tags, API key) and where it was
/// found. Not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredNode {
    /// Id, base URL, weight (default 1), tags (default none), API key.
    pub spec: NodeSpec,
    /// Which source and record produced it.
    pub origin: NodeOrigin,
}

impl DiscoveredNode {
    /// Wraps a spec and its origin.
    #[must_use]
    pub fn new(spec: NodeSpec, origin: NodeOrigin) -> Self {
        Self { spec, origin }
    }

    /// The node's id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.spec.id
    }

    /// The node's base URL (no trailing slash, no `/v1`).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.spec.url
    }
}

/// A node that passed validation (or was accepted without it), as announced
/// in [`DiscoveryEvent`](crate::DiscoveryEvent)s and listed by
/// [`ClusterDiscovery::nodes`](crate::ClusterDiscovery::nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedNode {
    /// The node as discovered.
    pub node: DiscoveredNode,
    /// Model ids its `GET /v1/models` listed (empty when validation is
    /// off).
    pub models: Vec<String>,
    /// What server it is (detected at validation; its `kind` tag when
    /// validation is off). Default generic.
    pub kind: NodeKind,
    /// llama.cpp: its number of slots (`total_slots` of `/props`).
    pub slots: Option<u32>,
}

impl ValidatedNode {
    /// `node` as validation described it.
    #[must_use]
    pub fn new(node: DiscoveredNode, profile: NodeProfile) -> Self {
        Self {
            node,
            models: profile.models,
            kind: profile.kind,
            slots: profile.slots,
        }
    }

    /// The node's id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        self.node.id()
    }

    /// The node's base URL.
    #[must_use]
    pub fn url(&self) -> &str {
        self.node.url()
    }

    /// The node's spec.
    #[must_use]
    pub fn spec(&self) -> &NodeSpec {
        &self.node.spec
    }
}

/// A full answer of a [`DiscoverySource`](crate::DiscoverySource): every node
/// it knows now (reset style, not a delta).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoverySnapshot {
    /// The nodes, in the source's order (the first of two duplicates wins).
    pub nodes: Vec<DiscoveredNode>,
    /// How long the source considers this answer fresh (DNS: the records'
    /// TTL, clamped). `None` (the default) means "use the refresh
    /// interval".
    pub valid_for: Option<Duration>,
}

impl DiscoverySnapshot {
    /// A snapshot of `nodes` with no freshness hint.
    #[must_use]
    pub fn new(nodes: Vec<DiscoveredNode>) -> Self {
        Self {
            nodes,
            valid_for: None,
        }
    }
}

/// Normalizes a node base URL: trims whitespace and trailing slashes, drops
/// a trailing `/v1` (configs often carry the OpenAI base path), lowercases
/// the scheme and host, and checks that it is `http://` or `https://` with a
/// host.
///
/// # Errors
/// [`DiscoveryError::InvalidNodeUrl`] when the URL has another scheme, no
/// host, a query or a fragment.
pub fn normalize_base_url(node: &NodeId, url: &str) -> Result<String, DiscoveryError> {
    let invalid = |reason| DiscoveryError::InvalidNodeUrl {
        node: node.clone(),
        url: url.to_owned(),
        reason,
    };
    let trimmed = url.trim();
    let (scheme, rest) = trimmed
        .split_once("://")
        .ok_or_else(|| invalid("no scheme (expected http:// or https://)"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(invalid("scheme is not http or https"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid("base URL has a query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.starts_with(':') {
        return Err(invalid("no host"));
    }
    if authority.contains('@') {
        return Err(invalid("credentials in the URL (use api_key)"));
    }
    if authority.contains(char::is_whitespace) {
        return Err(invalid("whitespace in the host"));
    }
    let mut path = path.trim_end_matches('/');
    if let Some(stripped) = path.strip_suffix("/v1") {
        path = stripped.trim_end_matches('/');
    }
    Ok(format!(
        "{scheme}://{}{path}",
        authority.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(url: &str) -> Result<String, DiscoveryError> {
        normalize_base_url(&NodeId::from("n"), url)
    }

    #[test]
    fn normalizes_base_urls() {
        assert_eq!(
            norm("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            norm("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            norm(" HTTP://Mac-1:8080/v1/ ").unwrap(),
            "http://mac-1:8080"
        );
        assert_eq!(norm("https://h/prefix/v1").unwrap(), "https://h/prefix");
        assert_eq!(norm("http://[::1]:80").unwrap(), "http://[::1]:80");
        assert_eq!(norm("http://h/Path").unwrap(), "http://h/Path");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "127.0.0.1:8080",
            "ftp://h",
            "http://",
            "http://:80",
            "http://u:p@h",
            "http://h/?x=1",
            "http://h#f",
        ] {
            let err = norm(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_node_url", "{bad}");
        }
    }

    #[test]
    fn origin_backends() {
        assert_eq!(NodeOrigin::Static.backend(), "static");
        assert_eq!(NodeOrigin::Other("x".into()).backend(), "other");
    }
}
