//! Ours: send each request where it will get its first token soonest
//! without making later requests slower.
//!
//! For every evaluated node the strategy estimates, in seconds at the
//! node's own measured prefill rate `r`:
//!
//! ```text
//! cost = ( queued                         prefill work waiting at the node's gate
//!        + uncached                       this prompt's tokens not in the node's cache
//!        + work_penalty × private         re-prefill of history cached on another node
//!        + eviction_penalty × evicted     an active conversation this would push out
//!        + balance × active × warm_turn   turns the node's conversations will send
//!        ) / r
//! ```
//!
//! * `queued`: predicted uncached tokens of requests routed to the node that
//!   have not produced their first token (they wait at its prefill gate,
//!   first in first out, see `prefill_gate.rs`); the first two terms are
//!   therefore the expected time to first token;
//! * `uncached`: prompt tokens minus the tokens the node is predicted to
//!   serve from its cache ([`predicted_cached`]): when the request extends an
//!   entry of the node exactly (the next turn of a conversation), that
//!   entry's reported prompt tokens plus the share of its reply the node
//!   reuses; for a shorter match (a shared system prompt), the matched
//!   blocks' bytes at the node's measured tokens per byte plus half a block;
//! * `private`: the part of `uncached` past the prefix many cache entries
//!   share (a system prompt and tool list). Moving a conversation away from
//!   the node holding it re-prefills its private history: work every request
//!   queued behind it waits for too, so it weighs `1 + work_penalty`;
//! * `evicted`: when the node's prompt cache is full and its least recently
//!   used entry is still in use, that conversation's private tokens;
//! * `active`: the node's conversations used within `active_window`;
//!   `warm_turn`: the measured uncached tokens of a follow-up turn. Each
//!   active conversation will soon queue such a turn at the node, so this
//!   term spreads *new* conversations over the nodes. It is left out (0 on
//!   every node) for a request that continues a conversation some node
//!   holds past the shared prefix: that conversation moves only when the
//!   work queued now at its node outweighs re-prefilling its history.
//!
//! Every term is work in tokens divided by the node's rate: the same
//! defaults hold for a tiny model on a CPU and a 70B model on an M2 Ultra.
//!
//! The lowest cost wins. Nodes within `max(tie_relative × best,
//! tie_tokens / r)` of it are tied; a tie goes to the session's node when it
//! is among them, otherwise to the highest rendezvous hash of `(key block,
//! node id)`, where the key block is the block `rendezvous_blocks` past the
//! winner's cached prefix. Cold prompts with the same system prompt
//! therefore land on the same node, and independent gateway replicas make
//! the same choice without talking.
//!
//! Up to `full_scan_limit` candidates every node is evaluated. Above it only
//! the nodes holding a prefix (from the block index) plus `sample_candidates`
//! nodes chosen by hashing the prompt's first blocks are, so a decision costs
//! O(index lookups + holders), not O(nodes).

use std::sync::atomic::Ordering;

use cluster_types::fingerprint::xxh64;
use cluster_types::{CostTerms, RoutingContext, RoutingReason};

use super::{Candidates, Pick, RunnerUpPick, as_f64, margin};
use crate::cache_model::CacheModel;
use crate::params::CostParams;
use crate::snapshot::SnapNode;

/// The request as the cost model sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prompt<'a> {
    pub(crate) ctx: &'a RoutingContext,
    /// Full-block chain (what a cache can hold).
    pub(crate) chain: &'a [u64],
    /// Every block hash including a partial tail (rendezvous keys).
    pub(crate) blocks: &'a [u64],
    /// Bytes of canonical prompt (≥ 1).
    pub(crate) bytes: u64,
    /// Bytes per fingerprint block.
    pub(crate) block_bytes: u64,
    /// Tokens per byte when the node has not reported any yet: the
    /// request's own estimate, else `1 / bytes_per_token`.
    pub(crate) fallback_tpb: f64,
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
        let bytes = fp.total_bytes().max(1);
        let fallback_tpb = if ctx.prompt_tokens_estimate > 0 {
            as_f64(u64::from(ctx.prompt_tokens_estimate)) / as_f64(bytes)
        } else {
            1.0 / as_f64(bytes_per_token.max(1))
        };
        Self {
            ctx,
            chain: fp.full_blocks(),
            blocks: fp.blocks(),
            bytes,
            block_bytes: u64::from(fp.block_bytes().max(1)),
            fallback_tpb,
            active_since,
        }
    }

    /// Tokens per byte of prompt on `node`: measured, else the fallback.
    pub(crate) fn tpb(&self, node: &SnapNode) -> f64 {
        let learned = node.live.tokens_per_byte.load();
        if learned > 0.0 {
            learned
        } else {
            self.fallback_tpb
        }
    }

    /// The prompt's tokens on `node` (≥ 1).
    pub(crate) fn tokens(&self, node: &SnapNode) -> u64 {
        to_tokens(as_f64(self.bytes) * self.tpb(node)).max(1)
    }

    /// Tokens of the first `blocks` full blocks on `node`.
    pub(crate) fn tokens_of_blocks(&self, node: &SnapNode, blocks: usize) -> u64 {
        let bytes = (blocks as u64)
            .saturating_mul(self.block_bytes)
            .min(self.bytes);
        to_tokens(as_f64(bytes) * self.tpb(node))
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

fn to_tokens(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

/// Prompt tokens `node` is predicted to serve from its cache for `prompt`,
/// given that its longest cached prefix is `matched` blocks (see the
/// [module docs](self)); at most the prompt's tokens − 1 (a server always
/// recomputes the last prompt token).
pub(crate) fn predicted_cached(
    model: &CacheModel,
    node: &SnapNode,
    prompt: &Prompt<'_>,
    matched: usize,
) -> u64 {
    if matched == 0 {
        return 0;
    }
    let total = prompt.tokens(node);
    let cached = match model.held(node.live.cache_slot, prompt.chain, matched) {
        Some(held) => {
            let reuse = node.live.reply_reuse.load().clamp(0.0, 1.0);
            (held.tokens - held.reply) + to_tokens(as_f64(held.reply) * reuse)
        }
        None => {
            // The common text runs on into the next block: half a block on
            // average.
            let half = to_tokens(as_f64(prompt.block_bytes) * prompt.tpb(node) / 2.0);
            prompt.tokens_of_blocks(node, matched) + half
        }
    };
    cached.min(total.saturating_sub(1))
}

/// How far above the fleet's mean (per unit of weight) a node's own
/// reported queue may be before a conversation skips it under
/// `routing.consistent_replicas`: 25 %.
pub(crate) const CONSISTENT_LOAD_SLACK: f64 = 0.25;

/// Routing for gateway replicas that share nothing
/// (`routing.consistent_replicas`): the candidates in weighted rendezvous
/// order for the request's conversation key (else its session, else its
/// first blocks) — a function of the request and the candidate list alone,
/// so every replica with the same view of node health picks the same node,
/// and every turn of a conversation lands where its prefix is. Weighted: a
/// node of weight `w` wins `w` times as many conversations (logarithmic
/// method). Bounded loads from what the nodes themselves report (llama.cpp,
/// vLLM, SGLang: fresh queue counts, which every replica reads alike): when
/// every candidate reported, the first in that order whose queue is within
/// [`CONSISTENT_LOAD_SLACK`] of the fleet's mean per unit of weight (plus
/// one) wins. The cache model is still read for the prediction.
pub(crate) fn choose_consistent(
    c: &Candidates<'_>,
    prompt: &Prompt<'_>,
    model: &CacheModel,
    max_report_age_ns: u64,
) -> Option<Pick> {
    let key = prompt
        .ctx
        .conversation_key
        .or_else(|| {
            prompt
                .ctx
                .session_id
                .as_deref()
                .map(|s| xxh64(s.as_bytes(), 0))
        })
        .unwrap_or_else(|| prompt.key(0, 2));
    // (score, index, reported queue, weight), best first.
    let mut order: Vec<(f64, u32, Option<u64>, u64)> = c
        .allowed_positions()
        .map(|k| {
            let node = c.node(k);
            // A uniform draw in (0, 1) from the hash; score w / -ln(u).
            let h = rendezvous(key, node.id_hash);
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let w = u64::from(node.weight);
            let reported = node.live.reported_queue.fresh(c.now_enc, max_report_age_ns);
            (as_f64(w) / -u.ln(), c.index(k), reported, w)
        })
        .collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = order.len();
    let mut index = order.first()?.1;
    if order.iter().all(|o| o.2.is_some()) {
        let queued: u64 = order.iter().filter_map(|o| o.2).sum();
        let weight: u64 = order.iter().map(|o| o.3).sum();
        let per_weight = as_f64(queued) / as_f64(weight.max(1));
        if let Some(o) = order.iter().find(|o| {
            as_f64(o.2.unwrap_or(0))
                <= (1.0 + CONSISTENT_LOAD_SLACK) * per_weight * as_f64(o.3) + 1.0
        }) {
            index = o.1;
        }
    }
    let node = c.snap.node(index);
    let matched = model.matched_blocks(node.live.cache_slot, prompt.chain);
    let cached = predicted_cached(model, node, prompt, matched);
    let total = prompt.tokens(node);
    Some(Pick {
        index,
        reason: if cached > 0 {
            RoutingReason::CacheHit
        } else {
            RoutingReason::Rendezvous
        },
        confidence: 1.0 / as_f64(n.max(1) as u64),
        cached_blocks: matched,
        uncached_tokens: total.saturating_sub(cached),
        predicted_cached: Some(cached),
        cost: None,
        // No cost model here: the key's rendezvous order decided.
        terms: None,
        runner_up: None,
        evaluated: u32::try_from(n).unwrap_or(u32::MAX),
    })
}

/// Rendezvous (highest random weight) score of a node for a key.
pub(crate) fn rendezvous(key: u64, id_hash: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&key.to_le_bytes());
    buf[8..].copy_from_slice(&id_hash.to_le_bytes());
    xxh64(&buf, 0x7265_6e64)
}

/// The node's prefill rate in tokens/s: measured, else the default scaled by
/// the node's weight.
pub(crate) fn rate(node: &SnapNode, cost: &CostParams) -> f64 {
    let learned = node.live.prefill_rate.load();
    if learned > 0.0 {
        learned
    } else {
        cost.default_prefill_tokens_per_second.max(1e-3) * as_f64(u64::from(node.weight))
    }
}

/// What the cost of one node depends on besides its live counters, in
/// tokens.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Work {
    /// Prompt tokens the node would have to prefill.
    pub(crate) uncached: u64,
    /// Of those, tokens past the cluster-wide shared prefix.
    pub(crate) private: u64,
    /// Tokens of an active conversation this request would evict.
    pub(crate) evicted: u64,
    /// Conversations active on the node (0 when the request continues a
    /// conversation).
    pub(crate) active: usize,
    /// Uncached tokens of a typical follow-up turn (measured; 0 = unknown).
    pub(crate) warm_turn: f64,
}

/// The cost in seconds (module docs) of `work` behind `queued` tokens at a
/// node prefilling `rate` tokens/s.
fn estimate(queued: u64, rate: f64, work: Work, cost: &CostParams) -> f64 {
    let tokens = as_f64(queued)
        + as_f64(work.uncached)
        + cost.work_penalty.max(0.0) * as_f64(work.private)
        + cost.eviction_penalty.max(0.0) * as_f64(work.evicted)
        + cost.balance.max(0.0) * as_f64(work.active as u64) * work.warm_turn.max(0.0);
    tokens / rate
}

#[derive(Debug, Clone, Copy)]
struct Eval {
    index: u32,
    matched: usize,
    cached: u64,
    uncached: u64,
    est: f64,
    id_hash: u64,
    tie_floor: f64,
    /// The cost's inputs, for the decision record.
    work: Work,
    queued: u64,
    rate: f64,
}

impl Eval {
    fn terms(&self) -> CostTerms {
        CostTerms {
            seconds: self.est,
            queued_tokens: self.queued,
            uncached_tokens: self.work.uncached,
            private_tokens: self.work.private,
            evicted_tokens: self.work.evicted,
            active_conversations: u32::try_from(self.work.active).unwrap_or(u32::MAX),
            warm_turn_tokens: self.work.warm_turn,
            rate_tokens_per_second: self.rate,
        }
    }
}

/// Scratch space reused between decisions (held by the router).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    matches: Vec<(u32, usize)>,
    evals: Vec<Eval>,
}

/// Chooses a node (see the [module docs](self)). `prefer` is the snapshot
/// index of the session's node, if any; `warm_turn` the measured uncached
/// tokens of a follow-up turn (0 = not measured yet).
pub(crate) fn choose(
    c: &Candidates<'_>,
    prompt: &Prompt<'_>,
    model: &CacheModel,
    cost: &CostParams,
    prefer: Option<u32>,
    warm_turn: f64,
    scratch: &mut Scratch,
) -> Option<Pick> {
    let shared = model.shared_prefix(prompt.chain, 2);
    let since = prompt.active_since;
    let n = c.len();
    if n == 0 {
        return None;
    }
    // Does some node hold this conversation past the shared prefix?
    model.longest_matches(prompt.chain, &mut scratch.matches);
    let continuing = scratch.matches.iter().any(|&(_, m)| m > shared);
    let eval = |i: u32, node: &SnapNode, matched: usize, cached: u64| {
        let total = prompt.tokens(node);
        let uncached = total.saturating_sub(cached);
        let shared_tokens = prompt.tokens_of_blocks(node, shared);
        let slot = node.live.cache_slot;
        let active = if continuing {
            0
        } else {
            model.active_entries(slot, since)
        };
        let work = Work {
            uncached,
            private: uncached.min(total.saturating_sub(shared_tokens)),
            evicted: model.eviction_tokens(slot, prompt.chain, since),
            active,
            warm_turn,
        };
        let r = rate(node, cost);
        let queued = node.live.outstanding_prefill.load(Ordering::Relaxed);
        Eval {
            index: i,
            matched,
            cached,
            uncached,
            est: estimate(queued, r, work, cost),
            id_hash: node.id_hash,
            tie_floor: cost.tie_tokens.max(0.0) / r,
            work,
            queued,
            rate: r,
        }
    };
    scratch.evals.clear();
    let evals = &mut scratch.evals;
    let matches = &scratch.matches;
    let matched_of = |node: &SnapNode| {
        matches
            .iter()
            .find(|(s, _)| *s == node.live.cache_slot)
            .map_or(0, |&(_, m)| m)
    };
    let push = |evals: &mut Vec<Eval>, i: u32, matched: usize| {
        let node = c.snap.node(i);
        let cached = predicted_cached(model, node, prompt, matched);
        evals.push(eval(i, node, matched, cached));
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
    let best = evals
        .iter()
        .copied()
        .min_by(|a, b| a.est.total_cmp(&b.est))?;
    let eps = best.tie_floor.max(cost.tie_relative * best.est);
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
            let reason = if w.cached > 0 {
                RoutingReason::CacheHit
            } else {
                RoutingReason::Rendezvous
            };
            (w, reason)
        } else if best.cached > 0 {
            (best, RoutingReason::CacheHit)
        } else {
            (best, RoutingReason::LeastLoaded)
        };
    let (w, reason) = winner;
    let runner_up = evals
        .iter()
        .filter(|e| e.index != w.index)
        .min_by(|a, b| a.est.total_cmp(&b.est));
    let total = w.cached + w.uncached;
    let confidence = match reason {
        RoutingReason::CacheHit | RoutingReason::SessionAffinity => {
            as_f64(w.cached) / as_f64(total.max(1))
        }
        RoutingReason::Rendezvous => 1.0 / as_f64(n_tied as u64),
        _ => margin(w.est, runner_up.map_or(f64::INFINITY, |e| e.est)),
    };
    Some(Pick {
        index: w.index,
        reason,
        confidence,
        cached_blocks: w.matched,
        uncached_tokens: w.uncached,
        predicted_cached: Some(w.cached),
        cost: Some(w.est),
        terms: Some(w.terms()),
        runner_up: runner_up.map(|e| RunnerUpPick {
            index: e.index,
            cost: e.est,
            predicted_cached: e.cached,
        }),
        evaluated: u32::try_from(evals.len()).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::super::testutil::{healthy, snapshot};
    use super::*;
    use crate::cache_model::CacheModelParams;
    use crate::live::Epoch;
    use crate::snapshot::ClusterSnapshot;
    use cluster_metrics::{Clock, ManualClock};
    use cluster_types::{NodeId, PrefixFingerprint, SegmentKind};

    /// A chat prompt with one token per 4 bytes.
    fn ctx(system: &str, messages: &[(&'static str, &str)]) -> RoutingContext {
        let mut b = PrefixFingerprint::builder(256);
        b.push_segment(SegmentKind::Model, "m")
            .push_segment(SegmentKind::System, system);
        for (role, text) in messages {
            b.push_segment(SegmentKind::Message { role }, text);
        }
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
        snap: ClusterSnapshot,
    }

    fn setup(n: usize) -> Setup {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let mut model = CacheModel::new(CacheModelParams::default());
        for _ in 0..n {
            model.add_node();
        }
        let snap = snapshot(&clock, &vec![1; n]);
        Setup {
            clock,
            epoch,
            model,
            snap,
        }
    }

    impl Setup {
        /// `c` was sent to node `slot` and answered (prompt tokens as
        /// estimated, `reply` tokens generated).
        fn served(&mut self, slot: u32, c: &RoutingContext, reply: u64) {
            let chain: Arc<[u64]> = c.fingerprint.full_blocks().into();
            let tokens = u64::from(c.prompt_tokens_estimate);
            let ins = self
                .model
                .insert(slot, Arc::clone(&chain), tokens, self.clock.now())
                .unwrap();
            self.model
                .confirm(slot, Some(ins.id), &chain, None, tokens, reply);
        }

        fn pick_with(
            &self,
            c: &RoutingContext,
            cost: &CostParams,
            prefer: Option<u32>,
            warm: f64,
        ) -> Pick {
            let none = vec![];
            let cands = healthy(&self.snap, &none, self.epoch, &self.clock);
            let since = self.clock.now() - Duration::from_secs(120);
            let p = Prompt::new(c, 4, since);
            choose(
                &cands,
                &p,
                &self.model,
                cost,
                prefer,
                warm,
                &mut Scratch::default(),
            )
            .unwrap()
        }

        fn pick(&self, c: &RoutingContext) -> Pick {
            self.pick_with(c, &CostParams::default(), None, 0.0)
        }
    }

    #[test]
    fn next_turn_goes_to_the_conversation_and_predicts_prompt_plus_reply() {
        let mut s = setup(4);
        let sys = "You are a coding agent. ".repeat(400); // ~9.6 KB
        let turn1 = ctx(&sys, &[("user", "fix the bug")]);
        s.served(2, &turn1, 40);
        let reply = "x".repeat(160);
        let turn2 = ctx(
            &sys,
            &[
                ("user", "fix the bug"),
                ("assistant", &reply),
                ("user", "and add tests"),
            ],
        );
        let pick = s.pick(&turn2);
        assert_eq!(pick.index, 2);
        assert_eq!(pick.reason, RoutingReason::CacheHit);
        // The node holds turn 1's prompt and its reply.
        let expected = u64::from(turn1.prompt_tokens_estimate) + 40;
        assert_eq!(pick.predicted_cached, Some(expected));
        assert!(pick.uncached_tokens < 100, "{}", pick.uncached_tokens);
        assert!(pick.confidence > 0.9);
        // A node that re-tokenizes replies differently reuses none of them.
        s.snap.node(2).live.reply_reuse.store(0.0);
        assert_eq!(
            s.pick(&turn2).predicted_cached,
            Some(u64::from(turn1.prompt_tokens_estimate))
        );
    }

    #[test]
    fn a_shared_system_prompt_predicts_its_blocks_plus_half_a_block() {
        let mut s = setup(2);
        let sys = "S".repeat(4096); // 16 blocks with the model segment
        s.served(
            1,
            &ctx(&sys, &[("user", &"one conversation ".repeat(60))]),
            10,
        );
        let other = ctx(&sys, &[("user", &"a different one ".repeat(60))]);
        let pick = s.pick(&other);
        assert_eq!(pick.index, 1);
        let p = Prompt::new(&other, 4, s.clock.now());
        let node = s.snap.node(1);
        let blocks = pick.cached_blocks;
        assert_eq!(blocks, 16);
        assert_eq!(
            pick.predicted_cached,
            Some(p.tokens_of_blocks(node, blocks) + 32)
        );
    }

    #[test]
    fn cold_prompts_rendezvous_per_system_prompt() {
        let s = setup(8);
        let sys_a = "System prompt A. ".repeat(300);
        let sys_b = "Another system prompt B! ".repeat(300);
        let a1 = s.pick(&ctx(&sys_a, &[("user", "q1")]));
        let a2 = s.pick(&ctx(&sys_a, &[("user", "another question entirely")]));
        assert_eq!(a1.reason, RoutingReason::Rendezvous);
        assert_eq!(a1.index, a2.index);
        let b1 = s.pick(&ctx(&sys_b, &[("user", "q1")]));
        assert_ne!(a1.index, b1.index);
        assert!((a1.confidence - 1.0 / 8.0).abs() < 1e-9);
        assert_eq!(a1.predicted_cached, Some(0));
    }

    #[test]
    fn waits_behind_a_short_queue_and_spills_past_a_long_one() {
        let mut s = setup(2);
        let sys = "S".repeat(40_000); // 10k tokens
        let req = ctx(&sys, &[("user", "hello")]);
        s.served(0, &req, 0);
        assert_eq!(s.pick(&req).index, 0);
        let queue = |tokens: u64| {
            s.snap
                .node(0)
                .live
                .outstanding_prefill
                .store(tokens, Ordering::Relaxed);
        };
        // 5k tokens queued on n0: cheaper than 10k cold tokens on n1.
        queue(5_000);
        assert_eq!(s.pick(&req).index, 0);
        // The prompt is private to n0 (one entry holds it): moving it costs
        // (1 + work_penalty) × 10k tokens. 30k queued spills.
        queue(30_000);
        let pick = s.pick(&req);
        assert_eq!(pick.index, 1);
        assert_eq!(pick.reason, RoutingReason::LeastLoaded);
        assert_eq!(pick.cached_blocks, 0);
        assert!(pick.confidence > 0.0);
    }

    #[test]
    fn active_conversations_spread_new_ones() {
        let mut s = setup(2);
        let sys = "Shared system prompt. ".repeat(200);
        // Three conversations live on n0, which also holds the system prompt.
        let task = |k: usize| format!("conversation {k}: ").repeat(60);
        for k in 0..3 {
            s.served(0, &ctx(&sys, &[("user", &task(k))]), 20);
        }
        let new = ctx(&sys, &[("user", &task(7))]);
        // Without a measured follow-up turn size: the cached prompt wins.
        assert_eq!(s.pick(&new).index, 0);
        // Follow-up turns of 2k tokens: three of them queued soon, at the
        // default balance 0.25, outweigh the ~1.1k-token system prompt.
        let pick = s.pick_with(&new, &CostParams::default(), None, 2000.0);
        assert_eq!(pick.index, 1);
        // A conversation that lives on n0 stays there: its queue is empty.
        let own = ctx(
            &sys,
            &[("user", &task(0)), ("assistant", "ok"), ("user", "go on")],
        );
        assert_eq!(
            s.pick_with(&own, &CostParams::default(), None, 2000.0)
                .index,
            0
        );
        // Without the balance term the new one stays with the cache.
        let no_balance = CostParams {
            balance: 0.0,
            ..CostParams::default()
        };
        assert_eq!(s.pick_with(&new, &no_balance, None, 2000.0).index, 0);
    }

    #[test]
    fn measured_rates_and_session_preference() {
        let s = setup(3);
        let req = ctx(&"x".repeat(8000), &[("user", "q")]);
        // n1 is three times faster: it wins a cold prompt outright.
        s.snap.node(1).live.prefill_rate.store(4500.0);
        assert_eq!(s.pick(&req).index, 1);
        // Equal nodes: the session's node wins the tie.
        s.snap.node(1).live.prefill_rate.store(0.0);
        let pick = s.pick_with(&req, &CostParams::default(), Some(2), 0.0);
        assert_eq!(
            (pick.index, pick.reason),
            (2, RoutingReason::SessionAffinity)
        );
        // Measured tokens per byte change the token count.
        let p = Prompt::new(&req, 4, Instant::now());
        let before = p.tokens(s.snap.node(0));
        s.snap.node(0).live.tokens_per_byte.store(0.5);
        assert!(p.tokens(s.snap.node(0)).abs_diff(before * 2) <= 1);
    }

    #[test]
    fn large_clusters_evaluate_holders_plus_samples() {
        let mut s = setup(500);
        let sys = "Z".repeat(20_000);
        let req = ctx(&sys, &[("user", "q")]);
        s.served(321, &req, 0);
        let none = vec![];
        let c = healthy(&s.snap, &none, s.epoch, &s.clock);
        let p = Prompt::new(&req, 4, Instant::now());
        let mut scratch = Scratch::default();
        let go = |c: &Candidates<'_>, p: &Prompt<'_>, scratch: &mut Scratch| {
            choose(c, p, &s.model, &CostParams::default(), None, 0.0, scratch).unwrap()
        };
        let pick = go(&c, &p, &mut scratch);
        // Snapshot indices follow id order ("n0", "n1", "n10", ...), not slots.
        let holder = s.snap.index_of_slot(321).unwrap();
        assert_eq!(pick.index, holder);
        assert!(scratch.evals.len() <= 1 + CostParams::default().sample_candidates);
        // A cold prompt picks deterministically among a few sampled nodes.
        let cold = ctx(&"W".repeat(20_000), &[("user", "q")]);
        let pc = Prompt::new(&cold, 4, Instant::now());
        assert_eq!(
            go(&c, &pc, &mut scratch).index,
            go(&c, &pc, &mut scratch).index
        );
        // Excluding the holder falls back to the sampled nodes.
        let ex = vec![NodeId::from("n321")];
        let c2 = healthy(&s.snap, &ex, s.epoch, &s.clock);
        assert_ne!(go(&c2, &p, &mut scratch).index, holder);
    }

    #[test]
    fn prompt_token_arithmetic() {
        let s = setup(1);
        let node = s.snap.node(0);
        let req = ctx(&"a".repeat(1000), &[("user", "b")]);
        let p = Prompt::new(&req, 4, Instant::now());
        assert_eq!(p.tokens(node), u64::from(req.prompt_tokens_estimate));
        assert_eq!(p.tokens_of_blocks(node, 0), 0);
        assert_eq!(p.tokens_of_blocks(node, usize::MAX), p.tokens(node));
        let empty = RoutingContext::default();
        let pe = Prompt::new(&empty, 4, Instant::now());
        assert_eq!(pe.tokens(node), 1);
        assert_eq!(pe.key(0, 8), 0);
        let named = RoutingContext {
            model: Some("m".into()),
            ..RoutingContext::default()
        };
        assert_ne!(Prompt::new(&named, 4, Instant::now()).key(0, 8), 0);
        assert_ne!(rendezvous(1, 2), rendezvous(2, 1));
        assert_eq!(to_tokens(f64::NAN), 0);
        assert_eq!(to_tokens(-1.0), 0);
    }
}
