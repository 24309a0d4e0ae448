//! Validation of newly seen nodes before they are announced.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cluster_health::{HealthError, HttpHealthChecker};
use cluster_types::{NodeId, NodeProfile, NodeSpec};

use crate::DiscoveryError;

/// Checks that a newly discovered node really is an OpenAI-compatible
/// inference server, and tells which models it serves and what kind of
/// server it is.
///
/// [`ClusterDiscovery`](crate::ClusterDiscovery) calls it once per newly
/// seen node (with its own timeout around the call) and announces the node
/// only when it succeeds; a node that fails is tried again at the next
/// refresh.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait NodeValidator: Send + Sync {
    /// Validates `node`; returns the model ids it serves and its kind.
    ///
    /// # Errors
    /// [`DiscoveryError::Validation`] (or any other variant) when the node is
    /// not usable.
    async fn validate(&self, node: &NodeSpec) -> Result<NodeProfile, DiscoveryError>;
}

/// A validator that accepts every node without asking it anything (models
/// left empty; kind from the node's `kind` tag, else generic). For configurations that turn validation off, and for tests of
/// the sources themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

#[async_trait]
impl NodeValidator for AcceptAll {
    async fn validate(&self, node: &NodeSpec) -> Result<NodeProfile, DiscoveryError> {
        let kind = cluster_types::NodeKind::from_tags(&node.tags).unwrap_or_default();
        Ok(NodeProfile::new(Vec::new(), kind))
    }
}

/// Validation over HTTP with cluster-health's [`HttpHealthChecker`]:
/// `GET {url}/v1/models` must answer 2xx with an OpenAI model list
/// (`{"data": [{"id": "..."}, ...]}`); the ids are the node's models. Then
/// the node's kind is detected ([`HttpHealthChecker::profile`]: its
/// `owned_by`, `/props`, `/version`, `/get_server_info`, `/health`).
///
/// Timeouts become [`DiscoveryError::ValidationTimeout`]; every other
/// failure (refused, HTTP error status, 429/503, a body that is not a model
/// list) becomes [`DiscoveryError::Validation`] with the HTTP status when
/// there was one and cluster-health's error as the source.
#[derive(Debug, Clone)]
pub struct HttpNodeValidator {
    checker: HttpHealthChecker,
}

impl HttpNodeValidator {
    /// A validator whose requests time out after `timeout` (connect,
    /// headers and body).
    ///
    /// # Errors
    /// [`DiscoveryError::Validation`] only if the HTTP client cannot be
    /// built (TLS backend initialization).
    pub fn new(timeout: Duration) -> Result<Self, DiscoveryError> {
        let checker = HttpHealthChecker::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| DiscoveryError::Validation {
                node: NodeId::from("-"),
                url: String::new(),
                reason: "cannot build the HTTP client".to_owned(),
                status: None,
                source: Some(Box::new(e)),
            })?;
        Ok(Self { checker })
    }

    /// A validator over an existing checker (its timeout and client apply).
    #[must_use]
    pub fn with_checker(checker: HttpHealthChecker) -> Self {
        Self { checker }
    }
}

#[async_trait]
impl NodeValidator for HttpNodeValidator {
    async fn validate(&self, node: &NodeSpec) -> Result<NodeProfile, DiscoveryError> {
        self.checker
            .profile(node)
            .await
            .map_err(|error| validation_error(node, error))
    }
}

fn validation_error(node: &NodeSpec, error: HealthError) -> DiscoveryError {
    let (reason, status) = match &error {
        HealthError::Timeout { timeout, .. } => {
            return DiscoveryError::ValidationTimeout {
                node: node.id.clone(),
                url: node.url.clone(),
                timeout: *timeout,
            };
        }
        HealthError::FailedStatus { code, text, .. } => (
            format!("GET /v1/models answered HTTP {code} {text}"),
            Some(*code),
        ),
        HealthError::Overloaded { code, .. } => (
            format!("GET /v1/models answered HTTP {code} (overloaded)"),
            Some(*code),
        ),
        HealthError::Loading { .. } => {
            ("the node is still loading its model".to_owned(), Some(503))
        }
        HealthError::InvalidResponse { reason, .. } => (
            format!("GET /v1/models is not an OpenAI model list: {reason}"),
            None,
        ),
        HealthError::Network { source, .. } => {
            // The whole chain: a refused certificate says why only deep
            // down ("invalid peer certificate: UnknownIssuer").
            let mut reason = format!("cannot reach the node: {source}");
            let mut next = source.source();
            while let Some(s) = next {
                reason.push_str(": ");
                reason.push_str(&s.to_string());
                next = s.source();
            }
            (reason, None)
        }
        other => (other.to_string(), None),
    };
    DiscoveryError::Validation {
        node: node.id.clone(),
        url: node.url.clone(),
        reason,
        status,
        source: Some(Box::new(error)),
    }
}

/// A validator that fails every node with the same error: stands in for
/// the HTTP validator when its client cannot be built, so the failure shows
/// up as validation errors instead of nodes announced unchecked.
#[derive(Debug)]
struct Unavailable {
    reason: String,
}

#[async_trait]
impl NodeValidator for Unavailable {
    async fn validate(&self, node: &NodeSpec) -> Result<NodeProfile, DiscoveryError> {
        Err(DiscoveryError::Validation {
            node: node.id.clone(),
            url: node.url.clone(),
            reason: self.reason.clone(),
            status: None,
            source: None,
        })
    }
}

/// The validator used when none is given: [`HttpNodeValidator`] with
/// `timeout`.
pub(crate) fn default_validator(timeout: Duration) -> Arc<dyn NodeValidator> {
    match HttpNodeValidator::new(timeout) {
        Ok(validator) => Arc::new(validator),
        Err(error) => {
            tracing::error!(%error, "HTTP validator unavailable; every new node will fail validation");
            Arc::new(Unavailable {
                reason: error.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        NodeSpec::new("n", "http://127.0.0.1:9")
    }

    #[test]
    fn health_errors_map_to_validation_errors() {
        let timeout = validation_error(
            &spec(),
            HealthError::Timeout {
                node: NodeId::from("n"),
                timeout: Duration::from_secs(2),
            },
        );
        assert_eq!(timeout.code(), "validation_timeout");

        let status = validation_error(
            &spec(),
            HealthError::FailedStatus {
                node: NodeId::from("n"),
                code: 404,
                text: "Not Found".into(),
            },
        );
        match status {
            DiscoveryError::Validation {
                status,
                reason,
                url,
                ..
            } => {
                assert_eq!(status, Some(404));
                assert!(reason.contains("404"));
                assert_eq!(url, "http://127.0.0.1:9");
            }
            other => panic!("unexpected {other:?}"),
        }

        let shape = validation_error(
            &spec(),
            HealthError::InvalidResponse {
                node: NodeId::from("n"),
                reason: "missing field `data`".into(),
            },
        );
        assert!(shape.to_string().contains("model list"), "{shape}");
    }

    #[tokio::test]
    async fn refused_connection_is_a_validation_error() {
        // Port 9 (discard) on loopback: nothing listens there in the tests.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let validator = HttpNodeValidator::new(Duration::from_secs(2)).unwrap();
        let node = NodeSpec::new("n", format!("http://127.0.0.1:{port}"));
        let err = validator.validate(&node).await.unwrap_err();
        assert_eq!(err.code(), "validation_failed");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn unavailable_fails_every_node() {
        let v = Unavailable {
            reason: "no TLS".into(),
        };
        let err = v.validate(&spec()).await.unwrap_err();
        assert!(err.to_string().contains("no TLS"));
    }
}
