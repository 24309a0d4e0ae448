//! The HTTP routes: which handler serves which path. The handlers live
//! beside what they serve (`proxy.rs`, `anthropic/`, `ops.rs`, ...); only
//! this table names them all, so the gateway's state does not depend on
//! its handlers.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::gateway::Gateway;
use crate::{anthropic, decisions, ops, proxy, reload, timeseries};

/// The HTTP routes:
///
/// | route | what |
/// |---|---|
/// | `POST /v1/chat/completions`, `/v1/completions` | proxied |
/// | `POST /v1/messages`, `/v1/messages/count_tokens` | Anthropic Messages API, translated for OpenAI-only nodes (`anthropic/`) |
/// | `GET /v1/models` | union of the nodes' models |
/// | `GET /v1/cluster/status` | the cluster state (JSON) |
/// | `GET /v1/cluster/decisions` | the most recent routing decisions (`decisions.rs`) |
/// | `GET /v1/cluster/timeseries` | the dashboard's charts (`timeseries.rs`) |
/// | `GET /metrics` | Prometheus text |
/// | `GET /healthz`, `/readyz` | liveness, readiness |
/// | `POST /admin/nodes/{id}/drain`, `/undrain`, `/admin/discovery/refresh` | admin (bearer token) |
/// | `POST /admin/config/reload`, `POST /admin/nodes`, `DELETE /admin/nodes/{id}` | admin: reload, runtime nodes |
/// | `GET /` | the dashboard |
pub(crate) fn routes(gateway: &Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/completions", post(proxy::completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/models", get(ops::models))
        .route("/v1/cluster/status", get(ops::status))
        .route(decisions::DECISIONS_PATH, get(decisions::decisions))
        .route(timeseries::TIMESERIES_PATH, get(timeseries::timeseries))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/admin/nodes/{id}/drain", post(ops::drain))
        .route("/admin/nodes/{id}/undrain", post(ops::undrain))
        .route("/admin/discovery/refresh", post(ops::refresh_discovery))
        .route("/admin/config/reload", post(reload::config_reload))
        .route("/admin/nodes", post(reload::add_node))
        .route(
            "/admin/nodes/{id}",
            axum::routing::delete(reload::remove_node),
        )
        .route("/", get(ops::dashboard))
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(gateway),
            crate::limits::guard,
        ))
        .with_state(Arc::clone(gateway))
}
