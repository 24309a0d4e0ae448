//! [`LatencyHistogram`]: a thread-safe HdrHistogram of durations.
//!
//! Values are recorded in microseconds into an `hdrhistogram::Histogram`
//! tracking 1 µs ..= 1 h with 3 significant digits (every quantile is within
//! 0.1% of the true value). Recording locks a `parking_lot::Mutex` for one
//! array increment and one addition; reads copy out what they need while
//! holding it.

use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Lowest discernible value: 1 µs. Smaller durations are recorded as 0 µs.
pub const HISTOGRAM_LOWEST: Duration = Duration::from_micros(1);
/// Highest trackable value: 1 hour. Longer durations are recorded as 1 h.
pub const HISTOGRAM_HIGHEST: Duration = Duration::from_secs(3600);
/// Significant decimal digits kept: 3.
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// A latency distribution since creation (or the last
/// [`reset`](LatencyHistogram::reset)).
///
/// Range 1 µs ..= 1 h, 3 significant digits (see the constants above);
/// `LatencyHistogram::default()` is the same as [`LatencyHistogram::new`].
/// Each instance takes about 180 KiB.
///
/// ```
/// use std::time::Duration;
/// use cluster_metrics::LatencyHistogram;
///
/// let h = LatencyHistogram::new();
/// for ms in 1..=100 {
///     h.record(Duration::from_millis(ms));
/// }
/// let s = h.summary();
/// assert_eq!(s.count, 100);
/// let p50 = s.p50.unwrap().as_secs_f64();
/// assert!((p50 - 0.050).abs() < 0.0001);
/// assert_eq!(s.max, Some(Duration::from_millis(100)));
/// ```
#[derive(Debug)]
pub struct LatencyHistogram {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    hist: Histogram<u64>,
    /// Exact sum of the recorded durations, in nanoseconds (saturating).
    sum_ns: u64,
    /// Exact largest recorded value, in nanoseconds (saturating).
    max_ns: u64,
}

/// Quantiles and totals of a [`LatencyHistogram`]. Plain data; every
/// `Option` is `None` when nothing was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistogramSummary {
    /// Number of recorded values.
    pub count: u64,
    /// Exact sum of the recorded durations (not clamped to 1 h).
    pub sum: Duration,
    /// Arithmetic mean (exact: `sum / count`).
    pub mean: Option<Duration>,
    /// Median.
    pub p50: Option<Duration>,
    /// 90th percentile.
    pub p90: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
    /// Largest recorded value (exact, not clamped).
    pub max: Option<Duration>,
}

/// Per-bucket counts for a Prometheus-style histogram; see
/// [`LatencyHistogram::bucket_counts`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BucketCounts {
    /// `counts[i]` = values in `(bounds[i-1], bounds[i]]`; the last entry
    /// (index `bounds.len()`) counts values above the last bound (`+Inf`).
    /// Not cumulative.
    pub counts: Vec<u64>,
    /// Number of recorded values.
    pub count: u64,
    /// Exact sum of the recorded durations.
    pub sum: Duration,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl LatencyHistogram {
    /// An empty histogram over 1 µs ..= 1 h with 3 significant digits.
    #[must_use]
    pub fn new() -> Self {
        #[allow(clippy::expect_used)]
        let hist = Histogram::new_with_bounds(
            micros(HISTOGRAM_LOWEST),
            micros(HISTOGRAM_HIGHEST),
            HISTOGRAM_SIGFIG,
        )
        .expect("constant histogram bounds are valid");
        Self {
            inner: Mutex::new(Inner {
                hist,
                sum_ns: 0,
                max_ns: 0,
            }),
        }
    }

    /// Records one duration (clamped into 0 ..= 1 h for the quantiles; the
    /// sum uses the exact value).
    pub fn record(&self, value: Duration) {
        let us = micros(value);
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let mut inner = self.inner.lock();
        inner.hist.saturating_record(us);
        inner.sum_ns = inner.sum_ns.saturating_add(ns);
        inner.max_ns = inner.max_ns.max(ns);
    }

    /// Number of recorded values.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.inner.lock().hist.len()
    }

    /// The value at quantile `q` (clamped into `[0, 1]`); `None` when empty.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let inner = self.inner.lock();
        (!inner.hist.is_empty()).then(|| Duration::from_micros(inner.hist.value_at_quantile(q)))
    }

    /// Count, sum, mean, p50, p90, p99 and max, read under one lock.
    #[must_use]
    pub fn summary(&self) -> HistogramSummary {
        let inner = self.inner.lock();
        let count = inner.hist.len();
        let sum = Duration::from_nanos(inner.sum_ns);
        if count == 0 {
            return HistogramSummary::default();
        }
        let at = |q: f64| Some(Duration::from_micros(inner.hist.value_at_quantile(q)));
        HistogramSummary {
            count,
            sum,
            mean: Some(Duration::from_nanos(inner.sum_ns / count)),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: Some(Duration::from_nanos(inner.max_ns)),
        }
    }

    /// Counts per bucket for the ascending upper `bounds` (plus `+Inf`), for
    /// Prometheus exposition. A value counts in the first bucket whose bound
    /// is at least the value's histogram bucket (so within 0.1%).
    #[must_use]
    pub fn bucket_counts(&self, bounds: &[Duration]) -> BucketCounts {
        let bounds_us: Vec<u64> = bounds.iter().map(|b| micros(*b)).collect();
        let mut counts = vec![0u64; bounds.len() + 1];
        let inner = self.inner.lock();
        for v in inner.hist.iter_recorded() {
            let value = inner.hist.lowest_equivalent(v.value_iterated_to());
            let idx = bounds_us.partition_point(|&b| b < value);
            counts[idx] += v.count_at_value();
        }
        BucketCounts {
            counts,
            count: inner.hist.len(),
            sum: Duration::from_nanos(inner.sum_ns),
        }
    }

    /// Forgets every recorded value.
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.hist.reset();
        inner.sum_ns = 0;
        inner.max_ns = 0;
    }
}

impl Default for LatencyHistogram {
    /// Same as [`LatencyHistogram::new`].
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(a: Duration, b: Duration) -> bool {
        let (a, b) = (a.as_secs_f64(), b.as_secs_f64());
        (a - b).abs() <= b * 0.001 + 1e-6
    }

    #[test]
    fn empty_summary() {
        let h = LatencyHistogram::default();
        assert_eq!(h.summary(), HistogramSummary::default());
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.count(), 0);
    }

    #[test]
    fn quantiles_are_within_three_digits() {
        let h = LatencyHistogram::new();
        for i in 1..=1000u64 {
            h.record(Duration::from_millis(i));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!(within(s.p50.unwrap(), Duration::from_millis(500)));
        assert!(within(s.p90.unwrap(), Duration::from_millis(900)));
        assert!(within(s.p99.unwrap(), Duration::from_millis(990)));
        assert!(within(s.max.unwrap(), Duration::from_millis(1000)));
        assert_eq!(s.sum, Duration::from_millis(500_500));
        assert_eq!(s.mean, Some(Duration::from_micros(500_500)));
        assert!(within(
            h.quantile(2.0).unwrap(),
            Duration::from_millis(1000)
        ));
        assert!(within(
            h.quantile(f64::NAN).unwrap(),
            Duration::from_millis(1)
        ));
    }

    #[test]
    fn out_of_range_values_saturate() {
        let h = LatencyHistogram::new();
        h.record(Duration::from_secs(7200));
        h.record(Duration::from_nanos(10));
        let s = h.summary();
        assert_eq!(s.count, 2);
        assert_eq!(s.max, Some(Duration::from_secs(7200)));
        assert!(within(h.quantile(1.0).unwrap(), HISTOGRAM_HIGHEST));
        assert_eq!(h.quantile(0.0), Some(Duration::ZERO));
    }

    #[test]
    fn bucket_counts_partition_the_values() {
        let h = LatencyHistogram::new();
        for ms in [5, 50, 100, 150, 900, 5000] {
            h.record(Duration::from_millis(ms));
        }
        let b = h.bucket_counts(&[Duration::from_millis(100), Duration::from_secs(1)]);
        assert_eq!(b.counts, vec![3, 2, 1]);
        assert_eq!(b.count, 6);
        assert_eq!(b.sum, Duration::from_millis(6205));
        h.reset();
        assert_eq!(h.bucket_counts(&[]).counts, vec![0]);
    }
}
