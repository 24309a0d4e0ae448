//! The crate's error type.

use std::path::PathBuf;

use cluster_types::{ConfigErrors, NodeId, NodeStatus};

/// Everything that can go wrong in the facade. Each variant carries the
/// seeds' error code ([`FacadeError::code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FacadeError {
    /// The configuration is invalid (every problem listed). Code
    /// `INVALID_CONFIG`.
    #[error("invalid configuration{}: {problems}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    InvalidConfig {
        /// File the configuration came from, if any.
        path: Option<PathBuf>,
        /// Every problem found.
        #[source]
        problems: ConfigErrors,
    },
    /// A configuration file could not be read. Code `INVALID_CONFIG`.
    #[error("cannot read configuration file {}: {source}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file's extension is not `.toml`, `.json`, `.yaml` or
    /// `.yml`. Code `INVALID_CONFIG`.
    #[error("cannot tell the format of {} (expected .toml, .json, .yaml or .yml)", path.display())]
    UnknownConfigFormat {
        /// The file.
        path: PathBuf,
    },
    /// A component was started twice. Code `ALREADY_INITIALIZED`.
    #[error("{component} is already initialized")]
    AlreadyInitialized {
        /// What was started twice.
        component: &'static str,
    },
    /// The cluster was shut down (or never started). Code
    /// `NOT_INITIALIZED`.
    #[error("the cluster is not running (operation: {operation})")]
    NotInitialized {
        /// The operation attempted.
        operation: &'static str,
    },
    /// Start-up failed at one stage. Code `INITIALIZATION_FAILED`.
    #[error("initialization failed during {stage}: {source}")]
    InitializationFailed {
        /// `"discovery"`, `"health"`, `"routing"` or `"cache coordination"`.
        stage: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No node can take the request. Code `NO_ROUTABLE_NODE`.
    #[error("no routable node{} (nodes: {})", model.as_ref().map(|m| format!(" for model {m:?}")).unwrap_or_default(), fmt_nodes(nodes))]
    NoRoutableNode {
        /// The requested model, if any.
        model: Option<String>,
        /// Every known node with its status.
        nodes: Vec<(NodeId, NodeStatus)>,
    },
    /// The node id is not part of the cluster. Code `UNKNOWN_NODE`.
    #[error("unknown node {node}")]
    UnknownNode {
        /// The id.
        node: NodeId,
    },
    /// A node given to [`Cluster::add_node`](crate::Cluster::add_node) is
    /// unusable (bad id or URL, weight 0). Code `INVALID_NODE`.
    #[error("node {node} cannot be added: {message}")]
    InvalidNode {
        /// The id given.
        node: NodeId,
        /// What is wrong with it.
        message: String,
    },
    /// A node with this id is already in the cluster (added at run time or
    /// discovered). Code `NODE_EXISTS`.
    #[error("node {node} already exists")]
    NodeExists {
        /// The id.
        node: NodeId,
    },
    /// [`Cluster::remove_node`](crate::Cluster::remove_node) was asked for a
    /// node that was not added at run time (configured and discovered
    /// nodes change with the configuration). Code `NOT_A_RUNTIME_NODE`.
    #[error("node {node} was not added at run time; change the configuration instead")]
    NotRuntimeNode {
        /// The id.
        node: NodeId,
    },
    /// Refreshing discovery failed (the last good node set is kept). Code
    /// `DISCOVERY_FAILED`.
    #[error("discovery refresh failed: {source}")]
    Discovery {
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn fmt_nodes(nodes: &[(NodeId, NodeStatus)]) -> String {
    if nodes.is_empty() {
        return "none".to_owned();
    }
    nodes
        .iter()
        .map(|(id, s)| format!("{id}={s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl FacadeError {
    /// The seeds' error code: `INVALID_CONFIG`, `ALREADY_INITIALIZED`,
    /// `NOT_INITIALIZED`, `INITIALIZATION_FAILED`, plus `NO_ROUTABLE_NODE`,
    /// `UNKNOWN_NODE`, `DISCOVERY_FAILED`, `INVALID_NODE`, `NODE_EXISTS` and
    /// `NOT_A_RUNTIME_NODE`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidConfig { .. }
            | Self::ConfigRead { .. }
            | Self::UnknownConfigFormat { .. } => "INVALID_CONFIG",
            Self::AlreadyInitialized { .. } => "ALREADY_INITIALIZED",
            Self::NotInitialized { .. } => "NOT_INITIALIZED",
            Self::InitializationFailed { .. } => "INITIALIZATION_FAILED",
            Self::NoRoutableNode { .. } => "NO_ROUTABLE_NODE",
            Self::UnknownNode { .. } => "UNKNOWN_NODE",
            Self::Discovery { .. } => "DISCOVERY_FAILED",
            Self::InvalidNode { .. } => "INVALID_NODE",
            Self::NodeExists { .. } => "NODE_EXISTS",
            Self::NotRuntimeNode { .. } => "NOT_A_RUNTIME_NODE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e = FacadeError::NoRoutableNode {
            model: Some("qwen".into()),
            nodes: vec![("a".into(), NodeStatus::Unhealthy)],
        };
        assert_eq!(e.code(), "NO_ROUTABLE_NODE");
        assert_eq!(
            e.to_string(),
            "no routable node for model \"qwen\" (nodes: a=unhealthy)"
        );
        let e = FacadeError::NoRoutableNode {
            model: None,
            nodes: vec![],
        };
        assert_eq!(e.to_string(), "no routable node (nodes: none)");
        assert_eq!(
            FacadeError::NotInitialized {
                operation: "select"
            }
            .code(),
            "NOT_INITIALIZED"
        );
        assert_eq!(
            FacadeError::AlreadyInitialized { component: "x" }.code(),
            "ALREADY_INITIALIZED"
        );
        assert_eq!(
            FacadeError::UnknownNode { node: "n".into() }.code(),
            "UNKNOWN_NODE"
        );
        let e = FacadeError::InitializationFailed {
            stage: "health",
            source: "boom".into(),
        };
        assert_eq!(e.code(), "INITIALIZATION_FAILED");
        assert!(e.to_string().contains("health"));
        let e = FacadeError::UnknownConfigFormat {
            path: "a.ini".into(),
        };
        assert_eq!(e.code(), "INVALID_CONFIG");
    }
}
