//! Why a request went where it went, and how it went: the
//! [`DecisionRecord`] kept for every routed request (served by the
//! gateway's `GET /v1/cluster/decisions`). Plain data; a record never holds
//! prompt text, session keys or client credentials.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::node::{NodeId, UnknownVariant, string_enum};
use crate::routing::RoutingReason;

/// The winner's terms in the cache-aware strategy's cost (see
/// `docs/routing.md`): work in tokens, divided by the node's prefill rate.
///
/// `seconds = (queued + uncached + work_penalty × private +
/// eviction_penalty × evicted + balance × active × warm_turn) / rate`.
///
/// Default: every term 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CostTerms {
    /// The cost: estimated seconds until the node could start this request's
    /// first token, plus the penalties.
    pub seconds: f64,
    /// Prefill work already waiting at the node's gate, tokens.
    pub queued_tokens: u64,
    /// This prompt's tokens the node is predicted not to hold.
    pub uncached_tokens: u64,
    /// Of those, tokens past the prefix many cache entries share (history
    /// that would be re-prefilled here).
    pub private_tokens: u64,
    /// Tokens of an active conversation this request would evict.
    pub evicted_tokens: u64,
    /// Conversations active on the node (0 when the request continues one).
    pub active_conversations: u32,
    /// Measured uncached tokens of a follow-up turn (0 = not measured yet).
    pub warm_turn_tokens: f64,
    /// The node's prefill rate used, tokens per second (measured, else the
    /// default × the node's weight).
    pub rate_tokens_per_second: f64,
}

/// The best node that was not chosen (cache-aware strategy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerUp {
    /// The node.
    pub node: NodeId,
    /// Its cost, seconds (same formula as [`CostTerms::seconds`]).
    pub cost_seconds: f64,
    /// Prompt tokens it was predicted to serve from its cache.
    pub predicted_cached_tokens: u64,
}

/// How a routed request ended. Serialized kebab-case. No default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DecisionOutcome {
    /// `"success"`: the whole answer was delivered.
    Success,
    /// `"overloaded"`: the node answered 429 or 503.
    Overloaded,
    /// `"connect-error"`: no connection to the node.
    ConnectError,
    /// `"timeout"`: no answer or no frame in time.
    Timeout,
    /// `"server-error"`: the node answered another 5xx.
    ServerError,
    /// `"reset"`: the connection broke mid-way.
    Reset,
    /// `"invalid-response"`: the answer was cut short or unreadable.
    InvalidResponse,
    /// `"not-served"`: the node does not serve the path (404 on a
    /// completion endpoint while it still lists the model).
    NotServed,
    /// `"cancelled"`: the client went away first.
    Cancelled,
}

string_enum!(DecisionOutcome, "decision outcome", [
    Success => "success",
    Overloaded => "overloaded",
    ConnectError => "connect-error",
    Timeout => "timeout",
    ServerError => "server-error",
    Reset => "reset",
    InvalidResponse => "invalid-response",
    NotServed => "not-served",
    Cancelled => "cancelled",
]);

/// One routed request: the node chosen and why, what the router predicted
/// and what the node reported, how long it took and how it ended.
///
/// Written when the request ends (its guard is finished or dropped). Token
/// counts are the node's own report where named `reported_*`, the router's
/// estimate otherwise. Optional fields are `null` when unknown: the
/// prediction and cost terms exist only for the cache-aware strategy, the
/// reports only when the node sent `usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Position in the log, 1 for the first request that ended since start.
    pub seq: u64,
    /// When the request was routed, unix milliseconds.
    pub routed_at_unix_ms: u64,
    /// The chosen node.
    pub node: NodeId,
    /// Why: [`RoutingReason::Retry`] for a second or later attempt, else
    /// the strategy's reason.
    pub reason: RoutingReason,
    /// The strategy's own reason (the same as `reason` on a first attempt).
    pub strategy_reason: RoutingReason,
    /// How clearly the node won, 0 to 1 (see `RoutingDecision`).
    pub confidence: f64,
    /// 1 for the first attempt of the request, 2 for its first retry, ...
    pub attempt: u32,
    /// Nodes the strategy evaluated (0 when it does not report it).
    pub candidates: u32,
    /// The prompt's tokens on the chosen node as the router estimated them.
    pub prompt_tokens_estimate: u64,
    /// Full fingerprint blocks of the prompt.
    pub prompt_blocks: u32,
    /// Of those, blocks the cache model believed the node held.
    pub matched_blocks: u32,
    /// Prompt tokens the node was predicted to serve from its cache.
    pub predicted_cached_tokens: Option<u64>,
    /// Prompt tokens the node reported (`usage.prompt_tokens`).
    pub reported_prompt_tokens: Option<u64>,
    /// Cached prompt tokens the node reported
    /// (`usage.prompt_tokens_details.cached_tokens`).
    pub reported_cached_tokens: Option<u64>,
    /// Completion tokens the node reported.
    pub completion_tokens: Option<u64>,
    /// |predicted − reported| cached tokens, in fingerprint blocks.
    pub prediction_error_blocks: Option<f64>,
    /// The winner's cost terms.
    pub cost: Option<CostTerms>,
    /// The best other node and its cost.
    pub runner_up: Option<RunnerUp>,
    /// Time spent waiting at the node's prefill gate, milliseconds.
    pub gate_wait_ms: Option<f64>,
    /// Time from routing to the first byte of the answer, milliseconds.
    pub ttft_ms: Option<f64>,
    /// Time from routing to the end, milliseconds.
    pub total_ms: f64,
    /// How it ended.
    pub outcome: DecisionOutcome,
    /// The W3C trace id of the request (32 hex digits), when tracing is on.
    pub trace_id: Option<String>,
}

impl DecisionRecord {
    /// `matched_blocks / prompt_blocks` (0 for an empty prompt).
    #[must_use]
    pub fn prefix_match_ratio(&self) -> f64 {
        if self.prompt_blocks == 0 {
            0.0
        } else {
            f64::from(self.matched_blocks.min(self.prompt_blocks)) / f64::from(self.prompt_blocks)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_round_trip() {
        for o in DecisionOutcome::ALL {
            assert_eq!(serde_json::to_string(o).unwrap(), format!("\"{o}\""));
            assert_eq!(o.as_str().parse::<DecisionOutcome>().unwrap(), *o);
        }
        assert!("fine".parse::<DecisionOutcome>().is_err());
    }

    #[test]
    fn record_serializes_every_field_and_reads_back() {
        let record = DecisionRecord {
            seq: 7,
            routed_at_unix_ms: 1_700_000_000_000,
            node: NodeId::from("mac-1"),
            reason: RoutingReason::Retry,
            strategy_reason: RoutingReason::CacheHit,
            confidence: 0.9,
            attempt: 2,
            candidates: 3,
            prompt_tokens_estimate: 5000,
            prompt_blocks: 80,
            matched_blocks: 60,
            predicted_cached_tokens: Some(3800),
            reported_prompt_tokens: Some(5012),
            reported_cached_tokens: Some(3790),
            completion_tokens: Some(40),
            prediction_error_blocks: Some(0.2),
            cost: Some(CostTerms {
                seconds: 0.8,
                uncached_tokens: 1200,
                rate_tokens_per_second: 1500.0,
                ..CostTerms::default()
            }),
            runner_up: Some(RunnerUp {
                node: NodeId::from("mac-2"),
                cost_seconds: 3.3,
                predicted_cached_tokens: 0,
            }),
            gate_wait_ms: Some(1.5),
            ttft_ms: Some(812.0),
            total_ms: 2400.0,
            outcome: DecisionOutcome::Success,
            trace_id: None,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["reason"], "retry");
        assert_eq!(json["strategy_reason"], "cache-hit");
        assert_eq!(json["runner_up"]["node"], "mac-2");
        assert_eq!(json["cost"]["uncached_tokens"], 1200);
        assert!(json["trace_id"].is_null());
        let back: DecisionRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        assert!((record.prefix_match_ratio() - 0.75).abs() < 1e-12);
    }
}
