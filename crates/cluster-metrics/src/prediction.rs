//! [`PredictionHistogram`]: how far the router's cache model was from what
//! a node reported.
//!
//! For every answered request the router predicted how many prompt tokens
//! the node would serve from its prompt cache; the node reported
//! `cached_tokens`. The difference, in fingerprint blocks (256 bytes of
//! prompt by default), goes into fixed buckets of atomics: no lock, no
//! allocation on the request path. "Within one block" is the fidelity
//! figure the status API and the dashboard show.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in blocks: 0.5, 1, 2, 4, 8, 16, 32, 64,
/// plus `+Inf`.
pub const PREDICTION_ERROR_BUCKETS: [f64; 8] = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Bucket index of "within one block" (the bound 1.0).
const WITHIN_ONE_BLOCK: usize = 1;

/// A histogram of absolute cache-prediction errors in blocks.
///
/// Default: empty.
///
/// ```
/// use cluster_metrics::PredictionHistogram;
///
/// let h = PredictionHistogram::default();
/// h.observe(0.2);
/// h.observe(3.0);
/// let s = h.snapshot();
/// assert_eq!((s.count, s.within_one_block), (2, 1));
/// assert_eq!(s.within_one_block_ratio(), Some(0.5));
/// ```
#[derive(Debug, Default)]
pub struct PredictionHistogram {
    /// Per bucket (not cumulative), `+Inf` last.
    buckets: [AtomicU64; PREDICTION_ERROR_BUCKETS.len() + 1],
    /// Sum of errors in thousandths of a block.
    sum_milli: AtomicU64,
}

/// A copy of a [`PredictionHistogram`]. Plain data; default empty.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PredictionSnapshot {
    /// Predictions observed.
    pub count: u64,
    /// Of those, within one block of the report.
    pub within_one_block: u64,
    /// Sum of the absolute errors, blocks.
    pub sum_blocks: f64,
    /// Count per bucket of [`PREDICTION_ERROR_BUCKETS`] (not cumulative),
    /// `+Inf` last.
    pub buckets: [u64; PREDICTION_ERROR_BUCKETS.len() + 1],
}

impl PredictionSnapshot {
    /// `within_one_block / count`; `None` before the first prediction.
    #[must_use]
    pub fn within_one_block_ratio(&self) -> Option<f64> {
        (self.count > 0).then(|| self.within_one_block as f64 / self.count as f64)
    }
}

impl PredictionHistogram {
    /// Records one absolute error, in blocks (negative or NaN counts as 0).
    pub fn observe(&self, error_blocks: f64) {
        let e = if error_blocks.is_finite() {
            error_blocks.abs()
        } else if error_blocks.is_nan() {
            0.0
        } else {
            f64::MAX
        };
        let idx = PREDICTION_ERROR_BUCKETS.partition_point(|&b| b < e);
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        let milli = (e * 1000.0).min(1e15) as u64;
        self.sum_milli.fetch_add(milli, Ordering::Relaxed);
    }

    /// A copy of the counts.
    #[must_use]
    pub fn snapshot(&self) -> PredictionSnapshot {
        let mut buckets = [0u64; PREDICTION_ERROR_BUCKETS.len() + 1];
        for (b, a) in buckets.iter_mut().zip(&self.buckets) {
            *b = a.load(Ordering::Relaxed);
        }
        let sum_blocks = self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        PredictionSnapshot {
            count: buckets.iter().sum(),
            within_one_block: buckets[..=WITHIN_ONE_BLOCK].iter().sum(),
            sum_blocks,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_ratio() {
        let h = PredictionHistogram::default();
        assert_eq!(h.snapshot().within_one_block_ratio(), None);
        for e in [0.0, 0.5, 1.0, 1.5, -3.0, 100.0, f64::NAN, f64::INFINITY] {
            h.observe(e);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 8);
        // 0, 0.5, NaN (as 0) in the first bucket; 1.0 in the second.
        assert_eq!(s.buckets[0], 3);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.within_one_block, 4);
        assert_eq!(s.buckets[2], 1); // 1.5
        assert_eq!(s.buckets[3], 1); // |-3|
        assert_eq!(s.buckets[8], 2); // 100, +inf
        assert!(s.sum_blocks > 100.0);
    }
}
