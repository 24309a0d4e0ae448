//! Why each request went where: the decision records of
//! `GET /v1/cluster/decisions`, the `x-mlx-cluster-node` /
//! `x-mlx-cluster-reason` headers (and turning them off), who may read the
//! records, and the dashboard's time series — over a bare `Router` and fake
//! nodes that report usage.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use cluster_facade::{NodeEntry, Router, RouterParams};
use cluster_gateway::{Gateway, GatewaySettings};
use cluster_types::{ApiKey, ClientKey, LoadBalanceStrategy, NodeSpec, NodeStatus};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A node answering every chat request with `status` and, on 200, usage
/// with `cached` cached tokens; it also sends its own topology headers,
/// which the gateway must not let through.
async fn node(status: u16, cached: u32) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || async move {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-mlx-cluster-node", "spoofed")
                .header("x-mlx-cluster-reason", "spoofed")
                .body(Body::from(format!(
                    r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"ok"}}}}],"usage":{{"prompt_tokens":3000,"completion_tokens":7,"prompt_tokens_details":{{"cached_tokens":{cached}}}}}}}"#
                )))
                .unwrap()
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn gateway(
    nodes: &[(&str, String)],
    strategy: LoadBalanceStrategy,
    tweak: impl FnOnce(&mut GatewaySettings),
) -> String {
    let router = Router::new(
        RouterParams::default().with_strategy(strategy),
        cluster_metrics::system_clock(),
    );
    router.publish(
        nodes
            .iter()
            .map(|(id, url)| NodeEntry::new(NodeSpec::new(*id, url.clone()), NodeStatus::Healthy))
            .collect(),
    );
    let mut settings = GatewaySettings {
        retry_delay: Duration::from_millis(1),
        ..GatewaySettings::default()
    };
    tweak(&mut settings);
    let gateway = Gateway::new(router, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(cluster_gateway::serve(
        listener,
        gateway,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

const SECRET_WORD: &str = "xylophone-quartz";

fn chat(question: &str) -> Value {
    json!({"model": "m", "messages": [
        {"role": "system", "content": format!("You are a {SECRET_WORD} agent. ").repeat(300)},
        {"role": "user", "content": question}]})
}

async fn decisions(base: &str, query: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{base}/v1/cluster/decisions{query}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// The records, after waiting (bounded) until `n` were written: a guard
/// finishes on the relay's task after the client has its last byte.
async fn records(base: &str, query: &str, n: u64) -> Value {
    for _ in 0..500 {
        let v: Value = decisions(base, query, None).await.json().await.unwrap();
        if v["total"].as_u64().unwrap() >= n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("fewer than {n} decisions recorded");
}

#[tokio::test]
async fn each_answer_says_where_and_why_and_the_log_explains_it() {
    let nodes = [
        ("a", node(200, 2900).await),
        ("b", node(200, 2900).await),
        ("c", node(200, 2900).await),
    ];
    let base = gateway(&nodes, LoadBalanceStrategy::CacheAware, |_| {}).await;
    let client = reqwest::Client::new();
    let send = |body: Value| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
    };
    let first = send(chat("fix the bug")).await.unwrap();
    assert_eq!(first.status(), 200);
    let node = first.headers()["x-mlx-cluster-node"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(node, "spoofed");
    assert_eq!(first.headers()["x-mlx-cluster-reason"], "rendezvous");
    first.bytes().await.unwrap();
    records(&base, "", 1).await;
    let second = send(chat("now add a test")).await.unwrap();
    assert_eq!(second.headers()["x-mlx-cluster-node"], node.as_str());
    assert_eq!(second.headers()["x-mlx-cluster-reason"], "cache-hit");
    second.bytes().await.unwrap();

    let v = records(&base, "", 2).await;
    assert_eq!(
        (v["capacity"].as_u64(), v["total"].as_u64()),
        (Some(1000), Some(2))
    );
    let list = v["decisions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let (hit, cold) = (&list[0], &list[1]);
    assert_eq!(
        (hit["seq"].as_u64(), cold["seq"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(hit["node"], node.as_str());
    assert_eq!(hit["reason"], "cache-hit");
    assert_eq!(hit["attempt"], 1);
    assert_eq!(hit["candidates"], 3);
    assert_eq!(hit["outcome"], "success");
    assert_eq!(hit["reported_prompt_tokens"], 3000);
    assert_eq!(hit["reported_cached_tokens"], 2900);
    assert_eq!(hit["completion_tokens"], 7);
    assert!(
        hit["predicted_cached_tokens"].as_u64().unwrap() > 1000,
        "{hit}"
    );
    assert!(hit["matched_blocks"].as_u64().unwrap() > 0);
    assert!(hit["prediction_error_blocks"].is_number());
    let ru = &hit["runner_up"];
    assert_ne!(ru["node"], node.as_str());
    assert!(ru["cost_seconds"].as_f64().unwrap() > hit["cost"]["seconds"].as_f64().unwrap());
    for key in [
        "queued_tokens",
        "uncached_tokens",
        "private_tokens",
        "rate_tokens_per_second",
    ] {
        assert!(hit["cost"][key].is_number(), "{key} in {hit}");
    }
    assert!(hit["ttft_ms"].as_f64().unwrap() >= 0.0);
    assert!(hit["total_ms"].as_f64().unwrap() >= hit["ttft_ms"].as_f64().unwrap());
    assert!(hit["gate_wait_ms"].is_number());
    assert!(hit["routed_at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(cold["reason"], "rendezvous");
    // Never the prompt.
    assert!(!v.to_string().contains(SECRET_WORD));

    // Filters, and bad queries.
    let only = records(&base, "?reason=cache-hit", 2).await;
    assert_eq!(only["decisions"].as_array().unwrap().len(), 1);
    let one = records(&base, "?limit=1", 2).await;
    assert_eq!(one["decisions"][0]["seq"], 2);
    let other = if node == "a" { "b" } else { "a" };
    let none = records(&base, &format!("?node={other}"), 2).await;
    assert!(none["decisions"].as_array().unwrap().is_empty());
    for bad in ["?reason=vibes", "?limit=0", "?since=3"] {
        let r = decisions(&base, bad, None).await;
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_query");
    }
}

#[tokio::test]
async fn a_retry_is_recorded_as_such_after_the_failed_attempt() {
    let nodes = [("a", node(500, 0).await), ("b", node(200, 0).await)];
    let base = gateway(&nodes, LoadBalanceStrategy::RoundRobin, |s| {
        s.max_retries = 1
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat("q"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mlx-cluster-node"], "b");
    assert_eq!(r.headers()["x-mlx-cluster-reason"], "retry");
    assert_eq!(r.headers()["x-mlx-cluster-attempts"], "2");
    r.bytes().await.unwrap();
    let v = records(&base, "", 2).await;
    let list = v["decisions"].as_array().unwrap();
    assert_eq!(list[1]["node"], "a");
    assert_eq!(list[1]["outcome"], "server-error");
    assert_eq!(list[1]["reason"], "round-robin");
    assert_eq!(list[0]["node"], "b");
    assert_eq!(list[0]["reason"], "retry");
    assert_eq!(list[0]["strategy_reason"], "round-robin");
    assert_eq!(list[0]["attempt"], 2);
    assert!(list[0]["predicted_cached_tokens"].is_null());
}

#[tokio::test]
async fn topology_headers_can_be_turned_off() {
    let nodes = [("a", node(200, 0).await)];
    let base = gateway(&nodes, LoadBalanceStrategy::RoundRobin, |s| {
        s.observability.topology_headers = false;
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat("q"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-mlx-cluster-node").is_none());
    assert!(r.headers().get("x-mlx-cluster-reason").is_none());
    // The record is still kept.
    r.bytes().await.unwrap();
    records(&base, "", 1).await;
}

#[tokio::test]
async fn the_admin_token_guards_the_log_when_set_and_client_keys_otherwise() {
    let nodes = [("a", node(200, 0).await)];
    let keys = Some(Arc::new(cluster_gateway::ClientKeys::new(&[
        ClientKey::secret("alice", "sk-alice"),
    ])));
    let with_admin = gateway(&nodes, LoadBalanceStrategy::RoundRobin, |s| {
        s.admin_token = Some(ApiKey::new("adm1n"));
        s.client_keys = keys.clone();
    })
    .await;
    let r = decisions(&with_admin, "", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        decisions(&with_admin, "", Some("sk-alice")).await.status(),
        401
    );
    let r = decisions(&with_admin, "", Some("adm1n")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");

    let keys_only = gateway(&nodes, LoadBalanceStrategy::RoundRobin, |s| {
        s.client_keys = keys;
    })
    .await;
    assert_eq!(decisions(&keys_only, "", None).await.status(), 401);
    assert_eq!(
        decisions(&keys_only, "", Some("sk-alice")).await.status(),
        200
    );
}

#[tokio::test]
async fn the_time_series_samples_traffic_and_status_changes() {
    let nodes = [("a", node(200, 1500).await), ("b", node(200, 1500).await)];
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
    let mut settings = GatewaySettings::default();
    settings.observability.sample_interval = Duration::from_millis(100);
    let gw = Gateway::new(router.clone(), settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cluster_gateway::serve(
        listener,
        Arc::clone(&gw),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    for i in 0..6 {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat(&format!("q{i}")))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    }
    router.update(|entries| entries[1].status = NodeStatus::Unhealthy);
    let mut seen = None;
    for _ in 0..200 {
        let v: Value = client
            .get(format!("{base}/v1/cluster/timeseries"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let samples = v["samples"].as_array().unwrap();
        let traffic = samples
            .iter()
            .any(|s| s["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0);
        let marker = !v["status_changes"].as_array().unwrap().is_empty();
        if traffic && marker {
            seen = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = seen.expect("traffic and a status change in the series");
    assert_eq!(v["interval_ms"], 100);
    assert_eq!(v["history_ms"], 15 * 60 * 1000);
    let busy = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0)
        .unwrap();
    assert_eq!(busy["cache_hit_ratio"], 0.5);
    assert!(busy["ttft_p50_ms"].as_f64().unwrap() >= 0.0);
    assert!(busy["ttft_p99_ms"].as_f64().unwrap() >= busy["ttft_p50_ms"].as_f64().unwrap());
    assert!(busy["in_flight"]["a"].is_u64());
    let change = &v["status_changes"][0];
    assert_eq!(
        (&change["node"], &change["from"], &change["to"]),
        (&json!("b"), &json!("healthy"), &json!("unhealthy"))
    );
    assert!(gw.timeseries().len() >= 2);
}
