//! `cluster_facade::Cluster` with real static discovery (HTTP validation)
//! and real HTTP health checks against simulated nodes (`cluster_sim::
//! SimNode`) on loopback: selection with real chat completions and their
//! usage, cache-aware stickiness, passive health demotion of a failing
//! node, drain, and cache sync from the nodes' `/metrics`.
//!
//! Real time: the tests wait for cluster events with deadlines, never sleep
//! to wait for a state change.
#![allow(clippy::unwrap_used)]

mod facade_support;

use std::time::Duration;

use cluster_facade::{Cluster, ClusterEvent};
use cluster_sim::{FaultConfig, SimNode, SimNodeConfig};
use cluster_types::{
    ClusterConfig, DiscoveryConfig, NodeId, NodeSpec, NodeStatus, RoutingContext, RoutingReason,
    StaticDiscovery,
};
use facade_support::send;
use serde_json::Value;
use tokio::sync::broadcast::Receiver;

const DEADLINE: Duration = Duration::from_secs(60);
/// The model id the simulated nodes list.
fn model() -> String {
    SimNodeConfig::default().model_id
}

async fn nodes(n: usize) -> Vec<SimNode> {
    let mut out = Vec::new();
    for i in 0..n {
        let node = SimNode::start(SimNodeConfig {
            id: format!("sim-{i}"),
            // 200 simulated seconds per real second: a 5k-token cold
            // prefill takes ~20 ms of real time.
            time_scale: 200.0,
            ..SimNodeConfig::default()
        })
        .await
        .unwrap();
        out.push(node);
    }
    out
}

fn config(nodes: &[SimNode]) -> ClusterConfig {
    let mut c = ClusterConfig {
        discovery: DiscoveryConfig::Static(StaticDiscovery {
            nodes: nodes
                .iter()
                .map(|n| NodeSpec::new(n.id(), n.base_url()))
                .collect(),
            refresh_interval: Duration::from_secs(30),
            validation_timeout: Duration::from_secs(5),
        }),
        ..ClusterConfig::default()
    };
    c.health.check_interval = Duration::from_secs(2);
    c.health.timeout = Duration::from_secs(1);
    c.cache.sync_interval = Duration::from_millis(500);
    c
}

/// A chat body and the routing context the gateway would build for it.
fn chat(system: &str, turns: &[(&str, &str)]) -> (Value, RoutingContext) {
    facade_support::chat(&model(), system, turns, 8)
}

async fn wait_for(
    rx: &mut Receiver<ClusterEvent>,
    what: &str,
    f: impl FnMut(&ClusterEvent) -> bool,
) -> ClusterEvent {
    facade_support::wait_for(rx, DEADLINE, what, f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_real_requests_and_follows_the_cache() {
    let sims = nodes(3).await;
    let cluster = Cluster::start(config(&sims)).await.unwrap();
    assert!(cluster.is_ready());
    assert_eq!(cluster.models(), [model()]);
    let http = reqwest::Client::new();
    let system = "You are a coding agent working in a large repository. ".repeat(200);

    // A conversation: the first turn is cold, later turns hit the cache of
    // the node that served it.
    let mut history: Vec<(String, String)> = vec![("user".into(), "Fix the failing test.".into())];
    let mut home: Option<NodeId> = None;
    for turn in 0..4 {
        let turns: Vec<(&str, &str)> = history
            .iter()
            .map(|(r, t)| (r.as_str(), t.as_str()))
            .collect();
        let (body, ctx) = chat(&system, &turns);
        let sel = cluster.select(&ctx).unwrap();
        let node = sel.decision.node_id.clone();
        let reason = sel.decision.reason;
        let (prompt, cached) = send(&http, sel, &body).await.unwrap();
        assert!(prompt > 2_000);
        match &home {
            None => {
                assert_eq!(reason, RoutingReason::Rendezvous);
                home = Some(node);
            }
            Some(h) => {
                assert_eq!(&node, h, "turn {turn} left its cache");
                assert_eq!(reason, RoutingReason::CacheHit);
                assert!(cached * 10 > prompt * 8, "turn {turn}: {cached}/{prompt}");
            }
        }
        history.push(("assistant".into(), format!("Done step {turn}.")));
        history.push(("user".into(), format!("Now step {}.", turn + 1)));
    }
    let status = cluster.status();
    let home = home.unwrap();
    let node = status.node(home.as_str()).unwrap();
    assert_eq!(node.metrics.requests_total, 4);
    assert!(node.metrics.cached_tokens_total > 0);
    assert!(node.cache.cached_prefixes >= 1);
    assert!(status.metrics.cache_hit_ratio > 0.5);
    assert!(
        cluster
            .encode_prometheus()
            .contains("mlx_cluster_node_requests_total")
    );

    // The nodes publish their cache state: the cluster syncs it.
    let mut events = cluster.subscribe();
    wait_for(&mut events, "cache sync", |e| {
        matches!(e, ClusterEvent::CacheSynced { node, entries } if *node == home && *entries >= 1)
    })
    .await;
    cluster.shutdown().await;
    for s in sims {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_is_demoted_by_passive_health_and_drain_works() {
    let sims = nodes(2).await;
    let cluster = Cluster::start(config(&sims)).await.unwrap();
    let mut events = cluster.subscribe();
    let http = reqwest::Client::new();
    let bad = NodeId::from(sims[0].id());
    let good = NodeId::from(sims[1].id());
    // Completions on the bad node fail with 500; its /v1/models still
    // answers, so only passive health can see it.
    sims[0]
        .set_faults(FaultConfig {
            error_rate: 1.0,
            error_status: 500,
            ..FaultConfig::default()
        })
        .unwrap();
    let (body, mut ctx) = chat("short system prompt", &[("user", "hi")]);
    ctx.excluded = vec![good.clone()];
    for _ in 0..3 {
        let sel = cluster.select(&ctx).unwrap();
        assert_eq!(sel.decision.node_id, bad);
        assert!(send(&http, sel, &body).await.is_none());
    }
    wait_for(&mut events, "demotion", |e| {
        matches!(e, ClusterEvent::NodeStatusChanged { node, to: NodeStatus::Unhealthy, .. } if *node == bad)
    })
    .await;
    // Routing avoids it now (a retry that excludes the good node gets at
    // most the single half-open probe, which health grants only after its
    // backoff).
    let (body, ctx) = chat("short system prompt", &[("user", "again")]);
    for _ in 0..4 {
        let sel = cluster.select(&ctx).unwrap();
        assert_eq!(sel.decision.node_id, good);
        assert!(send(&http, sel, &body).await.is_some());
    }

    // Drain: the good node takes no new requests. What is left is the bad
    // node, only as its half-open probe or once health's own probe has put
    // it back on probation (degraded) — never the drained one.
    cluster.drain(&good).unwrap();
    assert_eq!(cluster.drained(), vec![good.clone()]);
    match cluster.select(&ctx) {
        Ok(sel) => assert_eq!(sel.decision.node_id, bad),
        Err(e) => assert_eq!(e.code(), "NO_ROUTABLE_NODE"),
    }
    cluster.undrain(&good).unwrap();
    assert_eq!(cluster.select(&ctx).unwrap().decision.node_id, good);
    cluster.shutdown().await;
    for s in sims {
        s.shutdown().await;
    }
}
