//! A mixed fleet behind one gateway: a real mlx_lm.server, a real llama.cpp
//! `llama-server` and a simulated node, each serving its own model. Kinds are
//! detected and shown; every model is served by its node; when the
//! mlx_lm.server's generation thread dies (it keeps listing its model and
//! answers completions 404), the node leaves rotation while the others keep
//! serving.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::time::Duration;

use cluster_sim::{SimNode, SimNodeConfig};
use cluster_tests::llama::{LLAMA_MODEL_ID, LlamaFixture, LlamaServer};
use cluster_tests::mlx::{MlxFixture, MlxServer};
use cluster_types::{LoadBalanceStrategy, NodeKind, NodeStatus};
use gateway_support::{GatewayUnderTest, client, config, wait_until};
use serde_json::json;

async fn chat(gw: &GatewayUnderTest, model: &str, text: &str) -> (u16, String, String) {
    let r = client()
        .post(format!("{}/chat/completions", gw.v1()))
        .json(&json!({"model": model, "max_tokens": 3,
            "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let node = r
        .headers()
        .get("x-mlx-cluster-node")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, node, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlx_llama_and_sim_nodes_behind_one_gateway() {
    let mlx_fixture = MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let llama_fixture = LlamaFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let mlx = MlxServer::start(&mlx_fixture).await.unwrap();
    let llama = LlamaServer::start(&llama_fixture).await.unwrap();
    let sim = SimNode::start(SimNodeConfig {
        time_scale: 100.0,
        model_id: "sim-model".to_owned(),
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let gw = GatewayUnderTest::start(config(
        &[
            ("mlx", mlx.base_url()),
            ("llama", llama.base_url()),
            ("sim", sim.base_url()),
        ],
        LoadBalanceStrategy::CacheAware,
    ))
    .await;
    gw.wait_all_routable().await;

    let state = gw.cluster.status();
    let kind = |id: &str| {
        state
            .nodes
            .iter()
            .find(|n| n.spec.id.as_str() == id)
            .unwrap()
            .kind
    };
    assert_eq!(kind("mlx"), NodeKind::MlxLm);
    assert_eq!(kind("llama"), NodeKind::LlamaCpp);
    assert_eq!(
        kind("sim"),
        NodeKind::MlxLm,
        "the simulator imitates mlx_lm.server"
    );

    let mlx_model = mlx.model_id();
    for (model, node) in [
        (mlx_model.as_str(), "mlx"),
        (LLAMA_MODEL_ID, "llama"),
        ("sim-model", "sim"),
    ] {
        let (status, served_by, body) = chat(&gw, model, "hello fleet").await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(served_by, node, "{model}");
    }

    // The mlx node's generation thread dies: /v1/models still answers 200,
    // /health 503, completions 404.
    mlx.break_generation().await.unwrap();
    let (status, _, body) = chat(&gw, &mlx_model, "after the break").await;
    assert_ne!(status, 200, "a dead node cannot answer: {body}");
    wait_until("mlx out of rotation", Duration::from_secs(60), || {
        matches!(
            gw.status_of("mlx"),
            Some(NodeStatus::Unhealthy | NodeStatus::Offline)
        )
    })
    .await;
    let (status, _, body) = chat(&gw, &mlx_model, "nobody serves this now").await;
    assert_eq!(status, 503, "no routable node for the model: {body}");
    assert!(body.contains("no_routable_node"), "{body}");
    // The others keep serving.
    for (model, node) in [(LLAMA_MODEL_ID, "llama"), ("sim-model", "sim")] {
        let (status, served_by, body) = chat(&gw, model, "still here").await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(served_by, node);
    }
    gw.stop().await;
    drop(llama);
    sim.shutdown().await;
}
