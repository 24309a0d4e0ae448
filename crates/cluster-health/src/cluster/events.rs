//! What the orchestrator reports: status changes, check results and the
//! per-node health report, delivered as [`HealthEvent`]s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_metrics::WindowSnapshot;
use cluster_types::{NodeId, NodeStatus};

use crate::HealthError;

/// Default capacity of the event channel: 1024 events.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// A node's status changed (the seeds' `onStatusChange` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// The node.
    pub node: NodeId,
    /// Status before.
    pub from: NodeStatus,
    /// Status after.
    pub to: NodeStatus,
    /// The node's window metrics right after the change.
    pub metrics: WindowSnapshot,
    /// When it changed.
    pub at: Instant,
}

/// The result of one active check (the seeds' `onHealthCheck` arguments).
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The node checked.
    pub node: NodeId,
    /// `Ok(latency)` or the error.
    pub result: Result<Duration, Arc<HealthError>>,
    /// Whether this check was the half-open probe of an open breaker.
    pub probe: bool,
    /// When it completed.
    pub at: Instant,
}

impl CheckReport {
    /// Whether the check passed.
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }
}

/// Something that happened to the tracked nodes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HealthEvent {
    /// A node changed status.
    StatusChanged(StatusChange),
    /// An active check completed.
    CheckCompleted(CheckReport),
    /// A node answered 429/503 and is saturated until `until`.
    Saturated {
        /// The node.
        node: NodeId,
        /// End of the saturation.
        until: Instant,
    },
    /// A node started being tracked.
    NodeAdded {
        /// The node.
        node: NodeId,
    },
    /// A node stopped being tracked.
    NodeRemoved {
        /// The node.
        node: NodeId,
    },
}

/// Status and metrics of one node (the seeds' `getNodeHealth` result, with
/// the breaker's state).
#[derive(Debug, Clone)]
pub struct NodeHealthReport {
    /// Current status.
    pub status: NodeStatus,
    /// When the status was entered.
    pub status_since: Instant,
    /// Window metrics now.
    pub metrics: WindowSnapshot,
    /// The error of the last active check, if it failed.
    pub last_error: Option<Arc<HealthError>>,
    /// When the last active check completed.
    pub last_check: Option<Instant>,
    /// The backoff delay applied when the breaker last opened; zero while
    /// closed.
    pub backoff_delay: Duration,
    /// While the breaker is open: when the next probe may go.
    pub retry_at: Option<Instant>,
    /// Until when the node asked not to be sent work, if it did.
    pub saturated_until: Option<Instant>,
    /// The decaying overload penalty now.
    pub load_penalty: f64,
}

impl NodeHealthReport {
    /// Converts to the published [`cluster_types::NodeHealth`], mapping
    /// instants to unix milliseconds given the current instant and unix
    /// time.
    #[must_use]
    pub fn to_node_health(&self, now: Instant, now_unix_ms: u64) -> cluster_types::NodeHealth {
        let unix_ms = |at: Instant| -> u64 {
            if at >= now {
                let ahead = u64::try_from(at.duration_since(now).as_millis()).unwrap_or(u64::MAX);
                now_unix_ms.saturating_add(ahead)
            } else {
                let ago = u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX);
                now_unix_ms.saturating_sub(ago)
            }
        };
        cluster_types::NodeHealth {
            success_rate: self.metrics.success_rate,
            avg_latency_ms: self.metrics.avg_latency.map(|d| d.as_secs_f64() * 1000.0),
            total_samples: self.metrics.total_samples as u64,
            consecutive_successes: self.metrics.consecutive_successes,
            consecutive_failures: self.metrics.consecutive_failures,
            last_check_unix_ms: self.last_check.map(unix_ms),
            last_error: self.last_error.as_ref().map(|e| e.to_string()),
            next_probe_unix_ms: self.retry_at.map(unix_ms),
        }
    }
}

/// A callback run on every status change.
pub(super) type StatusCallback = Arc<dyn Fn(&StatusChange) + Send + Sync>;
/// A callback run after every active check.
pub(super) type CheckCallback = Arc<dyn Fn(&CheckReport) + Send + Sync>;
