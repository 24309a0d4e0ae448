//! Per-node state that changes on every request: atomics shared by every
//! snapshot the node appears in, so snapshots are rebuilt only when
//! membership or status changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_metrics::{NodeCounters, RollingWindow, SharedClock};
use parking_lot::Mutex;

use crate::prefill_gate::PrefillGate;

/// Converts instants to nanoseconds since a fixed origin so they fit in an
/// `AtomicU64`. Value 0 means "never"; real instants map to `1 + nanos`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(Instant);

impl Epoch {
    pub(crate) fn new(origin: Instant) -> Self {
        Self(origin)
    }

    pub(crate) fn encode(self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.0).as_nanos();
        u64::try_from(ns).unwrap_or(u64::MAX - 1).saturating_add(1)
    }

    pub(crate) fn decode(self, v: u64) -> Option<Instant> {
        (v != 0).then(|| self.0 + Duration::from_nanos(v - 1))
    }
}

/// A count as a float (exact below 2^53, which every count here is).
pub(crate) fn as_f64(x: u64) -> f64 {
    x as f64
}

/// An `f64` in an `AtomicU64`.
#[derive(Debug)]
pub(crate) struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub(crate) fn new(v: f64) -> Self {
        Self(AtomicU64::new(v.to_bits()))
    }

    pub(crate) fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    pub(crate) fn store(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Blends `sample` into the value as an EWMA with weight `alpha`
    /// (the first sample, on a value ≤ 0, is taken as is). Lock-free: a
    /// compare-and-swap loop, so concurrent samples are not lost.
    pub(crate) fn blend(&self, sample: f64, alpha: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let new = if old > 0.0 {
                    (1.0 - alpha) * old + alpha * sample
                } else {
                    sample
                };
                Some(new.to_bits())
            });
    }
}

/// Live state of one node.
#[derive(Debug)]
pub(crate) struct NodeLive {
    /// Request counters, histograms, in-flight count and the peak-EWMA of
    /// time to first token (cluster-metrics).
    pub(crate) counters: Arc<NodeCounters>,
    /// Requests in flight, as counted by the router.
    pub(crate) routed_in_flight: AtomicU64,
    /// Slot of the node in the cache model.
    pub(crate) cache_slot: u32,
    /// Predicted uncached prompt tokens of requests routed here whose first
    /// byte has not arrived yet.
    pub(crate) outstanding_prefill: AtomicU64,
    /// Measured prefill rate, tokens/s (0 = not measured yet).
    pub(crate) prefill_rate: AtomicF64,
    /// Measured prompt tokens per byte of canonical prompt (0 = not yet).
    pub(crate) tokens_per_byte: AtomicF64,
    /// Share of a cached reply the node serves from its cache on the next
    /// turn (mlx_lm: all of it when the reply re-tokenizes the same), 0–1.
    pub(crate) reply_reuse: AtomicF64,
    /// Admission of prefills (`routing.prefill_concurrency`).
    pub(crate) gate: parking_lot::RwLock<PrefillGate>,
    /// Skip the node until this instant (overload answers), encoded.
    pub(crate) saturated_until: AtomicU64,
    /// Whether the half-open probe request is out.
    pub(crate) probe_in_flight: AtomicBool,
    /// Smooth weighted round-robin current weight.
    pub(crate) swrr_current: AtomicI64,
    /// Seeds' cache state: hash of the last routed system prompt (+1; 0 = none).
    pub(crate) last_system_hash: AtomicU64,
    /// Seeds' cache state: hash of the last routed tool list (+1; 0 = none).
    pub(crate) last_tools_hash: AtomicU64,
    /// When the cache state last changed, encoded.
    pub(crate) cache_updated: AtomicU64,
    /// `cached_tokens` of the last answer.
    pub(crate) last_reported_cached: AtomicU64,
    /// EWMA of cached / prompt tokens.
    pub(crate) hit_rate: AtomicF64,
    /// Last peak-EWMA time-to-first-token estimate, nanoseconds (0 = none),
    /// cached for least-loaded's tie-break.
    pub(crate) latency_ns: AtomicF64,
    /// Passive success window (request outcomes).
    pub(crate) window: Mutex<RollingWindow>,
    /// Last success rate of `window`, cached for the hot path.
    pub(crate) success_rate: AtomicF64,
    /// Requests the node itself reported as running or waiting (llama.cpp,
    /// vLLM, SGLang `/metrics`), with when it said so.
    pub(crate) reported_queue: ReportedQueue,
}

/// How long a node's own report of its queue counts: 10 s (a few cache
/// sync intervals; an older report says nothing about now).
pub(crate) const REPORTED_QUEUE_MAX_AGE: Duration = Duration::from_secs(10);

/// A node's own count of requests it is running or has queued (from every
/// client, not only this gateway), written by the cache sync and read by
/// least-loaded. Two relaxed atomics: a reader may pair a new count with the
/// previous time, which only shifts when the report expires by one sync.
#[derive(Debug, Default)]
pub(crate) struct ReportedQueue {
    requests: AtomicU64,
    /// Encoded instant of the report (0 = never).
    at: AtomicU64,
}

impl ReportedQueue {
    /// Records `requests` reported at `at_enc` (an [`Epoch`]-encoded instant).
    pub(crate) fn store(&self, requests: u64, at_enc: u64) {
        self.requests.store(requests, Ordering::Relaxed);
        self.at.store(at_enc, Ordering::Relaxed);
    }

    /// The reported count, if reported within `max_age_ns` before `now_enc`.
    pub(crate) fn fresh(&self, now_enc: u64, max_age_ns: u64) -> Option<u64> {
        let at = self.at.load(Ordering::Relaxed);
        (at != 0 && now_enc.saturating_sub(at) <= max_age_ns)
            .then(|| self.requests.load(Ordering::Relaxed))
    }
}

impl NodeLive {
    pub(crate) fn new(
        clock: SharedClock,
        cache_slot: u32,
        window: Duration,
        samples: usize,
    ) -> Self {
        Self {
            counters: Arc::new(NodeCounters::with_clock(clock)),
            cache_slot,
            routed_in_flight: AtomicU64::new(0),
            outstanding_prefill: AtomicU64::new(0),
            prefill_rate: AtomicF64::new(0.0),
            tokens_per_byte: AtomicF64::new(0.0),
            reply_reuse: AtomicF64::new(1.0),
            gate: parking_lot::RwLock::new(PrefillGate::default()),
            saturated_until: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
            swrr_current: AtomicI64::new(0),
            last_system_hash: AtomicU64::new(0),
            last_tools_hash: AtomicU64::new(0),
            cache_updated: AtomicU64::new(0),
            last_reported_cached: AtomicU64::new(0),
            hit_rate: AtomicF64::new(0.0),
            latency_ns: AtomicF64::new(0.0),
            window: Mutex::new(RollingWindow::new(window, samples.max(1))),
            success_rate: AtomicF64::new(1.0),
            reported_queue: ReportedQueue::default(),
        }
    }

    /// Requests routed here and not finished (the router's own count, next
    /// to the other hot fields; the counters keep theirs for metrics).
    pub(crate) fn in_flight(&self) -> u64 {
        self.routed_in_flight.load(Ordering::Relaxed)
    }

    /// The peak-EWMA time-to-first-token estimate now, nanoseconds.
    pub(crate) fn latency_estimate_ns(&self) -> f64 {
        let pending = self.in_flight();
        let div = (pending + 1) as f64;
        self.counters.load_cost() / div
    }

    pub(crate) fn is_saturated(&self, now_enc: u64) -> bool {
        self.saturated_until.load(Ordering::Relaxed) > now_enc
    }

    /// Records a passive outcome into the success window.
    pub(crate) fn record_passive(&self, now: Instant, success: bool, latency: Option<Duration>) {
        let mut w = self.window.lock();
        if success {
            w.record_success(now, latency);
        } else {
            w.record_failure(now);
        }
        self.success_rate.store(w.snapshot(now).success_rate);
    }
}

/// Test helper: one request held in flight on a node (both counts).
#[cfg(test)]
pub(crate) struct Hold {
    live: Arc<NodeLive>,
    _guard: cluster_metrics::InFlightGuard,
}

#[cfg(test)]
impl NodeLive {
    pub(crate) fn hold(self: &Arc<Self>) -> Hold {
        self.routed_in_flight.fetch_add(1, Ordering::Relaxed);
        Hold {
            live: Arc::clone(self),
            _guard: self.counters.begin(),
        }
    }
}

#[cfg(test)]
impl Drop for Hold {
    fn drop(&mut self) {
        self.live.routed_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_metrics::{Clock, ManualClock};

    #[test]
    fn epoch_round_trips() {
        let t0 = Instant::now();
        let e = Epoch::new(t0);
        assert_eq!(e.decode(0), None);
        let t = t0 + Duration::from_millis(1500);
        assert_eq!(e.decode(e.encode(t)), Some(t));
        assert_eq!(e.encode(t0), 1);
    }

    #[test]
    fn passive_window_updates_success_rate() {
        let clock = ManualClock::new();
        let live = NodeLive::new(clock.shared(), 0, Duration::from_secs(30), 10);
        assert!((live.success_rate.load() - 1.0).abs() < 1e-12);
        live.record_passive(clock.now(), true, None);
        live.record_passive(clock.now(), false, None);
        assert!((live.success_rate.load() - 0.5).abs() < 1e-12);
        assert!(!live.is_saturated(1));
        live.saturated_until.store(10, Ordering::Relaxed);
        assert!(live.is_saturated(5));
        let q = ReportedQueue::default();
        assert_eq!(q.fresh(100, 50), None);
        q.store(7, 60);
        assert_eq!(q.fresh(100, 50), Some(7));
        assert_eq!(q.fresh(111, 50), None);
        let f = AtomicF64::new(1.5);
        f.store(2.5);
        assert!((f.load() - 2.5).abs() < 1e-12);
    }
}
