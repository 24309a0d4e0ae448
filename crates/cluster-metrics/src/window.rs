//! [`RollingWindow`]: success/failure samples over a sliding time window.
//!
//! The Rust form of the seeds' `RollingWindowMetrics`: a bounded circular
//! buffer of samples (success or failure, with an optional latency), read
//! through a time filter. A sample counts while its age is strictly less than
//! the window; once the buffer holds `max_samples` samples, each new sample
//! overwrites the oldest one.
//!
//! Time is passed in (`now`), never read here, so the window is a pure data
//! structure: the caller takes `now` from its [`Clock`](crate::Clock).
//!
//! Costs: [`record_success`](RollingWindow::record_success) and
//! [`record_failure`](RollingWindow::record_failure) are O(1) and never
//! allocate (the buffer is allocated once, in the constructor);
//! [`snapshot`](RollingWindow::snapshot) is O(max_samples) and never
//! allocates.

use std::time::{Duration, Instant};

use crate::MetricsError;

/// One recorded outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at: Instant,
    success: bool,
    /// Only successes carry a latency.
    latency: Option<Duration>,
}

/// A bounded, time-filtered window of success/failure samples.
///
/// Defaults ([`RollingWindow::default`]): a 30 s window holding at most 100
/// samples — the seeds' defaults, and `cluster_types::HealthConfig`'s
/// `window` / `max_samples` defaults.
///
/// Not internally synchronized: recording takes `&mut self`. Wrap it in a
/// lock (or own it from a single task) when several threads record.
///
/// ```
/// use std::time::{Duration, Instant};
/// use cluster_metrics::RollingWindow;
///
/// let mut window = RollingWindow::default();
/// let t0 = Instant::now();
/// window.record_success(t0, Some(Duration::from_millis(120)));
/// window.record_failure(t0 + Duration::from_secs(1));
///
/// let snap = window.snapshot(t0 + Duration::from_secs(2));
/// assert_eq!(snap.total_samples, 2);
/// assert_eq!(snap.success_rate, 0.5);
/// assert_eq!(snap.consecutive_failures, 1);
///
/// // 31 s later both samples have aged out.
/// let snap = window.snapshot(t0 + Duration::from_secs(31));
/// assert_eq!(snap.total_samples, 0);
/// assert_eq!(snap.success_rate, 1.0);
/// ```
#[derive(Debug)]
pub struct RollingWindow {
    window: Duration,
    max_samples: usize,
    /// Ring buffer; grows up to `max_samples` (capacity reserved up front),
    /// then `next` wraps around and overwrites the oldest sample.
    samples: Vec<Sample>,
    /// Index the next sample is written to once the buffer is full.
    next: usize,
}

/// What a [`RollingWindow`] holds at one instant. Plain data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSnapshot {
    /// Successes / samples in the window, in `[0.0, 1.0]`; `1.0` when the
    /// window is empty (no evidence of failure).
    pub success_rate: f64,
    /// Mean latency of the successes in the window that carried one; `None`
    /// when there are none.
    pub avg_latency: Option<Duration>,
    /// Samples inside the window (at most `max_samples`).
    pub total_samples: usize,
    /// Length of the run of successes ending at the most recent in-window
    /// sample (0 if the most recent one is a failure or the window is empty).
    pub consecutive_successes: u32,
    /// Length of the run of failures ending at the most recent in-window
    /// sample (0 if the most recent one is a success or the window is empty).
    pub consecutive_failures: u32,
}

impl WindowSnapshot {
    /// The snapshot of an empty window: success rate 1.0, no latency, no
    /// samples, no runs.
    pub const EMPTY: WindowSnapshot = WindowSnapshot {
        success_rate: 1.0,
        avg_latency: None,
        total_samples: 0,
        consecutive_successes: 0,
        consecutive_failures: 0,
    };
}

impl Default for WindowSnapshot {
    /// [`WindowSnapshot::EMPTY`].
    fn default() -> Self {
        Self::EMPTY
    }
}

impl RollingWindow {
    /// Default window length: 30 s (the seeds' `windowSizeMs`).
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
    /// Default capacity: 100 samples (the seeds' `maxSamples`).
    pub const DEFAULT_MAX_SAMPLES: usize = 100;

    /// A window of length `window` holding at most `max_samples` samples.
    ///
    /// Invalid values are clamped rather than rejected: a zero `window`
    /// becomes 1 ns and a zero `max_samples` becomes 1. Use
    /// [`try_new`](Self::try_new) to reject them instead (configuration
    /// validation in `cluster-types` already does).
    #[must_use]
    pub fn new(window: Duration, max_samples: usize) -> Self {
        let window = window.max(Duration::from_nanos(1));
        let max_samples = max_samples.max(1);
        Self {
            window,
            max_samples,
            samples: Vec::with_capacity(max_samples),
            next: 0,
        }
    }

    /// Like [`new`](Self::new), but rejects a zero `window` or `max_samples`.
    ///
    /// # Errors
    /// [`MetricsError::ZeroWindow`] or [`MetricsError::ZeroMaxSamples`].
    pub fn try_new(window: Duration, max_samples: usize) -> Result<Self, MetricsError> {
        if window.is_zero() {
            return Err(MetricsError::ZeroWindow { window });
        }
        if max_samples == 0 {
            return Err(MetricsError::ZeroMaxSamples { max_samples });
        }
        Ok(Self::new(window, max_samples))
    }

    /// The window length.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The capacity: the most samples the window ever holds.
    #[must_use]
    pub fn max_samples(&self) -> usize {
        self.max_samples
    }

    /// Samples currently stored, including any that have aged out of the
    /// time window but were not yet overwritten. Never more than
    /// [`max_samples`](Self::max_samples).
    #[must_use]
    pub fn stored_samples(&self) -> usize {
        self.samples.len()
    }

    /// Records a success at `now`, with its latency if known. O(1).
    pub fn record_success(&mut self, now: Instant, latency: Option<Duration>) {
        self.push(Sample {
            at: now,
            success: true,
            latency,
        });
    }

    /// Records a failure at `now`. O(1).
    pub fn record_failure(&mut self, now: Instant) {
        self.push(Sample {
            at: now,
            success: false,
            latency: None,
        });
    }

    /// Forgets every sample.
    pub fn reset(&mut self) {
        self.samples.clear();
        self.next = 0;
    }

    #[inline]
    fn push(&mut self, sample: Sample) {
        if self.samples.len() < self.max_samples {
            // Within the capacity reserved in `new`: no reallocation.
            self.samples.push(sample);
        } else {
            self.samples[self.next] = sample;
            self.next += 1;
            if self.next == self.max_samples {
                self.next = 0;
            }
        }
    }

    /// Summarises the samples whose age at `now` is less than the window.
    ///
    /// A sample stamped later than `now` (a caller whose clock read raced
    /// another's) has age zero and counts. O(max_samples), no allocation.
    #[must_use]
    pub fn snapshot(&self, now: Instant) -> WindowSnapshot {
        if self.samples.is_empty() {
            return WindowSnapshot::EMPTY;
        }
        let mut total: usize = 0;
        let mut successes: usize = 0;
        let mut latency_sum_ns: u128 = 0;
        let mut latency_count: u32 = 0;
        // The run ending at the newest in-window sample.
        let mut run_kind: Option<bool> = None;
        let mut run_len: u32 = 0;
        let mut run_open = true;

        // A sample counts iff its age is below the window, i.e. iff it is
        // later than `now - window` (comparing instants avoids building a
        // Duration per sample). If `now - window` is not representable,
        // every sample counts.
        let cutoff = now.checked_sub(self.window);
        // Newest first: once the buffer has wrapped, the newest samples are
        // `samples[..next]` (newest at `next - 1`), then `samples[next..]`;
        // before that `next` is 0 and the order is just reversed.
        let (recent, earlier) = self.samples.split_at(self.next);
        for sample in recent.iter().rev().chain(earlier.iter().rev()) {
            if cutoff.is_some_and(|c| sample.at <= c) {
                continue;
            }
            total += 1;
            if sample.success {
                successes += 1;
                if let Some(latency) = sample.latency {
                    latency_sum_ns += latency.as_nanos();
                    latency_count += 1;
                }
            }
            if run_open {
                match run_kind {
                    None => {
                        run_kind = Some(sample.success);
                        run_len = 1;
                    }
                    Some(kind) if kind == sample.success => run_len += 1,
                    Some(_) => run_open = false,
                }
            }
        }

        if total == 0 {
            return WindowSnapshot::EMPTY;
        }
        let avg_latency = (latency_count > 0).then(|| {
            let avg = latency_sum_ns / u128::from(latency_count);
            Duration::from_nanos(u64::try_from(avg).unwrap_or(u64::MAX))
        });
        // counts are at most max_samples
        let success_rate = successes as f64 / total as f64;
        WindowSnapshot {
            success_rate,
            avg_latency,
            total_samples: total,
            consecutive_successes: if run_kind == Some(true) { run_len } else { 0 },
            consecutive_failures: if run_kind == Some(false) { run_len } else { 0 },
        }
    }
}

impl Clone for RollingWindow {
    /// Clones the samples into a buffer with the full capacity reserved, so
    /// the clone's `record_*` never reallocates either.
    fn clone(&self) -> Self {
        let mut samples = Vec::with_capacity(self.max_samples);
        samples.extend_from_slice(&self.samples);
        Self {
            window: self.window,
            max_samples: self.max_samples,
            samples,
            next: self.next,
        }
    }
}

impl Default for RollingWindow {
    /// 30 s window, 100 samples.
    fn default() -> Self {
        Self::new(Self::DEFAULT_WINDOW, Self::DEFAULT_MAX_SAMPLES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_match_the_seeds() {
        let w = RollingWindow::default();
        assert_eq!(w.window(), Duration::from_secs(30));
        assert_eq!(w.max_samples(), 100);
    }

    #[test]
    fn empty_window_reports_full_success() {
        let w = RollingWindow::default();
        assert_eq!(w.snapshot(Instant::now()), WindowSnapshot::EMPTY);
        assert_eq!(WindowSnapshot::default(), WindowSnapshot::EMPTY);
    }

    #[test]
    fn try_new_rejects_zero() {
        assert_eq!(
            RollingWindow::try_new(Duration::ZERO, 5).unwrap_err(),
            MetricsError::ZeroWindow {
                window: Duration::ZERO
            }
        );
        assert_eq!(
            RollingWindow::try_new(ms(5), 0).unwrap_err(),
            MetricsError::ZeroMaxSamples { max_samples: 0 }
        );
        let w = RollingWindow::new(Duration::ZERO, 0);
        assert_eq!(w.max_samples(), 1);
        assert_eq!(w.window(), Duration::from_nanos(1));
    }

    #[test]
    fn success_rate_and_average_latency() {
        let t0 = Instant::now();
        let mut w = RollingWindow::default();
        w.record_success(t0, Some(ms(100)));
        w.record_success(t0, Some(ms(300)));
        w.record_success(t0, None);
        w.record_failure(t0);
        let s = w.snapshot(t0);
        assert_eq!(s.total_samples, 4);
        assert!((s.success_rate - 0.75).abs() < 1e-12);
        assert_eq!(s.avg_latency, Some(ms(200)));
        assert_eq!(s.consecutive_failures, 1);
        assert_eq!(s.consecutive_successes, 0);
    }

    #[test]
    fn consecutive_runs_follow_the_newest_samples() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::from_secs(10), 10);
        w.record_failure(t0);
        w.record_failure(t0);
        w.record_success(t0, None);
        w.record_success(t0, None);
        w.record_success(t0, None);
        let s = w.snapshot(t0);
        assert_eq!((s.consecutive_successes, s.consecutive_failures), (3, 0));
        w.record_failure(t0);
        w.record_failure(t0);
        let s = w.snapshot(t0);
        assert_eq!((s.consecutive_successes, s.consecutive_failures), (0, 2));
    }

    #[test]
    fn samples_age_out_at_exactly_the_window() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::from_secs(30), 100);
        w.record_failure(t0);
        w.record_success(t0 + Duration::from_secs(10), Some(ms(50)));
        let s = w.snapshot(t0 + Duration::from_secs(29));
        assert_eq!(s.total_samples, 2);
        let s = w.snapshot(t0 + Duration::from_secs(30));
        assert_eq!(s.total_samples, 1);
        assert_eq!(s.success_rate, 1.0);
        assert_eq!(s.consecutive_successes, 1);
        let s = w.snapshot(t0 + Duration::from_secs(40));
        assert_eq!(s, WindowSnapshot::EMPTY);
    }

    #[test]
    fn circular_buffer_overwrites_the_oldest() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::from_secs(30), 3);
        w.record_failure(t0);
        w.record_failure(t0);
        w.record_failure(t0);
        w.record_success(t0, Some(ms(10)));
        w.record_success(t0, Some(ms(20)));
        assert_eq!(w.stored_samples(), 3);
        let s = w.snapshot(t0);
        assert_eq!(s.total_samples, 3);
        assert!((s.success_rate - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.consecutive_successes, 2);
        assert_eq!(s.avg_latency, Some(ms(15)));
        // Wrap several times.
        for _ in 0..7 {
            w.record_success(t0, None);
        }
        let s = w.snapshot(t0);
        assert_eq!(s.consecutive_successes, 3);
        assert_eq!(s.success_rate, 1.0);
    }

    #[test]
    fn aged_out_samples_do_not_extend_runs() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::from_secs(5), 10);
        w.record_success(t0, None);
        w.record_success(t0, None);
        w.record_failure(t0 + Duration::from_secs(6));
        let s = w.snapshot(t0 + Duration::from_secs(6));
        assert_eq!(s.total_samples, 1);
        assert_eq!(s.consecutive_failures, 1);
        assert_eq!(s.success_rate, 0.0);
    }

    #[test]
    fn future_samples_count() {
        let t0 = Instant::now();
        let mut w = RollingWindow::default();
        w.record_success(t0 + Duration::from_secs(1), None);
        assert_eq!(w.snapshot(t0).total_samples, 1);
    }

    #[test]
    fn reset_clears() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::from_secs(5), 2);
        w.record_failure(t0);
        w.record_failure(t0);
        w.record_failure(t0);
        w.reset();
        assert_eq!(w.stored_samples(), 0);
        assert_eq!(w.snapshot(t0), WindowSnapshot::EMPTY);
        w.record_success(t0, None);
        assert_eq!(w.snapshot(t0).consecutive_successes, 1);
    }
}
