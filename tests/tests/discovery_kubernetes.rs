//! Kubernetes EndpointSlice discovery: the real kube client (list, watcher,
//! backoff) against the fake API server of `cluster_tests::k8s`, with nodes
//! that are real HTTP servers answering `GET /v1/models`.
#![allow(clippy::unwrap_used)]

mod discovery_support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cluster_discovery::{
    AcceptAll, ClusterDiscovery, DiscoveryError, DiscoveryEvent, DiscoverySource, KubernetesSource,
    KubernetesSourceConfig, NodeOrigin,
};
use cluster_tests::k8s::{Endpoint, FakeApiServer, endpoint_slice};
use discovery_support::{Answer, ModelsStub, describe, drain, next_event};

const NS: &str = "inference";
const WAIT: Duration = Duration::from_secs(30);

async fn source(api: &FakeApiServer) -> KubernetesSource {
    let mut config = KubernetesSourceConfig::new("mlx");
    config.namespace = Some(NS.to_owned());
    config.api_url = Some(api.url());
    KubernetesSource::new(config).await.unwrap()
}

/// A slice of Service `mlx` holding one ready (or not) pod at 127.0.0.1 on
/// the stub's port: one slice per node, so every node has its own port.
fn node_slice(pod: &str, stub: &ModelsStub, ready: bool) -> serde_json::Value {
    let endpoint = if ready {
        Endpoint::ready("127.0.0.1", pod)
    } else {
        Endpoint::not_ready("127.0.0.1", pod)
    };
    endpoint_slice(
        &format!("{pod}-slice"),
        "mlx",
        &[("http", stub.port())],
        &[endpoint],
    )
}

async fn expect(rx: &mut tokio::sync::broadcast::Receiver<DiscoveryEvent>, want: &str) {
    let event = next_event(rx, WAIT).await;
    assert_eq!(describe(&event), want, "{event:?}");
}

#[tokio::test]
async fn list_returns_the_ready_endpoints_of_the_service() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply_slice(
        NS,
        endpoint_slice(
            "mlx-abc",
            "mlx",
            &[("metrics", 9090), ("http", 8080)],
            &[
                Endpoint::ready("10.0.0.1", "mlx-0"),
                Endpoint::not_ready("10.0.0.2", "mlx-1"),
                Endpoint::ready("10.0.0.3", "mlx-2"),
            ],
        ),
    );
    // Another Service's slice and another namespace's: not ours.
    api.apply_slice(
        NS,
        endpoint_slice(
            "other-x",
            "other",
            &[("http", 80)],
            &[Endpoint::ready("10.0.1.1", "o")],
        ),
    );
    api.apply_slice(
        "elsewhere",
        endpoint_slice(
            "mlx-zzz",
            "mlx",
            &[("http", 80)],
            &[Endpoint::ready("10.0.2.1", "z")],
        ),
    );

    let source = source(&api).await;
    assert_eq!(
        source.name(),
        "kubernetes:inference/kubernetes.io/service-name=mlx"
    );
    let snapshot = source.discover().await.unwrap();
    let ids: Vec<_> = snapshot.nodes.iter().map(|n| n.id().to_string()).collect();
    assert_eq!(ids, ["mlx-0", "mlx-2"]);
    let first = &snapshot.nodes[0];
    assert_eq!(first.url(), "http://10.0.0.1:8080", "the port named http");
    assert_eq!(first.spec.tags["k8s.namespace"], NS);
    assert_eq!(first.spec.tags["k8s.zone"], "zone-a");
    assert_eq!(
        first.origin,
        NodeOrigin::Kubernetes {
            namespace: NS.into(),
            service: Some("mlx".into()),
            slice: "mlx-abc".into(),
            target: Some("Pod/mlx-0".into()),
        }
    );

    let lists: Vec<_> = api.requests().into_iter().filter(|r| r.is_list()).collect();
    assert_eq!(lists.len(), 1);
    assert_eq!(
        lists[0].query.get("labelSelector").map(String::as_str),
        Some("kubernetes.io/service-name=mlx")
    );
    assert!(lists[0].path.contains("/namespaces/inference/"));
}

#[tokio::test]
async fn api_errors_carry_their_status_code() {
    let api = FakeApiServer::start().await.unwrap();
    api.fail_requests(Some(403));
    let error = source(&api).await.discover().await.unwrap_err();
    match &error {
        DiscoveryError::Kubernetes {
            operation,
            namespace,
            code,
            ..
        } => {
            assert_eq!(*operation, "list");
            assert_eq!(namespace, NS);
            assert_eq!(*code, Some(403));
        }
        other => panic!("expected a Kubernetes error, got {other:?}"),
    }
    assert_eq!(error.code(), "kubernetes_list");
}

#[tokio::test]
async fn the_watch_follows_additions_readiness_flips_and_deletions() {
    let a = ModelsStub::start(Answer::model("model-a")).await;
    let b = ModelsStub::start(Answer::model("model-b")).await;
    let c = ModelsStub::start(Answer::model("model-c")).await;
    let api = FakeApiServer::start().await.unwrap();
    api.apply_slice(NS, node_slice("mlx-a", &a, true));
    api.apply_slice(NS, node_slice("mlx-b", &b, true));

    let discovery = ClusterDiscovery::builder(Arc::new(source(&api).await)).build();
    let mut rx = discovery.subscribe();
    let report = discovery.start().await.unwrap();
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(drain(&mut rx), ["+mlx-a", "+mlx-b"]);
    assert_eq!(discovery.node("mlx-a").unwrap().models, ["model-a"]);
    api.watches_opened(1).await;

    api.apply_slice(NS, node_slice("mlx-c", &c, true));
    expect(&mut rx, "+mlx-c").await;
    assert_eq!(discovery.node("mlx-c").unwrap().url(), c.url());

    // mlx-a stops being ready, then comes back (validated again).
    api.apply_slice(NS, node_slice("mlx-a", &a, false));
    expect(&mut rx, "-mlx-a").await;
    api.apply_slice(NS, node_slice("mlx-a", &a, true));
    expect(&mut rx, "+mlx-a").await;
    assert_eq!(a.requests(), 2);

    api.delete_slice(NS, "mlx-b-slice").unwrap();
    expect(&mut rx, "-mlx-b").await;

    let ids: Vec<_> = discovery
        .nodes()
        .iter()
        .map(|n| n.id().to_string())
        .collect();
    assert_eq!(ids, ["mlx-a", "mlx-c"]);
    // One LIST by the first refresh, one by the watcher, then one watch.
    let requests = api.requests();
    assert_eq!(requests.iter().filter(|r| r.is_list()).count(), 2);
    let watches: Vec<_> = requests.iter().filter(|r| r.is_watch()).collect();
    assert_eq!(watches.len(), 1);
    assert_eq!(
        watches[0]
            .query
            .get("allowWatchBookmarks")
            .map(String::as_str),
        Some("true")
    );
    discovery.stop().await;
    assert!(!discovery.is_running());
}

#[tokio::test]
async fn a_watch_that_ends_is_resumed_from_the_last_version() {
    let a = ModelsStub::start(Answer::model("m")).await;
    let b = ModelsStub::start(Answer::model("m")).await;
    let api = FakeApiServer::start().await.unwrap();
    api.apply_slice(NS, node_slice("mlx-a", &a, true));

    let discovery = ClusterDiscovery::builder(Arc::new(source(&api).await)).build();
    let mut rx = discovery.subscribe();
    discovery.start().await.unwrap();
    assert_eq!(drain(&mut rx), ["+mlx-a"]);
    api.watches_opened(1).await;

    // A bookmark moves the client's resume point without an object.
    api.apply_slice(
        NS,
        endpoint_slice("unrelated", "other", &[("http", 1)], &[]),
    );
    api.bookmark();
    let bookmarked = api.resource_version();
    api.end_watches();
    api.watches_opened(2).await;

    api.apply_slice(NS, node_slice("mlx-b", &b, true));
    expect(&mut rx, "+mlx-b").await;

    let requests = api.requests();
    let watches: Vec<_> = requests.iter().filter(|r| r.is_watch()).collect();
    assert_eq!(watches.len(), 2);
    assert_eq!(
        watches[1].resource_version(),
        Some(bookmarked.to_string().as_str()),
        "resumed from the bookmark"
    );
    // No relist: the discover() LIST and the watcher's first LIST only.
    assert_eq!(requests.iter().filter(|r| r.is_list()).count(), 2);
    assert!(drain(&mut rx).is_empty(), "no error for a watch that ends");
    discovery.stop().await;
}

#[tokio::test]
async fn gone_forces_a_relist_and_the_set_is_swapped_whole() {
    let a = ModelsStub::start(Answer::model("m")).await;
    let b = ModelsStub::start(Answer::model("m")).await;
    let c = ModelsStub::start(Answer::model("m")).await;
    let api = FakeApiServer::start().await.unwrap();
    api.apply_slice(NS, node_slice("mlx-a", &a, true));
    api.apply_slice(NS, node_slice("mlx-b", &b, true));

    let discovery = ClusterDiscovery::builder(Arc::new(source(&api).await)).build();
    let mut rx = discovery.subscribe();
    discovery.start().await.unwrap();
    assert_eq!(drain(&mut rx), ["+mlx-a", "+mlx-b"]);
    api.watches_opened(1).await;

    // The API server is failing, then history is compacted: the open watch
    // gets 410 Gone, and the relist fails.
    api.fail_requests(Some(500));
    api.expire_history();
    match next_event(&mut rx, WAIT).await {
        DiscoveryEvent::Error(e) => match &*e {
            DiscoveryError::Kubernetes {
                operation, code, ..
            } => {
                assert_eq!((*operation, *code), ("watch", Some(410)), "{e}");
            }
            other => panic!("expected a Kubernetes error, got {other:?}"),
        },
        other => panic!("expected the 410 error, got {other:?}"),
    }
    match next_event(&mut rx, WAIT).await {
        DiscoveryEvent::Error(e) => assert_eq!(e.code(), "kubernetes_list", "{e}"),
        other => panic!("expected the failed relist, got {other:?}"),
    }
    assert_eq!(discovery.nodes().len(), 2, "the last snapshot is kept");
    let lists_before = api.requests().iter().filter(|r| r.is_list()).count();

    // Meanwhile the Service changed; the API server recovers; the relist
    // (after the watcher's backoff) sees the new set and it replaces the
    // old one in one step.
    api.delete_slice(NS, "mlx-a-slice").unwrap();
    api.apply_slice(NS, node_slice("mlx-c", &c, true));
    api.fail_requests(None);
    let mut events = Vec::new();
    while events.len() < 2 {
        let event = describe(&next_event(&mut rx, WAIT).await);
        // More failed relists may come first, depending on timing.
        if event != "!kubernetes_list" {
            events.push(event);
        }
    }
    assert_eq!(events, ["-mlx-a", "+mlx-c"]);
    let ids: Vec<_> = discovery
        .nodes()
        .iter()
        .map(|n| n.id().to_string())
        .collect();
    assert_eq!(ids, ["mlx-b", "mlx-c"], "mlx-b was never lost");
    assert!(api.requests().iter().filter(|r| r.is_list()).count() > lists_before);
    discovery.stop().await;
}

#[tokio::test]
async fn unreachable_endpoints_are_not_announced() {
    // The watch sees a ready endpoint that does not answer /v1/models: it is
    // not announced, and an error says why.
    let api = FakeApiServer::start().await.unwrap();
    let port = discovery_support::closed_port();
    api.apply_slice(
        NS,
        endpoint_slice(
            "dead-slice",
            "mlx",
            &[("http", port)],
            &[Endpoint::ready("127.0.0.1", "dead")],
        ),
    );
    let discovery = ClusterDiscovery::builder(Arc::new(source(&api).await))
        .validation_timeout(Duration::from_secs(5))
        .build();
    let mut rx = discovery.subscribe();
    let report = discovery.start().await.unwrap();
    assert_eq!(report.rejected.len(), 1);
    assert!(discovery.nodes().is_empty());
    assert_eq!(drain(&mut rx), ["!validation_failed"]);

    // Without validation the same endpoint is announced.
    let unchecked = ClusterDiscovery::builder(Arc::new(source(&api).await))
        .validator(AcceptAll)
        .build();
    let report = unchecked.refresh_now().await;
    assert_eq!(report.discovered.len(), 1);
    discovery.stop().await;
}

#[tokio::test]
async fn kubectl_reads_the_fake_api_server() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply_slice(
        NS,
        endpoint_slice(
            "mlx-kubectl",
            "mlx",
            &[("http", 8080)],
            &[Endpoint::ready("10.0.0.1", "p")],
        ),
    );
    // `$KUBECTL` first (to try another client build), then the usual places.
    let kubectl = std::env::var("KUBECTL")
        .ok()
        .into_iter()
        .chain([
            "/usr/bin/kubectl".to_owned(),
            "/usr/local/bin/kubectl".to_owned(),
        ])
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("kubectl not found: install it (`apt-get install kubernetes-client`)")
        });
    let home = std::env::temp_dir().join(format!("mlx-cluster-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let url = api.url();
    let output = tokio::task::spawn_blocking({
        let home = home.clone();
        move || {
            Command::new(kubectl)
                .env("HOME", &home)
                .env("KUBECONFIG", home.join("no-kubeconfig"))
                .args(["--server", &url, "--cache-dir"])
                .arg(home.join("cache"))
                .args(["get", "endpointslices", "-n", NS, "-o", "name"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kubectl failed: {stderr}");
    assert!(
        stdout.contains("endpointslice.discovery.k8s.io/mlx-kubectl"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // kubectl found the resource through the discovery documents.
    let paths: Vec<_> = api.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths
            .iter()
            .any(|p| p == "/apis" || p.starts_with("/apis/discovery.k8s.io")),
        "{paths:?}"
    );
}
