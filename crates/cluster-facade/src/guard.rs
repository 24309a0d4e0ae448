//! What `select` hands out: the decision, where to send the request, and
//! the guard that reports how it went.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cluster_metrics::{InFlightGuard, RequestOutcome as MetricsOutcome};
use cluster_types::{ApiKey, DecisionOutcome, NodeId, RoutingDecision, RoutingReason};

use crate::cache_model::{Held, Inserted};
use crate::decisions::{Completion, DecisionDraft};
use crate::live::NodeLive;
use crate::prefill_gate::{PrefillSlot, hold_limit};
use crate::router::RouterShared;
use crate::strategy::as_f64;

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

/// The answer of `select`: the decision, the target, and the guard that
/// counts the request in flight on the node until it is finished.
#[derive(Debug)]
pub struct Selection {
    /// Node, reason and confidence.
    pub decision: RoutingDecision,
    /// Where to send the request.
    pub target: NodeTarget,
    /// Report the outcome through this (dropping it counts as cancelled).
    pub guard: RequestGuard,
}

/// Why a request failed (for passive health and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The connection could not be established.
    Connect,
    /// No answer (or no first byte) in time.
    Timeout,
    /// The node answered with a 5xx status other than 503.
    ServerError {
        /// The HTTP status.
        status: u16,
    },
    /// The connection broke mid-way.
    Reset,
    /// The answer could not be understood.
    InvalidResponse,
    /// The node answered that it cannot serve what it listed: 404 on the
    /// completion path (mlx_lm.server once its generation thread died
    /// answers every completion 404 while `/v1/models` still lists the
    /// model).
    NotServed {
        /// The HTTP status.
        status: u16,
    },
}

/// How a routed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestOutcome {
    /// Completed; token counts from the answer's `usage` when present
    /// (`prompt_tokens`, `prompt_tokens_details.cached_tokens`,
    /// `completion_tokens`).
    Success {
        /// Prompt tokens the node reported.
        prompt_tokens: Option<u32>,
        /// Of those, tokens served from its prompt cache.
        cached_tokens: Option<u32>,
        /// Tokens generated.
        completion_tokens: Option<u32>,
    },
    /// 429 or 503: the node is busy. Raises its load estimate and skips it
    /// for `retry_after` (default 1 s, at most 60 s); does not count against
    /// its health.
    Overloaded {
        /// The `Retry-After` the node sent, if any.
        retry_after: Option<Duration>,
    },
    /// The request failed at the node; counts against its health.
    Failed {
        /// What went wrong.
        kind: FailureKind,
    },
    /// The client went away; neither success nor failure for the node.
    ClientCancelled,
}

impl RequestOutcome {
    /// A success without token counts.
    #[must_use]
    pub const fn success() -> Self {
        Self::Success {
            prompt_tokens: None,
            cached_tokens: None,
            completion_tokens: None,
        }
    }

    /// A success with token counts.
    #[must_use]
    pub const fn success_with_usage(prompt: u32, cached: u32, completion: u32) -> Self {
        Self::Success {
            prompt_tokens: Some(prompt),
            cached_tokens: Some(cached),
            completion_tokens: Some(completion),
        }
    }

    /// Whether this counts against the node's health.
    #[must_use]
    pub const fn is_node_failure(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

/// One request's claim on a half-open node's single probe slot.
pub(crate) trait ProbeTicket: Send {
    /// Reports the probe request's outcome (this is the node's passive
    /// health signal for the request).
    fn complete(self: Box<Self>, outcome: &RequestOutcome, latency: Duration);
}

/// Hands out probe slots (the cluster's health orchestrator).
pub(crate) trait ProbeGate: Send + Sync {
    /// The node's probe slot, if it is free now.
    fn try_acquire(&self, node: &NodeId) -> Option<Box<dyn ProbeTicket>>;
}

/// How a request holds a probe slot.
pub(crate) enum ProbeClaim {
    /// The node's own flag (routers without health).
    Flag,
    /// A permit from the health orchestrator.
    Ticket(Box<dyn ProbeTicket>),
}

impl std::fmt::Debug for ProbeClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flag => "ProbeClaim::Flag",
            Self::Ticket(_) => "ProbeClaim::Ticket",
        })
    }
}

/// Cache-model bookkeeping of one request: inserted at select, confirmed
/// or rolled back at finish.
#[derive(Debug)]
pub(crate) struct CacheTicket {
    pub(crate) slot: u32,
    pub(crate) chain: Arc<[u64]>,
    pub(crate) inserted: Option<Inserted>,
    /// Prompt tokens the node was predicted to serve from its cache.
    pub(crate) predicted_cached: Option<u64>,
    /// The entry the request extends exactly (its conversation's last
    /// turn on the node), when the prediction rests on one.
    pub(crate) held: Option<Held>,
    /// Canonical prompt bytes and bytes per block (to convert reports).
    pub(crate) prompt_bytes: u64,
    pub(crate) block_bytes: u64,
}

/// Counts one request in flight on its node until finished.
///
/// Call [`first_byte`](Self::first_byte) when the first byte of the answer
/// arrives and [`finish`](Self::finish) with the outcome; that feeds the
/// node's metrics, the load estimates, passive health, the cache model and
/// the learned prefill rate. Dropping the guard without `finish` counts the
/// request as [`RequestOutcome::ClientCancelled`] — never as a success.
#[derive(Debug)]
pub struct RequestGuard {
    pub(crate) shared: Arc<RouterShared>,
    pub(crate) live: Arc<NodeLive>,
    pub(crate) node_id: NodeId,
    pub(crate) in_flight: Option<InFlightGuard>,
    pub(crate) started: Instant,
    /// When the node's prefill gate let the request through.
    pub(crate) admitted_at: Option<Instant>,
    pub(crate) first_byte_at: Option<Instant>,
    /// Predicted uncached tokens, counted in the node's outstanding prefill
    /// until the first byte.
    pub(crate) prefill_tokens: u64,
    /// Outstanding prefill on the node when this request was routed.
    pub(crate) queued_ahead: u64,
    pub(crate) cache: Option<CacheTicket>,
    /// The node's prefill slot, held from admission to the first byte.
    pub(crate) slot: Option<PrefillSlot>,
    /// Whether the first byte marks the first token (a streamed answer; a
    /// non-streamed one's first byte comes after the whole generation and
    /// says nothing about prefill). Default true; set at admission.
    pub(crate) streamed: bool,
    pub(crate) probe: Option<ProbeClaim>,
    pub(crate) done: bool,
    /// The decision's reason (`retry` on a later attempt).
    pub(crate) reason: RoutingReason,
    /// The decision record being written (`None` when the log is off).
    pub(crate) draft: Option<DecisionDraft>,
}

impl RequestGuard {
    /// The node the request went to.
    #[must_use]
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Why the node was chosen: [`RoutingReason::Retry`] when the request
    /// had already been tried elsewhere (`RoutingContext::excluded` not
    /// empty), else the strategy's reason (`Selection::decision`).
    #[must_use]
    pub fn reason(&self) -> RoutingReason {
        self.reason
    }

    /// Attaches the request's W3C trace id (32 lowercase hex digits) to its
    /// decision record. Default none.
    pub fn set_trace_id(&mut self, trace_id: impl Into<String>) {
        if let Some(draft) = self.draft.as_mut() {
            draft.trace_id = Some(trace_id.into());
        }
    }

    /// When the request was routed (router clock).
    #[must_use]
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Time to first byte, once [`first_byte`](Self::first_byte) was called.
    #[must_use]
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        self.first_byte_at
            .map(|t| t.saturating_duration_since(self.started))
    }

    /// Waits until the node's prefill gate admits the request
    /// (`routing.prefill_concurrency`, default one prefill per node at a
    /// time; the waiter with the earliest arrival + predicted prefill time
    /// goes first); call it right before sending the request to the node. The slot
    /// is held until [`first_byte`](Self::first_byte), the end of the
    /// request, or a hold limit: for `streamed` answers 8 × the predicted
    /// prefill time (at least 10 s), else the predicted prefill time, since a
    /// non-streamed answer's first byte comes only after the generation.
    /// Returns at once when the node's gate is unlimited or the request was
    /// already admitted. Cancellation-safe.
    pub async fn admitted(&mut self, streamed: bool) {
        if self.admitted_at.is_some() {
            return;
        }
        let rate = self.live.prefill_rate.load();
        let rate = if rate > 0.0 {
            rate
        } else {
            self.shared
                .params
                .load()
                .cost
                .default_prefill_tokens_per_second
                .max(1.0)
        };
        let predicted = Duration::from_secs_f64((as_f64(self.prefill_tokens) / rate).min(3600.0));
        // Shortest predicted prefill first, but never past a request that
        // was waiting before this one could have finished (see the gate).
        let arrived = self.shared.epoch.encode(self.shared.clock.now());
        let key = arrived.saturating_add(u64::try_from(predicted.as_nanos()).unwrap_or(u64::MAX));
        let gate = self.live.gate.read().clone();
        let slot = gate.acquire(key).await;
        self.admitted_at = Some(self.shared.clock.now());
        self.streamed = streamed;
        slot.release_after(hold_limit(predicted, streamed));
        self.slot = Some(slot);
    }

    /// Time the request waited at the node's prefill gate, once admitted.
    #[must_use]
    pub fn gate_wait(&self) -> Option<Duration> {
        self.admitted_at
            .map(|t| t.saturating_duration_since(self.started))
    }

    /// Records that the first byte of the answer arrived now (router clock).
    /// Later calls are ignored.
    pub fn first_byte(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.release();
        }
        if self.first_byte_at.is_some() {
            return;
        }
        let now = self.shared.clock.now();
        self.first_byte_at = Some(now);
        if let Some(g) = self.in_flight.as_mut() {
            g.mark_first_token();
        }
        self.release_prefill();
        let ttft = now.saturating_duration_since(self.started);
        self.live.counters.observe_latency(ttft);
        self.live.latency_ns.store(self.live.latency_estimate_ns());
    }

    fn release_prefill(&mut self) {
        if self.prefill_tokens > 0 {
            let t = self.prefill_tokens;
            self.prefill_tokens = 0;
            let _ = self.live.outstanding_prefill.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |v| Some(v.saturating_sub(t)),
            );
        }
    }

    /// Reports how the request ended (see [`RequestOutcome`]).
    pub fn finish(mut self, outcome: RequestOutcome) {
        self.complete(outcome);
    }

    fn complete(&mut self, outcome: RequestOutcome) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(slot) = self.slot.take() {
            slot.release();
        }
        let shared = Arc::clone(&self.shared);
        let now = shared.clock.now();
        let had_first_byte = self.first_byte_at.is_some();
        self.release_prefill();
        let latency = now.saturating_duration_since(self.started);
        let ttft = self.time_to_first_byte();
        let gate_wait = self.gate_wait();
        let live = Arc::clone(&self.live);

        // Metrics.
        let metrics = match outcome {
            RequestOutcome::Success {
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            } => {
                let mut m = MetricsOutcome::success();
                if let (Some(p), Some(c)) = (prompt_tokens, cached_tokens) {
                    m = m.with_tokens(u64::from(p), u64::from(c));
                }
                if let Some(n) = completion_tokens {
                    m = m.with_completion_tokens(u64::from(n));
                }
                m
            }
            RequestOutcome::Overloaded { .. } | RequestOutcome::Failed { .. } => {
                MetricsOutcome::failure()
            }
            RequestOutcome::ClientCancelled => MetricsOutcome::cancelled(),
        };
        if let Some(g) = self.in_flight.take() {
            g.finish(metrics);
            live.routed_in_flight.fetch_sub(1, Ordering::Relaxed);
        }

        match outcome {
            RequestOutcome::Success {
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            } => {
                live.record_passive(now, true, Some(ttft.unwrap_or(latency)));
                live.latency_ns.store(live.latency_estimate_ns());
                if let (Some(p), Some(c)) = (prompt_tokens, cached_tokens) {
                    let (p, c) = (u64::from(p), u64::from(c).min(u64::from(p)));
                    let reply = completion_tokens.map_or(0, u64::from);
                    self.learn(p, c, reply);
                    live.cache_updated
                        .store(shared.epoch.encode(now), Ordering::Relaxed);
                }
            }
            RequestOutcome::Overloaded { retry_after } => {
                let p = shared.params.load();
                let wait = retry_after
                    .unwrap_or(p.overload_backoff)
                    .min(p.max_overload_backoff);
                live.saturated_until
                    .store(shared.epoch.encode(now + wait), Ordering::Relaxed);
                // Raise the load estimate: a peak the size of the wait.
                live.counters.observe_latency(wait.max(latency));
                live.latency_ns.store(live.latency_estimate_ns());
                self.rollback();
            }
            RequestOutcome::Failed { .. } => {
                live.record_passive(now, false, None);
                self.rollback();
            }
            RequestOutcome::ClientCancelled => {
                if !had_first_byte {
                    self.rollback();
                }
            }
        }
        match self.probe.take() {
            Some(ProbeClaim::Flag) => {
                live.probe_in_flight.store(false, Ordering::Release);
                if let Some(obs) = shared.observer.get() {
                    obs.observe(&self.node_id, &outcome, latency);
                }
            }
            // The probe's outcome is the health signal: no second report.
            Some(ProbeClaim::Ticket(ticket)) => ticket.complete(&outcome, latency),
            None => {
                if let Some(obs) = shared.observer.get() {
                    obs.observe(&self.node_id, &outcome, latency);
                }
            }
        }
        if let Some(draft) = self.draft.take() {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let (prompt_tokens, cached_tokens, completion_tokens) = match outcome {
                RequestOutcome::Success {
                    prompt_tokens,
                    cached_tokens,
                    completion_tokens,
                } => (prompt_tokens, cached_tokens, completion_tokens),
                _ => (None, None, None),
            };
            let end = Completion {
                routed_at_unix_ms: shared.unix_ms(self.started),
                reason: self.reason,
                gate_wait_ms: gate_wait.map(ms),
                ttft_ms: ttft.map(ms),
                total_ms: ms(latency),
                outcome: decision_outcome(outcome),
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            };
            shared
                .decisions
                .push(draft.complete(self.node_id.clone(), end));
        }
    }

    fn rollback(&mut self) {
        if let Some(ticket) = self.cache.take()
            && let Some(ins) = ticket.inserted
        {
            self.shared.cache.lock().rollback(ticket.slot, ins);
        }
    }

    /// Everything one answered request teaches, from the node's report of
    /// `prompt` tokens of which `cached` came from its cache, and a `reply`
    /// of that many tokens: the node's hit rate, tokens per byte, prefill
    /// rate and reply reuse, the cluster's follow-up turn size, the cache
    /// model's fidelity, and the cache model itself.
    fn learn(&mut self, prompt: u64, cached: u64, reply: u64) {
        let shared = Arc::clone(&self.shared);
        let params = shared.params.load();
        let cost = &params.cost;
        let live = Arc::clone(&self.live);
        live.last_reported_cached.store(cached, Ordering::Relaxed);
        if prompt == 0 {
            return;
        }
        live.hit_rate.blend(as_f64(cached) / as_f64(prompt), 0.2);
        let uncached = prompt - cached;
        if cached > 0 {
            shared.warm_turn.blend(as_f64(uncached), 0.2);
        }
        // Prefill rate: uncached tokens over the time the node spent on
        // them (from admission when the gate admitted the request, else
        // including what was queued ahead of it) — only when the first byte
        // was the first token.
        if let Some(fb) = self.first_byte_at.filter(|_| self.streamed) {
            let (from, work) = match self.admitted_at {
                Some(at) if live.gate.read().limit() > 0 => (at, uncached),
                _ => (self.started, uncached + self.queued_ahead),
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
        let Some(ticket) = self.cache.take() else {
            return;
        };
        let tpb = as_f64(prompt) / as_f64(ticket.prompt_bytes.max(1));
        live.tokens_per_byte.blend(tpb, 0.2);
        let block_tokens = (as_f64(ticket.block_bytes) * tpb).max(1.0);
        if let Some(held) = ticket.held
            && held.reply > 0
        {
            let from_prompt = held.tokens - held.reply;
            // Only a cache that kept the whole prompt says how much of the
            // reply it reuses.
            if cached + 1 >= from_prompt {
                let reused = (as_f64(cached) - as_f64(from_prompt)).max(0.0) / as_f64(held.reply);
                live.reply_reuse.blend(reused.clamp(0.0, 1.0), 0.2);
            }
        }
        tracing::debug!(
            node = %self.node_id,
            gate_wait_ms = self.gate_wait().map_or(0, |d| d.as_millis()),
            ttft_ms = self.time_to_first_byte().map_or(0, |d| d.as_millis()),
            prompt,
            cached,
            predicted = ticket.predicted_cached.unwrap_or_default(),
            "answered"
        );
        let mut kept = None;
        if let Some(predicted) = ticket.predicted_cached {
            let error = (as_f64(predicted) - as_f64(cached)) / block_tokens;
            live.counters.observe_cache_prediction(error.abs());
            if let Some(draft) = self.draft.as_mut() {
                draft.prediction_error_blocks = Some(error.abs());
            }
            let mut model = shared.cache.lock();
            if error > 1.0 {
                // The node had evicted part of what the model believed.
                let blocks = (as_f64(cached) / block_tokens).floor() as usize;
                kept = Some(blocks.min(ticket.chain.len()));
                model.feedback(ticket.slot, false);
            } else if predicted > 0 {
                model.feedback(ticket.slot, true);
            }
            drop(model);
        }
        let own = ticket.inserted.map(|i| i.id);
        shared
            .cache
            .lock()
            .confirm(ticket.slot, own, &ticket.chain, kept, prompt, reply);
    }
}

/// The record's name for how a request ended.
fn decision_outcome(outcome: RequestOutcome) -> DecisionOutcome {
    match outcome {
        RequestOutcome::Success { .. } => DecisionOutcome::Success,
        RequestOutcome::Overloaded { .. } => DecisionOutcome::Overloaded,
        RequestOutcome::Failed { kind } => match kind {
            FailureKind::Connect => DecisionOutcome::ConnectError,
            FailureKind::Timeout => DecisionOutcome::Timeout,
            FailureKind::ServerError { .. } => DecisionOutcome::ServerError,
            FailureKind::Reset => DecisionOutcome::Reset,
            FailureKind::InvalidResponse => DecisionOutcome::InvalidResponse,
            FailureKind::NotServed { .. } => DecisionOutcome::NotServed,
        },
        RequestOutcome::ClientCancelled => DecisionOutcome::Cancelled,
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.complete(RequestOutcome::ClientCancelled);
    }
}
