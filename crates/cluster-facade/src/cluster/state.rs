//! The cluster's shared state ([`Inner`]) and how it turns discovery's
//! nodes, health's statuses and the drain set into the router's snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cluster_discovery::{ClusterDiscovery, ValidatedNode};
use cluster_health::{ClusterHealth, Observation};
use cluster_metrics::{MetricsRegistry, SharedClock};
use cluster_types::{
    ClusterConfig, ClusterStatus, KIND_TAG, Node, NodeId, NodeKind, NodeSpec, NodeStatus,
};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::coordinator::Coordinator;
use crate::events::ClusterEvent;
use crate::layered::LayeredSource;
use crate::router::{Router, TAG_CACHE_ENTRIES, TAG_CACHE_TOKENS};
use crate::snapshot::{ClusterSnapshot, NodeEntry};

/// A node that failed validation, as last seen.
pub(super) struct Unreachable {
    pub(super) url: String,
    pub(super) reason: String,
    pub(super) at: Instant,
}

/// How long a node that failed validation stays in the status without
/// failing again (discovery retries it at every refresh): 3 refreshes, at
/// least 90 s.
fn unreachable_ttl(refresh: Duration) -> Duration {
    (refresh * 3).max(Duration::from_secs(90))
}

/// Everything a [`Cluster`](super::Cluster) handle shares.
pub(super) struct Inner {
    /// The configuration in force (swapped by [`Cluster::reload`]).
    pub(super) config: ArcSwap<ClusterConfig>,
    /// The configured source plus the nodes added at run time.
    pub(super) layered: Arc<LayeredSource>,
    /// Serialises reloads and runtime node changes.
    pub(super) reload: tokio::sync::Mutex<()>,
    pub(super) clock: SharedClock,
    pub(super) discovery: ClusterDiscovery,
    pub(super) health: Arc<ClusterHealth>,
    pub(super) router: Router,
    pub(super) coordinator: Coordinator,
    pub(super) metrics: MetricsRegistry,
    pub(super) events: broadcast::Sender<ClusterEvent>,
    pub(super) drained: Mutex<BTreeSet<NodeId>>,
    /// Nodes discovery found but could not validate (refused, wrong
    /// certificate, not an inference server): shown offline in the status
    /// with the reason, until they validate or stop being found.
    pub(super) unreachable: Mutex<BTreeMap<NodeId, Unreachable>>,
    pub(super) last_status: Mutex<ClusterStatus>,
    /// Serialises snapshot rebuilds.
    pub(super) rebuild: Mutex<()>,
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(super) stopped: AtomicBool,
}

impl Inner {
    pub(super) fn emit(&self, event: ClusterEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// The spec the rest of the cluster sees for a validated node: its
    /// discovered spec plus what validation and sync learned, as tags the
    /// user did not set themselves — `kind` (health probes the kind's
    /// path), llama.cpp's slot count as `prompt_cache_entries` (one cached
    /// prompt per slot), a published KV capacity as `prompt_cache_tokens`.
    pub(super) fn effective_spec(&self, node: &ValidatedNode) -> NodeSpec {
        let mut spec = node.spec().clone();
        spec.tags
            .entry(KIND_TAG.to_owned())
            .or_insert_with(|| node.kind.as_str().to_owned());
        if node.kind == NodeKind::LlamaCpp
            && let Some(slots) = node.slots
        {
            spec.tags
                .entry(TAG_CACHE_ENTRIES.to_owned())
                .or_insert_with(|| slots.to_string());
        }
        if let Some(tokens) = self.coordinator.sync.token_capacity(node.id()) {
            spec.tags
                .entry(TAG_CACHE_TOKENS.to_owned())
                .or_insert_with(|| tokens.to_string());
        }
        spec
    }

    /// Nodes that failed validation (and are not in the snapshot), as
    /// offline nodes whose health says why; stale ones are dropped.
    pub(super) fn unreachable_nodes(
        &self,
        snap: &ClusterSnapshot,
        now: Instant,
        unix_now: u64,
    ) -> Vec<Node> {
        let ttl = unreachable_ttl(self.discovery.options().refresh_interval);
        let mut unreachable = self.unreachable.lock();
        unreachable
            .retain(|id, u| snap.entry(id).is_none() && now.saturating_duration_since(u.at) <= ttl);
        unreachable
            .iter()
            .map(|(id, u)| {
                let mut node = Node::new(NodeSpec::new(id.clone(), u.url.clone()));
                node.status = NodeStatus::Offline;
                node.health.success_rate = 0.0;
                node.health.last_error = Some(u.reason.clone());
                node.health.last_check_unix_ms = Some(unix_now);
                node
            })
            .collect()
    }

    /// Starts tracking a node in health; a node that passed discovery's
    /// validation counts as one successful check.
    pub(super) fn track(&self, spec: NodeSpec) {
        let id = spec.id.clone();
        if self.health.add_node(spec) {
            self.health
                .record(&id, Observation::Success { latency: None });
        }
    }

    /// Publishes a new snapshot from discovery's nodes, health's statuses
    /// and the drain set; syncs the metrics registry; announces a cluster
    /// status change.
    pub(super) fn rebuild(&self) {
        let _guard = self.rebuild.lock();
        let drained = self.drained.lock().clone();
        let entries: Vec<NodeEntry> = self
            .discovery
            .nodes()
            .into_iter()
            .map(|n| {
                let status = self
                    .health
                    .status(n.id())
                    .unwrap_or(NodeStatus::Initializing);
                NodeEntry {
                    drained: drained.contains(n.id()),
                    probe_ready: matches!(status, NodeStatus::Unhealthy | NodeStatus::Offline),
                    spec: self.effective_spec(&n),
                    status,
                    models: n.models.clone(),
                }
            })
            .collect();
        self.router.publish(entries);
        let snap = self.router.snapshot();
        let counters = self.router.counters();
        for (id, c) in &counters {
            let status = snap
                .entry(id)
                .map_or(NodeStatus::Initializing, |e| e.status);
            self.metrics.insert_node(id.clone(), Arc::clone(c), status);
        }
        for (id, _, _) in self.metrics.snapshot() {
            if snap.entry(&id).is_none() {
                self.metrics.remove_node(&id);
            }
        }
        let status = ClusterStatus::aggregate(snap.entries().map(|e| e.status));
        let mut last = self.last_status.lock();
        if *last != status {
            let from = *last;
            *last = status;
            drop(last);
            self.emit(ClusterEvent::ClusterStatusChanged { from, to: status });
        }
    }
}
