//! Node kinds and broken nodes over simulated mlx_lm.server nodes (fast, no
//! real process): the kind detected at validation and shown in the status,
//! a `kind` tag forcing it, and a node whose generation thread died — it
//! still lists its model but answers every completion 404 — counted as
//! failing and taken out of rotation while clients see no error.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::time::Duration;

use cluster_sim::fleet::{Fleet, FleetConfig};
use cluster_sim::{FaultConfig, SimNodeConfig};
use cluster_types::{KIND_TAG, LoadBalanceStrategy, NodeKind, NodeStatus};
use gateway_support::{GatewayUnderTest, client, config, wait_until};
use serde_json::json;

async fn fleet(n: usize) -> Fleet {
    let node = SimNodeConfig {
        time_scale: 50.0,
        ..SimNodeConfig::default()
    };
    Fleet::start(FleetConfig::uniform(n, &node)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_are_detected_and_a_tag_forces_one() {
    let fleet = fleet(2).await;
    let urls = fleet.urls();
    let mut cfg = config(
        &[("sim-0", urls[0].clone()), ("sim-1", urls[1].clone())],
        LoadBalanceStrategy::RoundRobin,
    );
    if let cluster_types::DiscoveryConfig::Static(s) = &mut cfg.discovery {
        s.nodes[1]
            .tags
            .insert(KIND_TAG.to_owned(), "generic".to_owned());
    }
    let gw = GatewayUnderTest::start(cfg).await;
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
    // The simulator imitates mlx_lm.server: no `owned_by`, `/health` JSON.
    assert_eq!(kind("sim-0"), NodeKind::MlxLm);
    assert_eq!(kind("sim-1"), NodeKind::Generic);
    // The JSON status (dashboard, `mlx-cluster status`) carries it.
    let body: serde_json::Value = client()
        .get(format!("{}/v1/cluster/status", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"mlx_lm") && kinds.contains(&"generic"),
        "{kinds:?}"
    );
    gw.stop().await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_generation_thread_is_a_failure_not_a_success() {
    let fleet = fleet(2).await;
    let urls = fleet.urls();
    let gw = GatewayUnderTest::start(config(
        &[("sim-0", urls[0].clone()), ("sim-1", urls[1].clone())],
        LoadBalanceStrategy::RoundRobin,
    ))
    .await;
    gw.wait_all_routable().await;
    let model = SimNodeConfig::default().model_id;
    fleet
        .node(0)
        .unwrap()
        .set_faults(FaultConfig {
            generation_dead: true,
            ..FaultConfig::default()
        })
        .unwrap();

    // Every request succeeds: sim-0's 404 is retried on sim-1.
    let http = client();
    for i in 0..6 {
        let r = http
            .post(format!("{}/chat/completions", gw.v1()))
            .json(&json!({"model": model, "max_tokens": 2,
                "messages": [{"role": "user", "content": format!("request {i}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert_eq!(r.headers()["x-mlx-cluster-node"], "sim-1");
        r.bytes().await.unwrap();
    }
    // The 404s count against sim-0, which leaves rotation (its /health
    // answers 503 too, and that is what an mlx_lm node is probed on).
    wait_until("sim-0 out of rotation", Duration::from_secs(30), || {
        matches!(
            gw.status_of("sim-0"),
            Some(NodeStatus::Unhealthy | NodeStatus::Offline)
        )
    })
    .await;
    let state = gw.cluster.status();
    let sim0 = state
        .nodes
        .iter()
        .find(|n| n.spec.id.as_str() == "sim-0")
        .unwrap();
    assert!(sim0.metrics.failures_total > 0, "{:?}", sim0.metrics);
    let metrics = http
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("retries_total") && l.contains("not_served") && !l.ends_with(" 0")),
        "{metrics}"
    );
    gw.stop().await;
    fleet.shutdown().await;
}
