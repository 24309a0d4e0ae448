//! [`NodeCounters`]: live per-node request counters for the hot path.
//!
//! Every count is an `AtomicU64` updated with `Relaxed` ordering — no lock is
//! taken to start a request. Finishing one also records its time to first
//! token and latency into two [`LatencyHistogram`]s and feeds a
//! [`PeakEwma`](crate::PeakEwma) of the time to first token; each of those
//! holds a small mutex for a few instructions.
//!
//! The request lifecycle:
//!
//! 1. [`NodeCounters::begin`] counts the request (`requests`, `in_flight`)
//!    and returns an [`InFlightGuard`].
//! 2. Optionally [`InFlightGuard::mark_first_token`] when the first byte or
//!    token arrives.
//! 3. [`InFlightGuard::finish`] with a [`RequestOutcome`] records the outcome,
//!    tokens and timings, and decrements `in_flight`.
//!
//! Dropping the guard without calling `finish` — the future holding it was
//! cancelled (client went away), or the task panicked — still decrements
//! `in_flight` and counts the request as `cancelled`. So at any quiescent
//! moment `requests == successes + failures + cancelled + in_flight`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ewma::{PeakEwma, SharedPeakEwma};
use crate::histogram::{HistogramSummary, LatencyHistogram};
use crate::prediction::{PredictionHistogram, PredictionSnapshot};
use crate::routing::{RoutingCounters, RoutingSnapshot};
use crate::{SharedClock, system_clock};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeStatus {
    /// The node answered successfully (the whole response was delivered).
    Success,
    /// The node failed: connection error, timeout, 5xx, broken stream.
    Failure,
    /// The client gave up before the response completed; says nothing about
    /// the node.
    Cancelled,
}

impl OutcomeStatus {
    /// Lower-case name, used as the `outcome` label value in Prometheus:
    /// `"success"`, `"failure"`, `"cancelled"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Success => "success",
            OutcomeStatus::Failure => "failure",
            OutcomeStatus::Cancelled => "cancelled",
        }
    }
}

/// What the caller knows about a finished request. Build it with
/// [`success`](Self::success), [`failure`](Self::failure) or
/// [`cancelled`](Self::cancelled) and the `with_*` methods; every optional
/// field defaults to `None` (unknown).
///
/// ```
/// use std::time::Duration;
/// use cluster_metrics::{OutcomeStatus, RequestOutcome};
///
/// let outcome = RequestOutcome::success()
///     .with_time_to_first_token(Duration::from_millis(350))
///     .with_tokens(20_000, 19_500);
/// assert_eq!(outcome.status, OutcomeStatus::Success);
/// assert_eq!(outcome.latency, None); // the guard measures it
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOutcome {
    /// How the request ended.
    pub status: OutcomeStatus,
    /// Time to first token (or first response byte). `None`: use the time
    /// marked with [`InFlightGuard::mark_first_token`], if any.
    pub time_to_first_token: Option<Duration>,
    /// Total request latency. `None`: the guard measures it from
    /// [`NodeCounters::begin`] to [`InFlightGuard::finish`] on the counters'
    /// clock.
    pub latency: Option<Duration>,
    /// Prompt tokens reported by the node (`usage.prompt_tokens`); `None`
    /// when not reported.
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens served from the node's prompt cache
    /// (`usage.prompt_tokens_details.cached_tokens`); `None` when not
    /// reported.
    pub cached_tokens: Option<u64>,
    /// Completion (generated) tokens reported by the node
    /// (`usage.completion_tokens`); `None` when not reported.
    pub completion_tokens: Option<u64>,
}

impl RequestOutcome {
    /// An outcome with `status` and nothing else known.
    #[must_use]
    pub const fn new(status: OutcomeStatus) -> Self {
        Self {
            status,
            time_to_first_token: None,
            latency: None,
            prompt_tokens: None,
            cached_tokens: None,
            completion_tokens: None,
        }
    }

    /// A success with nothing else known.
    #[must_use]
    pub const fn success() -> Self {
        Self::new(OutcomeStatus::Success)
    }

    /// A failure with nothing else known.
    #[must_use]
    pub const fn failure() -> Self {
        Self::new(OutcomeStatus::Failure)
    }

    /// A cancellation with nothing else known.
    #[must_use]
    pub const fn cancelled() -> Self {
        Self::new(OutcomeStatus::Cancelled)
    }

    /// Sets the time to first token.
    #[must_use]
    pub const fn with_time_to_first_token(mut self, ttft: Duration) -> Self {
        self.time_to_first_token = Some(ttft);
        self
    }

    /// Sets the total latency.
    #[must_use]
    pub const fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Sets prompt and cached prompt tokens.
    #[must_use]
    pub const fn with_tokens(mut self, prompt_tokens: u64, cached_tokens: u64) -> Self {
        self.prompt_tokens = Some(prompt_tokens);
        self.cached_tokens = Some(cached_tokens);
        self
    }

    /// Sets completion tokens.
    #[must_use]
    pub const fn with_completion_tokens(mut self, completion_tokens: u64) -> Self {
        self.completion_tokens = Some(completion_tokens);
        self
    }
}

/// Live counters for one node. Share it as `Arc<NodeCounters>`.
///
/// Counts: `in_flight`, `requests`, `successes`, `failures`, `cancelled`,
/// `prompt_tokens`, `cached_tokens`, `completion_tokens`; histograms of time
/// to first token and latency; a peak-EWMA of time to first token.
///
/// Defaults ([`NodeCounters::new`] / `default()`): every count 0, the
/// [`SystemClock`](crate::SystemClock), empty histograms (1 µs ..= 1 h, 3
/// digits), and a time-to-first-token [`PeakEwma`] with `τ` = 10 s and an
/// initial estimate of 1 s.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cluster_metrics::{ManualClock, NodeCounters, RequestOutcome};
///
/// let clock = ManualClock::new();
/// let counters = Arc::new(NodeCounters::with_clock(clock.shared()));
///
/// let mut guard = counters.begin();
/// assert_eq!(counters.in_flight(), 1);
/// clock.advance(Duration::from_millis(300));
/// guard.mark_first_token();
/// clock.advance(Duration::from_secs(2));
/// guard.finish(RequestOutcome::success().with_tokens(1000, 800));
///
/// let snap = counters.snapshot();
/// assert_eq!((snap.in_flight, snap.requests, snap.successes), (0, 1, 1));
/// assert_eq!(snap.time_to_first_token.max, Some(Duration::from_millis(300)));
/// assert_eq!(snap.latency.max, Some(Duration::from_millis(2300)));
/// assert_eq!(snap.cache_hit_ratio(), 0.8);
///
/// // Dropping a guard (cancelled future, panic) still decrements in_flight.
/// drop(counters.begin());
/// assert_eq!(counters.in_flight(), 0);
/// assert_eq!(counters.snapshot().cancelled, 1);
/// ```
#[derive(Debug)]
pub struct NodeCounters {
    clock: SharedClock,
    in_flight: AtomicU64,
    requests: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    cancelled: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    ttft: LatencyHistogram,
    latency: LatencyHistogram,
    ttft_estimate: SharedPeakEwma,
    cache_prediction: PredictionHistogram,
    routing: RoutingCounters,
}

/// A point-in-time copy of a [`NodeCounters`]. Plain data.
///
/// Each field is read atomically, but the fields are read one after another
/// while requests may be finishing, so sums across fields can be off by the
/// requests that completed during the read.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeCountersSnapshot {
    /// Requests started and not yet finished or dropped.
    pub in_flight: u64,
    /// Requests started ([`NodeCounters::begin`] calls).
    pub requests: u64,
    /// Requests finished with [`OutcomeStatus::Success`].
    pub successes: u64,
    /// Requests finished with [`OutcomeStatus::Failure`].
    pub failures: u64,
    /// Requests finished with [`OutcomeStatus::Cancelled`] or whose guard was
    /// dropped without `finish`.
    pub cancelled: u64,
    /// Sum of reported prompt tokens.
    pub prompt_tokens: u64,
    /// Sum of reported cached prompt tokens.
    pub cached_tokens: u64,
    /// Sum of reported completion tokens.
    pub completion_tokens: u64,
    /// Time-to-first-token distribution (all outcomes that reported one).
    pub time_to_first_token: HistogramSummary,
    /// Latency distribution of successful requests.
    pub latency: HistogramSummary,
    /// The peak-EWMA time-to-first-token estimate at the snapshot instant
    /// (decayed toward zero by idle time; see [`PeakEwma`]).
    pub latency_estimate: Duration,
    /// How far the router's predicted cached tokens were from the node's
    /// reports, in fingerprint blocks.
    pub cache_prediction: PredictionSnapshot,
    /// Routing decisions for the node, by reason, and the matched prefix
    /// ratio.
    pub routing: RoutingSnapshot,
}

impl NodeCountersSnapshot {
    /// Requests that ended: successes + failures + cancelled.
    #[must_use]
    pub fn completed(&self) -> u64 {
        self.successes
            .saturating_add(self.failures)
            .saturating_add(self.cancelled)
    }

    /// failures / (successes + failures), in `[0, 1]`; 0.0 when neither
    /// happened. Cancellations are not the node's fault and do not count.
    #[must_use]
    pub fn error_rate(&self) -> f64 {
        ratio(self.failures, self.successes.saturating_add(self.failures))
    }

    /// cached_tokens / prompt_tokens, in `[0, 1]`; 0.0 when no prompt tokens
    /// were reported.
    #[must_use]
    pub fn cache_hit_ratio(&self) -> f64 {
        ratio(
            self.cached_tokens.min(self.prompt_tokens),
            self.prompt_tokens,
        )
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        (num as f64 / den as f64).clamp(0.0, 1.0)
    }
}

impl Default for NodeCounters {
    /// Same as [`NodeCounters::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl NodeCounters {
    /// Zeroed counters reading time from the [`SystemClock`](crate::SystemClock).
    #[must_use]
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// Zeroed counters reading time from `clock`.
    #[must_use]
    pub fn with_clock(clock: SharedClock) -> Self {
        Self::with_clock_and_estimator(clock, PeakEwma::default())
    }

    /// Zeroed counters reading time from `clock`, with `estimator` as the
    /// starting time-to-first-token peak-EWMA.
    #[must_use]
    pub fn with_clock_and_estimator(clock: SharedClock, estimator: PeakEwma) -> Self {
        Self {
            clock,
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            ttft: LatencyHistogram::new(),
            latency: LatencyHistogram::new(),
            ttft_estimate: SharedPeakEwma::new(estimator),
            cache_prediction: PredictionHistogram::default(),
            routing: RoutingCounters::default(),
        }
    }

    /// The clock these counters read.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Starts a request: `requests += 1`, `in_flight += 1`. Lock-free (two
    /// atomic increments, an `Arc` clone and one clock read).
    #[must_use = "dropping the guard immediately counts the request as cancelled"]
    pub fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            counters: Arc::clone(self),
            started_at: self.clock.now(),
            first_token_at: None,
            finished: false,
        }
    }

    /// Requests in flight now.
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Feeds an extra sample into the time-to-first-token peak-EWMA, e.g. a
    /// node's `Retry-After` when it answers 429/503, so an overloaded node
    /// costs more without being counted as failed.
    pub fn observe_latency(&self, sample: Duration) {
        self.ttft_estimate.observe(self.clock.now(), sample);
    }

    /// The peak-EWMA load cost now: `ttft_estimate_ns × (in_flight + 1)`
    /// (see [`PeakEwma::cost`]). Lower is better.
    #[must_use]
    pub fn load_cost(&self) -> f64 {
        let pending = u32::try_from(self.in_flight()).unwrap_or(u32::MAX);
        self.ttft_estimate.cost(self.clock.now(), pending)
    }

    /// Records how far the router's predicted cached tokens were from the
    /// node's report, in fingerprint blocks.
    pub fn observe_cache_prediction(&self, error_blocks: f64) {
        self.cache_prediction.observe(error_blocks);
    }

    /// Counts a routing decision for the node (see
    /// [`RoutingCounters::record`]).
    pub fn record_decision(&self, reason: cluster_types::RoutingReason, prefix_match: Option<f64>) {
        self.routing.record(reason, prefix_match);
    }

    /// The time-to-first-token histogram.
    #[must_use]
    pub fn ttft_histogram(&self) -> &LatencyHistogram {
        &self.ttft
    }

    /// The latency histogram (successful requests).
    #[must_use]
    pub fn latency_histogram(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// A copy of every counter and histogram summary.
    #[must_use]
    pub fn snapshot(&self) -> NodeCountersSnapshot {
        // Outcomes before in_flight before requests, so that a request that
        // finishes during the read is more likely seen as both started and
        // finished than as neither.
        let successes = self.successes.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        let cancelled = self.cancelled.load(Ordering::Relaxed);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let requests = self.requests.load(Ordering::Relaxed);
        NodeCountersSnapshot {
            in_flight,
            requests,
            successes,
            failures,
            cancelled,
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            cached_tokens: self.cached_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            time_to_first_token: self.ttft.summary(),
            latency: self.latency.summary(),
            latency_estimate: self.ttft_estimate.peek(self.clock.now()),
            cache_prediction: self.cache_prediction.snapshot(),
            routing: self.routing.snapshot(),
        }
    }

    fn record(&self, now: Instant, outcome: &RequestOutcome, latency: Duration) {
        let counter = match outcome.status {
            OutcomeStatus::Success => &self.successes,
            OutcomeStatus::Failure => &self.failures,
            OutcomeStatus::Cancelled => &self.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(tokens) = outcome.prompt_tokens {
            self.prompt_tokens.fetch_add(tokens, Ordering::Relaxed);
        }
        if let Some(tokens) = outcome.cached_tokens {
            self.cached_tokens.fetch_add(tokens, Ordering::Relaxed);
        }
        if let Some(tokens) = outcome.completion_tokens {
            self.completion_tokens.fetch_add(tokens, Ordering::Relaxed);
        }
        if let Some(ttft) = outcome.time_to_first_token {
            self.ttft.record(ttft);
            self.ttft_estimate.observe(now, ttft);
        }
        if outcome.status == OutcomeStatus::Success {
            self.latency.record(latency);
            if outcome.time_to_first_token.is_none() {
                // A non-streaming answer: its first byte is its last.
                self.ttft_estimate.observe(now, latency);
            }
        }
    }
}

/// Counts one request in flight on a node until it is finished or dropped.
///
/// Created by [`NodeCounters::begin`]. Holds an `Arc` of the counters, so it
/// is `'static` and can move into a response stream.
///
/// * [`finish`](Self::finish) records the outcome and decrements `in_flight`.
/// * Dropping it unfinished (future cancelled, panic unwinding) decrements
///   `in_flight` and counts the request as cancelled.
#[derive(Debug)]
pub struct InFlightGuard {
    counters: Arc<NodeCounters>,
    started_at: Instant,
    first_token_at: Option<Instant>,
    finished: bool,
}

impl InFlightGuard {
    /// When the request started (the counters' clock at `begin`).
    #[must_use]
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// The counters this guard belongs to.
    #[must_use]
    pub fn counters(&self) -> &Arc<NodeCounters> {
        &self.counters
    }

    /// Marks the first token (or first response byte) as arriving now. Only
    /// the first call counts.
    pub fn mark_first_token(&mut self) {
        if self.first_token_at.is_none() {
            self.first_token_at = Some(self.counters.clock.now());
        }
    }

    /// Time from `begin` to [`mark_first_token`](Self::mark_first_token), if
    /// marked.
    #[must_use]
    pub fn time_to_first_token(&self) -> Option<Duration> {
        self.first_token_at
            .map(|t| t.saturating_duration_since(self.started_at))
    }

    /// Records `outcome` and ends the request (`in_flight -= 1`).
    ///
    /// Missing timings are filled in: latency from `begin` to now on the
    /// counters' clock, time to first token from
    /// [`mark_first_token`](Self::mark_first_token). The latency histogram
    /// only takes successes; the time-to-first-token histogram takes any
    /// outcome that has one; token counts are added whenever present.
    pub fn finish(mut self, mut outcome: RequestOutcome) {
        let now = self.counters.clock.now();
        let latency = outcome
            .latency
            .unwrap_or_else(|| now.saturating_duration_since(self.started_at));
        if outcome.time_to_first_token.is_none() {
            outcome.time_to_first_token = self.time_to_first_token();
        }
        self.counters.record(now, &outcome, latency);
        self.finished = true;
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::ManualClock;

    fn counters() -> (ManualClock, Arc<NodeCounters>) {
        let clock = ManualClock::new();
        let counters = Arc::new(NodeCounters::with_clock(clock.shared()));
        (clock, counters)
    }

    #[test]
    fn begin_and_finish_update_counts() {
        let (clock, c) = counters();
        let g1 = c.begin();
        let g2 = c.begin();
        let g3 = c.begin();
        assert_eq!(c.in_flight(), 3);
        clock.advance(Duration::from_millis(100));
        g1.finish(
            RequestOutcome::success()
                .with_tokens(100, 40)
                .with_completion_tokens(7),
        );
        g2.finish(RequestOutcome::failure());
        g3.finish(RequestOutcome::cancelled().with_tokens(10, 0));
        let s = c.snapshot();
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.requests, 3);
        assert_eq!((s.successes, s.failures, s.cancelled), (1, 1, 1));
        assert_eq!((s.prompt_tokens, s.cached_tokens), (110, 40));
        assert_eq!(s.completion_tokens, 7);
        assert_eq!(s.completed(), 3);
        assert_eq!(s.error_rate(), 0.5);
        assert!((s.cache_hit_ratio() - 40.0 / 110.0).abs() < 1e-12);
        // Only the success's latency is in the histogram.
        assert_eq!(s.latency.count, 1);
        assert_eq!(s.latency.max, Some(Duration::from_millis(100)));
    }

    #[test]
    fn explicit_timings_win_over_measured_ones() {
        let (clock, c) = counters();
        let mut g = c.begin();
        clock.advance(Duration::from_millis(50));
        g.mark_first_token();
        clock.advance(Duration::from_millis(50));
        g.mark_first_token(); // ignored
        assert_eq!(g.time_to_first_token(), Some(Duration::from_millis(50)));
        g.finish(
            RequestOutcome::success()
                .with_latency(Duration::from_secs(9))
                .with_time_to_first_token(Duration::from_secs(1)),
        );
        let s = c.snapshot();
        assert_eq!(s.latency.max, Some(Duration::from_secs(9)));
        assert_eq!(s.time_to_first_token.max, Some(Duration::from_secs(1)));
    }

    #[test]
    fn drop_without_finish_counts_as_cancelled() {
        let (_clock, c) = counters();
        let g = c.begin();
        assert_eq!(g.counters().in_flight(), 1);
        drop(g);
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.requests, s.cancelled), (0, 1, 1));
        assert_eq!(s.latency.count, 0);
    }

    #[test]
    fn guard_decrements_on_panic() {
        let (_clock, c) = counters();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let _guard = c.begin();
            assert_eq!(c.in_flight(), 1);
            panic!("handler panicked");
        }));
        assert!(result.is_err());
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.snapshot().cancelled, 1);
    }

    #[test]
    fn guard_decrements_when_its_future_is_cancelled() {
        let (_clock, c) = counters();
        {
            let task = {
                let c = Arc::clone(&c);
                async move {
                    let guard = c.begin();
                    std::future::pending::<()>().await;
                    guard.finish(RequestOutcome::success());
                }
            };
            let mut task = pin!(task);
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(task.as_mut().poll(&mut cx), Poll::Pending);
            assert_eq!(c.in_flight(), 1);
            // `task` is dropped here, mid-await: the request is cancelled.
        }
        assert_eq!(c.in_flight(), 0);
        let s = c.snapshot();
        assert_eq!((s.requests, s.cancelled, s.successes), (1, 1, 0));
    }

    #[test]
    fn ttft_estimate_follows_peaks_and_drives_cost() {
        let clock = ManualClock::new();
        let c = Arc::new(NodeCounters::with_clock_and_estimator(
            clock.shared(),
            PeakEwma::new(Duration::from_secs(10), Duration::from_millis(100)),
        ));
        assert_eq!(c.load_cost(), 100e6);
        let g = c.begin();
        g.finish(RequestOutcome::success().with_time_to_first_token(Duration::from_secs(2)));
        assert_eq!(c.snapshot().latency_estimate, Duration::from_secs(2));
        let _pending = c.begin();
        assert_eq!(c.load_cost(), 2e9 * 2.0);
        // A non-streaming success feeds its latency.
        let (clock2, c2) = counters();
        let g = c2.begin();
        clock2.advance(Duration::from_secs(3));
        g.finish(RequestOutcome::success());
        assert_eq!(c2.snapshot().latency_estimate, Duration::from_secs(3));
        c2.observe_latency(Duration::from_secs(30));
        assert_eq!(c2.snapshot().latency_estimate, Duration::from_secs(30));
        drop(clock);
    }

    #[test]
    fn counts_are_exact_under_contention() {
        let (_clock, c) = counters();
        std::thread::scope(|s| {
            for t in 0..4 {
                let c = &c;
                s.spawn(move || {
                    for i in 0..1000 {
                        let g = c.begin();
                        match (t + i) % 3 {
                            0 => g.finish(RequestOutcome::success().with_tokens(2, 1)),
                            1 => g.finish(RequestOutcome::failure()),
                            _ => drop(g),
                        }
                    }
                });
            }
        });
        let s = c.snapshot();
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.requests, 4000);
        assert_eq!(s.completed(), 4000);
        assert_eq!(s.prompt_tokens, 2 * s.successes);
    }

    #[test]
    fn ratios_are_zero_without_data() {
        let s = NodeCountersSnapshot::default();
        assert_eq!(s.error_rate(), 0.0);
        assert_eq!(s.cache_hit_ratio(), 0.0);
        assert_eq!(OutcomeStatus::Cancelled.as_str(), "cancelled");
    }
}
