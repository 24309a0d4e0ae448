//! Cluster manager tests: static discovery, scripted health checks, paused
//! tokio time, no network.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cluster_discovery::{AcceptAll, DiscoveryError, NodeValidator, StaticSource};
use cluster_health::{HealthChecker, HealthError};
use cluster_types::{
    ClusterConfig, ClusterStatus, NodeId, NodeSpec, NodeStatus, RoutingContext, StaticDiscovery,
};
use parking_lot::Mutex;

use crate::{Cluster, ClusterEvent, FacadeError, FailureKind, RequestOutcome};

/// Health checks that pass unless the node is listed as down.
#[derive(Default)]
pub(crate) struct Script {
    pub(crate) down: Mutex<HashSet<String>>,
}

#[async_trait]
impl HealthChecker for Script {
    async fn check(&self, node: &NodeSpec) -> Result<Duration, HealthError> {
        if self.down.lock().contains(node.id.as_str()) {
            Err(HealthError::network(node.id.clone(), "scripted failure"))
        } else {
            Ok(Duration::from_millis(5))
        }
    }
}

/// Validation that reports one model per node: `model-<id>` for ids
/// starting with `m`, nothing otherwise.
struct Models;

#[async_trait]
impl NodeValidator for Models {
    async fn validate(
        &self,
        node: &NodeSpec,
    ) -> Result<cluster_types::NodeProfile, DiscoveryError> {
        Ok(if node.id.as_str().starts_with('m') {
            vec!["shared".to_owned(), format!("model-{}", node.id)]
        } else {
            Vec::new()
        }
        .into())
    }
}

pub(crate) fn specs(ids: &[&str]) -> Vec<NodeSpec> {
    ids.iter()
        .map(|id| NodeSpec::new(*id, format!("http://127.0.0.1:9/{id}")))
        .collect()
}

pub(crate) fn config(ids: &[&str]) -> ClusterConfig {
    let mut c = ClusterConfig {
        discovery: cluster_types::DiscoveryConfig::Static(StaticDiscovery {
            nodes: specs(ids),
            ..StaticDiscovery::default()
        }),
        ..ClusterConfig::default()
    };
    // Keep the housekeeping tick far away (it would try HTTP cache sync).
    c.cache.sync_interval = Duration::from_secs(3600);
    c
}

async fn start(ids: &[&str], script: Arc<Script>, source: Arc<StaticSource>) -> Cluster {
    Cluster::builder(config(ids))
        .health_checker(script)
        .node_validator(Arc::new(AcceptAll))
        .discovery_source(source)
        .seed(7)
        .start()
        .await
        .unwrap()
}

/// Lets the event tasks run.
pub(crate) async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn starts_ready_and_routes() {
    let ids = ["a", "b", "c"];
    let source = Arc::new(StaticSource::new(specs(&ids)));
    let cluster = start(&ids, Arc::default(), source).await;
    assert!(cluster.is_ready());
    let status = cluster.status();
    assert_eq!(status.status, ClusterStatus::Healthy);
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes.iter().all(|n| n.status == NodeStatus::Healthy));
    let sel = cluster.select(&RoutingContext::default()).unwrap();
    assert!(ids.contains(&sel.decision.node_id.as_str()));
    assert!(sel.target.base_url.starts_with("http://127.0.0.1:9/"));
    sel.guard
        .finish(RequestOutcome::success_with_usage(100, 10, 5));
    let status = cluster.status();
    assert_eq!(status.metrics.requests_total, 1);
    assert_eq!(status.metrics.prompt_tokens_total, 100);
    let text = cluster.encode_prometheus();
    assert!(text.contains("mlx_cluster_node_requests_total"), "{text}");
    assert!(cluster.models().is_empty());
    assert_eq!(
        cluster.config().cache.sync_interval,
        Duration::from_secs(3600)
    );
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn passive_failures_demote_a_node_and_routing_avoids_it() {
    let ids = ["a", "b"];
    let source = Arc::new(StaticSource::new(specs(&ids)));
    let cluster = start(&ids, Arc::default(), source).await;
    let mut events = cluster.subscribe();
    let bad = NodeId::from("a");
    // Three failed requests on `a` (health: 3 consecutive failures).
    for _ in 0..3 {
        let ctx = RoutingContext {
            excluded: vec!["b".into()],
            ..RoutingContext::default()
        };
        let sel = cluster.select(&ctx).unwrap();
        assert_eq!(sel.decision.node_id, bad);
        sel.guard.finish(RequestOutcome::Failed {
            kind: FailureKind::Connect,
        });
    }
    settle().await;
    let status = cluster.status();
    assert_eq!(status.node("a").unwrap().status, NodeStatus::Unhealthy);
    assert_eq!(status.status, ClusterStatus::Degraded);
    for _ in 0..5 {
        let sel = cluster.select(&RoutingContext::default()).unwrap();
        assert_eq!(sel.decision.node_id.as_str(), "b");
    }
    let mut saw = false;
    while let Ok(e) = events.try_recv() {
        if matches!(&e, ClusterEvent::NodeStatusChanged { node, to: NodeStatus::Unhealthy, .. } if *node == bad)
        {
            saw = true;
        }
    }
    assert!(saw);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn active_checks_take_a_node_out_and_probes_bring_it_back() {
    let ids = ["a", "b"];
    let script = Arc::new(Script::default());
    let source = Arc::new(StaticSource::new(specs(&ids)));
    let cluster = start(&ids, Arc::clone(&script), source).await;
    script.down.lock().insert("a".into());
    // Three check intervals (5 s each, ±20 %).
    tokio::time::sleep(Duration::from_secs(25)).await;
    settle().await;
    assert!(!cluster.status().node("a").unwrap().status.is_routable());
    // Only `b` takes traffic; with `b` excluded nothing is left except a
    // probe, which health grants only after the backoff.
    let ctx = RoutingContext {
        excluded: vec!["b".into()],
        ..RoutingContext::default()
    };
    script.down.lock().clear();
    // Backoff grows at most to 60 s; recovery needs 5 consecutive successes.
    tokio::time::sleep(Duration::from_secs(180)).await;
    settle().await;
    let st = cluster.status().node("a").unwrap().status;
    assert!(st.is_routable(), "{st}");
    assert_eq!(cluster.select(&ctx).unwrap().decision.node_id.as_str(), "a");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn drain_undrain_and_unknown_nodes() {
    let ids = ["a", "b"];
    let source = Arc::new(StaticSource::new(specs(&ids)));
    let cluster = start(&ids, Arc::default(), source).await;
    let mut events = cluster.subscribe();
    let a = NodeId::from("a");
    // A request in flight on `a` survives the drain.
    let ctx_a = RoutingContext {
        excluded: vec!["b".into()],
        ..RoutingContext::default()
    };
    let in_flight = cluster.select(&ctx_a).unwrap();
    cluster.drain(&a).unwrap();
    assert_eq!(cluster.drained(), vec![a.clone()]);
    for _ in 0..4 {
        assert_eq!(
            cluster
                .select(&RoutingContext::default())
                .unwrap()
                .decision
                .node_id
                .as_str(),
            "b"
        );
    }
    assert!(matches!(
        cluster.select(&ctx_a).unwrap_err(),
        FacadeError::NoRoutableNode { .. }
    ));
    assert_eq!(cluster.router().in_flight(&a), 1);
    in_flight.guard.finish(RequestOutcome::success());
    cluster.undrain(&a).unwrap();
    assert_eq!(cluster.select(&ctx_a).unwrap().decision.node_id, a);
    let err = cluster.drain(&"zz".into()).unwrap_err();
    assert_eq!(err.code(), "UNKNOWN_NODE");
    assert_eq!(
        events.try_recv().unwrap(),
        ClusterEvent::NodeDrained { node: a.clone() }
    );
    assert_eq!(
        events.try_recv().unwrap(),
        ClusterEvent::NodeUndrained { node: a }
    );
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn discovery_changes_flow_into_routing() {
    let source = Arc::new(StaticSource::new(specs(&["a"])));
    let cluster = start(&["a"], Arc::default(), Arc::clone(&source)).await;
    let mut events = cluster.subscribe();
    source.set_nodes(specs(&["a", "b"]));
    cluster.refresh_discovery().await.unwrap();
    assert!(cluster.router().snapshot().entry(&"b".into()).is_some());
    let ctx = RoutingContext {
        excluded: vec!["a".into()],
        ..RoutingContext::default()
    };
    assert_eq!(cluster.select(&ctx).unwrap().decision.node_id.as_str(), "b");
    source.set_nodes(specs(&["b"]));
    cluster.refresh_discovery().await.unwrap();
    settle().await;
    assert!(cluster.router().snapshot().entry(&"a".into()).is_none());
    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push(e);
    }
    assert!(
        kinds.iter().any(
            |e| matches!(e, ClusterEvent::NodeDiscovered { node, .. } if node.as_str() == "b")
        )
    );
    assert!(
        kinds
            .iter()
            .any(|e| matches!(e, ClusterEvent::NodeLost { node } if node.as_str() == "a"))
    );
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn models_filter_routing() {
    let ids = ["m1", "m2", "x"];
    let source = Arc::new(StaticSource::new(specs(&ids)));
    let cluster = Cluster::builder(config(&ids))
        .health_checker(Arc::new(Script::default()))
        .node_validator(Arc::new(Models))
        .discovery_source(source)
        .start()
        .await
        .unwrap();
    assert_eq!(cluster.models(), ["model-m1", "model-m2", "shared"]);
    let for_model = |m: &str, ex: &[&str]| RoutingContext {
        model: Some(m.to_owned()),
        excluded: ex.iter().map(|s| NodeId::from(*s)).collect(),
        ..RoutingContext::default()
    };
    // m1's model: m1, or `x` (which lists nothing, so may serve anything).
    for _ in 0..4 {
        let n = cluster
            .select(&for_model("model-m1", &[]))
            .unwrap()
            .decision
            .node_id;
        assert!(n.as_str() == "m1" || n.as_str() == "x", "{n}");
    }
    assert!(
        cluster
            .select(&for_model("model-m1", &["m1", "x"]))
            .is_err()
    );
    let n = cluster
        .select(&for_model("shared", &["m1", "x"]))
        .unwrap()
        .decision
        .node_id;
    assert_eq!(n.as_str(), "m2");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_idempotent_and_final() {
    let source = Arc::new(StaticSource::new(specs(&["a"])));
    let cluster = start(&["a"], Arc::default(), source).await;
    let clone = cluster.clone();
    let mut events = cluster.subscribe();
    let in_flight = cluster.select(&RoutingContext::default()).unwrap();
    cluster.shutdown().await;
    clone.shutdown().await;
    assert_eq!(events.try_recv().unwrap(), ClusterEvent::ShuttingDown);
    assert!(!cluster.is_ready());
    let err = cluster.select(&RoutingContext::default()).unwrap_err();
    assert_eq!(err.code(), "NOT_INITIALIZED");
    assert_eq!(
        clone.drain(&"a".into()).unwrap_err().code(),
        "NOT_INITIALIZED"
    );
    assert!(clone.refresh_discovery().await.is_err());
    // Guards handed out before still finish cleanly.
    in_flight.guard.finish(RequestOutcome::success());
    assert!(!cluster.health().is_running());
    let _ = cluster.clock();
    assert!(format!("{cluster:?}").contains("stopped: true"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_at_start_is_not_fatal() {
    #[derive(Debug)]
    struct Broken;
    #[async_trait]
    impl cluster_discovery::DiscoverySource for Broken {
        fn name(&self) -> String {
            "broken".to_owned()
        }
        async fn discover(&self) -> Result<cluster_discovery::DiscoverySnapshot, DiscoveryError> {
            Err(DiscoveryError::BackendNotCompiled {
                backend: "dns",
                feature: "dns",
            })
        }
    }
    let cluster = Cluster::builder(config(&[]))
        .health_checker(Arc::new(Script::default()))
        .discovery_source(Arc::new(Broken))
        .start()
        .await
        .unwrap();
    assert!(!cluster.is_ready());
    assert_eq!(cluster.status().status, ClusterStatus::Offline);
    let err = cluster.select(&RoutingContext::default()).unwrap_err();
    assert_eq!(err.code(), "NO_ROUTABLE_NODE");
    assert_eq!(
        cluster.refresh_discovery().await.unwrap_err().code(),
        "DISCOVERY_FAILED"
    );
    cluster.shutdown().await;
}
