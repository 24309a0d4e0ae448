//! The seeds' cache-aware score — the baseline ours must beat.
//!
//! For each usable node:
//!
//! | term | points |
//! |---|---|
//! | the node's last routed system-prompt hash equals the request's | +50 |
//! | the node's last routed tool-list hash equals the request's | +20 |
//! | passive success rate (0.0–1.0) | +25 × rate |
//! | fewer than 5 requests in flight | +15 |
//! | the node's cache state changed within the last 60 s | +10 |
//!
//! The highest score wins; confidence = score / 120. Ties go to fewer
//! requests in flight, then to a rotating start position (the seeds took the
//! first node). The "last routed" hashes are the seeds' `NodeCacheState`:
//! one system prompt and one tool list per node, overwritten by every
//! request routed there — which is why it thrashes as soon as more than one
//! system prompt shares a node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cluster_types::{RoutingContext, RoutingReason};

use super::{Candidates, Pick};
use crate::live::Epoch;
use crate::params::RouterParams;

/// Stored form of a hash (0 means "none").
pub(crate) fn enc_hash(h: u64) -> u64 {
    h.max(1)
}

/// Seeds' score state: the rotating tie-break start.
#[derive(Debug, Default)]
pub(crate) struct CacheScore {
    start: AtomicUsize,
}

impl CacheScore {
    pub(crate) fn choose(
        &self,
        c: &Candidates<'_>,
        ctx: &RoutingContext,
        now: Instant,
        epoch: Epoch,
        params: &RouterParams,
    ) -> Option<Pick> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n;
        let sys = ctx.system_prompt_hash.map(enc_hash);
        let tools = ctx.tools_hash.map(enc_hash);
        let mut best: Option<(usize, f64, u64)> = None;
        for j in 0..n {
            let k = (start + j) % n;
            if !c.allowed(k) {
                continue;
            }
            let live = &c.node(k).live;
            let in_flight = live.in_flight();
            let mut score = 25.0 * live.success_rate.load().clamp(0.0, 1.0);
            if sys.is_some_and(|h| live.last_system_hash.load(Ordering::Relaxed) == h) {
                score += 50.0;
            }
            if tools.is_some_and(|h| live.last_tools_hash.load(Ordering::Relaxed) == h) {
                score += 20.0;
            }
            if in_flight < params.cache_score_max_in_flight {
                score += 15.0;
            }
            let recent = epoch
                .decode(live.cache_updated.load(Ordering::Relaxed))
                .is_some_and(|t| now.saturating_duration_since(t) <= params.cache_score_recency);
            if recent {
                score += 10.0;
            }
            if best.is_none_or(|(_, bs, bf)| score > bs || (score == bs && in_flight < bf)) {
                best = Some((k, score, in_flight));
            }
        }
        let (k, score, _) = best?;
        Some(Pick::new(
            c.index(k),
            RoutingReason::CacheScore,
            score / 120.0,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testutil::{healthy, snapshot};
    use super::*;
    use cluster_metrics::{Clock, ManualClock};
    use cluster_types::NodeId;

    #[test]
    fn score_terms() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1, 1]);
        let params = RouterParams::default();
        let cs = CacheScore::default();
        let none: Vec<NodeId> = vec![];
        let ctx = RoutingContext {
            system_prompt_hash: Some(11),
            tools_hash: Some(22),
            ..RoutingContext::default()
        };
        // n1 holds the system prompt, n2 the tools and is recent.
        snap.node(1)
            .live
            .last_system_hash
            .store(enc_hash(11), Ordering::Relaxed);
        snap.node(2)
            .live
            .last_tools_hash
            .store(enc_hash(22), Ordering::Relaxed);
        snap.node(2)
            .live
            .cache_updated
            .store(epoch.encode(clock.now()), Ordering::Relaxed);
        let c = healthy(&snap, &none, epoch, &clock);
        let p = cs.choose(&c, &ctx, clock.now(), epoch, &params).unwrap();
        assert_eq!(p.index, 1);
        assert_eq!(p.reason, RoutingReason::CacheScore);
        // 50 + 25 + 15 = 90
        assert!((p.confidence - 90.0 / 120.0).abs() < 1e-9);
        // Five in flight on n1 remove its availability bonus: 75 vs n2's 70.
        let _g: Vec<_> = (0..5).map(|_| snap.node(1).live.hold()).collect();
        assert_eq!(
            cs.choose(&c, &ctx, clock.now(), epoch, &params)
                .unwrap()
                .index,
            1
        );
        // Failures drop n1's success term: 50 + 0 = 50 < n2's 70.
        for _ in 0..4 {
            snap.node(1).live.record_passive(clock.now(), false, None);
        }
        assert_eq!(
            cs.choose(&c, &ctx, clock.now(), epoch, &params)
                .unwrap()
                .index,
            2
        );
        // After 61 s n2 loses its recency bonus: 60 vs n0's 40 still.
        clock.advance(Duration::from_secs(61));
        let p = cs.choose(&c, &ctx, clock.now(), epoch, &params).unwrap();
        assert_eq!(p.index, 2);
        assert!((p.confidence - 60.0 / 120.0).abs() < 1e-9);
    }

    #[test]
    fn ties_rotate_and_prefer_idle() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let snap = snapshot(&clock, &[1, 1, 1]);
        let params = RouterParams::default();
        let cs = CacheScore::default();
        let none: Vec<NodeId> = vec![];
        let c = healthy(&snap, &none, epoch, &clock);
        let ctx = RoutingContext::default();
        let got: Vec<u32> = (0..3)
            .map(|_| {
                cs.choose(&c, &ctx, clock.now(), epoch, &params)
                    .unwrap()
                    .index
            })
            .collect();
        assert_eq!(got, [0, 1, 2]);
        let _g = snap.node(1).live.hold();
        for _ in 0..6 {
            assert_ne!(
                cs.choose(&c, &ctx, clock.now(), epoch, &params)
                    .unwrap()
                    .index,
                1
            );
        }
    }
}
