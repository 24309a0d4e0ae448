//! What one answered request teaches, in one place: the node's hit rate and
//! prefill rate, the cluster's follow-up turn size, and (through the
//! request's [`CacheTicket`]) the cache model. The guard records; this
//! learns.

use std::sync::atomic::Ordering;
use std::time::Instant;

use cluster_types::NodeId;

use crate::live::{NodeLive, as_f64};
use crate::shared::RouterShared;
use crate::ticket::CacheTicket;

/// What the guard recorded of an answered request, with the node's usage
/// report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    /// Prompt tokens the node reported.
    pub(crate) prompt: u64,
    /// Of those, served from its cache (at most `prompt`).
    pub(crate) cached: u64,
    /// Tokens generated.
    pub(crate) reply: u64,
    /// When the request was routed.
    pub(crate) started: Instant,
    /// When the node's prefill gate admitted it.
    pub(crate) admitted_at: Option<Instant>,
    /// When its first byte arrived.
    pub(crate) first_byte_at: Option<Instant>,
    /// Whether the first byte was the first token (a streamed answer).
    pub(crate) streamed: bool,
    /// Outstanding prefill on the node when the request was routed.
    pub(crate) queued_ahead: u64,
}

/// Learns from `answer` on `live`'s node; settles the request's cache
/// ticket, if it has one. Returns the cache prediction's error in blocks,
/// when there was a prediction.
pub(crate) fn answered(
    shared: &RouterShared,
    live: &NodeLive,
    node: &NodeId,
    answer: &Answer,
    ticket: Option<CacheTicket>,
) -> Option<f64> {
    let Answer {
        prompt,
        cached,
        reply,
        ..
    } = *answer;
    let params = shared.params.load();
    let cost = &params.cost;
    live.last_reported_cached.store(cached, Ordering::Relaxed);
    if prompt == 0 {
        return None;
    }
    live.hit_rate.blend(as_f64(cached) / as_f64(prompt), 0.2);
    let uncached = prompt - cached;
    if cached > 0 {
        shared.warm_turn.blend(as_f64(uncached), 0.2);
    }
    // Prefill rate: uncached tokens over the time the node spent on them
    // (from admission when the gate admitted the request, else including
    // what was queued ahead of it) — only when the first byte was the
    // first token.
    if let Some(fb) = answer.first_byte_at.filter(|_| answer.streamed) {
        let (from, work) = match answer.admitted_at {
            Some(at) if live.gate.read().limit() > 0 => (at, uncached),
            _ => (answer.started, uncached + answer.queued_ahead),
        };
        let secs = fb.saturating_duration_since(from).as_secs_f64();
        if work >= cost.min_rate_sample_tokens && secs > 0.0 {
            let default = cost.default_prefill_tokens_per_second.max(1e-3);
            let clamp = cost.rate_clamp.max(1.0);
            let sample = (as_f64(work) / secs).clamp(default / clamp, default * clamp);
            live.prefill_rate
                .blend(sample, cost.rate_ewma_alpha.clamp(0.0, 1.0));
        }
    }
    let ticket = ticket?;
    let since = |t: Option<Instant>| {
        t.map_or(0, |t| {
            t.saturating_duration_since(answer.started).as_millis()
        })
    };
    tracing::debug!(
        node = %node,
        gate_wait_ms = since(answer.admitted_at),
        ttft_ms = since(answer.first_byte_at),
        prompt,
        cached,
        predicted = ticket.predicted_cached.unwrap_or_default(),
        "answered"
    );
    ticket.settle(&shared.cache, live, prompt, cached, reply)
}
