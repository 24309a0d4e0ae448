//! The [`HealthChecker`] trait: one active check of one node.

use std::time::Duration;

use async_trait::async_trait;
use cluster_types::NodeSpec;

use crate::HealthError;

/// One active health check of one node, as used by
/// [`ClusterHealth`](crate::ClusterHealth).
///
/// [`HttpHealthChecker`](crate::HttpHealthChecker) is the real
/// implementation. With the `mock` feature (and in this crate's own tests)
/// mockall generates `MockHealthChecker`.
///
/// An implementation should bound its own time; `ClusterHealth` also cancels
/// a check that outlives `HealthConfig::timeout` and counts it as
/// [`HealthError::Timeout`].
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait HealthChecker: Send + Sync {
    /// Checks `node` once. `Ok(latency)` when it is serving;
    /// [`HealthError::Overloaded`] / [`HealthError::Loading`] when it is alive
    /// but cannot take work yet; any other error when it is failing.
    async fn check(&self, node: &NodeSpec) -> Result<Duration, HealthError>;
}
