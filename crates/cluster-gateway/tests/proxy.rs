//! The proxy path against fake nodes, with a bare `Router` whose node
//! statuses the test publishes (no health checker racing the assertions).
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use cluster_facade::{NodeEntry, Router};
use cluster_gateway::GatewaySettings;
use cluster_types::LoadBalanceStrategy;
use cluster_types::{ApiKey, NodeId, NodeSpec, NodeStatus};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

use test_support::reply::{sse, status};
use test_support::{FakeNode, closed_url, poll_until};

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;

fn ok_json() -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .header("x-node-custom", "kept")
        .body(Body::from(
            r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello"}}],"usage":{"prompt_tokens":20,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":16}}}"#,
        ))
        .unwrap()
}

fn entry(id: &str, url: &str, status: NodeStatus) -> NodeEntry {
    let mut e = NodeEntry::new(NodeSpec::new(id, url), status);
    e.models = vec!["m".into()];
    e
}

struct Harness {
    router: Router,
    base: String,
    client: reqwest::Client,
}

async fn harness(
    entries: Vec<NodeEntry>,
    strategy: LoadBalanceStrategy,
    tweak: impl FnOnce(&mut GatewaySettings),
) -> Harness {
    let (router, _, base) = support::serve_router(entries, strategy, |s| {
        s.retry_delay = Duration::from_millis(1);
        tweak(s);
    })
    .await;
    Harness {
        router,
        base,
        client: reqwest::Client::new(),
    }
}

impl Harness {
    async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    fn metrics(&self, id: &str) -> cluster_types::NodeMetrics {
        self.router.node_metrics(&NodeId::from(id)).unwrap()
    }
}

/// Waits (bounded) until `f` holds; guards finish on another task after the
/// client has its last byte.
async fn eventually(f: impl FnMut() -> bool) {
    poll_until("the guard to finish", Duration::from_secs(10), f).await;
}

#[tokio::test]
async fn non_streamed_answer_is_passed_through_and_usage_recorded() {
    let node = FakeNode::start(|_| ok_json()).await;
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::RoundRobin,
        |_| {},
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mlx-cluster-node"], "a");
    assert_eq!(r.headers()["x-node-custom"], "kept");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "hello");
    eventually(|| h.metrics("a").successes_total == 1).await;
    let m = h.metrics("a");
    assert_eq!(m.prompt_tokens_total, 20);
    assert_eq!(m.cached_tokens_total, 16);
    assert_eq!(m.in_flight, 0);
}

/// Completion tokens the node reports, streamed or not, reach the node's
/// metrics and the cluster totals of `/v1/cluster/status`.
#[tokio::test]
async fn completion_tokens_reach_the_status() {
    let node = FakeNode::start(|seen| {
        if !String::from_utf8_lossy(&seen.body).contains("\"stream\":true") {
            return ok_json();
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n",
            )))
            .await
            .unwrap();
        });
        sse(rx)
    })
    .await;
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::RoundRobin,
        |_| {},
    )
    .await;
    for body in [CHAT, CHAT_STREAM] {
        let r = h.post("/v1/chat/completions", body).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // 2 from the JSON answer, 5 from the stream's usage chunk.
    eventually(|| h.metrics("a").successes_total == 2).await;
    assert_eq!(h.metrics("a").completion_tokens_total, 7);
    let status: serde_json::Value = h
        .client
        .get(format!("{}/v1/cluster/status", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["metrics"]["completion_tokens_total"], 7, "{status}");
    assert_eq!(status["metrics"]["prompt_tokens_total"], 29, "{status}");
    assert_eq!(
        status["nodes"][0]["metrics"]["completion_tokens_total"], 7,
        "{status}"
    );
}

#[tokio::test]
async fn node_api_key_is_sent_and_client_auth_is_not() {
    let node = FakeNode::start(|_| ok_json()).await;
    let mut e = entry("a", &node.url(), NodeStatus::Healthy);
    e.spec.api_key = Some(ApiKey::new("node-secret"));
    let h = harness(vec![e], LoadBalanceStrategy::RoundRobin, |_| {}).await;
    let r = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth("client-dummy")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        node.last().header("authorization"),
        Some("Bearer node-secret")
    );
    let status = h
        .client
        .get(format!("{}/v1/cluster/status", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!status.contains("node-secret"), "{status}");
    assert!(status.contains("<redacted>"));
}

#[tokio::test]
async fn stream_chunks_reach_the_client_before_the_node_finishes() {
    let release = Arc::new(Notify::new());
    let r2 = Arc::clone(&release);
    let node = FakeNode::start(move |_| {
        let (tx, rx) = mpsc::channel(4);
        let release = Arc::clone(&r2);
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b": keepalive\n\n"))).await.unwrap();
            tx.send(Ok(Bytes::from_static(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
            )))
            .await
            .unwrap();
            release.notified().await;
            tx.send(Ok(Bytes::from_static(
                b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n",
            )))
            .await
            .unwrap();
        });
        sse(rx)
    })
    .await;
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::RoundRobin,
        |_| {},
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"a\"") {
        seen.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    // The node has not finished: the gateway did not buffer.
    assert!(!String::from_utf8_lossy(&seen).contains("[DONE]"));
    release.notify_one();
    while let Some(chunk) = stream.next().await {
        seen.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(seen).unwrap();
    assert!(text.starts_with(": keepalive\n\n"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    eventually(|| h.metrics("a").successes_total == 1).await;
    assert_eq!(h.metrics("a").cached_tokens_total, 4);
    assert!(h.metrics("a").avg_ttft_ms.is_some());
}

#[tokio::test]
async fn overloaded_and_failing_nodes_are_retried_elsewhere() {
    let busy = FakeNode::start(|_| status(503, Some("7"))).await;
    let broken = FakeNode::start(|_| status(500, None)).await;
    let good = FakeNode::start(|_| ok_json()).await;
    let dead = closed_url();
    let h = harness(
        vec![
            entry("a-busy", &busy.url(), NodeStatus::Healthy),
            entry("b-dead", &dead, NodeStatus::Healthy),
            entry("c-broken", &broken.url(), NodeStatus::Healthy),
            // Degraded: tried only once every healthy node was.
            entry("d-good", &good.url(), NodeStatus::Degraded),
        ],
        LoadBalanceStrategy::RoundRobin,
        |s| s.max_retries = 3,
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    assert_eq!(r.headers()["x-mlx-cluster-node"], "d-good");
    assert_eq!(r.headers()["x-mlx-cluster-attempts"], "4");
    assert_eq!((busy.hits(), broken.hits(), good.hits()), (1, 1, 1));
    eventually(|| h.metrics("d-good").successes_total == 1).await;
    assert_eq!(h.metrics("b-dead").failures_total, 1);
    assert_eq!(h.metrics("c-broken").failures_total, 1);
    assert_eq!(h.metrics("a-busy").in_flight, 0);
}

#[tokio::test]
async fn retries_are_bounded_and_the_last_answer_is_passed_through() {
    let a = FakeNode::start(|_| status(429, Some("3"))).await;
    let b = FakeNode::start(|_| status(429, Some("3"))).await;
    let c = FakeNode::start(|_| ok_json()).await;
    let h = harness(
        vec![
            entry("a", &a.url(), NodeStatus::Healthy),
            entry("b", &b.url(), NodeStatus::Healthy),
            entry("c", &c.url(), NodeStatus::Degraded),
        ],
        LoadBalanceStrategy::RoundRobin,
        |s| s.max_retries = 1,
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(r.headers()["x-mlx-cluster-attempts"], "2");
    assert!(r.text().await.unwrap().contains("node says 429"));
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 0));
}

#[tokio::test]
async fn a_single_failing_node_is_never_tried_twice() {
    let a = FakeNode::start(|_| status(502, None)).await;
    let h = harness(
        vec![entry("a", &a.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::CacheAware,
        |s| s.max_retries = 5,
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 502);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn connect_failures_only_give_an_openai_error() {
    let h = harness(
        vec![
            entry("x", &closed_url(), NodeStatus::Healthy),
            entry("y", &closed_url(), NodeStatus::Healthy),
        ],
        LoadBalanceStrategy::RoundRobin,
        |_| {},
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert_eq!(v["error"]["type"], "server_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot connect to node"), "{msg}");
    assert!(msg.contains("after 2 attempts"), "{msg}");
}

#[tokio::test]
async fn no_routable_node_is_a_503_listing_node_states() {
    let h = harness(
        vec![
            entry("a", "http://127.0.0.1:9", NodeStatus::Unhealthy),
            entry("b", "http://127.0.0.1:9", NodeStatus::Offline),
        ],
        LoadBalanceStrategy::CacheAware,
        |_| {},
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_routable_node");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no healthy node serves model \"m\""), "{msg}");
    assert!(
        msg.contains("a: unhealthy") && msg.contains("b: offline"),
        "{msg}"
    );
    let ready = h
        .client
        .get(format!("{}/readyz", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn failure_mid_stream_ends_with_an_sse_error_event() {
    let node = FakeNode::start(|_| {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b"data: {\"choices\":[]}\n\n")))
                .await
                .unwrap();
            // The node dies after its first event went out (the body is
            // pending in between, so its server flushes the event): the
            // gateway has committed the stream. (A body that fails before
            // its first frame is retried instead.)
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(Err(std::io::Error::other("node died")))
                .await
                .unwrap();
        });
        sse(rx)
    })
    .await;
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::RoundRobin,
        |_| {},
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let last = text.trim_end().lines().last().unwrap();
    assert!(last.starts_with("data: {\"error\""), "{text}");
    let v: serde_json::Value = serde_json::from_str(&last["data: ".len()..]).unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("node a"));
    eventually(|| h.metrics("a").failures_total == 1).await;
}

#[tokio::test]
async fn request_timeout_ends_an_endless_stream() {
    let node = FakeNode::start(|_| {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while tx
                .send(Ok(Bytes::from_static(b"data: {\"choices\":[]}\n\n")))
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        sse(rx)
    })
    .await;
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::RoundRobin,
        |s| s.request_timeout = Some(Duration::from_millis(300)),
    )
    .await;
    let text = h
        .post("/v1/chat/completions", CHAT_STREAM)
        .await
        .text()
        .await
        .unwrap();
    let last = text.trim_end().lines().last().unwrap();
    assert!(last.contains("gateway.request_timeout"), "{last}");
    assert!(last.contains("upstream_timeout"), "{last}");
    eventually(|| h.metrics("a").failures_total == 1).await;
}

#[tokio::test]
async fn stream_closed_without_done_is_reported_as_an_error() {
    let node = FakeNode::start(|_| {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b"data: {\"choices\":[]}\n\n")))
                .await
                .unwrap();
        });
        sse(rx)
    })
    .await;
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::RoundRobin,
        |_| {},
    )
    .await;
    let text = h
        .post("/v1/chat/completions", CHAT_STREAM)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("closed the stream before its end"), "{text}");
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let dropped = Arc::new(Notify::new());
    let d2 = Arc::clone(&dropped);
    let node = FakeNode::start(move |_| {
        let (tx, rx) = mpsc::channel(1);
        let dropped = Arc::clone(&d2);
        tokio::spawn(async move {
            loop {
                let chunk = Ok(Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
                if tx.send(chunk).await.is_err() {
                    // The gateway dropped the node's body: request cancelled.
                    dropped.notify_one();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        sse(rx)
    })
    .await;
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::RoundRobin,
        |_| {},
    )
    .await;
    let r = h.post("/v1/chat/completions", CHAT_STREAM).await;
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), dropped.notified())
        .await
        .expect("upstream body dropped after the client left");
    eventually(|| h.metrics("a").cancelled_total == 1).await;
    assert_eq!(h.metrics("a").failures_total, 0);
    assert_eq!(h.metrics("a").in_flight, 0);
}

#[tokio::test]
async fn body_limit_and_bad_json_are_client_errors() {
    let node = FakeNode::start(|_| ok_json()).await;
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy)],
        LoadBalanceStrategy::RoundRobin,
        |s| s.max_body_bytes = 1024,
    )
    .await;
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let r = h.post("/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");
    // Chunked body without content-length: the limit holds as well.
    let chunks =
        futures::stream::iter((0..8).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b' '; 512]))));
    let r = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = h.post("/v1/chat/completions", "{not json").await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(node.hits(), 0);
}

#[tokio::test]
async fn admin_needs_the_token_and_drain_takes_a_node_out() {
    let a = FakeNode::start(|_| ok_json()).await;
    let b = FakeNode::start(|_| ok_json()).await;
    let h = harness(
        vec![
            entry("a", &a.url(), NodeStatus::Healthy),
            entry("b", &b.url(), NodeStatus::Healthy),
        ],
        LoadBalanceStrategy::RoundRobin,
        |s| s.admin_token = Some(ApiKey::new("t0ken")),
    )
    .await;
    let url = format!("{}/admin/nodes/a/drain", h.base);
    let r = h.client.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = h
        .client
        .post(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .client
        .post(&url)
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..4 {
        let r = h.post("/v1/chat/completions", CHAT).await;
        assert_eq!(r.headers()["x-mlx-cluster-node"], "b");
    }
    assert_eq!(a.hits(), 0);
    let r = h
        .client
        .post(format!("{}/admin/nodes/a/undrain", h.base))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .client
        .post(format!("{}/admin/nodes/nope/drain", h.base))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .client
        .post(format!("{}/admin/discovery/refresh", h.base))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_without_a_configured_token_is_disabled() {
    let h = harness(vec![], LoadBalanceStrategy::RoundRobin, |_| {}).await;
    let r = h
        .client
        .post(format!("{}/admin/discovery/refresh", h.base))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "admin_disabled");
}

#[tokio::test]
async fn ops_endpoints() {
    let node = FakeNode::start(|_| ok_json()).await;
    let mut other = entry("b", "http://127.0.0.1:9", NodeStatus::Unhealthy);
    other.models = vec!["z".into(), "m".into()];
    let h = harness(
        vec![entry("a", &node.url(), NodeStatus::Healthy), other],
        LoadBalanceStrategy::RoundRobin,
        |_| {},
    )
    .await;
    let get = |path: &str| h.client.get(format!("{}{path}", h.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let models: serde_json::Value = get("/v1/models").await.unwrap().json().await.unwrap();
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["m", "z"]);
    let status: serde_json::Value = get("/v1/cluster/status")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["nodes"][0]["spec"]["id"], "a");
    assert_eq!(status["nodes"][1]["status"], "unhealthy");
    let dash = get("/").await.unwrap();
    assert!(
        dash.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(dash.text().await.unwrap().contains("mlx-cluster"));
    let r = get("/nope").await.unwrap();
    assert_eq!(r.status(), 404);
    h.post("/v1/chat/completions", CHAT).await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("mlx_cluster_gateway_responses_total{api=\"chat\",status=\"2xx\"} 1"),
        "{metrics}"
    );
}
