//! Round-robin: each usable node in turn.
//!
//! With equal weights (the common case) a shared atomic counter walks the
//! candidate list: O(1) per request, skipping excluded or saturated nodes.
//! With unequal weights it is nginx's *smooth weighted round-robin*: every
//! usable node's current weight grows by its weight, the largest wins and
//! pays back the total, which spreads a weight-3 node's turns evenly
//! (`a a b a` rather than `a a a b`); O(n) per request under one short
//! mutex. Weights below 1 count as 1.

use std::sync::atomic::{AtomicUsize, Ordering};

use cluster_types::RoutingReason;
use parking_lot::Mutex;

use super::{Candidates, Pick, as_f64};

/// Round-robin state shared by all requests.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
    swrr: Mutex<()>,
}

impl RoundRobin {
    pub(crate) fn choose(&self, c: &Candidates<'_>) -> Option<Pick> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let confidence = 1.0 / n as f64;
        if c.snap.equal_weights {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&k| c.allowed(k))
                .map(|k| Pick::new(c.index(k), RoutingReason::RoundRobin, confidence))
        } else {
            let _guard = self.swrr.lock();
            let mut total = 0i64;
            let mut best: Option<(usize, i64)> = None;
            for k in c.allowed_positions() {
                let node = c.node(k);
                let w = i64::from(node.weight);
                total += w;
                let cur = node.live.swrr_current.fetch_add(w, Ordering::Relaxed) + w;
                if best.is_none_or(|(_, b)| cur > b) {
                    best = Some((k, cur));
                }
            }
            let (k, _) = best?;
            c.node(k)
                .live
                .swrr_current
                .fetch_sub(total, Ordering::Relaxed);
            let share = as_f64(u64::from(c.node(k).weight)) / as_f64(total.unsigned_abs());
            Some(Pick::new(c.index(k), RoutingReason::RoundRobin, share))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{healthy, snapshot};
    use super::*;
    use crate::live::Epoch;
    use cluster_metrics::{Clock, ManualClock};
    use cluster_types::NodeId;

    #[test]
    fn equal_weights_cycle_and_skip_excluded() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1, 1]);
        let rr = RoundRobin::default();
        let none: Vec<NodeId> = vec![];
        let c = healthy(&snap, &none, epoch, &clock);
        let got: Vec<u32> = (0..6).map(|_| rr.choose(&c).unwrap().index).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
        let ex = vec![NodeId::from("n1")];
        let c = healthy(&snap, &ex, epoch, &clock);
        let got: Vec<u32> = (0..4).map(|_| rr.choose(&c).unwrap().index).collect();
        assert!(!got.contains(&1));
        assert_eq!(rr.choose(&c).unwrap().reason, RoutingReason::RoundRobin);
        let all: Vec<NodeId> = ["n0", "n1", "n2"].map(NodeId::from).to_vec();
        assert!(rr.choose(&healthy(&snap, &all, epoch, &clock)).is_none());
    }

    #[test]
    fn smooth_weighted_sequence() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        // nginx's example: weights 5, 1, 1 give a a b a c a a.
        let snap = snapshot(&clock, &[5, 1, 1]);
        let rr = RoundRobin::default();
        let none: Vec<NodeId> = vec![];
        let c = healthy(&snap, &none, epoch, &clock);
        let got: Vec<u32> = (0..7).map(|_| rr.choose(&c).unwrap().index).collect();
        assert_eq!(got, [0, 0, 1, 0, 2, 0, 0]);
        // Over many rounds the shares follow the weights exactly.
        let mut counts = [0u32; 3];
        for _ in 0..700 {
            counts[rr.choose(&c).unwrap().index as usize] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn weighted_skips_saturated_nodes() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[2, 1]);
        snap.node(0)
            .live
            .saturated_until
            .store(epoch.encode(clock.now()) + 1_000_000, Ordering::Relaxed);
        let rr = RoundRobin::default();
        let none: Vec<NodeId> = vec![];
        let c = healthy(&snap, &none, epoch, &clock);
        for _ in 0..4 {
            assert_eq!(rr.choose(&c).unwrap().index, 1);
        }
    }
}
