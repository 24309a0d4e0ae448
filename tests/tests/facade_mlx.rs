//! `cluster_facade::Cluster` in front of a real `mlx_lm.server` (the tiny
//! model fixture): discovery validates it and lists its model, warm-up
//! caches a system prompt there, a request with that system prompt is
//! routed as a cache hit and the server reports cached tokens; the server
//! is killed (passive failures and health take it out of routing) and
//! restarted (back through the half-open probe). A missing fixture fails
//! (run `cargo xtask setup`).
//!
//! Real processes, real time: the test waits for cluster events with
//! generous deadlines, never sleeps to wait for a state change.
#![allow(clippy::unwrap_used)]

mod facade_support;

use std::time::Duration;

use cluster_facade::{Cluster, ClusterEvent};
use cluster_tests::mlx::{MlxFixture, MlxServer};
use cluster_types::{
    BackoffConfig, ClusterConfig, DiscoveryConfig, NodeId, NodeSpec, NodeStatus, RoutingContext,
    RoutingReason, StaticDiscovery,
};
use facade_support::send;
use serde_json::Value;
use tokio::sync::broadcast::Receiver;

const DEADLINE: Duration = Duration::from_secs(120);

fn fixture() -> MlxFixture {
    match MlxFixture::locate() {
        Ok(fixture) => fixture,
        Err(e) => panic!("{e}"),
    }
}

async fn wait_for(
    rx: &mut Receiver<ClusterEvent>,
    what: &str,
    f: impl FnMut(&ClusterEvent) -> bool,
) -> ClusterEvent {
    facade_support::wait_for(rx, DEADLINE, what, f).await
}

fn request(model: &str, system: &str, user: &str) -> (Value, RoutingContext) {
    facade_support::chat(model, system, &[("user", user)], 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_warms_and_survives_a_real_mlx_server_restart() {
    let fixture = fixture();
    let mut server = MlxServer::start(&fixture).await.unwrap();
    let model = server.model_id();
    let id = NodeId::from("mlx-1");
    let system = "You are a careful assistant. Answer briefly and precisely. ".repeat(12);

    let mut config = ClusterConfig {
        discovery: DiscoveryConfig::Static(StaticDiscovery {
            nodes: vec![NodeSpec::new(id.clone(), server.base_url())],
            refresh_interval: Duration::from_secs(30),
            validation_timeout: Duration::from_secs(10),
        }),
        backoff: BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.2,
        },
        ..ClusterConfig::default()
    };
    config.health.check_interval = Duration::from_secs(1);
    config.health.timeout = Duration::from_millis(800);
    config.cache.warmup_prompts = vec![system.clone()];
    config.cache.warmup_timeout = Duration::from_secs(60);

    let cluster = Cluster::start(config).await.unwrap();
    let mut events = cluster.subscribe();
    assert!(
        cluster.is_ready(),
        "{:?}\n{}",
        cluster.status(),
        server.log_tail()
    );
    assert!(cluster.models().contains(&model), "{:?}", cluster.models());

    // Warm-up cached the system prompt on the node.
    let warmed = wait_for(
        &mut events,
        "warm-up",
        |e| matches!(e, ClusterEvent::WarmupFinished { node, .. } if *node == id),
    )
    .await;
    assert_eq!(
        warmed,
        ClusterEvent::WarmupFinished {
            node: id.clone(),
            warmed: 1,
            failed: 0
        },
        "{}",
        server.log_tail()
    );

    // A request with that system prompt is a believed cache hit, and the
    // server confirms it serves the prefix from its cache.
    let http = reqwest::Client::new();
    let (body, ctx) = request(&model, &system, "What is 2 + 2?");
    let sel = cluster.select(&ctx).unwrap();
    assert_eq!(sel.decision.node_id, id);
    assert_eq!(sel.decision.reason, RoutingReason::CacheHit);
    let (prompt, cached) = send(&http, sel, &body).await.unwrap();
    assert!(
        cached > 0 && cached < prompt,
        "{cached}/{prompt}\n{}",
        server.log_tail()
    );
    let status = cluster.status();
    let node = status.node("mlx-1").unwrap();
    assert_eq!(node.status, NodeStatus::Healthy);
    assert_eq!(node.metrics.successes_total, 1);
    assert_eq!(node.cache.last_reported_cached_tokens, cached);

    // Killed: requests fail to connect; the node leaves routing.
    server.kill().await.unwrap();
    let (body, ctx) = request(&model, &system, "Still there?");
    for _ in 0..3 {
        match cluster.select(&ctx) {
            Ok(sel) => assert!(send(&http, sel, &body).await.is_none()),
            Err(_) => break,
        }
    }
    wait_for(&mut events, "unhealthy", |e| {
        matches!(e, ClusterEvent::NodeStatusChanged { node, to: NodeStatus::Unhealthy, .. } if *node == id)
    })
    .await;
    assert!(!cluster.is_ready());

    // Restarted on the same port: the half-open probe brings it back.
    server.restart().await.unwrap();
    wait_for(&mut events, "routable again", |e| {
        matches!(e, ClusterEvent::NodeStatusChanged { node, to, .. } if *node == id && to.is_routable())
    })
    .await;
    assert!(cluster.is_ready());
    let sel = cluster.select(&ctx).unwrap();
    assert!(
        send(&http, sel, &body).await.is_some(),
        "{}",
        server.log_tail()
    );
    cluster.shutdown().await;
}
