//! Latency estimators: a time-decayed [`Ewma`] and tower's / Finagle's
//! [`PeakEwma`].
//!
//! # The formula
//!
//! Both estimators weigh a new sample by how much time passed since the last
//! update, not by how many samples arrived. With `Δt` the time since the last
//! update and `τ` (tau) the decay time constant:
//!
//! ```text
//! w        = exp(-Δt / τ)                 // weight kept by the old estimate
//! estimate = estimate · w + sample · (1 − w)
//! ```
//!
//! A sample that arrives right after the previous one barely moves the
//! estimate; one that arrives after `τ` of silence moves it ~63% of the way;
//! after `3τ`, ~95%. This makes the estimate independent of request rate,
//! which a per-sample `α` is not.
//!
//! [`PeakEwma`] adds **peak sensitivity**: a sample *above* the current
//! estimate replaces it immediately, and only samples below it are blended in
//! with the weight above. A node that suddenly gets slow is penalised at once
//! and forgiven gradually. Reading the estimate ([`PeakEwma::decay`],
//! [`PeakEwma::cost`]) observes a zero-latency sample at the read instant, so
//! an idle node's estimate decays toward zero and the node is tried again.
//!
//! Its load metric is
//!
//! ```text
//! cost = estimate_ns × (pending + 1)
//! ```
//!
//! where `pending` is the number of requests in flight on the node: the
//! expected time to serve one more request if the in-flight ones are served
//! first. The router picks the node with the lowest cost (with power of two
//! choices).
//!
//! This is exactly the formulation of `tower::load::PeakEwma`
//! (`tower/src/load/peak_ewma.rs`: `RttEstimate::update` and `decay`, and
//! `Cost = estimate × (pending + 1)`), which ports Finagle's peak-EWMA load
//! metric (`finagle-core/.../loadbalancer/PeakEwma.scala`, introduced in
//! Buoyant's 2016 post "Beyond Round Robin: Load Balancing for Latency").
//! linkerd's default decay is 10 s, which is ours too ([`DEFAULT_DECAY`]).
//!
//! # Caveat
//!
//! Because reads decay toward zero, a node whose requests are all long
//! streams that have not completed may see its estimate fall while `pending`
//! stays high; `cost` still grows with `pending` as long as the estimate is
//! not negligible. [`NodeCounters`](crate::NodeCounters) feeds the estimator
//! with time to first token (reported early in a stream) to keep it fresh.
//!
//! # Concurrency
//!
//! [`Ewma`] and [`PeakEwma`] are plain values updated through `&mut self`
//! (a few float operations, no locking). [`SharedPeakEwma`] wraps a
//! [`PeakEwma`] in a `parking_lot::Mutex` for `&self` access from many
//! threads; the critical section is a handful of float operations (tower and
//! Finagle use a mutex / `synchronized` here as well).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::MetricsError;

/// Default decay time constant `τ`: 10 s (tower's, linkerd's and Finagle's).
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// Default initial estimate of a [`PeakEwma`]: 1 s.
///
/// A node with no history must neither attract all traffic (estimate 0 makes
/// `cost` 0 whatever `pending` is) nor be starved; one second is a modest
/// time to first token for a local LLM server. tower requires the caller to
/// pass this (`default_rtt`).
pub const DEFAULT_INITIAL_ESTIMATE: Duration = Duration::from_secs(1);

fn nanos(d: Duration) -> f64 {
    // Durations beyond f64's exact integer range (~104 days) lose precision,
    // which is irrelevant for latencies.
    d.as_nanos() as f64
}

fn duration_from_nanos(ns: f64) -> Duration {
    if ns.is_finite() && ns > 0.0 {
        Duration::try_from_secs_f64(ns / 1e9).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

/// The weight `exp(-Δt / τ)` kept by the old estimate. A `now` earlier than
/// `last` counts as no elapsed time (weight 1).
fn keep_weight(last: Option<Instant>, now: Instant, tau_ns: f64) -> f64 {
    match last {
        Some(last) => (-nanos(now.saturating_duration_since(last)) / tau_ns).exp(),
        None => 1.0,
    }
}

fn tau_ns(tau: Duration) -> f64 {
    nanos(tau.max(Duration::from_nanos(1)))
}

/// Time-decayed exponentially weighted moving average of a latency.
///
/// `estimate = estimate · exp(−Δt/τ) + sample · (1 − exp(−Δt/τ))`; the first
/// sample becomes the estimate. Default ([`Ewma::default`]): `τ` =
/// [`DEFAULT_DECAY`] (10 s), no estimate until the first sample.
///
/// Two samples at the same instant: the second has weight 0 (nothing elapsed),
/// as in tower.
///
/// ```
/// use std::time::{Duration, Instant};
/// use cluster_metrics::Ewma;
///
/// let t0 = Instant::now();
/// let mut ewma = Ewma::new(Duration::from_secs(10));
/// ewma.observe(t0, Duration::from_millis(100));
/// ewma.observe(t0 + Duration::from_secs(10), Duration::from_millis(200));
/// // After one τ the new sample has weight 1 - 1/e ≈ 0.632.
/// let est = ewma.estimate().unwrap().as_secs_f64() * 1e3;
/// assert!((est - 163.2).abs() < 0.1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    tau_ns: f64,
    estimate_ns: Option<f64>,
    updated_at: Option<Instant>,
}

impl Ewma {
    /// An empty EWMA with decay time constant `tau` (a zero `tau` is clamped
    /// to 1 ns; use [`try_new`](Self::try_new) to reject it).
    #[must_use]
    pub fn new(tau: Duration) -> Self {
        Self {
            tau_ns: tau_ns(tau),
            estimate_ns: None,
            updated_at: None,
        }
    }

    /// Like [`new`](Self::new) but rejects a zero `tau`.
    ///
    /// # Errors
    /// [`MetricsError::ZeroDecay`].
    pub fn try_new(tau: Duration) -> Result<Self, MetricsError> {
        if tau.is_zero() {
            return Err(MetricsError::ZeroDecay { tau });
        }
        Ok(Self::new(tau))
    }

    /// The decay time constant `τ`.
    #[must_use]
    pub fn decay_time(&self) -> Duration {
        duration_from_nanos(self.tau_ns)
    }

    /// Blends `sample`, observed at `now`, into the estimate.
    pub fn observe(&mut self, now: Instant, sample: Duration) {
        let sample_ns = nanos(sample);
        self.estimate_ns = Some(match self.estimate_ns {
            None => sample_ns,
            Some(prev) => {
                let w = keep_weight(self.updated_at, now, self.tau_ns);
                prev * w + sample_ns * (1.0 - w)
            }
        });
        self.updated_at = Some(self.updated_at.map_or(now, |t| t.max(now)));
    }

    /// The current estimate; `None` before the first sample. Does not decay
    /// with idle time (that is [`PeakEwma`]'s behaviour).
    #[must_use]
    pub fn estimate(&self) -> Option<Duration> {
        self.estimate_ns.map(duration_from_nanos)
    }
}

impl Default for Ewma {
    /// `τ` = 10 s, empty.
    fn default() -> Self {
        Self::new(DEFAULT_DECAY)
    }
}

/// Peak-sensitive EWMA latency estimate and load cost, as in
/// `tower::load::PeakEwma` (see the [module docs](self) for the formula).
///
/// Default ([`PeakEwma::default`]): `τ` = [`DEFAULT_DECAY`] (10 s), initial
/// estimate [`DEFAULT_INITIAL_ESTIMATE`] (1 s).
///
/// The initial estimate is a prior: reads decay it like any estimate (from
/// the first read), and the first [`observe`](Self::observe) replaces it
/// outright. (tower instead blends the first response into its
/// `default_rtt` with the usual weight, which keeps a wrong prior for about
/// `τ`.)
///
/// ```
/// use std::time::{Duration, Instant};
/// use cluster_metrics::PeakEwma;
///
/// let t0 = Instant::now();
/// let mut peak = PeakEwma::new(Duration::from_secs(10), Duration::from_millis(100));
/// // A slower sample replaces the estimate at once...
/// peak.observe(t0, Duration::from_millis(900));
/// assert_eq!(peak.decay(t0), Duration::from_millis(900));
/// // ...and the cost grows with the requests in flight.
/// assert_eq!(peak.cost(t0, 2), 900e6 * 3.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    tau_ns: f64,
    estimate_ns: f64,
    updated_at: Option<Instant>,
    /// Whether a real sample was observed (the initial estimate is a prior).
    observed: bool,
}

impl PeakEwma {
    /// A peak-EWMA with decay time constant `tau` (zero is clamped to 1 ns)
    /// and starting estimate `initial`.
    #[must_use]
    pub fn new(tau: Duration, initial: Duration) -> Self {
        Self {
            tau_ns: tau_ns(tau),
            estimate_ns: nanos(initial),
            updated_at: None,
            observed: false,
        }
    }

    /// Like [`new`](Self::new) but rejects a zero `tau`.
    ///
    /// # Errors
    /// [`MetricsError::ZeroDecay`].
    pub fn try_new(tau: Duration, initial: Duration) -> Result<Self, MetricsError> {
        if tau.is_zero() {
            return Err(MetricsError::ZeroDecay { tau });
        }
        Ok(Self::new(tau, initial))
    }

    /// The decay time constant `τ`.
    #[must_use]
    pub fn decay_time(&self) -> Duration {
        duration_from_nanos(self.tau_ns)
    }

    /// Observes a latency `sample` completed at `now`.
    ///
    /// If `sample` exceeds the estimate, it becomes the estimate (peak);
    /// otherwise it is blended in with weight `1 − exp(−Δt/τ)`.
    pub fn observe(&mut self, now: Instant, sample: Duration) {
        if !self.observed {
            // The first real measurement replaces the prior outright.
            self.observed = true;
            self.estimate_ns = nanos(sample);
            self.updated_at = Some(self.updated_at.map_or(now, |t| t.max(now)));
            return;
        }
        self.update(now, sample);
    }

    fn update(&mut self, now: Instant, sample: Duration) {
        let sample_ns = nanos(sample);
        self.estimate_ns = if self.estimate_ns < sample_ns {
            sample_ns
        } else {
            let w = keep_weight(self.updated_at, now, self.tau_ns);
            self.estimate_ns * w + sample_ns * (1.0 - w)
        };
        self.updated_at = Some(self.updated_at.map_or(now, |t| t.max(now)));
    }

    /// Decays the estimate to `now` (observing a zero-latency sample, as
    /// tower's `RttEstimate::decay` does) and returns it.
    pub fn decay(&mut self, now: Instant) -> Duration {
        self.update(now, Duration::ZERO);
        duration_from_nanos(self.estimate_ns)
    }

    /// What [`decay`](Self::decay) would return at `now`, without storing it.
    #[must_use]
    pub fn peek(&self, now: Instant) -> Duration {
        let w = keep_weight(self.updated_at, now, self.tau_ns);
        duration_from_nanos(self.estimate_ns * w)
    }

    /// The load cost at `now` with `pending` requests in flight:
    /// `decayed_estimate_ns × (pending + 1)`. Lower is better.
    pub fn cost(&mut self, now: Instant, pending: u32) -> f64 {
        self.update(now, Duration::ZERO);
        self.estimate_ns * (f64::from(pending) + 1.0)
    }
}

impl Default for PeakEwma {
    /// `τ` = 10 s, initial estimate 1 s.
    fn default() -> Self {
        Self::new(DEFAULT_DECAY, DEFAULT_INITIAL_ESTIMATE)
    }
}

/// A [`PeakEwma`] behind a `parking_lot::Mutex`, for `&self` use from many
/// threads. Each method holds the lock for a few float operations only.
///
/// Default: a default [`PeakEwma`] (`τ` 10 s, initial estimate 1 s).
#[derive(Debug, Default)]
pub struct SharedPeakEwma {
    inner: Mutex<PeakEwma>,
}

impl SharedPeakEwma {
    /// Wraps `peak`.
    #[must_use]
    pub fn new(peak: PeakEwma) -> Self {
        Self {
            inner: Mutex::new(peak),
        }
    }

    /// [`PeakEwma::observe`].
    pub fn observe(&self, now: Instant, sample: Duration) {
        self.inner.lock().observe(now, sample);
    }

    /// [`PeakEwma::decay`].
    pub fn decay(&self, now: Instant) -> Duration {
        self.inner.lock().decay(now)
    }

    /// [`PeakEwma::peek`].
    #[must_use]
    pub fn peek(&self, now: Instant) -> Duration {
        self.inner.lock().peek(now)
    }

    /// [`PeakEwma::cost`].
    pub fn cost(&self, now: Instant, pending: u32) -> f64 {
        self.inner.lock().cost(now, pending)
    }

    /// A copy of the current state.
    #[must_use]
    pub fn get(&self) -> PeakEwma {
        *self.inner.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: Duration, b_ms: f64) -> bool {
        (a.as_secs_f64() * 1e3 - b_ms).abs() < 1e-3
    }

    #[test]
    fn ewma_first_sample_is_the_estimate() {
        let mut e = Ewma::default();
        assert_eq!(e.estimate(), None);
        assert_eq!(e.decay_time(), TAU);
        e.observe(Instant::now(), ms(250));
        assert_eq!(e.estimate(), Some(ms(250)));
    }

    #[test]
    fn ewma_weighs_by_elapsed_time() {
        let t0 = Instant::now();
        let mut e = Ewma::new(TAU);
        e.observe(t0, ms(100));
        // Same instant: weight 0.
        e.observe(t0, ms(1000));
        assert!(close(e.estimate().unwrap(), 100.0));
        // After one tau: 1 - 1/e.
        e.observe(t0 + TAU, ms(200));
        let expected = 100.0 * (-1.0f64).exp() + 200.0 * (1.0 - (-1.0f64).exp());
        assert!(close(e.estimate().unwrap(), expected));
        // Long silence: the new sample dominates, downward too.
        e.observe(t0 + TAU * 100, ms(10));
        assert!(close(e.estimate().unwrap(), 10.0));
    }

    #[test]
    fn try_new_rejects_zero_decay() {
        assert_eq!(
            Ewma::try_new(Duration::ZERO).unwrap_err(),
            MetricsError::ZeroDecay {
                tau: Duration::ZERO
            }
        );
        assert!(PeakEwma::try_new(Duration::ZERO, ms(1)).is_err());
        assert!(PeakEwma::try_new(TAU, ms(1)).is_ok());
    }

    #[test]
    fn peak_ewma_jumps_to_peaks_and_decays_slowly() {
        let t0 = Instant::now();
        let mut p = PeakEwma::new(TAU, ms(100));
        p.observe(t0, ms(500));
        assert_eq!(p.peek(t0), ms(500));
        // A lower sample after one tau is blended in.
        p.observe(t0 + TAU, ms(100));
        let expected = 500.0 * (-1.0f64).exp() + 100.0 * (1.0 - (-1.0f64).exp());
        assert!(close(p.peek(t0 + TAU), expected));
        // A higher one replaces it.
        p.observe(t0 + TAU, ms(2000));
        assert_eq!(p.peek(t0 + TAU), ms(2000));
    }

    #[test]
    fn first_observation_replaces_the_prior() {
        let t0 = Instant::now();
        let mut p = PeakEwma::new(TAU, ms(1000));
        assert_eq!(p.cost(t0, 0), 1e9);
        p.observe(t0, ms(250));
        assert_eq!(p.peek(t0), ms(250));
        // Later lower samples blend as usual.
        p.observe(t0, ms(10));
        assert_eq!(p.peek(t0), ms(250));
    }

    #[test]
    fn peak_ewma_decays_toward_zero_when_idle() {
        let t0 = Instant::now();
        let mut p = PeakEwma::new(TAU, ms(1000));
        p.observe(t0, ms(1000));
        let peeked = p.peek(t0 + TAU);
        let decayed = p.decay(t0 + TAU);
        assert_eq!(peeked, decayed);
        assert!(close(decayed, 1000.0 * (-1.0f64).exp()));
        // Decays compose: two half-taus equal one tau.
        let mut q = PeakEwma::new(TAU, ms(1000));
        q.observe(t0, ms(1000));
        q.decay(t0 + TAU / 2);
        assert!(close(q.decay(t0 + TAU), 1000.0 * (-1.0f64).exp()));
    }

    #[test]
    fn peak_ewma_cost_scales_with_pending() {
        let t0 = Instant::now();
        let mut p = PeakEwma::new(TAU, ms(40));
        assert_eq!(p.cost(t0, 0), 40e6);
        assert_eq!(p.cost(t0, 4), 40e6 * 5.0);
        let default = PeakEwma::default();
        assert_eq!(default.peek(t0), DEFAULT_INITIAL_ESTIMATE);
        assert_eq!(default.decay_time(), DEFAULT_DECAY);
    }

    #[test]
    fn clock_going_backwards_counts_as_no_elapsed_time() {
        let t0 = Instant::now();
        let mut p = PeakEwma::new(TAU, ms(100));
        p.observe(t0 + TAU, ms(100));
        p.observe(t0, ms(10));
        assert_eq!(p.peek(t0), ms(100));
    }

    #[test]
    fn shared_peak_ewma_delegates() {
        let t0 = Instant::now();
        let s = SharedPeakEwma::new(PeakEwma::new(TAU, ms(10)));
        s.observe(t0, ms(30));
        assert_eq!(s.peek(t0), ms(30));
        assert_eq!(s.cost(t0, 1), 60e6);
        assert_eq!(s.decay(t0), ms(30));
        assert_eq!(s.get().peek(t0), ms(30));
    }
}
