//! The prompt cache: token-prefix entries, as mlx_lm 0.32's
//! `LRUPromptCache` keeps them (`mlx_lm/models/cache.py`).
//!
//! Each entry is a token sequence whose KV cache the node keeps, of one of
//! three kinds: `assistant` (a finished request's prompt plus its reply),
//! `user` and `system` (a prompt segment saved when its prefill ended). A
//! lookup for a prompt picks, like mlx_lm's `fetch_nearest_cache`:
//!
//! 1. an entry equal to the prompt (all tokens but the last cached);
//! 2. else, when some entry shares a longer common prefix with the prompt
//!    than the longest entry that is a prefix of it, that common prefix (a
//!    copy trimmed to it, at most `prompt_len - 1` tokens);
//! 3. else the longest entry (of at least 2 tokens) that is a prefix of the
//!    prompt;
//! 4. else nothing is cached.
//!
//! A lookup copies: it changes neither the entries nor their order.
//! Inserting a sequence moves an identical entry to the back of its kind's
//! queue (or adds it there) and drops every entry that is a prefix of it
//! (`pop_prefixes`: a longer KV cache can be trimmed to them). Past
//! `max_entries` (mlx_lm's `--prompt-cache-size`, default 10) one entry is
//! evicted: the oldest `assistant` entry while there are at least as many of
//! them as `user` entries, else the oldest `user` entry while there are at
//! least as many as `system` ones, else the oldest `system` entry — so saved
//! system prompts outlive conversations. An optional `max_tokens` (the
//! simulator's stand-in for `--prompt-cache-bytes`) evicts the same way
//! until the cache fits.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::tokenizer::Token;

/// How a lookup matched the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMatch {
    /// Nothing cached.
    Miss,
    /// An entry equal to the prompt.
    Exact,
    /// An entry that is a prefix of the prompt.
    Prefix,
    /// An entry sharing a common prefix with the prompt (trimmed copy).
    Common,
}

/// The kind of a cache entry, which decides its eviction order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A finished request: prompt and reply (evicted first).
    Assistant,
    /// A user segment saved at the end of its prefill.
    User,
    /// A system segment saved at the end of its prefill (evicted last).
    System,
}

impl EntryKind {
    /// Eviction order, as mlx_lm's `CacheOrder`.
    const ORDER: [EntryKind; 3] = [EntryKind::Assistant, EntryKind::User, EntryKind::System];

    fn index(self) -> usize {
        match self {
            Self::Assistant => 0,
            Self::User => 1,
            Self::System => 2,
        }
    }
}

/// The result of [`PromptCache::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLookup {
    /// Prompt tokens served from the cache.
    pub cached_tokens: usize,
    /// How the prompt matched.
    pub kind: CacheMatch,
}

/// Counters of one cache's activity since it was created or cleared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Lookups that found some cached prefix.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Entries evicted to respect the limits.
    pub evictions: u64,
}

/// A prompt cache of token-prefix entries (see the module docs).
///
/// Defaults (from [`PromptCache::default`]): 10 entries, no token limit.
#[derive(Debug, Clone)]
pub struct PromptCache {
    max_entries: usize,
    max_tokens: Option<usize>,
    /// One queue per [`EntryKind`], oldest first.
    queues: [VecDeque<Arc<[Token]>>; 3],
    total_tokens: usize,
    stats: CacheStats,
}

impl Default for PromptCache {
    fn default() -> Self {
        Self::new(10, None)
    }
}

/// Length of the common prefix of two token slices.
#[must_use]
pub fn common_prefix(a: &[Token], b: &[Token]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let mut i = 0;
    // Compare whole blocks with slice equality (memcmp), then finish by hand.
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

impl PromptCache {
    /// A cache holding at most `max_entries` entries (at least 1) and, when
    /// given, at most `max_tokens` tokens in total.
    #[must_use]
    pub fn new(max_entries: usize, max_tokens: Option<usize>) -> Self {
        Self {
            max_entries: max_entries.max(1),
            max_tokens,
            queues: Default::default(),
            total_tokens: 0,
            stats: CacheStats::default(),
        }
    }

    /// Maximum number of entries.
    #[must_use]
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Token limit, if any.
    #[must_use]
    pub fn max_tokens(&self) -> Option<usize> {
        self.max_tokens
    }

    /// Number of entries held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total tokens held over all entries (shared prefixes counted per entry).
    #[must_use]
    pub fn total_tokens(&self) -> usize {
        self.total_tokens
    }

    /// Activity counters.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Entry lengths, most recently inserted first within each kind, kinds
    /// in eviction order (assistant, user, system).
    #[must_use]
    pub fn entry_lengths(&self) -> Vec<usize> {
        self.queues
            .iter()
            .flat_map(|q| q.iter().rev().map(|t| t.len()))
            .collect()
    }

    /// Entries per kind, in [`EntryKind`] eviction order.
    #[must_use]
    pub fn kinds(&self) -> [usize; 3] {
        [
            self.queues[0].len(),
            self.queues[1].len(),
            self.queues[2].len(),
        ]
    }

    /// Removes every entry (counters are reset too).
    pub fn clear(&mut self) {
        self.queues = Default::default();
        self.total_tokens = 0;
        self.stats = CacheStats::default();
    }

    fn entries(&self) -> impl Iterator<Item = &Arc<[Token]>> {
        self.queues.iter().flatten()
    }

    /// What a lookup of `prompt` would return (lookups change nothing but
    /// the counters; this one not even those).
    #[must_use]
    pub fn peek(&self, prompt: &[Token]) -> CacheLookup {
        let mut best_prefix = 0usize;
        let mut best_common = 0usize;
        for entry in self.entries() {
            let common = common_prefix(entry, prompt);
            if common == 0 {
                continue;
            }
            if common == prompt.len() && entry.len() == prompt.len() {
                return CacheLookup {
                    cached_tokens: prompt.len() - 1,
                    kind: CacheMatch::Exact,
                };
            }
            if common == entry.len() {
                // mlx_lm's trie ignores a one-token entry as a prefix.
                if entry.len() >= 2 {
                    best_prefix = best_prefix.max(common);
                }
            } else {
                best_common = best_common.max(common);
            }
        }
        if best_common > best_prefix {
            let cached = best_common.min(prompt.len().saturating_sub(1));
            if cached > 0 {
                return CacheLookup {
                    cached_tokens: cached,
                    kind: CacheMatch::Common,
                };
            }
        }
        if best_prefix > 0 {
            return CacheLookup {
                cached_tokens: best_prefix,
                kind: CacheMatch::Prefix,
            };
        }
        CacheLookup {
            cached_tokens: 0,
            kind: CacheMatch::Miss,
        }
    }

    /// Looks `prompt` up as mlx_lm does (see the module docs) and counts the
    /// hit or miss.
    pub fn lookup(&mut self, prompt: &[Token]) -> CacheLookup {
        let hit = self.peek(prompt);
        if hit.kind == CacheMatch::Miss {
            self.stats.misses += 1;
        } else {
            self.stats.hits += 1;
        }
        hit
    }

    /// Inserts `tokens` as an `assistant` entry (see [`PromptCache::insert_kind`]).
    pub fn insert(&mut self, tokens: Arc<[Token]>) {
        self.insert_kind(tokens, EntryKind::Assistant);
    }

    /// Inserts (or moves to the back of its kind's queue) the entry
    /// `tokens`, drops the entries that are prefixes of it, and evicts past
    /// the limits (see the module docs). An empty sequence is ignored.
    pub fn insert_kind(&mut self, tokens: Arc<[Token]>, kind: EntryKind) {
        if tokens.is_empty() {
            return;
        }
        self.remove_where(|e| **e == *tokens);
        self.total_tokens += tokens.len();
        // pop_prefixes: every strict prefix of the new sequence goes.
        self.remove_where(|e| e.len() < tokens.len() && tokens.starts_with(e));
        self.queues[kind.index()].push_back(tokens);
        if self.len() > self.max_entries {
            self.evict_one();
        }
        while self.max_tokens.is_some_and(|max| self.total_tokens > max) && !self.is_empty() {
            self.evict_one();
        }
    }

    fn remove_where(&mut self, f: impl Fn(&Arc<[Token]>) -> bool) {
        for q in &mut self.queues {
            let before: usize = q.iter().map(|e| e.len()).sum();
            q.retain(|e| !f(e));
            let after: usize = q.iter().map(|e| e.len()).sum();
            self.total_tokens -= before - after;
        }
    }

    /// mlx_lm's `CacheOrder.pop`.
    fn evict_one(&mut self) {
        let mut victim = None;
        for i in 0..EntryKind::ORDER.len() - 1 {
            let (a, b) = (&self.queues[i], &self.queues[i + 1]);
            if !a.is_empty() && a.len() >= b.len() {
                victim = Some(i);
                break;
            }
        }
        let i = victim.unwrap_or(EntryKind::ORDER.len() - 1);
        let i = if self.queues[i].is_empty() {
            // Only possible when the last queue is empty: take any.
            match self.queues.iter().position(|q| !q.is_empty()) {
                Some(k) => k,
                None => return,
            }
        } else {
            i
        };
        if let Some(removed) = self.queues[i].pop_front() {
            self.total_tokens -= removed.len();
            self.stats.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(range: std::ops::Range<u32>) -> Arc<[Token]> {
        range.collect::<Vec<_>>().into()
    }

    #[test]
    fn exact_prefix_and_common_matches_copy_without_changing_anything() {
        let mut cache = PromptCache::default();
        cache.insert(seq(0..100));
        let exact = cache.lookup(&seq(0..100));
        assert_eq!((exact.kind, exact.cached_tokens), (CacheMatch::Exact, 99));

        let mut longer: Vec<Token> = (0..100).collect();
        longer.extend(500..550);
        let prefix = cache.lookup(&longer);
        assert_eq!(
            (prefix.kind, prefix.cached_tokens),
            (CacheMatch::Prefix, 100)
        );
        // Looked up, not taken out: it goes when the longer one is inserted.
        assert_eq!(cache.len(), 1);
        cache.insert(longer.clone().into());
        assert_eq!(cache.len(), 1, "the prefix entry was popped");
        assert_eq!(cache.total_tokens(), 150);

        let mut diverging: Vec<Token> = (0..120).collect();
        diverging.push(9);
        let common = cache.lookup(&diverging);
        assert_eq!(
            (common.kind, common.cached_tokens),
            (CacheMatch::Common, 100)
        );
        let miss = cache.lookup(&seq(1000..1010));
        assert_eq!((miss.kind, miss.cached_tokens), (CacheMatch::Miss, 0));
        assert_eq!(cache.stats().misses, 1);
        assert_eq!(cache.stats().hits, 3);
        // A one-token entry is no prefix (mlx_lm's trie skips index 0).
        let mut one = PromptCache::default();
        one.insert(seq(0..1));
        assert_eq!(one.peek(&seq(0..5)).kind, CacheMatch::Miss);
    }

    #[test]
    fn longer_common_match_wins_over_shorter_prefix() {
        let mut cache = PromptCache::default();
        cache.insert_kind(seq(0..10), EntryKind::System);
        let mut other: Vec<Token> = (0..50).collect();
        other.push(7);
        cache.insert(other.into());
        let prompt: Vec<Token> = (0..60).collect();
        let hit = cache.peek(&prompt);
        assert_eq!((hit.kind, hit.cached_tokens), (CacheMatch::Common, 50));
        // A prefix at least as long as any common part wins.
        cache.insert(seq(0..55));
        let hit = cache.peek(&prompt);
        assert_eq!((hit.kind, hit.cached_tokens), (CacheMatch::Prefix, 55));
        // Inserting 0..55 popped its prefix 0..10 (the system entry).
        assert_eq!(cache.kinds(), [2, 0, 0]);
    }

    #[test]
    fn common_match_keeps_one_token_to_process() {
        let mut cache = PromptCache::default();
        cache.insert(seq(0..100));
        let hit = cache.peek(&seq(0..50));
        assert_eq!((hit.kind, hit.cached_tokens), (CacheMatch::Common, 49));
    }

    #[test]
    fn eviction_follows_insertion_order_and_spares_system_entries() {
        let mut cache = PromptCache::default();
        cache.insert_kind(seq(90_000..90_010), EntryKind::System);
        for i in 0..9 {
            cache.insert(seq(i * 1000..i * 1000 + 10));
        }
        assert_eq!(cache.len(), 10);
        // A lookup does not refresh an entry.
        assert_eq!(cache.lookup(&seq(0..10)).kind, CacheMatch::Exact);
        cache.insert(seq(50_000..50_010));
        assert_eq!(cache.len(), 10);
        assert_eq!(cache.stats().evictions, 1);
        assert_eq!(cache.peek(&seq(0..10)).kind, CacheMatch::Miss);
        assert_eq!(cache.peek(&seq(1000..1010)).kind, CacheMatch::Exact);
        // The system entry outlives every conversation.
        for i in 100..120 {
            cache.insert(seq(i * 1000..i * 1000 + 10));
        }
        assert_eq!(cache.kinds(), [9, 0, 1]);
        assert_eq!(cache.peek(&seq(90_000..90_010)).kind, CacheMatch::Exact);
        // Re-inserting moves an entry to the back instead of duplicating.
        cache.insert(seq(110_000..110_010));
        assert_eq!(cache.len(), 10);
        cache.insert(seq(200_000..200_010));
        assert_eq!(cache.peek(&seq(110_000..110_010)).kind, CacheMatch::Exact);
    }

    #[test]
    fn token_limit_evicts() {
        let mut cache = PromptCache::new(10, Some(25));
        cache.insert(seq(0..10));
        cache.insert(seq(100..110));
        cache.insert(seq(200..210));
        assert_eq!(cache.len(), 2);
        assert!(cache.total_tokens() <= 25);
        assert_eq!(cache.peek(&seq(0..10)).kind, CacheMatch::Miss);
        cache.insert(seq(1000..1100));
        assert!(cache.is_empty());
        assert_eq!(cache.total_tokens(), 0);
    }

    #[test]
    fn reinsert_refreshes_instead_of_duplicating() {
        let mut cache = PromptCache::default();
        cache.insert(seq(0..10));
        cache.insert(seq(0..10));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.total_tokens(), 10);
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.entry_lengths(), Vec::<usize>::new());
    }

    #[test]
    fn common_prefix_handles_blocks() {
        let a: Vec<Token> = (0..1000).collect();
        let mut b = a.clone();
        b[777] = 0;
        assert_eq!(common_prefix(&a, &b), 777);
        assert_eq!(common_prefix(&a, &a[..500]), 500);
    }
}
