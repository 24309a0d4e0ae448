//! [`ClusterBuilder`]: a [`Cluster`] with injected parts, started stage by
//! stage (discovery, health, routing, cache coordination).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use cluster_discovery::{
    ClusterDiscovery, DiscoverySource, NodeValidator, options_from_config, source_from_config,
};
use cluster_health::{ClusterHealth, HealthChecker, TokioClock};
use cluster_metrics::{MetricsRegistry, SharedClock};
use cluster_types::{ClusterConfig, ClusterStatus};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::api::Cluster;
use super::health_link::{HealthGate, HealthObserver};
use super::state::Inner;
use crate::coordinator::Coordinator;
use crate::error::FacadeError;
use crate::layered::LayeredSource;
use crate::params::RouterParams;
use crate::router::Router;

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
            unreachable: Mutex::new(BTreeMap::new()),
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
