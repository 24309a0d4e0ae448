//! The OpenTelemetry side of [`super`] (cargo feature `otel`): the OTLP/HTTP
//! exporter and the tracer provider, W3C trace-context extraction and
//! injection, trace ids.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use cluster_types::LogFormat;

use super::{ENABLED, TARGET};
use crate::error::GatewayError;

/// The service name the traces carry (`service.name`).
const SERVICE_NAME: &str = "mlx-cluster";

/// Builds the exporter for `endpoint` and installs the global subscriber:
/// the OpenTelemetry layer (spans of [`TARGET`], and warnings inside them)
/// beside the log lines.
pub(super) fn install(
    format: LogFormat,
    default_filter: &str,
    endpoint: &str,
) -> Result<SdkTracerProvider, GatewayError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| GatewayError::Config {
            message: format!("observability.otlp_endpoint: {e}"),
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_threads(false)
        .with_location(false)
        .with_filter(
            Targets::new()
                .with_target(TARGET, LevelFilter::INFO)
                .with_default(LevelFilter::WARN),
        );
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        _ => fmt.with_filter(filter).boxed(),
    };
    if tracing_subscriber::registry()
        .with(otel)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(provider)
}

/// Exports what is buffered and stops the exporter.
pub(super) fn shutdown(provider: &SdkTracerProvider) {
    if let Err(error) = provider.shutdown() {
        tracing::warn!(%error, "could not export the last traces");
    }
}

/// Makes `span` a child of the client's `traceparent`, when it sent one.
pub(super) fn continue_client_trace(span: &Span, client_headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(client_headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` (32 hex digits), when it has one.
pub(super) fn trace_id(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// `headers` with `traceparent` (and `tracestate`) naming `span` as the
/// parent, replacing the client's.
pub(super) fn with_traceparent(headers: &HeaderMap, span: &Span) -> HeaderMap {
    let mut out = headers.clone();
    out.remove("traceparent");
    out.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(&mut out));
    out
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extractor_reads_a_w3c_traceparent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(
            out["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
