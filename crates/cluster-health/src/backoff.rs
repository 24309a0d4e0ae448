//! [`Backoff`]: jittered exponential backoff, one reusable type.
//!
//! Delay `n` (counting from 0) is `min(max, initial × multiplierⁿ)`, then
//! multiplied by a random factor drawn uniformly from
//! `[1 − jitter, 1 + jitter]` — the formula documented on
//! [`BackoffConfig`]. With the defaults (1 s, ×2, 60 s cap, ±20 %) the
//! delays are about 1, 2, 4, 8, 16, 32, 60, 60, … seconds, each spread by
//! ±20 %. The seeds had no jitter; without it every gateway replica (and
//! every node that failed at the same moment) probes a recovering Mac at the
//! same instants.
//!
//! The random source is injected (a seeded [`StdRng`]), so a test sees the
//! same sequence on every run.

use std::time::Duration;

use cluster_types::BackoffConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Jittered exponential backoff state: the attempt counter and the RNG.
///
/// Defaults come from [`BackoffConfig::default`]: `initial` 1 s, `max` 60 s,
/// `multiplier` 2.0, `jitter` 0.2. Out-of-range settings are tolerated
/// rather than rejected (validation lives in `cluster-types`): a multiplier
/// below 1 (or not finite) counts as 1, a jitter outside `0.0..=1.0` is
/// clamped into it, and a `max` below `initial` counts as `initial`.
///
/// It is also an infinite [`Iterator`] of delays.
///
/// ```
/// use std::time::Duration;
/// use cluster_health::Backoff;
/// use cluster_types::BackoffConfig;
///
/// let mut backoff = Backoff::from_seed(BackoffConfig::default(), 7);
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
/// let second = backoff.next_delay();
/// assert!(second >= Duration::from_millis(1600) && second <= Duration::from_millis(2400));
/// assert_eq!(backoff.attempt(), 2);
/// backoff.reset();
/// assert_eq!(backoff.base_delay(0), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// A backoff at attempt 0 drawing its jitter from `rng`.
    #[must_use]
    pub fn new(config: BackoffConfig, rng: StdRng) -> Self {
        Self {
            config,
            attempt: 0,
            rng,
        }
    }

    /// A backoff whose RNG is `StdRng::seed_from_u64(seed)`.
    #[must_use]
    pub fn from_seed(config: BackoffConfig, seed: u64) -> Self {
        Self::new(config, StdRng::seed_from_u64(seed))
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Delays handed out by [`next_delay`](Self::next_delay) since the last
    /// [`reset`](Self::reset) (0 for a fresh backoff).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Forgets the attempts: the next delay is the initial one again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn max(&self) -> Duration {
        self.config.max.max(self.config.initial)
    }

    fn jitter(&self) -> f64 {
        if self.config.jitter.is_finite() {
            self.config.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// The un-jittered delay of attempt `attempt`:
    /// `min(max, initial × multiplier^attempt)`.
    #[must_use]
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let multiplier = if self.config.multiplier.is_finite() && self.config.multiplier > 1.0 {
            self.config.multiplier
        } else {
            1.0
        };
        let max = self.max();
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let secs = self.config.initial.as_secs_f64() * multiplier.powi(exponent);
        match Duration::try_from_secs_f64(secs) {
            Ok(delay) => delay.min(max),
            // Overflowed to infinity (or NaN): the cap applies.
            Err(_) => max,
        }
    }

    /// The jittered delay of the current attempt; advances the attempt.
    ///
    /// The result lies in `[base × (1 − jitter), base × (1 + jitter)]` where
    /// `base` is [`base_delay(attempt)`](Self::base_delay); at the cap it can
    /// therefore exceed `max` by up to `jitter × max` (as `BackoffConfig`
    /// documents), which keeps replicas spread even once they all sit at the
    /// cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base_delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = self.jitter();
        if jitter == 0.0 {
            return base;
        }
        let factor = self.rng.random_range((1.0 - jitter)..=(1.0 + jitter));
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }

    /// Draws a duration uniformly from `[d × (1 − jitter), d × (1 + jitter)]`
    /// with this backoff's RNG and jitter, without touching the attempt
    /// counter. Used to spread periodic schedules.
    pub fn jittered(&mut self, d: Duration) -> Duration {
        let jitter = self.jitter();
        if jitter == 0.0 || d.is_zero() {
            return d;
        }
        let factor = self.rng.random_range((1.0 - jitter)..=(1.0 + jitter));
        Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(d)
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    /// Always `Some(self.next_delay())`: the sequence never ends.
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn base_delays_double_up_to_the_cap() {
        let b = Backoff::from_seed(BackoffConfig::default(), 1);
        let bases: Vec<u64> = (0..9).map(|n| b.base_delay(n).as_secs()).collect();
        assert_eq!(bases, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut b = Backoff::from_seed(BackoffConfig::default(), 42);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..200 {
            b.reset();
            let d = b.next_delay();
            assert!(d >= secs(0.8) && d <= secs(1.2), "{d:?}");
            seen_low |= d < secs(0.95);
            seen_high |= d > secs(1.05);
        }
        assert!(seen_low && seen_high, "jitter should spread both ways");
    }

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<Duration> = Backoff::from_seed(BackoffConfig::default(), 9)
            .take(10)
            .collect();
        let b: Vec<Duration> = Backoff::from_seed(BackoffConfig::default(), 9)
            .take(10)
            .collect();
        let c: Vec<Duration> = Backoff::from_seed(BackoffConfig::default(), 10)
            .take(10)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn zero_jitter_is_exact() {
        let config = BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        };
        let delays: Vec<u64> = Backoff::from_seed(config, 0)
            .take(4)
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8]);
    }

    #[test]
    fn bad_settings_are_tolerated() {
        let config = BackoffConfig {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(1),
            multiplier: f64::NAN,
            jitter: 7.0,
        };
        let mut b = Backoff::from_seed(config, 3);
        assert_eq!(b.base_delay(5), Duration::from_secs(2));
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(4));
        }
        let huge = BackoffConfig {
            multiplier: 1e300,
            ..BackoffConfig::default()
        };
        let b = Backoff::from_seed(huge, 3);
        assert_eq!(b.base_delay(10), Duration::from_secs(60));
    }

    #[test]
    fn jittered_keeps_attempts() {
        let mut b = Backoff::from_seed(BackoffConfig::default(), 5);
        let d = b.jittered(Duration::from_secs(10));
        assert!(d >= secs(8.0) && d <= secs(12.0));
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.jittered(Duration::ZERO), Duration::ZERO);
    }
}
