//! Errors in the Anthropic shape:
//! `{"type":"error","error":{"type":"invalid_request_error","message":"…"}}`.
//!
//! | status | `error.type` | when |
//! |---|---|---|
//! | 400 | `invalid_request_error` | the body is not a Messages request (the message names the field, e.g. `messages.2.content.0.tool_use_id: field required`) |
//! | 401 | `authentication_error` | |
//! | 403 | `permission_error` | |
//! | 404 | `not_found_error` | |
//! | 413 | `request_too_large` | body above `gateway.max_body_bytes` |
//! | 429 | `rate_limit_error` | a node's 429 after the last retry |
//! | 500, 502 | `api_error` | a node failed, or answered something that cannot be translated |
//! | 504 | `timeout_error` | no answer in time |
//! | 529 | `overloaded_error` | no node is routable (or every node is overloaded: a node's 503) |

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, codes};

/// Anthropic's status for "overloaded" (not an IANA status).
pub(super) const OVERLOADED: u16 = 529;

/// The `error.type` of an Anthropic error. No default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorType {
    /// `invalid_request_error` (400).
    InvalidRequest,
    /// `authentication_error` (401).
    Authentication,
    /// `permission_error` (403).
    Permission,
    /// `not_found_error` (404).
    NotFound,
    /// `request_too_large` (413).
    RequestTooLarge,
    /// `rate_limit_error` (429).
    RateLimit,
    /// `api_error` (500 and other 5xx).
    Api,
    /// `timeout_error` (504).
    Timeout,
    /// `overloaded_error` (529).
    Overloaded,
}

impl ErrorType {
    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::Permission => "permission_error",
            Self::NotFound => "not_found_error",
            Self::RequestTooLarge => "request_too_large",
            Self::RateLimit => "rate_limit_error",
            Self::Api => "api_error",
            Self::Timeout => "timeout_error",
            Self::Overloaded => "overloaded_error",
        }
    }

    /// The type Anthropic uses for `status` (4xx not listed above are
    /// `invalid_request_error`, 5xx are `api_error`).
    #[must_use]
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            401 => Self::Authentication,
            403 => Self::Permission,
            404 => Self::NotFound,
            413 => Self::RequestTooLarge,
            429 => Self::RateLimit,
            504 => Self::Timeout,
            OVERLOADED => Self::Overloaded,
            400..=499 => Self::InvalidRequest,
            _ => Self::Api,
        }
    }
}

/// An error answered to a Messages client (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error.type`.
    pub kind: ErrorType,
    /// `error.message`.
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up) when set.
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// The shapes of a node's error body: OpenAI's `{"error":{"message":…}}`,
/// mlx_lm.server's `{"error":"…"}`, or anything else.
#[derive(Deserialize)]
struct NodeErrorBody {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

impl AnthropicError {
    /// An error with `status`, its [`ErrorType::for_status`] type and `message`.
    #[must_use]
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: ErrorType::for_status(status),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error`.
    #[must_use]
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 502 `api_error`: a node answered something that cannot be translated.
    #[must_use]
    pub fn bad_node_answer(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, message)
    }

    /// 529 `overloaded_error`.
    #[must_use]
    pub fn overloaded(message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(OVERLOADED).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Self {
            status,
            kind: ErrorType::Overloaded,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Sets the `Retry-After` hint.
    #[must_use]
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// A node's error answer (`status`, its body) for a translated request:
    /// the message is taken from the body's `error.message`, `error` or
    /// `message`, else the body's text (at most 1000 characters). A 503
    /// (the node is overloaded or loading) becomes 529 `overloaded_error`.
    #[must_use]
    pub fn from_node_answer(
        node: &str,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        let detail = serde_json::from_slice::<NodeErrorBody>(body)
            .ok()
            .and_then(|b| match b.error {
                Some(serde_json::Value::String(s)) => Some(s),
                Some(serde_json::Value::Object(o)) => {
                    o.get("message").and_then(|m| m.as_str()).map(str::to_owned)
                }
                _ => b.message,
            })
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(1000).collect());
        let message = if detail.trim().is_empty() {
            format!("node {node} answered {status}")
        } else {
            format!("node {node} answered {status}: {}", detail.trim())
        };
        let error = if status == StatusCode::SERVICE_UNAVAILABLE {
            Self::overloaded(message)
        } else {
            Self::new(status, message)
        };
        error.with_retry_after(retry_after)
    }

    /// The JSON body.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        let envelope = Envelope {
            kind: "error",
            error: Inner {
                kind: self.kind.as_str(),
                message: &self.message,
            },
        };
        // Plain strings: serializing cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    /// The error as the last event of a Messages stream:
    /// `event: error` + `data: {...}`.
    #[must_use]
    pub fn to_sse_event(&self) -> Bytes {
        let json = self.to_json();
        let mut event = Vec::with_capacity(json.len() + 24);
        event.extend_from_slice(b"event: error\ndata: ");
        event.extend_from_slice(&json);
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }
}

/// The gateway's own errors (OpenAI-shaped [`ApiError`]) for a Messages
/// client: same status and message, Anthropic's type; "no routable node"
/// and "shutting down" (503) become 529 `overloaded_error`.
impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        let overloaded = e.status == StatusCode::SERVICE_UNAVAILABLE
            && matches!(e.code, codes::NO_ROUTABLE_NODE | codes::SHUTTING_DOWN);
        let error = if overloaded {
            Self::overloaded(e.message)
        } else {
            Self::new(e.status, e.message)
        };
        error.with_retry_after(e.retry_after)
    }
}

impl std::fmt::Display for AnthropicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind.as_str(),
            self.message
        )
    }
}

impl std::error::Error for AnthropicError {}

impl IntoResponse for AnthropicError {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_types() {
        let e = AnthropicError::invalid_request("messages: field required");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "messages: field required");
        for (status, kind) in [
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(ErrorType::for_status(status).as_str(), kind, "{status}");
        }
    }

    #[test]
    fn gateway_errors_map_to_anthropic() {
        let no_node = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            codes::NO_ROUTABLE_NODE,
            "no healthy node",
        )
        .with_retry_after(Some(Duration::from_secs(1)));
        let e = AnthropicError::from(no_node);
        assert_eq!(e.status.as_u16(), 529);
        assert_eq!(e.kind, ErrorType::Overloaded);
        let r = e.into_response();
        assert_eq!(r.status().as_u16(), 529);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let too_big = AnthropicError::from(ApiError::body_too_large(10));
        assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(too_big.kind, ErrorType::RequestTooLarge);
    }

    #[test]
    fn node_answers_in_every_shape() {
        let mlx = AnthropicError::from_node_answer(
            "mac-1",
            StatusCode::NOT_FOUND,
            br#"{"error": "Only 'text' content type is supported."}"#,
            None,
        );
        assert_eq!(mlx.kind, ErrorType::NotFound);
        assert!(mlx.message.contains("mac-1") && mlx.message.contains("Only 'text'"));
        let openai = AnthropicError::from_node_answer(
            "n",
            StatusCode::BAD_REQUEST,
            br#"{"error":{"message":"bad temperature","type":"invalid_request_error"}}"#,
            None,
        );
        assert!(openai.message.ends_with("bad temperature"), "{openai}");
        let busy = AnthropicError::from_node_answer(
            "n",
            StatusCode::SERVICE_UNAVAILABLE,
            b"loading",
            Some(Duration::from_secs(2)),
        );
        assert_eq!(busy.status.as_u16(), 529);
        assert!(busy.message.ends_with("loading"));
        assert_eq!(busy.retry_after, Some(Duration::from_secs(2)));
        let empty = AnthropicError::from_node_answer("n", StatusCode::BAD_GATEWAY, b"", None);
        assert_eq!(empty.message, "node n answered 502 Bad Gateway");
    }

    #[test]
    fn sse_error_event() {
        let ev = AnthropicError::bad_node_answer("boom").to_sse_event();
        let text = std::str::from_utf8(&ev).unwrap();
        assert!(text.starts_with("event: error\ndata: {\"type\":\"error\""));
        assert!(text.ends_with("}\n\n"));
    }
}
