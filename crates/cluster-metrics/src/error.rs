//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong in `cluster-metrics`.
///
/// Recording never fails; only construction with invalid parameters and
/// Prometheus encoding return errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsError {
    /// A rolling window was asked for a zero-length time window.
    #[error("rolling window length must be greater than zero (got {window:?})")]
    ZeroWindow {
        /// The rejected window length.
        window: Duration,
    },
    /// A rolling window was asked to hold zero samples.
    #[error("rolling window must hold at least one sample (got max_samples = {max_samples})")]
    ZeroMaxSamples {
        /// The rejected capacity.
        max_samples: usize,
    },
    /// An EWMA was asked for a zero decay time constant.
    #[error("EWMA decay time constant must be greater than zero (got {tau:?})")]
    ZeroDecay {
        /// The rejected time constant.
        tau: Duration,
    },
    /// Writing the Prometheus text exposition failed.
    #[error("encoding the Prometheus text exposition failed")]
    Encode,
}
