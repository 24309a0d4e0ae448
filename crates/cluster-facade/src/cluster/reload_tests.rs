//! Reload and runtime nodes: static discovery from the configuration,
//! scripted health checks, paused tokio time, no network.

use std::sync::Arc;
use std::time::Duration;

use cluster_discovery::AcceptAll;
use cluster_types::{
    DiscoveryConfig, LoadBalanceStrategy, NodeId, NodeSpec, NodeStatus, StaticDiscovery,
};

use super::tests::{Script, config, settle, specs};
use crate::{Cluster, FacadeError, TAG_RUNTIME};

async fn start(ids: &[&str]) -> Cluster {
    Cluster::builder(config(ids))
        .health_checker(Arc::new(Script::default()))
        .node_validator(Arc::new(AcceptAll))
        .seed(7)
        .start()
        .await
        .unwrap()
}

fn ids(cluster: &Cluster) -> Vec<String> {
    cluster
        .status()
        .nodes
        .iter()
        .map(|n| n.spec.id.to_string())
        .collect()
}

fn with_nodes(base: &cluster_types::ClusterConfig, nodes: &[&str]) -> cluster_types::ClusterConfig {
    let mut c = base.clone();
    c.discovery = DiscoveryConfig::Static(StaticDiscovery {
        nodes: specs(nodes),
        ..StaticDiscovery::default()
    });
    c
}

#[tokio::test(start_paused = true)]
async fn reload_changes_the_node_list_and_routing_without_touching_the_rest() {
    let cluster = start(&["a", "b"]).await;
    assert_eq!(ids(&cluster), ["a", "b"]);
    let mut next = with_nodes(&cluster.config(), &["b", "c"]);
    next.routing.strategy = LoadBalanceStrategy::RoundRobin;
    next.health.check_interval = Duration::from_secs(9);
    let report = cluster.reload(next).await.unwrap();
    assert_eq!(report.applied, ["discovery", "routing"]);
    assert_eq!(report.restart_required, ["health"]);
    assert_eq!(report.discovered, [NodeId::from("c")]);
    assert_eq!(report.lost, [NodeId::from("a")]);
    settle().await;
    assert_eq!(ids(&cluster), ["b", "c"]);
    assert_eq!(
        cluster.router().params().strategy,
        LoadBalanceStrategy::RoundRobin
    );
    assert_eq!(
        cluster.config().routing.strategy,
        LoadBalanceStrategy::RoundRobin
    );
    assert!(cluster.is_ready());
    // The routing seed given to the builder survives the reload.
    assert_eq!(cluster.router().params().seed, 7);

    // Same file again: nothing to do.
    let same = (*cluster.config()).clone();
    let report = cluster.reload(same).await.unwrap();
    assert!(report.applied.is_empty() && report.restart_required.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_with_every_problem_and_changes_nothing() {
    let cluster = start(&["a", "b"]).await;
    let mut bad = with_nodes(&cluster.config(), &["a", "a"]);
    bad.health.timeout = Duration::from_secs(60);
    bad.backoff.jitter = 3.0;
    let err = cluster.reload(bad).await.unwrap_err();
    let FacadeError::InvalidConfig { problems, .. } = &err else {
        panic!("InvalidConfig expected, got {err}")
    };
    let paths: Vec<&str> = problems
        .problems()
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    assert!(paths.contains(&"discovery.nodes[1].id"), "{paths:?}");
    assert!(paths.contains(&"health.timeout"), "{paths:?}");
    assert!(paths.contains(&"backoff.jitter"), "{paths:?}");
    assert_eq!(ids(&cluster), ["a", "b"]);
    assert_eq!(cluster.config().health.timeout, Duration::from_secs(2));
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn runtime_nodes_are_added_shown_kept_across_reloads_and_removed() {
    let cluster = start(&["a"]).await;
    let reason = cluster
        .add_node(NodeSpec::new("r", "http://127.0.0.1:9/r/v1"))
        .await
        .unwrap();
    assert_eq!(reason, None, "announced");
    settle().await;
    let status = cluster.status();
    let r = status
        .nodes
        .iter()
        .find(|n| n.spec.id.as_str() == "r")
        .unwrap();
    assert_eq!(r.spec.tags[TAG_RUNTIME], "admin");
    assert_eq!(r.spec.url, "http://127.0.0.1:9/r");
    assert_eq!(r.status, NodeStatus::Healthy);

    for (spec, code) in [
        (NodeSpec::new("r", "http://127.0.0.1:9/x"), "NODE_EXISTS"),
        (NodeSpec::new("a", "http://127.0.0.1:9/y"), "NODE_EXISTS"),
        (
            NodeSpec::new("bad id", "http://127.0.0.1:9/z"),
            "INVALID_NODE",
        ),
        (NodeSpec::new("u", "ftp://h"), "INVALID_NODE"),
    ] {
        assert_eq!(cluster.add_node(spec).await.unwrap_err().code(), code);
    }

    // A reload rebuilds the configured source; runtime nodes stay.
    let next = with_nodes(&cluster.config(), &["a", "b"]);
    cluster.reload(next).await.unwrap();
    settle().await;
    assert_eq!(ids(&cluster), ["a", "b", "r"]);

    let err = cluster.remove_node(&NodeId::from("a")).await.unwrap_err();
    assert_eq!(err.code(), "NOT_A_RUNTIME_NODE");
    cluster.remove_node(&NodeId::from("r")).await.unwrap();
    settle().await;
    assert_eq!(ids(&cluster), ["a", "b"]);
    assert!(cluster.runtime_nodes().is_empty());
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn drained_nodes_stay_drained_across_rediscovery() {
    let cluster = start(&["a", "b"]).await;
    cluster.drain(&NodeId::from("b")).unwrap();
    let base = (*cluster.config()).clone();
    cluster.reload(with_nodes(&base, &["a"])).await.unwrap();
    settle().await;
    assert_eq!(ids(&cluster), ["a"]);
    cluster
        .reload(with_nodes(&base, &["a", "b"]))
        .await
        .unwrap();
    settle().await;
    assert_eq!(ids(&cluster), ["a", "b"]);
    assert_eq!(cluster.drained(), [NodeId::from("b")]);
    let snap = cluster.router().snapshot();
    assert!(snap.entry(&NodeId::from("b")).unwrap().drained);
    for _ in 0..10 {
        let s = cluster
            .select(&cluster_types::RoutingContext::default())
            .unwrap();
        assert_eq!(s.decision.node_id.as_str(), "a");
        s.guard.finish(crate::RequestOutcome::success());
    }
    cluster.undrain(&NodeId::from("b")).unwrap();
    assert!(cluster.drained().is_empty());
    cluster.shutdown().await;
}
