//! The one immutable snapshot of the node set that `select` reads.
//!
//! A [`ClusterSnapshot`] holds every node's spec, models, status and drain
//! flag, sorted by id, plus candidate lists precomputed per status tier and
//! per model, so the hot path never filters the whole node set. It is
//! rebuilt and published (arc-swap) only when membership, status, models or
//! drain flags change; per-request state lives in the shared
//! `Arc<NodeLive>` of each node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cluster_types::fingerprint::xxh64;
use cluster_types::{ApiKey, NodeId, NodeSpec, NodeStatus};

use crate::live::NodeLive;

/// What the router is told about one node (by discovery, health and the
/// operator), besides its live counters.
///
/// [`NodeEntry::new`] gives no models (serves anything), not drained, no
/// probe slot.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    /// How to reach the node.
    pub spec: NodeSpec,
    /// Lifecycle status from health checking.
    pub status: NodeStatus,
    /// Model ids the node reported (`GET /v1/models`); empty = unknown, the
    /// node is assumed to serve any model. Default empty.
    pub models: Vec<String>,
    /// Drained by the operator: no new requests. Default false.
    pub drained: bool,
    /// Half-open: the node is unhealthy/offline but its backoff has expired,
    /// so exactly one request may probe it. Default false.
    pub probe_ready: bool,
}

impl NodeEntry {
    /// A node with `spec` in `status`, no models, not drained, no probe slot.
    #[must_use]
    pub fn new(spec: NodeSpec, status: NodeStatus) -> Self {
        Self {
            spec,
            status,
            models: Vec::new(),
            drained: false,
            probe_ready: false,
        }
    }

    /// The node id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.spec.id
    }

    /// Whether the node serves `model` (always, when it lists no models).
    #[must_use]
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// Status tier of a candidate list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Healthy,
    Degraded,
    Probe,
}

impl Tier {
    pub(crate) fn of(entry: &NodeEntry) -> Option<Self> {
        if entry.drained {
            return None;
        }
        match entry.status {
            NodeStatus::Healthy => Some(Self::Healthy),
            NodeStatus::Degraded => Some(Self::Degraded),
            NodeStatus::Unhealthy | NodeStatus::Offline if entry.probe_ready => Some(Self::Probe),
            _ => None,
        }
    }
}

/// Snapshot indices of the nodes in each tier, sorted by id.
#[derive(Debug, Clone, Default)]
pub(crate) struct TierLists {
    pub(crate) healthy: Vec<u32>,
    pub(crate) degraded: Vec<u32>,
    pub(crate) probe: Vec<u32>,
}

impl TierLists {
    pub(crate) fn get(&self, tier: Tier) -> &[u32] {
        match tier {
            Tier::Healthy => &self.healthy,
            Tier::Degraded => &self.degraded,
            Tier::Probe => &self.probe,
        }
    }

    fn push(&mut self, tier: Tier, i: u32) {
        match tier {
            Tier::Healthy => self.healthy.push(i),
            Tier::Degraded => self.degraded.push(i),
            Tier::Probe => self.probe.push(i),
        }
    }
}

/// Where to send a request: the chosen node's id, base URL (no trailing
/// slash, no `/v1`), API key and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    /// The node.
    pub node_id: NodeId,
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Bearer token for the node, if it needs one.
    pub api_key: Option<ApiKey>,
    /// The node's tags (`NodeSpec::tags`; the gateway reads `api` and
    /// `max_output_tokens`, see `cluster_types::NodeApi`).
    pub tags: BTreeMap<String, String>,
}

/// One node in a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct SnapNode {
    pub(crate) entry: NodeEntry,
    pub(crate) live: Arc<NodeLive>,
    /// Where requests to the node go, built once per snapshot.
    pub(crate) target: Arc<NodeTarget>,
    /// xxh64 of the node id, for rendezvous hashing.
    pub(crate) id_hash: u64,
    /// `max(weight, 1)`.
    pub(crate) weight: u32,
}

impl SnapNode {
    pub(crate) fn new(entry: NodeEntry, live: Arc<NodeLive>) -> Self {
        let id_hash = xxh64(entry.spec.id.as_str().as_bytes(), 0);
        let weight = entry.spec.weight.max(1);
        let target = Arc::new(NodeTarget {
            node_id: entry.spec.id.clone(),
            base_url: entry.spec.url.clone(),
            api_key: entry.spec.api_key.clone(),
            tags: entry.spec.tags.clone(),
        });
        Self {
            entry,
            live,
            target,
            id_hash,
            weight,
        }
    }
}

/// The published, immutable view of the node set: every node's spec,
/// models, status and drain flag, sorted by id, with candidate lists
/// precomputed per status tier and per model. Rebuilt only when membership,
/// status, models or drain flags change; per-request state lives beside it
/// in shared atomics. Cheap to read: `Cluster::select` loads it with one
/// atomic operation.
#[derive(Debug, Default)]
pub struct ClusterSnapshot {
    generation: u64,
    pub(crate) nodes: Vec<SnapNode>,
    by_id: HashMap<NodeId, u32>,
    /// Cache-model slot → snapshot index (`u32::MAX` = not in snapshot).
    by_slot: Vec<u32>,
    all: TierLists,
    /// Nodes that list no models (serve anything).
    unlisted: TierLists,
    by_model: HashMap<String, TierLists>,
    pub(crate) equal_weights: bool,
}

impl ClusterSnapshot {
    pub(crate) fn build(generation: u64, mut nodes: Vec<SnapNode>) -> Self {
        nodes.sort_by(|a, b| a.entry.spec.id.cmp(&b.entry.spec.id));
        nodes.dedup_by(|a, b| a.entry.spec.id == b.entry.spec.id);
        let mut by_id = HashMap::with_capacity(nodes.len());
        let mut all = TierLists::default();
        let mut unlisted = TierLists::default();
        let mut by_model: HashMap<String, TierLists> = HashMap::new();
        let max_slot = nodes.iter().map(|n| n.live.cache_slot).max().unwrap_or(0);
        let mut by_slot = vec![u32::MAX; max_slot as usize + 1];
        let equal_weights = nodes.windows(2).all(|w| w[0].weight == w[1].weight);
        // Every model named by some node.
        for n in &nodes {
            for m in &n.entry.models {
                by_model.entry(m.clone()).or_default();
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            let i32 = u32::try_from(i).unwrap_or(u32::MAX);
            by_id.insert(n.entry.spec.id.clone(), i32);
            by_slot[n.live.cache_slot as usize] = i32;
            let Some(tier) = Tier::of(&n.entry) else {
                continue;
            };
            all.push(tier, i32);
            if n.entry.models.is_empty() {
                unlisted.push(tier, i32);
                for lists in by_model.values_mut() {
                    lists.push(tier, i32);
                }
            } else {
                for m in &n.entry.models {
                    if let Some(lists) = by_model.get_mut(m) {
                        lists.push(tier, i32);
                    }
                }
            }
        }
        // Lists were filled in index order except the per-model ones, which
        // are too (one pass in index order); nothing to sort.
        Self {
            generation,
            nodes,
            by_id,
            by_slot,
            all,
            unlisted,
            by_model,
            equal_weights,
        }
    }

    /// Increases with every publication.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of nodes (any status).
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node, sorted by id.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &NodeEntry> {
        self.nodes.iter().map(|n| &n.entry)
    }

    /// The node with `id`.
    #[must_use]
    pub fn entry(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.index_of(id).map(|i| &self.nodes[i as usize].entry)
    }

    /// Whether at least one node is healthy or degraded and not drained.
    #[must_use]
    pub fn has_routable(&self) -> bool {
        !self.all.healthy.is_empty() || !self.all.degraded.is_empty()
    }

    pub(crate) fn index_of(&self, id: &NodeId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn index_of_slot(&self, slot: u32) -> Option<u32> {
        self.by_slot
            .get(slot as usize)
            .copied()
            .filter(|&i| i != u32::MAX)
    }

    pub(crate) fn node(&self, i: u32) -> &SnapNode {
        &self.nodes[i as usize]
    }

    /// Candidate lists for a request for `model` (`None`: any node).
    pub(crate) fn lists_for(&self, model: Option<&str>) -> &TierLists {
        match model {
            None => &self.all,
            Some(m) => self.by_model.get(m).unwrap_or(&self.unlisted),
        }
    }

    /// The union of the models the nodes report, sorted and deduplicated.
    #[must_use]
    pub fn models(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_model.keys().cloned().collect();
        v.sort_unstable();
        v
    }

    /// `(id, status)` of every node, for errors and logs.
    #[must_use]
    pub fn statuses(&self) -> Vec<(NodeId, NodeStatus)> {
        self.nodes
            .iter()
            .map(|n| (n.entry.spec.id.clone(), n.entry.status))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cluster_metrics::ManualClock;
    use std::time::Duration;

    pub(crate) fn snap_node(
        id: &str,
        status: NodeStatus,
        slot: u32,
        clock: &ManualClock,
    ) -> SnapNode {
        let live = Arc::new(NodeLive::new(
            clock.shared(),
            slot,
            Duration::from_secs(30),
            100,
        ));
        SnapNode::new(
            NodeEntry::new(NodeSpec::new(id, format!("http://{id}:1")), status),
            live,
        )
    }

    #[test]
    fn tiers_models_and_lookup() {
        let clock = ManualClock::new();
        let mut a = snap_node("a", NodeStatus::Healthy, 0, &clock);
        a.entry.models = vec!["qwen".into()];
        let b = snap_node("b", NodeStatus::Degraded, 1, &clock);
        let mut c = snap_node("c", NodeStatus::Unhealthy, 2, &clock);
        c.entry.probe_ready = true;
        let d = snap_node("d", NodeStatus::Offline, 3, &clock);
        let mut e = snap_node("e", NodeStatus::Healthy, 4, &clock);
        e.entry.drained = true;
        let mut f = snap_node("f", NodeStatus::Healthy, 5, &clock);
        f.entry.models = vec!["llama".into(), "qwen".into()];
        let g = snap_node("g", NodeStatus::Initializing, 6, &clock);
        let s = ClusterSnapshot::build(3, vec![f, e, d, c, b, a, g]);
        assert_eq!(s.generation(), 3);
        assert_eq!(s.len(), 7);
        let ids: Vec<_> = s.entries().map(|e| e.id().as_str().to_owned()).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(s.all.healthy, vec![0, 5]);
        assert_eq!(s.all.degraded, vec![1]);
        assert_eq!(s.all.probe, vec![2]);
        assert_eq!(s.lists_for(Some("qwen")).healthy, vec![0, 5]);
        assert_eq!(s.lists_for(Some("qwen")).degraded, vec![1]);
        assert_eq!(s.lists_for(Some("llama")).healthy, vec![5]);
        // A model nobody lists: only nodes that list nothing.
        assert_eq!(s.lists_for(Some("other")).healthy, Vec::<u32>::new());
        assert_eq!(s.lists_for(Some("other")).degraded, vec![1]);
        assert_eq!(s.models(), ["llama", "qwen"]);
        assert_eq!(s.index_of(&"f".into()), Some(5));
        assert_eq!(s.index_of_slot(5), Some(5));
        assert_eq!(s.index_of_slot(50), None);
        assert!(s.has_routable());
        assert!(s.entry(&"zz".into()).is_none());
        assert_eq!(s.statuses()[3], (NodeId::from("d"), NodeStatus::Offline));
        assert!(s.equal_weights);
        assert!(!ClusterSnapshot::default().has_routable());
    }
}
