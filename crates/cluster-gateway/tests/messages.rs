//! `POST /v1/messages` end to end against fake nodes behind a bare
//! `Router`: translation both ways, streaming without buffering, the
//! pass-through for nodes that serve Messages, errors in Anthropic's shape,
//! the `max_tokens` cap, model mapping, sessions and `count_tokens`.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use cluster_facade::{NodeEntry, Router};
use cluster_gateway::GatewaySettings;
use cluster_types::LoadBalanceStrategy;
use cluster_types::{ApiKey, NodeId, NodeSpec, NodeStatus};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use test_support::reply::{json, sse};
use test_support::{FakeNode, poll_until};

fn completion(text: &str, finish: &str) -> Response {
    json(
        200,
        &json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53, "prompt_tokens_details": {"cached_tokens": 40}}
        }),
    )
}

fn entry(id: &str, url: &str) -> NodeEntry {
    let mut e = NodeEntry::new(NodeSpec::new(id, url), NodeStatus::Healthy);
    e.models = vec!["local-model".into()];
    e
}

struct Harness {
    router: Router,
    base: String,
    client: reqwest::Client,
}

async fn harness(entries: Vec<NodeEntry>, tweak: impl FnOnce(&mut GatewaySettings)) -> Harness {
    let (router, _, base) = support::serve_router(entries, LoadBalanceStrategy::RoundRobin, |s| {
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
    async fn messages(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/messages?beta=true", self.base))
            .header("x-api-key", "client-secret")
            .header("authorization", "Bearer client-token")
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "claude-code-20250219")
            .header("x-claude-code-session-id", "session-1")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    fn metrics(&self, id: &str) -> cluster_types::NodeMetrics {
        self.router.node_metrics(&NodeId::from(id)).unwrap()
    }
}

async fn eventually(f: impl FnMut() -> bool) {
    poll_until("the guard to finish", Duration::from_secs(10), f).await;
}

fn hello(stream: bool) -> Value {
    json!({
        "model": "claude-opus-5-5",
        "max_tokens": 128000,
        "stream": stream,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "adaptive"},
        "metadata": {"user_id": "{\"session_id\":\"from-metadata\"}"},
        "messages": [{"role": "user", "content": "Say hello"}]
    })
}

/// The events of a Messages stream as (name, data).
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap();
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn non_streamed_request_is_translated_both_ways() {
    let node = FakeNode::start(|_| completion("hello there", "stop")).await;
    let mut e = entry("a", &node.url());
    e.spec.api_key = Some(ApiKey::new("node-secret"));
    let h = harness(vec![e], |_| {}).await;
    let r = h.messages(&hello(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mlx-cluster-node"], "a");
    assert_eq!(r.headers()["content-type"], "application/json");
    let message: Value = r.json().await.unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(
        message["model"], "claude-opus-5-5",
        "the client's name is echoed"
    );
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        message["content"],
        json!([{"type": "text", "text": "hello there"}])
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 40, "output_tokens": 3})
    );

    let seen = node.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.json(),
        json!({
            "model": "default_model",
            "max_tokens": 8192,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello"}
            ]
        })
    );
    // The node's key, never the client's credentials or Anthropic headers.
    assert_eq!(seen.headers["authorization"], "Bearer node-secret");
    for gone in [
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
        "x-claude-code-session-id",
    ] {
        assert!(!seen.headers.contains_key(gone), "{gone} was forwarded");
    }
    eventually(|| h.metrics("a").successes_total == 1).await;
    assert_eq!(h.metrics("a").cached_tokens_total, 40);
}

#[tokio::test]
async fn streamed_deltas_reach_the_client_before_the_node_finishes() {
    let release = Arc::new(Notify::new());
    let r2 = Arc::clone(&release);
    let node = FakeNode::start(move |_| {
        let (tx, rx) = mpsc::channel(4);
        let release = Arc::clone(&r2);
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b": keepalive 10/20\n\n")))
                .await
                .unwrap();
            tx.send(Ok(Bytes::from_static(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            )))
            .await
            .unwrap();
            release.notified().await;
            tx.send(Ok(Bytes::from_static(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":24}}}\n\ndata: [DONE]\n\n",
            )))
            .await
            .unwrap();
        });
        sse(rx)
    })
    .await;
    let h = harness(vec![entry("a", &node.url())], |_| {}).await;
    let r = h.messages(&hello(true)).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = r.bytes_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("content_block_delta") {
        seen.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    // The node has not finished: nothing was buffered.
    assert!(!String::from_utf8_lossy(&seen).contains("message_stop"));
    release.notify_one();
    while let Some(chunk) = stream.next().await {
        seen.extend_from_slice(&chunk.unwrap());
    }
    let ev = events(&String::from_utf8(seen).unwrap());
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[6].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(ev[6].1["usage"]["cache_read_input_tokens"], 24);
    assert_eq!(ev[6].1["usage"]["input_tokens"], 6);
    // The node was asked for the usage chunk.
    assert_eq!(
        node.last().json()["stream_options"],
        json!({"include_usage": true})
    );
    eventually(|| h.metrics("a").successes_total == 1).await;
    assert_eq!(h.metrics("a").cached_tokens_total, 24);
    assert!(h.metrics("a").avg_ttft_ms.is_some());
}

#[tokio::test]
async fn a_node_failing_mid_stream_ends_with_an_error_event() {
    let node = FakeNode::start(|_| {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            )))
            .await
            .unwrap();
            // The node dies after its first event went out (a body that
            // fails before its first frame is retried instead).
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tx.send(Err(std::io::Error::other("node died")))
                .await
                .unwrap();
        });
        sse(rx)
    })
    .await;
    let h = harness(vec![entry("a", &node.url())], |_| {}).await;
    let text = h.messages(&hello(true)).await.text().await.unwrap();
    let ev = events(&text);
    let (name, data) = ev.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "api_error");
    assert!(
        data["error"]["message"]
            .as_str()
            .unwrap()
            .contains("node a")
    );
    assert!(!text.contains("message_stop"));
    eventually(|| h.metrics("a").failures_total == 1).await;
}

#[tokio::test]
async fn nodes_serving_messages_get_the_request_passed_through() {
    let node = FakeNode::start(|_| {
        json(
            200,
            &json!({"id": "msg_native", "type": "message", "role": "assistant", "model": "local-model",
                "content": [{"type": "text", "text": "native"}], "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 5, "cache_read_input_tokens": 7, "output_tokens": 1}}),
        )
    })
    .await;
    let mut e = entry("native", &node.url());
    e.spec.tags.insert("api".into(), "anthropic".into());
    e.spec.tags.insert("max_output_tokens".into(), "100".into());
    e.spec.api_key = Some(ApiKey::new("node-key"));
    let h = harness(vec![e], |s| {
        s.model_aliases
            .insert("claude-*".into(), "local-model".into());
    })
    .await;
    let r = h.messages(&hello(false)).await;
    assert_eq!(r.status(), 200);
    let message: Value = r.json().await.unwrap();
    assert_eq!(message["id"], "msg_native", "relayed unchanged");
    let seen = node.last();
    assert_eq!(seen.path, "/v1/messages?beta=true");
    let mut want = hello(false);
    want["model"] = json!("local-model");
    want["max_tokens"] = json!(100);
    assert_eq!(seen.json(), want);
    assert_eq!(seen.headers["x-api-key"], "node-key");
    assert_eq!(seen.headers["authorization"], "Bearer node-key");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    eventually(|| h.metrics("native").successes_total == 1).await;
    assert_eq!(h.metrics("native").cached_tokens_total, 7);
}

#[tokio::test]
async fn model_aliases_default_model_and_caps() {
    let node = FakeNode::start(|_| completion("x", "length")).await;
    let mut small = entry("small", &node.url());
    small
        .spec
        .tags
        .insert("max_output_tokens".into(), "7".into());
    let h = harness(vec![small], |s| {
        s.model_aliases
            .insert("claude-haiku-*".into(), "local-model".into());
        s.max_output_tokens = 1000;
    })
    .await;
    let mut body = hello(false);
    body["model"] = json!("claude-haiku-4-5");
    body["max_tokens"] = json!(50);
    assert_eq!(h.messages(&body).await.status(), 200);
    let seen = node.last().json();
    assert_eq!(seen["model"], "local-model");
    assert_eq!(seen["max_tokens"], 7, "the node's tag caps it");

    // A model a node lists is kept; an unknown one goes to the default.
    body["model"] = json!("local-model");
    h.messages(&body).await;
    assert_eq!(node.last().json()["model"], "local-model");
    body["model"] = json!("gpt-9");
    let r = h.messages(&body).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["stop_reason"],
        "max_tokens"
    );
    assert_eq!(node.last().json()["model"], "default_model");
}

#[tokio::test]
async fn errors_have_anthropic_shapes_and_statuses() {
    let node = FakeNode::start(|seen| {
        if seen.json()["temperature"] == json!(1.5) {
            json(400, &json!({"error": "temperature is not supported"}))
        } else {
            json(503, &json!({"error": {"message": "loading"}}))
        }
    })
    .await;
    let h = harness(vec![entry("a", &node.url())], |s| s.max_body_bytes = 2048).await;

    let bad = h
        .messages(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}))
        .await;
    assert_eq!(bad.status(), 400);
    let v: Value = bad.json().await.unwrap();
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages.0.content.0.tool_use_id: field required"}})
    );
    assert_eq!(node.hits(), 0, "a bad request never reaches a node");

    let big = h
        .messages(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x".repeat(4096)}]}))
        .await;
    assert_eq!(big.status(), 413);
    assert_eq!(
        big.json::<Value>().await.unwrap()["error"]["type"],
        "request_too_large"
    );

    let mut hot = hello(false);
    hot["temperature"] = json!(1.5);
    let r = h.messages(&hot).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "node a answered 400 Bad Request: temperature is not supported"
    );

    // A node answering 503 on every attempt: overloaded.
    let r = h.messages(&hello(false)).await;
    assert_eq!(r.status().as_u16(), 529);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "overloaded_error"
    );
}

#[tokio::test]
async fn no_routable_node_is_529_overloaded() {
    let node = FakeNode::start(|_| completion("x", "stop")).await;
    let mut e = entry("a", &node.url());
    e.status = NodeStatus::Offline;
    let h = harness(vec![e], |_| {}).await;
    let r = h.messages(&hello(true)).await;
    assert_eq!(r.status().as_u16(), 529);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a: offline")
    );
}

#[tokio::test]
async fn sessions_come_from_claude_code_headers_then_metadata() {
    let node_a = FakeNode::start(|_| completion("x", "stop")).await;
    let node_b = FakeNode::start(|_| completion("x", "stop")).await;
    let h = harness(
        vec![entry("a", &node_a.url()), entry("b", &node_b.url())],
        |_| {},
    )
    .await;
    let counts = || (node_a.hits(), node_b.hits());
    // Round-robin would alternate; the session pins the conversation.
    for _ in 0..4 {
        assert_eq!(h.messages(&hello(false)).await.status(), 200);
    }
    let (a, b) = counts();
    assert!(a == 4 || b == 4, "header session: a={a} b={b}");
    // Without Claude Code's header, `metadata.user_id`'s session_id.
    for _ in 0..4 {
        let r = h
            .client
            .post(format!("{}/v1/messages", h.base))
            .json(&hello(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (a2, b2) = counts();
    assert!(
        a2 - a == 4 || b2 - b == 4,
        "metadata session: a={} b={}",
        a2 - a,
        b2 - b
    );
}

#[tokio::test]
async fn count_tokens_estimates_without_a_node() {
    let node = FakeNode::start(|_| completion("x", "stop")).await;
    let h = harness(vec![entry("a", &node.url())], |_| {}).await;
    let body = json!({"model": "claude-x", "system": "s".repeat(400), "messages": [{"role": "user", "content": "hello"}]});
    let r = h
        .client
        .post(format!("{}/v1/messages/count_tokens?beta=true", h.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let n = v["input_tokens"].as_u64().unwrap();
    assert!((100..=110).contains(&n), "{v}");
    assert_eq!(node.hits(), 0);
}
