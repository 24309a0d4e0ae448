//! llama.cpp's real `llama-server` (built from source by `cargo xtask
//! setup`, tiny GGUF model) as a node: validation detects its kind and
//! slots, health probes `/health` (503 "Loading model" while it loads is
//! loading, not a failure), the OpenAI Python SDK through the gateway
//! (streamed and not), and cache sync from its `/slots` and `/metrics`.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::time::Duration;

use cluster_discovery::{HttpNodeValidator, NodeValidator};
use cluster_facade::{ClusterEvent, parse_metrics, parse_slots, summarize_slots};
use cluster_health::{HealthChecker, HealthError, HttpHealthChecker, Observation};
use cluster_tests::llama::{LLAMA_MODEL_ID, LlamaFixture, LlamaServer};
use cluster_tests::mlx::MlxFixture;
use cluster_types::{HealthConfig, KIND_TAG, LoadBalanceStrategy, NodeKind, NodeSpec};
use gateway_support::{GatewayUnderTest, client, config, wait_until};
use serde_json::{Value, json};

fn fixture() -> LlamaFixture {
    LlamaFixture::locate().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_detects_llama_cpp_and_its_slots() {
    let server = LlamaServer::start(&fixture()).await.unwrap();
    let spec = NodeSpec::new("llama", server.base_url());
    let profile = HttpNodeValidator::new(Duration::from_secs(10))
        .unwrap()
        .validate(&spec)
        .await
        .unwrap();
    assert_eq!(profile.kind, NodeKind::LlamaCpp, "{}", server.log_tail());
    assert_eq!(profile.models, [LLAMA_MODEL_ID]);
    assert_eq!(profile.slots, Some(server.slots()));
    // Probed on its kind's path, /health.
    let mut tagged = spec.clone();
    tagged
        .tags
        .insert(KIND_TAG.to_owned(), NodeKind::LlamaCpp.as_str().to_owned());
    let checker = HttpHealthChecker::new(&HealthConfig::default()).unwrap();
    assert_eq!(checker.probe_path_for(&tagged), "/health");
    checker.check(&tagged).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_server_is_loading_not_failing() {
    let server = LlamaServer::start_loading(&fixture()).await.unwrap();
    let mut spec = NodeSpec::new("llama", server.base_url());
    spec.tags
        .insert(KIND_TAG.to_owned(), NodeKind::LlamaCpp.as_str().to_owned());
    let checker = HttpHealthChecker::new(&HealthConfig::default()).unwrap();
    let err = checker.check(&spec).await.unwrap_err();
    assert!(matches!(err, HealthError::Loading { .. }), "{err:?}");
    // The state machine keeps such a node initializing, without a failure.
    assert_eq!(err.observation(), Observation::Loading);
    // Validation waits for it: not announced yet, with a clear reason.
    let err = HttpNodeValidator::new(Duration::from_secs(10))
        .unwrap()
        .validate(&spec)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loading"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_through_the_gateway() {
    let server = LlamaServer::start(&fixture()).await.unwrap();
    let gw = GatewayUnderTest::start(config(
        &[("llama", server.base_url())],
        LoadBalanceStrategy::CacheAware,
    ))
    .await;
    gw.wait_all_routable().await;
    let state = gw.cluster.status();
    assert_eq!(state.nodes[0].kind, NodeKind::LlamaCpp);
    let python = MlxFixture::locate()
        .unwrap_or_else(|e| panic!("{e}"))
        .python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway_openai_sdk.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(gw.v1())
        .arg(LLAMA_MODEL_ID)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed:\n{}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log_tail()
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        result["stream"]["chunks"].as_u64().unwrap() >= 2,
        "{result}"
    );
    assert!(result["chat"]["prompt_tokens"].as_u64().unwrap() > 0);
    // The streamed request repeated the first one's prompt: llama.cpp
    // served it from the slot that held it.
    assert!(
        result["stream"]["cached_tokens"].as_u64().unwrap() > 0,
        "{result}"
    );
    let status = result["error"]["status"].as_u64().unwrap();
    assert!((400..500).contains(&status), "{result}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_sync_reads_the_slots_and_the_queue() {
    let server = LlamaServer::start(&fixture()).await.unwrap();
    let mut cfg = config(
        &[("llama", server.base_url())],
        LoadBalanceStrategy::CacheAware,
    );
    cfg.cache.sync_interval = Duration::from_millis(200);
    let gw = GatewayUnderTest::start(cfg).await;
    gw.wait_all_routable().await;
    let mut events = gw.cluster.subscribe();
    // The slot count became the node's cache limit: one prompt per slot.
    let state = gw.cluster.status();
    assert_eq!(
        state.nodes[0]
            .spec
            .tags
            .get("prompt_cache_entries")
            .map(String::as_str),
        Some("2")
    );
    let http = client();
    for i in 0..3 {
        let r = http
            .post(format!("{}/chat/completions", gw.v1()))
            .json(&json!({"model": LLAMA_MODEL_ID, "max_tokens": 4,
                "messages": [{"role": "user", "content": format!("conversation {i}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // The live answers parse like the captured ones.
    let (code, slots) = server.get("/slots").await.unwrap();
    assert_eq!(code, 200);
    let summary = summarize_slots(&parse_slots(slots.as_bytes()).unwrap());
    assert_eq!(summary.slots, 2);
    assert!(summary.cached_prompts >= 1, "{summary:?}");
    let (code, metrics) = server.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    let m = parse_metrics(&metrics);
    assert_eq!(m.outstanding(), Some(0), "{metrics}");
    assert!(m.prefix_hit_rate.is_some(), "{metrics}");
    // The cluster synced from /slots: as many prompts as slots hold them.
    let synced = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            // Syncs before the first answer report an empty node.
            if let Ok(ClusterEvent::CacheSynced { node, entries }) = events.recv().await
                && node.as_str() == "llama"
                && entries > 0
            {
                return entries;
            }
        }
    })
    .await
    .expect("a cache sync from llama-server");
    assert_eq!(synced, summary.cached_prompts);
    wait_until(
        "the model holds at most one prompt per slot",
        Duration::from_secs(10),
        || gw.cluster.status().nodes[0].cache.cached_prefixes <= 2,
    )
    .await;
    gw.stop().await;
}
