//! Replays a [`Trace`] against OpenAI-compatible servers over HTTP.
//!
//! Any base URL works: a simulated node or fleet, the gateway, a peer router,
//! a real mlx_lm.server. Trace offsets are simulated seconds; the replay
//! divides them by [`ReplayConfig::time_scale`], which should equal the
//! simulated nodes' time scale (1 against real servers).
//!
//! Pacing ([`Pacing`]):
//! * `closed` (default): a session's turn `t + 1` is sent no earlier than its
//!   trace offset *and* no earlier than the reply to turn `t` plus the turn's
//!   think time, as an agent would;
//! * `open`: every request is sent at its trace offset, whatever happened to
//!   the previous turn.
//!
//! Requests go to the targets by session (`session % targets`, so a
//! session's cache stays on one server; with one target this is moot) or
//! round-robin; at most [`ReplayConfig::concurrency`] are in flight, at most
//! [`ReplayConfig::rate_limit`] start per wall second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::api::Usage;
use crate::error::SimError;
use crate::report::{ReplayReport, ReplaySummary, RequestRecord};
use crate::workload::{Expander, Trace, TraceRequest};

/// When requests are sent (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pacing {
    /// Wait for the previous turn's reply plus think time. The default.
    #[default]
    Closed,
    /// Send at the trace offset regardless.
    Open,
}

/// How requests are spread over several targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assignment {
    /// Target `session % n`: sessions stick to one target. The default.
    #[default]
    Session,
    /// Request `i` goes to target `i % n` in sending order.
    RoundRobin,
}

/// Replay settings.
///
/// Defaults: no targets (must be set), time scale 1, 256 requests in flight,
/// no rate limit, closed pacing, session assignment, 600 s wall-clock
/// timeout per request, no API key, every request of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    /// Base URLs (`http://host:port`, without `/v1`).
    pub targets: Vec<String>,
    /// Simulated seconds per wall second.
    pub time_scale: f64,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Most requests started per wall second.
    pub rate_limit: Option<f64>,
    /// Pacing of a session's turns.
    pub pacing: Pacing,
    /// Spreading over targets.
    pub assignment: Assignment,
    /// Wall-clock timeout of one request.
    pub request_timeout: Duration,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// Replay only the first this-many requests of the trace.
    pub max_requests: Option<usize>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            time_scale: 1.0,
            concurrency: 256,
            rate_limit: None,
            pacing: Pacing::Closed,
            assignment: Assignment::Session,
            request_timeout: Duration::from_secs(600),
            api_key: None,
            max_requests: None,
        }
    }
}

fn normalize_target(url: &str) -> Result<String, SimError> {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| SimError::InvalidTarget {
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(SimError::InvalidTarget {
            url: url.to_owned(),
            message: "only http and https are supported".to_owned(),
        });
    }
    Ok(trimmed.to_owned())
}

struct Shared {
    client: reqwest::Client,
    targets: Vec<String>,
    expander: Expander,
    start: Instant,
    scale: f64,
    permits: Semaphore,
    next_slot: Mutex<Instant>,
    rate_interval: Option<Duration>,
    round_robin: AtomicUsize,
    assignment: Assignment,
    api_key: Option<String>,
    records: std::sync::Mutex<Vec<RequestRecord>>,
}

impl Shared {
    fn at(&self, sim_seconds: f64) -> Instant {
        self.start
            + Duration::try_from_secs_f64(sim_seconds / self.scale).unwrap_or(Duration::MAX / 4)
    }

    fn sim_since(&self, t0: Instant, t: Instant) -> f64 {
        t.duration_since(t0).as_secs_f64() * self.scale
    }

    async fn pace(&self) {
        let Some(interval) = self.rate_interval else {
            return;
        };
        let slot = {
            let mut next = self.next_slot.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Replays `trace` against `config.targets`.
///
/// # Errors
/// [`SimError::InvalidTarget`] for an unusable URL or an empty target list,
/// [`SimError::InvalidConfig`] for a bad scale or concurrency,
/// [`SimError::Client`] when the HTTP client cannot be built. Failed
/// requests are not errors: they are counted in the report.
pub async fn replay(trace: &Trace, config: &ReplayConfig) -> Result<ReplayReport, SimError> {
    if config.targets.is_empty() {
        return Err(SimError::InvalidTarget {
            url: String::new(),
            message: "no target given".to_owned(),
        });
    }
    if !(config.time_scale.is_finite() && config.time_scale > 0.0) || config.concurrency == 0 {
        return Err(SimError::InvalidConfig {
            field: "time_scale",
            message: "time scale and concurrency must be positive".to_owned(),
        });
    }
    let targets = config
        .targets
        .iter()
        .map(|t| normalize_target(t))
        .collect::<Result<Vec<_>, _>>()?;
    let client = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .pool_max_idle_per_host(config.concurrency.min(1024))
        .tcp_nodelay(true)
        .build()
        .map_err(|source| SimError::Client { source })?;
    let rate_interval = config
        .rate_limit
        .filter(|r| *r > 0.0 && r.is_finite())
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let start = Instant::now();
    let shared = Arc::new(Shared {
        client,
        targets: targets.clone(),
        expander: Expander::new(&trace.header),
        start,
        scale: config.time_scale,
        permits: Semaphore::new(config.concurrency),
        next_slot: Mutex::new(start),
        rate_interval,
        round_robin: AtomicUsize::new(0),
        assignment: config.assignment,
        api_key: config.api_key.clone(),
        records: std::sync::Mutex::new(Vec::new()),
    });
    let limit = config.max_requests.unwrap_or(usize::MAX);
    let requests: Vec<TraceRequest> = trace.requests.iter().take(limit).cloned().collect();
    let mut tasks = tokio::task::JoinSet::new();
    match config.pacing {
        Pacing::Open => {
            for request in requests {
                let shared = Arc::clone(&shared);
                tasks.spawn(async move {
                    tokio::time::sleep_until(shared.at(request.at)).await;
                    run_one(&shared, &request).await;
                });
            }
        }
        Pacing::Closed => {
            let mut sessions: std::collections::BTreeMap<u32, Vec<TraceRequest>> =
                std::collections::BTreeMap::new();
            for request in requests {
                sessions.entry(request.session).or_default().push(request);
            }
            for (_, mut turns) in sessions {
                turns.sort_by_key(|r| r.turn);
                let shared = Arc::clone(&shared);
                tasks.spawn(async move {
                    let mut previous_end: Option<Instant> = None;
                    for request in turns {
                        let mut due = shared.at(request.at);
                        if let Some(end) = previous_end {
                            let think = Duration::try_from_secs_f64(request.think / shared.scale)
                                .unwrap_or_default();
                            due = due.max(end + think);
                        }
                        tokio::time::sleep_until(due).await;
                        run_one(&shared, &request).await;
                        previous_end = Some(Instant::now());
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let wall = start.elapsed().as_secs_f64();
    let records = std::mem::take(
        &mut *shared
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let summary = ReplaySummary::from_records(&records, &targets, config.time_scale, wall);
    Ok(ReplayReport { summary, records })
}

async fn run_one(shared: &Shared, request: &TraceRequest) {
    let Ok(_permit) = shared.permits.acquire().await else {
        return;
    };
    shared.pace().await;
    let n = shared.targets.len();
    let target = match shared.assignment {
        Assignment::Session => request.session as usize % n,
        Assignment::RoundRobin => shared.round_robin.fetch_add(1, Ordering::Relaxed) % n,
    };
    let body = shared.expander.body(request);
    let url = format!("{}/v1/chat/completions", shared.targets[target]);
    let sent = Instant::now();
    let mut record = RequestRecord {
        session: request.session,
        turn: request.turn,
        target,
        scheduled_s: request.at,
        sent_s: shared.sim_since(shared.start, sent),
        status: None,
        error: None,
        ttfb_s: None,
        ttft_s: None,
        latency_s: 0.0,
        prompt_tokens: 0,
        cached_tokens: 0,
        completion_tokens: 0,
    };
    let outcome = send(shared, &url, body, sent, &mut record).await;
    if let Err(kind) = outcome {
        record.error = Some(kind);
    }
    record.latency_s = shared.sim_since(sent, Instant::now());
    shared
        .records
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(record);
}

fn classify(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connect".to_owned()
    } else if error.is_body() || error.is_decode() {
        "body".to_owned()
    } else {
        "request".to_owned()
    }
}

fn apply_usage(record: &mut RequestRecord, usage: &Value) {
    if let Ok(usage) = serde_json::from_value::<Usage>(usage.clone()) {
        record.prompt_tokens = usage.prompt_tokens;
        record.cached_tokens = usage.prompt_tokens_details.cached_tokens;
        record.completion_tokens = usage.completion_tokens;
    }
}

fn has_content(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .is_some_and(|choice| {
            let delta = choice.get("delta").unwrap_or(choice);
            ["content", "reasoning", "reasoning_content", "text"]
                .iter()
                .any(|k| {
                    delta
                        .get(k)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                })
                || delta.get("tool_calls").is_some()
        })
}

async fn send(
    shared: &Shared,
    url: &str,
    body: Vec<u8>,
    sent: Instant,
    record: &mut RequestRecord,
) -> Result<(), String> {
    let mut builder = shared
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(key) = &shared.api_key {
        builder = builder.bearer_auth(key);
    }
    let response = builder.send().await.map_err(|e| classify(&e))?;
    let status = response.status();
    record.status = Some(status.as_u16());
    let streaming = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut done = false;
    let mut body_error = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                body_error = Some(classify(&e));
                break;
            }
        };
        let now = Instant::now();
        if record.ttfb_s.is_none() && !chunk.is_empty() {
            record.ttfb_s = Some(shared.sim_since(sent, now));
        }
        buffer.extend_from_slice(&chunk);
        if streaming && status.is_success() {
            // Handle every complete line.
            while let Some(pos) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim_start();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let value: Value =
                    serde_json::from_str(data).map_err(|_| "invalid_json".to_owned())?;
                if record.ttft_s.is_none() && has_content(&value) {
                    record.ttft_s = Some(shared.sim_since(sent, now));
                }
                if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
                    apply_usage(record, usage);
                }
            }
        }
    }
    if let Some(kind) = body_error {
        return Err(kind);
    }
    if !status.is_success() {
        return Err(format!("http_{}", status.as_u16()));
    }
    if streaming {
        if !done {
            return Err("incomplete_stream".to_owned());
        }
        return Ok(());
    }
    record.ttft_s = Some(shared.sim_since(sent, Instant::now()));
    let value: Value = serde_json::from_slice(&buffer).map_err(|_| "invalid_json".to_owned())?;
    if let Some(usage) = value.get("usage") {
        apply_usage(record, usage);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_normalized() {
        assert_eq!(
            normalize_target("http://127.0.0.1:8080/v1/").ok(),
            Some("http://127.0.0.1:8080".to_owned())
        );
        assert!(normalize_target("ftp://x").is_err());
        assert!(normalize_target("not a url").is_err());
    }

    #[test]
    fn content_detection() {
        let chunk: Value =
            serde_json::json!({"choices": [{"delta": {"role": "assistant", "content": "hi"}}]});
        assert!(has_content(&chunk));
        let empty: Value = serde_json::json!({"choices": [{"delta": {"role": "assistant"}}]});
        assert!(!has_content(&empty));
        let usage: Value = serde_json::json!({"choices": [], "usage": {}});
        assert!(!has_content(&usage));
    }
}
