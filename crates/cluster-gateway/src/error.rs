//! Errors: what clients see ([`ApiError`], OpenAI's error shape) and what the
//! library's entry points return ([`GatewayError`]).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// An error answered to a client in OpenAI's shape:
/// `{"error": {"message": "...", "type": "...", "code": "..."}}`.
///
/// Messages never contain node API keys (node ids and URLs only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI error `type` (`invalid_request_error`, `server_error`, ...).
    pub kind: &'static str,
    /// Stable machine-readable `code` (see [`codes`]).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Sent as a `Retry-After` header (whole seconds, rounded up) when set.
    pub retry_after: Option<Duration>,
}

/// The `code` values the gateway uses.
pub(crate) mod codes {
    /// The body is larger than `gateway.max_body_bytes` (413).
    pub(crate) const BODY_TOO_LARGE: &str = "body_too_large";
    /// The body is not the JSON the endpoint expects (400).
    pub(crate) const INVALID_BODY: &str = "invalid_body";
    /// No routable node serves the model (503).
    pub(crate) const NO_ROUTABLE_NODE: &str = "no_routable_node";
    /// Every attempt failed to connect or answered 5xx (502).
    pub(crate) const UPSTREAM_UNAVAILABLE: &str = "upstream_unavailable";
    /// The node did not answer within the first-byte timeout (504).
    pub(crate) const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    /// The node stopped mid-stream or sent an invalid body (502).
    pub(crate) const UPSTREAM_ERROR: &str = "upstream_error";
    /// The node stopped sending for longer than the idle timeout (504).
    pub(crate) const UPSTREAM_IDLE_TIMEOUT: &str = "upstream_idle_timeout";
    /// The body did not arrive within `gateway.body_read_timeout` (408).
    pub(crate) const BODY_READ_TIMEOUT: &str = "body_read_timeout";
    /// The request head is larger than `gateway.max_header_bytes` (431).
    pub(crate) const HEADERS_TOO_LARGE: &str = "headers_too_large";
    /// Missing or unknown client API key (401).
    pub(crate) const INVALID_API_KEY: &str = "invalid_api_key";
    /// A client key's `requests_per_minute` or `max_concurrent` is used up
    /// (429).
    pub(crate) const RATE_LIMITED: &str = "rate_limit_exceeded";
    /// Missing or wrong admin bearer token (401).
    pub(crate) const UNAUTHORIZED: &str = "unauthorized";
    /// Admin endpoints are disabled: no `gateway.admin_token` configured (403).
    pub(crate) const ADMIN_DISABLED: &str = "admin_disabled";
    /// Unknown node id (404).
    pub(crate) const NODE_NOT_FOUND: &str = "node_not_found";
    /// Unknown route (404).
    pub(crate) const NOT_FOUND: &str = "not_found";
    /// The gateway is shutting down (503).
    pub(crate) const SHUTTING_DOWN: &str = "shutting_down";
    /// Anything else that went wrong inside the gateway (500).
    pub(crate) const INTERNAL: &str = "internal_error";
    /// A query parameter the endpoint does not accept (400).
    pub(crate) const INVALID_QUERY: &str = "invalid_query";
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
}

impl ApiError {
    /// An error with the given status, type, code and message.
    #[must_use]
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error` / `invalid_body`.
    #[must_use]
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            codes::INVALID_BODY,
            message,
        )
    }

    /// 413 `invalid_request_error` / `body_too_large`.
    #[must_use]
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            codes::BODY_TOO_LARGE,
            format!("request body is larger than the gateway's limit of {limit} bytes"),
        )
    }

    /// 404 `not_found_error` / `not_found`.
    #[must_use]
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            codes::NOT_FOUND,
            what,
        )
    }

    /// 500 `server_error` / `internal_error`.
    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            codes::INTERNAL,
            message,
        )
    }

    /// Sets the `Retry-After` hint.
    #[must_use]
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The JSON body.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        let envelope = Envelope {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                code: self.code,
            },
        };
        // Serializing plain strings into a Vec cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    /// The error as one server-sent event: `data: {"error":{...}}` and a
    /// blank line. Sent as the last event of a stream that failed after it
    /// began.
    #[must_use]
    pub fn to_sse_event(&self) -> Bytes {
        let json = self.to_json();
        let mut event = Vec::with_capacity(json.len() + 8);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&json);
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// Errors of the gateway's entry points (serving, the CLI commands).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `gateway.listen`.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error: {source}")]
    Serve {
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {message}")]
    Config {
        /// Every problem, one per line.
        message: String,
    },
    /// The demo could not run.
    #[error("demo: {message}")]
    Demo {
        /// What went wrong.
        message: String,
    },
    /// `mlx-cluster announce` could not announce the node.
    #[error("announce: {message}")]
    Announce {
        /// What went wrong.
        message: String,
    },
    /// A command needed a gateway over HTTP and the request failed.
    #[error("request to {url} failed: {message}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = ApiError::body_too_large(10);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "body_too_large");
        assert!(v["error"]["message"].as_str().unwrap().contains("10 bytes"));
    }

    #[test]
    fn sse_event_is_one_data_line() {
        let e = ApiError::internal("boom");
        let ev = e.to_sse_event();
        assert!(ev.starts_with(b"data: {\"error\""));
        assert!(ev.ends_with(b"}\n\n"));
        assert_eq!(ev.iter().filter(|&&b| b == b'\n').count(), 2);
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = ApiError::internal("x")
            .with_retry_after(Some(Duration::from_millis(1500)))
            .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
