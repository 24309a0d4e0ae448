//! Operations endpoints: status, models, metrics, health, admin, dashboard.
//!
//! Admin endpoints (`/admin/...`) require `Authorization: Bearer <token>`
//! with `gateway.admin_token`: 401 without it or with a wrong token. When no
//! token is configured they are disabled and answer 403; the token is
//! compared in constant time ([`subtle`]). The other endpoints need a client
//! key when `gateway.api_keys` are configured (see [`crate::auth`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use cluster_facade::FacadeError;
use cluster_types::NodeId;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, codes};
use crate::gateway::Gateway;

/// The dashboard page (static; it polls `/v1/cluster/status`,
/// `/v1/cluster/timeseries` and `/v1/cluster/decisions`, and draws its
/// charts as inline SVG itself: no external file, it works offline).
pub(crate) const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// `GET /` — the dashboard.
pub(crate) async fn dashboard() -> Response {
    let mut response = Html(DASHBOARD_HTML).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /v1/cluster/status` — the facade's `ClusterState` as JSON (node API
/// keys are serialized as `"<redacted>"`).
pub(crate) async fn status(State(gw): State<Arc<Gateway>>) -> Response {
    let mut response = Json(gw.cluster().status()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelEntry>,
}

#[derive(Serialize)]
struct ModelEntry {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// `GET /v1/models` — the union of the models of every node, deduplicated
/// and sorted, in OpenAI's list shape.
pub(crate) async fn models(State(gw): State<Arc<Gateway>>) -> Json<impl Serialize> {
    let data = gw
        .cluster()
        .models()
        .into_iter()
        .map(|id| ModelEntry {
            id,
            object: "model",
            created: 0,
            owned_by: "mlx-cluster",
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// Content type of the OpenMetrics text format.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` — the cluster's metrics followed by the gateway's own.
///
/// Content negotiation as in Prometheus' client libraries: OpenMetrics text
/// when the scraper accepts `application/openmetrics-text` (Prometheus
/// does), else the Prometheus text format 0.0.4 (curl, promtool, older
/// scrapers).
pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let mut text = gw.cluster().encode_prometheus();
    // The OpenMetrics terminator must stay last.
    let trimmed = text.trim_end().len();
    if text[..trimmed].ends_with("# EOF") {
        text.truncate(trimmed - "# EOF".len());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    gw.metrics().encode(&mut text, true);
    gw.connections().encode(&mut text, true);
    crate::limits::encode_process(&mut text);
    if let Some(keys) = &gw.settings().client_keys {
        keys.encode(&mut text, true);
    }
    text.push_str("# EOF\n");
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            openmetrics_to_prometheus(&text),
        )
            .into_response()
    }
}

/// Rewrites OpenMetrics text into the Prometheus text format 0.0.4: counter
/// families are named with their `_total` suffix in `# HELP` / `# TYPE`
/// (their samples already carry it), `# UNIT` and `# EOF` lines go.
#[must_use]
pub(crate) fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `GET /healthz` — 200 while the process serves HTTP.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz` — 200 when at least one node is routable and the gateway
/// is not shutting down, else 503.
pub(crate) async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.is_shutting_down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            codes::SHUTTING_DOWN,
            "the gateway is shutting down",
        )
        .into_response();
    }
    if gw.cluster().is_ready() {
        "ready\n".into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            codes::NO_ROUTABLE_NODE,
            "no routable node yet",
        )
        .into_response()
    }
}

/// Fallback: 404 in the OpenAI error shape.
pub(crate) async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// Checks the admin bearer token (constant-time comparison).
pub(crate) fn authorize(gw: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = gw.settings().admin_token.as_ref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            codes::ADMIN_DISABLED,
            "admin endpoints are disabled: set gateway.admin_token to enable them",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(token.expose().as_bytes())) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            codes::UNAUTHORIZED,
            "admin endpoints need `Authorization: Bearer <gateway.admin_token>`",
        )),
    }
}

pub(crate) fn unauthorized_response(error: ApiError) -> Response {
    let status = error.status;
    let mut response = error.into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[derive(Serialize)]
struct AdminResult {
    ok: bool,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

fn admin_error(error: &FacadeError, node: &NodeId) -> ApiError {
    match error {
        FacadeError::UnknownNode { .. } => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            codes::NODE_NOT_FOUND,
            format!("no node {node}"),
        ),
        other => ApiError::internal(other.to_string()),
    }
}

/// `POST /admin/nodes/{id}/drain` — takes the node out of rotation; its
/// in-flight requests finish.
pub(crate) async fn drain(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return unauthorized_response(e);
    }
    let node = NodeId::from(id);
    match gw.cluster().drain(&node) {
        Ok(()) => {
            tracing::info!(node = %node, "node drained by admin request");
            Json(AdminResult {
                ok: true,
                action: "drain",
                node: Some(node.into_string()),
            })
            .into_response()
        }
        Err(e) => admin_error(&e, &node).into_response(),
    }
}

/// `POST /admin/nodes/{id}/undrain` — returns a drained node to rotation.
pub(crate) async fn undrain(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return unauthorized_response(e);
    }
    let node = NodeId::from(id);
    match gw.cluster().undrain(&node) {
        Ok(()) => {
            tracing::info!(node = %node, "node undrained by admin request");
            Json(AdminResult {
                ok: true,
                action: "undrain",
                node: Some(node.into_string()),
            })
            .into_response()
        }
        Err(e) => admin_error(&e, &node).into_response(),
    }
}

/// `POST /admin/discovery/refresh` — runs discovery now.
pub(crate) async fn refresh_discovery(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return unauthorized_response(e);
    }
    match gw.cluster().refresh_discovery().await {
        Ok(()) => Json(AdminResult {
            ok: true,
            action: "refresh_discovery",
            node: None,
        })
        .into_response(),
        Err(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            codes::INTERNAL,
            format!("discovery refresh failed: {e}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_counters_become_prometheus_counters() {
        let om = "# HELP reqs Requests.\n# TYPE reqs counter\nreqs_total{a=\"b\"} 1\n# HELP lat Latency.\n# TYPE lat histogram\n# UNIT lat seconds\nlat_bucket{le=\"1\"} 1\n# HELP g G.\n# TYPE g gauge\ng 2\n# EOF\n";
        let p = openmetrics_to_prometheus(om);
        assert_eq!(
            p,
            "# HELP reqs_total Requests.\n# TYPE reqs_total counter\nreqs_total{a=\"b\"} 1\n# HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"1\"} 1\n# HELP g G.\n# TYPE g gauge\ng 2\n"
        );
    }

    #[test]
    fn dashboard_polls_the_status_api() {
        assert!(DASHBOARD_HTML.contains("/v1/cluster/status"));
        assert!(DASHBOARD_HTML.contains("/v1/cluster/timeseries"));
        assert!(DASHBOARD_HTML.contains("/v1/cluster/decisions"));
        assert!(DASHBOARD_HTML.contains("data-node-id"));
    }

    #[test]
    fn dashboard_loads_nothing_from_elsewhere() {
        let lower = DASHBOARD_HTML.to_ascii_lowercase();
        for needle in ["<link", "src=", "@import", "url(", "//cdn", "import("] {
            assert!(!lower.contains(needle), "{needle}");
        }
        // The only absolute URL is the SVG namespace (an identifier, never
        // fetched).
        let urls = lower.matches("http").count();
        let svg_ns = lower.matches("\"http://www.w3.org/2000/svg\"").count();
        assert_eq!(urls, svg_ns, "absolute URLs in the dashboard");
    }
}
