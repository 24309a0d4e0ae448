//! The node cost model: a pure, time-free description of one mlx_lm.server
//! node that answers "if this request arrives at simulated time `now`, when
//! does it start, when is its first token, when does it finish, and how many
//! prompt tokens come from the prompt cache?".
//!
//! # The model
//!
//! * **Concurrency.** At most `max_concurrency` requests run at once (mlx_lm
//!   0.32's `--decode-concurrency`, 32); others wait in a FIFO queue
//!   (optionally bounded by `max_queue`, past which the node rejects with
//!   [`QueueFull`]).
//! * **Prefill is serial.** Running requests take turns on one prefill unit,
//!   first come first served: mlx_lm 0.32 run with `--prompt-concurrency 1`,
//!   and what any mlx_lm.server sees behind mlx-cluster's gateway, which
//!   admits one prefill per node at a time (`routing.prefill_concurrency`).
//!   (With its default `--prompt-concurrency 8` and no gate, mlx_lm batches
//!   prompts and every prompt of a batch waits for the whole batch — two
//!   cold 4.3k-token prompts together took 16 s each where one alone takes
//!   3.4 s on the CI machine; the simulator does not model that penalty.)
//!   A request's prefill costs
//!   `request_overhead_seconds` plus, for each *uncached* prompt token at
//!   context position `p`, `(1 + p / prefill_context_halving_tokens) /
//!   prefill_tokens_per_second` seconds: attention makes long contexts slower.
//! * **Decode is batched.** Running requests decode concurrently, each at
//!   `(1 + context / decode_context_halving_tokens) /
//!   decode_tokens_per_second` seconds per token; the first output token
//!   comes out of prefill.
//! * **Prompt cache.** [`PromptCache`] (mlx_lm's `LRUPromptCache`) is looked
//!   up when the request arrives, as mlx_lm does when it hands the request to
//!   its batch generator. After a request finishes, the prompt plus its reply
//!   is inserted as an `assistant` entry (mlx_lm saves the KV cache of prompt
//!   and generated tokens; the next turn, which re-sends the reply, reuses
//!   all of it when the reply re-tokenizes to the same tokens, as with the
//!   tiny test model); when the prompt has a leading system block, the
//!   request ends with a user message and the block was not cached, the
//!   block alone is inserted as a `system` entry when its prefill completes.
//!
//! Everything is computed at admission, so [`NodeModel::admit`] returns the
//! whole [`Admission`] at once. That is exact because admissions happen in
//! arrival order, starts are FIFO and prefill is serial: every cache insert
//! that can affect a request's lookup (due by its arrival) is known when the
//! request is admitted.
//! Call `admit` with non-decreasing `now` values; an earlier `now` is treated
//! as the latest one seen.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::{CacheMatch, EntryKind, PromptCache};
use crate::tokenizer::{
    ChatTokens, REPLY_MARK, Token, output_seed, output_text, tokenize_prompt, tokenize_text,
};

/// Cost-model and capacity parameters of one simulated node.
///
/// The defaults describe a ~30B 4-bit mixture-of-experts model
/// (Qwen3-30B-A3B-4bit) under mlx_lm on an M2/M3 Ultra; they are estimates,
/// documented with their reasoning in `docs/simulation.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeModelConfig {
    /// Prompt tokens per second at an empty context. Default 1500.
    pub prefill_tokens_per_second: f64,
    /// Context length at which prefill per token takes twice as long as at
    /// an empty context (linear growth); 0 disables the growth. Default 16384.
    pub prefill_context_halving_tokens: f64,
    /// Output tokens per second per request at an empty context. Default 60.
    pub decode_tokens_per_second: f64,
    /// Context length at which decoding a token takes twice as long; 0
    /// disables the growth. Default 32768.
    pub decode_context_halving_tokens: f64,
    /// Fixed cost per request (templating, tokenizing, cache copy), seconds.
    /// Default 0.02.
    pub request_overhead_seconds: f64,
    /// Prompt tokens per prefill step (mlx_lm's `--prefill-step-size`); only
    /// sets the spacing of streamed `: keepalive` progress lines. Default 2048.
    pub prefill_step_tokens: usize,
    /// Requests running at once (prefill or decode; mlx_lm's
    /// `--decode-concurrency`). Default 32.
    pub max_concurrency: usize,
    /// Requests allowed to wait for a slot; `None` is unbounded (mlx_lm never
    /// rejects). Default `None`.
    pub max_queue: Option<usize>,
    /// Prompt-cache entries (mlx_lm's `--prompt-cache-size`). Default 10.
    pub cache_entries: usize,
    /// Optional limit on the tokens held by the prompt cache (stands in for
    /// `--prompt-cache-bytes`). Default `None`.
    pub cache_tokens: Option<usize>,
    /// Cache a chat's leading system block as its own entry. Default true.
    pub cache_system_block: bool,
    /// Let a later turn reuse the cached reply tokens of an earlier one, as
    /// mlx_lm 0.32 does when the re-sent reply tokenizes to the tokens it
    /// generated (measured with the tiny test model: the second turn's
    /// `cached_tokens` is exactly the first turn's prompt plus completion
    /// tokens). Set false for a model whose chat template re-renders replies
    /// differently. Default true.
    pub reuse_reply_tokens: bool,
    /// KV-cache bytes per token, only used to report cache bytes. Default
    /// 98304 (48 layers × 4 KV heads × 128 dims × K and V × 2 bytes).
    pub kv_bytes_per_token: u64,
}

impl Default for NodeModelConfig {
    fn default() -> Self {
        Self {
            prefill_tokens_per_second: 1500.0,
            prefill_context_halving_tokens: 16384.0,
            decode_tokens_per_second: 60.0,
            decode_context_halving_tokens: 32768.0,
            request_overhead_seconds: 0.02,
            prefill_step_tokens: 2048,
            max_concurrency: 32,
            max_queue: None,
            cache_entries: 10,
            cache_tokens: None,
            cache_system_block: true,
            reuse_reply_tokens: true,
            kv_bytes_per_token: 98_304,
        }
    }
}

impl NodeModelConfig {
    /// The same node made `factor` times faster (prefill and decode); a
    /// factor of 0.5 models a machine half as fast.
    #[must_use]
    pub fn with_speed(mut self, factor: f64) -> Self {
        self.prefill_tokens_per_second *= factor;
        self.decode_tokens_per_second *= factor;
        self
    }

    /// The cost formulas of this configuration.
    #[must_use]
    pub fn cost(&self) -> CostModel {
        CostModel {
            prefill_tokens_per_second: self.prefill_tokens_per_second.max(f64::MIN_POSITIVE),
            prefill_context_halving_tokens: self.prefill_context_halving_tokens,
            decode_tokens_per_second: self.decode_tokens_per_second.max(f64::MIN_POSITIVE),
            decode_context_halving_tokens: self.decode_context_halving_tokens,
            request_overhead_seconds: self.request_overhead_seconds.max(0.0),
        }
    }
}

/// The time formulas of the cost model (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostModel {
    /// Prompt tokens per second at an empty context.
    pub prefill_tokens_per_second: f64,
    /// Context length that doubles the prefill cost per token (0 = none).
    pub prefill_context_halving_tokens: f64,
    /// Output tokens per second at an empty context.
    pub decode_tokens_per_second: f64,
    /// Context length that doubles the decode cost per token (0 = none).
    pub decode_context_halving_tokens: f64,
    /// Fixed cost per request, seconds.
    pub request_overhead_seconds: f64,
}

/// A token count as a float (exact below 2^53).
fn as_f64(x: usize) -> f64 {
    x as f64
}

impl CostModel {
    /// Seconds to prefill prompt positions `from..to` (positions below `from`
    /// are cached), without the per-request overhead.
    #[must_use]
    pub fn prefill_seconds(&self, from: usize, to: usize) -> f64 {
        if to <= from {
            return 0.0;
        }
        let (a, b) = (as_f64(from), as_f64(to));
        let mut work = b - a;
        if self.prefill_context_halving_tokens > 0.0 {
            work += (b * b - a * a) / (2.0 * self.prefill_context_halving_tokens);
        }
        work / self.prefill_tokens_per_second
    }

    /// Seconds to decode `tokens` tokens after a context of `context` tokens.
    #[must_use]
    pub fn decode_seconds(&self, context: usize, tokens: usize) -> f64 {
        if tokens == 0 {
            return 0.0;
        }
        let (c, k) = (as_f64(context), as_f64(tokens));
        let mut work = k;
        if self.decode_context_halving_tokens > 0.0 {
            work += (k * c + k * (k - 1.0) / 2.0) / self.decode_context_halving_tokens;
        }
        work / self.decode_tokens_per_second
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

/// One request as the cost model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRequest {
    /// The prompt tokens.
    pub tokens: Arc<[Token]>,
    /// Length of the leading system block to cache on its own (0 = none).
    pub system_len: usize,
    /// Output tokens the node will generate.
    pub output_tokens: usize,
}

impl SimRequest {
    /// A request for a rendered chat prompt generating `output_tokens`
    /// tokens. The system block is cached on its own only when the chat ends
    /// with a user message (as in mlx_lm).
    #[must_use]
    pub fn from_chat(chat: ChatTokens, output_tokens: usize) -> Self {
        let system_len =
            if chat.last_is_user && chat.system_len > 0 && chat.system_len < chat.tokens.len() {
                chat.system_len
            } else {
                0
            };
        Self {
            tokens: chat.tokens.into(),
            system_len,
            output_tokens,
        }
    }

    /// A plain-text request (`/v1/completions`).
    #[must_use]
    pub fn from_text(prompt: &str, output_tokens: usize) -> Self {
        Self {
            tokens: tokenize_prompt(prompt).into(),
            system_len: 0,
            output_tokens,
        }
    }

    /// Number of prompt tokens.
    #[must_use]
    pub fn prompt_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The deterministic reply text (see [`crate::tokenizer::output_text`]).
    #[must_use]
    pub fn reply_text(&self) -> String {
        output_text(output_seed(&self.tokens), self.output_tokens)
    }
}

/// The outcome of admitting one request: its whole timeline in simulated
/// time (durations since the simulation's origin) and its token counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Admission {
    /// When the request arrived.
    pub arrival: Duration,
    /// When it got a concurrency slot (left the queue).
    pub started: Duration,
    /// When its prefill began (the cache was looked up then).
    pub prefill_start: Duration,
    /// When its first output token was produced (end of prefill).
    pub first_token: Duration,
    /// When its last output token was produced.
    pub finish: Duration,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prompt cache.
    pub cached_tokens: usize,
    /// Output tokens generated.
    pub output_tokens: usize,
    /// How the prompt matched the cache.
    pub cache_match: CacheMatch,
    #[serde(skip)]
    cost: CostModel,
}

impl Admission {
    /// Time to first token, from arrival.
    #[must_use]
    pub fn ttft(&self) -> Duration {
        self.first_token.saturating_sub(self.arrival)
    }

    /// Total latency, from arrival to the last token.
    #[must_use]
    pub fn latency(&self) -> Duration {
        self.finish.saturating_sub(self.arrival)
    }

    /// Time spent waiting for a slot and for the prefill unit.
    #[must_use]
    pub fn queue_wait(&self) -> Duration {
        self.prefill_start.saturating_sub(self.arrival)
    }

    /// When output token `index` (0-based) is produced; token 0 comes at
    /// [`Admission::first_token`].
    #[must_use]
    pub fn token_time(&self, index: usize) -> Duration {
        self.first_token + secs(self.cost.decode_seconds(self.prompt_tokens, index))
    }

    /// When the prefill has processed the prompt up to position `processed`
    /// (clamped to the cached and prompt lengths).
    #[must_use]
    pub fn prefill_progress_time(&self, processed: usize) -> Duration {
        let to = processed.clamp(self.cached_tokens, self.prompt_tokens);
        self.prefill_start
            + secs(
                self.cost.request_overhead_seconds
                    + self.cost.prefill_seconds(self.cached_tokens, to),
            )
    }
}

/// Rejection of a request because the node's queue is full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue full: {queued} requests waiting, retry after {retry_after:?}")]
pub struct QueueFull {
    /// Requests waiting when this one arrived.
    pub queued: usize,
    /// Estimated time until a slot frees up.
    pub retry_after: Duration,
}

/// A node's load at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NodeLoad {
    /// Requests holding a slot (prefilling, waiting for the prefill unit, or
    /// decoding).
    pub running: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Requests whose prefill is in progress (0 or 1).
    pub prefilling: usize,
    /// Requests decoding.
    pub decoding: usize,
    /// Prompt-cache entries.
    pub cache_entries: usize,
    /// Tokens held by the prompt cache.
    pub cache_tokens: usize,
    /// Simulated time until a request arriving now would start its prefill.
    pub wait: Duration,
}

/// Cumulative counters of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NodeTotals {
    /// Admitted requests.
    pub requests: u64,
    /// Requests rejected because the queue was full.
    pub rejected: u64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Of those, tokens served from the prompt cache.
    pub cached_tokens: u64,
    /// Output tokens generated.
    pub output_tokens: u64,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    started: Duration,
    prefill_start: Duration,
    first_token: Duration,
    finish: Duration,
}

#[derive(Debug, Clone)]
struct PendingInsert {
    at: Duration,
    seq: u64,
    tokens: Arc<[Token]>,
    kind: EntryKind,
}

/// A simulated node: cost model, prompt cache, slots and queue, driven by
/// explicit simulated times (see the module docs).
#[derive(Debug, Clone)]
pub struct NodeModel {
    config: NodeModelConfig,
    cost: CostModel,
    cache: PromptCache,
    slot_free: BinaryHeap<Reverse<Duration>>,
    prefill_free: Duration,
    last_arrival: Duration,
    outstanding: VecDeque<Span>,
    pending: Vec<PendingInsert>,
    seq: u64,
    totals: NodeTotals,
}

impl Default for NodeModel {
    fn default() -> Self {
        Self::new(NodeModelConfig::default())
    }
}

fn u64_of(x: usize) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

impl NodeModel {
    /// An idle node with an empty cache.
    #[must_use]
    pub fn new(config: NodeModelConfig) -> Self {
        let slots = config.max_concurrency.max(1);
        Self {
            cost: config.cost(),
            cache: PromptCache::new(config.cache_entries, config.cache_tokens),
            slot_free: (0..slots).map(|_| Reverse(Duration::ZERO)).collect(),
            prefill_free: Duration::ZERO,
            last_arrival: Duration::ZERO,
            outstanding: VecDeque::new(),
            pending: Vec::new(),
            seq: 0,
            totals: NodeTotals::default(),
            config,
        }
    }

    /// The node's configuration.
    #[must_use]
    pub fn config(&self) -> &NodeModelConfig {
        &self.config
    }

    /// The node's cost formulas.
    #[must_use]
    pub fn cost(&self) -> CostModel {
        self.cost
    }

    /// The prompt cache as of the latest admitted request's lookup.
    #[must_use]
    pub fn cache(&self) -> &PromptCache {
        &self.cache
    }

    /// Cumulative counters.
    #[must_use]
    pub fn totals(&self) -> NodeTotals {
        self.totals
    }

    /// Forgets everything (cache, queue, running requests), as a process
    /// restart would; the counters are kept.
    pub fn reset(&mut self) {
        let totals = self.totals;
        *self = Self::new(self.config.clone());
        self.totals = totals;
    }

    /// Removes every prompt-cache entry, pending inserts included.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
        self.pending.clear();
    }

    /// The node's load at simulated time `now`.
    #[must_use]
    pub fn load(&self, now: Duration) -> NodeLoad {
        let mut load = NodeLoad {
            cache_entries: self.cache.len(),
            cache_tokens: self.cache.total_tokens(),
            ..NodeLoad::default()
        };
        for span in self.outstanding.iter().filter(|s| s.finish > now) {
            if span.started > now {
                load.queued += 1;
                continue;
            }
            load.running += 1;
            if span.prefill_start <= now && now < span.first_token {
                load.prefilling += 1;
            } else if span.first_token <= now {
                load.decoding += 1;
            }
        }
        let now = now.max(self.last_arrival);
        let slot = self.slot_free.peek().map_or(Duration::ZERO, |r| r.0);
        load.wait = slot.max(self.prefill_free).max(now) - now;
        load
    }

    /// Admits `request` arriving at simulated time `now` and returns its
    /// timeline, or [`QueueFull`] when `max_queue` requests already wait.
    ///
    /// # Errors
    /// [`QueueFull`] when the queue is bounded and full.
    pub fn admit(&mut self, now: Duration, request: &SimRequest) -> Result<Admission, QueueFull> {
        let now = now.max(self.last_arrival);
        self.last_arrival = now;
        while self.outstanding.front().is_some_and(|s| s.finish <= now) {
            self.outstanding.pop_front();
        }
        let next_slot = self.slot_free.peek().map_or(Duration::ZERO, |r| r.0);
        if let Some(max_queue) = self.config.max_queue
            && next_slot > now
        {
            let queued = self.outstanding.iter().filter(|s| s.started > now).count();
            if queued >= max_queue {
                self.totals.rejected += 1;
                let retry_after = next_slot.saturating_sub(now).max(Duration::from_secs(1));
                return Err(QueueFull {
                    queued,
                    retry_after,
                });
            }
        }
        let slot = self.slot_free.pop().map_or(Duration::ZERO, |r| r.0);
        let started = now.max(slot);
        let prefill_start = started.max(self.prefill_free);
        // mlx_lm looks the cache up when the request arrives.
        self.apply_pending(now);
        let hit = self.cache.lookup(&request.tokens);
        let admission = self.timeline(
            now,
            started,
            prefill_start,
            hit.cached_tokens,
            hit.kind,
            request,
        );
        self.prefill_free = admission.first_token;
        self.slot_free.push(Reverse(admission.finish));
        self.outstanding.push_back(Span {
            started,
            prefill_start,
            first_token: admission.first_token,
            finish: admission.finish,
        });

        if self.config.cache_system_block
            && request.system_len > 0
            && admission.cached_tokens < request.system_len
        {
            let at = admission.prefill_progress_time(request.system_len);
            let tokens: Arc<[Token]> = request.tokens[..request.system_len].into();
            self.push_pending(at, tokens, EntryKind::System);
        }
        let mut full = Vec::with_capacity(request.tokens.len() + request.output_tokens);
        full.extend_from_slice(&request.tokens);
        tokenize_text(&request.reply_text(), &mut full);
        if !self.config.reuse_reply_tokens && full.len() > request.tokens.len() {
            // mlx_lm re-renders earlier replies, so a later turn matches only
            // up to the end of this prompt.
            full[request.tokens.len()] = REPLY_MARK;
        }
        self.push_pending(admission.finish, full.into(), EntryKind::Assistant);

        self.totals.requests += 1;
        self.totals.prompt_tokens += u64_of(admission.prompt_tokens);
        self.totals.cached_tokens += u64_of(admission.cached_tokens);
        self.totals.output_tokens += u64_of(admission.output_tokens);
        Ok(admission)
    }

    /// What [`NodeModel::admit`] would return for `request` at `now`, without
    /// changing the node (for routers that want an oracle).
    #[must_use]
    pub fn predict(&self, now: Duration, request: &SimRequest) -> Admission {
        let now = now.max(self.last_arrival);
        let slot = self.slot_free.peek().map_or(Duration::ZERO, |r| r.0);
        let started = now.max(slot);
        let prefill_start = started.max(self.prefill_free);
        let hit = if self.pending.iter().any(|p| p.at <= now) {
            let mut cache = self.cache.clone();
            for p in self.pending.iter().filter(|p| p.at <= now) {
                cache.insert_kind(p.tokens.clone(), p.kind);
            }
            cache.peek(&request.tokens)
        } else {
            self.cache.peek(&request.tokens)
        };
        self.timeline(
            now,
            started,
            prefill_start,
            hit.cached_tokens,
            hit.kind,
            request,
        )
    }

    fn timeline(
        &self,
        arrival: Duration,
        started: Duration,
        prefill_start: Duration,
        cached_tokens: usize,
        cache_match: CacheMatch,
        request: &SimRequest,
    ) -> Admission {
        let prompt_tokens = request.tokens.len();
        let prefill = self.cost.request_overhead_seconds
            + self.cost.prefill_seconds(cached_tokens, prompt_tokens);
        let first_token = prefill_start + secs(prefill);
        let decode = self
            .cost
            .decode_seconds(prompt_tokens, request.output_tokens.saturating_sub(1));
        Admission {
            arrival,
            started,
            prefill_start,
            first_token,
            finish: first_token + secs(decode),
            prompt_tokens,
            cached_tokens,
            output_tokens: request.output_tokens,
            cache_match,
            cost: self.cost,
        }
    }

    fn push_pending(&mut self, at: Duration, tokens: Arc<[Token]>, kind: EntryKind) {
        self.seq += 1;
        let entry = PendingInsert {
            at,
            seq: self.seq,
            tokens,
            kind,
        };
        let pos = self
            .pending
            .partition_point(|p| (p.at, p.seq) <= (entry.at, entry.seq));
        self.pending.insert(pos, entry);
    }

    fn apply_pending(&mut self, until: Duration) {
        let n = self.pending.partition_point(|p| p.at <= until);
        for p in self.pending.drain(..n) {
            self.cache.insert_kind(p.tokens, p.kind);
        }
    }

    /// Applies every cache insert due by `now` (useful before reading
    /// [`NodeModel::cache`] for statistics).
    pub fn settle(&mut self, now: Duration) {
        self.apply_pending(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{MessageText, tokenize_chat};

    fn chat(system: &str, turns: &[&str]) -> SimRequest {
        let mut messages = vec![MessageText {
            role: "system",
            content: system,
            tool_calls: None,
        }];
        for t in turns {
            messages.push(MessageText {
                role: "user",
                content: t,
                tool_calls: None,
            });
        }
        SimRequest::from_chat(tokenize_chat(&messages, None), 100)
    }

    fn long_text(tag: &str, tokens: usize) -> String {
        let mut s = String::new();
        while s.len() < tokens * 4 {
            s.push_str(tag);
            s.push(' ');
        }
        s
    }

    #[test]
    fn cost_formulas() {
        let cost = NodeModelConfig {
            prefill_context_halving_tokens: 0.0,
            decode_context_halving_tokens: 0.0,
            ..NodeModelConfig::default()
        }
        .cost();
        assert!((cost.prefill_seconds(0, 1500) - 1.0).abs() < 1e-9);
        assert!((cost.decode_seconds(10_000, 60) - 1.0).abs() < 1e-9);
        let growing = NodeModelConfig::default().cost();
        assert!(growing.prefill_seconds(30_000, 31_000) > growing.prefill_seconds(0, 1000));
        assert!(growing.decode_seconds(60_000, 10) > growing.decode_seconds(0, 10));
    }

    #[test]
    fn cache_hit_reduces_ttft() {
        let system = long_text("system", 20_000);
        let mut node = NodeModel::default();
        let first = node
            .admit(Duration::ZERO, &chat(&system, &["first question"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.cached_tokens, 0);
        let later = first.finish + Duration::from_secs(1);
        let second = node
            .admit(later, &chat(&system, &["other question"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            second.cached_tokens >= 20_000 * 8 / 10,
            "cached {}",
            second.cached_tokens
        );
        assert!(
            second.ttft() * 5 < first.ttft(),
            "{:?} vs {:?}",
            second.ttft(),
            first.ttft()
        );
    }

    #[test]
    fn next_turn_reuses_prompt_and_reply() {
        for reuse in [false, true] {
            next_turn(reuse);
        }
    }

    fn next_turn(reuse: bool) {
        let system = long_text("sys", 2000);
        let mut node = NodeModel::new(NodeModelConfig {
            reuse_reply_tokens: reuse,
            ..NodeModelConfig::default()
        });
        let messages = [
            MessageText {
                role: "system",
                content: &system,
                tool_calls: None,
            },
            MessageText {
                role: "user",
                content: "please fix the bug in main.rs",
                tool_calls: None,
            },
        ];
        let first = SimRequest::from_chat(tokenize_chat(&messages, None), 50);
        let a = node
            .admit(Duration::ZERO, &first)
            .unwrap_or_else(|e| panic!("{e}"));
        let reply = first.reply_text();
        let next = [
            messages[0],
            messages[1],
            MessageText {
                role: "assistant",
                content: &reply,
                tool_calls: None,
            },
            MessageText {
                role: "user",
                content: "thanks, now run the tests",
                tool_calls: None,
            },
        ];
        let second = SimRequest::from_chat(tokenize_chat(&next, None), 50);
        let b = node
            .admit(a.finish, &second)
            .unwrap_or_else(|e| panic!("{e}"));
        if reuse {
            assert_eq!(b.cache_match, CacheMatch::Prefix);
            assert_eq!(b.cached_tokens, first.tokens.len() + 50);
        } else {
            // As recorded from mlx_lm 0.32: the earlier prompt is reused, its
            // reply is not, and the earlier entry stays in the cache.
            assert_eq!(b.cache_match, CacheMatch::Common);
            assert_eq!(b.cached_tokens, first.tokens.len());
        }
    }

    #[test]
    fn the_cache_is_looked_up_at_arrival() {
        let system = long_text("abc", 5000);
        let mut node = NodeModel::default();
        let r = chat(&system, &["one"]);
        let a = node
            .admit(Duration::ZERO, &r)
            .unwrap_or_else(|e| panic!("{e}"));
        // Arrives while the first is still prefilling: the cache is looked
        // up at arrival (as mlx_lm does), before the system block is saved.
        let b = node
            .admit(Duration::from_millis(10), &chat(&system, &["two"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(b.prefill_start >= a.first_token);
        assert_eq!(b.cached_tokens, 0);
        // Arriving after the first prefill passed the system block, a third
        // finds it saved (a `system` entry).
        let c = node
            .admit(a.first_token, &chat(&system, &["three"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.cached_tokens > 4000, "{}", c.cached_tokens);
    }

    #[test]
    fn queueing_delays_start_and_bounds_queue() {
        let config = NodeModelConfig {
            max_concurrency: 1,
            max_queue: Some(1),
            ..NodeModelConfig::default()
        };
        let mut node = NodeModel::new(config);
        let r = SimRequest::from_text(&long_text("x", 3000), 10);
        let a = node
            .admit(Duration::ZERO, &r)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = node
            .admit(Duration::ZERO, &SimRequest::from_text("other", 10))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.started, a.finish);
        assert!(b.queue_wait() > Duration::ZERO);
        let load = node.load(Duration::from_millis(1));
        assert_eq!((load.running, load.queued), (1, 1));
        let rejected = node.admit(
            Duration::from_millis(2),
            &SimRequest::from_text("third", 10),
        );
        assert!(matches!(rejected, Err(QueueFull { queued: 1, .. })));
        assert_eq!(node.totals().rejected, 1);
        // Once both finish the node is idle again.
        let idle = node.load(b.finish);
        assert_eq!(
            (idle.running, idle.queued, idle.wait),
            (0, 0, Duration::ZERO)
        );
    }

    #[test]
    fn zero_queue_admits_while_a_slot_is_free() {
        let mut node = NodeModel::new(NodeModelConfig {
            max_concurrency: 1,
            max_queue: Some(0),
            ..NodeModelConfig::default()
        });
        let r = SimRequest::from_text("hello", 10);
        let a = node
            .admit(Duration::ZERO, &r)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(node.admit(Duration::ZERO, &r).is_err());
        assert!(node.admit(a.finish, &r).is_ok());
    }

    #[test]
    fn prefill_is_serial_decode_is_concurrent() {
        let mut node = NodeModel::default();
        let r1 = SimRequest::from_text(&long_text("a", 1500), 600);
        let r2 = SimRequest::from_text(&long_text("b", 1500), 600);
        let a = node
            .admit(Duration::ZERO, &r1)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = node
            .admit(Duration::ZERO, &r2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.prefill_start, a.first_token);
        // b decodes while a is still decoding.
        assert!(b.first_token < a.finish);
        assert_eq!(b.started, Duration::ZERO);
    }

    #[test]
    fn predict_matches_admit() {
        let system = long_text("p", 3000);
        let mut node = NodeModel::default();
        let r = chat(&system, &["q1"]);
        let a = node
            .admit(Duration::ZERO, &r)
            .unwrap_or_else(|e| panic!("{e}"));
        let r2 = chat(&system, &["q2"]);
        let predicted = node.predict(a.finish, &r2);
        let actual = node.admit(a.finish, &r2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(predicted, actual);
    }

    #[test]
    fn token_times_are_increasing() {
        let mut node = NodeModel::default();
        let a = node
            .admit(Duration::ZERO, &SimRequest::from_text("hello", 5))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.token_time(0), a.first_token);
        assert!(a.token_time(1) > a.token_time(0));
        assert_eq!(a.token_time(4), a.finish);
        assert!(a.prefill_progress_time(0) >= a.prefill_start);
    }
}
