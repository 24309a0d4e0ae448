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
//! * **Sync.** Every `cache.sync_interval` each routable node is asked what
//!   it publishes, by kind ([`sync_node`]; parsers in [`crate::published`]):
//!   llama.cpp's `/slots` (how many slots hold a prompt) and `/metrics`
//!   (requests processing and deferred); vLLM's and SGLang's `/metrics`
//!   (running and waiting requests, KV capacity in tokens); the simulator's
//!   `mlx_sim_prompt_cache_entries` gauge. A node holding fewer prompts than
//!   the model believes has evicted the least recently used ones; zero
//!   means it restarted. The queue a node reports feeds least-loaded's load
//!   (see `live::ReportedQueue`); a published KV capacity becomes the node's
//!   token limit in the cache model. None of these say *which* prefixes are
//!   held (llama.cpp's slot prompts are rendered chat templates, not the
//!   gateway's canonical segments), so they correct counts, not contents.
//!   mlx_lm.server publishes nothing (404): it is not asked again, and its
//!   model lives on request feedback (`cached_tokens`) alone. Stale entries
//!   expire on the same tick (`cache.entry_ttl`), as do idle sticky sessions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cluster_types::{
    CacheConfig, NodeId, NodeKind, NodeSpec, PrefixFingerprint, RoutingContext, SegmentKind,
};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::published::{parse_metrics, parse_slots, summarize_slots};
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

/// The HTTP clients the coordinator talks to nodes with: the given one for
/// `http://` nodes, one per TLS setting for `https://` nodes.
#[derive(Debug, Clone)]
pub(crate) struct NodeHttp {
    plain: reqwest::Client,
    tls: cluster_health::NodeClients,
}

impl NodeHttp {
    pub(crate) fn new(plain: reqwest::Client) -> Self {
        Self {
            plain,
            tls: cluster_health::NodeClients::new(),
        }
    }

    /// The client for `node`; `None` (logged) when its TLS settings cannot
    /// be used.
    fn for_node(&self, node: &NodeSpec) -> Option<reqwest::Client> {
        if !node.url.starts_with("https://") {
            return Some(self.plain.clone());
        }
        match self.tls.client_for(node) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::warn!(node = %node.id, %error, "no TLS client for the node");
                None
            }
        }
    }
}

/// Sends the warm-up requests for one node (see the module docs).
pub(crate) async fn warm_up(
    http: &NodeHttp,
    router: &Router,
    limit: &Semaphore,
    cache: &CacheConfig,
    node: &NodeSpec,
    model: Option<&str>,
) -> WarmupResult {
    let mut result = WarmupResult::default();
    let Some(http) = http.for_node(node) else {
        result.failed = cache.warmup_prompts.len();
        return result;
    };
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

/// What one sync of a node found: its cache and its queue, as far as it
/// publishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SyncReport {
    /// Prompts the node holds (simulator gauge; llama.cpp slots holding a
    /// prompt).
    pub(crate) entries: Option<usize>,
    /// Requests it is running or has queued (llama.cpp, vLLM, SGLang).
    pub(crate) outstanding: Option<u64>,
    /// KV capacity in tokens (vLLM, SGLang).
    pub(crate) token_capacity: Option<u64>,
}

/// Which endpoints of which nodes answered that they are not there (404,
/// or nothing the parsers know): not asked again until the node is
/// rediscovered. Plus what sync learned that outlives one tick.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    silent: Mutex<HashSet<(NodeId, &'static str)>>,
    capacity: Mutex<HashMap<NodeId, u64>>,
}

impl SyncState {
    pub(crate) fn forget(&self, node: &NodeId) {
        self.silent.lock().retain(|(id, _)| id != node);
        self.capacity.lock().remove(node);
    }

    /// The KV capacity (tokens) a vLLM or SGLang node published.
    pub(crate) fn token_capacity(&self, node: &NodeId) -> Option<u64> {
        self.capacity.lock().get(node).copied()
    }

    /// Records a published capacity; true when it changed.
    fn learn_capacity(&self, node: &NodeId, tokens: u64) -> bool {
        self.capacity.lock().insert(node.clone(), tokens) != Some(tokens)
    }

    fn is_silent(&self, node: &NodeId, path: &'static str) -> bool {
        self.silent.lock().contains(&(node.clone(), path))
    }

    fn silence(&self, node: &NodeId, path: &'static str) {
        tracing::debug!(node = %node, path, "node does not publish this; not asked again");
        self.silent.lock().insert((node.clone(), path));
    }
}

/// `GET {url}{path}`: `Ok(Some(body))` on 2xx, `Ok(None)` on 404 (the node
/// does not have it), `Err(())` on any other failure (try again next tick).
async fn get_text(
    http: &NodeHttp,
    node: &NodeSpec,
    path: &str,
    timeout: Duration,
) -> Result<Option<String>, ()> {
    let http = http.for_node(node).ok_or(())?;
    let mut req = http.get(format!("{}{path}", node.url)).timeout(timeout);
    if let Some(key) = &node.api_key {
        req = req.bearer_auth(key.expose());
    }
    let resp = req.send().await.map_err(|_| ())?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(());
    }
    resp.text().await.map(Some).map_err(|_| ())
}

/// Asks one node what it publishes about its cache and queue, by kind:
///
/// * llama.cpp: `GET /slots` (slots holding a prompt → entries) and
///   `GET /metrics` (requests processing + deferred);
/// * vLLM, SGLang: `GET /metrics` (running + waiting; KV capacity);
/// * mlx_lm.server and generic nodes: `GET /metrics` with the simulator's
///   prompt-cache gauges (a real mlx_lm.server answers 404).
///
/// An endpoint that answers 404 or nothing the parsers know is not asked
/// again until the node is rediscovered. `None` when nothing was learned.
pub(crate) async fn sync_node(
    http: &NodeHttp,
    state: &SyncState,
    node: &NodeSpec,
    kind: NodeKind,
    timeout: Duration,
) -> Option<SyncReport> {
    let mut report = SyncReport::default();
    if kind == NodeKind::LlamaCpp && !state.is_silent(&node.id, "/slots") {
        match get_text(http, node, "/slots", timeout).await {
            Ok(Some(body)) => match parse_slots(body.as_bytes()) {
                Ok(slots) => report.entries = Some(summarize_slots(&slots).cached_prompts),
                Err(error) => {
                    tracing::debug!(node = %node.id, %error, "unreadable /slots");
                    state.silence(&node.id, "/slots");
                }
            },
            Ok(None) => state.silence(&node.id, "/slots"),
            Err(()) => {}
        }
    }
    if !state.is_silent(&node.id, "/metrics") {
        match get_text(http, node, "/metrics", timeout).await {
            Ok(Some(text)) => {
                let metrics = parse_metrics(&text);
                let useful = if kind.publishes_metrics() {
                    metrics.outstanding().is_some() || metrics.token_capacity.is_some()
                } else {
                    metrics.entries.is_some()
                };
                if useful {
                    report.outstanding = metrics.outstanding();
                    report.token_capacity = metrics.token_capacity;
                    if report.entries.is_none() {
                        report.entries = metrics.entries;
                    }
                } else {
                    state.silence(&node.id, "/metrics");
                }
            }
            Ok(None) => state.silence(&node.id, "/metrics"),
            Err(()) => {}
        }
    }
    (report != SyncReport::default()).then_some(report)
}

/// Applies one node's report to the router; returns whether a published
/// capacity changed (the snapshot must be rebuilt to apply it).
pub(crate) fn apply_report(
    router: &Router,
    state: &SyncState,
    node: &NodeId,
    report: &SyncReport,
) -> bool {
    if let Some(entries) = report.entries {
        if entries == 0 {
            router.forget_cache(node);
        } else {
            router.sync_cache_entries(node, entries);
        }
    }
    if let Some(requests) = report.outstanding {
        router.record_reported_queue(node, requests);
    }
    report
        .token_capacity
        .is_some_and(|tokens| state.learn_capacity(node, tokens))
}

/// The shared pieces the coordinator tasks use.
#[derive(Debug)]
pub(crate) struct Coordinator {
    pub(crate) http: NodeHttp,
    pub(crate) warmup_limit: Arc<Semaphore>,
    pub(crate) sync: SyncState,
}

impl Coordinator {
    pub(crate) fn new(http: reqwest::Client, cache: &CacheConfig) -> Self {
        Self {
            http: NodeHttp::new(http),
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
