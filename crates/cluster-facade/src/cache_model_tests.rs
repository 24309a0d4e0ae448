//! Tests of the cache model (`cache_model.rs`).

use super::*;
use proptest::prelude::*;

/// A chained hash chain: block i depends on all before it.
fn chain(seed: u64, len: usize) -> Arc<[u64]> {
    let mut prev = seed;
    (0..len)
        .map(|i| {
            prev = cluster_types::fingerprint::xxh64(&(i as u64).to_le_bytes(), prev);
            prev
        })
        .collect()
}

/// `base` extended by `extra` blocks derived from `seed`.
fn extend(base: &[u64], seed: u64, extra: usize) -> Arc<[u64]> {
    let mut v = base.to_vec();
    let mut prev = base.last().copied().unwrap_or(0) ^ seed;
    for i in 0..extra {
        prev = cluster_types::fingerprint::xxh64(&(i as u64).to_le_bytes(), prev);
        v.push(prev);
    }
    v.into()
}

fn model() -> (CacheModel, Instant) {
    (CacheModel::new(CacheModelParams::default()), Instant::now())
}

fn matches(m: &CacheModel, c: &[u64]) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    m.longest_matches(c, &mut out);
    out.sort_unstable();
    out
}

#[test]
fn empty_model_matches_nothing() {
    let (m, _) = model();
    assert!(matches(&m, &chain(1, 10)).is_empty());
    assert!(matches(&m, &[]).is_empty());
    assert_eq!(m.matched_blocks(0, &chain(1, 3)), 0);
}

#[test]
fn matches_prefixes_per_node() {
    let (mut m, t) = model();
    let (a, b, c) = (m.add_node(), m.add_node(), m.add_node());
    let sys = chain(7, 20);
    let conv1 = extend(&sys, 1, 10);
    let conv2 = extend(&sys, 2, 5);
    m.insert(a, conv1.clone(), 3000, t);
    m.insert(b, sys.clone(), 2000, t);
    m.insert(c, chain(99, 30), 3000, t);
    // A request continuing conv1.
    let req = extend(&conv1, 3, 4);
    assert_eq!(matches(&m, &req), vec![(a, 30), (b, 20)]);
    assert_eq!(m.matched_blocks(a, &req), 30);
    assert_eq!(m.matched_blocks(b, &req), 20);
    assert_eq!(m.matched_blocks(c, &req), 0);
    // conv2 shares only the system prompt with conv1.
    assert_eq!(matches(&m, &conv2), vec![(a, 20), (b, 20)]);
    // A fully held chain matches to its end.
    assert_eq!(matches(&m, &sys), vec![(a, 20), (b, 20)]);
}

#[test]
fn extending_an_entry_replaces_it() {
    let (mut m, t) = model();
    let a = m.add_node();
    let turn1 = chain(1, 10);
    let turn2 = extend(&turn1, 5, 10);
    let i1 = m.insert(a, turn1.clone(), 100, t).unwrap();
    assert_eq!(i1.prior_len, 0);
    let i2 = m.insert(a, turn2.clone(), 200, t).unwrap();
    assert_eq!(i2.id, i1.id);
    assert_eq!(i2.prior_len, 10);
    assert_eq!(m.node_stats(a), (1, 200));
    assert_eq!(m.indexed_blocks(), 20);
    // Same chain again: touch only.
    let i3 = m.insert(a, turn2.clone(), 200, t).unwrap();
    assert_eq!(i3.prior_len, 20);
    assert_eq!(m.node_stats(a), (1, 200));
    // Rollback of the extension returns to turn1.
    m.rollback(a, i2);
    assert_eq!(m.matched_blocks(a, &turn2), 10);
    assert_eq!(m.node_stats(a).0, 1);
}

#[test]
fn shorter_prefix_entries_are_dropped_on_insert() {
    let (mut m, t) = model();
    let a = m.add_node();
    let base = chain(3, 4);
    let mid = extend(&base, 1, 4);
    let long = extend(&mid, 2, 4);
    m.insert(a, base.clone(), 10, t);
    m.insert(a, chain(4, 4), 10, t);
    // Insert `mid` as a separate entry first by going through a sibling.
    m.insert(a, mid.clone(), 20, t);
    assert_eq!(m.node_stats(a).0, 2);
    m.insert(a, long.clone(), 30, t);
    assert_eq!(m.node_stats(a).0, 2);
    assert_eq!(m.matched_blocks(a, &long), 12);
}

#[test]
fn lru_evicts_by_entries_and_tokens() {
    let mut m = CacheModel::new(CacheModelParams {
        max_entries_per_node: 3,
        max_tokens_per_node: 1000,
        entry_ttl: Duration::from_secs(60),
    });
    let t = Instant::now();
    let a = m.add_node();
    let chains: Vec<_> = (0..5).map(|i| chain(100 + i, 5)).collect();
    for c in &chains[..3] {
        m.insert(a, c.clone(), 100, t);
    }
    // Touch the oldest so the second becomes LRU.
    m.insert(a, chains[0].clone(), 100, t);
    m.insert(a, chains[3].clone(), 100, t);
    assert_eq!(m.node_stats(a), (3, 300));
    assert_eq!(m.matched_blocks(a, &chains[1]), 0);
    assert_eq!(m.matched_blocks(a, &chains[0]), 5);
    // A big entry evicts by tokens but is itself kept.
    m.insert(a, chains[4].clone(), 950, t);
    assert_eq!(m.node_stats(a), (1, 950));
    m.insert(a, chain(7, 2), 5000, t);
    assert_eq!(m.node_stats(a), (1, 5000));
}

#[test]
fn shared_prefixes_count_entries() {
    let (mut m, t) = model();
    let (a, b) = (m.add_node(), m.add_node());
    let sys = chain(9, 10);
    let c1 = extend(&sys, 1, 5);
    let c2 = extend(&sys, 2, 5);
    m.insert(a, c1.clone(), 10, t);
    assert_eq!(m.shared_prefix(&c1, 2), 0);
    assert_eq!(m.shared_prefix(&c1, 1), 15);
    m.insert(a, c2.clone(), 10, t);
    assert_eq!(m.shared_prefix(&c1, 2), 10);
    m.insert(b, c1.clone(), 10, t);
    assert_eq!(m.shared_prefix(&c1, 2), 15);
    assert_eq!(m.shared_prefix(&c1, 3), 10);
    assert_eq!(m.shared_prefix(&[], 1), 0);
}

#[test]
fn eviction_cost_counts_only_live_private_history() {
    let mut m = CacheModel::new(CacheModelParams {
        max_entries_per_node: 2,
        ..CacheModelParams::default()
    });
    let t = Instant::now();
    let a = m.add_node();
    let sys = chain(1, 10);
    let c1 = extend(&sys, 1, 10);
    let c2 = extend(&sys, 2, 10);
    let c3 = extend(&sys, 3, 10);
    m.insert(a, c1.clone(), 2000, t);
    // A free entry: nothing is evicted.
    assert_eq!(m.eviction_tokens(a, &c2, t), 0);
    m.insert(a, c2.clone(), 2000, t + Duration::from_secs(1));
    // Full: c1 (LRU) would go; half of it is shared with c2.
    assert_eq!(m.eviction_tokens(a, &c3, t), 1000);
    // Continuing c2 reuses its entry.
    assert_eq!(m.eviction_tokens(a, &extend(&c2, 4, 2), t), 0);
    // c1 idle since before the active window: free to evict.
    assert_eq!(m.eviction_tokens(a, &c3, t + Duration::from_millis(500)), 0);
    assert_eq!(m.eviction_tokens(a, &[], t), 0);
    assert_eq!(m.eviction_tokens(9, &c3, t), 0);
}

#[test]
fn feedback_learns_the_entry_limit() {
    let (mut m, t) = model();
    let a = m.add_node();
    for i in 0..10 {
        m.insert(a, chain(300 + i, 3), 10, t);
    }
    assert_eq!(m.entry_limit(a), 10);
    assert_eq!(m.feedback(a, false), 7);
    assert_eq!(m.node_stats(a).0, 7);
    assert_eq!(m.feedback(a, false), 5);
    for _ in 0..4 {
        m.feedback(a, true);
    }
    assert_eq!(m.entry_limit(a), 6);
    for _ in 0..40 {
        m.feedback(a, true);
    }
    assert_eq!(m.entry_limit(a), 10);
    for _ in 0..40 {
        m.feedback(a, false);
    }
    assert_eq!(m.entry_limit(a), 1);
    assert_eq!(m.feedback(99, true), 0);
}

#[test]
fn per_node_limits_and_active_entries() {
    let (mut m, t) = model();
    let a = m.add_node();
    for i in 0..6 {
        m.insert(a, chain(200 + i, 3), 10, t + Duration::from_secs(i * 60));
    }
    assert_eq!(m.active_entries(a, t + Duration::from_secs(180)), 3);
    assert_eq!(m.active_entries(a, t), 6);
    assert_eq!(m.trim_node(a, 5), 1);
    assert_eq!(m.trim_node(a, 9), 0);
    assert_eq!(m.trim_node(42, 0), 0);
    m.set_node_limits(a, Some(2), None);
    assert_eq!(m.node_stats(a).0, 2);
    m.set_node_limits(a, None, Some(10));
    assert_eq!(m.node_stats(a).0, 1);
    assert_eq!(m.active_entries(99, t), 0);
}

#[test]
fn confirmation_records_tokens_and_truncates_what_the_node_lost() {
    let (mut m, t) = model();
    let a = m.add_node();
    let sys = chain(5, 10);
    let conv = extend(&sys, 1, 10);
    let first = m.insert(a, conv.clone(), 2000, t).unwrap();
    // The node reported 2100 prompt tokens and a 40-token reply.
    assert_eq!(m.confirm(a, Some(first.id), &conv, None, 2100, 40), 0);
    assert_eq!(m.node_stats(a), (1, 2140));
    // The next turn extends the entry: the node holds prompt and reply.
    let req = extend(&conv, 2, 5);
    assert_eq!(
        m.held(a, &req, 20),
        Some(Held {
            tokens: 2140,
            reply: 40
        })
    );
    assert_eq!(m.held(a, &req, 10), None, "a match inside an entry");
    assert_eq!(m.held(a, &req, 0), None);
    let ins = m.insert(a, req.clone(), 2500, t).unwrap();
    assert_eq!(ins.prior_len, 20);
    // Extended in place: nothing else to cut; the reply is no longer the
    // entry's end until reported again.
    assert_eq!(m.confirm(a, Some(ins.id), &req, Some(10), 2600, 0), 0);
    assert_eq!(m.node_stats(a), (1, 2600));
    // A sibling conversation on the same node, then a confirmation that
    // says only the system prompt survived.
    let sib = extend(&sys, 9, 10);
    let s = m.insert(a, sib.clone(), 2000, t).unwrap();
    let other = extend(&sys, 10, 3);
    let o = m.insert(a, other.clone(), 1300, t).unwrap();
    assert_eq!(m.confirm(a, Some(o.id), &other, None, 1300, 0), 0);
    assert_eq!(m.matched_blocks(a, &sib), 20);
    // Node reports 5 blocks of `sib` cached: entries sharing more than 5
    // blocks are truncated to 5.
    assert_eq!(m.confirm(a, Some(s.id), &sib, Some(5), 2000, 0), 2);
    // `req` and `other` keep the system prompt through `sib`'s entry.
    assert_eq!(m.matched_blocks(a, &req), 10);
    assert_eq!(m.matched_blocks(a, &other), 10);
    assert_eq!(m.matched_blocks(a, &sib), 20);
    // Zero kept blocks removes the others entirely.
    assert_eq!(m.confirm(a, Some(s.id), &sib, Some(0), 2000, 0), 2);
    assert_eq!(m.node_stats(a).0, 1);
}

#[test]
fn expiry_and_removal_clean_the_index() {
    let (mut m, t) = model();
    let a = m.add_node();
    let b = m.add_node();
    m.insert(a, chain(1, 8), 100, t);
    m.insert(b, chain(1, 8), 100, t + Duration::from_secs(20 * 60));
    assert_eq!(m.expire(t + Duration::from_secs(31 * 60)), 1);
    assert_eq!(matches(&m, &chain(1, 8)), vec![(b, 8)]);
    m.remove_node(b);
    assert_eq!(m.indexed_blocks(), 0);
    // Slots are reused.
    assert_eq!(m.add_node(), b);
    assert_eq!(m.node_stats(b), (0, 0));
    assert!(m.insert(99, chain(1, 2), 1, t).is_none());
    assert!(m.insert(a, Arc::from(Vec::new()), 1, t).is_none());
}

#[test]
fn replace_node_and_holders_spill() {
    let (mut m, t) = model();
    let slots: Vec<u32> = (0..5).map(|_| m.add_node()).collect();
    let c = chain(42, 6);
    for &s in &slots {
        m.insert(s, c.clone(), 10, t);
    }
    assert_eq!(matches(&m, &c).len(), 5);
    m.replace_node(slots[2], vec![(chain(43, 2), 5)], t);
    let got = matches(&m, &c);
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|&(s, n)| s != slots[2] && n == 6));
    for &s in &slots {
        m.remove_node(s);
    }
    assert_eq!(m.indexed_blocks(), 0);
}

#[test]
fn common_prefix_of_chains() {
    let a = chain(1, 10);
    let b = extend(&a[..6], 3, 6);
    assert_eq!(common_prefix(&a, &b), 6);
    assert_eq!(common_prefix(&a, &a), 10);
    assert_eq!(common_prefix(&a, &chain(2, 10)), 0);
    assert_eq!(common_prefix(&a, &[]), 0);
}

proptest! {
    /// The galloping search agrees with a naive per-node walk.
    #[test]
    fn longest_matches_equals_naive(
        ops in proptest::collection::vec((0u32..4, 0u64..3, 1usize..12, 0usize..12), 1..40),
        req in (0u64..3, 1usize..12, 0usize..12),
    ) {
        let mut m = CacheModel::new(CacheModelParams { max_entries_per_node: 3, ..CacheModelParams::default() });
        let t = Instant::now();
        for _ in 0..4 { m.add_node(); }
        let bases: Vec<_> = (0..3).map(|i| chain(i, 12)).collect();
        for (slot, base, keep, extra) in ops {
            let c = extend(&bases[base as usize][..keep], keep as u64 * 31 + extra as u64, extra % 4);
            m.insert(slot, c, 10, t);
        }
        let q = extend(&bases[req.0 as usize][..req.1], req.1 as u64 * 31 + req.2 as u64, req.2 % 4);
        let got = matches(&m, &q);
        let mut naive = Vec::new();
        for slot in 0..4u32 {
            let n = m.matched_blocks(slot, &q);
            let walk = (0..q.len()).take_while(|&i| m.holders(q[i]).is_some_and(|h| h.contains(slot))).count();
            prop_assert_eq!(n, walk);
            if n > 0 { naive.push((slot, n)); }
        }
        prop_assert_eq!(got, naive);
    }
}
