//! Changes without restarts at the gateway: `SIGHUP` and `POST
//! /admin/config/reload` re-read the configuration file, and `POST
//! /admin/nodes` / `DELETE /admin/nodes/{id}` add and remove static nodes
//! at run time (admin token required; kept in memory only, a restart
//! forgets them). What a reload changes is
//! `cluster_facade::Cluster::reload`'s business (docs/gateway.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use cluster_facade::{Cluster, FacadeError, ReloadReport};
use cluster_types::{NodeId, NodeSpec};
use http::{HeaderMap, StatusCode};
use serde::Serialize;

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::ops::{authorize, unauthorized_response};

/// Error code of a reload refused for an invalid configuration (every
/// problem is in `problems`).
pub(crate) const INVALID_CONFIG: &str = "invalid_config";

/// Re-reads the configuration `serve` was started with and applies it.
#[derive(Debug, Clone)]
pub struct ConfigReloader {
    cluster: Cluster,
    path: Option<PathBuf>,
    listen: Option<SocketAddr>,
}

impl ConfigReloader {
    /// A reloader of `path` (none: the built-in default configuration) for
    /// `cluster`; `listen` is the `--listen` override `serve` was given.
    #[must_use]
    pub fn new(cluster: Cluster, path: Option<PathBuf>, listen: Option<SocketAddr>) -> Self {
        Self {
            cluster,
            path,
            listen,
        }
    }

    /// The cluster it reloads.
    #[must_use]
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Reads the file again (with `MLX_CLUSTER_*` overrides, as at start)
    /// and applies it.
    ///
    /// # Errors
    /// [`FacadeError::InvalidConfig`] / [`FacadeError::ConfigRead`] with
    /// every problem (the running configuration is kept), or what
    /// [`Cluster::reload`] refuses.
    pub async fn reload(&self) -> Result<ReloadReport, FacadeError> {
        let mut config = crate::cli::load_serve_config(self.path.as_deref())?;
        if let Some(listen) = self.listen {
            config.gateway.listen = listen;
        }
        self.cluster.reload(config).await
    }

    /// Reloads on every `SIGHUP` until the process ends (Unix only).
    pub fn reload_on_sighup(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let reloader = Arc::clone(self);
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/config/reload");
                    return;
                }
            };
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    if let Err(e) = reloader.reload().await {
                        tracing::error!(
                            problems = %crate::cli::describe_config_error(&e).trim_end(),
                            "reload refused; the running configuration is kept"
                        );
                    }
                }
            });
        }
    }
}

#[derive(Serialize)]
struct Problem {
    path: String,
    message: String,
}

#[derive(Serialize)]
struct RefusedBody {
    error: RefusedError,
}

#[derive(Serialize)]
struct RefusedError {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    problems: Vec<Problem>,
}

#[derive(Serialize)]
struct Reloaded {
    ok: bool,
    action: &'static str,
    applied: Vec<&'static str>,
    restart_required: Vec<&'static str>,
    discovered: Vec<NodeId>,
    lost: Vec<NodeId>,
}

fn reloader(gw: &Gateway) -> Result<&ConfigReloader, ApiError> {
    gw.reloader().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            "reload_unavailable",
            "this gateway was not started by `mlx-cluster serve`: nothing to reload",
        )
    })
}

fn refused(error: &FacadeError) -> Response {
    let problems: Vec<Problem> = match error {
        FacadeError::InvalidConfig { problems, .. } => problems
            .problems()
            .iter()
            .map(|p| Problem {
                path: p.path.clone(),
                message: p.message.clone(),
            })
            .collect(),
        other => vec![Problem {
            path: String::new(),
            message: other.to_string(),
        }],
    };
    let body = RefusedBody {
        error: RefusedError {
            message: format!(
                "configuration refused; the running configuration is kept:\n{}",
                crate::cli::describe_config_error(error).trim_end()
            ),
            kind: "invalid_request_error",
            code: INVALID_CONFIG,
            problems,
        },
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// `POST /admin/config/reload` — re-reads the configuration file; 200 with
/// what was applied and what needs a restart, or 400 with every problem
/// (the running configuration is kept).
pub(crate) async fn config_reload(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return unauthorized_response(e);
    }
    let reloader = match reloader(&gw) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match reloader.reload().await {
        Ok(report) => Json(Reloaded {
            ok: true,
            action: "reload",
            applied: report.applied,
            restart_required: report.restart_required,
            discovered: report.discovered,
            lost: report.lost,
        })
        .into_response(),
        Err(e) => {
            tracing::warn!(problems = %crate::cli::describe_config_error(&e).trim_end(), "reload refused");
            refused(&e)
        }
    }
}

#[derive(Serialize)]
struct NodeAdded {
    ok: bool,
    action: &'static str,
    node: NodeId,
    /// Whether it passed validation and is announced.
    announced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    persisted: bool,
}

fn node_error(error: &FacadeError) -> ApiError {
    let (status, code) = match error {
        FacadeError::InvalidNode { .. } => (StatusCode::BAD_REQUEST, "invalid_node"),
        FacadeError::NodeExists { .. } => (StatusCode::CONFLICT, "node_exists"),
        FacadeError::NotRuntimeNode { .. } => (StatusCode::CONFLICT, "not_a_runtime_node"),
        other => return ApiError::internal(other.to_string()),
    };
    ApiError::new(status, "invalid_request_error", code, error.to_string())
}

/// `POST /admin/nodes` with a node as JSON (`{"id": ..., "url": ...,
/// "weight": ..., "tags": {...}, "api_key": ...}`) — adds a static node at
/// run time: 201, `announced` once it passed validation. Not persisted: a
/// restart forgets it.
pub(crate) async fn add_node(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return unauthorized_response(e);
    }
    let reloader = match reloader(&gw) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let spec: NodeSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => return ApiError::invalid_body(format!("not a node: {e}")).into_response(),
    };
    let id = spec.id.clone();
    match reloader.cluster().add_node(spec).await {
        Ok(reason) => (
            StatusCode::CREATED,
            Json(NodeAdded {
                ok: true,
                action: "add_node",
                node: id,
                announced: reason.is_none(),
                reason,
                persisted: false,
            }),
        )
            .into_response(),
        Err(e) => node_error(&e).into_response(),
    }
}

#[derive(Serialize)]
struct NodeRemoved {
    ok: bool,
    action: &'static str,
    node: NodeId,
}

/// `DELETE /admin/nodes/{id}` — removes a node added with `POST
/// /admin/nodes` (its requests in flight finish); 409 for a configured or
/// discovered node.
pub(crate) async fn remove_node(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return unauthorized_response(e);
    }
    let reloader = match reloader(&gw) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let node = NodeId::from(id);
    match reloader.cluster().remove_node(&node).await {
        Ok(()) => Json(NodeRemoved {
            ok: true,
            action: "remove_node",
            node,
        })
        .into_response(),
        Err(e) => node_error(&e).into_response(),
    }
}
