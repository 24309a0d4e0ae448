//! Cache coordination: warm-up of nodes with configured system prompts, and
//! periodic sync of the cache model from nodes that report their cache.
//!
//! The registry itself — indexed by node and by prefix block — is the
//! [`CacheModel`](crate::CacheModel) inside the router; this module feeds it
//! from outside the request path.
//!
//! * **Warm-up.** For each node (at start and whenever discovery finds one)
//!   and each `cache.warmup_prompts` entry, a one-token chat completion
//!   `[{system: prompt}, {user: "ok"}]` is sent with `max_tokens: 1`, so the
//!   node prefills and caches the system prompt. At most
//!   `cache.warmup_concurrency` warm-ups run at once over the cluster; each
//!   attempt has `cache.warmup_timeout`; a failure is retried
//!   `cache.warmup_retries` times. A warmed prompt is recorded in the cache
//!   model under the fingerprint `[model, system]` (the gateway's canonical
//!   order starts with those two segments, so real requests match it).
//! * **Sync.** Every `cache.sync_interval` each node that reports its cache
//!   is asked: `GET /metrics` with the simulator's
//!   `mlx_sim_prompt_cache_entries` / `_tokens` gauges (llama.cpp and vLLM
//!   expose usage ratios only, which say nothing about which prefixes are
//!   held). A node reporting fewer entries than the model believes has
//!   evicted the least recently used ones; zero entries means it restarted.
//!   mlx_lm.server has no such endpoint (404): it is not asked again, and
//!   the model lives on request feedback alone. Stale entries expire on the
//!   same tick (`cache.entry_ttl`), as do idle sticky sessions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cluster_types::{
    CacheConfig, NodeId, NodeSpec, PrefixFingerprint, RoutingContext, SegmentKind,
};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::router::Router;

/// The user message sent after a warm-up system prompt.
pub const WARMUP_USER_MESSAGE: &str = "ok";

/// The routing context a warm-up of `prompt` on `model` corresponds to: the
/// fingerprint of `[model, system prompt]`.
#[must_use]
pub fn warmup_context(model: Option<&str>, prompt: &str, block_bytes: u32) -> RoutingContext {
    let mut b = PrefixFingerprint::builder(block_bytes);
    if let Some(m) = model {
        b.push_segment(SegmentKind::Model, m);
    }
    b.push_segment(SegmentKind::System, prompt);
    let fingerprint = b.finish();
    let tokens = u32::try_from(fingerprint.total_bytes() / 4).unwrap_or(u32::MAX);
    RoutingContext {
        model: model.map(str::to_owned),
        fingerprint,
        prompt_tokens_estimate: tokens,
        ..RoutingContext::default()
    }
}

/// Outcome of warming one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct WarmupResult {
    pub(crate) warmed: usize,
    pub(crate) failed: usize,
}

/// Sends the warm-up requests for one node (see the module docs).
pub(crate) async fn warm_up(
    http: &reqwest::Client,
    router: &Router,
    limit: &Semaphore,
    cache: &CacheConfig,
    node: &NodeSpec,
    model: Option<&str>,
) -> WarmupResult {
    let mut result = WarmupResult::default();
    for prompt in &cache.warmup_prompts {
        let mut ok = false;
        for _attempt in 0..=cache.warmup_retries {
            let Ok(_permit) = limit.acquire().await else {
                return result;
            };
            let mut body = json!({
                "messages": [
                    {"role": "system", "content": prompt},
                    {"role": "user", "content": WARMUP_USER_MESSAGE},
                ],
                "max_tokens": 1,
                "stream": false,
            });
            if let Some(m) = model {
                body["model"] = json!(m);
            }
            let mut req = http
                .post(format!("{}/v1/chat/completions", node.url))
                .timeout(cache.warmup_timeout)
                .json(&body);
            if let Some(key) = &node.api_key {
                req = req.bearer_auth(key.expose());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    // Read the body so the node finishes the request.
                    let _ = resp.bytes().await;
                    ok = true;
                    break;
                }
                Ok(resp) => {
                    tracing::debug!(node = %node.id, status = %resp.status(), "warm-up refused");
                }
                Err(error) => {
                    tracing::debug!(node = %node.id, %error, "warm-up failed");
                }
            }
        }
        if ok {
            let ctx = warmup_context(model, prompt, cache.fingerprint_block_bytes);
            router.record_cached(&node.id, &ctx);
            result.warmed += 1;
        } else {
            result.failed += 1;
        }
    }
    result
}

/// Cache state a node reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CacheReport {
    pub(crate) entries: Option<usize>,
    pub(crate) tokens: Option<u64>,
}

/// Parses the prompt-cache gauges out of Prometheus text.
pub(crate) fn parse_metrics(text: &str) -> CacheReport {
    let mut report = CacheReport::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if !v.is_finite() || v < 0.0 {
            continue;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        match name {
            "mlx_sim_prompt_cache_entries" => report.entries = Some(v as usize),
            "mlx_sim_prompt_cache_tokens" => report.tokens = Some(v as u64),
            _ => {}
        }
    }
    report
}

/// Which nodes answered that they cannot report their cache.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    silent: Mutex<HashSet<NodeId>>,
}

impl SyncState {
    pub(crate) fn forget(&self, node: &NodeId) {
        self.silent.lock().remove(node);
    }
}

/// Asks one node for its cache state; `None` when it cannot tell (then it
/// is not asked again until it is rediscovered).
pub(crate) async fn sync_node(
    http: &reqwest::Client,
    state: &SyncState,
    node: &NodeSpec,
    timeout: Duration,
) -> Option<CacheReport> {
    if state.silent.lock().contains(&node.id) {
        return None;
    }
    let mut req = http.get(format!("{}/metrics", node.url)).timeout(timeout);
    if let Some(key) = &node.api_key {
        req = req.bearer_auth(key.expose());
    }
    let resp = req.send().await.ok()?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        state.silent.lock().insert(node.id.clone());
        return None;
    }
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.ok()?;
    let report = parse_metrics(&text);
    if report.entries.is_none() {
        state.silent.lock().insert(node.id.clone());
        return None;
    }
    Some(report)
}

/// The shared pieces the coordinator tasks use.
#[derive(Debug)]
pub(crate) struct Coordinator {
    pub(crate) http: reqwest::Client,
    pub(crate) warmup_limit: Arc<Semaphore>,
    pub(crate) sync: SyncState,
}

impl Coordinator {
    pub(crate) fn new(http: reqwest::Client, cache: &CacheConfig) -> Self {
        Self {
            http,
            warmup_limit: Arc::new(Semaphore::new(
                usize::try_from(cache.warmup_concurrency.max(1)).unwrap_or(1),
            )),
            sync: SyncState::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sim_gauges() {
        let text = "# HELP mlx_sim_prompt_cache_entries x\n# TYPE mlx_sim_prompt_cache_entries gauge\nmlx_sim_prompt_cache_entries 3\nmlx_sim_prompt_cache_tokens{node=\"a\"} 12345\nvllm:gpu_cache_usage_perc 0.5\nbroken\nmlx_sim_prompt_cache_entries_total nan\n";
        assert_eq!(
            parse_metrics(text),
            CacheReport {
                entries: Some(3),
                tokens: Some(12_345)
            }
        );
        assert_eq!(
            parse_metrics("llamacpp:kv_cache_tokens 10\n"),
            CacheReport::default()
        );
    }

    #[test]
    fn warmup_context_is_model_then_system() {
        let a = warmup_context(Some("m"), &"sys ".repeat(200), 256);
        let mut b = PrefixFingerprint::builder(256);
        b.push_segment(SegmentKind::Model, "m")
            .push_segment(SegmentKind::System, &"sys ".repeat(200))
            .push_segment(SegmentKind::Message { role: "user" }, "hello");
        let full = b.finish();
        assert_eq!(
            a.fingerprint.common_prefix_len(&full),
            a.fingerprint.full_blocks().len()
        );
        assert!(a.prompt_tokens_estimate > 150);
        assert_eq!(warmup_context(None, "x", 256).model, None);
    }
}
