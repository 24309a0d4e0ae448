//! [`HealthError`]: every error of this crate, with structured fields.

use std::time::Duration;

use cluster_types::NodeId;

/// A boxed error, the source of [`HealthError::Network`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of health checks and of the [`ClusterHealth`](crate::ClusterHealth)
/// API.
///
/// The first four variants are the seeds' `HealthCheckTimeoutError`,
/// `HealthCheckFailedError`, `HealthCheckNetworkError` and an
/// invalid-response error; [`Overloaded`](Self::Overloaded) and
/// [`Loading`](Self::Loading) are answers that are *not* failures (see
/// [`HealthError::observation`]). Messages never contain API keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The check did not complete (connect, headers and body) within
    /// `timeout`.
    #[error("health check of node {node} timed out after {timeout:?}")]
    Timeout {
        /// The node checked.
        node: NodeId,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The node answered with an error status (other than the overload and
    /// loading answers).
    #[error("health check of node {node} failed: HTTP {code} {text}")]
    FailedStatus {
        /// The node checked.
        node: NodeId,
        /// HTTP status code, e.g. 500.
        code: u16,
        /// The status's reason phrase, e.g. `Internal Server Error` (empty
        /// for codes without one).
        text: String,
    },
    /// Connecting, sending or receiving failed: refused, reset, DNS, TLS.
    #[error("health check of node {node} failed: network error")]
    Network {
        /// The node checked.
        node: NodeId,
        /// The transport error (a `reqwest::Error` for HTTP checks).
        #[source]
        source: BoxError,
    },
    /// The node answered 2xx but the body is not what the probe expects
    /// (for `/v1/models`: JSON `{"data": [{"id": "..."}, ...]}`).
    #[error("node {node} returned an invalid response: {reason}")]
    InvalidResponse {
        /// The node checked.
        node: NodeId,
        /// What was wrong with it.
        reason: String,
    },
    /// The node is alive but refuses work for now: HTTP 429, or 503 that is
    /// not a model-loading answer. Backpressure, not a failure.
    #[error("node {node} is overloaded (HTTP {code}, retry after {retry_after:?})")]
    Overloaded {
        /// The node checked.
        node: NodeId,
        /// 429 or 503.
        code: u16,
        /// The `Retry-After` header, if it had a usable value.
        retry_after: Option<Duration>,
    },
    /// The node is up but still loading its model (llama.cpp answers
    /// `503 {"error": {"message": "Loading model", ...}}`). The node is
    /// initializing, not failing.
    #[error("node {node} is loading its model")]
    Loading {
        /// The node checked.
        node: NodeId,
    },
    /// No node with this id is tracked (where the seeds throw).
    #[error("unknown node {node}")]
    UnknownNode {
        /// The id asked for.
        node: NodeId,
    },
    /// [`ClusterHealth::start`](crate::ClusterHealth::start) was called while
    /// checks were already running (the seeds throw here too).
    #[error("health checks are already running")]
    AlreadyRunning,
    /// Periodic checks need a tokio runtime and none is running on this
    /// thread.
    #[error("no tokio runtime is running on this thread")]
    NoRuntime,
    /// Building the HTTP client failed (TLS backend initialization).
    #[error("could not build the HTTP client for health checks")]
    Client {
        /// The reqwest builder error.
        #[source]
        source: reqwest::Error,
    },
}

/// What a check or request outcome means to the state machine, the input of
/// [`NodeHealthTracker`](crate::NodeHealthTracker).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// The node served the request (latency, if measured).
    Success {
        /// Time to answer.
        latency: Option<Duration>,
    },
    /// The node failed: refused, reset, timed out, 5xx, invalid answer.
    Failure,
    /// 429/503: the node is saturated for `retry_after` (or the policy's
    /// default when absent).
    Overloaded {
        /// Parsed `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The node is loading its model.
    Loading,
}

impl HealthError {
    /// The node the error is about, if it is about one.
    #[must_use]
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            Self::Timeout { node, .. }
            | Self::FailedStatus { node, .. }
            | Self::Network { node, .. }
            | Self::InvalidResponse { node, .. }
            | Self::Overloaded { node, .. }
            | Self::Loading { node }
            | Self::UnknownNode { node } => Some(node),
            Self::AlreadyRunning | Self::NoRuntime | Self::Client { .. } => None,
        }
    }

    /// How the health state machine counts this error:
    /// [`Overloaded`](Self::Overloaded) → [`Observation::Overloaded`],
    /// [`Loading`](Self::Loading) → [`Observation::Loading`], everything else
    /// → [`Observation::Failure`].
    #[must_use]
    pub fn observation(&self) -> Observation {
        match self {
            Self::Overloaded { retry_after, .. } => Observation::Overloaded {
                retry_after: *retry_after,
            },
            Self::Loading { .. } => Observation::Loading,
            _ => Observation::Failure,
        }
    }

    /// A network error for `node` with any error as its source.
    #[must_use]
    pub fn network(node: NodeId, source: impl Into<BoxError>) -> Self {
        Self::Network {
            node,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_mapping() {
        let node = NodeId::from("a");
        let overloaded = HealthError::Overloaded {
            node: node.clone(),
            code: 429,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            overloaded.observation(),
            Observation::Overloaded {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            HealthError::Loading { node: node.clone() }.observation(),
            Observation::Loading
        );
        let timeout = HealthError::Timeout {
            node: node.clone(),
            timeout: Duration::from_secs(2),
        };
        assert_eq!(timeout.observation(), Observation::Failure);
        assert_eq!(timeout.node(), Some(&node));
        assert_eq!(HealthError::AlreadyRunning.node(), None);
        let net = HealthError::network(node, std::io::Error::other("reset"));
        assert!(std::error::Error::source(&net).is_some());
        assert_eq!(net.observation(), Observation::Failure);
    }

    #[test]
    fn messages_are_structured() {
        let e = HealthError::FailedStatus {
            node: NodeId::from("mac-1"),
            code: 500,
            text: "Internal Server Error".into(),
        };
        assert_eq!(
            e.to_string(),
            "health check of node mac-1 failed: HTTP 500 Internal Server Error"
        );
    }
}
