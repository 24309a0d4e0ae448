//! [`TokioClock`]: a [`Clock`] that follows tokio's time.

use std::time::Instant;

use cluster_metrics::Clock;

/// A [`Clock`] reading `tokio::time::Instant::now()`, so that it stops and
/// jumps with `tokio::time::pause()` / `advance()` in tests. Outside a paused
/// runtime it is the system monotonic clock. Stateless; the default clock of
/// [`ClusterHealth`](crate::ClusterHealth).
///
/// Read from a thread outside any runtime context, tokio falls back to the
/// system clock; that matters only with paused time, where such a thread
/// should first `enter()` the runtime's handle.
///
/// ```
/// use cluster_health::TokioClock;
/// use cluster_metrics::Clock;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let clock = TokioClock;
/// let a = clock.now();
/// assert!(clock.now() >= a);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokioClock;

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = TokioClock;
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now() - start, Duration::from_secs(90));
    }
}
