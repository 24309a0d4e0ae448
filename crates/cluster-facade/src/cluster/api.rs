//! [`Cluster`]: the public API — routing, status, drain, discovery refresh,
//! metrics and shutdown over one shared state.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cluster_health::ClusterHealth;
use cluster_metrics::SharedClock;
use cluster_types::{ClusterConfig, ClusterState, Node, NodeId, NodeKind, RoutingContext};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::builder::ClusterBuilder;
use super::state::Inner;
use crate::error::FacadeError;
use crate::events::ClusterEvent;
use crate::guard::Selection;
use crate::router::Router;

/// The running cluster: one cloneable handle over discovery, health,
/// routing and cache coordination (see the [crate docs](crate)).
///
/// ```no_run
/// use cluster_facade::{Cluster, RequestOutcome};
/// use cluster_types::{ClusterConfig, RoutingContext};
///
/// # async fn run() -> Result<(), cluster_facade::FacadeError> {
/// let cluster = Cluster::start(ClusterConfig::default()).await?;
/// let selection = cluster.select(&RoutingContext::default())?;
/// // ... forward the request to selection.target.base_url ...
/// selection.guard.finish(RequestOutcome::success());
/// cluster.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.inner.router.snapshot().len())
            .field("stopped", &self.inner.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts a cluster from `config` with every default (see
    /// [`ClusterBuilder`]).
    ///
    /// # Errors
    /// [`FacadeError::InitializationFailed`] naming the failed stage.
    pub async fn start(config: ClusterConfig) -> Result<Self, FacadeError> {
        ClusterBuilder::new(config).start().await
    }

    /// A builder, to inject a clock, health checker, validator, discovery
    /// source or routing parameters.
    #[must_use]
    pub fn builder(config: ClusterConfig) -> ClusterBuilder {
        ClusterBuilder::new(config)
    }

    pub(super) fn running(&self, operation: &'static str) -> Result<(), FacadeError> {
        if self.inner.stopped.load(Ordering::Acquire) {
            Err(FacadeError::NotInitialized { operation })
        } else {
            Ok(())
        }
    }

    /// Chooses a node for a request and returns the decision, the target
    /// and the request guard. Lock-free on the node set; see
    /// [`Router::select`].
    ///
    /// # Errors
    /// [`FacadeError::NoRoutableNode`] (with every node's status);
    /// [`FacadeError::NotInitialized`] after [`shutdown`](Self::shutdown).
    pub fn select(&self, ctx: &RoutingContext) -> Result<Selection, FacadeError> {
        self.running("select")?;
        self.inner.router.select(ctx)
    }

    /// The seeds' `ClusterState`: overall status, every node (status,
    /// health, cache model, metrics, models) and aggregated metrics.
    #[must_use]
    pub fn status(&self) -> ClusterState {
        let inner = &self.inner;
        let snap = inner.router.snapshot();
        let now = inner.clock.now();
        let unix_now = unix_ms_now();
        let nodes: Vec<Node> = snap
            .entries()
            .map(|e| {
                let id = &e.spec.id;
                Node {
                    spec: e.spec.clone(),
                    status: e.status,
                    health: inner
                        .health
                        .node_health(id)
                        .map(|r| r.to_node_health(now, unix_now))
                        .unwrap_or_default(),
                    cache: inner.router.cache_state(id).unwrap_or_default(),
                    metrics: inner.router.node_metrics(id).unwrap_or_default(),
                    models: e.models.clone(),
                    kind: NodeKind::from_tags(&e.spec.tags).unwrap_or_default(),
                }
            })
            .collect();
        let metrics = inner.router.cluster_metrics();
        let mut nodes = nodes;
        nodes.extend(inner.unreachable_nodes(&snap, now, unix_now));
        ClusterState::new(nodes, metrics, unix_now)
    }

    /// A receiver of every [`ClusterEvent`] from now on (a receiver more
    /// than [`EVENT_CAPACITY`](crate::EVENT_CAPACITY) events behind loses the oldest).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.inner.events.subscribe()
    }

    /// Every model the nodes report, deduplicated and sorted.
    #[must_use]
    pub fn models(&self) -> Vec<String> {
        self.inner.router.snapshot().models()
    }

    /// Stops sending new requests to `node`; requests in flight finish.
    ///
    /// # Errors
    /// [`FacadeError::UnknownNode`]; [`FacadeError::NotInitialized`] after
    /// shutdown.
    pub fn drain(&self, node: &NodeId) -> Result<(), FacadeError> {
        self.set_drained(node, true)
    }

    /// Lets `node` take requests again.
    ///
    /// # Errors
    /// As [`drain`](Self::drain).
    pub fn undrain(&self, node: &NodeId) -> Result<(), FacadeError> {
        self.set_drained(node, false)
    }

    fn set_drained(&self, node: &NodeId, drained: bool) -> Result<(), FacadeError> {
        self.running(if drained { "drain" } else { "undrain" })?;
        if self.inner.router.snapshot().entry(node).is_none() {
            return Err(FacadeError::UnknownNode { node: node.clone() });
        }
        let changed = {
            let mut set = self.inner.drained.lock();
            if drained {
                set.insert(node.clone())
            } else {
                set.remove(node)
            }
        };
        if changed {
            self.inner.rebuild();
            self.inner.emit(if drained {
                ClusterEvent::NodeDrained { node: node.clone() }
            } else {
                ClusterEvent::NodeUndrained { node: node.clone() }
            });
        }
        Ok(())
    }

    /// The drained nodes, sorted — also those currently gone: a drained
    /// node that leaves discovery and comes back (same id) stays drained
    /// until undrained.
    #[must_use]
    pub fn drained(&self) -> Vec<NodeId> {
        self.inner.drained.lock().iter().cloned().collect()
    }

    /// Runs a discovery refresh now and waits for it (its changes are
    /// applied before this returns).
    ///
    /// # Errors
    /// [`FacadeError::Discovery`] when the source failed (the last good node
    /// set is kept); [`FacadeError::NotInitialized`] after shutdown.
    pub async fn refresh_discovery(&self) -> Result<(), FacadeError> {
        self.running("refresh_discovery")?;
        let report = self.inner.discovery.refresh_now().await;
        // Apply what changed now rather than when the event task runs.
        for node in self.inner.discovery.nodes() {
            self.inner.track(node.spec().clone());
        }
        for id in report.lost.iter() {
            self.inner.health.remove_node(id);
        }
        self.inner.rebuild();
        match report.error {
            Some(e) => Err(FacadeError::Discovery {
                source: Box::new(ArcError(e)),
            }),
            None => Ok(()),
        }
    }

    /// Prometheus / OpenMetrics text of every node's counters (names in
    /// `docs/metrics.md`).
    #[must_use]
    pub fn encode_prometheus(&self) -> String {
        self.inner.metrics.encode().unwrap_or_default()
    }

    /// Whether at least one node is healthy or degraded and not drained.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        !self.inner.stopped.load(Ordering::Acquire) && self.inner.router.snapshot().has_routable()
    }

    /// Stops discovery, health checks, cache coordination and routing, in
    /// that order. Idempotent; requests in flight keep their guards.
    pub async fn shutdown(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.emit(ClusterEvent::ShuttingDown);
        self.inner.discovery.stop().await;
        self.inner.health.stop();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.inner.tasks.lock());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The configuration in force: the one the cluster was started with,
    /// or the last one [`reload`](Self::reload) applied.
    #[must_use]
    pub fn config(&self) -> Arc<ClusterConfig> {
        self.inner.config.load_full()
    }

    /// The routing core (snapshot, cache model, per-node figures).
    #[must_use]
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The health orchestrator.
    #[must_use]
    pub fn health(&self) -> &ClusterHealth {
        &self.inner.health
    }

    /// The clock the cluster runs on.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }
}

/// `Arc<DiscoveryError>` as a boxable error.
#[derive(Debug)]
struct ArcError(Arc<cluster_discovery::DiscoveryError>);

impl std::fmt::Display for ArcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

fn unix_ms_now() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
