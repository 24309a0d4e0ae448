//! Router parameters: the strategy and every knob of the routing core.

use std::time::Duration;

use cluster_types::{ClusterConfig, LoadBalanceStrategy};

use crate::cache_model::CacheModelParams;

/// The cost model of the cache-aware strategy (see `docs/routing.md`):
///
/// ```text
/// cost(node) = ( queued(node) + uncached(node)
///              + work_penalty × private(node)
///              + eviction_penalty × evicted(node)
///              + balance × active(node) × warm_turn ) / rate(node)
/// ```
///
/// Every term is work in tokens (queued prefill, this prompt's uncached
/// tokens, re-prefilled history, an evicted conversation, the turns the
/// node's active conversations will send) divided by the node's measured
/// prefill rate, so no default is tied to a node's speed.
///
/// Defaults ([`CostParams::default`]) are given per field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostParams {
    /// Prefill rate assumed for a node before any measurement, prompt tokens
    /// per second (× the node's weight; measured per node afterwards).
    /// Default 1500.
    pub default_prefill_tokens_per_second: f64,
    /// Weight of a new sample in the per-node prefill-rate EWMA. Default 0.2.
    pub rate_ewma_alpha: f64,
    /// Measured rates are kept within `[default / rate_clamp, default ×
    /// rate_clamp]`. Default 20.
    pub rate_clamp: f64,
    /// Samples with less prefill work than this do not update the rate
    /// (overhead-dominated). Default 256 tokens.
    pub min_rate_sample_tokens: u64,
    /// Extra weight of *private* uncached tokens (past the shared prefix):
    /// moving a conversation away from its cache re-prefills its history,
    /// work that every request queued behind it waits for too. Default 1.0.
    pub work_penalty: f64,
    /// Weight of the private history a new conversation would evict from a
    /// node whose prompt cache is full of active conversations (that
    /// conversation re-prefills it on its next turn). Default 1.0.
    pub eviction_penalty: f64,
    /// Weight of the follow-up turns the node's active conversations will
    /// queue soon (`active × warm_turn` tokens); spreads new conversations.
    /// Default 0.25 (measured on real mlx_lm.server nodes against 1.0:
    /// TTFT mean 0.62 s vs 0.80 s, p99 2.5 s vs 3.8 s at the same hit
    /// ratio; see `docs/routing.md`).
    pub balance: f64,
    /// A conversation (cache-model entry) used within this window counts as
    /// active on its node. Default 120 s.
    pub active_window: std::time::Duration,
    /// Nodes whose costs lie within `max(tie_relative × best, tie_tokens /
    /// rate)` of the best are tied (broken by session, then rendezvous
    /// hash). Default 64 tokens.
    pub tie_tokens: f64,
    /// See `tie_tokens`. Default 0.05 (5 %).
    pub tie_relative: f64,
    /// Blocks past the best node's match that key the rendezvous hash among
    /// tied nodes. Default 8 (2 KiB of prompt with 256-byte blocks).
    pub rendezvous_blocks: usize,
    /// Up to this many candidates every node is evaluated; above it, only the
    /// nodes with a cached match plus `sample_candidates` nodes picked by
    /// hashing the prompt (deterministic, so replicas agree). Default 128.
    pub full_scan_limit: usize,
    /// See `full_scan_limit`. Default 4.
    pub sample_candidates: usize,
    /// Bytes of canonical prompt per token before a node has reported token
    /// counts (then its measured ratio is used). Default 4.
    pub bytes_per_token: u64,
}

impl Default for CostParams {
    fn default() -> Self {
        Self {
            default_prefill_tokens_per_second: 1500.0,
            rate_ewma_alpha: 0.2,
            rate_clamp: 20.0,
            min_rate_sample_tokens: 256,
            work_penalty: 1.0,
            eviction_penalty: 1.0,
            balance: 0.25,
            active_window: std::time::Duration::from_secs(120),
            tie_tokens: 64.0,
            tie_relative: 0.05,
            rendezvous_blocks: 8,
            full_scan_limit: 128,
            sample_candidates: 4,
            bytes_per_token: 4,
        }
    }
}

/// Everything the routing core needs, with defaults that match
/// `ClusterConfig::default()`.
///
/// Build from a config with [`RouterParams::from_config`]; the knobs that
/// the config does not carry keep the defaults given per field.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterParams {
    /// Selection algorithm. Default [`LoadBalanceStrategy::CacheAware`]
    /// (`routing.strategy`).
    pub strategy: LoadBalanceStrategy,
    /// Whether requests with a session id stick to the node that served the
    /// session (hard for round-robin / least-loaded / p2c / cache-score; a
    /// tie-break preference for cache-aware, whose cache model already keeps
    /// a conversation where its prefix is). Default true.
    pub sticky_sessions: bool,
    /// A session unused for this long is forgotten. Default 30 min
    /// (`routing.session_ttl`).
    pub session_ttl: Duration,
    /// Sessions remembered at most (the least recently used go first).
    /// Default 100 000 (`routing.max_sessions`).
    pub max_sessions: usize,
    /// Cache model limits (`cache.max_prefixes_per_node`,
    /// `cache.max_tokens_per_node`, `cache.entry_ttl`).
    pub cache: CacheModelParams,
    /// Cost model of the cache-aware strategy.
    pub cost: CostParams,
    /// How long a node that answered 429/503 without `Retry-After` is skipped.
    /// Default 1 s.
    pub overload_backoff: Duration,
    /// Cap on a node's `Retry-After`. Default 60 s.
    pub max_overload_backoff: Duration,
    /// "Cache updated recently" window of the seeds' score. Default 60 s.
    pub cache_score_recency: Duration,
    /// In-flight requests under which the seeds' score adds its availability
    /// bonus. Default 5.
    pub cache_score_max_in_flight: u64,
    /// Window of the per-node passive success rate (used by the seeds' score
    /// and the status). Default 30 s (`health.window`).
    pub success_window: Duration,
    /// Samples kept in that window. Default 100 (`health.max_samples`).
    pub success_window_samples: usize,
    /// Seed of the router's random number generator (p2c sampling,
    /// round-robin start). Default 0x6d6c78 ("mlx").
    pub seed: u64,
    /// Requests each node prefills at once; the rest wait at its gate in the
    /// gateway (0 = unlimited; see `prefill_gate.rs`). The node tag
    /// `prefill_concurrency` overrides it per node. Default 1
    /// (`routing.prefill_concurrency`).
    pub prefill_concurrency: usize,
    /// Cache-aware routing by the request's conversation key alone (weighted
    /// rendezvous over the candidates), so independent gateway replicas
    /// agree (`routing.consistent_replicas`). Default false.
    pub consistent_replicas: bool,
    /// Decision records kept (the most recent requests; 0 = none). Default
    /// 1000 (`observability.decision_log_size`).
    pub decision_log_size: usize,
}

impl Default for RouterParams {
    fn default() -> Self {
        Self {
            strategy: LoadBalanceStrategy::default(),
            sticky_sessions: true,
            session_ttl: Duration::from_secs(30 * 60),
            max_sessions: 100_000,
            cache: CacheModelParams::default(),
            cost: CostParams::default(),
            overload_backoff: Duration::from_secs(1),
            max_overload_backoff: Duration::from_secs(60),
            cache_score_recency: Duration::from_secs(60),
            cache_score_max_in_flight: 5,
            success_window: Duration::from_secs(30),
            success_window_samples: 100,
            seed: 0x006d_6c78,
            prefill_concurrency: 1,
            consistent_replicas: false,
            decision_log_size: 1000,
        }
    }
}

impl RouterParams {
    /// Parameters from a cluster config: strategy, sessions, cache limits,
    /// the health window and the decision log's size; everything else
    /// default.
    #[must_use]
    pub fn from_config(config: &ClusterConfig) -> Self {
        let d = Self::default();
        Self {
            strategy: config.routing.strategy,
            session_ttl: config.routing.session_ttl,
            max_sessions: config.routing.max_sessions,
            sticky_sessions: config.routing.sticky_sessions,
            prefill_concurrency: config.routing.prefill_concurrency,
            consistent_replicas: config.routing.consistent_replicas,
            cache: CacheModelParams {
                max_entries_per_node: usize::try_from(config.cache.max_prefixes_per_node)
                    .unwrap_or(usize::MAX),
                max_tokens_per_node: config.cache.max_tokens_per_node,
                entry_ttl: config.cache.entry_ttl,
            },
            success_window: config.health.window,
            success_window_samples: config.health.max_samples,
            decision_log_size: usize::try_from(config.observability.decision_log_size)
                .unwrap_or(usize::MAX),
            ..d
        }
    }

    /// The same parameters with another strategy.
    #[must_use]
    pub fn with_strategy(mut self, strategy: LoadBalanceStrategy) -> Self {
        self.strategy = strategy;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_mapping() {
        let mut c = ClusterConfig::default();
        c.routing.strategy = LoadBalanceStrategy::LatencyBased;
        c.cache.max_prefixes_per_node = 4;
        let p = RouterParams::from_config(&c);
        assert_eq!(p.strategy, LoadBalanceStrategy::LatencyBased);
        assert_eq!(p.cache.max_entries_per_node, 4);
        assert_eq!(
            RouterParams::from_config(&ClusterConfig::default()).strategy,
            LoadBalanceStrategy::CacheAware
        );
        assert_eq!(
            p.clone()
                .with_strategy(LoadBalanceStrategy::RoundRobin)
                .strategy,
            LoadBalanceStrategy::RoundRobin
        );
    }
}
