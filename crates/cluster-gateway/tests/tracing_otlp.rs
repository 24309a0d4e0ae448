//! OpenTelemetry traces end to end: the gateway's own subscriber set-up
//! (`telemetry::init_logging_and_traces`, what `mlx-cluster serve` runs)
//! exports over OTLP/HTTP to a receiver written here, which decodes the
//! protobuf export (`ExportTraceServiceRequest`). Two nodes record the
//! `traceparent` they are sent; the first request anywhere is refused with
//! 503, so the first trace has a retry.
//!
//! The in-process test is the only one that installs a subscriber (it is
//! process-global); the other runs `mlx-cluster serve`.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use cluster_facade::{NodeEntry, Router, RouterParams};
use cluster_gateway::{Gateway, GatewaySettings, init_logging_and_traces};
use cluster_sim::{SimNode, SimNodeConfig};
use cluster_types::{LoadBalanceStrategy, LogFormat, NodeSpec, NodeStatus};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use parking_lot::Mutex;
use prost::Message;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// What the receiver decoded: every span with its resource's attributes.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    resources: Vec<Vec<KeyValue>>,
    content_types: Vec<String>,
}

async fn otlp_traces(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let export = ExportTraceServiceRequest::decode(body).unwrap();
    let mut r = received.lock();
    if let Some(ct) = headers.get("content-type") {
        r.content_types.push(ct.to_str().unwrap().to_owned());
    }
    for rs in export.resource_spans {
        r.resources
            .push(rs.resource.map(|res| res.attributes).unwrap_or_default());
        for ss in rs.scope_spans {
            r.spans.extend(ss.spans);
        }
    }
    // An empty ExportTraceServiceResponse: full success.
    Response::builder()
        .status(200)
        .header("content-type", "application/x-protobuf")
        .body(Body::empty())
        .unwrap()
}

/// An OTLP/HTTP receiver on loopback: `http://…/v1/traces`.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(otlp_traces))
        .with_state(Arc::clone(&received));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), received)
}

/// The `traceparent` each node was sent, by node.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

#[derive(Clone)]
struct NodeState {
    id: &'static str,
    /// Chat requests over all nodes: the first is refused with 503.
    count: Arc<AtomicU32>,
    seen: Seen,
}

async fn chat(State(node): State<NodeState>, headers: HeaderMap, body: Bytes) -> Response {
    let traceparent = headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_owned());
    node.seen.lock().push((node.id.to_owned(), traceparent));
    if node.count.fetch_add(1, Ordering::SeqCst) == 0 {
        return Response::builder()
            .status(503)
            .body(Body::from("busy"))
            .unwrap();
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    let usage = json!({"prompt_tokens": 40, "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 16}});
    if request["stream"] == true {
        let chunk = json!({"choices": [{"index": 0, "delta": {"content": "ok"}}]});
        let last = json!({"choices": [], "usage": usage});
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from(format!(
                "data: {chunk}\n\ndata: {last}\n\ndata: [DONE]\n\n"
            )))
            .unwrap();
    }
    let answer = json!({"choices": [{"index": 0, "message": {"role": "assistant",
        "content": "ok"}}], "usage": usage});
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(answer.to_string()))
        .unwrap()
}

async fn node(id: &'static str, count: &Arc<AtomicU32>, seen: &Seen) -> String {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(NodeState {
            id,
            count: Arc::clone(count),
            seen: Arc::clone(seen),
        });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn attr_str(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => s,
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

fn attr_int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(AnyValue::IntValue(i)) => i,
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

/// `traceparent` → (trace id, parent span id).
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_a_trace_with_select_attempts_first_byte_and_stream() {
    let (endpoint, received) = receiver().await;
    let traces = init_logging_and_traces(LogFormat::Human, "warn", Some(&endpoint)).unwrap();
    let traces = traces.expect("an exporter for the endpoint");

    let count = Arc::new(AtomicU32::new(0));
    let seen: Seen = Arc::default();
    let nodes = [
        ("a", node("a", &count, &seen).await),
        ("b", node("b", &count, &seen).await),
    ];
    let router = Router::new(
        RouterParams::default().with_strategy(LoadBalanceStrategy::RoundRobin),
        cluster_metrics::system_clock(),
    );
    router.publish(
        nodes
            .iter()
            .map(|(id, url)| NodeEntry::new(NodeSpec::new(*id, url.clone()), NodeStatus::Healthy))
            .collect(),
    );
    let settings = GatewaySettings {
        retry_delay: Duration::from_millis(1),
        ..GatewaySettings::default()
    };
    let gateway = Gateway::new(router, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cluster_gateway::serve(
        listener,
        gateway,
        std::future::pending(),
    ));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // 1: refused by the first node, answered by the other.
    let first = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-mlx-cluster-attempts"], "2");
    let first_node = first.headers()["x-mlx-cluster-node"]
        .to_str()
        .unwrap()
        .to_owned();
    let first_reason = first.headers()["x-mlx-cluster-reason"]
        .to_str()
        .unwrap()
        .to_owned();
    first.bytes().await.unwrap();
    // 2: streamed, continuing the client's trace.
    let second = client
        .post(format!("{base}/v1/chat/completions"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"model": "m", "stream": true,
            "messages": [{"role": "user", "content": "hi again"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    let text = second.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");

    // Both decision records are written (the stream spans end with them).
    let mut records = Value::Null;
    for _ in 0..1000 {
        records = client
            .get(format!("{base}/v1/cluster/decisions"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if records["total"].as_u64().unwrap() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(records["total"], 3, "{records}");
    // Exports what is buffered (what `serve` does when it stops).
    tokio::task::spawn_blocking(move || traces.shutdown())
        .await
        .unwrap();

    let r = received.lock();
    assert!(
        r.content_types
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        r.content_types
    );
    let service = r
        .resources
        .iter()
        .flatten()
        .find(|kv| kv.key == "service.name");
    assert_eq!(
        service.and_then(|kv| kv.value.clone()?.value),
        Some(AnyValue::StringValue("mlx-cluster".into()))
    );
    let requests: Vec<&Span> = r
        .spans
        .iter()
        .filter(|s| s.name == "POST /v1/chat/completions")
        .collect();
    assert_eq!(requests.len(), 2, "spans: {:?}", names(&r.spans));
    let children = |parent: &Span| -> Vec<&Span> {
        let mut c: Vec<&Span> = r
            .spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
            .collect();
        c.sort_by_key(|s| s.start_time_unix_nano);
        c
    };
    let seen = seen.lock().clone();
    let by_trace = |trace: &str| -> Vec<(String, String)> {
        seen.iter()
            .filter_map(|(node, tp)| {
                let (t, parent) = parse_traceparent(tp.as_deref()?);
                (t == trace).then(|| (node.clone(), parent))
            })
            .collect()
    };

    // Request 1: a fresh trace (no client parent), two attempts.
    let one = requests
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .expect("a root request span");
    assert_eq!(one.kind, SpanKind::Server as i32);
    assert_eq!(attr_int(one, "http.response.status_code"), 200);
    assert_eq!(attr_str(one, "url.path"), "/v1/chat/completions");
    assert_eq!(attr_str(one, "mlx_cluster.node"), first_node);
    assert_eq!(attr_str(one, "mlx_cluster.reason"), first_reason);
    assert_eq!(attr_int(one, "mlx_cluster.attempts"), 2);
    let kids = children(one);
    let kid_names: Vec<&str> = kids.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        kid_names,
        [
            "select",
            "upstream",
            "select",
            "upstream",
            "first_byte",
            "stream"
        ],
        "{:?}",
        names(&r.spans)
    );
    let (up1, up2) = (kids[1], kids[3]);
    let refused = attr_str(up1, "mlx_cluster.node");
    assert_ne!(refused, first_node);
    assert_eq!(attr_str(kids[0], "mlx_cluster.node"), refused);
    assert_eq!(attr_int(kids[0], "mlx_cluster.attempt"), 1);
    assert_eq!(attr_int(up1, "mlx_cluster.attempt"), 1);
    assert_eq!(attr_int(up1, "http.response.status_code"), 503);
    assert_eq!(attr_str(up1, "mlx_cluster.outcome"), "503");
    assert_eq!(up1.kind, SpanKind::Client as i32);
    assert_eq!(
        up1.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(attr_str(kids[2], "mlx_cluster.node"), first_node);
    assert_eq!(attr_int(up2, "mlx_cluster.attempt"), 2);
    assert_eq!(attr_str(up2, "mlx_cluster.node"), first_node);
    assert_eq!(attr_int(up2, "http.response.status_code"), 200);
    assert_eq!(attr_str(up2, "mlx_cluster.outcome"), "ok");
    assert!(attr_str(up2, "server.address").starts_with("http://127.0.0.1:"));
    let stream = kids[5];
    assert_eq!(attr_str(stream, "mlx_cluster.outcome"), "success");
    assert_eq!(attr_int(stream, "gen_ai.usage.input_tokens"), 40);
    assert_eq!(attr_int(stream, "mlx_cluster.cached_tokens"), 16);
    assert_eq!(attr_int(stream, "gen_ai.usage.output_tokens"), 2);
    // In time order: each child inside the request, attempts before the
    // first byte, the first byte before the stream.
    for kid in &kids {
        assert!(kid.start_time_unix_nano >= one.start_time_unix_nano);
        assert!(
            kid.end_time_unix_nano <= one.end_time_unix_nano,
            "{} ends after the request: {} > {}",
            kid.name,
            kid.end_time_unix_nano,
            one.end_time_unix_nano
        );
    }
    assert!(up2.end_time_unix_nano <= kids[4].start_time_unix_nano);
    assert!(kids[4].end_time_unix_nano <= stream.start_time_unix_nano);
    // Each node's parent is its attempt's span.
    let trace_one = hex(&one.trace_id);
    assert_eq!(
        by_trace(&trace_one),
        [
            (refused.clone(), hex(&up1.span_id)),
            (first_node.clone(), hex(&up2.span_id))
        ]
    );

    // Request 2: continues the client's trace, one attempt.
    let two = requests
        .iter()
        .find(|s| !s.parent_span_id.is_empty())
        .unwrap();
    assert_eq!(hex(&two.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&two.parent_span_id), CLIENT_SPAN);
    let kid_names: Vec<String> = children(two).iter().map(|s| s.name.clone()).collect();
    assert_eq!(kid_names, ["select", "upstream", "first_byte", "stream"]);
    let up = children(two)[1];
    let sent = by_trace(CLIENT_TRACE);
    assert_eq!(sent.len(), 1, "{seen:?}");
    assert_eq!(
        sent[0].1,
        hex(&up.span_id),
        "the client's span is not sent on"
    );

    // The decision records name their traces (newest first).
    let traced: Vec<&str> = records["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(traced, [CLIENT_TRACE, &trace_one, &trace_one]);
}

fn names(spans: &[Span]) -> Vec<(String, String, String)> {
    spans
        .iter()
        .map(|s| (s.name.clone(), hex(&s.span_id), hex(&s.parent_span_id)))
        .collect()
}

/// `mlx-cluster serve` with `observability.otlp_endpoint`: the request's
/// spans are still buffered when SIGTERM comes (the batch delay is set to
/// ten minutes) and reach the receiver as the gateway stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_its_buffered_spans_when_it_stops() {
    let (endpoint, received) = receiver().await;
    let node = SimNode::start(SimNodeConfig {
        model_id: "sim".to_owned(),
        time_scale: 100.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("mlx-cluster-otlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[discovery]
mode = "static"
nodes = [{{ id = "n0", url = "{}" }}]

[health]
check_interval = "200ms"
timeout = "150ms"
recovery_successes = 1

[gateway]
listen = "127.0.0.1:{port}"

[observability]
otlp_endpoint = "{endpoint}"
"#,
            node.base_url()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-cluster"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut answered = None;
    for _ in 0..400 {
        let sent = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&json!({"model": "sim", "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await;
        if let Ok(r) = sent
            && r.status() == 200
        {
            answered = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if answered.is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the gateway never answered 200:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        received.lock().spans.is_empty(),
        "exported before the batch delay"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&exit.stderr);
    assert!(exit.status.success(), "{log}");
    assert!(log.contains("exporting OpenTelemetry traces"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
    let r = received.lock();
    let names: Vec<&str> = r.spans.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "POST /v1/chat/completions",
        "select",
        "upstream",
        "first_byte",
        "stream",
    ] {
        assert!(names.contains(&name), "no {name} span in {names:?}\n{log}");
    }
}
