//! Parsers of the cache and queue state that inference servers publish
//! about themselves: Prometheus `/metrics` text (llama.cpp, vLLM, SGLang,
//! the simulator) and llama.cpp's `/slots` JSON.
//!
//! | server (version the names were checked on) | gauge / counter read                                   | becomes                  |
//! |--------------------------------------------|--------------------------------------------------------|--------------------------|
//! | llama.cpp `llama-server` (b11434)          | `llamacpp:requests_processing`                         | `running`                |
//! |                                            | `llamacpp:requests_deferred`                           | `waiting`                |
//! |                                            | `llamacpp:kv_cache_usage_ratio` (older builds only)    | `kv_usage`               |
//! |                                            | `llamacpp:prompt_tokens_cached_total` / `prompt_tokens_total` | `prefix_hit_rate` |
//! | vLLM V1 engine (0.11)                      | `vllm:num_requests_running` / `_waiting`               | `running` / `waiting`    |
//! |                                            | `vllm:kv_cache_usage_perc` (`gpu_cache_usage_perc` before 0.10) | `kv_usage`      |
//! |                                            | `vllm:prefix_cache_hits_total` / `_queries_total`      | `prefix_hit_rate`        |
//! |                                            | `vllm:cache_config_info{block_size, num_gpu_blocks}`   | `token_capacity`         |
//! | SGLang (0.5)                               | `sglang:num_running_reqs` / `num_queue_reqs`           | `running` / `waiting`    |
//! |                                            | `sglang:token_usage`                                   | `kv_usage`               |
//! |                                            | `sglang:cache_hit_rate`                                | `prefix_hit_rate`        |
//! |                                            | `sglang:max_total_num_tokens`                          | `token_capacity`         |
//! | cluster-sim                                | `mlx_sim_prompt_cache_entries` / `_tokens`             | `entries` / `tokens`     |
//!
//! Series with labels (one per model, or per data-parallel engine): request
//! counts and counters are summed, ratios and capacities take the largest.
//! Lines that do not parse, values that are not finite non-negative
//! numbers, and unknown names are skipped: a node answering garbage gives an
//! empty report, never an error.

use serde::Deserialize;

/// What a node's `/metrics` said. Every field is `None` when the node did
/// not publish it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PublishedMetrics {
    /// Requests being processed (decoding or prefilling).
    pub running: Option<u64>,
    /// Requests queued and not started (llama.cpp: deferred).
    pub waiting: Option<u64>,
    /// Fraction of the KV cache in use, 0–1.
    pub kv_usage: Option<f64>,
    /// Fraction of prompt tokens served from the prefix cache, 0–1 (over
    /// the server's lifetime, or its own window for SGLang).
    pub prefix_hit_rate: Option<f64>,
    /// KV cache capacity in tokens.
    pub token_capacity: Option<u64>,
    /// Simulator: prompt-cache entries held.
    pub entries: Option<usize>,
    /// Simulator: tokens held in the prompt cache.
    pub tokens: Option<u64>,
}

impl PublishedMetrics {
    /// Requests the node has taken and not finished (running + waiting),
    /// when it published either.
    #[must_use]
    pub fn outstanding(&self) -> Option<u64> {
        match (self.running, self.waiting) {
            (None, None) => None,
            (r, w) => Some(r.unwrap_or(0) + w.unwrap_or(0)),
        }
    }

    /// Whether any field was read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Sums of the series read, before they are combined.
#[derive(Default)]
struct Sums {
    values: [Option<f64>; Series::COUNT],
}

#[derive(Clone, Copy)]
enum Series {
    Running,
    Waiting,
    KvUsage,
    HitRate,
    PromptTokens,
    CachedPromptTokens,
    PrefixQueries,
    PrefixHits,
    Capacity,
    SimEntries,
    SimTokens,
}

impl Series {
    const COUNT: usize = 11;

    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "llamacpp:requests_processing"
            | "vllm:num_requests_running"
            | "sglang:num_running_reqs" => Self::Running,
            "llamacpp:requests_deferred"
            | "vllm:num_requests_waiting"
            | "sglang:num_queue_reqs" => Self::Waiting,
            "llamacpp:kv_cache_usage_ratio"
            | "vllm:kv_cache_usage_perc"
            | "vllm:gpu_cache_usage_perc"
            | "sglang:token_usage" => Self::KvUsage,
            "sglang:cache_hit_rate" => Self::HitRate,
            "llamacpp:prompt_tokens_total" => Self::PromptTokens,
            "llamacpp:prompt_tokens_cached_total" => Self::CachedPromptTokens,
            "vllm:prefix_cache_queries_total" => Self::PrefixQueries,
            "vllm:prefix_cache_hits_total" => Self::PrefixHits,
            "sglang:max_total_num_tokens" => Self::Capacity,
            "mlx_sim_prompt_cache_entries" => Self::SimEntries,
            "mlx_sim_prompt_cache_tokens" => Self::SimTokens,
            _ => return None,
        })
    }
}

impl Sums {
    fn add(&mut self, series: Series, v: f64) {
        let slot = &mut self.values[series as usize];
        *slot = Some(match (series, *slot) {
            (_, None) => v,
            (Series::KvUsage | Series::HitRate | Series::Capacity, Some(old)) => old.max(v),
            (_, Some(old)) => old + v,
        });
    }

    fn get(&self, series: Series) -> Option<f64> {
        self.values[series as usize]
    }
}

fn count(v: f64) -> u64 {
    v.round() as u64
}

fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => Some((n / d).clamp(0.0, 1.0)),
        _ => None,
    }
}

/// Parses Prometheus text exposition into what the gateway uses (see the
/// module docs for the names).
#[must_use]
pub fn parse_metrics(text: &str) -> PublishedMetrics {
    let mut sums = Sums::default();
    let mut capacity_from_config: Option<u64> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = split_sample(line) else {
            continue;
        };
        if !value.is_finite() || value < 0.0 {
            continue;
        }
        if name == "vllm:cache_config_info" {
            let block = label(labels, "block_size").and_then(|v| v.parse::<u64>().ok());
            let blocks = label(labels, "num_gpu_blocks").and_then(|v| v.parse::<u64>().ok());
            if let (Some(b), Some(n)) = (block, blocks) {
                capacity_from_config = Some(b.saturating_mul(n));
            }
            continue;
        }
        if let Some(series) = Series::of(name) {
            sums.add(series, value);
        }
    }
    let hit_rate = sums
        .get(Series::HitRate)
        .map(|v| v.clamp(0.0, 1.0))
        .or_else(|| {
            ratio(
                sums.get(Series::PrefixHits),
                sums.get(Series::PrefixQueries),
            )
        })
        .or_else(|| {
            ratio(
                sums.get(Series::CachedPromptTokens),
                sums.get(Series::PromptTokens),
            )
        });
    PublishedMetrics {
        running: sums.get(Series::Running).map(count),
        waiting: sums.get(Series::Waiting).map(count),
        kv_usage: sums.get(Series::KvUsage).map(|v| v.clamp(0.0, 1.0)),
        prefix_hit_rate: hit_rate,
        token_capacity: sums
            .get(Series::Capacity)
            .map(count)
            .or(capacity_from_config),
        entries: sums.get(Series::SimEntries).map(|v| count(v) as usize),
        tokens: sums.get(Series::SimTokens).map(count),
    }
}

/// `name{labels} value [timestamp]` → (name, labels without braces, value).
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (&line[..open], &line[open + 1..close], &line[close + 1..])
        }
        None => {
            let space = line.find(char::is_whitespace)?;
            (&line[..space], "", &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "-Inf" | "NaN" => return None,
        v => v.parse::<f64>().ok()?,
    };
    Some((name.trim(), labels, value))
}

/// The value of label `key` in `a="1",b="2"` (no escapes in the values
/// this reads).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// What one llama.cpp slot holds (`GET /slots`, one object per slot).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LlamaSlot {
    /// Slot index.
    pub id: u32,
    /// Context size of the slot, tokens.
    #[serde(default)]
    pub n_ctx: u64,
    /// Whether a request is running in the slot now.
    #[serde(default)]
    pub is_processing: bool,
    /// The last (or current) task of the slot; absent for a slot never used.
    #[serde(default)]
    pub id_task: Option<i64>,
    /// Tokens of the prompt cached in the slot (`n_prompt_tokens`, or
    /// `n_past` in older builds); absent for a slot never used.
    #[serde(default, alias = "n_past")]
    pub n_prompt_tokens: Option<u64>,
    /// The prompt text of the slot's task (older builds send it; b11434
    /// does not).
    #[serde(default)]
    pub prompt: Option<String>,
}

impl LlamaSlot {
    /// Whether the slot holds a cached prompt (it served a task and kept
    /// some tokens).
    #[must_use]
    pub fn holds_prompt(&self) -> bool {
        self.id_task.is_some() && self.n_prompt_tokens.unwrap_or(0) > 0
    }
}

/// Why a `/slots` body was not understood.
#[derive(Debug, thiserror::Error)]
#[error("llama.cpp /slots is not a list of slots: {0}")]
pub struct SlotsError(#[from] serde_json::Error);

/// Parses llama.cpp's `GET /slots` answer (a JSON array, one object per
/// slot; unknown fields ignored).
///
/// # Errors
/// [`SlotsError`] when the body is not such an array.
pub fn parse_slots(body: &[u8]) -> Result<Vec<LlamaSlot>, SlotsError> {
    Ok(serde_json::from_slice(body)?)
}

/// What a llama.cpp node's slots say about its cache: how many cached
/// prompts, how many tokens in them, how many slots are busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotSummary {
    /// Slots in total.
    pub slots: usize,
    /// Slots that hold a cached prompt.
    pub cached_prompts: usize,
    /// Tokens in those prompts.
    pub cached_tokens: u64,
    /// Slots running a request now.
    pub busy: usize,
}

/// Sums up a `/slots` answer.
#[must_use]
pub fn summarize_slots(slots: &[LlamaSlot]) -> SlotSummary {
    SlotSummary {
        slots: slots.len(),
        cached_prompts: slots.iter().filter(|s| s.holds_prompt()).count(),
        cached_tokens: slots
            .iter()
            .filter(|s| s.holds_prompt())
            .filter_map(|s| s.n_prompt_tokens)
            .sum(),
        busy: slots.iter().filter(|s| s.is_processing).count(),
    }
}

#[cfg(test)]
#[path = "published_tests.rs"]
mod tests;
