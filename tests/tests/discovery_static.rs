//! Static discovery: dedupe and validation against the real
//! `mlx_lm.server` fixture and against servers that answer `/v1/models`
//! wrongly. A missing mlx fixture fails the test (run `cargo xtask setup`).
#![allow(clippy::unwrap_used)]

mod discovery_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_discovery::{
    ClusterDiscovery, DiscoveryCallbacks, DiscoveryError, DiscoveryEvent, StaticSource,
};
use cluster_tests::mlx::{MlxFixture, MlxServer};
use cluster_types::NodeSpec;
use discovery_support::{Answer, ModelsStub, closed_port, drain, next_event};

fn names(ids: &[cluster_types::NodeId]) -> Vec<&str> {
    ids.iter().map(cluster_types::NodeId::as_str).collect()
}

#[tokio::test]
async fn only_real_inference_servers_are_announced_once_each() {
    let fixture = MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut mlx = MlxServer::start(&fixture)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let html = ModelsStub::start(Answer::Body("text/html", "<html>it works</html>".into())).await;
    let no_data = ModelsStub::start(Answer::Body(
        "application/json",
        r#"{"object":"list"}"#.into(),
    ))
    .await;
    let broken = ModelsStub::start(Answer::Status(500)).await;
    let busy = ModelsStub::start(Answer::Status(429)).await;
    let dead = format!("http://127.0.0.1:{}", closed_port());

    let source = Arc::new(StaticSource::new(vec![
        NodeSpec::new("mlx", mlx.base_url()),
        NodeSpec::new("html", html.url()),
        NodeSpec::new("no-data", no_data.url()),
        NodeSpec::new("broken", broken.url()),
        NodeSpec::new("busy", busy.url()),
        NodeSpec::new("dead", dead),
        // Duplicates: the same id elsewhere, the same server under another
        // id (written with the OpenAI base path).
        NodeSpec::new("mlx", html.url()),
        NodeSpec::new("mlx-alias", format!("{}/v1/", mlx.base_url())),
    ]));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let discovered = Arc::new(AtomicUsize::new(0));
    let (e, d) = (Arc::clone(&errors), Arc::clone(&discovered));
    let discovery = ClusterDiscovery::builder(source.clone())
        .validation_timeout(Duration::from_secs(10))
        .callbacks(
            DiscoveryCallbacks::new()
                .on_node_discovered(move |_| {
                    d.fetch_add(1, Ordering::SeqCst);
                })
                .on_discovery_error(move |err| {
                    e.lock().unwrap().push((
                        err.node().map(ToString::to_string).unwrap_or_default(),
                        err.code(),
                    ));
                }),
        )
        .build();
    let mut rx = discovery.subscribe();
    let report = discovery.start().await.unwrap();

    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(
        names(&report.discovered),
        ["mlx"],
        "log:\n{}",
        mlx.log_tail()
    );
    assert_eq!(
        names(&report.rejected),
        ["broken", "busy", "dead", "html", "no-data"]
    );
    assert_eq!(names(&report.duplicates), ["mlx", "mlx-alias"]);

    let node = discovery.node("mlx").unwrap();
    assert_eq!(
        node.models,
        [fixture.model_id()],
        "the model the real server lists"
    );
    assert_eq!(node.url(), mlx.base_url());
    assert_eq!(discovery.nodes().len(), 1);
    assert_eq!(discovered.load(Ordering::SeqCst), 1);

    let mut errors = errors.lock().unwrap().clone();
    errors.sort();
    assert_eq!(
        errors,
        [
            ("broken".to_owned(), "validation_failed"),
            ("busy".to_owned(), "validation_failed"),
            ("dead".to_owned(), "validation_failed"),
            ("html".to_owned(), "validation_failed"),
            ("no-data".to_owned(), "validation_failed"),
        ]
    );
    // The errors say what was wrong, with the HTTP status when there was one.
    let mut statuses = Vec::new();
    for event in std::iter::from_fn(|| rx.try_recv().ok()) {
        if let DiscoveryEvent::Error(error) = event
            && let DiscoveryError::Validation {
                node,
                status,
                reason,
                ..
            } = &*error
        {
            statuses.push((node.to_string(), *status, reason.clone()));
        }
    }
    statuses.sort();
    assert_eq!(statuses[0].1, Some(500), "{statuses:?}");
    assert_eq!(statuses[1].1, Some(429), "{statuses:?}");
    assert!(statuses[3].2.contains("model list"), "{statuses:?}");
    assert!(statuses[4].2.contains("model list"), "{statuses:?}");

    // The mlx node leaves the configuration: lost. Its server going down is
    // health's business, not discovery's: nothing happens on a refresh.
    mlx.kill().await.unwrap();
    let report = discovery.refresh_now().await;
    assert!(!report.changed());
    assert_eq!(discovery.nodes().len(), 1);
    source.set_nodes(vec![NodeSpec::new("busy", busy.url())]);
    let _ = drain(&mut rx);
    discovery.refresh_now().await;
    match next_event(&mut rx, Duration::from_secs(5)).await {
        DiscoveryEvent::Lost(node) => assert_eq!(node.id().as_str(), "mlx"),
        other => panic!("expected mlx lost, got {other:?}"),
    }
    assert!(discovery.nodes().is_empty());

    // The busy node recovers: announced at the next refresh.
    busy.set_answer(Answer::model("recovered"));
    let report = discovery.refresh_now().await;
    assert_eq!(names(&report.discovered), ["busy"]);
    assert_eq!(discovery.node("busy").unwrap().models, ["recovered"]);
    discovery.stop().await;
}

#[tokio::test]
async fn a_configuration_typo_fails_the_snapshot_loudly() {
    let good = ModelsStub::start(Answer::model("m")).await;
    let source = Arc::new(StaticSource::new(vec![NodeSpec::new("good", good.url())]));
    let discovery = ClusterDiscovery::builder(source.clone()).build();
    let mut rx = discovery.subscribe();
    discovery.start().await.unwrap();
    assert_eq!(drain(&mut rx), ["+good"]);

    // A reload with a URL missing its scheme: an error, the old set stays.
    source.set_nodes(vec![
        NodeSpec::new("good", good.url()),
        NodeSpec::new("typo", "127.0.0.1:8080"),
    ]);
    let report = discovery.refresh_now().await;
    let error = report.error.expect("a configuration error");
    assert_eq!(error.code(), "invalid_node_url");
    assert_eq!(
        error.node().map(ToString::to_string).as_deref(),
        Some("typo")
    );
    assert_eq!(discovery.nodes().len(), 1);
    discovery.stop().await;
}
