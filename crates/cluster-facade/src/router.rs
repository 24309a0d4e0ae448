//! The routing core: one published snapshot, the strategies, sessions and
//! the cache model — no I/O, time from an injected clock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cluster_metrics::{SharedClock, aggregate_cluster_metrics};
use cluster_types::{
    ClusterMetrics, LoadBalanceStrategy, NodeCacheState, NodeId, NodeMetrics, RoutingContext,
    RoutingDecision, RoutingReason, RunnerUp,
};

use crate::decisions::{DecisionDraft, DecisionLog};
use crate::error::FacadeError;
use crate::guard::{RequestGuard, Selection};
use crate::live::{NodeLive, REPORTED_QUEUE_MAX_AGE};
use crate::params::RouterParams;
use crate::prefill_gate::{PrefillGate, TAG_PREFILL_CONCURRENCY};
use crate::probe::{OutcomeObserver, ProbeGate};
use crate::shared::{CacheState, Publisher, RouterShared};
use crate::snapshot::{ClusterSnapshot, NodeEntry, SnapNode};
use crate::strategy::cache_aware::{self, Prompt};
use crate::strategy::cache_score::enc_hash;
use crate::strategy::{Pick, as_f64, filter, p2c};
use crate::ticket::CacheTicket;

/// Node tag overriding `cache.max_prefixes_per_node` for one node (its
/// `--prompt-cache-size`), e.g. `prompt_cache_entries = "4"`.
pub const TAG_CACHE_ENTRIES: &str = "prompt_cache_entries";

/// Node tag overriding `cache.max_tokens_per_node` for one node.
pub const TAG_CACHE_TOKENS: &str = "prompt_cache_tokens";

/// The routing core used by the [`Cluster`](crate::Cluster), usable alone
/// (simulations, benchmarks, custom front ends).
///
/// It holds one published [`ClusterSnapshot`] (replaced by
/// [`publish`](Self::publish) / [`update`](Self::update) when membership or
/// status changes), the strategy state, sticky sessions and the cache model.
/// [`select`](Self::select) reads the snapshot without locking anything that
/// publishing holds; cache-aware selection takes the cache model's short
/// mutex. Cloning is cheap (one `Arc`).
///
/// ```
/// use cluster_facade::{NodeEntry, RequestOutcome, Router, RouterParams};
/// use cluster_types::LoadBalanceStrategy;
/// use cluster_metrics::ManualClock;
/// use cluster_types::{NodeSpec, NodeStatus, RoutingContext};
///
/// let clock = ManualClock::new();
/// let router = Router::new(RouterParams::default().with_strategy(LoadBalanceStrategy::RoundRobin), clock.shared());
/// router.publish(vec![
///     NodeEntry::new(NodeSpec::new("a", "http://127.0.0.1:8081"), NodeStatus::Healthy),
///     NodeEntry::new(NodeSpec::new("b", "http://127.0.0.1:8082"), NodeStatus::Healthy),
/// ]);
/// let sel = router.select(&RoutingContext::default()).unwrap();
/// assert_eq!(sel.target.base_url, "http://127.0.0.1:8081");
/// sel.guard.finish(RequestOutcome::success());
/// ```
#[derive(Debug, Clone)]
pub struct Router {
    pub(crate) shared: Arc<RouterShared>,
}

impl Router {
    /// An empty router (no nodes) with `params` and `clock`.
    #[must_use]
    pub fn new(params: RouterParams, clock: SharedClock) -> Self {
        Self {
            shared: Arc::new(RouterShared::new(params, clock)),
        }
    }

    /// The parameters in force.
    #[must_use]
    pub fn params(&self) -> Arc<RouterParams> {
        self.shared.params.load_full()
    }

    /// Swaps the routing parameters (config reload): the next `select` uses
    /// them, requests in flight finish under the old ones, and the cache
    /// model takes the new capacity and TTL (trimming at its next update).
    /// Sticky sessions keep the TTL and capacity they were created with
    /// until a restart.
    pub fn set_params(&self, params: RouterParams) {
        self.shared.cache.lock().set_params(params.cache);
        self.shared.params.store(Arc::new(params));
    }

    /// The router's clock.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// The records of the most recent routed requests
    /// (`RouterParams::decision_log_size`).
    #[must_use]
    pub fn decisions(&self) -> &DecisionLog {
        &self.shared.decisions
    }

    pub(crate) fn set_observer(&self, observer: Arc<dyn OutcomeObserver>) {
        let _ = self.shared.observer.set(observer);
    }

    pub(crate) fn set_probe_gate(&self, gate: Arc<dyn ProbeGate>) {
        let _ = self.shared.probe_gate.set(gate);
    }

    /// The current snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Arc<ClusterSnapshot> {
        self.shared.snapshot.load_full()
    }

    /// Replaces the node set. Nodes keep their live state (counters, load,
    /// learned rates, cache model) across publications; nodes that left are
    /// forgotten, with their sessions and cache model. Duplicate ids keep
    /// the first.
    pub fn publish(&self, entries: Vec<NodeEntry>) {
        let mut publisher = self.shared.publisher.lock();
        self.publish_locked(&mut publisher, entries);
    }

    /// Changes the node set with `f` (given the current entries, sorted by
    /// id) and publishes the result, atomically with respect to other
    /// publications.
    pub fn update(&self, f: impl FnOnce(&mut Vec<NodeEntry>)) {
        let mut publisher = self.shared.publisher.lock();
        let mut entries: Vec<NodeEntry> = self.shared.snapshot.load().entries().cloned().collect();
        f(&mut entries);
        self.publish_locked(&mut publisher, entries);
    }

    fn publish_locked(&self, publisher: &mut Publisher, entries: Vec<NodeEntry>) {
        let shared = &self.shared;
        let mut old = std::mem::take(&mut publisher.lives);
        let mut nodes = Vec::with_capacity(entries.len());
        for entry in entries {
            if publisher.lives.contains_key(&entry.spec.id) {
                continue;
            }
            let live = old.remove(&entry.spec.id).unwrap_or_else(|| {
                let slot = shared.cache.lock().add_node();
                Arc::new(NodeLive::new(
                    Arc::clone(&shared.clock),
                    slot,
                    shared.params.load().success_window,
                    shared.params.load().success_window_samples,
                ))
            });
            publisher
                .lives
                .insert(entry.spec.id.clone(), Arc::clone(&live));
            let tag = |k: &str| {
                entry
                    .spec
                    .tags
                    .get(k)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            let gate_limit = tag(TAG_PREFILL_CONCURRENCY)
                .map_or(shared.params.load().prefill_concurrency, |v| {
                    usize::try_from(v).unwrap_or(usize::MAX)
                });
            if live.gate.read().limit() != gate_limit {
                *live.gate.write() = PrefillGate::new(gate_limit);
            }
            let (entries, tokens) = (tag(TAG_CACHE_ENTRIES), tag(TAG_CACHE_TOKENS));
            if entries.is_some() || tokens.is_some() {
                shared.cache.lock().set_node_limits(
                    live.cache_slot,
                    entries.map(|e| usize::try_from(e).unwrap_or(usize::MAX)),
                    tokens,
                );
            }
            nodes.push(SnapNode::new(entry, live));
        }
        for (id, live) in old {
            shared.cache.lock().remove_node(live.cache_slot);
            shared.sessions.forget_node(&id);
        }
        publisher.generation += 1;
        shared.snapshot.store(Arc::new(ClusterSnapshot::build(
            publisher.generation,
            nodes,
        )));
    }

    /// Chooses a node for the request (see the crate docs for the passes and
    /// strategies) and returns the decision, the target and the guard.
    ///
    /// # Errors
    /// [`FacadeError::NoRoutableNode`] when no node can take it.
    pub fn select(&self, ctx: &RoutingContext) -> Result<Selection, FacadeError> {
        let shared = &self.shared;
        let snap = shared.snapshot.load();
        let now = shared.clock.now();
        let now_enc = shared.epoch.encode(now);
        let params_now = shared.params.load();
        let params = &**params_now;
        let strategy = params.strategy;
        let sticky = params.sticky_sessions;
        let prefer = match (&ctx.session_id, sticky) {
            (Some(key), true) => shared
                .sessions
                .get(key, now)
                .and_then(|id| snap.index_of(&id)),
            _ => None,
        };
        let prompt = Prompt::new(
            ctx,
            params.cost.bytes_per_token,
            now.checked_sub(params.cost.active_window).unwrap_or(now),
        );
        let cache_aware = strategy == LoadBalanceStrategy::CacheAware;

        // Cache-aware strategies decide and insert under one lock (the
        // model's, which also holds their scratch space). The classic
        // strategies neither read nor maintain the cache model.
        let mut cache_guard = cache_aware.then(|| shared.cache.lock());

        let choice = filter::select_with(
            &snap,
            ctx.model.as_deref(),
            &ctx.excluded,
            now_enc,
            shared.probe_gate.get().map(|g| g.as_ref()),
            |c| {
                if !cache_aware && let Some(p) = prefer.filter(|&p| c.admits(p)) {
                    return Some(Pick::new(p, RoutingReason::SessionAffinity, 1.0));
                }
                match strategy {
                    LoadBalanceStrategy::RoundRobin => shared.rr.choose(c),
                    LoadBalanceStrategy::LeastLoaded => shared.ll.choose(c),
                    LoadBalanceStrategy::LatencyBased => p2c::choose(c, &mut *shared.rng.lock()),
                    LoadBalanceStrategy::CacheScore => {
                        shared.score.choose(c, ctx, now, shared.epoch, params)
                    }
                    LoadBalanceStrategy::CacheAware => {
                        let CacheState { model, scratch } = cache_guard.as_deref_mut()?;
                        if params.consistent_replicas {
                            let max_age = u64::try_from(REPORTED_QUEUE_MAX_AGE.as_nanos())
                                .unwrap_or(u64::MAX);
                            return cache_aware::choose_consistent(c, &prompt, model, max_age);
                        }
                        let warm_turn = shared.warm_turn.load();
                        cache_aware::choose(
                            c,
                            &prompt,
                            model,
                            &params.cost,
                            prefer,
                            warm_turn,
                            scratch,
                        )
                    }
                }
            },
        );
        let Some((mut pick, probe)) = choice else {
            return Err(FacadeError::NoRoutableNode {
                model: ctx.model.clone(),
                nodes: snap.statuses(),
            });
        };
        let node = snap.node(pick.index);
        let live = Arc::clone(&node.live);

        // Cache model: what the node will hold once it has the prompt.
        let prompt_tokens = prompt.tokens(node);
        let cache = cache_guard.as_deref_mut().and_then(|state| {
            CacheTicket::open(
                &mut state.model,
                live.cache_slot,
                &prompt,
                &pick,
                prompt_tokens,
                now,
            )
        });
        drop(cache_guard);
        if !cache_aware {
            // Unknown cache: count the whole prompt as prefill work.
            pick.uncached_tokens = prompt_tokens;
        }
        if pick.predicted_cached.is_some() {
            tracing::debug!(
                node = %node.entry.spec.id,
                reason = %pick.reason,
                cost_s = pick.cost.unwrap_or_default(),
                predicted_cached = pick.predicted_cached.unwrap_or_default(),
                uncached = pick.uncached_tokens,
                queued = live.outstanding_prefill.load(Ordering::Relaxed),
                "routed"
            );
        }

        // Seeds' cache state.
        if let Some(h) = ctx.system_prompt_hash {
            live.last_system_hash.store(enc_hash(h), Ordering::Relaxed);
        }
        if let Some(h) = ctx.tools_hash {
            live.last_tools_hash.store(enc_hash(h), Ordering::Relaxed);
        }
        live.cache_updated.store(now_enc, Ordering::Relaxed);

        if let (Some(key), true) = (&ctx.session_id, sticky) {
            shared.sessions.put(key, &node.entry.spec.id, now);
        }
        let queued_ahead = live
            .outstanding_prefill
            .fetch_add(pick.uncached_tokens, Ordering::Relaxed);
        let in_flight = live.counters.begin();
        live.routed_in_flight.fetch_add(1, Ordering::Relaxed);

        // The decision: counted per reason, drafted for the log.
        let reason = if ctx.excluded.is_empty() {
            pick.reason
        } else {
            RoutingReason::Retry
        };
        let prompt_blocks = prompt.chain.len();
        let match_ratio = (cache_aware && prompt_blocks > 0)
            .then(|| as_f64(pick.cached_blocks as u64) / as_f64(prompt_blocks as u64));
        live.counters.record_decision(reason, match_ratio);
        let draft = shared.decisions.is_enabled().then(|| DecisionDraft {
            strategy_reason: pick.reason,
            confidence: pick.confidence,
            attempt: u32::try_from(ctx.excluded.len() + 1).unwrap_or(u32::MAX),
            candidates: pick.evaluated,
            prompt_tokens_estimate: prompt_tokens,
            prompt_blocks: u32::try_from(prompt_blocks).unwrap_or(u32::MAX),
            matched_blocks: u32::try_from(pick.cached_blocks).unwrap_or(u32::MAX),
            predicted_cached: pick.predicted_cached,
            cost: pick.terms,
            runner_up: pick.runner_up.map(|r| RunnerUp {
                node: snap.node(r.index).entry.spec.id.clone(),
                cost_seconds: r.cost,
                predicted_cached_tokens: r.predicted_cached,
            }),
            prediction_error_blocks: None,
            trace_id: None,
        });
        let decision =
            RoutingDecision::new(node.entry.spec.id.clone(), pick.reason, pick.confidence);
        let target = Arc::clone(&node.target);
        let guard = RequestGuard {
            shared: Arc::clone(shared),
            live,
            node_id: node.entry.spec.id.clone(),
            in_flight: Some(in_flight),
            started: now,
            admitted_at: None,
            first_byte_at: None,
            prefill_tokens: pick.uncached_tokens,
            queued_ahead,
            cache,
            slot: None,
            streamed: true,
            probe,
            done: false,
            reason,
            draft,
        };
        Ok(Selection {
            decision,
            target,
            guard,
        })
    }

    /// Housekeeping at `now`: expires stale cache-model entries and sticky
    /// sessions. Returns `(entries, sessions)` dropped. The cluster runs it
    /// every `cache.sync_interval`.
    pub fn expire(&self, now: Instant) -> (usize, usize) {
        let entries = self.shared.cache.lock().expire(now);
        let sessions = self.shared.sessions.sweep(now);
        (entries, sessions)
    }

    /// Sticky sessions currently remembered.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Requests in flight on a node (0 for an unknown node).
    #[must_use]
    pub fn in_flight(&self, node: &NodeId) -> u64 {
        let snap = self.shared.snapshot.load();
        snap.index_of(node)
            .map_or(0, |i| snap.node(i).live.in_flight())
    }

    /// The learned prefill rate of a node, tokens/s (`None` before the first
    /// measurement or for an unknown node).
    #[must_use]
    pub fn prefill_rate(&self, node: &NodeId) -> Option<f64> {
        let snap = self.shared.snapshot.load();
        let r = snap.node(snap.index_of(node)?).live.prefill_rate.load();
        (r > 0.0).then_some(r)
    }

    /// Whether the cache model believes `node` holds at least one block of
    /// `ctx`'s prompt, and how many blocks.
    #[must_use]
    pub fn believed_cached_blocks(&self, node: &NodeId, ctx: &RoutingContext) -> usize {
        let snap = self.shared.snapshot.load();
        let Some(i) = snap.index_of(node) else {
            return 0;
        };
        let slot = snap.node(i).live.cache_slot;
        self.shared
            .cache
            .lock()
            .matched_blocks(slot, ctx.fingerprint.full_blocks())
    }

    /// The router's view of a node's cache (`cluster_types::NodeCacheState`).
    #[must_use]
    pub fn cache_state(&self, node: &NodeId) -> Option<NodeCacheState> {
        let snap = self.shared.snapshot.load();
        let live = &snap.node(snap.index_of(node)?).live;
        let (entries, tokens) = self.shared.cache.lock().node_stats(live.cache_slot);
        let hash = |v: u64| (v != 0).then_some(v);
        let updated = self
            .shared
            .epoch
            .decode(live.cache_updated.load(Ordering::Relaxed));
        Some(NodeCacheState {
            cached_prefixes: u32::try_from(entries).unwrap_or(u32::MAX),
            cached_tokens_estimate: tokens,
            system_prompt_hash: hash(live.last_system_hash.load(Ordering::Relaxed)),
            tools_hash: hash(live.last_tools_hash.load(Ordering::Relaxed)),
            last_reported_cached_tokens: live.last_reported_cached.load(Ordering::Relaxed),
            hit_rate: live.hit_rate.load(),
            last_updated_unix_ms: updated.map(|t| self.unix_ms(t)),
        })
    }

    /// A node's request metrics (`cluster_types::NodeMetrics`).
    #[must_use]
    pub fn node_metrics(&self, node: &NodeId) -> Option<NodeMetrics> {
        let snap = self.shared.snapshot.load();
        let live = &snap.node(snap.index_of(node)?).live;
        Some(live.counters.snapshot().to_node_metrics())
    }

    /// The cluster's request metrics: every node's counters aggregated by
    /// `cluster_metrics::aggregate_cluster_metrics` (node counts by status,
    /// sums of requests and tokens — completion tokens included — and the
    /// request-weighted mean latencies).
    #[must_use]
    pub fn cluster_metrics(&self) -> ClusterMetrics {
        let snap = self.shared.snapshot.load();
        let nodes: Vec<_> = snap
            .nodes
            .iter()
            .map(|n| (n.entry.status, n.live.counters.snapshot()))
            .collect();
        aggregate_cluster_metrics(
            snap.nodes
                .iter()
                .zip(&nodes)
                .map(|(n, (status, counters))| (n.entry.id(), *status, counters)),
        )
    }

    /// Converts a router-clock instant to unix milliseconds (through the
    /// system clock's current offset).
    pub(crate) fn unix_ms(&self, t: Instant) -> u64 {
        self.shared.unix_ms(t)
    }

    /// The per-node counters, for Prometheus exposition.
    pub(crate) fn counters(&self) -> Vec<(NodeId, Arc<cluster_metrics::NodeCounters>)> {
        self.shared
            .snapshot
            .load()
            .nodes
            .iter()
            .map(|n| (n.entry.spec.id.clone(), Arc::clone(&n.live.counters)))
            .collect()
    }

    /// Records that `node` now holds `ctx`'s prompt (a warm-up request
    /// completed there).
    pub fn record_cached(&self, node: &NodeId, ctx: &RoutingContext) {
        let snap = self.shared.snapshot.load();
        let Some(i) = snap.index_of(node) else {
            return;
        };
        let chain = ctx.fingerprint.full_blocks();
        if chain.is_empty() {
            return;
        }
        let now = self.shared.clock.now();
        let node = snap.node(i);
        let bytes_per_token = self.shared.params.load().cost.bytes_per_token;
        let tokens = Prompt::new(ctx, bytes_per_token, now).tokens(node);
        let slot = node.live.cache_slot;
        self.shared
            .cache
            .lock()
            .insert(slot, Arc::from(chain), tokens, now);
    }

    /// Skips `node` until `until` (it answered 429/503, or health saw it
    /// saturated).
    pub fn mark_saturated(&self, node: &NodeId, until: Instant) {
        let snap = self.shared.snapshot.load();
        if let Some(i) = snap.index_of(node) {
            let enc = self.shared.epoch.encode(until);
            snap.node(i)
                .live
                .saturated_until
                .fetch_max(enc, Ordering::Relaxed);
        }
    }

    /// Applies a node's own report of how many prompt-cache entries it
    /// holds: 0 clears the model of the node (it restarted); fewer than the
    /// model believes evicts the least recently used ones. Returns the
    /// entries dropped.
    pub fn sync_cache_entries(&self, node: &NodeId, entries: usize) -> usize {
        let snap = self.shared.snapshot.load();
        let Some(i) = snap.index_of(node) else {
            return 0;
        };
        let slot = snap.node(i).live.cache_slot;
        self.shared.cache.lock().trim_node(slot, entries)
    }

    /// Drops what the cache model believes about a node (e.g. it restarted).
    pub fn forget_cache(&self, node: &NodeId) {
        let snap = self.shared.snapshot.load();
        if let Some(i) = snap.index_of(node) {
            self.shared
                .cache
                .lock()
                .clear_node(snap.node(i).live.cache_slot);
        }
    }

    /// Records how many requests a node says it is running or queueing
    /// (its own `/metrics`, all clients); least-loaded reads it while fresh.
    pub fn record_reported_queue(&self, node: &NodeId, requests: u64) {
        let snap = self.shared.snapshot.load();
        if let Some(i) = snap.index_of(node) {
            let now = self.shared.epoch.encode(self.shared.clock.now());
            snap.node(i).live.reported_queue.store(requests, now);
        }
    }

    /// Replaces what the cache model believes about a node with chains the
    /// node reported itself (block chains and token counts).
    pub fn replace_cache(&self, node: &NodeId, chains: Vec<(Arc<[u64]>, u64)>) {
        let snap = self.shared.snapshot.load();
        if let Some(i) = snap.index_of(node) {
            let now = self.shared.clock.now();
            self.shared
                .cache
                .lock()
                .replace_node(snap.node(i).live.cache_slot, chains, now);
        }
    }
}
