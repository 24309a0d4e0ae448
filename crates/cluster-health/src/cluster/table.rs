//! The node table: every tracked node's entry (spec, tracker, task) and the
//! [`RoutingTable`] of their views, rebuilt lazily for the router.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cluster_types::{NodeId, NodeSpec};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::shared::Shared;
use crate::tracker::RoutingView;
use crate::{Backoff, HealthError, NodeHealthTracker};

/// Every node's [`RoutingView`], as of one moment: what the router reads.
///
/// Rebuilt lazily — only when some view changed since the last read — and
/// shared as an `Arc`, so reading it when nothing changed costs one atomic
/// load.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    version: u64,
    views: BTreeMap<NodeId, RoutingView>,
}

impl RoutingTable {
    /// Increases whenever a view changes; equal versions mean equal tables.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The view of one node.
    #[must_use]
    pub fn get(&self, node: &NodeId) -> Option<&RoutingView> {
        self.views.get(node)
    }

    /// Every node's view, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &RoutingView)> {
        self.views.iter()
    }

    /// Number of nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether no node is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }
}

/// One tracked node.
pub(super) struct NodeEntry {
    pub(super) id: NodeId,
    pub(super) spec: Mutex<Arc<NodeSpec>>,
    pub(super) state: Mutex<NodeState>,
    pub(super) task: Mutex<Option<AbortHandle>>,
    /// Wakes the node's task when the breaker opened from outside it.
    pub(super) wake: Notify,
    pub(super) removed: AtomicBool,
}

pub(super) struct NodeState {
    pub(super) tracker: NodeHealthTracker,
    pub(super) view: RoutingView,
    pub(super) last_error: Option<Arc<HealthError>>,
    pub(super) last_check: Option<Instant>,
}

impl Shared {
    pub(super) fn new_entry(&self, spec: NodeSpec) -> Arc<NodeEntry> {
        let seed = self.rng.lock().random::<u64>();
        let backoff = Backoff::from_seed(self.backoff.clone(), seed);
        let tracker = NodeHealthTracker::with_policy(
            spec.id.clone(),
            &self.config,
            self.policy.clone(),
            backoff,
            self.now(),
        );
        Arc::new(NodeEntry {
            id: spec.id.clone(),
            spec: Mutex::new(Arc::new(spec)),
            state: Mutex::new(NodeState {
                view: tracker.routing_view(),
                tracker,
                last_error: None,
                last_check: None,
            }),
            task: Mutex::new(None),
            wake: Notify::new(),
            removed: AtomicBool::new(false),
        })
    }

    pub(super) fn entry(&self, node: &NodeId) -> Option<Arc<NodeEntry>> {
        self.nodes.read().get(node).cloned()
    }

    pub(super) fn mark_dirty(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.dirty.store(true, Ordering::Release);
    }

    pub(super) fn rebuild_table(&self) -> Arc<RoutingTable> {
        let _guard = self.rebuild.lock();
        if self.dirty.swap(false, Ordering::AcqRel) {
            let version = self.version.load(Ordering::Acquire);
            let entries: Vec<Arc<NodeEntry>> = self.nodes.read().values().cloned().collect();
            let views = entries
                .iter()
                .map(|entry| (entry.id.clone(), entry.state.lock().view))
                .collect();
            self.table.store(Arc::new(RoutingTable { version, views }));
        }
        self.table.load_full()
    }
}
