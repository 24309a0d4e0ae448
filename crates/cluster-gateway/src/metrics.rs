//! The gateway's own counters (the cluster's per-node metrics come from the
//! facade): requests by API and status class, retries by cause, streams
//! ended by an error event, requests in flight through the gateway.
//!
//! All counters are atomics over fixed label sets, so the hot path takes no
//! lock. [`GatewayMetrics::encode`] writes them in the Prometheus text
//! format (names in `docs/gateway.md`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::relay::RelayFailure;
use crate::request::ApiKind;

/// Why a request was retried on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// The node refused or did not accept the connection.
    Connect,
    /// No response headers within the first-byte timeout.
    Timeout,
    /// The connection failed after it was made, before the headers.
    Request,
    /// The node answered 5xx (other than 503).
    ServerError,
    /// The node answered 429 or 503 (overloaded).
    Overloaded,
    /// The node answered 404 on the completion path: it cannot serve what
    /// it listed.
    NotServed,
}

impl RetryCause {
    const ALL: [RetryCause; 6] = [
        Self::Connect,
        Self::Timeout,
        Self::Request,
        Self::ServerError,
        Self::Overloaded,
        Self::NotServed,
    ];

    const fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Request => "request",
            Self::ServerError => "server_error",
            Self::Overloaded => "overloaded",
            Self::NotServed => "not_served",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STREAM_FAILURES: [RelayFailure; 4] = [
    RelayFailure::Reset,
    RelayFailure::IdleTimeout,
    RelayFailure::Truncated,
    RelayFailure::Deadline,
];

fn failure_label(f: RelayFailure) -> &'static str {
    match f {
        RelayFailure::Reset => "reset",
        RelayFailure::IdleTimeout => "idle_timeout",
        RelayFailure::Truncated => "truncated",
        RelayFailure::Deadline => "request_timeout",
    }
}

fn api_index(api: ApiKind) -> usize {
    match api {
        ApiKind::ChatCompletions => 0,
        ApiKind::Completions => 1,
        ApiKind::Messages => 2,
    }
}

/// Counters of the gateway itself. Default: all zero.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// [api][status class]
    responses: [[AtomicU64; 5]; 3],
    retries: [AtomicU64; RetryCause::ALL.len()],
    stream_failures: [AtomicU64; 4],
    no_routable_node: AtomicU64,
    in_flight: AtomicI64,
}

impl GatewayMetrics {
    /// Counts a response sent to a client (status known when its headers go
    /// out).
    pub fn response(&self, api: ApiKind, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[api_index(api)][class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry.
    pub fn retry(&self, cause: RetryCause) {
        let i = RetryCause::ALL
            .iter()
            .position(|c| *c == cause)
            .unwrap_or_default();
        self.retries[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response body that broke off after it began.
    pub fn stream_failure(&self, failure: RelayFailure) {
        let i = STREAM_FAILURES
            .iter()
            .position(|f| *f == failure)
            .unwrap_or_default();
        self.stream_failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused because no node could take it.
    pub fn no_routable_node(&self) {
        self.no_routable_node.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a proxied request started; the returned guard ends it on drop.
    #[must_use]
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Proxied requests between receipt and the end of their response
    /// headers.
    #[must_use]
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Responses counted for `api` in status class `class` (1..=5).
    #[must_use]
    pub fn responses(&self, api: ApiKind, class: usize) -> u64 {
        self.responses[api_index(api)][class.clamp(1, 5) - 1].load(Ordering::Relaxed)
    }

    /// Retries counted for `cause`.
    #[must_use]
    pub fn retries(&self, cause: RetryCause) -> u64 {
        RetryCause::ALL
            .iter()
            .position(|c| *c == cause)
            .map_or(0, |i| self.retries[i].load(Ordering::Relaxed))
    }

    /// Appends the text exposition of these counters to `out`: in the
    /// OpenMetrics style when `openmetrics` (a counter family's `# HELP` and
    /// `# TYPE` lines name it without `_total`, as the cluster's own
    /// exposition does), else in the Prometheus 0.0.4 style.
    pub fn encode(&self, out: &mut String, openmetrics: bool) {
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let family = if openmetrics && kind == "counter" {
                name.strip_suffix("_total").unwrap_or(name)
            } else {
                name
            };
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        };
        header(
            out,
            "mlx_cluster_gateway_responses_total",
            "counter",
            "Responses sent to clients by the proxy endpoints, by API and status class.",
        );
        for api in ApiKind::ALL {
            for (c, class) in STATUS_CLASSES.iter().enumerate() {
                let v = self.responses[api_index(api)][c].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "mlx_cluster_gateway_responses_total{{api=\"{}\",status=\"{class}\"}} {v}",
                    api.label()
                );
            }
        }
        header(
            out,
            "mlx_cluster_gateway_retries_total",
            "counter",
            "Requests retried on another node before their first byte, by cause.",
        );
        for (i, cause) in RetryCause::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "mlx_cluster_gateway_retries_total{{cause=\"{}\"}} {}",
                cause.label(),
                self.retries[i].load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "mlx_cluster_gateway_stream_failures_total",
            "counter",
            "Responses that broke off after they began (streams end with an SSE error event), by cause.",
        );
        for (i, f) in STREAM_FAILURES.iter().enumerate() {
            let _ = writeln!(
                out,
                "mlx_cluster_gateway_stream_failures_total{{cause=\"{}\"}} {}",
                failure_label(*f),
                self.stream_failures[i].load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "mlx_cluster_gateway_no_routable_node_total",
            "counter",
            "Requests answered 503 because no routable node could take them.",
        );
        let _ = writeln!(
            out,
            "mlx_cluster_gateway_no_routable_node_total {}",
            self.no_routable_node.load(Ordering::Relaxed)
        );
        header(
            out,
            "mlx_cluster_gateway_in_flight",
            "gauge",
            "Proxied requests waiting for a node's response headers.",
        );
        let _ = writeln!(out, "mlx_cluster_gateway_in_flight {}", self.in_flight());
    }
}

/// Ends an in-flight count on drop.
#[derive(Debug)]
pub struct InFlight<'a>(&'a GatewayMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_encodes() {
        let m = GatewayMetrics::default();
        m.response(ApiKind::ChatCompletions, 200);
        m.response(ApiKind::ChatCompletions, 503);
        m.response(ApiKind::Messages, 999);
        m.retry(RetryCause::Overloaded);
        m.stream_failure(RelayFailure::Truncated);
        {
            let _g = m.begin();
            assert_eq!(m.in_flight(), 1);
        }
        assert_eq!(m.in_flight(), 0);
        assert_eq!(m.responses(ApiKind::ChatCompletions, 2), 1);
        assert_eq!(m.responses(ApiKind::ChatCompletions, 5), 1);
        assert_eq!(m.responses(ApiKind::Messages, 5), 1);
        assert_eq!(m.retries(RetryCause::Overloaded), 1);
        let mut text = String::new();
        m.encode(&mut text, false);
        assert!(text.contains("# TYPE mlx_cluster_gateway_retries_total counter"));
        let mut om = String::new();
        m.encode(&mut om, true);
        assert!(om.contains("# TYPE mlx_cluster_gateway_retries counter"));
        assert!(om.contains("mlx_cluster_gateway_retries_total{cause=\"overloaded\"} 1"));
        assert!(
            text.contains("mlx_cluster_gateway_responses_total{api=\"chat\",status=\"2xx\"} 1")
        );
        assert!(text.contains("mlx_cluster_gateway_retries_total{cause=\"overloaded\"} 1"));
        assert!(text.contains("mlx_cluster_gateway_stream_failures_total{cause=\"truncated\"} 1"));
        assert!(text.contains("mlx_cluster_gateway_in_flight 0"));
        assert!(text.ends_with('\n'));
    }
}
