//! The HTTP node: [`SimNode`] serves mlx_lm.server's API on a loopback port
//! and answers with the timings of a [`NodeModel`] run in scaled real time.
//!
//! Simulated time is `real time since start × time_scale`: with a scale of
//! 100 a 20-second prefill takes 0.2 s of wall time, and an hour of traffic
//! runs in 36 s. Every duration in the cost model and in [`FaultConfig`]
//! (except `Retry-After`, which clients read in real seconds) is simulated.
//!
//! Answers follow what `scripts/mlx-server-responses.md` recorded from
//! mlx_lm.server 0.32.2: same paths, statuses, JSON keys in the same order,
//! Python-style JSON spacing, CORS headers, `: keepalive P/T` progress
//! comments, error bodies `{"error": "..."}`. Unlike mlx_lm.server
//! (HTTP/1.0, one connection per request) the simulator keeps HTTP/1.1
//! connections alive by default, so that fast replays do not exhaust
//! ephemeral ports; with [`SimNodeConfig::keep_alive`] false it answers
//! `HTTP/1.0` and closes every connection, as mlx_lm.server does.

mod completion;
mod endpoints;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::to_mlx_json;
use crate::error::SimError;
use crate::faults::FaultConfig;
use crate::model::{NodeLoad, NodeModel, NodeModelConfig, NodeTotals};

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
            Arc::clone(self),
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
    state: Arc<NodeState>,
) {
    let mut connections = JoinSet::new();
    let request = loop {
        tokio::select! {
            request = &mut stop => break request.ok(),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let wire = {
                        let faults = lock(&state.faults);
                        faults.config.wire.map(|w| (w, faults.config.junk_bytes))
                    };
                    if let Some((fault, junk_bytes)) = wire {
                        state.counters.injected_faults.fetch_add(1, Ordering::Relaxed);
                        connections.spawn(wire::serve(stream, fault, junk_bytes));
                        continue;
                    }
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
        let state = Arc::new(NodeState {
            addr,
            origin: Instant::now(),
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

    /// Sets `faults` and drops every open connection, so that a wire fault
    /// ([`FaultConfig::wire`]) applies to every client at once — kept-alive
    /// connections included — as if the process had restarted broken. The
    /// port stays the same; the prompt cache is emptied.
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] when `faults` does not validate,
    /// [`SimError::Bind`] when the port was taken meanwhile.
    pub async fn set_faults_and_reconnect(&self, faults: FaultConfig) -> Result<(), SimError> {
        faults.validate()?;
        self.crash().await;
        lock(&self.state.faults).config = faults;
        self.restart().await
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

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn router(state: Arc<NodeState>) -> Router {
    use completion::{chat_completions, text_completions};
    use endpoints::{
        admin_clear_cache, admin_crash, admin_stats, delete_faults, get_faults, health,
        health_generate, metrics, model_info, models, post_faults, server_info,
    };
    let limit = state.config.max_body_bytes;
    let http10 = !state.config.keep_alive;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{*repo}", get(models))
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
        .fallback(unrouted)
        .method_not_allowed_fallback(unrouted)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(
            move |mut response: Response| async move {
                let headers = response.headers_mut();
                let star = HeaderValue::from_static("*");
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, star.clone());
                headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, star.clone());
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, star);
                if http10 {
                    *response.version_mut() = Version::HTTP_10;
                }
                response
            },
        ))
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

/// A JSON answer with mlx_lm.server's headers.
fn mlx_json_response(status: StatusCode, body: Body) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `{"error": message}` with `status`, as mlx_lm.server writes errors.
fn error_response(status: StatusCode, message: &str) -> Response {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    mlx_json_response(
        status,
        Body::from(to_mlx_json(&ErrorBody { error: message })),
    )
}

/// Plain JSON (non-mlx endpoints: admin, peer-router probes).
fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    mlx_json_response(status, Body::from(bytes))
}

/// Unknown paths and methods, as Python's `BaseHTTPRequestHandler` answers
/// them: GET/POST → 404 `Not Found`, OPTIONS → 204, anything else → 501.
async fn unrouted(method: Method) -> Response {
    match method {
        Method::GET | Method::POST => {
            mlx_json_response(StatusCode::NOT_FOUND, Body::from("Not Found"))
        }
        Method::OPTIONS => mlx_json_response(StatusCode::NO_CONTENT, Body::empty()),
        other => (
            StatusCode::NOT_IMPLEMENTED,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html;charset=utf-8"),
            )],
            format!(
                "<!DOCTYPE HTML>\n<html lang=\"en\">\n<head><title>Error response</title></head>\n<body><h1>Error response</h1><p>Error code: 501</p><p>Message: Unsupported method ('{other}').</p></body>\n</html>\n"
            ),
        )
            .into_response(),
    }
}
