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
    tokens: u64,
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
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
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
            // Tokens shrink in proportion to the blocks kept.
            let kept = scale(e.tokens, new_len, e.len);
            node.tokens = node.tokens.saturating_sub(e.tokens - kept);
            e.tokens = kept;
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

    /// Corrects the model with what the node reported: it served
    /// `kept_blocks` blocks of `chain` from its cache. Every other entry of
    /// the node sharing more than `kept_blocks` blocks with `chain` is
    /// truncated to `kept_blocks` (the node evicted the rest). The entry of
    /// the request itself stays whole: the node has just cached the full
    /// prompt. Its token count becomes `tokens`. Returns the number of
    /// entries changed.
    pub fn correct(
        &mut self,
        slot: u32,
        own: Option<EntryId>,
        chain: &[u64],
        kept_blocks: usize,
        tokens: Option<u64>,
    ) -> usize {
        let mut changed = 0;
        let Some(node) = self.node(slot) else {
            return 0;
        };
        let victims: Vec<usize> = node
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| Some(e.id) != own && common_prefix(e.blocks(), chain) > kept_blocks)
            .map(|(k, _)| k)
            .collect();
        // Truncating to 0 removes, so walk from the back.
        for &k in victims.iter().rev() {
            self.truncate_at(slot, k, kept_blocks);
            changed += 1;
        }
        if let (Some(own), Some(tokens)) = (own, tokens)
            && let Some(k) = self.position(slot, own)
        {
            if let Some(Some(node)) = self.nodes.get_mut(slot as usize) {
                let e = &mut node.entries[k];
                node.tokens = node.tokens - e.tokens + tokens;
                e.tokens = tokens;
            }
            self.enforce_limits(slot);
        }
        changed
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
mod tests {
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
    fn correction_truncates_what_the_node_lost() {
        let (mut m, t) = model();
        let a = m.add_node();
        let sys = chain(5, 10);
        let conv = extend(&sys, 1, 10);
        m.insert(a, conv.clone(), 2000, t);
        // New request sharing conv; the node says it only had 10 blocks.
        let req = extend(&conv, 2, 5);
        let ins = m.insert(a, req.clone(), 2500, t).unwrap();
        // The insert extended conv's entry, so there is nothing else to cut.
        assert_eq!(m.correct(a, Some(ins.id), &req, 10, Some(2600)), 0);
        assert_eq!(m.node_stats(a), (1, 2600));
        // A sibling conversation on the same node, then a correction that
        // says only the system prompt survived.
        let sib = extend(&sys, 9, 10);
        let s = m.insert(a, sib.clone(), 2000, t).unwrap();
        let other = extend(&sys, 10, 3);
        let o = m.insert(a, other.clone(), 1300, t).unwrap();
        assert_eq!(m.correct(a, Some(o.id), &other, 10, None), 0);
        assert_eq!(m.matched_blocks(a, &sib), 20);
        // Node reports 5 blocks of `sib` cached: entries sharing more than 5
        // blocks are truncated to 5.
        assert_eq!(m.correct(a, Some(s.id), &sib, 5, None), 2);
        // `req` and `other` keep the system prompt through `sib`'s entry.
        assert_eq!(m.matched_blocks(a, &req), 10);
        assert_eq!(m.matched_blocks(a, &other), 10);
        assert_eq!(m.matched_blocks(a, &sib), 20);
        // Zero kept blocks removes the others entirely.
        assert_eq!(m.correct(a, Some(s.id), &sib, 0, None), 2);
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
}
