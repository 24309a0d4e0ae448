//! Every fault can be injected, at start and at run time, and behaves as
//! documented.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cluster_sim::model::NodeModelConfig;
use cluster_sim::{FaultConfig, SimNode, SimNodeConfig};
use common::{chat_body, client, fast_config, sse_events, start_fast};
use serde_json::{Value, json};

async fn node_with(faults: FaultConfig) -> SimNode {
    SimNode::start(SimNodeConfig {
        faults,
        ..fast_config()
    })
    .await
    .unwrap()
}

fn chat_url(node: &SimNode) -> String {
    format!("{}/v1/chat/completions", node.base_url())
}

#[tokio::test]
async fn error_rate_at_start() {
    let node = node_with(FaultConfig {
        error_rate: 1.0,
        error_status: 502,
        ..FaultConfig::default()
    })
    .await;
    let response = client()
        .post(chat_url(&node))
        .json(&chat_body("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string());
    // Health is unaffected by request faults.
    let health = client()
        .get(format!("{}/health", node.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn overload_with_retry_after_429_and_503() {
    for status in [429u16, 503] {
        let node = node_with(FaultConfig {
            overload_rate: 1.0,
            overload_status: status,
            retry_after_seconds: 7,
            ..FaultConfig::default()
        })
        .await;
        let response = client()
            .post(chat_url(&node))
            .json(&chat_body("x", true, true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["retry-after"], "7");
    }
}

#[tokio::test]
async fn latency_spike_still_answers() {
    let node = node_with(FaultConfig {
        spike_rate: 1.0,
        spike_seconds: 2.0,
        ..FaultConfig::default()
    })
    .await;
    let response = client()
        .post(chat_url(&node))
        .json(&chat_body("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = client()
        .get(format!("{}/metrics", node.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("mlx_sim_injected_faults_total{"))
        .unwrap();
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test]
async fn hang_never_answers() {
    let node = node_with(FaultConfig {
        hang_rate: 1.0,
        ..FaultConfig::default()
    })
    .await;
    let result = client()
        .post(chat_url(&node))
        .timeout(Duration::from_millis(300))
        .json(&chat_body("x", false, false))
        .send()
        .await;
    let error = result.unwrap_err();
    assert!(error.is_timeout(), "{error}");
}

#[tokio::test]
async fn close_mid_stream() {
    let node = node_with(FaultConfig {
        close_rate: 1.0,
        ..FaultConfig::default()
    })
    .await;
    let mut body = chat_body("x", true, true);
    body["max_tokens"] = json!(40);
    let response = client()
        .post(chat_url(&node))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let error = response.text().await.unwrap_err();
    assert!(error.is_body() || error.is_decode(), "{error}");

    // Not streamed: headers promise more than the body delivers.
    let response = client()
        .post(chat_url(&node))
        .json(&chat_body("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn garbage_json() {
    let node = node_with(FaultConfig {
        garbage_rate: 1.0,
        ..FaultConfig::default()
    })
    .await;
    let response = client()
        .post(chat_url(&node))
        .json(&chat_body("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());

    let text = client()
        .post(chat_url(&node))
        .json(&chat_body("x", true, true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let data: Vec<_> = events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert!(serde_json::from_str::<Value>(data[0]).is_err());
    assert_eq!(*data.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn fail_health() {
    let node = node_with(FaultConfig {
        fail_health: true,
        ..FaultConfig::default()
    })
    .await;
    let base = node.base_url();
    for path in ["/health", "/health_generate", "/v1/models"] {
        let response = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 503, "{path}");
    }
}

#[tokio::test]
async fn dead_generation_thread_like_mlx() {
    let node = node_with(FaultConfig {
        generation_dead: true,
        ..FaultConfig::default()
    })
    .await;
    let base = node.base_url();
    let health = client().get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.text().await.unwrap(), r#"{"status": "unavailable"}"#);
    // /v1/models cannot see it.
    let models = client()
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    for stream in [false, true] {
        let response = client()
            .post(chat_url(&node))
            .json(&chat_body("x", stream, true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"error": "generation thread died"}"#
        );
    }
}

#[tokio::test]
async fn admin_endpoint_sets_and_clears_faults() {
    let node = start_fast().await;
    let base = node.base_url();
    let c = client();
    let set = c
        .post(format!("{base}/admin/faults"))
        .json(&json!({"error_rate": 1.0, "error_status": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(node.faults().error_rate, 1.0);
    let got: Value = c
        .get(format!("{base}/admin/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["error_rate"], 1.0);
    let failed = c
        .post(chat_url(&node))
        .json(&chat_body("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);

    let invalid = c
        .post(format!("{base}/admin/faults"))
        .json(&json!({"error_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let unknown = c
        .post(format!("{base}/admin/faults"))
        .json(&json!({"nonsense": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    assert_eq!(
        c.delete(format!("{base}/admin/faults"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ok = c
        .post(chat_url(&node))
        .json(&chat_body("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // The library API does the same.
    node.set_faults(FaultConfig {
        overload_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    let overloaded = c
        .post(chat_url(&node))
        .json(&chat_body("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(overloaded.status(), 503);
    node.clear_faults();
    assert!(
        node.set_faults(FaultConfig {
            hang_rate: -1.0,
            ..FaultConfig::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn crash_and_restart() {
    let node = start_fast().await;
    let base = node.base_url();
    let c = client();
    c.post(chat_url(&node))
        .json(&chat_body("warm the cache", false, false))
        .send()
        .await
        .unwrap();
    assert!(node.with_model(|m| m.totals().requests) == 1);

    node.crash().await;
    assert!(!node.is_listening());
    let refused = client()
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap_err();
    assert!(refused.is_connect(), "{refused}");

    node.restart().await.unwrap();
    assert!(node.is_listening());
    assert_eq!(node.base_url(), base);
    let response = client()
        .post(chat_url(&node))
        .json(&chat_body("warm the cache", false, false))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    // A restarted process has an empty prompt cache.
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

#[tokio::test]
async fn crash_drops_open_streams() {
    let node = SimNode::start(SimNodeConfig {
        time_scale: 10.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let mut body = chat_body("long answer", true, true);
    body["max_tokens"] = json!(100_000);
    let response = client()
        .post(chat_url(&node))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    node.crash().await;
    assert!(response.text().await.is_err());
}

#[tokio::test]
async fn admin_crash_with_restart() {
    let node = start_fast().await;
    let base = node.base_url();
    let response = client()
        .post(format!("{base}/admin/crash"))
        .json(&json!({"restart_after_seconds": 100.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // The listener is closed before the answer is sent.
    assert!(!node.is_listening());
    assert!(
        client()
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap_err()
            .is_connect()
    );
    // 100 simulated seconds at scale 1000 = 0.1 s: wait (bounded) for the restart.
    let mut back = false;
    for _ in 0..500 {
        if client().get(format!("{base}/health")).send().await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(back, "node did not come back");
}

#[tokio::test]
async fn full_queue_rejects_with_retry_after() {
    let node = SimNode::start(SimNodeConfig {
        time_scale: 1.0,
        model: NodeModelConfig {
            max_concurrency: 1,
            max_queue: Some(0),
            ..NodeModelConfig::default()
        },
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let mut long = chat_body("slow", true, false);
    long["max_tokens"] = json!(100_000);
    let first = client()
        .post(chat_url(&node))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = client()
        .post(chat_url(&node))
        .json(&chat_body("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(node.totals().rejected, 1);
    drop(first);
}
