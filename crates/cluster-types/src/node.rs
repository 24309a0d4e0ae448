//! Nodes: identity, lifecycle status, static spec and runtime state.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Stable identifier of an inference node (e.g. `"mac-studio-1"`).
///
/// A newtype over `String`, serialized transparently as a string. Ordered and
/// hashable so it can key maps and give deterministic iteration orders.
/// No default: every node has an explicit id (static config) or one derived
/// by discovery (DNS target / pod name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Wraps an id.
    #[must_use]
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unwraps into the inner `String`.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Error returned by the `FromStr` impls of the status and strategy enums.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of: {expected})")]
pub struct UnknownVariant {
    /// What was being parsed (`"node status"`, ...).
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
    /// The accepted names, comma separated.
    pub expected: &'static str,
}

macro_rules! string_enum {
    ($ty:ident, $kind:literal, [$($variant:ident => $name:literal),+ $(,)?]) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The serialized (config / JSON) name.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(UnknownVariant {
                        kind: $kind,
                        value: s.to_owned(),
                        expected: concat!($($name, " "),+),
                    }),
                }
            }
        }
    };
}
pub(crate) use string_enum;

/// Lifecycle state of one node (the seeds' `NodeStatus`).
///
/// `initializing → healthy ⇄ degraded ⇄ unhealthy → offline`; see
/// cluster-health for the transitions. Serialized lowercase. Default:
/// [`NodeStatus::Initializing`] (a node starts unvalidated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Discovered but not yet validated (no successful probe yet).
    #[default]
    Initializing,
    /// Passing checks; takes traffic.
    Healthy,
    /// Working but with an elevated error rate or latency; still takes traffic.
    Degraded,
    /// Failing checks; no traffic; probed again after backoff.
    Unhealthy,
    /// Unreachable or removed; no traffic.
    Offline,
}

string_enum!(NodeStatus, "node status", [
    Initializing => "initializing",
    Healthy => "healthy",
    Degraded => "degraded",
    Unhealthy => "unhealthy",
    Offline => "offline",
]);

impl NodeStatus {
    /// Whether requests may be sent to a node in this state
    /// (`Healthy` or `Degraded`).
    #[must_use]
    pub const fn is_routable(self) -> bool {
        matches!(self, Self::Healthy | Self::Degraded)
    }
}

/// Overall state of the cluster (the seeds' `ClusterStatus`), computed by
/// [`ClusterStatus::aggregate`]. Serialized lowercase. Default:
/// [`ClusterStatus::Starting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterStatus {
    /// No node is routable yet, but at least one is still initializing.
    #[default]
    Starting,
    /// Every validated node is healthy.
    Healthy,
    /// At least half of the validated nodes are routable, but not all are healthy.
    Degraded,
    /// Some node is routable, but fewer than half of the validated ones.
    Critical,
    /// No node is routable and none is initializing (or there are no nodes).
    Offline,
}

string_enum!(ClusterStatus, "cluster status", [
    Starting => "starting",
    Healthy => "healthy",
    Degraded => "degraded",
    Critical => "critical",
    Offline => "offline",
]);

impl ClusterStatus {
    /// Aggregates node statuses into the cluster status.
    ///
    /// Initializing nodes are not yet members: they never make a cluster
    /// worse, they only turn "nothing routable" into `Starting`. Let
    /// *members* be the nodes that are not initializing and *routable* the
    /// members that are healthy or degraded. Then, in order:
    ///
    /// | condition                                           | result     |
    /// |-----------------------------------------------------|------------|
    /// | no nodes at all                                     | `Offline`  |
    /// | routable = 0 and some node initializing             | `Starting` |
    /// | routable = 0 (all unhealthy/offline)                | `Offline`  |
    /// | every member healthy                                | `Healthy`  |
    /// | 2 × routable ≥ members (at least half routable)     | `Degraded` |
    /// | otherwise (fewer than half routable)                | `Critical` |
    ///
    /// The function is pure and O(n); the order of the input does not matter.
    ///
    /// ```
    /// use cluster_types::{ClusterStatus, NodeStatus::*};
    /// assert_eq!(ClusterStatus::aggregate([Healthy, Initializing]), ClusterStatus::Healthy);
    /// assert_eq!(ClusterStatus::aggregate([Healthy, Unhealthy]), ClusterStatus::Degraded);
    /// assert_eq!(ClusterStatus::aggregate([Healthy, Offline, Offline]), ClusterStatus::Critical);
    /// ```
    #[must_use]
    pub fn aggregate(statuses: impl IntoIterator<Item = NodeStatus>) -> Self {
        let (mut total, mut initializing, mut healthy, mut routable) =
            (0usize, 0usize, 0usize, 0usize);
        for s in statuses {
            total += 1;
            match s {
                NodeStatus::Initializing => initializing += 1,
                NodeStatus::Healthy => {
                    healthy += 1;
                    routable += 1;
                }
                NodeStatus::Degraded => routable += 1,
                NodeStatus::Unhealthy | NodeStatus::Offline => {}
            }
        }
        let members = total - initializing;
        if total == 0 {
            Self::Offline
        } else if routable == 0 {
            if initializing > 0 {
                Self::Starting
            } else {
                Self::Offline
            }
        } else if healthy == members {
            Self::Healthy
        } else if 2 * routable >= members {
            Self::Degraded
        } else {
            Self::Critical
        }
    }

    /// Whether the cluster can serve requests at all
    /// (`Healthy`, `Degraded` or `Critical`).
    #[must_use]
    pub const fn is_serving(self) -> bool {
        matches!(self, Self::Healthy | Self::Degraded | Self::Critical)
    }
}

/// A secret (API key, bearer token) that never shows up in logs or output.
///
/// `Debug` and `Display` print `ApiKey(<redacted>)`; `Serialize` writes the
/// string `"<redacted>"` (so a serialized config never leaks it — and cannot
/// be re-read with the secret); `Deserialize` reads a plain string. Use
/// [`ApiKey::expose`] at the one place the secret is sent. No default.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// What `Serialize` writes instead of the secret.
    pub const REDACTED: &'static str = "<redacted>";

    /// Wraps a secret.
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself; call only where it is sent over the wire.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl Serialize for ApiKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Self::REDACTED)
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

fn default_weight() -> u32 {
    1
}

/// How to reach one node: what static config lists and discovery produces.
///
/// Defaults: `weight` 1, `tags` empty, `api_key` none, `tls` default.
/// `id` and `url` are required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique node id.
    pub id: NodeId,
    /// Base URL of the OpenAI-compatible server, e.g. `http://127.0.0.1:8080`:
    /// scheme + host + optional port (+ optional path prefix), without a
    /// trailing slash and without `/v1`.
    pub url: String,
    /// Relative capacity used by weighted strategies. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form labels (`rack = "a"`, `gpu = "m2-ultra"`). Default empty.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Bearer token sent to this node, if it needs one. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKey>,
    /// Certificate verification for an `https://` node (over the global
    /// `node_tls`). Default: system roots, verification on.
    #[serde(default, skip_serializing_if = "crate::NodeTls::is_default")]
    pub tls: crate::NodeTls,
}

impl NodeSpec {
    /// A spec with the given id and URL and default weight (1), no tags and
    /// no API key.
    #[must_use]
    pub fn new(id: impl Into<NodeId>, url: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            url: url.into(),
            weight: default_weight(),
            tags: BTreeMap::new(),
            api_key: None,
            tls: crate::NodeTls::default(),
        }
    }
}

/// Health measurements of one node (the seeds' `NodeHealth` /
/// `HealthMetrics`), as published in [`Node`] snapshots.
///
/// Defaults: `success_rate` 1.0 (no samples yet counts as healthy), every
/// count 0, every optional field none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeHealth {
    /// Fraction of successful checks/requests in the rolling window, 0.0–1.0.
    /// Default 1.0.
    pub success_rate: f64,
    /// Mean latency of successful samples in the window, in milliseconds.
    /// Default none.
    pub avg_latency_ms: Option<f64>,
    /// Samples currently in the window. Default 0.
    pub total_samples: u64,
    /// Successes since the last failure. Default 0.
    pub consecutive_successes: u32,
    /// Failures since the last success. Default 0.
    pub consecutive_failures: u32,
    /// When the last check finished, unix milliseconds. Default none.
    pub last_check_unix_ms: Option<u64>,
    /// Text of the last error, if the last check failed. Default none.
    pub last_error: Option<String>,
    /// While unhealthy/offline: when the next probe is due, unix
    /// milliseconds. Default none.
    pub next_probe_unix_ms: Option<u64>,
}

impl Default for NodeHealth {
    fn default() -> Self {
        Self {
            success_rate: 1.0,
            avg_latency_ms: None,
            total_samples: 0,
            consecutive_successes: 0,
            consecutive_failures: 0,
            last_check_unix_ms: None,
            last_error: None,
            next_probe_unix_ms: None,
        }
    }
}

/// What the cluster believes a node's prompt (KV) cache holds — the seeds'
/// `NodeCacheState`, extended with prefix-block tracking.
///
/// Nodes like `mlx_lm.server` do not publish their cache; this is the
/// router's model of it, built from the requests it sent there and the
/// `cached_tokens` the node reported back. Defaults: every count 0, every
/// optional field none, `hit_rate` 0.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NodeCacheState {
    /// Distinct prompt prefixes believed cached (bounded by
    /// `cache.max_prefixes_per_node`). Default 0.
    pub cached_prefixes: u32,
    /// Prompt tokens believed cached in total (bounded by
    /// `cache.max_tokens_per_node`). Default 0.
    pub cached_tokens_estimate: u64,
    /// Hash of the system prompt of the most recent request (seeds'
    /// `systemPromptHash`). Default none.
    pub system_prompt_hash: Option<u64>,
    /// Hash of the tool list of the most recent request. Default none.
    pub tools_hash: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens` of the last response.
    /// Default 0.
    pub last_reported_cached_tokens: u64,
    /// Cached tokens / prompt tokens over recent requests, 0.0–1.0.
    /// Default 0.0.
    pub hit_rate: f64,
    /// When this state last changed, unix milliseconds. Default none.
    pub last_updated_unix_ms: Option<u64>,
}

/// Request counters and latency figures of one node (the seeds'
/// `NodeMetrics`), as published in snapshots. Filled by cluster-metrics.
///
/// Defaults: every count 0, every latency none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NodeMetrics {
    /// Requests currently in flight. Default 0.
    pub in_flight: u64,
    /// Requests sent since start. Default 0.
    pub requests_total: u64,
    /// Requests that completed successfully. Default 0.
    pub successes_total: u64,
    /// Requests that failed (connect error, 5xx, broken stream). Default 0.
    pub failures_total: u64,
    /// Requests the client abandoned before completion. Default 0.
    pub cancelled_total: u64,
    /// Prompt tokens reported by the node. Default 0.
    pub prompt_tokens_total: u64,
    /// Of those, tokens served from the node's prompt cache. Default 0.
    pub cached_tokens_total: u64,
    /// Completion tokens reported by the node. Default 0.
    pub completion_tokens_total: u64,
    /// Smoothed (peak-EWMA) request latency, milliseconds. Default none.
    pub ewma_latency_ms: Option<f64>,
    /// Median request latency, milliseconds. Default none.
    pub latency_p50_ms: Option<f64>,
    /// 90th-percentile request latency, milliseconds. Default none.
    pub latency_p90_ms: Option<f64>,
    /// 99th-percentile request latency, milliseconds. Default none.
    pub latency_p99_ms: Option<f64>,
    /// Mean time to first token, milliseconds. Default none.
    pub avg_ttft_ms: Option<f64>,
    /// When the last request finished, unix milliseconds. Default none.
    pub last_request_unix_ms: Option<u64>,
    /// Answered requests for which the router predicted the cached prompt
    /// tokens (cache-aware routing). Default 0.
    pub cache_predictions_total: u64,
    /// Share of those predictions within one fingerprint block of the
    /// node's reported `cached_tokens` (the cache model's fidelity, 0 to 1).
    /// Default none (no prediction yet).
    pub cache_prediction_within_block: Option<f64>,
}

impl NodeMetrics {
    /// `cached_tokens_total / prompt_tokens_total`, 0.0 when no prompt
    /// tokens were seen.
    #[must_use]
    pub fn cache_hit_ratio(&self) -> f64 {
        ratio(self.cached_tokens_total, self.prompt_tokens_total)
    }

    /// `failures_total / (successes_total + failures_total)`, 0.0 when no
    /// request finished.
    #[must_use]
    pub fn error_rate(&self) -> f64 {
        ratio(
            self.failures_total,
            self.successes_total.saturating_add(self.failures_total),
        )
    }
}

pub(crate) fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        (num as f64 / den as f64).clamp(0.0, 1.0)
    }
}

/// Everything known about one node (the seeds' `MLXNode`): spec, status,
/// health, cache model, metrics and the models it serves.
///
/// [`Node::new`] gives status `initializing`, default health/cache/metrics
/// and no models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// How to reach it.
    pub spec: NodeSpec,
    /// Lifecycle state. Default `initializing`.
    #[serde(default)]
    pub status: NodeStatus,
    /// Health measurements.
    #[serde(default)]
    pub health: NodeHealth,
    /// Model of its prompt cache.
    #[serde(default)]
    pub cache: NodeCacheState,
    /// Request counters and latencies.
    #[serde(default)]
    pub metrics: NodeMetrics,
    /// Model ids from its `GET /v1/models`. Default empty.
    #[serde(default)]
    pub models: Vec<String>,
    /// What server it is (detected at validation, or forced by its `kind`
    /// tag). Default generic.
    #[serde(default)]
    pub kind: crate::NodeKind,
}

impl Node {
    /// A fresh, initializing node for `spec`.
    #[must_use]
    pub fn new(spec: NodeSpec) -> Self {
        Self {
            spec,
            status: NodeStatus::default(),
            health: NodeHealth::default(),
            cache: NodeCacheState::default(),
            metrics: NodeMetrics::default(),
            models: Vec::new(),
            kind: crate::NodeKind::default(),
        }
    }

    /// The node's id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.spec.id
    }

    /// Whether the node serves `model` (true when the node lists no models,
    /// i.e. it has not been asked yet).
    #[must_use]
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeStatus::{
        Degraded as D, Healthy as H, Initializing as I, Offline as O, Unhealthy as U,
    };

    #[test]
    fn aggregation_table() {
        use ClusterStatus as C;
        let table: &[(&[NodeStatus], ClusterStatus)] = &[
            // no nodes
            (&[], C::Offline),
            // nothing routable
            (&[I], C::Starting),
            (&[I, I], C::Starting),
            (&[I, U], C::Starting),
            (&[I, O, U], C::Starting),
            (&[U], C::Offline),
            (&[O], C::Offline),
            (&[U, O], C::Offline),
            // all members healthy (initializing nodes do not count)
            (&[H], C::Healthy),
            (&[H, H, H], C::Healthy),
            (&[H, I], C::Healthy),
            (&[H, I, I, I], C::Healthy),
            // at least half routable, not all healthy
            (&[D], C::Degraded),
            (&[D, D], C::Degraded),
            (&[H, D], C::Degraded),
            (&[H, U], C::Degraded),
            (&[H, O], C::Degraded),
            (&[D, O], C::Degraded),
            (&[H, H, U], C::Degraded),
            (&[H, D, O, U], C::Degraded),
            (&[D, I, U], C::Degraded),
            // fewer than half routable
            (&[H, U, O], C::Critical),
            (&[D, U, U], C::Critical),
            (&[H, O, O, O], C::Critical),
            (&[H, I, I, U, O], C::Critical),
        ];
        for (statuses, want) in table {
            assert_eq!(
                ClusterStatus::aggregate(statuses.iter().copied()),
                *want,
                "{statuses:?}"
            );
            // order never matters
            let rev: Vec<_> = statuses.iter().rev().copied().collect();
            assert_eq!(
                ClusterStatus::aggregate(rev),
                *want,
                "{statuses:?} reversed"
            );
        }
    }

    #[test]
    fn routable_and_names() {
        let routable: Vec<_> = NodeStatus::ALL.iter().filter(|s| s.is_routable()).collect();
        assert_eq!(routable, [&H, &D]);
        for s in NodeStatus::ALL {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.as_str().parse::<NodeStatus>().unwrap(), *s);
        }
        for s in ClusterStatus::ALL {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.as_str().parse::<ClusterStatus>().unwrap(), *s);
        }
        assert!("HEALTHY".parse::<NodeStatus>().is_err());
        assert!(ClusterStatus::Critical.is_serving());
        assert!(!ClusterStatus::Starting.is_serving());
    }

    #[test]
    fn api_key_is_redacted() {
        let k = ApiKey::new("sk-secret");
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
        assert_eq!(format!("{k}"), "ApiKey(<redacted>)");
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"<redacted>\"");
        assert_eq!(k.expose(), "sk-secret");
        let mut spec = NodeSpec::new("a", "http://x:1");
        spec.api_key = Some(k);
        assert!(!format!("{spec:?}").contains("sk-secret"));
        assert!(!serde_json::to_string(&spec).unwrap().contains("sk-secret"));
        let back: ApiKey = serde_json::from_str("\"tok\"").unwrap();
        assert_eq!(back.expose(), "tok");
    }

    #[test]
    fn node_id_conversions() {
        let a = NodeId::from("a");
        let b: NodeId = String::from("b").into();
        assert!(a < b);
        assert_eq!(a.as_str(), "a");
        assert_eq!(a.to_string(), "a");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"a\"");
        let set: std::collections::BTreeSet<NodeId> = [b.clone(), a.clone()].into();
        assert!(set.contains("a"));
    }

    #[test]
    fn node_defaults_and_helpers() {
        let n = Node::new(NodeSpec::new("n1", "http://127.0.0.1:8080"));
        assert_eq!(n.status, NodeStatus::Initializing);
        assert_eq!(n.id().as_str(), "n1");
        assert!(n.serves("anything"));
        assert!((n.health.success_rate - 1.0).abs() < f64::EPSILON);
        let json = serde_json::to_value(&n).unwrap();
        let back: Node = serde_json::from_value(json).unwrap();
        assert_eq!(back, n);
        let spec: NodeSpec = serde_json::from_str(r#"{"id":"x","url":"http://h:1"}"#).unwrap();
        assert_eq!(spec.weight, 1);
        assert!(serde_json::from_str::<NodeSpec>(r#"{"id":"x","url":"u","wieght":2}"#).is_err());
        let m = NodeMetrics {
            prompt_tokens_total: 100,
            cached_tokens_total: 25,
            successes_total: 3,
            failures_total: 1,
            ..NodeMetrics::default()
        };
        assert!((m.cache_hit_ratio() - 0.25).abs() < 1e-12);
        assert!((m.error_rate() - 0.25).abs() < 1e-12);
        assert!(NodeMetrics::default().error_rate().abs() < f64::EPSILON);
    }
}
