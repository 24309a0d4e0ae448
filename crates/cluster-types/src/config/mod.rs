//! Configuration schema: [`ClusterConfig`] and its sections.
//!
//! Every section has a `Default`; every field may be omitted in a config
//! file and takes the default stated in its doc comment (and in
//! `docs/configuration.md`, generated from [`config_reference_markdown`]).
//! Unknown keys are rejected. Durations are strings like `"5s"` (see
//! [`crate::duration`]).
//!
//! Parsing lives in [`ClusterConfig::parse`] / [`ClusterConfig::parse_with_env`];
//! environment overrides in [`apply_env_overrides`]; semantic checks in
//! [`ClusterConfig::validate`].

mod access;
mod env;
mod observability;
mod parse;
mod reference;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fingerprint::DEFAULT_BLOCK_BYTES;
use crate::node::{ApiKey, NodeSpec};
use crate::routing::LoadBalanceStrategy;

pub use access::{ClientKey, TlsConfig, is_sha256_hex, is_valid_key_name, parse_api_keys_file};
pub use env::{ENV_PREFIX, apply_env_overrides};
pub use observability::{MAX_DECISION_LOG_SIZE, ObservabilityConfig};
pub use parse::{ConfigErrors, ConfigFormat, ConfigProblem};
pub use reference::{ReferenceEntry, config_reference, config_reference_markdown};

/// The whole configuration of a cluster gateway.
///
/// `Default`: static discovery of one node `local` at
/// `http://127.0.0.1:8080`, and every section at its defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where nodes come from. Default: static, one local node.
    pub discovery: DiscoveryConfig,
    /// Active health checks and state thresholds.
    pub health: HealthConfig,
    /// Backoff before re-probing an unhealthy node.
    pub backoff: BackoffConfig,
    /// Prompt-cache modelling and warm-up.
    pub cache: CacheConfig,
    /// Load balancing, retries and sticky sessions.
    pub routing: RoutingConfig,
    /// The HTTP front end.
    pub gateway: GatewayConfig,
    /// Certificate verification toward `https://` nodes (each node's own
    /// `tls` wins). Default: system roots, verification on.
    pub node_tls: crate::NodeTls,
    /// Decision records, topology headers, dashboard history, tracing.
    pub observability: ObservabilityConfig,
}

/// Health checking (the seeds' `HealthConfig`).
///
/// Defaults: `check_interval` 5s, `timeout` 2s, `max_consecutive_failures` 3,
/// `unhealthy_threshold` 0.5, `degraded_threshold` 0.8,
/// `recovery_successes` 5, `probe_path` unset (by node kind), `window` 30s,
/// `max_samples` 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between active probes of a node. Default 5s.
    #[serde(with = "crate::duration")]
    pub check_interval: Duration,
    /// Timeout of one probe; must be shorter than `check_interval`. Default 2s.
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Consecutive failures that make a node unhealthy regardless of its
    /// success rate. Default 3.
    pub max_consecutive_failures: u32,
    /// Success rate below which a node is unhealthy, 0.0–1.0. Default 0.5.
    pub unhealthy_threshold: f64,
    /// Success rate below which a node is degraded, 0.0–1.0, at least
    /// `unhealthy_threshold`. Default 0.8.
    pub degraded_threshold: f64,
    /// Consecutive successes that bring a node back to healthy. Default 5.
    pub recovery_successes: u32,
    /// Path probed on each node (appended to its base URL). Default unset:
    /// the path of the node's kind ([`crate::NodeKind::default_probe_path`]:
    /// `/health` for mlx_lm.server, llama.cpp, vLLM and SGLang — the one
    /// that fails when mlx_lm.server's generation thread died or llama.cpp
    /// is loading — and `/v1/models` for generic nodes).
    pub probe_path: Option<String>,
    /// Rolling window for success rate and latency. Default 30s.
    #[serde(with = "crate::duration")]
    pub window: Duration,
    /// Most samples kept in the rolling window. Default 100.
    pub max_samples: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            max_consecutive_failures: 3,
            unhealthy_threshold: 0.5,
            degraded_threshold: 0.8,
            recovery_successes: 5,
            probe_path: None,
            window: Duration::from_secs(30),
            max_samples: 100,
        }
    }
}

/// Jittered exponential backoff (the seeds' `BackoffConfig`): delay `n` is
/// `min(max, initial × multiplier^n)`, then multiplied by a random factor
/// in `[1 − jitter, 1 + jitter]`.
///
/// Defaults: `initial` 1s, `max` 60s, `multiplier` 2.0, `jitter` 0.2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay. Default 1s.
    #[serde(with = "crate::duration")]
    pub initial: Duration,
    /// Largest delay; at least `initial`. Default 60s.
    #[serde(with = "crate::duration")]
    pub max: Duration,
    /// Growth factor per attempt, ≥ 1. Default 2.0.
    pub multiplier: f64,
    /// Relative random spread, 0.0–1.0 (0.2 = ±20%). Default 0.2.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// Prompt-cache modelling and warm-up (the seeds' `CacheConfig`).
///
/// Defaults: `max_prefixes_per_node` 10 (mlx_lm.server's prompt-cache
/// size), `max_tokens_per_node` 131072, `entry_ttl` 30m,
/// `fingerprint_block_bytes` 256, `sync_interval` 10s, `warmup_prompts`
/// empty, `warmup_concurrency` 2, `warmup_timeout` 120s, `warmup_retries` 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Prompt prefixes a node keeps (its LRU size); the router forgets the
    /// least recently used beyond this. Default 10 (mlx_lm default).
    pub max_prefixes_per_node: u32,
    /// Prompt tokens a node's cache is assumed to hold in total. Default
    /// 131072.
    pub max_tokens_per_node: u64,
    /// A cached prefix not used for this long is assumed evicted. Default 30m.
    #[serde(with = "crate::duration")]
    pub entry_ttl: Duration,
    /// Block size of prompt fingerprints, in bytes of canonical prompt text
    /// (≈ 4 bytes per token), 16–1048576. Smaller blocks match prefixes more
    /// finely but cost more hashes. Default 256.
    pub fingerprint_block_bytes: u32,
    /// How often the per-node cache model is pruned (TTL) and republished.
    /// Default 10s.
    #[serde(with = "crate::duration")]
    pub sync_interval: Duration,
    /// System prompts sent to every new node (a 1-token completion) so its
    /// cache is warm before real traffic. Default empty.
    pub warmup_prompts: Vec<String>,
    /// Warm-up requests in flight at once per node. Default 2.
    pub warmup_concurrency: u32,
    /// Timeout of one warm-up request (prefill of a long prompt is slow).
    /// Default 120s.
    #[serde(with = "crate::duration")]
    pub warmup_timeout: Duration,
    /// Retries of a failed warm-up request. Default 2.
    pub warmup_retries: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_prefixes_per_node: 10,
            max_tokens_per_node: 131_072,
            entry_ttl: Duration::from_secs(30 * 60),
            fingerprint_block_bytes: DEFAULT_BLOCK_BYTES,
            sync_interval: Duration::from_secs(10),
            warmup_prompts: Vec::new(),
            warmup_concurrency: 2,
            warmup_timeout: Duration::from_secs(120),
            warmup_retries: 2,
        }
    }
}

/// URL scheme used to reach discovered nodes. Default `http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `http`.
    #[default]
    Http,
    /// `https`.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// Where nodes come from (the seeds' `DiscoveryConfig`): a tagged enum on
/// the key `mode` = `static` | `dns` | `kubernetes` | `mdns`.
///
/// Default: [`DiscoveryConfig::Static`] with [`StaticDiscovery::default`]
/// (one node `local` at `http://127.0.0.1:8080`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum DiscoveryConfig {
    /// A fixed list of nodes.
    Static(StaticDiscovery),
    /// DNS SRV records.
    Dns(DnsDiscovery),
    /// Kubernetes EndpointSlices of a Service (or selected by labels).
    Kubernetes(KubernetesDiscovery),
    /// mDNS / DNS-SD browsing on the local network.
    Mdns(MdnsDiscovery),
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self::Static(StaticDiscovery::default())
    }
}

impl DiscoveryConfig {
    /// `"static"`, `"dns"`, `"kubernetes"` or `"mdns"`.
    #[must_use]
    pub const fn mode(&self) -> &'static str {
        match self {
            Self::Static(_) => "static",
            Self::Dns(_) => "dns",
            Self::Kubernetes(_) => "kubernetes",
            Self::Mdns(_) => "mdns",
        }
    }

    /// How long discovery waits for a new node's `GET /v1/models`.
    #[must_use]
    pub const fn validation_timeout(&self) -> Duration {
        match self {
            Self::Static(s) => s.validation_timeout,
            Self::Dns(d) => d.validation_timeout,
            Self::Kubernetes(k) => k.validation_timeout,
            Self::Mdns(m) => m.validation_timeout,
        }
    }
}

/// Static discovery: a fixed node list, re-validated periodically.
///
/// Defaults: `nodes` = one node `local` at `http://127.0.0.1:8080`,
/// `refresh_interval` 30s, `validation_timeout` 2s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticDiscovery {
    /// The nodes (at least one; ids and URLs unique).
    pub nodes: Vec<NodeSpec>,
    /// How often the list is re-checked. Default 30s.
    #[serde(with = "crate::duration")]
    pub refresh_interval: Duration,
    /// Timeout of a new node's validation request. Default 2s.
    #[serde(with = "crate::duration")]
    pub validation_timeout: Duration,
}

impl Default for StaticDiscovery {
    fn default() -> Self {
        Self {
            nodes: vec![NodeSpec::new("local", "http://127.0.0.1:8080")],
            refresh_interval: Duration::from_secs(30),
            validation_timeout: Duration::from_secs(2),
        }
    }
}

/// DNS discovery: SRV records of `srv_name`; each target:port is a node
/// (id = `target:port`). Re-resolved after the records' TTL, clamped to
/// `[min_refresh, max_refresh]`.
///
/// Defaults: `srv_name` empty (required), `nameserver` none (system
/// resolver), `port_override` none, `scheme` http, `min_refresh` 5s,
/// `max_refresh` 60s, `validation_timeout` 2s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsDiscovery {
    /// SRV name, e.g. `_mlx._tcp.cluster.local`. Required.
    pub srv_name: String,
    /// DNS server to ask (`ip:port`) instead of the system resolver.
    /// Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<SocketAddr>,
    /// Port used instead of the SRV records' ports. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_override: Option<u16>,
    /// Scheme of node URLs. Default `http`.
    pub scheme: Scheme,
    /// Shortest time between resolutions. Default 5s.
    #[serde(with = "crate::duration")]
    pub min_refresh: Duration,
    /// Longest time between resolutions. Default 60s.
    #[serde(with = "crate::duration")]
    pub max_refresh: Duration,
    /// Timeout of a new node's validation request. Default 2s.
    #[serde(with = "crate::duration")]
    pub validation_timeout: Duration,
}

impl Default for DnsDiscovery {
    fn default() -> Self {
        Self {
            srv_name: String::new(),
            nameserver: None,
            port_override: None,
            scheme: Scheme::Http,
            min_refresh: Duration::from_secs(5),
            max_refresh: Duration::from_secs(60),
            validation_timeout: Duration::from_secs(2),
        }
    }
}

/// Kubernetes discovery: ready endpoints of the EndpointSlices of a Service
/// (`service_name`) or of slices matching `label_selector` — exactly one of
/// the two.
///
/// Defaults: `namespace` `default`, `service_name` none, `label_selector`
/// none, `port_name` `http`, `scheme` http, `validation_timeout` 2s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Namespace to watch. Default `default`.
    pub namespace: String,
    /// Service whose EndpointSlices to watch. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Label selector for EndpointSlices, e.g. `app=mlx`. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Name of the endpoint port to use. Default `http`.
    pub port_name: String,
    /// Scheme of node URLs. Default `http`.
    pub scheme: Scheme,
    /// Timeout of a new node's validation request. Default 2s.
    #[serde(with = "crate::duration")]
    pub validation_timeout: Duration,
}

impl Default for KubernetesDiscovery {
    fn default() -> Self {
        Self {
            namespace: "default".to_owned(),
            service_name: None,
            label_selector: None,
            port_name: "http".to_owned(),
            scheme: Scheme::Http,
            validation_timeout: Duration::from_secs(2),
        }
    }
}

/// The DNS-SD service types browsed by default: `_mlx-lm._tcp.local.`
/// (what `mlx-cluster announce` advertises) and `_openai._tcp.local.`.
pub const DEFAULT_MDNS_SERVICE_TYPES: [&str; 2] = ["_mlx-lm._tcp.local.", "_openai._tcp.local."];

/// The mDNS port (RFC 6762): 5353.
pub const MDNS_PORT: u16 = 5353;

/// mDNS / DNS-SD discovery: every instance of the browsed service types on
/// the local network is a node (id = instance name, URL from the resolved
/// address and port, weight / model / kind / tags from TXT keys; see
/// `docs/discovery.md`). Instances appear, change and leave as they are
/// announced, updated and withdrawn (goodbye packets or TTL expiry).
///
/// Defaults: `service_types` `["_mlx-lm._tcp.local.", "_openai._tcp.local."]`,
/// `interfaces` empty (every multicast-capable interface), `port` 5353,
/// `scheme` http, `validation_timeout` 2s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MdnsDiscovery {
    /// Service types browsed, each `_name._tcp.local.` (the final dot is
    /// optional). Default `["_mlx-lm._tcp.local.", "_openai._tcp.local."]`.
    pub service_types: Vec<String>,
    /// Network interfaces (by name, e.g. `en0`) to browse on; empty = every
    /// interface that can multicast. Default empty.
    pub interfaces: Vec<String>,
    /// UDP port of mDNS. Default 5353; another port only talks to peers
    /// configured alike (tests, labs).
    pub port: u16,
    /// Scheme of node URLs, unless an instance's TXT `scheme` says
    /// otherwise. Default `http`.
    pub scheme: Scheme,
    /// Timeout of a new node's validation request. Default 2s.
    #[serde(with = "crate::duration")]
    pub validation_timeout: Duration,
}

impl Default for MdnsDiscovery {
    fn default() -> Self {
        Self {
            service_types: DEFAULT_MDNS_SERVICE_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            interfaces: Vec::new(),
            port: MDNS_PORT,
            scheme: Scheme::Http,
            validation_timeout: Duration::from_secs(2),
        }
    }
}

/// Load balancing, retries and sticky sessions (the seeds' `RoutingConfig`).
///
/// Defaults: `strategy` cache-aware, `max_retries` 2, `retry_delay` 100ms,
/// `session_ttl` 30m, `session_header` `x-session-id`, `max_sessions` 100000,
/// `sticky_sessions` true, `prefill_concurrency` 1, `consistent_replicas`
/// false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Strategy. Default `cache-aware`.
    pub strategy: LoadBalanceStrategy,
    /// Retries on another node when a request fails before its first byte.
    /// Default 2.
    pub max_retries: u32,
    /// Pause before a retry. Default 100ms.
    #[serde(with = "crate::duration")]
    pub retry_delay: Duration,
    /// How long a session stays pinned to its node after its last request.
    /// Default 30m.
    #[serde(with = "crate::duration")]
    pub session_ttl: Duration,
    /// Request header carrying the session key (lowercase). Default
    /// `x-session-id`.
    pub session_header: String,
    /// Most sessions remembered (least recently used are dropped). Default
    /// 100000.
    pub max_sessions: usize,
    /// Whether a request with a session key goes back to the node that
    /// served its session (a hard pin for round-robin, least-loaded,
    /// latency-based and cache-score; a tie-break for cache-aware, whose
    /// cache model keeps a conversation where its prefix is anyway).
    /// Default true.
    pub sticky_sessions: bool,
    /// Requests each node prefills at once; further requests routed to the
    /// node wait in the gateway until one has produced its first token
    /// (servers that batch prompt processing make every prompt of the batch
    /// wait for all of it). 0 = unlimited. A node tag `prefill_concurrency`
    /// overrides it per node. Default 1.
    pub prefill_concurrency: usize,
    /// Route from what every gateway replica sees alike — the request's own
    /// conversation key and the nodes' health — so replicas behind a load
    /// balancer choose the same node for a conversation without sharing
    /// state (weighted rendezvous hashing over the routable nodes). A single
    /// gateway routes better without it (on its cache model and queues).
    /// Default false.
    pub consistent_replicas: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            strategy: LoadBalanceStrategy::default(),
            max_retries: 2,
            retry_delay: Duration::from_millis(100),
            session_ttl: Duration::from_secs(30 * 60),
            session_header: "x-session-id".to_owned(),
            max_sessions: 100_000,
            sticky_sessions: true,
            prefill_concurrency: 1,
            consistent_replicas: false,
        }
    }
}

/// Log output format of the gateway. Default `human`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The HTTP front end.
///
/// Defaults: `listen` 127.0.0.1:8000, `admin_token` none, `connect_timeout`
/// 2s, `first_byte_timeout` 300s, `idle_timeout` 60s, `request_timeout`
/// none, `max_body_bytes` 32 MiB, `shutdown_grace` 30s, `log_format` human,
/// no client keys (`api_keys` empty, `api_keys_file` none: the proxy is
/// open), no TLS, `header_read_timeout` 30s, `body_read_timeout` 60s,
/// `max_connections` 8192, `max_header_bytes` 64 KiB,
/// `max_output_tokens` 8192, `default_model` `default_model`,
/// `model_aliases` empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address the gateway listens on. Default `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// Bearer token required by the admin API (drain, undrain, discovery
    /// refresh); none = admin API disabled (it answers 403). Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<ApiKey>,
    /// Timeout to connect to a node. Default 2s.
    #[serde(with = "crate::duration")]
    pub connect_timeout: Duration,
    /// Timeout until a node's first response byte (prefill of a long cold
    /// prompt is slow). Default 300s.
    #[serde(with = "crate::duration")]
    pub first_byte_timeout: Duration,
    /// Longest gap between two chunks of a streamed response. Default 60s.
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Overall limit per request; none = no limit (streams may run long).
    /// Default none.
    #[serde(
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
    /// Largest request body accepted, bytes. Default 33554432 (32 MiB).
    pub max_body_bytes: u64,
    /// On shutdown, how long in-flight requests may finish. Default 30s.
    #[serde(with = "crate::duration")]
    pub shutdown_grace: Duration,
    /// Log format. Default `human`.
    pub log_format: LogFormat,
    /// Client API keys; when any is configured (here or in
    /// `api_keys_file`) every endpoint but `/healthz`, `/readyz`, the
    /// dashboard page and the admin API (which has `admin_token`) needs
    /// one. Default empty (open).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ClientKey>,
    /// File of hashed client keys, one `NAME sha256:HEX [options]` per line
    /// (see [`parse_api_keys_file`]), read at start-up. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate and key. Default none (plain HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Time a client has to send a request's headers (and, with TLS, to
    /// finish the handshake); also how long an idle kept-alive connection
    /// stays open. Default 30s.
    #[serde(with = "crate::duration")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole request body; beyond it 408.
    /// Default 60s.
    #[serde(with = "crate::duration")]
    pub body_read_timeout: Duration,
    /// Most client connections open at once; beyond it a new connection is
    /// answered 503 and closed. Default 8192.
    pub max_connections: u32,
    /// Largest request head (request line and headers), bytes; beyond it
    /// 431. At least 8192. Default 65536.
    pub max_header_bytes: u32,
    /// Largest `max_tokens` an Anthropic Messages request (`/v1/messages`)
    /// may ask of a node; larger requests are capped to it (Claude Code asks
    /// for 64k–128k tokens, minutes of decoding on a Mac). A node's
    /// `max_output_tokens` tag overrides it; 0 = no cap. Default 8192.
    pub max_output_tokens: u32,
    /// Model sent to the nodes for a Messages request whose model matches
    /// no `model_aliases` entry and is listed by no node (Claude Code sends
    /// `claude-…` names). Default `default_model` (mlx_lm.server's name for
    /// the model it loaded; any node takes it).
    pub default_model: String,
    /// Model names of Messages requests rewritten before routing: exact
    /// names, or a prefix ending in `*` (`"claude-*" = "qwen3-coder"`). The
    /// exact name wins, then the longest prefix. Default empty.
    pub model_aliases: BTreeMap<String, String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8000),
            admin_token: None,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
            request_timeout: None,
            max_body_bytes: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            log_format: LogFormat::Human,
            api_keys: Vec::new(),
            api_keys_file: None,
            tls: None,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 8192,
            max_header_bytes: 64 * 1024,
            max_output_tokens: 8192,
            default_model: "default_model".to_owned(),
            model_aliases: BTreeMap::new(),
        }
    }
}
