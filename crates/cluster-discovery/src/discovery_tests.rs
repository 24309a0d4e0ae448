//! Tests of [`ClusterDiscovery`] with in-memory sources and validators, on
//! tokio's paused clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cluster_types::{NodeId, NodeSpec};
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};

use crate::{
    AcceptAll, ClusterDiscovery, DiscoveredNode, DiscoveryCallbacks, DiscoveryError,
    DiscoveryEvent, DiscoverySnapshot, DiscoverySource, MockDiscoverySource, MockNodeValidator,
    NodeOrigin, NodeValidator, SnapshotStream, StaticSource,
};

const INTERVAL: Duration = Duration::from_secs(30);

fn spec(id: &str, port: u16) -> NodeSpec {
    NodeSpec::new(id, format!("http://127.0.0.1:{port}"))
}

fn node(id: &str, port: u16) -> DiscoveredNode {
    DiscoveredNode::new(spec(id, port), NodeOrigin::Static)
}

fn snapshot(nodes: &[(&str, u16)]) -> DiscoverySnapshot {
    DiscoverySnapshot::new(nodes.iter().map(|(id, port)| node(id, *port)).collect())
}

fn ids(nodes: &[crate::ValidatedNode]) -> Vec<String> {
    nodes.iter().map(|n| n.id().to_string()).collect()
}

fn names(ids: &[NodeId]) -> Vec<&str> {
    ids.iter().map(NodeId::as_str).collect()
}

/// A validator that serves model `m-<id>` for every node, except the ids it
/// is told to refuse.
#[derive(Default)]
struct Models {
    refuse: Mutex<Vec<String>>,
    calls: AtomicUsize,
}

#[async_trait]
impl NodeValidator for Models {
    async fn validate(
        &self,
        node: &NodeSpec,
    ) -> Result<cluster_types::NodeProfile, DiscoveryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .refuse
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == node.id.as_str())
        {
            return Err(DiscoveryError::Validation {
                node: node.id.clone(),
                url: node.url.clone(),
                reason: "refused by the test".into(),
                status: Some(404),
                source: None,
            });
        }
        Ok(vec![format!("m-{}", node.id)].into())
    }
}

/// Drains the events received so far (non-blocking).
fn drain(rx: &mut broadcast::Receiver<DiscoveryEvent>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(match event {
            DiscoveryEvent::Discovered(n) => format!("+{}", n.id()),
            DiscoveryEvent::Lost(n) => format!("-{}", n.id()),
            DiscoveryEvent::Updated { current, .. } => format!("~{}", current.id()),
            DiscoveryEvent::Error(e) => format!("!{}", e.code()),
        });
    }
    out
}

#[tokio::test(start_paused = true)]
async fn start_announces_validated_nodes_and_refuses_a_second_start() {
    let source = Arc::new(StaticSource::new(vec![spec("b", 2), spec("a", 1)]));
    let discovered = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&discovered);
    let discovery = ClusterDiscovery::builder(source)
        .validator(Models::default())
        .refresh_interval(INTERVAL)
        .callbacks(DiscoveryCallbacks::new().on_node_discovered(move |n| {
            seen.lock().unwrap().push(n.id().to_string());
        }))
        .build();
    let mut rx = discovery.subscribe();
    assert!(!discovery.is_running());

    let report = discovery.start().await.unwrap();
    assert!(discovery.is_running());
    assert_eq!(names(&report.discovered), ["a", "b"]);
    assert!(report.changed());
    assert_eq!(report.next_refresh, INTERVAL);
    assert_eq!(ids(&discovery.nodes()), ["a", "b"]);
    let snapshot = discovery.snapshot();
    assert_eq!(
        snapshot.keys().map(NodeId::as_str).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(discovery.node("a").unwrap().models, ["m-a"]);
    assert_eq!(drain(&mut rx), ["+a", "+b"]);
    assert_eq!(*discovered.lock().unwrap(), ["a", "b"]);

    let again = discovery.start().await.unwrap_err();
    assert!(matches!(again, DiscoveryError::AlreadyRunning));

    discovery.stop().await;
    assert!(!discovery.is_running());
    // Stopping keeps the announced nodes; a second stop is harmless.
    assert_eq!(discovery.nodes().len(), 2);
    discovery.stop().await;
    // And it can start again.
    let report = discovery.start().await.unwrap();
    assert!(!report.changed());
    discovery.stop().await;
}

#[tokio::test(start_paused = true)]
async fn periodic_refresh_reports_lost_discovered_and_updated() {
    let source = Arc::new(StaticSource::new(vec![spec("a", 1), spec("b", 2)]));
    let lost = Arc::new(Mutex::new(Vec::new()));
    let updated = Arc::new(Mutex::new(Vec::new()));
    let (l, u) = (Arc::clone(&lost), Arc::clone(&updated));
    let discovery = ClusterDiscovery::builder(source.clone())
        .validator(Models::default())
        .refresh_interval(INTERVAL)
        .callbacks(
            DiscoveryCallbacks::new()
                .on_node_lost(move |n| l.lock().unwrap().push(n.id().to_string()))
                .on_node_updated(move |prev, cur| {
                    u.lock()
                        .unwrap()
                        .push((prev.spec().weight, cur.spec().weight));
                }),
        )
        .build();
    let mut events = Box::pin(discovery.events());
    discovery.start().await.unwrap();
    assert_eq!(
        events.next().await.unwrap().node_id().unwrap().as_str(),
        "a"
    );
    assert_eq!(
        events.next().await.unwrap().node_id().unwrap().as_str(),
        "b"
    );

    let mut b = spec("b", 2);
    b.weight = 3;
    source.set_nodes(vec![b, spec("c", 3)]);
    // Nothing before the interval has passed.
    tokio::time::advance(INTERVAL - Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(ids(&discovery.nodes()), ["a", "b"]);

    let lost_a = events.next().await.unwrap();
    assert!(matches!(&lost_a, DiscoveryEvent::Lost(n) if n.id().as_str() == "a"));
    match events.next().await.unwrap() {
        DiscoveryEvent::Updated { previous, current } => {
            assert_eq!(previous.spec().weight, 1);
            assert_eq!(current.spec().weight, 3);
            assert_eq!(current.models, ["m-b"]);
        }
        other => panic!("expected Updated, got {other:?}"),
    }
    assert!(
        matches!(events.next().await.unwrap(), DiscoveryEvent::Discovered(n) if n.id().as_str() == "c")
    );
    assert_eq!(ids(&discovery.nodes()), ["b", "c"]);
    assert_eq!(*lost.lock().unwrap(), ["a"]);
    assert_eq!(*updated.lock().unwrap(), [(1, 3)]);
    discovery.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_node_failing_validation_is_not_announced_until_it_passes() {
    let validator = Arc::new(Models::default());
    validator.refuse.lock().unwrap().push("b".into());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let e = Arc::clone(&errors);
    let discovery = ClusterDiscovery::builder(Arc::new(StaticSource::new(vec![
        spec("a", 1),
        spec("b", 2),
    ])))
    .shared_validator(validator.clone())
    .refresh_interval(INTERVAL)
    .callbacks(DiscoveryCallbacks::new().on_discovery_error(move |err| {
        e.lock().unwrap().push(err.to_string());
    }))
    .build();
    let mut rx = discovery.subscribe();
    let report = discovery.start().await.unwrap();
    assert_eq!(names(&report.discovered), ["a"]);
    assert_eq!(names(&report.rejected), ["b"]);
    assert!(report.error.is_none(), "a node error is not a source error");
    assert_eq!(ids(&discovery.nodes()), ["a"]);
    assert_eq!(drain(&mut rx), ["+a", "!validation_failed"]);
    assert!(errors.lock().unwrap()[0].contains("refused by the test"));

    // Still refused at the next refresh: validated again, not announced.
    let report = discovery.refresh_now().await;
    assert_eq!(names(&report.rejected), ["b"]);
    assert_eq!(validator.calls.load(Ordering::SeqCst), 3, "a, b, b again");

    validator.refuse.lock().unwrap().clear();
    let report = discovery.refresh_now().await;
    assert_eq!(names(&report.discovered), ["b"]);
    assert_eq!(ids(&discovery.nodes()), ["a", "b"]);
    // Announced nodes are not validated again.
    assert_eq!(validator.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn validation_has_a_timeout() {
    // The mock answers for "fast"; "slow" never answers.
    let mut inner = MockNodeValidator::new();
    inner
        .expect_validate()
        .withf(|node| node.id.as_str() == "fast")
        .times(1)
        .returning(|_| Ok(vec!["m".to_owned()].into()));
    struct Hang(MockNodeValidator);
    #[async_trait]
    impl NodeValidator for Hang {
        async fn validate(
            &self,
            node: &NodeSpec,
        ) -> Result<cluster_types::NodeProfile, DiscoveryError> {
            if node.id.as_str() == "slow" {
                std::future::pending::<()>().await;
            }
            self.0.validate(node).await
        }
    }
    let discovery = ClusterDiscovery::builder(Arc::new(StaticSource::new(vec![
        spec("fast", 1),
        spec("slow", 2),
    ])))
    .validator(Hang(inner))
    .validation_timeout(Duration::from_secs(2))
    .build();
    let mut rx = discovery.subscribe();
    let report = discovery.refresh_now().await;
    assert_eq!(names(&report.discovered), ["fast"]);
    assert_eq!(names(&report.rejected), ["slow"]);
    assert_eq!(discovery.node("fast").unwrap().models, ["m"]);
    assert_eq!(drain(&mut rx), ["+fast", "!validation_timeout"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_keeps_the_last_good_snapshot() {
    let mut source = MockDiscoverySource::new();
    source.expect_name().return_const("mock".to_owned());
    source.expect_watch().returning(|| None);
    let mut answers = VecDeque::from([
        Ok(snapshot(&[("a", 1), ("b", 2)])),
        Err(DiscoveryError::Source {
            source_name: "mock".into(),
            message: "server blinked".into(),
        }),
        Ok(snapshot(&[("a", 1)])),
    ]);
    source
        .expect_discover()
        .times(3)
        .returning(move || answers.pop_front().unwrap());
    let errors = Arc::new(AtomicUsize::new(0));
    let e = Arc::clone(&errors);
    let discovery = ClusterDiscovery::builder(Arc::new(source))
        .validator(AcceptAll)
        .refresh_interval(INTERVAL)
        .callbacks(DiscoveryCallbacks::new().on_discovery_error(move |_| {
            e.fetch_add(1, Ordering::SeqCst);
        }))
        .build();
    let mut rx = discovery.subscribe();
    discovery.start().await.unwrap();
    assert_eq!(drain(&mut rx), ["+a", "+b"]);

    let report = discovery.refresh_now().await;
    let error = report.error.expect("the source error is reported");
    assert!(error.to_string().contains("server blinked"));
    assert_eq!(ids(&discovery.nodes()), ["a", "b"], "kept");
    assert_eq!(drain(&mut rx), ["!source"]);
    assert_eq!(errors.load(Ordering::SeqCst), 1);
    assert_eq!(report.next_refresh, INTERVAL);

    // The loop goes on after the error: the next periodic refresh succeeds.
    tokio::time::advance(INTERVAL).await;
    let event = rx.recv().await.unwrap();
    assert!(matches!(event, DiscoveryEvent::Lost(n) if n.id().as_str() == "b"));
    discovery.stop().await;
}

#[tokio::test(start_paused = true)]
async fn duplicates_by_id_and_url_are_dropped() {
    let source = StaticSource::new(vec![
        spec("a", 1),
        spec("a", 9),
        NodeSpec::new("b", "http://127.0.0.1:1/"),
        spec("c", 3),
    ]);
    let discovery = ClusterDiscovery::builder(Arc::new(source))
        .validator(AcceptAll)
        .build();
    let report = discovery.refresh_now().await;
    assert_eq!(names(&report.discovered), ["a", "c"]);
    assert_eq!(names(&report.duplicates), ["a", "b"]);
    assert_eq!(discovery.node("a").unwrap().url(), "http://127.0.0.1:1");
}

#[tokio::test(start_paused = true)]
async fn a_url_change_is_lost_then_discovered_again() {
    let source = Arc::new(StaticSource::new(vec![spec("a", 1)]));
    let validator = Arc::new(Models::default());
    let discovery = ClusterDiscovery::builder(source.clone())
        .shared_validator(validator.clone())
        .build();
    let mut rx = discovery.subscribe();
    discovery.refresh_now().await;
    source.set_nodes(vec![spec("a", 2)]);
    let report = discovery.refresh_now().await;
    assert_eq!(names(&report.lost), ["a"]);
    assert_eq!(names(&report.discovered), ["a"]);
    assert_eq!(drain(&mut rx), ["+a", "-a", "+a"]);
    assert_eq!(discovery.node("a").unwrap().url(), "http://127.0.0.1:2");
    assert_eq!(validator.calls.load(Ordering::SeqCst), 2);
}

/// A source that takes `delay` to answer and counts how many answers run at
/// once.
struct Slow {
    delay: Duration,
    running: AtomicUsize,
    max_running: AtomicUsize,
    calls: AtomicUsize,
}

#[async_trait]
impl DiscoverySource for Slow {
    fn name(&self) -> String {
        "slow".into()
    }

    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(snapshot(&[("a", 1)]))
    }
}

#[tokio::test(start_paused = true)]
async fn refreshes_never_overlap() {
    // Each refresh takes 10 s; the interval is 1 s.
    let source = Arc::new(Slow {
        delay: Duration::from_secs(10),
        running: AtomicUsize::new(0),
        max_running: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    });
    let discovery = Arc::new(
        ClusterDiscovery::builder(source.clone())
            .validator(AcceptAll)
            .refresh_interval(Duration::from_secs(1))
            .build(),
    );
    discovery.start().await.unwrap();
    let manual: Vec<_> = (0..3)
        .map(|_| {
            let d = Arc::clone(&discovery);
            tokio::spawn(async move { d.refresh_now().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(120)).await;
    for task in manual {
        task.await.unwrap();
    }
    discovery.stop().await;
    assert_eq!(source.max_running.load(Ordering::SeqCst), 1);
    // 120 s of 10 s refreshes with 1 s pauses: at most 12 refreshes (plus
    // the first), however the manual ones interleave.
    let calls = source.calls.load(Ordering::SeqCst);
    assert!((4..=13).contains(&calls), "{calls} refreshes");
}

#[tokio::test(start_paused = true)]
async fn stop_abandons_a_refresh_in_progress() {
    let source = Arc::new(Slow {
        delay: Duration::from_secs(3600),
        running: AtomicUsize::new(0),
        max_running: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    });
    let discovery = Arc::new(
        ClusterDiscovery::builder(source.clone())
            .validator(AcceptAll)
            .build(),
    );
    let starter = {
        let d = Arc::clone(&discovery);
        tokio::spawn(async move { d.start().await })
    };
    while source.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    assert!(discovery.is_running());
    discovery.stop().await;
    assert!(!discovery.is_running());
    // `start` returns an empty report when stopped during the first refresh.
    let report = starter.await.unwrap().unwrap();
    assert!(!report.changed());
    assert!(discovery.nodes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_callback_does_not_stop_the_loop() {
    let source = Arc::new(StaticSource::new(vec![spec("a", 1)]));
    let discovery = ClusterDiscovery::builder(source.clone())
        .validator(AcceptAll)
        .refresh_interval(INTERVAL)
        .callbacks(
            DiscoveryCallbacks::new()
                .on_node_discovered(|n| panic!("callback bug on {}", n.id()))
                .on_node_lost(|_| panic!("another callback bug")),
        )
        .build();
    let mut rx = discovery.subscribe();
    discovery.start().await.unwrap();
    assert_eq!(drain(&mut rx), ["+a"]);
    source.set_nodes(vec![spec("b", 2)]);
    tokio::time::advance(INTERVAL).await;
    assert!(matches!(rx.recv().await.unwrap(), DiscoveryEvent::Lost(_)));
    assert!(matches!(
        rx.recv().await.unwrap(),
        DiscoveryEvent::Discovered(_)
    ));
    assert!(discovery.is_running());
    assert_eq!(ids(&discovery.nodes()), ["b"]);
    discovery.stop().await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_freshness_sets_the_next_refresh() {
    let mut source = MockDiscoverySource::new();
    source.expect_name().return_const("ttl".to_owned());
    source.expect_watch().returning(|| None);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    source.expect_discover().returning(move || {
        c.fetch_add(1, Ordering::SeqCst);
        let mut s = snapshot(&[("a", 1)]);
        s.valid_for = Some(Duration::from_secs(5));
        Ok(s)
    });
    let discovery = ClusterDiscovery::builder(Arc::new(source))
        .validator(AcceptAll)
        .refresh_interval(INTERVAL)
        .build();
    let report = discovery.start().await.unwrap();
    assert_eq!(report.next_refresh, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(16)).await;
    // At 0, 5, 10 and 15 s: the TTL, not the 30 s interval.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    discovery.stop().await;
}

/// A source that pushes what the test sends it.
struct Pushing {
    rx: Mutex<Option<mpsc::UnboundedReceiver<Result<DiscoverySnapshot, DiscoveryError>>>>,
    polls: AtomicUsize,
}

#[async_trait]
impl DiscoverySource for Pushing {
    fn name(&self) -> String {
        "pushing".into()
    }

    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Ok(snapshot(&[("a", 1)]))
    }

    fn watch(&self) -> Option<SnapshotStream> {
        let rx = self.rx.lock().unwrap().take()?;
        Some(tokio_stream_from(rx))
    }
}

fn tokio_stream_from(
    rx: mpsc::UnboundedReceiver<Result<DiscoverySnapshot, DiscoveryError>>,
) -> SnapshotStream {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

#[tokio::test(start_paused = true)]
async fn pushed_snapshots_are_followed() {
    let (tx, rx) = mpsc::unbounded_channel();
    let source = Arc::new(Pushing {
        rx: Mutex::new(Some(rx)),
        polls: AtomicUsize::new(0),
    });
    let validator = Arc::new(Models::default());
    validator.refuse.lock().unwrap().push("c".into());
    let discovery = ClusterDiscovery::builder(source.clone())
        .shared_validator(validator.clone())
        .refresh_interval(INTERVAL)
        .build();
    let mut rx = discovery.subscribe();
    discovery.start().await.unwrap();
    assert_eq!(drain(&mut rx), ["+a"]);
    assert_eq!(
        source.polls.load(Ordering::SeqCst),
        1,
        "the first refresh polls"
    );

    tx.send(Ok(snapshot(&[("a", 1), ("b", 2), ("c", 3)])))
        .unwrap();
    assert!(
        matches!(rx.recv().await.unwrap(), DiscoveryEvent::Discovered(n) if n.id().as_str() == "b")
    );
    assert!(matches!(rx.recv().await.unwrap(), DiscoveryEvent::Error(_)));

    tx.send(Err(DiscoveryError::Source {
        source_name: "pushing".into(),
        message: "watch failed".into(),
    }))
    .unwrap();
    assert!(
        matches!(rx.recv().await.unwrap(), DiscoveryEvent::Error(e) if e.to_string().contains("watch failed"))
    );
    assert_eq!(
        ids(&discovery.nodes()),
        ["a", "b"],
        "kept after a pushed error"
    );

    // The periodic pass re-applies the last pushed snapshot (retrying c)
    // without polling the source.
    validator.refuse.lock().unwrap().clear();
    tokio::time::advance(INTERVAL).await;
    assert!(
        matches!(rx.recv().await.unwrap(), DiscoveryEvent::Discovered(n) if n.id().as_str() == "c")
    );
    assert_eq!(source.polls.load(Ordering::SeqCst), 1);

    // When the stream ends, the loop polls instead.
    drop(tx);
    tokio::time::advance(INTERVAL).await;
    assert!(matches!(rx.recv().await.unwrap(), DiscoveryEvent::Lost(n) if n.id().as_str() == "b"));
    assert!(source.polls.load(Ordering::SeqCst) >= 2);
    discovery.stop().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_discovery_ends_its_task() {
    let source = Arc::new(Slow {
        delay: Duration::ZERO,
        running: AtomicUsize::new(0),
        max_running: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    });
    let discovery = ClusterDiscovery::builder(source.clone())
        .validator(AcceptAll)
        .refresh_interval(Duration::from_secs(1))
        .build();
    discovery.start().await.unwrap();
    drop(discovery);
    let before = source.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(source.calls.load(Ordering::SeqCst), before);
}

#[test]
fn debug_output_names_the_source_and_hides_callbacks() {
    let discovery = ClusterDiscovery::builder(Arc::new(StaticSource::new(vec![])))
        .callbacks(DiscoveryCallbacks::new().on_node_lost(|_| {}))
        .build();
    let text = format!("{discovery:?}");
    assert!(text.contains("static"), "{text}");
    let callbacks = format!("{:?}", DiscoveryCallbacks::new().on_node_lost(|_| {}));
    assert!(callbacks.contains("on_node_lost: true"), "{callbacks}");
}
