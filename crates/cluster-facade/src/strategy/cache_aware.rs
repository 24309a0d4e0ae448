//! Ours: send each request where it will get its first token soonest
//! without making later requests slower.
//!
//! For every evaluated node the strategy computes a cost in seconds:
//!
//! ```text
//! cost = (uncached + work_penalty × private_uncached
//!         + eviction_penalty × evicted) / rate
//!      + outstanding_prefill / rate
//!      + in_flight × per_request_seconds
//!      + max(0, in_flight + 1 − node_concurrency) × decode_seconds
//!      + active_conversation_seconds × active × default_rate / rate
//! ```
//!
//! * `uncached`: prompt tokens past the node's longest cached prefix, from
//!   the cache model (or, for the benchmark's oracle, the node's true cache);
//! * `private_uncached`: the part of `uncached` past the *shared* prefix
//!   (blocks held by at least two cache entries in the cluster, typically a
//!   system prompt and tool list). Moving a conversation away from the node
//!   that holds it re-prefills its whole private history, and every later
//!   turn pays again, so that work is weighed `1 + work_penalty` times;
//!   re-prefilling a shared system prompt on a new node is paid once;
//! * `evicted`: when the request would add an entry to a node whose prompt
//!   cache is full and whose least recently used entry is still active, the
//!   private tokens of that conversation (it loses its cache);
//! * `outstanding_prefill`: uncached tokens of requests already routed to
//!   the node that have not produced a first byte (its prefill queue);
//! * `rate`: the node's learned prefill rate;
//! * `active`: conversations (cache entries) used on the node within
//!   `active_window` — the turns they will send soon are load the queue does
//!   not show yet; this term spreads new conversations.
//!
//! The lowest cost wins. Nodes within `max(tie_abs_seconds, tie_relative ×
//! best)` of the best are tied; a tie goes to the session's node when it is
//! among them, otherwise to the highest rendezvous hash of `(key block, node
//! id)`, where the key block is the hash of the first `rendezvous_blocks`
//! blocks past the winner's cached prefix. Cold prompts with the same system
//! prompt therefore land on the same node, and independent gateway replicas
//! make the same choice without talking.
//!
//! Up to `full_scan_limit` candidates every node is evaluated. Above it only
//! the nodes holding a prefix (from the block index) plus `sample_candidates`
//! nodes chosen by hashing the prompt's first blocks are, so a decision costs
//! O(index lookups + holders), not O(nodes).

use cluster_types::fingerprint::xxh64;
use cluster_types::{NodeId, RoutingContext, RoutingReason};

use super::{Candidates, Pick, f, margin};
use crate::cache_model::CacheModel;
use crate::params::CostParams;
use crate::snapshot::SnapNode;

/// Tells the oracle strategy what each node's cache really holds
/// (benchmarks and simulations only; production routing never has this).
pub trait CacheOracle: Send + Sync + std::fmt::Debug {
    /// Prompt tokens of the request described by `ctx` that `node` would
    /// serve from its prompt cache if the request arrived now.
    fn cached_tokens(&self, node: &NodeId, ctx: &RoutingContext) -> u64;
}

/// Where cached-prefix knowledge comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Knowledge<'a> {
    /// The cache model alone.
    Model(&'a CacheModel),
    /// True cached tokens from the oracle (the model still gives shared
    /// prefixes and active conversations).
    Oracle(&'a CacheModel, &'a dyn CacheOracle),
}

/// The request as the cost model sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prompt<'a> {
    pub(crate) ctx: &'a RoutingContext,
    /// Full-block chain (what a cache can hold).
    pub(crate) chain: &'a [u64],
    /// Every block hash including a partial tail (rendezvous keys).
    pub(crate) blocks: &'a [u64],
    /// Estimated prompt tokens (≥ 1).
    pub(crate) tokens: u64,
    /// Cache entries used since this instant count as active conversations.
    pub(crate) active_since: std::time::Instant,
}

impl<'a> Prompt<'a> {
    pub(crate) fn new(
        ctx: &'a RoutingContext,
        bytes_per_token: u64,
        active_since: std::time::Instant,
    ) -> Self {
        let fp = &ctx.fingerprint;
        let tokens = if ctx.prompt_tokens_estimate > 0 {
            u64::from(ctx.prompt_tokens_estimate)
        } else {
            fp.total_bytes() / bytes_per_token.max(1)
        };
        Self {
            ctx,
            chain: fp.full_blocks(),
            blocks: fp.blocks(),
            tokens: tokens.max(1),
            active_since,
        }
    }

    /// Tokens not covered by `matched` cached blocks.
    pub(crate) fn uncached(&self, matched: usize) -> u64 {
        let total = self.blocks.len().max(1);
        let matched = matched.min(total);
        let t = u128::from(self.tokens) * (total - matched) as u128 / total as u128;
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// Rendezvous key: the hash of the block `k` blocks past `from`.
    fn key(&self, from: usize, k: usize) -> u64 {
        if self.blocks.is_empty() {
            // No prompt at all: key on the model name.
            return self
                .ctx
                .model
                .as_deref()
                .map_or(0, |m| xxh64(m.as_bytes(), 0));
        }
        let idx = from.saturating_add(k.max(1)).min(self.blocks.len()) - 1;
        self.blocks[idx]
    }
}

/// Rendezvous (highest random weight) score of a node for a key.
pub(crate) fn rendezvous(key: u64, id_hash: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&key.to_le_bytes());
    buf[8..].copy_from_slice(&id_hash.to_le_bytes());
    xxh64(&buf, 0x7265_6e64)
}

/// The node's prefill rate in tokens/s: learned, else the default scaled by
/// the node's weight.
pub(crate) fn rate(node: &SnapNode, cost: &CostParams) -> f64 {
    let learned = node.live.prefill_rate.load();
    if learned > 0.0 {
        learned
    } else {
        cost.default_prefill_tokens_per_second.max(1e-3) * f(u64::from(node.weight))
    }
}

/// What the cost of one node depends on besides its live counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Work {
    /// Prompt tokens the node would have to prefill.
    pub(crate) uncached: u64,
    /// Of those, tokens past the cluster-wide shared prefix.
    pub(crate) private: u64,
    /// Tokens of an active conversation this request would evict.
    pub(crate) evicted: u64,
    /// Conversations active on the node.
    pub(crate) active: usize,
}

/// The cost in seconds of sending the request to `node` (module docs).
pub(crate) fn estimate(node: &SnapNode, work: Work, cost: &CostParams) -> f64 {
    let r = rate(node, cost);
    let default_rate = cost.default_prefill_tokens_per_second.max(1e-3);
    let outstanding = f(node
        .live
        .outstanding_prefill
        .load(std::sync::atomic::Ordering::Relaxed));
    let in_flight = node.live.in_flight();
    let decode = match node.live.decode_seconds.load() {
        d if d > 0.0 => d,
        _ => cost.default_decode_seconds,
    };
    let over = (in_flight + 1).saturating_sub(u64::from(cost.node_concurrency.max(1)));
    (f(work.uncached)
        + cost.work_penalty.max(0.0) * f(work.private)
        + cost.eviction_penalty.max(0.0) * f(work.evicted)
        + outstanding)
        / r
        + f(in_flight) * cost.per_request_seconds
        + f(over) * decode
        + cost.active_conversation_seconds * f(work.active as u64) * default_rate / r
}

#[derive(Debug, Clone, Copy)]
struct Eval {
    index: u32,
    matched: usize,
    uncached: u64,
    est: f64,
    id_hash: u64,
}

/// Scratch space reused between decisions (held by the router).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    matches: Vec<(u32, usize)>,
    evals: Vec<Eval>,
}

/// Chooses a node (see the [module docs](self)). `prefer` is the snapshot
/// index of the session's node, if any.
pub(crate) fn choose(
    c: &Candidates<'_>,
    prompt: &Prompt<'_>,
    knowledge: Knowledge<'_>,
    cost: &CostParams,
    prefer: Option<u32>,
    scratch: &mut Scratch,
) -> Option<Pick> {
    let (model, oracle) = match knowledge {
        Knowledge::Model(m) => (m, None),
        Knowledge::Oracle(m, o) => (m, Some(o)),
    };
    let shared = model.shared_prefix(prompt.chain, 2);
    let since = prompt.active_since;
    let work_for = |node: &SnapNode, uncached: u64, matched: usize| Work {
        uncached,
        private: uncached.min(prompt.uncached(matched.max(shared))),
        evicted: model.eviction_tokens(node.live.cache_slot, prompt.chain, since),
        active: model.active_entries(node.live.cache_slot, since),
    };
    let n = c.len();
    if n == 0 {
        return None;
    }
    scratch.evals.clear();
    let evals = &mut scratch.evals;
    match oracle {
        Some(oracle) => {
            for k in c.allowed_positions() {
                let node = c.node(k);
                let cached = oracle.cached_tokens(&node.entry.spec.id, prompt.ctx);
                let uncached = prompt.tokens.saturating_sub(cached);
                evals.push(Eval {
                    index: c.index(k),
                    matched: 0,
                    uncached,
                    est: estimate(node, work_for(node, uncached, 0), cost),
                    id_hash: node.id_hash,
                });
            }
        }
        None => {
            model.longest_matches(prompt.chain, &mut scratch.matches);
            let matches = &scratch.matches;
            let matched_of = |node: &SnapNode| {
                matches
                    .iter()
                    .find(|(s, _)| *s == node.live.cache_slot)
                    .map_or(0, |&(_, m)| m)
            };
            let push = |evals: &mut Vec<Eval>, i: u32, matched: usize| {
                let node = c.snap.node(i);
                let uncached = prompt.uncached(matched);
                evals.push(Eval {
                    index: i,
                    matched,
                    uncached,
                    est: estimate(node, work_for(node, uncached, matched), cost),
                    id_hash: node.id_hash,
                });
            };
            if n <= cost.full_scan_limit {
                for k in c.allowed_positions() {
                    let matched = matched_of(c.node(k));
                    push(evals, c.index(k), matched);
                }
            } else {
                for &(slot, matched) in matches {
                    if let Some(i) = c.snap.index_of_slot(slot)
                        && c.admits(i)
                    {
                        push(evals, i, matched);
                    }
                }
                let key = prompt.key(0, cost.rendezvous_blocks);
                let samples = cost.sample_candidates.max(1);
                let mut j = 0u64;
                let mut added = 0;
                // Deterministic probes; give up after a few rounds of
                // excluded / saturated / duplicate hits.
                while added < samples && j < 4 * samples as u64 + 8 {
                    let h = rendezvous(key, j);
                    j += 1;
                    let k = usize::try_from(h % n as u64).unwrap_or(0);
                    let i = c.index(k);
                    if c.allowed(k) && !evals.iter().any(|e| e.index == i) {
                        push(evals, i, matched_of(c.node(k)));
                        added += 1;
                    }
                }
                if evals.is_empty() {
                    // Everything sampled was unusable: scan.
                    for k in c.allowed_positions() {
                        let matched = matched_of(c.node(k));
                        push(evals, c.index(k), matched);
                    }
                }
            }
        }
    }
    let best = evals
        .iter()
        .copied()
        .min_by(|a, b| a.est.total_cmp(&b.est))?;
    let eps = cost.tie_abs_seconds.max(cost.tie_relative * best.est);
    let tied = |e: &Eval| e.est <= best.est + eps;
    let n_tied = evals.iter().filter(|e| tied(e)).count();
    let winner =
        if let Some(p) = prefer.and_then(|p| evals.iter().find(|e| e.index == p && tied(e))) {
            (*p, RoutingReason::SessionAffinity)
        } else if n_tied > 1 {
            let key = prompt.key(best.matched, cost.rendezvous_blocks);
            let w = evals
                .iter()
                .filter(|e| tied(e))
                .max_by_key(|e| rendezvous(key, e.id_hash))
                .copied()
                .unwrap_or(best);
            let reason = if w.matched > 0 {
                RoutingReason::CacheHit
            } else {
                RoutingReason::Rendezvous
            };
            (w, reason)
        } else if best.matched > 0 || (best.uncached < prompt.tokens && oracle.is_some()) {
            (best, RoutingReason::CacheHit)
        } else {
            (best, RoutingReason::LeastLoaded)
        };
    let (w, reason) = winner;
    let confidence = match reason {
        RoutingReason::CacheHit | RoutingReason::SessionAffinity => {
            1.0 - f(w.uncached) / f(prompt.tokens)
        }
        RoutingReason::Rendezvous => 1.0 / f(n_tied as u64),
        _ => {
            let second = evals
                .iter()
                .filter(|e| e.index != w.index)
                .map(|e| e.est)
                .fold(f64::INFINITY, f64::min);
            margin(w.est, second)
        }
    };
    Some(Pick {
        index: w.index,
        reason,
        confidence,
        cached_blocks: w.matched,
        uncached_tokens: w.uncached,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::super::testutil::{healthy, snapshot};
    use super::*;
    use crate::cache_model::CacheModelParams;
    use crate::live::Epoch;
    use cluster_metrics::{Clock, ManualClock};
    use cluster_types::{PrefixFingerprint, SegmentKind};

    fn ctx(system: &str, user: &str) -> RoutingContext {
        let mut b = PrefixFingerprint::builder(256);
        b.push_segment(SegmentKind::Model, "m")
            .push_segment(SegmentKind::System, system)
            .push_segment(SegmentKind::Message { role: "user" }, user);
        let fingerprint = b.finish();
        let tokens = u32::try_from(fingerprint.total_bytes() / 4).unwrap();
        RoutingContext {
            fingerprint,
            prompt_tokens_estimate: tokens,
            ..RoutingContext::default()
        }
    }

    struct Setup {
        clock: ManualClock,
        epoch: Epoch,
        model: CacheModel,
    }

    fn setup(n: usize) -> (Setup, crate::snapshot::ClusterSnapshot) {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let mut model = CacheModel::new(CacheModelParams::default());
        for _ in 0..n {
            model.add_node();
        }
        let snap = snapshot(&clock, &vec![1; n]);
        (
            Setup {
                clock,
                epoch,
                model,
            },
            snap,
        )
    }

    fn insert(s: &mut Setup, slot: u32, c: &RoutingContext) {
        let chain: Arc<[u64]> = c.fingerprint.full_blocks().into();
        s.model.insert(
            slot,
            chain,
            u64::from(c.prompt_tokens_estimate),
            Instant::now(),
        );
    }

    #[test]
    fn prefers_the_node_holding_the_prefix() {
        let (mut s, snap) = setup(4);
        let sys = "You are a coding agent. ".repeat(400); // ~9.6 KB
        let turn1 = ctx(&sys, "fix the bug");
        insert(&mut s, 2, &turn1);
        let turn2 = ctx(&sys, "fix the bug please, and add tests");
        let none = vec![];
        let c = healthy(&snap, &none, s.epoch, &s.clock);
        let p = Prompt::new(&turn2, 4, Instant::now());
        let pick = choose(
            &c,
            &p,
            Knowledge::Model(&s.model),
            &CostParams::default(),
            None,
            &mut Scratch::default(),
        )
        .unwrap();
        assert_eq!(pick.index, 2);
        assert_eq!(pick.reason, RoutingReason::CacheHit);
        assert!(pick.cached_blocks > 30);
        assert!(pick.uncached_tokens < p.tokens / 10);
        assert!(pick.confidence > 0.9);
    }

    #[test]
    fn cold_prompts_rendezvous_per_system_prompt() {
        let (s, snap) = setup(8);
        let none = vec![];
        let c = healthy(&snap, &none, s.epoch, &s.clock);
        let sys_a = "System prompt A. ".repeat(300);
        let sys_b = "Another system prompt B! ".repeat(300);
        let mut scratch = Scratch::default();
        let pick = |ctx: &RoutingContext, scratch: &mut Scratch| {
            choose(
                &c,
                &Prompt::new(ctx, 4, Instant::now()),
                Knowledge::Model(&s.model),
                &CostParams::default(),
                None,
                scratch,
            )
            .unwrap()
        };
        let a1 = pick(&ctx(&sys_a, "q1"), &mut scratch);
        let a2 = pick(&ctx(&sys_a, "another question entirely"), &mut scratch);
        assert_eq!(a1.reason, RoutingReason::Rendezvous);
        assert_eq!(a1.index, a2.index);
        // Different system prompts spread (for these two, different nodes).
        let b1 = pick(&ctx(&sys_b, "q1"), &mut scratch);
        assert_ne!(a1.index, b1.index);
        assert!((a1.confidence - 1.0 / 8.0).abs() < 1e-9);
    }

    #[test]
    fn spills_when_queued_work_outweighs_the_saved_prefill() {
        let (mut s, snap) = setup(2);
        let sys = "S".repeat(40_000); // 10k tokens
        let req = ctx(&sys, "hello");
        insert(&mut s, 0, &req);
        let none = vec![];
        let c = healthy(&snap, &none, s.epoch, &s.clock);
        let p = Prompt::new(&req, 4, Instant::now());
        let cost = CostParams::default();
        let go = |s: &Setup| {
            choose(
                &c,
                &p,
                Knowledge::Model(&s.model),
                &cost,
                None,
                &mut Scratch::default(),
            )
            .unwrap()
        };
        assert_eq!(go(&s).index, 0);
        // 5k tokens queued on n0: still worth waiting (3.3 s < 6.7 s cold).
        snap.node(0)
            .live
            .outstanding_prefill
            .store(5_000, Ordering::Relaxed);
        assert_eq!(go(&s).index, 0);
        // The prompt is private to n0 (one entry holds it), so moving it
        // costs (1 + work_penalty) × 6.7 s = 13.3 s: 20k queued (13.3 s) is a
        // tie, 30k queued (20 s) spills.
        snap.node(0)
            .live
            .outstanding_prefill
            .store(30_000, Ordering::Relaxed);
        let pick = go(&s);
        assert_eq!(pick.index, 1);
        assert_eq!(pick.reason, RoutingReason::LeastLoaded);
        assert_eq!(pick.cached_blocks, 0);
        assert!(pick.confidence > 0.0);
    }

    #[test]
    fn learned_rates_and_session_preference() {
        let (s, snap) = setup(3);
        let none = vec![];
        let c = healthy(&snap, &none, s.epoch, &s.clock);
        let req = ctx(&"x".repeat(8000), "q");
        let p = Prompt::new(&req, 4, Instant::now());
        // n1 is three times faster: it wins a cold prompt outright.
        snap.node(1).live.prefill_rate.store(4500.0);
        let pick = choose(
            &c,
            &p,
            Knowledge::Model(&s.model),
            &CostParams::default(),
            None,
            &mut Scratch::default(),
        )
        .unwrap();
        assert_eq!(pick.index, 1);
        // Equal nodes: the session's node wins the tie.
        snap.node(1).live.prefill_rate.store(0.0);
        let pick = choose(
            &c,
            &p,
            Knowledge::Model(&s.model),
            &CostParams::default(),
            Some(2),
            &mut Scratch::default(),
        )
        .unwrap();
        assert_eq!(
            (pick.index, pick.reason),
            (2, RoutingReason::SessionAffinity)
        );
        // In-flight requests beyond the node's concurrency add decode waits.
        let cost = CostParams {
            node_concurrency: 1,
            ..CostParams::default()
        };
        let _g = snap.node(2).live.hold();
        let pick = choose(
            &c,
            &p,
            Knowledge::Model(&s.model),
            &cost,
            Some(2),
            &mut Scratch::default(),
        )
        .unwrap();
        assert_ne!(pick.index, 2);
    }

    #[derive(Debug)]
    struct Truth;
    impl CacheOracle for Truth {
        fn cached_tokens(&self, node: &NodeId, ctx: &RoutingContext) -> u64 {
            if node.as_str() == "n1" {
                u64::from(ctx.prompt_tokens_estimate) / 2
            } else {
                0
            }
        }
    }

    #[test]
    fn oracle_knowledge() {
        let (s, snap) = setup(3);
        let none = vec![];
        let c = healthy(&snap, &none, s.epoch, &s.clock);
        let req = ctx(&"y".repeat(8000), "q");
        let p = Prompt::new(&req, 4, Instant::now());
        let pick = choose(
            &c,
            &p,
            Knowledge::Oracle(&s.model, &Truth),
            &CostParams::default(),
            None,
            &mut Scratch::default(),
        )
        .unwrap();
        assert_eq!((pick.index, pick.reason), (1, RoutingReason::CacheHit));
        assert!((pick.confidence - 0.5).abs() < 0.01);
    }

    #[test]
    fn large_clusters_evaluate_holders_plus_samples() {
        let (mut s, snap) = setup(500);
        let none = vec![];
        let c = healthy(&snap, &none, s.epoch, &s.clock);
        let sys = "Z".repeat(20_000);
        let req = ctx(&sys, "q");
        insert(&mut s, 321, &req);
        let p = Prompt::new(&req, 4, Instant::now());
        let mut scratch = Scratch::default();
        let pick = choose(
            &c,
            &p,
            Knowledge::Model(&s.model),
            &CostParams::default(),
            None,
            &mut scratch,
        )
        .unwrap();
        // Snapshot indices follow id order ("n0", "n1", "n10", ...), not slots.
        let holder = snap.index_of_slot(321).unwrap();
        assert_eq!(pick.index, holder);
        assert!(scratch.evals.len() <= 1 + CostParams::default().sample_candidates);
        // A cold prompt picks deterministically among a few sampled nodes.
        let cold = ctx(&"W".repeat(20_000), "q");
        let pc = Prompt::new(&cold, 4, Instant::now());
        let a = choose(
            &c,
            &pc,
            Knowledge::Model(&s.model),
            &CostParams::default(),
            None,
            &mut scratch,
        )
        .unwrap();
        let b = choose(
            &c,
            &pc,
            Knowledge::Model(&s.model),
            &CostParams::default(),
            None,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(a.index, b.index);
        // Excluding the holder falls back to the sampled nodes.
        let ex = vec![NodeId::from("n321")];
        let c2 = healthy(&snap, &ex, s.epoch, &s.clock);
        let q = choose(
            &c2,
            &p,
            Knowledge::Model(&s.model),
            &CostParams::default(),
            None,
            &mut scratch,
        )
        .unwrap();
        assert_ne!(q.index, holder);
    }

    #[test]
    fn prompt_token_arithmetic() {
        let req = ctx(&"a".repeat(1000), "b");
        let p = Prompt::new(&req, 4, Instant::now());
        assert_eq!(p.uncached(0), p.tokens);
        assert_eq!(p.uncached(p.blocks.len()), 0);
        assert_eq!(p.uncached(usize::MAX), 0);
        let empty = RoutingContext::default();
        let pe = Prompt::new(&empty, 4, Instant::now());
        assert_eq!(pe.tokens, 1);
        assert_eq!(pe.key(0, 8), 0);
        let named = RoutingContext {
            model: Some("m".into()),
            ..RoutingContext::default()
        };
        assert_ne!(Prompt::new(&named, 4, Instant::now()).key(0, 8), 0);
        assert_ne!(rendezvous(1, 2), rendezvous(2, 1));
    }
}
