//! Least-loaded: the fewest requests in flight per unit of weight, then the
//! lowest latency estimate (the node's last peak-EWMA time to first token).
//! A node that reported its own queue within the last 10 s (llama.cpp,
//! vLLM, SGLang `/metrics`: running + waiting, from all its clients) counts
//! the larger of that and this gateway's in-flight count.
//!
//! The scan starts at a rotating position so that nodes tied on both keys
//! take turns instead of the first one taking everything. O(n).

use std::sync::atomic::{AtomicUsize, Ordering};

use cluster_types::RoutingReason;

use super::{Candidates, Pick, as_f64, margin};
use crate::live::REPORTED_QUEUE_MAX_AGE;

/// Least-loaded state: the rotating start.
#[derive(Debug, Default)]
pub(crate) struct LeastLoaded {
    start: AtomicUsize,
}

impl LeastLoaded {
    pub(crate) fn choose(&self, c: &Candidates<'_>) -> Option<Pick> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n;
        let max_age = u64::try_from(REPORTED_QUEUE_MAX_AGE.as_nanos()).unwrap_or(u64::MAX);
        let mut best: Option<(usize, f64, f64)> = None;
        let mut second = f64::INFINITY;
        for j in 0..n {
            let k = if start + j >= n {
                start + j - n
            } else {
                start + j
            };
            let node = c.node(k);
            if !c.allowed_node(node) {
                continue;
            }
            // The node's own count (all its clients) when it reported one
            // lately, else this gateway's.
            let requests = node
                .live
                .reported_queue
                .fresh(c.now_enc, max_age)
                .map_or(node.live.in_flight(), |r| r.max(node.live.in_flight()));
            let load = (as_f64(requests) + 1.0) / as_f64(u64::from(node.weight));
            let lat = node.live.latency_ns.load();
            match best {
                Some((_, bl, blat)) if load > bl || (load == bl && lat >= blat) => {
                    second = second.min(load);
                }
                Some((_, bl, _)) => {
                    second = second.min(bl);
                    best = Some((k, load, lat));
                }
                None => best = Some((k, load, lat)),
            }
        }
        let (k, load, _) = best?;
        Some(Pick::new(
            c.index(k),
            RoutingReason::LeastLoaded,
            margin(load, second),
        ))
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
    fn picks_fewest_in_flight_per_weight() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1, 2]);
        let ll = LeastLoaded::default();
        let none: Vec<NodeId> = vec![];
        let _g0 = snap.node(0).live.hold();
        let _g1 = snap.node(1).live.hold();
        let _g2a = snap.node(2).live.hold();
        // n2: (1 + 1) / 2 = 1.0 < n0, n1: 2.0
        let c = healthy(&snap, &none, epoch, &clock);
        let p = ll.choose(&c).unwrap();
        assert_eq!(p.index, 2);
        assert_eq!(p.reason, RoutingReason::LeastLoaded);
        assert!((p.confidence - 0.5).abs() < 1e-9);
        let _g2b = snap.node(2).live.hold();
        let _g2c = snap.node(2).live.hold();
        // n2: 4 / 2 = 2.0 ties with n0/n1 at 2.0: latency decides.
        snap.node(0).live.latency_ns.store(5e8);
        snap.node(1).live.latency_ns.store(1e8);
        snap.node(2).live.latency_ns.store(3e8);
        for _ in 0..3 {
            assert_eq!(ll.choose(&c).unwrap().index, 1);
        }
        let ex = vec![NodeId::from("n1")];
        assert_eq!(
            ll.choose(&healthy(&snap, &ex, epoch, &clock))
                .unwrap()
                .index,
            2
        );
    }

    #[test]
    fn a_fresh_reported_queue_counts_other_clients() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1]);
        let ll = LeastLoaded::default();
        let none: Vec<NodeId> = vec![];
        let _g = snap.node(1).live.hold();
        // n0 is idle as far as this gateway knows, but says 3 requests
        // (other clients') are running or waiting there.
        snap.node(0)
            .live
            .reported_queue
            .store(3, epoch.encode(clock.now()));
        let c = healthy(&snap, &none, epoch, &clock);
        for _ in 0..2 {
            assert_eq!(ll.choose(&c).unwrap().index, 1);
        }
        // Once the report is stale, only this gateway's count matters.
        clock.advance(REPORTED_QUEUE_MAX_AGE + std::time::Duration::from_secs(1));
        let c = healthy(&snap, &none, epoch, &clock);
        for _ in 0..2 {
            assert_eq!(ll.choose(&c).unwrap().index, 0);
        }
    }

    #[test]
    fn full_ties_rotate() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1, 1]);
        let ll = LeastLoaded::default();
        let none: Vec<NodeId> = vec![];
        let c = healthy(&snap, &none, epoch, &clock);
        let got: Vec<u32> = (0..3).map(|_| ll.choose(&c).unwrap().index).collect();
        assert_eq!(got, [0, 1, 2]);
        let all: Vec<NodeId> = ["n0", "n1", "n2"].map(NodeId::from).to_vec();
        assert!(ll.choose(&healthy(&snap, &all, epoch, &clock)).is_none());
    }
}
