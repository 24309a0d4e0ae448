//! `GET /v1/cluster/decisions`: why the most recent requests went where they
//! went — the facade's decision records (`cluster_facade::DecisionLog`),
//! newest first, as JSON.
//!
//! Query parameters, all optional: `limit` (records returned, 1 to the
//! log's size, default 100), `node` (only this node's), `reason` (only
//! this reason's: `cache-hit`, `rendezvous`, `least-loaded`,
//! `session-affinity`, `fallback`, `retry`, ...). Anything else is a 400.
//!
//! Access: with `gateway.admin_token` set, the endpoint needs it
//! (`Authorization: Bearer <admin token>`; client keys are not asked for),
//! since records name nodes and show the cluster's load. Without an admin
//! token it is guarded like `/v1/cluster/status` (a client key when
//! `gateway.api_keys` are configured, else open).
//!
//! ```json
//! {"capacity": 1000, "total": 5321, "decisions": [
//!   {"seq": 5321, "node": "studio", "reason": "cache-hit", "attempt": 1,
//!    "predicted_cached_tokens": 19968, "reported_cached_tokens": 19980,
//!    "cost": {"seconds": 0.21, "uncached_tokens": 310, ...},
//!    "runner_up": {"node": "mini-1", "cost_seconds": 13.4, ...},
//!    "ttft_ms": 412.5, "total_ms": 3120.0, "outcome": "success", ...}]}
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use cluster_facade::DecisionQuery;
use cluster_types::{DecisionRecord, NodeId, RoutingReason};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::error::{ApiError, codes};
use crate::gateway::Gateway;

/// The endpoint's path.
pub(crate) const DECISIONS_PATH: &str = "/v1/cluster/decisions";

/// The JSON answer.
#[derive(Debug, Serialize)]
struct DecisionList {
    /// Records the log keeps at most (`observability.decision_log_size`).
    capacity: usize,
    /// Records written since start (the newest `seq`).
    total: u64,
    /// The records, newest first.
    decisions: Vec<DecisionRecord>,
}

fn invalid(message: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        codes::INVALID_QUERY,
        message,
    )
}

/// Reads the query parameters (see the module docs) against a log of
/// `capacity` records.
///
/// # Errors
/// A 400 naming the bad parameter.
pub(crate) fn parse_query(
    params: &HashMap<String, String>,
    capacity: usize,
) -> Result<DecisionQuery, ApiError> {
    let mut query = DecisionQuery::default();
    for (key, value) in params {
        match key.as_str() {
            "limit" => {
                let limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        invalid(format!("limit must be a positive integer, not {value:?}"))
                    })?;
                query.limit = limit.min(capacity.max(1));
            }
            "node" => query.node = Some(NodeId::from(value.as_str())),
            "reason" => {
                let reason = value
                    .parse::<RoutingReason>()
                    .map_err(|e| invalid(e.to_string()))?;
                query.reason = Some(reason);
            }
            other => {
                return Err(invalid(format!(
                    "unknown query parameter {other:?} (expected limit, node, reason)"
                )));
            }
        }
    }
    Ok(query)
}

/// `GET /v1/cluster/decisions` (see the module docs).
pub(crate) async fn decisions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if gw.settings().admin_token.is_some()
        && let Err(error) = crate::ops::authorize(&gw, &headers)
    {
        return crate::ops::unauthorized_response(error);
    }
    let log = gw.cluster().decisions();
    let query = match parse_query(&params, log.capacity()) {
        Ok(query) => query,
        Err(error) => return error.into_response(),
    };
    let list = DecisionList {
        capacity: log.capacity(),
        total: log.total(),
        decisions: log.recent(&query),
    };
    let mut response = Json(list).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn query_parameters() {
        let q = parse_query(&params(&[]), 1000).unwrap();
        assert_eq!(q, DecisionQuery::default());
        let q = parse_query(
            &params(&[("limit", "5000"), ("node", "mac-1"), ("reason", "retry")]),
            1000,
        )
        .unwrap();
        assert_eq!(q.limit, 1000);
        assert_eq!(q.node, Some(NodeId::from("mac-1")));
        assert_eq!(q.reason, Some(RoutingReason::Retry));
        for bad in [
            params(&[("limit", "0")]),
            params(&[("limit", "-3")]),
            params(&[("reason", "vibes")]),
            params(&[("nodes", "a")]),
        ] {
            let e = parse_query(&bad, 1000).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let e = parse_query(&params(&[("reason", "vibes")]), 10).unwrap_err();
        assert!(e.message.contains("cache-hit"), "{}", e.message);
    }
}
