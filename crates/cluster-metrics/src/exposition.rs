//! Prometheus / OpenMetrics text exposition through `prometheus-client`.
//!
//! [`MetricsRegistry`] keeps the set of nodes (id, status and their
//! [`NodeCounters`]) and owns a `prometheus_client::registry::Registry` with
//! one custom `Collector`. The collector reads the counters' atomics at
//! scrape time, so the request hot path never touches the registry; the node
//! set sits behind a `parking_lot::RwLock` that scrapes and membership
//! changes take briefly (the scrape copies the `Arc`s out, then reads
//! without the lock).
//!
//! Every metric is listed, with type, labels and meaning, in
//! `docs/metrics.md`; a test checks that every family emitted here is
//! documented there and the other way round. The names, as they appear on
//! sample lines, are in [`METRIC_NAMES`].
//!
//! Per-node series carry only the `node` label (plus `outcome` or `status`
//! where noted): putting the node's status on its counters would start new
//! series at every status change, so status is its own state-set gauge,
//! `mlx_cluster_node_status{node,status}`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cluster_types::{ClusterMetrics, ClusterStatus, NodeId, NodeStatus};
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::{
    MetricsError, NodeCounters, NodeCountersSnapshot, PREDICTION_ERROR_BUCKETS,
    PREFIX_MATCH_BUCKETS, SharedClock, aggregate_cluster_metrics, system_clock,
};
use cluster_types::RoutingReason;

/// The HTTP `Content-Type` of [`MetricsRegistry::encode`]'s output
/// (OpenMetrics 1.0 text, which Prometheus scrapes natively).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the buckets of both latency histograms:
/// 10 ms .. 10 min, roughly ×2–2.5 apart, plus `+Inf`. Chosen for LLM
/// inference: warm time to first token is tens to hundreds of ms, a cold
/// 20k-token prefill tens of seconds, a long generation minutes.
pub const LATENCY_BUCKETS: [Duration; 15] = [
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2500),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(300),
    Duration::from_secs(600),
];

/// Every metric name this module emits, as written on sample lines
/// (counters with `_total`; histograms by their base name, whose samples
/// add `_bucket`, `_sum` and `_count`).
pub const METRIC_NAMES: &[&str] = &[
    NODES,
    STATUS,
    IN_FLIGHT,
    CACHE_HIT_RATIO,
    NODE_STATUS,
    NODE_IN_FLIGHT,
    "mlx_cluster_node_requests_total",
    "mlx_cluster_node_responses_total",
    "mlx_cluster_node_prompt_tokens_total",
    "mlx_cluster_node_cached_tokens_total",
    "mlx_cluster_node_completion_tokens_total",
    "mlx_cluster_node_time_to_first_token_seconds",
    "mlx_cluster_node_request_duration_seconds",
    "mlx_cluster_node_latency_estimate_seconds",
    "mlx_cluster_node_cache_prediction_error_blocks",
    "mlx_cluster_routing_decisions_total",
    ROUTING_PREFIX_MATCH,
];

const NODES: &str = "mlx_cluster_nodes";
const STATUS: &str = "mlx_cluster_status";
const IN_FLIGHT: &str = "mlx_cluster_in_flight_requests";
const CACHE_HIT_RATIO: &str = "mlx_cluster_cache_hit_ratio";
const NODE_STATUS: &str = "mlx_cluster_node_status";
const NODE_IN_FLIGHT: &str = "mlx_cluster_node_in_flight_requests";
// Counter family names: the text encoder appends `_total`.
const NODE_REQUESTS: &str = "mlx_cluster_node_requests";
const NODE_RESPONSES: &str = "mlx_cluster_node_responses";
const NODE_PROMPT_TOKENS: &str = "mlx_cluster_node_prompt_tokens";
const NODE_CACHED_TOKENS: &str = "mlx_cluster_node_cached_tokens";
const NODE_COMPLETION_TOKENS: &str = "mlx_cluster_node_completion_tokens";
// Families with unit seconds: the encoder appends `_seconds`.
const NODE_TTFT: &str = "mlx_cluster_node_time_to_first_token";
const NODE_DURATION: &str = "mlx_cluster_node_request_duration";
const NODE_ESTIMATE: &str = "mlx_cluster_node_latency_estimate";
// Unit "blocks": the encoder appends `_blocks`.
const NODE_PREDICTION: &str = "mlx_cluster_node_cache_prediction_error";
// Routing decisions (counter, `node` and `reason`) and the matched prefix
// ratio (histogram, `node`).
const ROUTING_DECISIONS: &str = "mlx_cluster_routing_decisions";
const ROUTING_PREFIX_MATCH: &str = "mlx_cluster_routing_prefix_match_ratio";

#[derive(Debug, Clone)]
struct NodeEntry {
    status: NodeStatus,
    counters: Arc<NodeCounters>,
}

type NodeMap = Arc<RwLock<BTreeMap<NodeId, NodeEntry>>>;

/// The node set plus a Prometheus registry that exposes it.
///
/// Default ([`MetricsRegistry::new`]): no nodes, the
/// [`SystemClock`](crate::SystemClock) for counters it creates, and a
/// registry holding only this crate's collector.
///
/// ```
/// use cluster_metrics::{MetricsRegistry, RequestOutcome};
/// use cluster_types::{NodeId, NodeStatus};
///
/// let registry = MetricsRegistry::new();
/// let id = NodeId::from("mac-studio-1");
/// let counters = registry.node(&id); // created on first use
/// registry.set_status(&id, NodeStatus::Healthy);
/// counters.begin().finish(RequestOutcome::success().with_tokens(100, 80));
///
/// let text = registry.encode()?;
/// assert!(text.contains(r#"mlx_cluster_node_requests_total{node="mac-studio-1"} 1"#));
/// assert!(text.contains(r#"mlx_cluster_node_status{node="mac-studio-1",status="healthy"} 1"#));
/// assert!(text.ends_with("# EOF\n"));
/// # Ok::<(), cluster_metrics::MetricsError>(())
/// ```
pub struct MetricsRegistry {
    nodes: NodeMap,
    clock: SharedClock,
    registry: Registry,
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRegistry")
            .field("nodes", &self.nodes.read().len())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Default for MetricsRegistry {
    /// Same as [`MetricsRegistry::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    /// An empty registry; counters it creates use the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// An empty registry; counters created by [`node`](Self::node) use
    /// `clock`.
    #[must_use]
    pub fn with_clock(clock: SharedClock) -> Self {
        let nodes: NodeMap = Arc::default();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ClusterCollector {
            nodes: Arc::clone(&nodes),
        }));
        Self {
            nodes,
            clock,
            registry,
        }
    }

    /// The counters of node `id`, created (status `initializing`, this
    /// registry's clock) if the node is not known yet.
    pub fn node(&self, id: &NodeId) -> Arc<NodeCounters> {
        if let Some(entry) = self.nodes.read().get(id) {
            return Arc::clone(&entry.counters);
        }
        let mut nodes = self.nodes.write();
        let entry = nodes.entry(id.clone()).or_insert_with(|| NodeEntry {
            status: NodeStatus::default(),
            counters: Arc::new(NodeCounters::with_clock(Arc::clone(&self.clock))),
        });
        Arc::clone(&entry.counters)
    }

    /// Adds (or replaces) node `id` with existing `counters` and `status`;
    /// returns the counters it replaced.
    pub fn insert_node(
        &self,
        id: NodeId,
        counters: Arc<NodeCounters>,
        status: NodeStatus,
    ) -> Option<Arc<NodeCounters>> {
        self.nodes
            .write()
            .insert(id, NodeEntry { status, counters })
            .map(|old| old.counters)
    }

    /// Sets node `id`'s status; `false` if the node is unknown.
    pub fn set_status(&self, id: &NodeId, status: NodeStatus) -> bool {
        match self.nodes.write().get_mut(id) {
            Some(entry) => {
                entry.status = status;
                true
            }
            None => false,
        }
    }

    /// The status of node `id`, if known.
    #[must_use]
    pub fn status(&self, id: &NodeId) -> Option<NodeStatus> {
        self.nodes.read().get(id).map(|e| e.status)
    }

    /// Removes node `id` (its series disappear from the next scrape);
    /// returns its counters.
    pub fn remove_node(&self, id: &NodeId) -> Option<Arc<NodeCounters>> {
        self.nodes.write().remove(id).map(|e| e.counters)
    }

    /// Number of nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.read().len()
    }

    /// Whether there are no nodes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.read().is_empty()
    }

    /// `(id, status, snapshot)` of every node, ordered by id.
    #[must_use]
    pub fn snapshot(&self) -> Vec<(NodeId, NodeStatus, NodeCountersSnapshot)> {
        snapshot_nodes(&self.nodes)
    }

    /// [`aggregate_cluster_metrics`] over [`snapshot`](Self::snapshot).
    #[must_use]
    pub fn cluster_metrics(&self) -> ClusterMetrics {
        let nodes = self.snapshot();
        aggregate_cluster_metrics(nodes.iter().map(|(id, st, s)| (id, *st, s)))
    }

    /// The underlying `prometheus-client` registry, to register more
    /// metrics (e.g. the gateway's HTTP metrics) in the same exposition.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Encodes every metric as OpenMetrics text, ending with `# EOF`.
    /// Serve it with [`OPENMETRICS_CONTENT_TYPE`].
    ///
    /// # Errors
    /// [`MetricsError::Encode`] if a registered metric fails to encode (this
    /// crate's own collector only writes to a `String` and does not fail).
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::with_capacity(4096);
        self.encode_to(&mut out)?;
        Ok(out)
    }

    /// Like [`encode`](Self::encode), appending to `out`.
    ///
    /// # Errors
    /// [`MetricsError::Encode`], as for [`encode`](Self::encode).
    pub fn encode_to(&self, out: &mut String) -> Result<(), MetricsError> {
        prometheus_client::encoding::text::encode(out, &self.registry)
            .map_err(|_| MetricsError::Encode)
    }
}

fn snapshot_nodes(nodes: &NodeMap) -> Vec<(NodeId, NodeStatus, NodeCountersSnapshot)> {
    // Copy the entries out, then read the counters without the lock.
    let entries: Vec<(NodeId, NodeEntry)> = nodes
        .read()
        .iter()
        .map(|(id, e)| (id.clone(), e.clone()))
        .collect();
    entries
        .into_iter()
        .map(|(id, e)| (id, e.status, e.counters.snapshot()))
        .collect()
}

/// The custom collector: reads the node set and counters on each scrape.
#[derive(Debug)]
struct ClusterCollector {
    nodes: NodeMap,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let entries: Vec<(NodeId, NodeEntry)> = self
            .nodes
            .read()
            .iter()
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        let snaps: Vec<NodeCountersSnapshot> =
            entries.iter().map(|(_, e)| e.counters.snapshot()).collect();
        let cluster = aggregate_cluster_metrics(
            entries
                .iter()
                .zip(&snaps)
                .map(|((id, e), s)| (id, e.status, s)),
        );
        let cluster_status = ClusterStatus::aggregate(entries.iter().map(|(_, e)| e.status));

        // ---- cluster level ----
        {
            let mut m = encoder.encode_descriptor(
                NODES,
                "Nodes known to the cluster, by status.",
                None,
                MetricType::Gauge,
            )?;
            for status in NodeStatus::ALL {
                let n = entries.iter().filter(|(_, e)| e.status == *status).count() as u64;
                m.encode_family(&[("status", status.as_str())])?
                    .encode_gauge(&n)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                STATUS,
                "Cluster status as a state set: 1 for the current status, 0 for the others.",
                None,
                MetricType::Gauge,
            )?;
            for status in ClusterStatus::ALL {
                let v = u64::from(*status == cluster_status);
                m.encode_family(&[("status", status.as_str())])?
                    .encode_gauge(&v)?;
            }
        }
        encoder
            .encode_descriptor(
                IN_FLIGHT,
                "Requests in flight over all nodes.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&cluster.in_flight)?;
        encoder
            .encode_descriptor(
                CACHE_HIT_RATIO,
                "Cached prompt tokens / prompt tokens over all nodes since start (0 to 1).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&cluster.cache_hit_ratio)?;

        // ---- per node ----
        {
            let mut m = encoder.encode_descriptor(
                NODE_STATUS,
                "Node status as a state set: 1 for the node's current status, 0 for the others.",
                None,
                MetricType::Gauge,
            )?;
            for (id, e) in &entries {
                for status in NodeStatus::ALL {
                    let v = u64::from(*status == e.status);
                    m.encode_family(&[("node", id.as_str()), ("status", status.as_str())])?
                        .encode_gauge(&v)?;
                }
            }
        }
        gauge_per_node(
            &mut encoder,
            NODE_IN_FLIGHT,
            "Requests in flight on the node.",
            &entries,
            &snaps,
            |s| s.in_flight,
        )?;
        counter_per_node(
            &mut encoder,
            NODE_REQUESTS,
            "Requests sent to the node.",
            &entries,
            &snaps,
            |s| s.requests,
        )?;
        {
            let mut m = encoder.encode_descriptor(
                NODE_RESPONSES,
                "Requests to the node that ended, by outcome (success, failure, cancelled).",
                None,
                MetricType::Counter,
            )?;
            for ((id, _), s) in entries.iter().zip(&snaps) {
                for (outcome, v) in [
                    ("success", s.successes),
                    ("failure", s.failures),
                    ("cancelled", s.cancelled),
                ] {
                    m.encode_family(&[("node", id.as_str()), ("outcome", outcome)])?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        counter_per_node(
            &mut encoder,
            NODE_PROMPT_TOKENS,
            "Prompt tokens reported by the node.",
            &entries,
            &snaps,
            |s| s.prompt_tokens,
        )?;
        counter_per_node(
            &mut encoder,
            NODE_CACHED_TOKENS,
            "Prompt tokens the node served from its prompt cache.",
            &entries,
            &snaps,
            |s| s.cached_tokens,
        )?;
        counter_per_node(
            &mut encoder,
            NODE_COMPLETION_TOKENS,
            "Completion tokens reported by the node.",
            &entries,
            &snaps,
            |s| s.completion_tokens,
        )?;
        histogram_per_node(
            &mut encoder,
            NODE_TTFT,
            "Time from sending a request to the node to its first token.",
            &entries,
            |c| c.ttft_histogram(),
        )?;
        histogram_per_node(
            &mut encoder,
            NODE_DURATION,
            "Latency of successful requests to the node, first byte sent to last byte received.",
            &entries,
            |c| c.latency_histogram(),
        )?;
        {
            let unit = Unit::Seconds;
            let mut m = encoder.encode_descriptor(
                NODE_ESTIMATE,
                "Peak-EWMA estimate of the node's time to first token (tau 10 s), used by latency routing.",
                Some(&unit),
                MetricType::Gauge,
            )?;
            for ((id, _), s) in entries.iter().zip(&snaps) {
                m.encode_family(&[("node", id.as_str())])?
                    .encode_gauge(&secs(s.latency_estimate))?;
            }
        }
        {
            let unit = Unit::Other("blocks".to_owned());
            let mut m = encoder.encode_descriptor(
                NODE_PREDICTION,
                "Absolute difference between the cached prompt tokens the router predicted and the node reported, in fingerprint blocks.",
                Some(&unit),
                MetricType::Histogram,
            )?;
            for ((id, _), s) in entries.iter().zip(&snaps) {
                let p = &s.cache_prediction;
                let buckets: Vec<(f64, u64)> = PREDICTION_ERROR_BUCKETS
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .zip(p.buckets.iter().copied())
                    .collect();
                m.encode_family(&[("node", id.as_str())])?
                    .encode_histogram::<NoLabelSet>(p.sum_blocks, p.count, &buckets, None)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                ROUTING_DECISIONS,
                "Routing decisions that chose the node, by reason (retry: a later attempt after a failure elsewhere).",
                None,
                MetricType::Counter,
            )?;
            for ((id, _), s) in entries.iter().zip(&snaps) {
                for (reason, v) in RoutingReason::ALL.iter().zip(s.routing.by_reason) {
                    m.encode_family(&[("node", id.as_str()), ("reason", reason.as_str())])?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                ROUTING_PREFIX_MATCH,
                "Share of the prompt's fingerprint blocks the cache model believed the chosen node held, per cache-aware decision.",
                None,
                MetricType::Histogram,
            )?;
            for ((id, _), s) in entries.iter().zip(&snaps) {
                let r = &s.routing;
                let buckets: Vec<(f64, u64)> = PREFIX_MATCH_BUCKETS
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .zip(r.prefix_match_buckets.iter().copied())
                    .collect();
                m.encode_family(&[("node", id.as_str())])?
                    .encode_histogram::<NoLabelSet>(
                        r.prefix_match_sum,
                        r.prefix_match_count,
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

fn gauge_per_node(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    entries: &[(NodeId, NodeEntry)],
    snaps: &[NodeCountersSnapshot],
    value: impl Fn(&NodeCountersSnapshot) -> u64,
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for ((id, _), s) in entries.iter().zip(snaps) {
        m.encode_family(&[("node", id.as_str())])?
            .encode_gauge(&value(s))?;
    }
    Ok(())
}

fn counter_per_node(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    entries: &[(NodeId, NodeEntry)],
    snaps: &[NodeCountersSnapshot],
    value: impl Fn(&NodeCountersSnapshot) -> u64,
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for ((id, _), s) in entries.iter().zip(snaps) {
        m.encode_family(&[("node", id.as_str())])?
            .encode_counter::<NoLabelSet, _, u64>(&value(s), None)?;
    }
    Ok(())
}

fn histogram_per_node(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    entries: &[(NodeId, NodeEntry)],
    histogram: impl Fn(&NodeCounters) -> &crate::LatencyHistogram,
) -> fmt::Result {
    let unit = Unit::Seconds;
    let mut m = encoder.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
    let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
    for (id, e) in entries {
        let counts = histogram(&e.counters).bucket_counts(&LATENCY_BUCKETS);
        buckets.clear();
        buckets.extend(
            LATENCY_BUCKETS
                .iter()
                .map(|b| secs(*b))
                .chain(std::iter::once(f64::INFINITY))
                .zip(counts.counts.iter().copied()),
        );
        m.encode_family(&[("node", id.as_str())])?
            .encode_histogram::<NoLabelSet>(secs(counts.sum), counts.count, &buckets, None)?;
    }
    Ok(())
}
