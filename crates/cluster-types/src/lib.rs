//! Plain data for mlx-cluster: node and cluster types, routing inputs and
//! outputs, prompt prefix fingerprints, and the configuration schema with
//! parsing, environment overrides and validation.
//!
//! This crate has no async runtime and does no I/O; every other crate of the
//! workspace builds on it.
//!
//! ```
//! use cluster_types::{ClusterConfig, ClusterStatus, ConfigFormat, NodeStatus};
//!
//! let config = ClusterConfig::parse(
//!     r#"
//!     [discovery]
//!     mode = "static"
//!     nodes = [
//!       { id = "studio", url = "http://10.0.0.2:8080", weight = 2 },
//!       { id = "mini", url = "http://10.0.0.3:8080" },
//!     ]
//!
//!     [health]
//!     check_interval = "10s"
//!     "#,
//!     ConfigFormat::Toml,
//! )
//! .expect("valid config");
//! assert_eq!(config.health.check_interval.as_secs(), 10);
//!
//! let status = ClusterStatus::aggregate([NodeStatus::Healthy, NodeStatus::Unhealthy]);
//! assert_eq!(status, ClusterStatus::Degraded);
//! ```
//!
//! Errors list every problem with its path:
//!
//! ```
//! use cluster_types::{ClusterConfig, ConfigFormat};
//!
//! let err = ClusterConfig::parse(
//!     r#"{"health": {"timeout": "10s"}, "backoff": {"jitter": 2.0}}"#,
//!     ConfigFormat::Json,
//! )
//! .unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("health.timeout: must be shorter than health.check_interval (5s)"));
//! assert!(text.contains("backoff.jitter"));
//! ```

pub mod config;
mod decision;
pub mod duration;
pub mod fingerprint;
mod kind;
mod node;
mod node_tags;
mod routing;
mod state;
mod tls;

pub use config::{
    BackoffConfig, CacheConfig, ClientKey, ClusterConfig, ConfigErrors, ConfigFormat,
    ConfigProblem, DiscoveryConfig, DnsDiscovery, GatewayConfig, HealthConfig, KubernetesDiscovery,
    LogFormat, RoutingConfig, Scheme, StaticDiscovery, TlsConfig, apply_env_overrides,
    config_reference_markdown, parse_api_keys_file,
};
pub use config::{DEFAULT_MDNS_SERVICE_TYPES, MDNS_PORT, MdnsDiscovery};
pub use config::{MAX_DECISION_LOG_SIZE, ObservabilityConfig};
pub use decision::{CostTerms, DecisionOutcome, DecisionRecord, RunnerUp};
pub use fingerprint::{PrefixFingerprint, PrefixFingerprintBuilder, SegmentKind};
pub use kind::{KIND_TAG, NodeKind, NodeProfile};
pub use node::{
    ApiKey, ClusterStatus, Node, NodeCacheState, NodeHealth, NodeId, NodeMetrics, NodeSpec,
    NodeStatus, UnknownVariant,
};
pub use node_tags::{API_TAG, MAX_OUTPUT_TOKENS_TAG, NodeApi, max_output_tokens_tag};
pub use routing::{LoadBalanceStrategy, RoutingContext, RoutingDecision, RoutingReason};
pub use state::{ClusterMetrics, ClusterState};
pub use tls::NodeTls;
