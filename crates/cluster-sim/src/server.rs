//! The HTTP node: [`SimNode`] serves mlx_lm.server's API on a loopback port
//! and answers with the timings of a [`NodeModel`] run in scaled real time.
//!
//! Simulated time is `real time since start × time_scale`: with a scale of
//! 100 a 20-second prefill takes 0.2 s of wall time, and an hour of traffic
//! runs in 36 s. Every duration in the cost model and in [`FaultConfig`]
//! (except `Retry-After`, which clients read in real seconds) is simulated.
//!
//! Unlike mlx_lm.server (HTTP/1.0, one connection per request) the simulator
//! speaks HTTP/1.1 with keep-alive by default so that fast replays do not
//! exhaust ephemeral ports; set [`SimNodeConfig::keep_alive`] to false to
//! close the connection after every response as mlx_lm.server does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::{
    ChatRequest, Choice, CompletionBody, Delta, ModelCard, ModelList, TextRequest, Usage,
};
use crate::error::SimError;
use crate::faults::{FaultAction, FaultConfig};
use crate::model::{Admission, NodeLoad, NodeModel, NodeModelConfig, NodeTotals, SimRequest};

/// Configuration of one HTTP node.
///
/// Defaults: id `sim-0`, model `mlx-community/Qwen3-30B-A3B-4bit`, bind
/// `127.0.0.1:0` (an ephemeral port), time scale 1, the default
/// [`NodeModelConfig`], no faults, seed 0, keep-alive on, 512 output tokens
/// when a request sets no limit, stream chunks at least 2 ms apart (real
/// time), 64 MiB request bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimNodeConfig {
    /// Node name (shown in `/get_server_info` and metrics labels).
    pub id: String,
    /// Model id served at `/v1/models`.
    pub model_id: String,
    /// Address to listen on; port 0 picks an ephemeral port.
    pub bind: SocketAddr,
    /// Simulated seconds per real second (must be > 0).
    pub time_scale: f64,
    /// Cost model and capacity.
    pub model: NodeModelConfig,
    /// Faults injected from the start.
    pub faults: FaultConfig,
    /// Seed of the fault and id generator.
    pub seed: u64,
    /// Keep connections open between requests (mlx_lm.server does not).
    pub keep_alive: bool,
    /// Output tokens generated when a request sets no `max_tokens`.
    pub default_max_tokens: u32,
    /// Minimum real time between two streamed content chunks, in
    /// milliseconds; tokens due in between are sent together.
    pub stream_chunk_interval_ms: f64,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for SimNodeConfig {
    fn default() -> Self {
        Self {
            id: "sim-0".to_owned(),
            model_id: "mlx-community/Qwen3-30B-A3B-4bit".to_owned(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            time_scale: 1.0,
            model: NodeModelConfig::default(),
            faults: FaultConfig::default(),
            seed: 0,
            keep_alive: true,
            default_max_tokens: 512,
            stream_chunk_interval_ms: 2.0,
            max_body_bytes: 64 << 20,
        }
    }
}

impl SimNodeConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(SimError::InvalidConfig {
                field: "time_scale",
                message: format!("{} is not a positive number", self.time_scale),
            });
        }
        let m = &self.model;
        if !(m.prefill_tokens_per_second > 0.0 && m.decode_tokens_per_second > 0.0) {
            return Err(SimError::InvalidConfig {
                field: "model",
                message: "token rates must be positive".to_owned(),
            });
        }
        if m.max_concurrency == 0 || m.cache_entries == 0 {
            return Err(SimError::InvalidConfig {
                field: "model",
                message: "max_concurrency and cache_entries must be at least 1".to_owned(),
            });
        }
        self.faults.validate()
    }
}

#[derive(Debug, Default)]
struct Counters {
    http_requests: AtomicU64,
    completions: AtomicU64,
    injected_faults: AtomicU64,
    rejected_overload: AtomicU64,
}

#[derive(Debug)]
struct FaultState {
    config: FaultConfig,
    rng: StdRng,
}

struct StopRequest {
    /// How long open connections live on after the listener is closed.
    grace: Duration,
    /// Told once the listener is closed.
    closed: oneshot::Sender<()>,
}

struct ServerHandle {
    stop: oneshot::Sender<StopRequest>,
    task: tokio::task::JoinHandle<()>,
}

struct NodeState {
    config: SimNodeConfig,
    addr: SocketAddr,
    origin: Instant,
    created: u64,
    fingerprint: String,
    model: Mutex<NodeModel>,
    faults: Mutex<FaultState>,
    ids: Mutex<StdRng>,
    counters: Counters,
    server: Mutex<Option<ServerHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NodeState {
    fn sim_now(&self) -> Duration {
        self.origin.elapsed().mul_f64(self.config.time_scale)
    }

    fn real_at(&self, sim: Duration) -> Instant {
        self.origin + sim.div_f64(self.config.time_scale)
    }

    fn real_duration(&self, sim: Duration) -> Duration {
        sim.div_f64(self.config.time_scale)
    }

    fn new_id(&self, prefix: &str) -> String {
        let v: u128 = lock(&self.ids).random();
        let hex = format!("{v:032x}");
        format!(
            "{prefix}{}-{}-4{}-a{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        )
    }

    fn is_listening(&self) -> bool {
        lock(&self.server).is_some()
    }

    async fn listen(self: &Arc<Self>, listener: TcpListener) {
        let router = router(Arc::clone(self));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            router,
            stopped,
            self.config.keep_alive,
        ));
        // Dropping a previous handle's sender stops its loop.
        drop(lock(&self.server).replace(ServerHandle { stop, task }));
    }

    /// Closes the listener (new connections are refused once this returns)
    /// and drops every open connection after `grace`; with no grace, waits
    /// until they are gone.
    async fn stop_listening(&self, grace: Duration) {
        let handle = lock(&self.server).take();
        if let Some(handle) = handle {
            let (closed, is_closed) = oneshot::channel();
            let _ = handle.stop.send(StopRequest { grace, closed });
            let _ = is_closed.await;
            if grace.is_zero() {
                let _ = handle.task.await;
            }
        }
    }

    async fn restart(self: &Arc<Self>) -> Result<(), SimError> {
        if self.is_listening() {
            return Ok(());
        }
        lock(&self.model).reset();
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: self.addr,
                source,
            })?;
        self.listen(listener).await;
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    mut stop: oneshot::Receiver<StopRequest>,
    keep_alive: bool,
) {
    let mut connections = JoinSet::new();
    let request = loop {
        tokio::select! {
            request = &mut stop => break request.ok(),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let service = hyper_util::service::TowerToHyperService::new(router.clone());
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.keep_alive(keep_alive);
                    connections.spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http.serve_connection(io, service).await;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    if let Some(request) = request {
        let _ = request.closed.send(());
        if !request.grace.is_zero() {
            tokio::time::sleep(request.grace).await;
        }
    }
    // Abort every connection: a crash, not a drain.
    connections.abort_all();
}

/// A running simulated node (see the module docs). Dropping it stops the
/// server.
pub struct SimNode {
    state: Arc<NodeState>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("id", &self.state.config.id)
            .field("addr", &self.state.addr)
            .finish_non_exhaustive()
    }
}

impl SimNode {
    /// Binds `config.bind` and starts serving.
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] for a bad configuration, [`SimError::Bind`]
    /// when the address cannot be bound.
    pub async fn start(config: SimNodeConfig) -> Result<Self, SimError> {
        config.validate()?;
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.bind,
            source,
        })?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let state = Arc::new(NodeState {
            addr,
            origin: Instant::now(),
            created,
            fingerprint: format!("cluster-sim-{}-{}", env!("CARGO_PKG_VERSION"), config.id),
            model: Mutex::new(NodeModel::new(config.model.clone())),
            faults: Mutex::new(FaultState {
                config: config.faults.clone(),
                rng: StdRng::seed_from_u64(config.seed),
            }),
            ids: Mutex::new(StdRng::seed_from_u64(config.seed ^ 0x1d5)),
            counters: Counters::default(),
            server: Mutex::new(None),
            config,
        });
        state.listen(listener).await;
        tracing::info!(id = %state.config.id, %addr, "simulated node listening");
        Ok(Self { state })
    }

    /// The node's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.state.config.id
    }

    /// The configuration it was started with.
    #[must_use]
    pub fn config(&self) -> &SimNodeConfig {
        &self.state.config
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash, no `/v1`).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// Simulated time since the node started.
    #[must_use]
    pub fn sim_now(&self) -> Duration {
        self.state.sim_now()
    }

    /// The current faults.
    #[must_use]
    pub fn faults(&self) -> FaultConfig {
        lock(&self.state.faults).config.clone()
    }

    /// Replaces the faults.
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] when `faults` does not validate.
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), SimError> {
        faults.validate()?;
        lock(&self.state.faults).config = faults;
        Ok(())
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.state.faults).config = FaultConfig::default();
    }

    /// Stops listening and drops every open connection, like a crashed
    /// process. Returns once the port is closed.
    pub async fn crash(&self) {
        self.state.stop_listening(Duration::ZERO).await;
    }

    /// Listens again on the same port after [`SimNode::crash`], with an
    /// empty prompt cache and queue (a restarted process). No-op when running.
    ///
    /// # Errors
    /// [`SimError::Bind`] when the port was taken meanwhile.
    pub async fn restart(&self) -> Result<(), SimError> {
        self.state.restart().await
    }

    /// Whether the node is accepting connections.
    #[must_use]
    pub fn is_listening(&self) -> bool {
        self.state.is_listening()
    }

    /// Load of the cost model now.
    #[must_use]
    pub fn load(&self) -> NodeLoad {
        let now = self.state.sim_now();
        lock(&self.state.model).load(now)
    }

    /// Cumulative counters of the cost model.
    #[must_use]
    pub fn totals(&self) -> NodeTotals {
        lock(&self.state.model).totals()
    }

    /// Runs `f` on the node's cost model (for inspection in tests).
    pub fn with_model<R>(&self, f: impl FnOnce(&NodeModel) -> R) -> R {
        f(&lock(&self.state.model))
    }

    /// Empties the prompt cache.
    pub fn clear_cache(&self) {
        lock(&self.state.model).clear_cache();
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(self) {
        self.state.stop_listening(Duration::ZERO).await;
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        // Dropping the stop sender ends the accept loop.
        drop(lock(&self.state.server).take());
    }
}

fn router(state: Arc<NodeState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{*repo}", get(model_filtered))
        .route("/health", get(health))
        .route("/health_generate", get(health_generate))
        .route("/get_model_info", get(model_info))
        .route("/get_server_info", get(server_info))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/completions", post(text_completions))
        .route(
            "/admin/faults",
            get(get_faults)
                .post(post_faults)
                .put(post_faults)
                .delete(delete_faults),
        )
        .route("/admin/crash", post(admin_crash))
        .route("/admin/cache", axum::routing::delete(admin_clear_cache))
        .route("/admin/stats", get(admin_stats))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(
    State(state): State<Arc<NodeState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    state.counters.http_requests.fetch_add(1, Ordering::Relaxed);
    next.run(request).await
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, &ErrorBody { error: message })
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        "Not Found",
    )
        .into_response()
}

fn health_blocked(state: &NodeState) -> Option<Response> {
    lock(&state.faults)
        .config
        .fail_health
        .then(|| error_response(StatusCode::SERVICE_UNAVAILABLE, "simulated unhealthy node"))
}

async fn models(State(state): State<Arc<NodeState>>) -> Response {
    if let Some(blocked) = health_blocked(&state) {
        return blocked;
    }
    json_response(StatusCode::OK, &model_list(&state, None))
}

async fn model_filtered(State(state): State<Arc<NodeState>>, Path(repo): Path<String>) -> Response {
    if let Some(blocked) = health_blocked(&state) {
        return blocked;
    }
    json_response(StatusCode::OK, &model_list(&state, Some(&repo)))
}

fn model_list(state: &NodeState, filter: Option<&str>) -> ModelList {
    let data = (filter.is_none_or(|f| f == state.config.model_id))
        .then(|| ModelCard {
            id: state.config.model_id.clone(),
            object: "model".to_owned(),
            created: state.created,
        })
        .into_iter()
        .collect();
    ModelList {
        object: "list".to_owned(),
        data,
    }
}

async fn health(State(state): State<Arc<NodeState>>) -> Response {
    if let Some(blocked) = health_blocked(&state) {
        return blocked;
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status": "ok"}"#,
    )
        .into_response()
}

async fn health_generate(State(state): State<Arc<NodeState>>) -> Response {
    if let Some(blocked) = health_blocked(&state) {
        return blocked;
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

async fn model_info(State(state): State<Arc<NodeState>>) -> Response {
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

async fn server_info(State(state): State<Arc<NodeState>>) -> Response {
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

async fn metrics(State(state): State<Arc<NodeState>>) -> Response {
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

async fn get_faults(State(state): State<Arc<NodeState>>) -> Response {
    json_response(StatusCode::OK, &lock(&state.faults).config)
}

async fn post_faults(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
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

async fn delete_faults(State(state): State<Arc<NodeState>>) -> Response {
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

async fn admin_crash(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
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

async fn admin_clear_cache(State(state): State<Arc<NodeState>>) -> Response {
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

async fn admin_stats(State(state): State<Arc<NodeState>>) -> Response {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

async fn chat_completions(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("Invalid JSON in request body: {e}"),
            );
        }
    };
    let output = request
        .output_limit()
        .unwrap_or(state.config.default_max_tokens);
    let include_usage = request.include_usage();
    let sim = SimRequest::from_chat(request.prompt_tokens(), output as usize);
    let meta = RequestMeta {
        kind: Kind::Chat,
        model: request.model,
        stream: request.stream,
        include_usage,
    };
    serve_completion(state, meta, sim).await
}

async fn text_completions(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let request: TextRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("Invalid JSON in request body: {e}"),
            );
        }
    };
    let output = request
        .max_tokens
        .unwrap_or(state.config.default_max_tokens);
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let sim = SimRequest::from_text(&request.prompt, output as usize);
    let meta = RequestMeta {
        kind: Kind::Text,
        model: request.model,
        stream: request.stream,
        include_usage,
    };
    serve_completion(state, meta, sim).await
}

struct RequestMeta {
    kind: Kind,
    model: String,
    stream: bool,
    include_usage: bool,
}

fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn serve_completion(
    state: Arc<NodeState>,
    meta: RequestMeta,
    request: SimRequest,
) -> Response {
    state.counters.completions.fetch_add(1, Ordering::Relaxed);
    let decision = {
        let mut faults = lock(&state.faults);
        let FaultState { config, rng } = &mut *faults;
        config.decide(rng)
    };
    if decision.action != FaultAction::Serve || decision.spike > Duration::ZERO {
        state
            .counters
            .injected_faults
            .fetch_add(1, Ordering::Relaxed);
    }
    if decision.spike > Duration::ZERO {
        tokio::time::sleep(state.real_duration(decision.spike)).await;
    }
    match decision.action {
        FaultAction::Hang => return std::future::pending::<Response>().await,
        FaultAction::Overload {
            status,
            retry_after_seconds,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let response = error_response(status, "simulated overload");
            return with_retry_after(response, retry_after_seconds);
        }
        FaultAction::Error { status } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error_response(status, "simulated internal error");
        }
        FaultAction::Garbage | FaultAction::Close | FaultAction::Serve => {}
    }
    let admitted = {
        let now = state.sim_now();
        lock(&state.model).admit(now, &request)
    };
    let admission = match admitted {
        Ok(a) => a,
        Err(full) => {
            state
                .counters
                .rejected_overload
                .fetch_add(1, Ordering::Relaxed);
            let seconds = state.real_duration(full.retry_after).as_secs_f64().ceil();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let seconds = seconds as u64;
            let response = error_response(StatusCode::SERVICE_UNAVAILABLE, &full.to_string());
            return with_retry_after(response, seconds);
        }
    };
    let reply = request.reply_text();
    let id = state.new_id(match meta.kind {
        Kind::Chat => "chatcmpl-",
        Kind::Text => "cmpl-",
    });
    let plan = ResponsePlan {
        state,
        admission,
        meta,
        id,
        reply,
        action: decision.action,
    };
    if plan.meta.stream {
        stream_response(plan)
    } else {
        full_response(plan).await
    }
}

struct ResponsePlan {
    state: Arc<NodeState>,
    admission: Admission,
    meta: RequestMeta,
    id: String,
    reply: String,
    action: FaultAction,
}

impl ResponsePlan {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.meta.kind, chunk) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn usage(&self) -> Usage {
        let a = &self.admission;
        Usage::new(
            a.prompt_tokens as u64,
            a.output_tokens as u64,
            a.cached_tokens as u64,
        )
    }

    fn finish_reason(&self) -> &'static str {
        if self.admission.output_tokens == 0 {
            "stop"
        } else {
            "length"
        }
    }

    fn body(
        &self,
        chunk: bool,
        text: Option<&str>,
        finish: Option<&'static str>,
        usage: Option<Usage>,
    ) -> Vec<u8> {
        let (message, delta, plain) = match (self.meta.kind, chunk) {
            (Kind::Chat, false) => (
                Some(Delta {
                    role: "assistant",
                    content: text,
                }),
                None,
                None,
            ),
            (Kind::Chat, true) => (
                None,
                Some(Delta {
                    role: "assistant",
                    content: text,
                }),
                None,
            ),
            (Kind::Text, _) => (None, None, Some(text.unwrap_or(""))),
        };
        let body = CompletionBody {
            id: &self.id,
            system_fingerprint: &self.state.fingerprint,
            object: self.object(chunk),
            model: &self.meta.model,
            created: self.state.created,
            choices: vec![Choice {
                index: 0,
                finish_reason: finish,
                message,
                delta,
                text: plain,
            }],
            usage,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    fn usage_chunk(&self) -> Vec<u8> {
        let body = CompletionBody {
            id: &self.id,
            system_fingerprint: &self.state.fingerprint,
            object: "chat.completion",
            model: &self.meta.model,
            created: self.state.created,
            choices: Vec::new(),
            usage: Some(self.usage()),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    fn reply_slice(&self, from: usize, to: usize) -> &str {
        let n = self.reply.len();
        let a = (from * crate::tokenizer::BYTES_PER_TOKEN).min(n);
        let b = (to * crate::tokenizer::BYTES_PER_TOKEN).min(n);
        self.reply.get(a..b).unwrap_or("")
    }
}

fn closed_mid_response() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "simulated connection close",
    )
}

const GARBAGE: &str = "{\"id\": \"garbage\", \"object\": \"chat.completion\", \"choices\": [{\"index\": 0, \"mess\u{fffd}";

async fn full_response(plan: ResponsePlan) -> Response {
    tokio::time::sleep_until(plan.state.real_at(plan.admission.finish)).await;
    let body = match plan.action {
        FaultAction::Garbage => GARBAGE.as_bytes().to_vec(),
        _ => {
            let text = plan.reply_slice(0, plan.admission.output_tokens);
            let text = (!text.is_empty()).then_some(text);
            plan.body(false, text, Some(plan.finish_reason()), Some(plan.usage()))
        }
    };
    let headers = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    if plan.action == FaultAction::Close {
        let len = body.len();
        let half = Bytes::from(body).slice(..len / 2);
        // Let the headers and the first half leave before the connection drops.
        let cut = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(closed_mid_response())
        });
        let parts = futures::stream::iter([Ok::<_, std::io::Error>(half)]).chain(cut);
        let mut response = (StatusCode::OK, headers, Body::from_stream(parts)).into_response();
        if let Ok(value) = HeaderValue::from_str(&len.to_string()) {
            response.headers_mut().insert(header::CONTENT_LENGTH, value);
        }
        return response;
    }
    (StatusCode::OK, headers, body).into_response()
}

enum Phase {
    Prefill { next: usize },
    Tokens { next: usize },
    Usage,
    Done,
    End,
}

struct StreamState {
    plan: ResponsePlan,
    phase: Phase,
    interval: Duration,
    next_chunk: Option<Instant>,
    close_after: Option<usize>,
}

fn sse_data(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl StreamState {
    async fn next_item(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        let a = &self.plan.admission;
        let state = Arc::clone(&self.plan.state);
        match self.phase {
            Phase::Prefill { next } => {
                let step = self.plan.state.config.model.prefill_step_tokens.max(1);
                let target = if next == 0 {
                    // The first progress report comes after the first step.
                    (a.cached_tokens + step).min(a.prompt_tokens)
                } else {
                    next
                };
                tokio::time::sleep_until(state.real_at(a.prefill_progress_time(target))).await;
                self.phase = if target >= a.prompt_tokens {
                    Phase::Tokens { next: 0 }
                } else {
                    Phase::Prefill {
                        next: (target + step).min(a.prompt_tokens),
                    }
                };
                let line = format!(": keepalive {target}/{}\n\n", a.prompt_tokens);
                Some(Ok(Bytes::from(line)))
            }
            Phase::Tokens { next } => {
                let total = a.output_tokens;
                if self.close_after.is_some_and(|c| next >= c) {
                    self.phase = Phase::End;
                    return Some(Err(closed_mid_response()));
                }
                if next >= total {
                    self.phase = if self.plan.meta.include_usage {
                        Phase::Usage
                    } else {
                        Phase::Done
                    };
                    tokio::time::sleep_until(state.real_at(a.finish)).await;
                    let body = self
                        .plan
                        .body(true, None, Some(self.plan.finish_reason()), None);
                    return Some(Ok(sse_data(&body)));
                }
                let due = state.real_at(a.token_time(next));
                tokio::time::sleep_until(self.next_chunk.map_or(due, |n| n.max(due))).await;
                if self.plan.action == FaultAction::Garbage {
                    self.phase = Phase::Done;
                    return Some(Ok(sse_data(GARBAGE.as_bytes())));
                }
                let now = Instant::now();
                let mut end = next + 1;
                let limit = self.close_after.unwrap_or(total).min(total);
                while end < limit && state.real_at(a.token_time(end)) <= now {
                    end += 1;
                }
                self.phase = Phase::Tokens { next: end };
                let body = self
                    .plan
                    .body(true, Some(self.plan.reply_slice(next, end)), None, None);
                // Tokens due before the next chunk may go out join it.
                self.next_chunk = Some(now + self.interval);
                Some(Ok(sse_data(&body)))
            }
            Phase::Usage => {
                self.phase = Phase::Done;
                Some(Ok(sse_data(&self.plan.usage_chunk())))
            }
            Phase::Done => {
                self.phase = Phase::End;
                Some(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            }
            Phase::End => None,
        }
    }
}

fn stream_response(plan: ResponsePlan) -> Response {
    let interval = Duration::try_from_secs_f64(plan.state.config.stream_chunk_interval_ms / 1000.0)
        .unwrap_or_default();
    let close_after =
        (plan.action == FaultAction::Close).then_some(plan.admission.output_tokens / 2);
    let state = StreamState {
        plan,
        phase: Phase::Prefill { next: 0 },
        interval,
        next_chunk: None,
        close_after,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        s.next_item().await.map(|item| (item, s))
    })
    .boxed();
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
