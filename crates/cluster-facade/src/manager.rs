//! [`Cluster`]: discovery → health → routing → cache coordination, behind
//! one cloneable handle (the seeds' `ClusterManager`, without the
//! process-wide singleton).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use cluster_discovery::{
    ClusterDiscovery, DiscoveryEvent, DiscoverySource, NodeValidator, ValidatedNode,
    options_from_config, source_from_config,
};
use cluster_health::{
    ClusterHealth, HealthChecker, HealthEvent, Observation, ProbeGuard, TokioClock,
};
use cluster_metrics::{MetricsRegistry, SharedClock};
use cluster_types::{
    ClusterConfig, ClusterState, ClusterStatus, KIND_TAG, Node, NodeId, NodeKind, NodeStatus,
    RoutingContext,
};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::coordinator::{self, Coordinator};
use crate::error::FacadeError;
use crate::events::ClusterEvent;
use crate::guard::{ProbeGate, ProbeTicket, RequestOutcome, Selection};
use crate::layered::LayeredSource;
use crate::params::RouterParams;
use crate::router::{OutcomeObserver, Router, TAG_CACHE_ENTRIES, TAG_CACHE_TOKENS};
use crate::snapshot::NodeEntry;

/// Capacity of the cluster's event channel: 1024 events.
pub const EVENT_CAPACITY: usize = 1024;

/// Starts a [`Cluster`] with optional injected parts (tests, simulations,
/// custom discovery).
///
/// Defaults: discovery source from `config.discovery`, HTTP validation and
/// HTTP health checks, the tokio clock (which follows
/// `tokio::time::pause`), [`RouterParams::from_config`], a fresh
/// `reqwest::Client` for warm-up and cache sync.
pub struct ClusterBuilder {
    config: ClusterConfig,
    clock: Option<SharedClock>,
    checker: Option<Arc<dyn HealthChecker>>,
    validator: Option<Arc<dyn NodeValidator>>,
    source: Option<Arc<dyn DiscoverySource>>,
    params: Option<RouterParams>,
    http: Option<reqwest::Client>,
    seed: Option<u64>,
}

impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("config", &self.config)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl ClusterBuilder {
    /// A builder for `config` with every default.
    #[must_use]
    pub fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            clock: None,
            checker: None,
            validator: None,
            source: None,
            params: None,
            http: None,
            seed: None,
        }
    }

    /// Time source for health and routing. Default: the tokio clock.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Active health checker. Default: HTTP `GET {url}{health.probe_path}`.
    #[must_use]
    pub fn health_checker(mut self, checker: Arc<dyn HealthChecker>) -> Self {
        self.checker = Some(checker);
        self
    }

    /// Validator of newly discovered nodes. Default: HTTP `GET
    /// {url}/v1/models`.
    #[must_use]
    pub fn node_validator(mut self, validator: Arc<dyn NodeValidator>) -> Self {
        self.validator = Some(validator);
        self
    }

    /// Discovery source. Default: built from `config.discovery`.
    #[must_use]
    pub fn discovery_source(mut self, source: Arc<dyn DiscoverySource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Routing parameters. Default: [`RouterParams::from_config`].
    #[must_use]
    pub fn router_params(mut self, params: RouterParams) -> Self {
        self.params = Some(params);
        self
    }

    /// HTTP client for warm-up and cache sync. Default: a new client.
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Seed of the health backoff jitter and the router's RNG. Default:
    /// random for health, [`RouterParams::seed`] for routing.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Starts discovery (first refresh included), then health checking,
    /// then routing, then cache coordination. Must run inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`FacadeError::InitializationFailed`] naming the stage that failed.
    pub async fn start(self) -> Result<Cluster, FacadeError> {
        let config = self.config;
        let clock: SharedClock = self.clock.unwrap_or_else(|| Arc::new(TokioClock));
        let init = |stage: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| FacadeError::InitializationFailed {
                stage,
                source: e,
            }
        };

        // 1. Discovery.
        let source = match self.source {
            Some(s) => s,
            None => source_from_config(&config.discovery)
                .await
                .map_err(|e| init("discovery")(Box::new(e)))?,
        };
        let layered = Arc::new(LayeredSource::new(source));
        // The global node_tls under every node's own TLS settings, runtime
        // nodes included (a reload that changes it needs a restart).
        let discovered = crate::node_tls::WithNodeTls::wrap(
            Arc::clone(&layered) as Arc<dyn DiscoverySource>,
            &config.node_tls,
        );
        let mut builder =
            ClusterDiscovery::builder(discovered).options(options_from_config(&config.discovery));
        if let Some(v) = self.validator {
            builder = builder.shared_validator(v);
        }
        let discovery = builder.build();
        let discovery_events = discovery.subscribe();
        let first = discovery
            .start()
            .await
            .map_err(|e| init("discovery")(Box::new(e)))?;
        if let Some(error) = &first.error {
            tracing::warn!(%error, "first discovery refresh failed; retrying in the background");
        }

        // 2. Health.
        let mut hb = ClusterHealth::builder()
            .config(config.health.clone())
            .backoff(config.backoff.clone())
            .clock(Arc::clone(&clock));
        if let Some(c) = self.checker {
            hb = hb.checker(c);
        }
        if let Some(seed) = self.seed {
            hb = hb.seed(seed);
        }
        let health = Arc::new(hb.build().map_err(|e| init("health")(Box::new(e)))?);
        let health_events = health.subscribe();
        health
            .start(std::iter::empty())
            .map_err(|e| init("health")(Box::new(e)))?;

        // 3. Routing.
        let mut params = self
            .params
            .unwrap_or_else(|| RouterParams::from_config(&config));
        if let Some(seed) = self.seed {
            params.seed = seed;
        }
        let router = Router::new(params, Arc::clone(&clock));
        router.set_observer(Arc::new(HealthObserver(Arc::clone(&health))));
        router.set_probe_gate(Arc::new(HealthGate(Arc::clone(&health))));

        // 4. Cache coordination.
        let http = match self.http {
            Some(c) => c,
            None => reqwest::Client::builder()
                .build()
                .map_err(|e| init("cache coordination")(Box::new(e)))?,
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let inner = Arc::new(Inner {
            coordinator: Coordinator::new(http, &config.cache),
            metrics: MetricsRegistry::with_clock(Arc::clone(&clock)),
            config: ArcSwap::from_pointee(config),
            layered,
            reload: tokio::sync::Mutex::new(()),
            clock,
            discovery,
            health,
            router,
            events,
            drained: Mutex::new(BTreeSet::new()),
            unreachable: Mutex::new(std::collections::BTreeMap::new()),
            last_status: Mutex::new(ClusterStatus::Starting),
            rebuild: Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        // Nodes found by the first refresh: tracked and routable now.
        for node in inner.discovery.nodes() {
            inner.track(node.spec().clone());
        }
        inner.rebuild();
        Inner::spawn_tasks(&inner, discovery_events, health_events);
        for node in inner.discovery.nodes() {
            Inner::spawn_warmup(&inner, node.spec().clone(), node.models.first().cloned());
        }
        Ok(Cluster { inner })
    }
}

/// A node that failed validation, as last seen.
struct Unreachable {
    url: String,
    reason: String,
    at: std::time::Instant,
}

/// How long a node that failed validation stays in the status without
/// failing again (discovery retries it at every refresh): 3 refreshes, at
/// least 90 s.
fn unreachable_ttl(refresh: Duration) -> Duration {
    (refresh * 3).max(Duration::from_secs(90))
}

/// Feeds passive outcomes of real requests to health.
struct HealthObserver(Arc<ClusterHealth>);

fn observation(outcome: &RequestOutcome, latency: Duration) -> Option<Observation> {
    match outcome {
        RequestOutcome::Success { .. } => Some(Observation::Success {
            latency: Some(latency),
        }),
        RequestOutcome::Overloaded { retry_after } => Some(Observation::Overloaded {
            retry_after: *retry_after,
        }),
        RequestOutcome::Failed { .. } => Some(Observation::Failure),
        _ => None,
    }
}

impl OutcomeObserver for HealthObserver {
    fn observe(&self, node: &NodeId, outcome: &RequestOutcome, latency: Duration) {
        if let Some(obs) = observation(outcome, latency) {
            self.0.record(node, obs);
        }
    }
}

/// Hands out health's half-open probe permits to requests.
struct HealthGate(Arc<ClusterHealth>);

struct HealthTicket(ProbeGuard);

impl ProbeTicket for HealthTicket {
    fn complete(self: Box<Self>, outcome: &RequestOutcome, latency: Duration) {
        match observation(outcome, latency) {
            Some(obs) => self.0.complete(obs),
            // Cancelled: dropping the guard frees the slot for the next probe.
            None => drop(self.0),
        }
    }
}

impl ProbeGate for HealthGate {
    fn try_acquire(&self, node: &NodeId) -> Option<Box<dyn ProbeTicket>> {
        match self.0.try_acquire_probe(node) {
            Ok(Some(guard)) => Some(Box::new(HealthTicket(guard))),
            _ => None,
        }
    }
}

pub(crate) struct Inner {
    /// The configuration in force (swapped by [`Cluster::reload`]).
    pub(crate) config: ArcSwap<ClusterConfig>,
    /// The configured source plus the nodes added at run time.
    pub(crate) layered: Arc<LayeredSource>,
    /// Serialises reloads and runtime node changes.
    pub(crate) reload: tokio::sync::Mutex<()>,
    clock: SharedClock,
    pub(crate) discovery: ClusterDiscovery,
    pub(crate) health: Arc<ClusterHealth>,
    pub(crate) router: Router,
    coordinator: Coordinator,
    metrics: MetricsRegistry,
    events: broadcast::Sender<ClusterEvent>,
    drained: Mutex<BTreeSet<NodeId>>,
    /// Nodes discovery found but could not validate (refused, wrong
    /// certificate, not an inference server): shown offline in the status
    /// with the reason, until they validate or stop being found.
    unreachable: Mutex<std::collections::BTreeMap<NodeId, Unreachable>>,
    last_status: Mutex<ClusterStatus>,
    /// Serialises snapshot rebuilds.
    rebuild: Mutex<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
}

impl Inner {
    pub(crate) fn emit(&self, event: ClusterEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// The spec the rest of the cluster sees for a validated node: its
    /// discovered spec plus what validation and sync learned, as tags the
    /// user did not set themselves — `kind` (health probes the kind's
    /// path), llama.cpp's slot count as `prompt_cache_entries` (one cached
    /// prompt per slot), a published KV capacity as `prompt_cache_tokens`.
    fn effective_spec(&self, node: &ValidatedNode) -> cluster_types::NodeSpec {
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
    fn unreachable_nodes(
        &self,
        snap: &crate::snapshot::ClusterSnapshot,
        now: std::time::Instant,
        unix_now: u64,
    ) -> Vec<Node> {
        let ttl = unreachable_ttl(self.discovery.options().refresh_interval);
        let mut unreachable = self.unreachable.lock();
        unreachable
            .retain(|id, u| snap.entry(id).is_none() && now.saturating_duration_since(u.at) <= ttl);
        unreachable
            .iter()
            .map(|(id, u)| {
                let mut node = Node::new(cluster_types::NodeSpec::new(id.clone(), u.url.clone()));
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
    pub(crate) fn track(&self, spec: cluster_types::NodeSpec) {
        let id = spec.id.clone();
        if self.health.add_node(spec) {
            self.health
                .record(&id, Observation::Success { latency: None });
        }
    }

    /// Publishes a new snapshot from discovery's nodes, health's statuses
    /// and the drain set; syncs the metrics registry; announces a cluster
    /// status change.
    pub(crate) fn rebuild(&self) {
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

    fn on_discovery(self: &Arc<Self>, event: DiscoveryEvent) {
        match event {
            DiscoveryEvent::Discovered(node) => {
                self.unreachable.lock().remove(node.id());
                self.coordinator.sync.forget(node.id());
                self.track(self.effective_spec(&node));
                self.rebuild();
                self.emit(ClusterEvent::NodeDiscovered {
                    node: node.id().clone(),
                    url: node.url().to_owned(),
                    models: node.models.clone(),
                });
                Self::spawn_warmup(self, node.spec().clone(), node.models.first().cloned());
            }
            DiscoveryEvent::Lost(node) => {
                // A drained node stays drained if it comes back (same id).
                self.health.remove_node(node.id());
                self.rebuild();
                self.emit(ClusterEvent::NodeLost {
                    node: node.id().clone(),
                });
            }
            DiscoveryEvent::Updated { current, .. } => {
                self.health.add_node(self.effective_spec(&current));
                self.rebuild();
                self.emit(ClusterEvent::NodeUpdated {
                    node: current.id().clone(),
                });
            }
            DiscoveryEvent::Error(error) => {
                if let Some(node) = error.node()
                    && let Some(url) = error.url()
                {
                    self.unreachable.lock().insert(
                        node.clone(),
                        Unreachable {
                            url: url.to_owned(),
                            reason: error.to_string(),
                            at: self.clock.now(),
                        },
                    );
                }
                self.emit(ClusterEvent::DiscoveryFailed {
                    message: error.to_string(),
                });
            }
            _ => {}
        }
    }

    fn on_health(&self, event: HealthEvent) {
        match event {
            HealthEvent::StatusChanged(change) => {
                self.rebuild();
                self.emit(ClusterEvent::NodeStatusChanged {
                    node: change.node,
                    from: change.from,
                    to: change.to,
                });
            }
            HealthEvent::Saturated { node, until } => {
                self.router.mark_saturated(&node, until);
                let now = self.clock.now();
                let ms = u64::try_from(until.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX);
                self.emit(ClusterEvent::NodeSaturated {
                    node,
                    retry_after_ms: ms,
                });
            }
            _ => {}
        }
    }

    fn spawn_tasks(
        this: &Arc<Self>,
        mut discovery_events: broadcast::Receiver<DiscoveryEvent>,
        mut health_events: broadcast::Receiver<HealthEvent>,
    ) {
        let mut tasks = this.tasks.lock();
        let weak: Weak<Self> = Arc::downgrade(this);
        tasks.push(tokio::spawn(async move {
            loop {
                let event = discovery_events.recv().await;
                let Some(inner) = weak.upgrade() else { break };
                match event {
                    Ok(e) => inner.on_discovery(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for node in inner.discovery.nodes() {
                            inner.track(inner.effective_spec(&node));
                        }
                        inner.rebuild();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
        let weak: Weak<Self> = Arc::downgrade(this);
        tasks.push(tokio::spawn(async move {
            loop {
                let event = health_events.recv().await;
                let Some(inner) = weak.upgrade() else { break };
                match event {
                    Ok(e) => inner.on_health(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => inner.rebuild(),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
        let weak: Weak<Self> = Arc::downgrade(this);
        tasks.push(tokio::spawn(async move {
            loop {
                // Read each round: a reload may change it.
                let interval = match weak.upgrade() {
                    Some(inner) => inner
                        .config
                        .load()
                        .cache
                        .sync_interval
                        .max(Duration::from_millis(100)),
                    None => break,
                };
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { break };
                inner.housekeeping().await;
            }
        }));
    }

    /// Expiry of cache entries and sessions, then cache sync.
    async fn housekeeping(&self) {
        let now = self.clock.now();
        self.router.expire(now);
        let snap = self.router.snapshot();
        let timeout = self.config.load().health.timeout;
        let mut capacity_changed = false;
        for entry in snap.entries() {
            if !entry.status.is_routable() {
                continue;
            }
            let kind = NodeKind::from_tags(&entry.spec.tags).unwrap_or_default();
            let Some(report) = coordinator::sync_node(
                &self.coordinator.http,
                &self.coordinator.sync,
                &entry.spec,
                kind,
                timeout,
            )
            .await
            else {
                continue;
            };
            let id = &entry.spec.id;
            capacity_changed |=
                coordinator::apply_report(&self.router, &self.coordinator.sync, id, &report);
            if let Some(entries) = report.entries {
                self.emit(ClusterEvent::CacheSynced {
                    node: id.clone(),
                    entries,
                });
            }
        }
        if capacity_changed {
            self.rebuild();
        }
    }

    fn spawn_warmup(this: &Arc<Self>, spec: cluster_types::NodeSpec, model: Option<String>) {
        if this.config.load().cache.warmup_prompts.is_empty()
            || this.stopped.load(Ordering::Acquire)
        {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(this);
        let task = tokio::spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            let limit = Arc::clone(&inner.coordinator.warmup_limit);
            let result = coordinator::warm_up(
                &inner.coordinator.http,
                &inner.router,
                &limit,
                &inner.config.load().cache,
                &spec,
                model.as_deref(),
            )
            .await;
            inner.emit(ClusterEvent::WarmupFinished {
                node: spec.id.clone(),
                warmed: result.warmed,
                failed: result.failed,
            });
        });
        let mut tasks = this.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

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
    pub(crate) inner: Arc<Inner>,
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

    pub(crate) fn running(&self, operation: &'static str) -> Result<(), FacadeError> {
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
    /// than [`EVENT_CAPACITY`] events behind loses the oldest).
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
