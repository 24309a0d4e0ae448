//! The router's model of what each node's prompt (KV) cache holds.
//!
//! `mlx_lm.server` publishes nothing about its prompt cache; it only reports
//! `usage.prompt_tokens_details.cached_tokens` on each answer. So the router
//! keeps its own model, built from the requests it sends and corrected by the
//! `cached_tokens` the nodes report back.
//!
//! # Shape
//! * Per node: an LRU list of **entries**. An entry is the chain of block
//!   hashes ([`PrefixFingerprint::full_blocks`](cluster_types::PrefixFingerprint::full_blocks))
//!   of one prompt sent there, with an estimated token count. The list is
//!   bounded by entries ([`CacheModelParams::max_entries_per_node`], mlx_lm's
//!   `--prompt-cache-size`, default 10) and by tokens
//!   ([`CacheModelParams::max_tokens_per_node`]).
//! * Globally: an **index** `block hash → [(node slot, refcount)]`, the
//!   refcount being how many of that node's entries contain the block.
//!
//! Block hashes are chained (block `i`'s hash depends on every byte before
//! it), so an entry that contains block `i` contains the whole prefix up to
//! `i`, and a node that holds block `i` holds every block before it. The set
//! of nodes holding block `i` therefore only shrinks as `i` grows, and
//! [`CacheModel::longest_matches`] finds every node's longest cached prefix
//! with galloping + binary search over the request's chain: O(k · log B)
//! index lookups for B blocks and k distinct match lengths, never
//! O(nodes × blocks).
//!
//! Inserting a chain that extends an existing entry replaces that entry (and
//! drops any shorter prefix entries), as mlx_lm's `LRUPromptCache` does for
//! trimmable caches (`insert_cache` → `pop_prefixes`). Only the new tail
//! blocks touch the index.
//!
//! Only hashes are stored, never prompt text.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hasher for block hashes, which are already uniform 64-bit xxh64 values:
/// the identity.
#[derive(Default)]
struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type BlockMap<V> = HashMap<u64, V, BuildHasherDefault<BlockHasher>>;

/// Limits of the per-node cache model.
///
/// Defaults ([`CacheModelParams::default`]) follow `CacheConfig`'s:
/// 10 entries, 131 072 tokens, entries expire 30 min after last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheModelParams {
    /// Prompt entries a node keeps (mlx_lm `--prompt-cache-size`). Default 10.
    pub max_entries_per_node: usize,
    /// Tokens a node keeps over all entries (shared prefixes counted once per
    /// entry). Default 131 072.
    pub max_tokens_per_node: u64,
    /// An entry unused for this long is dropped by
    /// [`CacheModel::expire`]. Default 30 min.
    pub entry_ttl: Duration,
}

impl Default for CacheModelParams {
    fn default() -> Self {
        Self {
            max_entries_per_node: 10,
            max_tokens_per_node: 131_072,
            entry_ttl: Duration::from_secs(30 * 60),
        }
    }
}

/// Identifies one entry of one node's model (returned by
/// [`CacheModel::insert`]). Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId(u64);

/// What a node is believed to hold for a chain that extends one of its
/// entries exactly (see [`CacheModel::held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Tokens held: the entry's prompt plus its reply.
    pub tokens: u64,
    /// Of those, the reply's tokens.
    pub reply: u64,
}

/// What [`CacheModel::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The entry now holding the chain.
    pub id: EntryId,
    /// Blocks of the chain the node was already believed to hold in this
    /// entry before the insert (what [`CacheModel::rollback`] returns to).
    pub prior_len: usize,
}

/// Holders of one block: `(node slot, refcount)`, two inline.
#[derive(Debug, Clone, Default)]
struct Holders {
    inline: [(u32, u32); 2],
    n_inline: u8,
    spill: Vec<(u32, u32)>,
}

impl Holders {
    fn len(&self) -> usize {
        usize::from(self.n_inline) + self.spill.len()
    }

    fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.inline[..usize::from(self.n_inline)]
            .iter()
            .chain(&self.spill)
            .map(|&(s, _)| s)
    }

    /// Entries holding the block, over all nodes.
    fn total(&self) -> u32 {
        self.inline[..usize::from(self.n_inline)]
            .iter()
            .chain(&self.spill)
            .map(|&(_, c)| c)
            .sum()
    }

    fn contains(&self, slot: u32) -> bool {
        self.slots().any(|s| s == slot)
    }

    fn inc(&mut self, slot: u32) {
        let n = usize::from(self.n_inline);
        if let Some(e) = self.inline[..n]
            .iter_mut()
            .chain(self.spill.iter_mut())
            .find(|e| e.0 == slot)
        {
            e.1 += 1;
            return;
        }
        if n < self.inline.len() {
            self.inline[n] = (slot, 1);
            self.n_inline += 1;
        } else {
            self.spill.push((slot, 1));
        }
    }

    /// Decrements; returns whether no holder is left.
    fn dec(&mut self, slot: u32) -> bool {
        let n = usize::from(self.n_inline);
        if let Some(i) = self.inline[..n].iter().position(|e| e.0 == slot) {
            self.inline[i].1 -= 1;
            if self.inline[i].1 == 0 {
                // Move the last holder (inline or spilled) into the hole.
                if let Some(last) = self.spill.pop() {
                    self.inline[i] = last;
                } else {
                    self.inline[i] = self.inline[n - 1];
                    self.n_inline -= 1;
                }
            }
        } else if let Some(i) = self.spill.iter().position(|e| e.0 == slot) {
            self.spill[i].1 -= 1;
            if self.spill[i].1 == 0 {
                self.spill.swap_remove(i);
            }
        }
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: EntryId,
    chain: Arc<[u64]>,
    /// Blocks of `chain` held (a correction may truncate an entry).
    len: usize,
    /// Tokens the node holds for this entry: the prompt (estimated at
    /// insert, as reported once the answer came) plus `reply`.
    tokens: u64,
    /// Of `tokens`, the generated reply the node keeps after the prompt
    /// (mlx_lm caches prompt and completion); 0 until reported.
    reply: u64,
    last_used: Instant,
}

impl Entry {
    fn blocks(&self) -> &[u64] {
        &self.chain[..self.len]
    }
}

#[derive(Debug, Clone, Default)]
struct NodeCache {
    /// Least recently used first.
    entries: Vec<Entry>,
    tokens: u64,
    /// Per-node limits overriding the model's defaults.
    max_entries: Option<usize>,
    max_tokens: Option<u64>,
    /// Entries the node really seems to keep, learned from feedback
    /// (`None` until the first feedback: the configured limit).
    learned_entries: Option<f64>,
}

impl NodeCache {
    fn configured_entries(&self, default: usize) -> usize {
        self.max_entries.unwrap_or(default).max(1)
    }

    /// The entry limit in force: the learned one, within the configured one.
    fn effective_entries(&self, default: usize) -> usize {
        let configured = self.configured_entries(default);
        match self.learned_entries {
            Some(l) => (l.floor() as usize).clamp(1, configured),
            None => configured,
        }
    }
}

/// Length of the common prefix of two chained-hash chains: binary search,
/// because equal hashes at `i` imply equal blocks `0..=i`.
fn common_prefix(a: &[u64], b: &[u64]) -> usize {
    let (mut lo, mut hi) = (0usize, a.len().min(b.len()));
    // Invariant: a[..lo] == b[..lo]; a[hi..] and b[hi..] may differ.
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if a[mid - 1] == b[mid - 1] {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// The per-node prompt-cache model with its block index (see the
/// [module docs](self)).
///
/// Nodes are addressed by a *slot* from [`CacheModel::add_node`]. Not
/// thread-safe by itself; the router keeps it behind one short mutex.
#[derive(Debug, Clone, Default)]
pub struct CacheModel {
    params: CacheModelParams,
    nodes: Vec<Option<NodeCache>>,
    free: Vec<u32>,
    index: BlockMap<Holders>,
    next_entry: u64,
}

impl CacheModel {
    /// An empty model with `params`.
    #[must_use]
    pub fn new(params: CacheModelParams) -> Self {
        Self {
            params,
            ..Self::default()
        }
    }

    /// The limits in force.
    #[must_use]
    pub fn params(&self) -> CacheModelParams {
        self.params
    }

    /// Replaces the limits (config reload); entries over a smaller limit go
    /// at the next insert or expiry.
    pub fn set_params(&mut self, params: CacheModelParams) {
        self.params = params;
    }

    /// Registers a node; returns its slot (slots of removed nodes are reused).
    pub fn add_node(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            self.nodes[slot as usize] = Some(NodeCache::default());
            slot
        } else {
            self.nodes.push(Some(NodeCache::default()));
            u32::try_from(self.nodes.len() - 1).unwrap_or(u32::MAX)
        }
    }

    /// Overrides the entry and token limits of one node (`None` keeps the
    /// model's default), e.g. from a node that runs with a larger
    /// `--prompt-cache-size`. Evicts at once if the node is now over them.
    pub fn set_node_limits(
        &mut self,
        slot: u32,
        max_entries: Option<usize>,
        max_tokens: Option<u64>,
    ) {
        if let Some(Some(node)) = self.nodes.get_mut(slot as usize) {
            node.max_entries = max_entries;
            node.max_tokens = max_tokens;
        }
        self.enforce_limits(slot);
    }

    /// Learns how many entries a node really keeps (additive increase,
    /// multiplicative decrease): a prediction the node confirmed raises the
    /// limit by a quarter entry (up to the configured limit); a clear loss —
    /// the node had evicted a prefix the model still held — takes a quarter
    /// off. The model then evicts down to the new limit. Nodes whose cache
    /// is smaller than configured (mlx_lm keeps extra system-prompt
    /// entries; `--prompt-cache-bytes`; other servers) are thus tracked
    /// without configuration. Returns the limit in force.
    pub fn feedback(&mut self, slot: u32, confirmed: bool) -> usize {
        let default = self.params.max_entries_per_node;
        let Some(Some(node)) = self.nodes.get_mut(slot as usize) else {
            return 0;
        };
        let configured = node.configured_entries(default) as f64;
        let current = node.learned_entries.unwrap_or(configured);
        let next = if confirmed {
            (current + 0.25).min(configured)
        } else {
            (current * 0.75).max(1.0)
        };
        node.learned_entries = Some(next);
        let limit = node.effective_entries(default);
        self.enforce_limits(slot);
        limit
    }

    /// The entry limit in force for a node (configured, or learned by
    /// [`feedback`](Self::feedback)).
    #[must_use]
    pub fn entry_limit(&self, slot: u32) -> usize {
        self.node(slot)
            .map_or(0, |n| n.effective_entries(self.params.max_entries_per_node))
    }

    /// Evicts the node's least recently used entries until at most
    /// `max_entries` remain (the node said it holds that many); returns how
    /// many were dropped.
    pub fn trim_node(&mut self, slot: u32, max_entries: usize) -> usize {
        let Some(Some(node)) = self.nodes.get_mut(slot as usize) else {
            return 0;
        };
        let mut dropped = 0;
        while node.entries.len() > max_entries {
            let e = node.entries.remove(0);
            node.tokens = node.tokens.saturating_sub(e.tokens);
            Self::unindex(&mut self.index, slot, e.blocks());
            dropped += 1;
        }
        dropped
    }

    /// Entries of the node used at or after `since`: the conversations
    /// currently living there.
    #[must_use]
    pub fn active_entries(&self, slot: u32, since: Instant) -> usize {
        self.node(slot).map_or(0, |n| {
            n.entries
                .iter()
                .rev()
                .take_while(|e| e.last_used >= since)
                .count()
        })
    }

    /// Prompt tokens of a conversation that inserting `chain` on the node
    /// would push out of its cache while it is still in use: 0 when the
    /// chain extends (or equals) an entry of the node, when the node has a
    /// free entry, or when its least recently used entry was last used
    /// before `active_since`; otherwise that entry's tokens past what it
    /// shares with the node's other entries (the private history its next
    /// turn would have to prefill again). O(entries · log B).
    #[must_use]
    pub fn eviction_tokens(&self, slot: u32, chain: &[u64], active_since: Instant) -> u64 {
        let Some(node) = self.node(slot) else {
            return 0;
        };
        if chain.is_empty() {
            return 0;
        }
        let extends = node
            .entries
            .iter()
            .any(|e| e.len <= chain.len() && chain[e.len - 1] == e.chain[e.len - 1]);
        let max_entries = node.effective_entries(self.params.max_entries_per_node);
        if extends || node.entries.len() < max_entries {
            return 0;
        }
        let Some(victim) = node.entries.first() else {
            return 0;
        };
        if victim.last_used < active_since {
            return 0;
        }
        let shared = node.entries[1..]
            .iter()
            .map(|e| common_prefix(e.blocks(), victim.blocks()))
            .max()
            .unwrap_or(0);
        scale(
            victim.tokens,
            victim.len - shared.min(victim.len),
            victim.len,
        )
    }

    /// Forgets a node and everything it was believed to hold.
    pub fn remove_node(&mut self, slot: u32) {
        self.clear_node(slot);
        if let Some(n) = self.nodes.get_mut(slot as usize)
            && n.take().is_some()
        {
            self.free.push(slot);
        }
    }

    /// Drops everything a node is believed to hold (e.g. it restarted).
    pub fn clear_node(&mut self, slot: u32) {
        let Some(Some(node)) = self.nodes.get_mut(slot as usize) else {
            return;
        };
        let entries = std::mem::take(&mut node.entries);
        node.tokens = 0;
        for e in &entries {
            Self::unindex(&mut self.index, slot, e.blocks());
        }
    }

    fn node(&self, slot: u32) -> Option<&NodeCache> {
        self.nodes.get(slot as usize).and_then(Option::as_ref)
    }

    /// `(entries, tokens)` believed held by the node.
    #[must_use]
    pub fn node_stats(&self, slot: u32) -> (usize, u64) {
        self.node(slot)
            .map_or((0, 0), |n| (n.entries.len(), n.tokens))
    }

    /// Distinct blocks in the index (over all nodes).
    #[must_use]
    pub fn indexed_blocks(&self) -> usize {
        self.index.len()
    }

    fn holders(&self, block: u64) -> Option<&Holders> {
        self.index.get(&block)
    }

    fn count(&self, block: u64) -> usize {
        self.holders(block).map_or(0, Holders::len)
    }

    fn unindex(index: &mut BlockMap<Holders>, slot: u32, blocks: &[u64]) {
        for b in blocks {
            if let Some(h) = index.get_mut(b)
                && h.dec(slot)
            {
                index.remove(b);
            }
        }
    }

    fn reindex(index: &mut BlockMap<Holders>, slot: u32, blocks: &[u64]) {
        for &b in blocks {
            index.entry(b).or_default().inc(slot);
        }
    }

    /// Every node's longest believed-cached prefix of `chain`, as
    /// `(slot, matched_blocks)` with `matched_blocks > 0`, into `out`
    /// (cleared first). O(k · log B) index lookups (see the module docs).
    pub fn longest_matches(&self, chain: &[u64], out: &mut Vec<(u32, usize)>) {
        out.clear();
        let n = chain.len();
        if n == 0 {
            return;
        }
        let Some(mut cur) = self.holders(chain[0]) else {
            return;
        };
        let mut i = 0usize;
        loop {
            let cnt = cur.len();
            // Largest `lo` with the same holder count as `i` (same set,
            // because the sets only shrink): gallop, then bisect.
            let mut lo = i;
            let mut step = 1usize;
            let mut hi = loop {
                let probe = lo + step;
                if probe >= n {
                    break n;
                }
                if self.count(chain[probe]) == cnt {
                    lo = probe;
                    step *= 2;
                } else {
                    break probe;
                }
            };
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.count(chain[mid]) == cnt {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            if hi >= n {
                out.extend(cur.slots().map(|s| (s, n)));
                return;
            }
            let next = self.holders(chain[hi]);
            for s in cur.slots() {
                if !next.is_some_and(|h| h.contains(s)) {
                    out.push((s, hi));
                }
            }
            match next {
                Some(h) => {
                    cur = h;
                    i = hi;
                }
                None => return,
            }
        }
    }

    /// The longest prefix of `chain` whose every block is held by at least
    /// `min_entries` entries over the whole cluster (a *shared* prefix, such
    /// as a system prompt many conversations start with). O(log B).
    #[must_use]
    pub fn shared_prefix(&self, chain: &[u64], min_entries: u32) -> usize {
        let shared = |i: usize| {
            self.holders(chain[i])
                .is_some_and(|h| h.total() >= min_entries)
        };
        let (mut lo, mut hi) = (0usize, chain.len());
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if shared(mid - 1) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// The longest prefix of `chain` believed held by one node, in blocks.
    /// O(log B) index lookups.
    #[must_use]
    pub fn matched_blocks(&self, slot: u32, chain: &[u64]) -> usize {
        let holds = |i: usize| self.holders(chain[i]).is_some_and(|h| h.contains(slot));
        let (mut lo, mut hi) = (0usize, chain.len());
        // Invariant: the node holds chain[..lo]; it does not hold chain[hi..].
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if holds(mid - 1) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Records that `chain` (with about `tokens` tokens) was sent to the
    /// node at `now` — the optimistic insert done when a request is routed.
    ///
    /// An entry that is a prefix of `chain` is extended (shorter prefix
    /// entries are dropped, as mlx_lm does); an identical entry is just
    /// moved to the most-recently-used end. Then the least recently used
    /// entries are evicted until the node fits its limits (the new entry is
    /// never evicted). Returns `None` for an empty chain or an unknown slot.
    pub fn insert(
        &mut self,
        slot: u32,
        chain: Arc<[u64]>,
        tokens: u64,
        now: Instant,
    ) -> Option<Inserted> {
        if chain.is_empty() {
            return None;
        }
        let next_id = EntryId(self.next_entry);
        let Some(Some(node)) = self.nodes.get_mut(slot as usize) else {
            return None;
        };
        // Entries that are prefixes of the chain (chained hashes: compare the
        // last block only).
        let mut best: Option<usize> = None;
        let mut drop_idx: Vec<usize> = Vec::new();
        for (k, e) in node.entries.iter().enumerate() {
            if e.len <= chain.len() && e.len > 0 && chain[e.len - 1] == e.chain[e.len - 1] {
                match best {
                    Some(b) if node.entries[b].len >= e.len => drop_idx.push(k),
                    Some(b) => {
                        drop_idx.push(b);
                        best = Some(k);
                    }
                    None => best = Some(k),
                }
            }
        }
        let (id, prior_len) = if let Some(b) = best {
            let e = &mut node.entries[b];
            let prior_len = e.len;
            Self::reindex(&mut self.index, slot, &chain[prior_len..]);
            node.tokens = node.tokens - e.tokens + tokens.max(e.tokens);
            e.tokens = tokens.max(e.tokens);
            e.reply = 0;
            e.chain = chain;
            e.len = e.chain.len();
            e.last_used = now;
            let moved = node.entries.remove(b);
            let id = moved.id;
            for d in &mut drop_idx {
                if *d > b {
                    *d -= 1;
                }
            }
            node.entries.push(moved);
            (id, prior_len)
        } else {
            self.next_entry += 1;
            Self::reindex(&mut self.index, slot, &chain);
            node.tokens += tokens;
            let len = chain.len();
            node.entries.push(Entry {
                id: next_id,
                chain,
                len,
                tokens,
                reply: 0,
                last_used: now,
            });
            (next_id, 0)
        };
        drop_idx.sort_unstable();
        for &d in drop_idx.iter().rev() {
            let e = node.entries.remove(d);
            node.tokens = node.tokens.saturating_sub(e.tokens);
            Self::unindex(&mut self.index, slot, e.blocks());
        }
        self.enforce_limits(slot);
        Some(Inserted { id, prior_len })
    }

    fn enforce_limits(&mut self, slot: u32) {
        let params = self.params;
        let Some(Some(node)) = self.nodes.get_mut(slot as usize) else {
            return;
        };
        let max_entries = node.effective_entries(params.max_entries_per_node);
        let max_tokens = node.max_tokens.unwrap_or(params.max_tokens_per_node);
        while node.entries.len() > 1
            && (node.entries.len() > max_entries || node.tokens > max_tokens)
        {
            let e = node.entries.remove(0);
            node.tokens = node.tokens.saturating_sub(e.tokens);
            Self::unindex(&mut self.index, slot, e.blocks());
        }
    }

    fn position(&self, slot: u32, id: EntryId) -> Option<usize> {
        self.node(slot)?.entries.iter().position(|e| e.id == id)
    }

    fn truncate_at(&mut self, slot: u32, k: usize, new_len: usize) {
        let Some(Some(node)) = self.nodes.get_mut(slot as usize) else {
            return;
        };
        let Some(e) = node.entries.get_mut(k) else {
            return;
        };
        if new_len >= e.len {
            return;
        }
        Self::unindex(&mut self.index, slot, &e.chain[new_len..e.len]);
        if new_len == 0 {
            let e = node.entries.remove(k);
            node.tokens = node.tokens.saturating_sub(e.tokens);
        } else {
            // Tokens shrink in proportion to the blocks kept; a truncated
            // entry no longer ends in its reply.
            let kept = scale(e.tokens - e.reply, new_len, e.len);
            node.tokens = node.tokens.saturating_sub(e.tokens - kept);
            e.tokens = kept;
            e.reply = 0;
            e.len = new_len;
        }
    }

    /// Undoes an optimistic insert whose request did not reach the node's
    /// cache (failed, overloaded, cancelled before the first byte): the entry
    /// goes back to the `prior_len` blocks it held before (removed if 0).
    pub fn rollback(&mut self, slot: u32, inserted: Inserted) {
        if let Some(k) = self.position(slot, inserted.id) {
            self.truncate_at(slot, k, inserted.prior_len);
        }
    }

    /// Corrects the model with what the node reported for the request whose
    /// entry is `own` and whose chain is `chain`.
    ///
    /// `kept_blocks`: when the node served clearly fewer blocks from its
    /// cache than the model predicted, how many it did serve; every other
    /// entry of the node sharing more than that with `chain` is then
    /// truncated to it (the node had evicted the rest). `None` when the
    /// prediction held. The request's own entry stays whole (the node has
    /// just cached the full prompt) and now holds `prompt_tokens +
    /// reply_tokens` tokens, as reported. Returns the number of entries
    /// truncated.
    pub fn confirm(
        &mut self,
        slot: u32,
        own: Option<EntryId>,
        chain: &[u64],
        kept_blocks: Option<usize>,
        prompt_tokens: u64,
        reply_tokens: u64,
    ) -> usize {
        let mut changed = 0;
        let Some(node) = self.node(slot) else {
            return 0;
        };
        if let Some(kept) = kept_blocks {
            let victims: Vec<usize> = node
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| Some(e.id) != own && common_prefix(e.blocks(), chain) > kept)
                .map(|(k, _)| k)
                .collect();
            // Truncating to 0 removes, so walk from the back.
            for &k in victims.iter().rev() {
                self.truncate_at(slot, k, kept);
                changed += 1;
            }
        }
        if let Some(own) = own
            && let Some(k) = self.position(slot, own)
        {
            if let Some(Some(node)) = self.nodes.get_mut(slot as usize) {
                let e = &mut node.entries[k];
                let tokens = prompt_tokens.saturating_add(reply_tokens);
                node.tokens = node.tokens - e.tokens + tokens;
                e.tokens = tokens;
                e.reply = reply_tokens;
            }
            self.enforce_limits(slot);
        }
        changed
    }

    /// What `slot` holds for `chain` when its longest cached prefix,
    /// `matched` blocks, is one whole entry of the node (the request
    /// extends a prompt sent there before, e.g. the next turn of a
    /// conversation): that entry's tokens. `None` when the match ends inside
    /// an entry (a shared prefix such as a system prompt) or there is none.
    /// O(entries).
    #[must_use]
    pub fn held(&self, slot: u32, chain: &[u64], matched: usize) -> Option<Held> {
        if matched == 0 || matched > chain.len() {
            return None;
        }
        let node = self.node(slot)?;
        node.entries
            .iter()
            .rev()
            .find(|e| e.len == matched && e.chain[matched - 1] == chain[matched - 1])
            .map(|e| Held {
                tokens: e.tokens,
                reply: e.reply,
            })
    }

    /// Drops every entry not used within `entry_ttl` before `now`; returns how
    /// many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.params.entry_ttl;
        let mut dropped = 0;
        for slot in 0..self.nodes.len() {
            let slot32 = u32::try_from(slot).unwrap_or(u32::MAX);
            let Some(node) = self.nodes[slot].as_mut() else {
                continue;
            };
            let mut k = 0;
            while k < node.entries.len() {
                if now.saturating_duration_since(node.entries[k].last_used) > ttl {
                    let e = node.entries.remove(k);
                    node.tokens = node.tokens.saturating_sub(e.tokens);
                    Self::unindex(&mut self.index, slot32, e.blocks());
                    dropped += 1;
                } else {
                    k += 1;
                }
            }
        }
        dropped
    }

    /// Replaces what a node is believed to hold with chains reported by the
    /// node itself (cache sync from nodes that publish their cache).
    pub fn replace_node(&mut self, slot: u32, chains: Vec<(Arc<[u64]>, u64)>, now: Instant) {
        self.clear_node(slot);
        for (chain, tokens) in chains {
            self.insert(slot, chain, tokens, now);
        }
    }
}

/// `tokens × kept / total`, rounded down.
fn scale(tokens: u64, kept: usize, total: usize) -> u64 {
    if total == 0 {
        return 0;
    }
    let t = u128::from(tokens) * kept as u128 / total as u128;
    u64::try_from(t).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "cache_model_tests.rs"]
mod tests;
