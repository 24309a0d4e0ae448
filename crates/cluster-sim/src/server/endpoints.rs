//! Non-completion endpoints: models and health (as mlx_lm.server), the
//! probes peer routers use (`/health_generate`, `/get_model_info`,
//! `/get_server_info`, `/metrics`) and the admin API (`/admin/...`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{NodeState, error_response, json_response, lock, mlx_json_response, unix_now};
use crate::api::{ModelCard, ModelList, to_mlx_json};
use crate::faults::FaultConfig;
use crate::model::{NodeLoad, NodeModelConfig, NodeTotals};

/// `fail_health` makes the health probes and `/v1/models` answer 503.
fn health_blocked(state: &NodeState) -> Option<Response> {
    lock(&state.faults).config.fail_health.then(|| {
        mlx_json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Body::from(r#"{"status": "unavailable"}"#),
        )
    })
}

/// `GET /v1/models` and `GET /v1/models/<anything>`: the served model, with
/// `created` the time of this request (as mlx_lm.server does).
pub(super) async fn models(State(state): State<Arc<NodeState>>) -> Response {
    if let Some(blocked) = health_blocked(&state) {
        return blocked;
    }
    let list = ModelList {
        object: "list".to_owned(),
        data: vec![ModelCard {
            id: state.config.model_id.clone(),
            object: "model".to_owned(),
            created: unix_now(),
        }],
    };
    mlx_json_response(StatusCode::OK, Body::from(to_mlx_json(&list)))
}

/// `GET /health`: `{"status": "ok"}`, or 503 `{"status": "unavailable"}`
/// when the generation thread is dead (or `fail_health` is set).
pub(super) async fn health(State(state): State<Arc<NodeState>>) -> Response {
    let dead = lock(&state.faults).config.generation_dead;
    if let Some(blocked) = health_blocked(&state) {
        return blocked;
    }
    if dead {
        return mlx_json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Body::from(r#"{"status": "unavailable"}"#),
        );
    }
    mlx_json_response(StatusCode::OK, Body::from(r#"{"status": "ok"}"#))
}

/// `GET /health_generate` (SGLang): 200, empty; 503 when unhealthy or the
/// generation thread is dead.
pub(super) async fn health_generate(State(state): State<Arc<NodeState>>) -> Response {
    let dead = lock(&state.faults).config.generation_dead;
    if let Some(blocked) = health_blocked(&state) {
        return blocked;
    }
    if dead {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    StatusCode::OK.into_response()
}

#[derive(Serialize)]
struct ModelInfo<'a> {
    model_path: &'a str,
    tokenizer_path: &'a str,
    is_generation: bool,
    served_model_name: &'a str,
    model_type: &'a str,
    architectures: [&'a str; 1],
}

pub(super) async fn model_info(State(state): State<Arc<NodeState>>) -> Response {
    let id = state.config.model_id.as_str();
    json_response(
        StatusCode::OK,
        &ModelInfo {
            model_path: id,
            tokenizer_path: id,
            is_generation: true,
            served_model_name: id,
            model_type: "qwen3_moe",
            architectures: ["Qwen3MoeForCausalLM"],
        },
    )
}

#[derive(Serialize)]
struct ServerInfo<'a> {
    version: &'a str,
    node_id: &'a str,
    model_path: &'a str,
    served_model_name: &'a str,
    max_running_requests: usize,
    max_queued_requests: Option<usize>,
    prompt_cache_size: usize,
    prompt_cache_tokens: Option<usize>,
    time_scale: f64,
    sim_time_seconds: f64,
    load: NodeLoad,
    totals: NodeTotals,
    model: &'a NodeModelConfig,
}

pub(super) async fn server_info(State(state): State<Arc<NodeState>>) -> Response {
    let now = state.sim_now();
    let (load, totals) = {
        let model = lock(&state.model);
        (model.load(now), model.totals())
    };
    let m = &state.config.model;
    json_response(
        StatusCode::OK,
        &ServerInfo {
            version: concat!("cluster-sim-", env!("CARGO_PKG_VERSION")),
            node_id: &state.config.id,
            model_path: &state.config.model_id,
            served_model_name: &state.config.model_id,
            max_running_requests: m.max_concurrency,
            max_queued_requests: m.max_queue,
            prompt_cache_size: m.cache_entries,
            prompt_cache_tokens: m.cache_tokens,
            time_scale: state.config.time_scale,
            sim_time_seconds: now.as_secs_f64(),
            load,
            totals,
            model: m,
        },
    )
}

pub(super) async fn metrics(State(state): State<Arc<NodeState>>) -> Response {
    let now = state.sim_now();
    let (load, totals, cache_max) = {
        let mut model = lock(&state.model);
        model.settle(now);
        (model.load(now), model.totals(), model.cache().max_entries())
    };
    let text = crate::metrics::render(&crate::metrics::MetricsInput {
        node_id: &state.config.id,
        model_id: &state.config.model_id,
        load,
        totals,
        cache_max_entries: cache_max,
        kv_bytes_per_token: state.config.model.kv_bytes_per_token,
        http_requests: state.counters.http_requests.load(Ordering::Relaxed),
        injected_faults: state.counters.injected_faults.load(Ordering::Relaxed),
        rejected_overload: state.counters.rejected_overload.load(Ordering::Relaxed),
        sim_seconds: now.as_secs_f64(),
    });
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

pub(super) async fn get_faults(State(state): State<Arc<NodeState>>) -> Response {
    json_response(StatusCode::OK, &lock(&state.faults).config)
}

pub(super) async fn post_faults(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let faults: FaultConfig = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("invalid faults: {e}")),
    };
    if let Err(e) = faults.validate() {
        return error_response(StatusCode::BAD_REQUEST, &e.to_string());
    }
    lock(&state.faults).config = faults.clone();
    tracing::info!(id = %state.config.id, ?faults, "faults replaced");
    json_response(StatusCode::OK, &faults)
}

pub(super) async fn delete_faults(State(state): State<Arc<NodeState>>) -> Response {
    let faults = FaultConfig::default();
    lock(&state.faults).config = faults.clone();
    json_response(StatusCode::OK, &faults)
}

/// Real time open connections survive a `POST /admin/crash`: 50 ms.
const CRASH_GRACE: Duration = Duration::from_millis(50);

/// Body of `POST /admin/crash`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CrashRequest {
    /// Simulated seconds after which the node listens again; none = stay down.
    restart_after_seconds: Option<f64>,
}

pub(super) async fn admin_crash(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let request: CrashRequest = if body.is_empty() {
        CrashRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid crash request: {e}"),
                );
            }
        }
    };
    let restart = match request
        .restart_after_seconds
        .map(Duration::try_from_secs_f64)
    {
        None => None,
        Some(Ok(d)) => Some(state.real_duration(d)),
        Some(Err(_)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "restart_after_seconds is not a duration",
            );
        }
    };
    // New connections are refused from here on; open ones (this one too)
    // are dropped after the grace, which lets this answer leave.
    state.stop_listening(CRASH_GRACE).await;
    tracing::warn!(id = %state.config.id, "simulated crash");
    if let Some(delay) = restart {
        let node = Arc::clone(&state);
        tokio::spawn(async move {
            tokio::time::sleep(CRASH_GRACE + delay).await;
            if let Err(error) = node.restart().await {
                tracing::error!(%error, "simulated restart failed");
            }
        });
    }
    (
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"crashing"}"#,
    )
        .into_response()
}

pub(super) async fn admin_clear_cache(State(state): State<Arc<NodeState>>) -> Response {
    lock(&state.model).clear_cache();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Serialize)]
struct Stats {
    node_id: String,
    sim_time_seconds: f64,
    load: NodeLoad,
    totals: NodeTotals,
    cache_entry_tokens: Vec<usize>,
    faults: FaultConfig,
}

pub(super) async fn admin_stats(State(state): State<Arc<NodeState>>) -> Response {
    let now = state.sim_now();
    let (load, totals, entries) = {
        let mut model = lock(&state.model);
        model.settle(now);
        (
            model.load(now),
            model.totals(),
            model.cache().entry_lengths(),
        )
    };
    json_response(
        StatusCode::OK,
        &Stats {
            node_id: state.config.id.clone(),
            sim_time_seconds: now.as_secs_f64(),
            load,
            totals,
            cache_entry_tokens: entries,
            faults: lock(&state.faults).config.clone(),
        },
    )
}
