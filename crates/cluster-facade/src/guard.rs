//! What `select` hands out: the decision, where to send the request, and
//! the guard that records how it went.
//!
//! The guard only records (timestamps, the outcome); what an answer teaches
//! lives in `learn.rs`, the cache model's side of a request in `ticket.rs`,
//! the probe slot's release in `probe.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cluster_metrics::{InFlightGuard, RequestOutcome as MetricsOutcome};
use cluster_types::{DecisionOutcome, LoadBalanceStrategy, NodeId, RoutingDecision, RoutingReason};

use crate::decisions::{Completion, DecisionDraft};
use crate::learn;
use crate::live::{NodeLive, as_f64};
use crate::outcome::{FailureKind, RequestOutcome};
use crate::prefill_gate::{PrefillSlot, hold_limit};
use crate::probe::{self, ProbeClaim};
use crate::shared::RouterShared;
use crate::snapshot::NodeTarget;
use crate::ticket::CacheTicket;

/// The answer of `select`: the decision, the target, and the guard that
/// counts the request in flight on the node until it is finished.
#[derive(Debug)]
pub struct Selection {
    /// Node, reason and confidence.
    pub decision: RoutingDecision,
    /// Where to send the request (built once per snapshot, shared by
    /// every request to the node).
    pub target: Arc<NodeTarget>,
    /// Report the outcome through this (dropping it counts as cancelled).
    pub guard: RequestGuard,
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

        // The success window feeds only the seeds' cache score: the other
        // strategies skip its lock.
        let window = shared.params.load().strategy == LoadBalanceStrategy::CacheScore;
        match outcome {
            RequestOutcome::Success {
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            } => {
                if window {
                    live.record_passive(now, true, Some(ttft.unwrap_or(latency)));
                }
                live.latency_ns.store(live.latency_estimate_ns());
                if let (Some(p), Some(c)) = (prompt_tokens, cached_tokens) {
                    let (p, c) = (u64::from(p), u64::from(c).min(u64::from(p)));
                    let reply = completion_tokens.map_or(0, u64::from);
                    let answer = learn::Answer {
                        prompt: p,
                        cached: c,
                        reply,
                        started: self.started,
                        admitted_at: self.admitted_at,
                        first_byte_at: self.first_byte_at,
                        streamed: self.streamed,
                        queued_ahead: self.queued_ahead,
                    };
                    let error =
                        learn::answered(&shared, &live, &self.node_id, &answer, self.cache.take());
                    if let (Some(draft), Some(error)) = (self.draft.as_mut(), error) {
                        draft.prediction_error_blocks = Some(error);
                    }
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
                if window {
                    live.record_passive(now, false, None);
                }
                self.rollback();
            }
            RequestOutcome::ClientCancelled => {
                if !had_first_byte {
                    self.rollback();
                }
            }
        }
        probe::report(
            self.probe.take(),
            &live,
            shared.observer.get(),
            &self.node_id,
            &outcome,
            latency,
        );
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
        if let Some(ticket) = self.cache.take() {
            ticket.roll_back(&self.shared.cache);
        }
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
