//! Limits that keep one client from starving the others: a cap on open
//! connections with a clear refusal, and the counters the accept loop keeps.
//!
//! The other limits live where they act: the header-read timeout is
//! hyper's (`gateway.header_read_timeout`, applied in [`crate::server`]);
//! the largest request head (`gateway.max_header_bytes`) bounds hyper's
//! read buffer and is checked exactly by [`guard`] (431); the body-read timeout and the body size are the
//! proxy's (`gateway.body_read_timeout` → 408, `gateway.max_body_bytes` →
//! 413), and the JSON parser refuses nesting deeper than 128 levels (400).
//!
//! # Connection limit
//! At most `gateway.max_connections` client connections are open at once
//! (default 8192). A connection accepted beyond that is answered at once —
//! `503 Service Unavailable`, `Retry-After: 1`, `Connection: close` and an
//! OpenAI-shaped body with code `connection_limit` — and closed. (Over TLS
//! the refusal cannot be written before a handshake, so the connection is
//! just closed.) The refusal is written straight from the accept loop; a
//! short-lived task then keeps the connection for at most
//! [`REFUSAL_LINGER`] so a client that sent a request can read it; at most
//! [`MAX_REFUSALS_IN_FLIGHT`] such tasks exist at once, beyond which the
//! connection is closed right after the refusal.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a refused connection is kept open so the client can read the
/// 503.
pub(crate) const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Most refusals being written at once.
pub(crate) const MAX_REFUSALS_IN_FLIGHT: usize = 1024;

/// Counts open client connections against `gateway.max_connections` and
/// keeps the accept loop's counters. Shared by the accept loop and
/// `/metrics`.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max: usize,
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    refusals_in_flight: AtomicUsize,
    tls_failures: AtomicU64,
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<ConnectionLimiter>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimiter {
    /// A limiter allowing `max` open connections (at least 1).
    #[must_use]
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refusals_in_flight: AtomicUsize::new(0),
            tls_failures: AtomicU64::new(0),
        })
    }

    /// Counts a new connection in, or `None` when `max` are open (the
    /// refusal is counted).
    #[must_use]
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
            Some(ConnectionPermit(Arc::clone(self)))
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections refused because the limit was reached.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The configured limit.
    #[must_use]
    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts a TLS handshake that failed or timed out.
    pub fn tls_failure(&self) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers a connection refused by the limit with a 503 and closes it.
    /// The 503 is written at once (a new connection's send buffer always
    /// has room for it); a task of its own then gives the client up to
    /// [`REFUSAL_LINGER`] to read it before the close (see the module
    /// docs), unless [`MAX_REFUSALS_IN_FLIGHT`] such tasks exist already.
    pub fn refuse(self: &Arc<Self>, stream: TcpStream) {
        let response = refusal_response(self.max);
        let written = matches!(stream.try_write(&response), Ok(n) if n == response.len());
        if !written {
            return;
        }
        let in_flight = self.refusals_in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= MAX_REFUSALS_IN_FLIGHT {
            self.refusals_in_flight.fetch_sub(1, Ordering::AcqRel);
            // Closed now; the 503 is already on its way.
            return;
        }
        let limiter = Arc::clone(self);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_LINGER, linger(stream)).await;
            limiter.refusals_in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Appends the connection counters in the text exposition format
    /// (OpenMetrics-style family names when `openmetrics`).
    pub fn encode(&self, out: &mut String, openmetrics: bool) {
        let family = |name: &'static str| {
            if openmetrics {
                name.strip_suffix("_total").unwrap_or(name)
            } else {
                name
            }
        };
        let _ = writeln!(
            out,
            "# HELP mlx_cluster_gateway_connections_open Client connections open now.\n# TYPE mlx_cluster_gateway_connections_open gauge\nmlx_cluster_gateway_connections_open {}",
            self.open()
        );
        let _ = writeln!(
            out,
            "# HELP mlx_cluster_gateway_connections_max gateway.max_connections.\n# TYPE mlx_cluster_gateway_connections_max gauge\nmlx_cluster_gateway_connections_max {}",
            self.max
        );
        for (name, help, value) in [
            (
                "mlx_cluster_gateway_connections_accepted_total",
                "Client connections accepted.",
                &self.accepted,
            ),
            (
                "mlx_cluster_gateway_connections_refused_total",
                "Client connections refused (503) because gateway.max_connections were open.",
                &self.refused,
            ),
            (
                "mlx_cluster_gateway_tls_handshake_failures_total",
                "TLS handshakes that failed or did not finish within gateway.header_read_timeout.",
                &self.tls_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {0} {help}\n# TYPE {0} counter\n{name} {1}",
                family(name),
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// Size of a request head as sent: request line and header lines, CRLFs
/// included.
#[must_use]
pub(crate) fn head_size(req: &Request) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum::<usize>()
        + line
        + 2
}

/// Middleware in front of every route: refuses a request head larger than
/// `gateway.max_header_bytes` with 431 (hyper's own check, on its read
/// buffer, may let up to twice that through), then checks client keys
/// ([`crate::auth::authenticate`]).
pub(crate) async fn guard(
    State(gw): State<Arc<crate::gateway::Gateway>>,
    req: Request,
    next: Next,
) -> Response {
    let max = gw.settings().max_header_bytes;
    if head_size(&req) > max {
        return crate::error::ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            crate::error::codes::HEADERS_TOO_LARGE,
            format!("the request head is larger than gateway.max_header_bytes ({max} bytes)"),
        )
        .into_response();
    }
    crate::auth::authenticate(State(gw), req, next).await
}

/// Deepest JSON nesting a request body may have (serde_json's own
/// recursion limit).
pub const MAX_JSON_DEPTH: usize = 128;

/// Whether the JSON text `body` nests arrays and objects deeper than
/// `max`, anywhere — also inside values the gateway itself does not parse
/// (message contents are forwarded raw, and a node's parser may recurse).
/// One pass over the bytes, strings and escapes skipped; says nothing about
/// validity otherwise.
#[must_use]
pub fn json_too_deep(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Open file descriptors of this process (Linux: entries of
/// `/proc/self/fd`); `None` where that cannot be read.
#[must_use]
pub fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count)
}

/// Appends process gauges: `process_open_fds` (Linux) and
/// `mlx_cluster_gateway_runtime_alive_tasks` (tasks alive in the Tokio
/// runtime serving the call). Leaks of connections, streams or their tasks
/// show here first.
pub(crate) fn encode_process(out: &mut String) {
    if let Some(fds) = open_fds() {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {fds}"
        );
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let _ = writeln!(
            out,
            "# HELP mlx_cluster_gateway_runtime_alive_tasks Tasks alive in the gateway's async runtime.\n# TYPE mlx_cluster_gateway_runtime_alive_tasks gauge\nmlx_cluster_gateway_runtime_alive_tasks {}",
            handle.metrics().num_alive_tasks()
        );
    }
}

/// The refusal's bytes.
#[must_use]
pub(crate) fn refusal_response(max: usize) -> Vec<u8> {
    let body = format!(
        "{{\"error\":{{\"message\":\"the gateway has {max} client connections open (gateway.max_connections); retry later\",\"type\":\"server_error\",\"code\":\"connection_limit\"}}}}"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    // Read (and discard) what the client sends until it closes, so closing
    // does not reset the connection under the unread 503.
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_and_release() {
        let l = ConnectionLimiter::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!((l.open(), l.refused()), (2, 1));
        drop(a);
        assert!(l.try_acquire().is_some());
        let mut text = String::new();
        l.encode(&mut text, false);
        assert!(text.contains("mlx_cluster_gateway_connections_refused_total 1"));
        assert!(text.contains("mlx_cluster_gateway_connections_accepted_total 3"));
    }

    #[test]
    fn json_depth() {
        assert!(!json_too_deep(br#"{"a":[[1]],"s":"[[[[[["}"#, 3));
        assert!(json_too_deep(br#"{"a":[[[1]]]}"#, 3));
        assert!(!json_too_deep(br#"{"s":"\"[[[[[\\"}"#, 1));
        let deep = [vec![b'['; 200], vec![b']'; 200]].concat();
        assert!(json_too_deep(&deep, MAX_JSON_DEPTH));
        assert!(!json_too_deep(&deep, 200));
    }

    #[test]
    fn refusal_is_a_complete_http_response() {
        let bytes = refusal_response(10);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "connection_limit");
    }
}
