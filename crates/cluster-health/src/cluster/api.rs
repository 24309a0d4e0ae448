//! [`ClusterHealth`]: the public API — start and stop, nodes in and out,
//! passive reports, reports, probe permits, the routing table and events.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster_metrics::SharedClock;
use cluster_types::{BackoffConfig, ClusterStatus, HealthConfig, NodeId, NodeSpec, NodeStatus};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::builder::ClusterHealthBuilder;
use super::events::{HealthEvent, NodeHealthReport};
use super::probe::ProbeGuard;
use super::shared::Shared;
use super::table::{NodeEntry, RoutingTable};
use crate::tracker::RoutingView;
use crate::{HealthError, Observation};

/// Health of every node of the cluster: periodic active checks, passive
/// outcomes, events, and the routing table (the seeds' `ClusterHealth`).
///
/// Not `Clone`; share it in an `Arc`. Dropping it stops the checks.
/// Defaults: see [`ClusterHealthBuilder`]. See the [crate docs](crate) for
/// an example.
pub struct ClusterHealth {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for ClusterHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHealth")
            .field("config", &self.shared.config)
            .field("nodes", &self.shared.nodes.read().len())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

impl ClusterHealth {
    /// A builder with every default.
    #[must_use]
    pub fn builder() -> ClusterHealthBuilder {
        ClusterHealthBuilder::default()
    }

    /// An orchestrator with `config` and `backoff` and the other defaults
    /// (the seeds' constructor without callbacks).
    ///
    /// # Errors
    /// [`HealthError::Client`] if the HTTP checker cannot be built.
    pub fn new(config: HealthConfig, backoff: BackoffConfig) -> Result<Self, HealthError> {
        Self::builder().config(config).backoff(backoff).build()
    }

    /// The health configuration.
    #[must_use]
    pub fn config(&self) -> &HealthConfig {
        &self.shared.config
    }

    /// The clock used.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// Starts periodic checks of every tracked node, adding `nodes` first
    /// (the seeds' `startHealthChecks`). Must be called inside a tokio
    /// runtime; the tasks run on it.
    ///
    /// # Errors
    /// [`HealthError::AlreadyRunning`] if checks are running (call
    /// [`stop`](Self::stop) first); [`HealthError::NoRuntime`] outside a
    /// tokio runtime.
    pub fn start(&self, nodes: impl IntoIterator<Item = NodeSpec>) -> Result<(), HealthError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HealthError::NoRuntime)?;
        let mut running = self.shared.running.lock();
        if running.is_some() {
            return Err(HealthError::AlreadyRunning);
        }
        for spec in nodes {
            self.upsert(spec, None);
        }
        let entries: Vec<Arc<NodeEntry>> = self.shared.nodes.read().values().cloned().collect();
        for entry in &entries {
            let delay = self.shared.first_delay();
            self.shared.spawn_task(&runtime, entry, delay);
        }
        *running = Some(runtime);
        drop(running);
        self.shared.drain();
        Ok(())
    }

    /// Stops every periodic check; status, metrics and nodes are kept (the
    /// seeds' `stopHealthChecks`). Does nothing when not running.
    pub fn stop(&self) {
        let mut running = self.shared.running.lock();
        if running.take().is_none() {
            return;
        }
        for entry in self.shared.nodes.read().values() {
            if let Some(task) = entry.task.lock().take() {
                task.abort();
            }
        }
    }

    /// Whether periodic checks are running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.shared.running.lock().is_some()
    }

    /// Adds a node, or updates the spec of a tracked one (returns `true`
    /// only when it was new). A changed URL resets the node to
    /// `Initializing` (it is another server now); other spec changes keep
    /// its health. While running, a new node is checked at once and then on
    /// its own schedule.
    pub fn add_node(&self, spec: NodeSpec) -> bool {
        let added = {
            let running = self.shared.running.lock();
            self.upsert(spec, running.as_ref())
        };
        self.shared.drain();
        added
    }

    fn upsert(&self, spec: NodeSpec, runtime: Option<&tokio::runtime::Handle>) -> bool {
        let existing = self.shared.entry(&spec.id);
        if let Some(entry) = existing {
            let url_changed = {
                let mut current = entry.spec.lock();
                let changed = current.url != spec.url;
                *current = Arc::new(spec);
                changed
            };
            if url_changed {
                let now = self.shared.now();
                let mut state = entry.state.lock();
                let transition = state.tracker.reset(now);
                state.last_error = None;
                state.last_check = None;
                self.shared
                    .after_change(&entry, &mut state, transition, now);
                entry.wake.notify_one();
            }
            return false;
        }
        let id = spec.id.clone();
        let entry = self.shared.new_entry(spec);
        {
            let mut nodes = self.shared.nodes.write();
            if nodes.contains_key(&id) {
                // Lost a race with another add of the same id.
                return false;
            }
            nodes.insert(id.clone(), Arc::clone(&entry));
        }
        self.shared.mark_dirty();
        self.shared.push(HealthEvent::NodeAdded { node: id });
        if let Some(runtime) = runtime {
            self.shared.spawn_task(runtime, &entry, Duration::ZERO);
        }
        true
    }

    /// Stops tracking a node; returns whether it was tracked.
    pub fn remove_node(&self, node: &NodeId) -> bool {
        let Some(entry) = self.shared.nodes.write().remove(node) else {
            return false;
        };
        {
            let _running = self.shared.running.lock();
            let _state = entry.state.lock();
            entry.removed.store(true, Ordering::Release);
            if let Some(task) = entry.task.lock().take() {
                task.abort();
            }
        }
        self.shared.mark_dirty();
        self.shared
            .push(HealthEvent::NodeRemoved { node: node.clone() });
        self.shared.drain();
        true
    }

    /// Makes the tracked set equal to `specs`: adds the new, updates the
    /// changed (see [`add_node`](Self::add_node)), removes the missing.
    pub fn sync_nodes(&self, specs: impl IntoIterator<Item = NodeSpec>) {
        let specs: Vec<NodeSpec> = specs.into_iter().collect();
        let keep: std::collections::HashSet<&NodeId> = specs.iter().map(|s| &s.id).collect();
        let gone: Vec<NodeId> = self
            .shared
            .nodes
            .read()
            .keys()
            .filter(|id| !keep.contains(id))
            .cloned()
            .collect();
        for id in &gone {
            self.remove_node(id);
        }
        for spec in specs {
            self.add_node(spec);
        }
    }

    /// Ids of the tracked nodes, sorted.
    #[must_use]
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.shared.nodes.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The spec of a tracked node.
    #[must_use]
    pub fn node_spec(&self, node: &NodeId) -> Option<NodeSpec> {
        self.shared.entry(node).map(|e| (**e.spec.lock()).clone())
    }

    fn known(&self, node: &NodeId) -> Result<Arc<NodeEntry>, HealthError> {
        self.shared
            .entry(node)
            .ok_or_else(|| HealthError::UnknownNode { node: node.clone() })
    }

    /// Whether the node is `Healthy` (the seeds' `isHealthy`; `Degraded`
    /// is not healthy here, use the routing table for routability).
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn is_healthy(&self, node: &NodeId) -> Result<bool, HealthError> {
        Ok(self.status(node)? == NodeStatus::Healthy)
    }

    /// The node's status.
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn status(&self, node: &NodeId) -> Result<NodeStatus, HealthError> {
        Ok(self.known(node)?.state.lock().tracker.status())
    }

    /// Status and metrics of one node (the seeds' `getNodeHealth`).
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn node_health(&self, node: &NodeId) -> Result<NodeHealthReport, HealthError> {
        let entry = self.known(node)?;
        Ok(self.report(&entry))
    }

    fn report(&self, entry: &NodeEntry) -> NodeHealthReport {
        let now = self.shared.now();
        let state = entry.state.lock();
        let t = &state.tracker;
        NodeHealthReport {
            status: t.status(),
            status_since: t.status_since(),
            metrics: t.health(now),
            last_error: state.last_error.clone(),
            last_check: state.last_check,
            backoff_delay: t.backoff_delay(),
            retry_at: t.retry_at(),
            saturated_until: t.saturated_until(),
            load_penalty: t.load_penalty(now),
        }
    }

    /// Status and metrics of every node, by id (the seeds'
    /// `getAllNodeHealth`).
    #[must_use]
    pub fn all_node_health(&self) -> BTreeMap<NodeId, NodeHealthReport> {
        let entries: Vec<Arc<NodeEntry>> = self.shared.nodes.read().values().cloned().collect();
        entries
            .iter()
            .map(|e| (e.id.clone(), self.report(e)))
            .collect()
    }

    /// The cluster status aggregated from every node's status.
    #[must_use]
    pub fn cluster_status(&self) -> ClusterStatus {
        ClusterStatus::aggregate(self.routing_table().iter().map(|(_, v)| v.status))
    }

    /// Records a successful real request (the seeds' `recordSuccess`).
    /// Unknown nodes are ignored, as in the seeds; returns whether the node
    /// is tracked.
    pub fn record_success(&self, node: &NodeId, latency: Duration) -> bool {
        self.record(
            node,
            Observation::Success {
                latency: Some(latency),
            },
        )
    }

    /// Records a failed real request (the seeds' `recordFailure`), classified
    /// by [`HealthError::observation`]: an `Overloaded` or `Loading` error is
    /// recorded as such, not as a failure. Unknown nodes are ignored; returns
    /// whether the node is tracked.
    pub fn record_failure(&self, node: &NodeId, error: HealthError) -> bool {
        let Some(entry) = self.shared.entry(node) else {
            return false;
        };
        self.shared
            .observe(&entry, error.observation(), Some(error));
        true
    }

    /// Records a 429/503 answer to a real request: the node is saturated for
    /// `retry_after` (default 1 s) and its load penalty rises; it counts as a
    /// failure only when it persists (see [`tracker`](crate::tracker)).
    /// Unknown nodes are ignored; returns whether the node is tracked.
    pub fn record_overload(&self, node: &NodeId, retry_after: Option<Duration>) -> bool {
        self.record(node, Observation::Overloaded { retry_after })
    }

    /// Records any observation of a real request. Unknown nodes are
    /// ignored; returns whether the node is tracked.
    pub fn record(&self, node: &NodeId, observation: Observation) -> bool {
        let Some(entry) = self.shared.entry(node) else {
            return false;
        };
        self.shared.observe(&entry, observation, None);
        true
    }

    /// Puts a node back to `Initializing` with an empty window and backoff
    /// (the seeds' manual reset).
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn reset_node(&self, node: &NodeId) -> Result<(), HealthError> {
        let entry = self.known(node)?;
        {
            let now = self.shared.now();
            let mut state = entry.state.lock();
            let transition = state.tracker.reset(now);
            self.shared
                .after_change(&entry, &mut state, transition, now);
            entry.wake.notify_one();
        }
        self.shared.drain();
        Ok(())
    }

    /// The half-open probe permit of a node whose breaker is open and whose
    /// backoff has expired, so that one real request can serve as the
    /// probe; `None` if the breaker is closed, still backing off, or another
    /// probe is in flight. Only one caller gets it.
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn try_acquire_probe(&self, node: &NodeId) -> Result<Option<ProbeGuard>, HealthError> {
        let entry = self.known(node)?;
        let now = self.shared.now();
        let mut state = entry.state.lock();
        let Some(permit) = state.tracker.try_acquire_probe(now) else {
            return Ok(None);
        };
        self.shared.after_change(&entry, &mut state, None, now);
        drop(state);
        Ok(Some(ProbeGuard {
            shared: Arc::clone(&self.shared),
            entry,
            permit: Some(permit),
        }))
    }

    /// Every node's routing view. Costs one atomic load when nothing changed
    /// since the last call, one pass over the nodes otherwise.
    #[must_use]
    pub fn routing_table(&self) -> Arc<RoutingTable> {
        if self.shared.dirty.load(Ordering::Acquire) {
            self.shared.rebuild_table()
        } else {
            self.shared.table.load_full()
        }
    }

    /// One node's routing view, read directly.
    #[must_use]
    pub fn routing_view(&self, node: &NodeId) -> Option<RoutingView> {
        self.shared.entry(node).map(|e| e.state.lock().view)
    }

    /// A receiver of every event from now on (see the module docs on
    /// lagging).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.shared.events.subscribe()
    }

    /// The events as a `Stream` (items are `Err(Lagged(n))` when `n`
    /// events were missed).
    #[must_use]
    pub fn events(&self) -> BroadcastStream<HealthEvent> {
        BroadcastStream::new(self.subscribe())
    }
}

impl Drop for ClusterHealth {
    fn drop(&mut self) {
        self.stop();
    }
}
