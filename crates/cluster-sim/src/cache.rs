//! The prompt cache: an LRU of token-prefix entries, modelled on mlx_lm's
//! `LRUPromptCache`.
//!
//! Each entry is the token sequence whose KV cache the node keeps. A lookup
//! for a prompt picks, like mlx_lm does:
//!
//! 1. an entry equal to the prompt (all tokens but the last cached: mlx_lm
//!    always recomputes the last prompt token; the entry stays);
//! 2. else, when some entry that is *not* a prefix of the prompt shares a
//!    longer common prefix with it than the longest entry that is, that
//!    entry (a copy is trimmed to the common prefix, at most `prompt_len - 1`
//!    tokens; the entry stays);
//! 3. else the longest entry that is a strict prefix of the prompt (its
//!    tokens are cached; the entry is *taken out*, because mlx_lm extends that
//!    KV cache in place and re-inserts the longer sequence after the request);
//! 4. else nothing is cached.
//!
//! The cache holds at most `max_entries` entries (mlx_lm's
//! `--prompt-cache-size`, default 10) and optionally at most `max_tokens`
//! tokens in total (the simulator's stand-in for `--prompt-cache-bytes`);
//! inserting past either limit evicts least-recently-used entries.

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
    /// An entry that is a strict prefix of the prompt (taken out for reuse).
    Prefix,
    /// An entry sharing a common prefix with the prompt (trimmed copy).
    Common,
}

/// The result of [`PromptCache::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLookup {
    /// Prompt tokens served from the cache.
    pub cached_tokens: usize,
    /// How the prompt matched.
    pub kind: CacheMatch,
}

#[derive(Debug, Clone)]
struct Entry {
    tokens: Arc<[Token]>,
    last_used: u64,
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

/// An LRU prompt cache of token-prefix entries (see the module docs).
///
/// Defaults (from [`PromptCache::default`]): 10 entries, no token limit.
#[derive(Debug, Clone)]
pub struct PromptCache {
    max_entries: usize,
    max_tokens: Option<usize>,
    entries: Vec<Entry>,
    total_tokens: usize,
    tick: u64,
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
            entries: Vec::new(),
            total_tokens: 0,
            tick: 0,
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
        self.entries.len()
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

    /// Entry lengths, most recently used first.
    #[must_use]
    pub fn entry_lengths(&self) -> Vec<usize> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|e| (e.last_used, e.tokens.len()))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.0));
        v.into_iter().map(|(_, len)| len).collect()
    }

    /// Removes every entry (counters are reset too).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.total_tokens = 0;
        self.stats = CacheStats::default();
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// What a lookup of `prompt` would return, without touching the cache.
    #[must_use]
    pub fn peek(&self, prompt: &[Token]) -> CacheLookup {
        self.find(prompt).1
    }

    fn find(&self, prompt: &[Token]) -> (Option<usize>, CacheLookup) {
        let mut best_prefix: Option<(usize, usize)> = None;
        let mut best_common: Option<(usize, usize)> = None;
        for (i, entry) in self.entries.iter().enumerate() {
            let common = common_prefix(&entry.tokens, prompt);
            if common == 0 {
                continue;
            }
            if common == prompt.len() && entry.tokens.len() == prompt.len() {
                let hit = CacheLookup {
                    cached_tokens: prompt.len() - 1,
                    kind: CacheMatch::Exact,
                };
                return (Some(i), hit);
            }
            if common == entry.tokens.len() {
                if best_prefix.is_none_or(|(_, len)| common > len) {
                    best_prefix = Some((i, common));
                }
            } else if best_common.is_none_or(|(_, len)| common > len) {
                best_common = Some((i, common));
            }
        }
        let short = best_prefix.map_or(0, |(_, len)| len);
        if let Some((i, len)) = best_common
            && len > short
        {
            let cached = len.min(prompt.len().saturating_sub(1));
            if cached > 0 {
                let hit = CacheLookup {
                    cached_tokens: cached,
                    kind: CacheMatch::Common,
                };
                return (Some(i), hit);
            }
        }
        if let Some((i, len)) = best_prefix {
            let hit = CacheLookup {
                cached_tokens: len,
                kind: CacheMatch::Prefix,
            };
            return (Some(i), hit);
        }
        let miss = CacheLookup {
            cached_tokens: 0,
            kind: CacheMatch::Miss,
        };
        (None, miss)
    }

    /// Looks `prompt` up as mlx_lm does (see the module docs): marks the used
    /// entry as recently used, or takes it out when it is a strict prefix.
    pub fn lookup(&mut self, prompt: &[Token]) -> CacheLookup {
        let (index, hit) = self.find(prompt);
        match (index, hit.kind) {
            (Some(i), CacheMatch::Prefix) => {
                let removed = self.entries.swap_remove(i);
                self.total_tokens -= removed.tokens.len();
                self.stats.hits += 1;
            }
            (Some(i), _) => {
                let tick = self.next_tick();
                self.entries[i].last_used = tick;
                self.stats.hits += 1;
            }
            (None, _) => self.stats.misses += 1,
        }
        hit
    }

    /// Inserts (or refreshes) the entry `tokens`, evicting least-recently-used
    /// entries past the limits. An empty sequence is ignored.
    pub fn insert(&mut self, tokens: Arc<[Token]>) {
        if tokens.is_empty() {
            return;
        }
        let tick = self.next_tick();
        if let Some(entry) = self.entries.iter_mut().find(|e| e.tokens == tokens) {
            entry.last_used = tick;
            return;
        }
        self.total_tokens += tokens.len();
        self.entries.push(Entry {
            tokens,
            last_used: tick,
        });
        while self.entries.len() > self.max_entries
            || self
                .max_tokens
                .is_some_and(|max| self.total_tokens > max && self.entries.len() > 1)
        {
            self.evict_lru();
        }
        // A single entry larger than the token limit is not kept at all.
        if self.max_tokens.is_some_and(|max| self.total_tokens > max) {
            self.evict_lru();
        }
    }

    fn evict_lru(&mut self) {
        if let Some((i, _)) = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)
        {
            let removed = self.entries.swap_remove(i);
            self.total_tokens -= removed.tokens.len();
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
    fn exact_prefix_and_common_matches() {
        let mut cache = PromptCache::default();
        cache.insert(seq(0..100));
        let exact = cache.lookup(&seq(0..100));
        assert_eq!((exact.kind, exact.cached_tokens), (CacheMatch::Exact, 99));
        assert_eq!(cache.len(), 1);

        let mut longer: Vec<Token> = (0..100).collect();
        longer.extend(500..550);
        let prefix = cache.lookup(&longer);
        assert_eq!(
            (prefix.kind, prefix.cached_tokens),
            (CacheMatch::Prefix, 100)
        );
        // The prefix entry was taken out for in-place extension.
        assert!(cache.is_empty());

        cache.insert(longer.clone().into());
        let mut diverging: Vec<Token> = (0..120).collect();
        diverging.push(9);
        let common = cache.lookup(&diverging);
        assert_eq!(
            (common.kind, common.cached_tokens),
            (CacheMatch::Common, 100)
        );
        assert_eq!(cache.len(), 1);

        let miss = cache.lookup(&seq(1000..1010));
        assert_eq!((miss.kind, miss.cached_tokens), (CacheMatch::Miss, 0));
        assert_eq!(cache.stats().misses, 1);
        assert_eq!(cache.stats().hits, 3);
    }

    #[test]
    fn longer_common_match_wins_over_shorter_prefix() {
        let mut cache = PromptCache::default();
        cache.insert(seq(0..10));
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
    }

    #[test]
    fn common_match_keeps_one_token_to_process() {
        let mut cache = PromptCache::default();
        cache.insert(seq(0..100));
        let hit = cache.peek(&seq(0..50));
        assert_eq!((hit.kind, hit.cached_tokens), (CacheMatch::Common, 49));
    }

    #[test]
    fn lru_evicts_past_ten_entries() {
        let mut cache = PromptCache::default();
        for i in 0..10 {
            cache.insert(seq(i * 1000..i * 1000 + 10));
        }
        assert_eq!(cache.len(), 10);
        // Touch the oldest so the second oldest is evicted instead.
        assert_eq!(cache.lookup(&seq(0..10)).kind, CacheMatch::Exact);
        cache.insert(seq(50_000..50_010));
        assert_eq!(cache.len(), 10);
        assert_eq!(cache.stats().evictions, 1);
        assert_eq!(cache.peek(&seq(0..10)).kind, CacheMatch::Exact);
        assert_eq!(cache.peek(&seq(1000..1010)).kind, CacheMatch::Miss);
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
    }

    #[test]
    fn reinsert_refreshes_instead_of_duplicating() {
        let mut cache = PromptCache::default();
        cache.insert(seq(0..10));
        cache.insert(seq(0..10));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.total_tokens(), 10);
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
