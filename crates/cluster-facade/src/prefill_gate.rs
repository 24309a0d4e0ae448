//! Per-node admission of prompt prefills.
//!
//! Inference servers that batch prompt processing make every prompt in the
//! batch wait for the whole batch. Measured on `mlx_lm.server` 0.32 (CPU,
//! the tiny test model): two cold 4.3k-token prompts sent together both got
//! their first token after 16 s, where one alone takes 3.4 s; a warm
//! follow-up turn (0.55 s alone) sent next to a cold prompt waited 9 s. Sent
//! one after the other, the same pairs finish in 6.8 s and 3.9 + 0.6 s.
//!
//! So the gateway admits at most `routing.prefill_concurrency` (default 1)
//! requests per node into prefill at a time: a routed request waits at its
//! node's gate (FIFO, [`tokio::sync::Semaphore`]) until the request ahead
//! has produced its first token, then is sent. Decoding is not limited —
//! a node keeps generating for every admitted request. A request holds its
//! slot until the first byte of its answer, its end, or a hold limit
//! (streamed answers: eight times the predicted prefill time, at least
//! 10 s, so a node that never answers cannot block the gate for long while
//! a poor early prediction does not open it; non-streamed answers, whose
//! first byte comes only after the whole generation: the predicted prefill
//! time), whichever comes first.
//!
//! The cache-aware strategy's cost model counts the prefill work queued at
//! each node's gate (`outstanding_prefill`), so it is the expected wait of a
//! first-in first-out queue.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Node tag overriding `routing.prefill_concurrency` for one node, e.g.
/// `prefill_concurrency = "0"` (unlimited) for a server that schedules
/// prefill well on its own.
pub const TAG_PREFILL_CONCURRENCY: &str = "prefill_concurrency";

/// Shortest hold of a streamed request's slot before it is released
/// without a first byte.
const MIN_STREAM_HOLD: Duration = Duration::from_secs(10);

/// One node's gate: `None` when unlimited.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrefillGate {
    semaphore: Option<Arc<Semaphore>>,
    limit: usize,
}

impl PrefillGate {
    /// A gate admitting `limit` prefills at once (0 = unlimited).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            semaphore: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
        }
    }

    /// The limit (0 = unlimited).
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for a slot. Cancellation-safe: dropping the future gives up the
    /// place in the queue.
    pub(crate) async fn acquire(&self) -> PrefillSlot {
        let permit = match &self.semaphore {
            // The semaphore is never closed; a closed one admits at once.
            Some(s) => Arc::clone(s).acquire_owned().await.ok(),
            None => None,
        };
        PrefillSlot {
            permit: Arc::new(Mutex::new(permit)),
        }
    }
}

/// A held prefill slot; released by [`PrefillSlot::release`], by the hold
/// limit, or when dropped.
#[derive(Debug, Clone)]
pub(crate) struct PrefillSlot {
    permit: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl PrefillSlot {
    /// Frees the slot (idempotent).
    pub(crate) fn release(&self) {
        drop(self.permit.lock().take());
    }

    /// Whether the slot is still held.
    pub(crate) fn is_held(&self) -> bool {
        self.permit.lock().is_some()
    }

    /// Releases the slot after `hold` unless released before; needs a tokio
    /// runtime (without one the slot is released at once).
    pub(crate) fn release_after(&self, hold: Duration) {
        if !self.is_held() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let slot = self.clone();
                handle.spawn(async move {
                    tokio::time::sleep(hold).await;
                    slot.release();
                });
            }
            Err(_) => self.release(),
        }
    }
}

/// How long a request may hold its slot without a first byte: streamed
/// answers 8 × the predicted prefill (at least 10 s); non-streamed answers
/// the predicted prefill (at least 10 ms).
pub(crate) fn hold_limit(predicted_prefill: Duration, streamed: bool) -> Duration {
    if streamed {
        (predicted_prefill * 8).max(MIN_STREAM_HOLD)
    } else {
        predicted_prefill.max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_prefill_at_a_time_in_arrival_order() {
        let gate = PrefillGate::new(1);
        let a = gate.acquire().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in ["b", "c"] {
            let gate = gate.clone();
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let slot = gate.acquire().await;
                order.lock().push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
                slot.release();
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(order.lock().is_empty(), "b and c wait for a");
        a.release();
        a.release(); // idempotent
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), vec!["b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn hold_limit_frees_a_stuck_slot_and_cancel_leaves_the_queue() {
        let gate = PrefillGate::new(1);
        let stuck = gate.acquire().await;
        stuck.release_after(Duration::from_secs(3));
        // A waiter that gives up does not take the slot with it.
        let gave_up = tokio::time::timeout(Duration::from_secs(1), gate.acquire()).await;
        assert!(gave_up.is_err());
        let next = tokio::time::timeout(Duration::from_secs(5), gate.acquire()).await;
        assert!(next.is_ok(), "freed by the hold limit");
        assert!(!stuck.is_held());
    }

    #[tokio::test]
    async fn unlimited_gate_never_waits() {
        let gate = PrefillGate::new(0);
        assert_eq!(gate.limit(), 0);
        let a = gate.acquire().await;
        let b = gate.acquire().await;
        assert!(!a.is_held() && !b.is_held());
    }

    #[test]
    fn hold_limits() {
        let p = Duration::from_millis(300);
        assert_eq!(hold_limit(p, true), MIN_STREAM_HOLD);
        assert_eq!(
            hold_limit(Duration::from_secs(2), true),
            Duration::from_secs(16)
        );
        assert_eq!(hold_limit(p, false), p);
        assert_eq!(hold_limit(Duration::ZERO, false), Duration::from_millis(10));
        // Without a runtime the slot is released at once.
        let gate = PrefillGate::new(1);
        let slot = futures::executor::block_on(gate.acquire());
        slot.release_after(Duration::from_secs(1));
        assert!(!slot.is_held());
    }
}
