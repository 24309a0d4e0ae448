//! [`Gateway`]: the shared state of every handler, and its HTTP router.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster_types::{ApiKey, ClusterConfig, ObservabilityConfig, TlsConfig};

use crate::auth::ClientKeys;
use crate::backend::ClusterHandle;
use crate::error::GatewayError;
use crate::limits::ConnectionLimiter;
use crate::metrics::GatewayMetrics;
use crate::timeseries::{self, TimeSeries};
use crate::upstream::{UpstreamClient, UpstreamSettings};

/// What the request path needs from the configuration, resolved once.
///
/// [`GatewaySettings::from_config`] takes every value from the
/// [`ClusterConfig`]; its defaults are the config's defaults: body limit
/// 32 MiB, session header `x-session-id`, fingerprint blocks of 256 bytes,
/// 2 retries 100 ms apart, idle timeout 60 s, no overall request timeout,
/// connect timeout 2 s, first byte timeout 300 s, shutdown grace 30 s, no
/// admin token, no client keys, no TLS, header-read timeout 30 s, body-read
/// timeout 60 s, 8192 connections, request heads up to 64 KiB; for
/// `/v1/messages`: at most 8192 output tokens, default model
/// `default_model`, no model aliases; topology headers on, time series
/// sampled every 5 s for 15 min, tracing off.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Largest request body accepted (`gateway.max_body_bytes`).
    pub max_body_bytes: usize,
    /// Header carrying the session key (`routing.session_header`).
    pub session_header: String,
    /// Fingerprint block size (`cache.fingerprint_block_bytes`).
    pub fingerprint_block_bytes: u32,
    /// Retries on other nodes before the first byte (`routing.max_retries`).
    pub max_retries: u32,
    /// Pause before a retry (`routing.retry_delay`).
    pub retry_delay: Duration,
    /// Longest gap between two frames of an answer (`gateway.idle_timeout`).
    pub idle_timeout: Duration,
    /// Overall limit of one request, streaming included
    /// (`gateway.request_timeout`); `None` = no limit.
    pub request_timeout: Option<Duration>,
    /// How long in-flight requests may finish on shutdown
    /// (`gateway.shutdown_grace`).
    pub shutdown_grace: Duration,
    /// Bearer token of the admin endpoints (`gateway.admin_token`); `None`
    /// disables them (403).
    pub admin_token: Option<ApiKey>,
    /// Node client settings (`gateway.connect_timeout`,
    /// `gateway.first_byte_timeout`).
    pub upstream: UpstreamSettings,
    /// Client keys (`gateway.api_keys`, `gateway.api_keys_file`); `None` =
    /// open. See `auth.rs`.
    pub client_keys: Option<Arc<ClientKeys>>,
    /// Serve TLS with these files (`gateway.tls`); `None` = plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Time to send a request head, and the idle time of a kept-alive
    /// connection (`gateway.header_read_timeout`).
    pub header_read_timeout: Duration,
    /// Time to send a whole request body (`gateway.body_read_timeout`).
    pub body_read_timeout: Duration,
    /// Most open client connections (`gateway.max_connections`).
    pub max_connections: usize,
    /// Largest request head, bytes (`gateway.max_header_bytes`).
    pub max_header_bytes: usize,
    /// Cap of `max_tokens` of Messages requests (`gateway.max_output_tokens`;
    /// 0 = none).
    pub max_output_tokens: u32,
    /// Model for Messages requests naming a model no alias matches and no
    /// node lists (`gateway.default_model`).
    pub default_model: String,
    /// Model aliases of Messages requests (`gateway.model_aliases`).
    pub model_aliases: BTreeMap<String, String>,
    /// Topology headers, the dashboard's time series and tracing
    /// (`[observability]`; see `docs/observability.md`).
    pub observability: ObservabilityConfig,
}

impl GatewaySettings {
    /// Resolves the settings from a configuration, reading the files it
    /// names (`gateway.api_keys_file`).
    ///
    /// # Errors
    /// [`GatewayError::Config`] when the key file cannot be read or has
    /// problems.
    pub fn load(config: &ClusterConfig) -> Result<Self, GatewayError> {
        let mut settings = Self::from_config(config);
        settings.client_keys = ClientKeys::load(&config.gateway)?.map(Arc::new);
        Ok(settings)
    }

    /// Resolves the settings from a configuration without reading files:
    /// with `gateway.api_keys_file` set, authentication is on but only the
    /// inline `gateway.api_keys` are accepted until [`load`](Self::load)
    /// reads the file.
    #[must_use]
    pub fn from_config(config: &ClusterConfig) -> Self {
        let g = &config.gateway;
        Self {
            max_body_bytes: usize::try_from(g.max_body_bytes).unwrap_or(usize::MAX),
            session_header: config.routing.session_header.to_ascii_lowercase(),
            fingerprint_block_bytes: config.cache.fingerprint_block_bytes,
            max_retries: config.routing.max_retries,
            retry_delay: config.routing.retry_delay,
            idle_timeout: g.idle_timeout,
            request_timeout: g.request_timeout,
            shutdown_grace: g.shutdown_grace,
            admin_token: g.admin_token.clone().filter(|t| !t.is_empty()),
            upstream: UpstreamSettings {
                connect_timeout: g.connect_timeout,
                first_byte_timeout: g.first_byte_timeout,
                ..UpstreamSettings::default()
            },
            client_keys: ClientKeys::from_config_inline(g).map(Arc::new),
            tls: g.tls.clone(),
            header_read_timeout: g.header_read_timeout,
            body_read_timeout: g.body_read_timeout,
            max_connections: usize::try_from(g.max_connections).unwrap_or(usize::MAX),
            max_header_bytes: usize::try_from(g.max_header_bytes).unwrap_or(usize::MAX),
            max_output_tokens: g.max_output_tokens,
            default_model: g.default_model.clone(),
            model_aliases: g.model_aliases.clone(),
            observability: config.observability.clone(),
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self::from_config(&ClusterConfig::default())
    }
}

/// The gateway: the cluster handle, the node client, settings and counters.
/// Shared by every handler behind an `Arc`.
pub struct Gateway {
    cluster: Box<dyn ClusterHandle>,
    upstream: UpstreamClient,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    shutting_down: AtomicBool,
    connections: Arc<ConnectionLimiter>,
    /// Set by `serve`: what the config reload and runtime-node admin
    /// endpoints act on.
    reloader: std::sync::OnceLock<crate::reload::ConfigReloader>,
    timeseries: TimeSeries,
}

impl Gateway {
    /// A gateway over a started cluster, with the settings of the cluster's
    /// configuration. Must be called inside a Tokio runtime.
    #[must_use]
    pub fn from_cluster(cluster: cluster_facade::Cluster) -> Arc<Self> {
        let settings = GatewaySettings::from_config(&cluster.config());
        Self::new(cluster, settings)
    }

    /// A gateway over `cluster` (a started `cluster_facade::Cluster`, or a
    /// bare `Router`) with `settings`. Must be called inside a Tokio runtime:
    /// it starts the task sampling the dashboard's time series (which ends
    /// when the gateway is dropped).
    #[must_use]
    pub fn new(cluster: impl ClusterHandle, settings: GatewaySettings) -> Arc<Self> {
        let interval = settings.observability.sample_interval;
        let gateway = Arc::new(Self {
            upstream: UpstreamClient::new(settings.upstream),
            connections: ConnectionLimiter::new(settings.max_connections),
            cluster: Box::new(cluster),
            timeseries: TimeSeries::new(interval, settings.observability.samples_kept()),
            settings,
            metrics: GatewayMetrics::default(),
            shutting_down: AtomicBool::new(false),
            reloader: std::sync::OnceLock::new(),
        });
        tokio::spawn(timeseries::run(Arc::downgrade(&gateway), interval));
        gateway
    }

    /// Enables `POST /admin/config/reload` and the runtime node endpoints
    /// (`serve` does; without it they answer 501). Set once.
    pub fn set_reloader(&self, reloader: crate::reload::ConfigReloader) {
        let _ = self.reloader.set(reloader);
    }

    /// The reloader, when set.
    #[must_use]
    pub fn reloader(&self) -> Option<&crate::reload::ConfigReloader> {
        self.reloader.get()
    }

    /// The cluster.
    #[must_use]
    pub fn cluster(&self) -> &dyn ClusterHandle {
        &*self.cluster
    }

    /// The node client.
    #[must_use]
    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// The resolved settings.
    #[must_use]
    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    /// The open client connections and the accept loop's counters.
    #[must_use]
    pub fn connections(&self) -> &Arc<ConnectionLimiter> {
        &self.connections
    }

    /// The gateway's own counters.
    #[must_use]
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// The dashboard's time series.
    #[must_use]
    pub fn timeseries(&self) -> &TimeSeries {
        &self.timeseries
    }

    /// Marks the gateway as shutting down: `/readyz` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether [`begin_shutdown`](Self::begin_shutdown) was called.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("settings", &self.settings)
            .field("metrics", &self.metrics)
            .field("shutting_down", &self.is_shutting_down())
            .finish_non_exhaustive()
    }
}
