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
//! node's gate until the request ahead has produced its first token, then
//! is sent. Decoding is not limited — a node keeps generating for every
//! admitted request.
//!
//! # Order
//! Waiting requests are admitted by the smallest *key*: the time the
//! request reached the gate plus its predicted prefill time. A short
//! follow-up turn that arrives while a long cold prompt waits goes first
//! (shortest-remaining-work order lowers the mean time to first token), but
//! never by more than the long prompt's own prefill time: a request that
//! arrives later than `key` of a waiting one cannot pass it, so nothing
//! starves.
//!
//! # Holding a slot
//! A request holds its slot until the first byte of its answer, its end, or
//! a hold limit (streamed answers: eight times the predicted prefill time,
//! at least 10 s, so a node that never answers cannot block the gate for
//! long while a poor early prediction does not open it; non-streamed
//! answers, whose first byte comes only after the whole generation: the
//! predicted prefill time), whichever comes first.
//!
//! The cache-aware strategy's cost model counts the prefill work queued at
//! each node's gate (`outstanding_prefill`) as the wait ahead of a request.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Node tag overriding `routing.prefill_concurrency` for one node, e.g.
/// `prefill_concurrency = "0"` (unlimited) for a server that schedules
/// prefill well on its own.
pub const TAG_PREFILL_CONCURRENCY: &str = "prefill_concurrency";

/// Shortest hold of a streamed request's slot before it is released
/// without a first byte.
const MIN_STREAM_HOLD: Duration = Duration::from_secs(10);

/// A waiting request: admitted by the smallest `(key, seq)`.
struct Waiter {
    key: Reverse<(u64, u64)>,
    tx: oneshot::Sender<Permit>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

#[derive(Default)]
struct State {
    free: usize,
    waiters: BinaryHeap<Waiter>,
    seq: u64,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
}

impl Inner {
    /// Gives a freed slot to the first live waiter, else keeps it free.
    fn release(self: &Arc<Self>) {
        let mut state = self.state.lock();
        while let Some(w) = state.waiters.pop() {
            match w.tx.send(Permit(Some(Arc::clone(self)))) {
                Ok(()) => return,
                // That waiter gave up: defuse the returned permit (its drop
                // would re-enter this lock) and try the next.
                Err(mut permit) => permit.0 = None,
            }
        }
        state.free += 1;
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("PrefillGate")
            .field("free", &s.free)
            .field("waiting", &s.waiters.len())
            .finish()
    }
}

/// One admitted prefill; the slot goes to the next waiter when dropped
/// (also when it is dropped inside a channel whose receiver gave up).
struct Permit(Option<Arc<Inner>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.release();
        }
    }
}

/// One node's gate: unlimited when built with limit 0.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrefillGate {
    inner: Option<Arc<Inner>>,
    limit: usize,
}

impl PrefillGate {
    /// A gate admitting `limit` prefills at once (0 = unlimited).
    pub(crate) fn new(limit: usize) -> Self {
        let inner = (limit > 0).then(|| {
            let inner = Inner::default();
            inner.state.lock().free = limit;
            Arc::new(inner)
        });
        Self { inner, limit }
    }

    /// The limit (0 = unlimited).
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for a slot; among waiters the smallest `key` goes first (ties
    /// in arrival order). Cancellation-safe: dropping the future gives up
    /// the place in the queue, and a slot granted to it passes on.
    pub(crate) async fn acquire(&self, key: u64) -> PrefillSlot {
        let permit = match &self.inner {
            None => None,
            Some(inner) => {
                let rx = {
                    let mut state = inner.state.lock();
                    if state.free > 0 && state.waiters.is_empty() {
                        state.free -= 1;
                        drop(state);
                        Some(Ok(Permit(Some(Arc::clone(inner)))))
                    } else {
                        let (tx, rx) = oneshot::channel();
                        state.seq += 1;
                        let seq = state.seq;
                        state.waiters.push(Waiter {
                            key: Reverse((key, seq)),
                            tx,
                        });
                        drop(state);
                        Some(Err(rx))
                    }
                };
                match rx {
                    Some(Ok(permit)) => Some(permit),
                    // The sender lives in the gate until granted.
                    Some(Err(rx)) => rx.await.ok(),
                    None => None,
                }
            }
        };
        PrefillSlot {
            permit: Arc::new(Mutex::new(permit)),
        }
    }
}

/// A held prefill slot; released by [`PrefillSlot::release`], by the hold
/// limit, or when dropped.
#[derive(Clone)]
pub(crate) struct PrefillSlot {
    permit: Arc<Mutex<Option<Permit>>>,
}

impl std::fmt::Debug for PrefillSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefillSlot")
            .field("held", &self.is_held())
            .finish()
    }
}

impl PrefillSlot {
    /// Frees the slot (idempotent).
    pub(crate) fn release(&self) {
        let permit = self.permit.lock().take();
        drop(permit);
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
    async fn one_prefill_at_a_time_shortest_key_first() {
        let gate = PrefillGate::new(1);
        let a = gate.acquire(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // c arrives after b but has the smaller key (a short prefill).
        for (name, key) in [("b", 500), ("c", 200), ("d", 500)] {
            let gate = gate.clone();
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let slot = gate.acquire(key).await;
                order.lock().push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
                slot.release();
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(order.lock().is_empty(), "everyone waits for a");
        a.release();
        a.release(); // idempotent
        for t in tasks {
            t.await.unwrap();
        }
        // Smallest key first; equal keys in arrival order.
        assert_eq!(*order.lock(), vec!["c", "b", "d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn hold_limit_frees_a_stuck_slot_and_cancel_leaves_the_queue() {
        let gate = PrefillGate::new(1);
        let stuck = gate.acquire(0).await;
        stuck.release_after(Duration::from_secs(3));
        // A waiter that gives up does not take the slot with it.
        let gave_up = tokio::time::timeout(Duration::from_secs(1), gate.acquire(1)).await;
        assert!(gave_up.is_err());
        let next = tokio::time::timeout(Duration::from_secs(5), gate.acquire(2)).await;
        assert!(next.is_ok(), "freed by the hold limit");
        assert!(!stuck.is_held());
        drop(next);
        // Two slots: two at once, the third waits.
        let two = PrefillGate::new(2);
        let (x, y) = (two.acquire(0).await, two.acquire(0).await);
        assert!(x.is_held() && y.is_held());
        assert!(
            tokio::time::timeout(Duration::from_millis(1), two.acquire(0))
                .await
                .is_err()
        );
        drop(x);
        assert!(
            tokio::time::timeout(Duration::from_millis(1), two.acquire(0))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn unlimited_gate_never_waits() {
        let gate = PrefillGate::new(0);
        assert_eq!(gate.limit(), 0);
        let a = gate.acquire(0).await;
        let b = gate.acquire(0).await;
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
        let slot = futures::executor::block_on(gate.acquire(0));
        slot.release_after(Duration::from_secs(1));
        assert!(!slot.is_held());
        assert!(format!("{slot:?}").contains("held"));
    }
}
