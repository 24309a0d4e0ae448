//! Latency-based: power of two random choices over peak-EWMA cost.
//!
//! Two distinct usable nodes are drawn at random; the one with the lower
//! `cost = peak_ewma(ttft) × (in_flight + 1) / weight` wins. This is tower's
//! `p2c::Balance` over `PeakEwma` (Mitzenmacher, "The Power of Two Choices in
//! Randomized Load Balancing", 2001): nearly as good as scanning every node,
//! O(1) per request, and it never herds onto one node the way "always the
//! global minimum" does when estimates are stale. The RNG is injected (a
//! seeded `SmallRng`), so tests are reproducible.

use cluster_types::RoutingReason;
use rand::Rng;

use super::{Candidates, Pick, as_f64, margin};

fn cost(c: &Candidates<'_>, k: usize) -> f64 {
    let node = c.node(k);
    node.live.counters.load_cost() / as_f64(u64::from(node.weight))
}

/// Picks the cheaper of two random usable candidates.
pub(crate) fn choose(c: &Candidates<'_>, rng: &mut impl Rng) -> Option<Pick> {
    let n = c.len();
    let (a, b) = match n {
        0 => return None,
        1 => {
            return c
                .allowed(0)
                .then(|| Pick::new(c.index(0), RoutingReason::OnlyCandidate, 1.0));
        }
        _ => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            if c.allowed(a) && c.allowed(b) {
                (a, b)
            } else {
                // Some nodes are excluded or saturated: draw among the rest.
                let usable: Vec<usize> = c.allowed_positions().collect();
                match usable.len() {
                    0 => return None,
                    1 => {
                        return Some(Pick::new(
                            c.index(usable[0]),
                            RoutingReason::OnlyCandidate,
                            1.0,
                        ));
                    }
                    m => {
                        let i = rng.random_range(0..m);
                        let mut j = rng.random_range(0..m - 1);
                        if j >= i {
                            j += 1;
                        }
                        (usable[i], usable[j])
                    }
                }
            }
        }
    };
    let (ca, cb) = (cost(c, a), cost(c, b));
    let (win, lo, hi) = if ca <= cb { (a, ca, cb) } else { (b, cb, ca) };
    Some(Pick::new(
        c.index(win),
        RoutingReason::Latency,
        margin(lo, hi),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testutil::{healthy, snapshot};
    use super::*;
    use crate::live::Epoch;
    use cluster_metrics::{Clock, ManualClock};
    use cluster_types::NodeId;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn prefers_the_cheaper_node_of_each_pair() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1, 1, 1]);
        // n3 is slow: 5 s time to first token.
        snap.node(3)
            .live
            .counters
            .observe_latency(Duration::from_secs(5));
        for i in 0..3 {
            snap.node(i)
                .live
                .counters
                .observe_latency(Duration::from_millis(100));
        }
        let none: Vec<NodeId> = vec![];
        let c = healthy(&snap, &none, epoch, &clock);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 4];
        for _ in 0..300 {
            let p = choose(&c, &mut rng).unwrap();
            assert_eq!(p.reason, RoutingReason::Latency);
            counts[p.index as usize] += 1;
        }
        // The slow node only wins when paired with... never: it always
        // loses its pair.
        assert_eq!(counts[3], 0);
        assert!(counts[..3].iter().all(|&n| n > 50), "{counts:?}");
    }

    #[test]
    fn in_flight_raises_cost_and_seed_reproduces() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1]);
        let guards: Vec<_> = (0..3).map(|_| snap.node(0).live.hold()).collect();
        let none: Vec<NodeId> = vec![];
        let c = healthy(&snap, &none, epoch, &clock);
        let mut rng = SmallRng::seed_from_u64(1);
        let p = choose(&c, &mut rng).unwrap();
        assert_eq!(p.index, 1);
        assert!((p.confidence - 0.75).abs() < 1e-9);
        drop(guards);
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..20)
                .map(|_| choose(&c, &mut rng).unwrap().index)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }

    #[test]
    fn exclusions_and_single_candidates() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1, 1]);
        let mut rng = SmallRng::seed_from_u64(3);
        let ex: Vec<NodeId> = ["n0", "n2"].map(NodeId::from).to_vec();
        let c = healthy(&snap, &ex, epoch, &clock);
        for _ in 0..10 {
            let p = choose(&c, &mut rng).unwrap();
            assert_eq!((p.index, p.reason), (1, RoutingReason::OnlyCandidate));
        }
        let ex: Vec<NodeId> = vec![NodeId::from("n0")];
        let c = healthy(&snap, &ex, epoch, &clock);
        for _ in 0..10 {
            assert_ne!(choose(&c, &mut rng).unwrap().index, 0);
        }
        let all: Vec<NodeId> = ["n0", "n1", "n2"].map(NodeId::from).to_vec();
        assert!(choose(&healthy(&snap, &all, epoch, &clock), &mut rng).is_none());
        let one = snapshot(&clock, &[1]);
        let none: Vec<NodeId> = vec![];
        let p = choose(&healthy(&one, &none, epoch, &clock), &mut rng).unwrap();
        assert_eq!(p.reason, RoutingReason::OnlyCandidate);
    }
}
