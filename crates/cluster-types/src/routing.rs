//! Routing inputs and outputs: strategy names, request context, decisions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fingerprint::PrefixFingerprint;
use crate::node::{NodeId, UnknownVariant, string_enum};

/// How requests are spread over nodes. Serialized kebab-case.
/// Default: [`LoadBalanceStrategy::CacheAware`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
///
/// Exhaustive on purpose: the router matches every strategy, so a new one
/// cannot fall through to another's behaviour.
#[serde(rename_all = "kebab-case")]
pub enum LoadBalanceStrategy {
    /// `"round-robin"`: each routable node in turn.
    RoundRobin,
    /// `"least-loaded"`: fewest requests in flight (weighted).
    LeastLoaded,
    /// `"latency-based"`: power of two random choices over tower's peak-EWMA
    /// cost (`ttft_estimate × (in_flight + 1) / weight`).
    LatencyBased,
    /// `"cache-aware"`: longest cached prefix of blocks on a node, balanced
    /// against the work queued there; sticky sessions on top.
    #[default]
    CacheAware,
    /// `"cache-score"`: the seeds' baseline score (system prompt hash, tools
    /// hash, health, availability, recency).
    CacheScore,
}

string_enum!(LoadBalanceStrategy, "load-balance strategy", [
    RoundRobin => "round-robin",
    LeastLoaded => "least-loaded",
    LatencyBased => "latency-based",
    CacheAware => "cache-aware",
    CacheScore => "cache-score",
]);

/// Everything the router knows about one request before choosing a node.
///
/// `Default`: no model, no session, empty fingerprint, no hashes, 0 tokens
/// estimated, nothing excluded.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingContext {
    /// Requested model id, if the request named one.
    pub model: Option<String>,
    /// Session key (from the session header or a body field) for sticky
    /// routing.
    pub session_id: Option<String>,
    /// Fingerprint of the canonical prompt.
    pub fingerprint: PrefixFingerprint,
    /// Stable hash of the system prompt (seeds' cache score).
    pub system_prompt_hash: Option<u64>,
    /// Stable hash of the tool list (seeds' cache score).
    pub tools_hash: Option<u64>,
    /// Estimated prompt tokens (e.g. bytes / 4).
    pub prompt_tokens_estimate: u32,
    /// Nodes already tried for this request (retries skip them).
    pub excluded: Vec<NodeId>,
    /// A key every turn of one conversation shares, computed from the
    /// request alone (the session key, else the model, system prompt, tools
    /// and first message): what `routing.consistent_replicas` routes by.
    pub conversation_key: Option<u64>,
}

impl RoutingContext {
    /// Whether `node` was already tried for this request.
    #[must_use]
    pub fn is_excluded(&self, node: &NodeId) -> bool {
        self.excluded.contains(node)
    }
}

/// Why a node was chosen. Serialized kebab-case. No default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RoutingReason {
    /// `"cache-hit"`: the node is believed to hold a prefix of the prompt.
    CacheHit,
    /// `"session-affinity"`: the session is pinned to the node.
    SessionAffinity,
    /// `"least-loaded"`: fewest requests in flight.
    LeastLoaded,
    /// `"round-robin"`: its turn.
    RoundRobin,
    /// `"latency"`: lowest expected latency.
    Latency,
    /// `"cache-score"`: best seeds-style cache score.
    CacheScore,
    /// `"rendezvous"`: deterministic hash choice for an unseen prefix, so
    /// replicas agree without talking.
    Rendezvous,
    /// `"only-candidate"`: it was the only routable node.
    OnlyCandidate,
    /// `"fallback"`: preferred choices were unavailable.
    Fallback,
    /// `"retry"`: an earlier attempt of the same request failed on another
    /// node before its first byte; this node is the next best (the
    /// strategy's own reason is kept beside it in the decision record).
    Retry,
}

string_enum!(RoutingReason, "routing reason", [
    CacheHit => "cache-hit",
    SessionAffinity => "session-affinity",
    LeastLoaded => "least-loaded",
    RoundRobin => "round-robin",
    Latency => "latency",
    CacheScore => "cache-score",
    Rendezvous => "rendezvous",
    OnlyCandidate => "only-candidate",
    Fallback => "fallback",
    Retry => "retry",
]);

/// The router's answer for one request. No default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDecision {
    /// Chosen node.
    pub node_id: NodeId,
    /// Why it was chosen.
    pub reason: RoutingReason,
    /// How sure the router is that this is the best node, 0.0–1.0.
    pub confidence: f64,
}

impl RoutingDecision {
    /// A decision; `confidence` is clamped to `[0, 1]` (NaN becomes 0).
    #[must_use]
    pub fn new(node_id: impl Into<NodeId>, reason: RoutingReason, confidence: f64) -> Self {
        let confidence = if confidence.is_nan() {
            0.0
        } else {
            confidence.clamp(0.0, 1.0)
        };
        Self {
            node_id: node_id.into(),
            reason,
            confidence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names() {
        assert_eq!(
            LoadBalanceStrategy::default(),
            LoadBalanceStrategy::CacheAware
        );
        for s in LoadBalanceStrategy::ALL {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.as_str().parse::<LoadBalanceStrategy>().unwrap(), *s);
        }
        assert_eq!(
            serde_json::from_str::<LoadBalanceStrategy>("\"latency-based\"").unwrap(),
            LoadBalanceStrategy::LatencyBased
        );
        let err = "fastest".parse::<LoadBalanceStrategy>().unwrap_err();
        assert!(err.to_string().contains("round-robin"), "{err}");
    }

    #[test]
    fn reason_names() {
        for r in RoutingReason::ALL {
            assert_eq!(serde_json::to_string(r).unwrap(), format!("\"{r}\""));
            assert_eq!(r.as_str().parse::<RoutingReason>().unwrap(), *r);
        }
    }

    #[test]
    fn decision_clamps_confidence() {
        assert!(
            (RoutingDecision::new("a", RoutingReason::CacheHit, 1.5).confidence - 1.0).abs()
                < f64::EPSILON
        );
        assert!(
            RoutingDecision::new("a", RoutingReason::Fallback, -1.0)
                .confidence
                .abs()
                < f64::EPSILON
        );
        assert!(
            RoutingDecision::new("a", RoutingReason::Fallback, f64::NAN)
                .confidence
                .abs()
                < f64::EPSILON
        );
        let d = RoutingDecision::new("a", RoutingReason::SessionAffinity, 0.5);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            r#"{"node_id":"a","reason":"session-affinity","confidence":0.5}"#
        );
    }

    #[test]
    fn context_exclusion() {
        let ctx = RoutingContext {
            excluded: vec![NodeId::from("a")],
            ..RoutingContext::default()
        };
        assert!(ctx.is_excluded(&"a".into()));
        assert!(!ctx.is_excluded(&"b".into()));
    }
}
