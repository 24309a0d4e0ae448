//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when
//! `observability.otlp_endpoint` is set; off (and free) otherwise.
//!
//! Every proxied request is one trace span, named after its route
//! (`POST /v1/chat/completions`), continuing the client's W3C
//! `traceparent` when it sent one. Its children, in order:
//!
//! | span | from → to | attributes |
//! |---|---|---|
//! | `select` | the router's choice (once per attempt) | `mlx_cluster.node`, `mlx_cluster.reason`, `mlx_cluster.attempt` |
//! | `upstream` | waiting at the node's prefill gate, sending, to the node's response headers | `mlx_cluster.node`, `mlx_cluster.attempt`, `server.address`, `http.response.status_code`, `mlx_cluster.outcome` |
//! | `first_byte` | the node's headers to its first body frame | `mlx_cluster.node` |
//! | `stream` | the first frame to the end of the answer | `mlx_cluster.node`, `mlx_cluster.outcome`, token counts |
//!
//! The node gets a `traceparent` naming its `upstream` span as the parent,
//! so a node that traces (vLLM, SGLang) joins the trace. The request span
//! carries the chosen node, the reason, the attempts and the status code;
//! the decision record (`GET /v1/cluster/decisions`) carries its trace id.
//!
//! The spans are `tracing` spans with target [`TARGET`], turned into
//! OpenTelemetry spans by `tracing-opentelemetry` and batched by the SDK's
//! span processor (its own thread, `OTEL_BSP_*` environment variables
//! apply). Integers are recorded as `i64` (OpenTelemetry has no unsigned
//! attribute). When tracing is off every helper here returns
//! [`Span::none`] and nothing is allocated.

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use tracing::Span;
use tracing::field::Empty;

use cluster_types::LogFormat;

use crate::error::GatewayError;
use crate::relay::RelayOutcome;

/// The `tracing` target of the request spans.
pub(crate) const TARGET: &str = "mlx_cluster::trace";

#[cfg(feature = "otel")]
mod otel;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (set once by [`init_logging_and_traces`]).
#[must_use]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter, kept until the gateway stops; [`Traces::shutdown`]
/// exports the spans still buffered.
#[derive(Debug)]
pub struct Traces {
    #[cfg(feature = "otel")]
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Traces {
    /// Exports what is buffered and stops the exporter (blocks until the
    /// collector answered or the export timed out).
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        otel::shutdown(&self.provider);
    }
}

/// Installs the global subscriber: the log lines of
/// `init_logging` (`RUST_LOG`, default `default_filter`)
/// and, when `otlp_endpoint` is set, the OpenTelemetry layer exporting the
/// request spans (and warnings inside them) to it.
///
/// # Errors
/// [`GatewayError::Config`] when the exporter cannot be built from
/// `otlp_endpoint`, or the binary was built without the `otel` feature.
pub fn init_logging_and_traces(
    format: LogFormat,
    default_filter: &str,
    otlp_endpoint: Option<&str>,
) -> Result<Option<Traces>, GatewayError> {
    let Some(endpoint) = otlp_endpoint else {
        crate::server::init_logging(format, default_filter);
        return Ok(None);
    };
    #[cfg(feature = "otel")]
    {
        let provider = otel::install(format, default_filter, endpoint)?;
        tracing::info!(endpoint, "exporting OpenTelemetry traces over OTLP/HTTP");
        Ok(Some(Traces { provider }))
    }
    #[cfg(not(feature = "otel"))]
    {
        Err(GatewayError::Config {
            message: format!(
                "observability.otlp_endpoint is set ({endpoint}) but this mlx-cluster was built without the `otel` feature"
            ),
        })
    }
}

/// The span of one proxied request (`POST /v1/chat/completions`), a child
/// of the client's `traceparent` when it sent one. [`Span::none`] when
/// tracing is off.
#[must_use]
pub(crate) fn request_span(path: &str, client_headers: &HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %format!("POST {path}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = "POST",
        url.path = %path,
        http.response.status_code = Empty,
        mlx_cluster.node = Empty,
        mlx_cluster.reason = Empty,
        mlx_cluster.attempts = Empty,
    );
    #[cfg(feature = "otel")]
    otel::continue_client_trace(&span, client_headers);
    #[cfg(not(feature = "otel"))]
    let _ = client_headers;
    span
}

/// Records the status code sent to the client on the request span (an
/// error status for 5xx).
pub(crate) fn record_status(span: &Span, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The `select` span of one attempt (a child of the current span).
#[must_use]
pub(crate) fn select_span(attempt: u32) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "select",
        mlx_cluster.attempt = i64::from(attempt),
        mlx_cluster.node = Empty,
        mlx_cluster.reason = Empty,
    )
}

/// Records the router's choice on `select`.
pub(crate) fn record_choice(select: &Span, node: &str, reason: &str) {
    if select.is_none() {
        return;
    }
    select.record("mlx_cluster.node", node);
    select.record("mlx_cluster.reason", reason);
}

/// Records on the current (request) span the node whose answer is relayed,
/// why it was chosen and the attempts it took. Recorded once: a recorded
/// attribute is appended, not replaced.
pub(crate) fn record_served(node: &str, reason: &str, attempts: u32) {
    if !enabled() {
        return;
    }
    let request = Span::current();
    request.record("mlx_cluster.node", node);
    request.record("mlx_cluster.reason", reason);
    request.record("mlx_cluster.attempts", i64::from(attempts));
}

/// The `upstream` span of one attempt at `node` (`base_url`).
#[must_use]
pub(crate) fn upstream_span(node: &str, base_url: &str, attempt: u32) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "upstream",
        otel.kind = "client",
        otel.status_code = Empty,
        mlx_cluster.node = node,
        mlx_cluster.attempt = i64::from(attempt),
        server.address = base_url,
        http.response.status_code = Empty,
        mlx_cluster.outcome = Empty,
    )
}

/// Records how an attempt (or the relay) ended on `span`: `outcome` is
/// `"ok"` or what failed (an error status on the span).
pub(crate) fn record_outcome(span: &Span, outcome: &str) {
    if span.is_none() {
        return;
    }
    span.record("mlx_cluster.outcome", outcome);
    if outcome != "ok" && outcome != "success" {
        span.record("otel.status_code", "ERROR");
    }
}

/// The `first_byte` span: the node's headers to its first body frame.
#[must_use]
pub(crate) fn first_byte_span(node: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, "first_byte", mlx_cluster.node = node)
}

/// The `stream` span (the first frame to the end of the answer) and the
/// request span it belongs to, which must end with it.
#[derive(Debug)]
pub(crate) struct StreamTrace {
    stream: Span,
    request: Span,
}

impl StreamTrace {
    /// A `stream` span for an answer from `node`, child of the current
    /// (request) span.
    #[must_use]
    pub(crate) fn start(node: &str) -> Self {
        if !enabled() {
            return Self {
                stream: Span::none(),
                request: Span::none(),
            };
        }
        let stream = tracing::info_span!(
            target: TARGET,
            "stream",
            otel.status_code = Empty,
            mlx_cluster.node = node,
            mlx_cluster.outcome = Empty,
            gen_ai.usage.input_tokens = Empty,
            mlx_cluster.cached_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
        );
        Self {
            stream,
            request: Span::current(),
        }
    }

    /// Records how the relay ended: the outcome (an error status unless
    /// success) and, on success, the node's token counts.
    pub(crate) fn record(&self, outcome: &RelayOutcome) {
        let span = &self.stream;
        if span.is_none() {
            return;
        }
        match outcome {
            RelayOutcome::Success(usage) => {
                record_outcome(span, "success");
                // OpenTelemetry attributes are signed.
                let int = |n: Option<u32>| n.map(i64::from);
                span.record("gen_ai.usage.input_tokens", int(usage.prompt_tokens));
                span.record("mlx_cluster.cached_tokens", int(usage.cached_tokens));
                span.record("gen_ai.usage.output_tokens", int(usage.completion_tokens));
            }
            RelayOutcome::Failed(failure) => {
                record_outcome(span, &format!("{failure:?}").to_lowercase());
            }
            RelayOutcome::Cancelled => record_outcome(span, "cancelled"),
        }
    }

    /// Ends the `stream` span, then the request span: an OpenTelemetry span
    /// ends when it was last exited, and the request's handler returned at
    /// the first byte, so it is entered once more here.
    pub(crate) fn end(self) {
        drop(self.stream);
        self.request.in_scope(|| ());
    }
}

/// The trace id of the current span (32 hex digits), when tracing is on.
#[must_use]
pub(crate) fn current_trace_id() -> Option<String> {
    if !enabled() {
        return None;
    }
    #[cfg(feature = "otel")]
    return otel::trace_id(&Span::current());
    #[cfg(not(feature = "otel"))]
    None
}

/// `headers` with `traceparent` (and `tracestate`) naming `span` as the
/// parent, replacing the client's; `None` when tracing is off.
#[must_use]
pub(crate) fn with_traceparent(headers: &HeaderMap, span: &Span) -> Option<HeaderMap> {
    if span.is_none() {
        return None;
    }
    #[cfg(feature = "otel")]
    return Some(otel::with_traceparent(headers, span));
    #[cfg(not(feature = "otel"))]
    {
        let _ = headers;
        None
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn off_by_default_every_span_is_none_and_headers_pass_unchanged() {
        assert!(!enabled());
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let request = request_span("/v1/chat/completions", &headers);
        assert!(request.is_none());
        assert!(select_span(1).is_none());
        assert!(upstream_span("a", "http://a", 1).is_none());
        assert!(first_byte_span("a").is_none());
        assert!(StreamTrace::start("a").stream.is_none());
        assert_eq!(current_trace_id(), None);
        assert_eq!(with_traceparent(&headers, &request), None);
    }
}
