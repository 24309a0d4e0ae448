//! Waiting for a condition: polled, bounded, and loud when it times out.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `condition` every 10 ms until it holds; panics naming `what`
/// after `limit` (wall time: pick limits generous enough for a loaded
/// machine). Returns how long it took.
pub async fn poll_until(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    started.elapsed()
}

/// Like [`poll_until`] with an async condition (an HTTP call, a lock).
pub async fn poll_until_async<F, Fut>(what: &str, limit: Duration, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    started.elapsed()
}
