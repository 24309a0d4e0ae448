//! Orchestrator tests: mocked checkers, paused tokio time, no real sleeps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::broadcast::Receiver;

use std::time::Duration;

use cluster_metrics::Clock;
use cluster_types::{ClusterStatus, NodeId, NodeSpec, NodeStatus};
use parking_lot::Mutex;

use super::*;
use crate::tracker::ProbeSlot;

mod breaker;
use crate::{HealthChecker, HealthError, MockHealthChecker, TokioClock};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Fail,
    Overload(Option<u64>),
    Loading,
}

/// Per-node scripted outcomes for a mockall checker, and a log of calls.
#[derive(Clone, Default)]
struct Script {
    outcomes: Arc<Mutex<HashMap<String, Outcome>>>,
    calls: Arc<Mutex<Vec<(String, tokio::time::Instant)>>>,
}

impl Script {
    fn set(&self, node: &str, outcome: Outcome) {
        self.outcomes.lock().insert(node.to_owned(), outcome);
    }

    fn calls_of(&self, node: &str) -> Vec<tokio::time::Instant> {
        self.calls
            .lock()
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, at)| *at)
            .collect()
    }

    fn checker(&self) -> Arc<dyn HealthChecker> {
        let script = self.clone();
        let mut mock = MockHealthChecker::new();
        mock.expect_check().returning(move |spec: &NodeSpec| {
            let name = spec.id.to_string();
            script
                .calls
                .lock()
                .push((name.clone(), tokio::time::Instant::now()));
            let outcome = script
                .outcomes
                .lock()
                .get(&name)
                .copied()
                .unwrap_or(Outcome::Ok);
            match outcome {
                Outcome::Ok => Ok(Duration::from_millis(12)),
                Outcome::Fail => Err(HealthError::network(
                    spec.id.clone(),
                    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
                )),
                Outcome::Overload(secs) => Err(HealthError::Overloaded {
                    node: spec.id.clone(),
                    code: 429,
                    retry_after: secs.map(Duration::from_secs),
                }),
                Outcome::Loading => Err(HealthError::Loading {
                    node: spec.id.clone(),
                }),
            }
        });
        Arc::new(mock)
    }
}

fn builder(script: &Script) -> ClusterHealthBuilder {
    ClusterHealth::builder().checker(script.checker()).seed(7)
}

fn spec(id: &str) -> NodeSpec {
    NodeSpec::new(id, format!("http://{id}.invalid:8080"))
}

fn id(s: &str) -> NodeId {
    NodeId::from(s)
}

/// Waits (in paused time: lets the runtime jump ahead) for the first event
/// matching `pred`.
async fn wait_for(
    rx: &mut Receiver<HealthEvent>,
    pred: impl Fn(&HealthEvent) -> bool,
) -> HealthEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no matching event within an hour of virtual time")
            .expect("event channel closed or lagged");
        if pred(&event) {
            return event;
        }
    }
}

fn is_change(node: &str, to: NodeStatus) -> impl Fn(&HealthEvent) -> bool {
    let node = node.to_owned();
    move |e| matches!(e, HealthEvent::StatusChanged(c) if c.node.as_str() == node && c.to == to)
}

fn is_probe(node: &str) -> impl Fn(&HealthEvent) -> bool {
    let node = node.to_owned();
    move |e| matches!(e, HealthEvent::CheckCompleted(r) if r.node.as_str() == node && r.probe)
}

#[tokio::test(start_paused = true)]
async fn start_checks_every_node_on_its_own_phase() {
    let script = Script::default();
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&checks);
    let health = builder(&script)
        .on_health_check(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let mut rx = health.subscribe();
    let t0 = tokio::time::Instant::now();
    health.start(["a", "b", "c"].map(spec)).unwrap();
    assert!(health.is_running());
    for node in ["a", "b", "c"] {
        assert_eq!(health.status(&id(node)).unwrap(), NodeStatus::Initializing);
    }
    let mut healthy = 0;
    while healthy < 3 {
        if let HealthEvent::StatusChanged(c) =
            wait_for(&mut rx, |e| matches!(e, HealthEvent::StatusChanged(_))).await
        {
            assert_eq!(
                (c.from, c.to),
                (NodeStatus::Initializing, NodeStatus::Healthy)
            );
            assert_eq!(c.metrics.total_samples, 1);
            healthy += 1;
        }
    }
    for node in ["a", "b", "c"] {
        assert!(health.is_healthy(&id(node)).unwrap());
        let first = script.calls_of(node)[0];
        assert!(
            first - t0 < Duration::from_secs(5),
            "first check within one interval"
        );
    }
    let firsts: std::collections::BTreeSet<_> = ["a", "b", "c"]
        .iter()
        .map(|n| script.calls_of(n)[0])
        .collect();
    assert_eq!(firsts.len(), 3, "each node on its own phase");
    assert!(checks.load(Ordering::SeqCst) >= 3);
    assert_eq!(health.cluster_status(), ClusterStatus::Healthy);
    let all = health.all_node_health();
    assert_eq!(all.len(), 3);
    assert!(
        all.values()
            .all(|r| r.status == NodeStatus::Healthy && r.last_check.is_some())
    );

    // Subsequent checks follow the interval ±20 %.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = script.calls_of("a");
    assert!(calls.len() >= 10, "{}", calls.len());
    for pair in calls.windows(2) {
        let gap = (pair[1] - pair[0]).as_secs_f64();
        assert!((4.0..=6.0).contains(&gap), "gap {gap}");
    }
}

#[tokio::test(start_paused = true)]
async fn start_twice_is_an_error_and_stop_keeps_state() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    assert!(matches!(
        health.start([spec("b")]),
        Err(HealthError::AlreadyRunning)
    ));
    assert_eq!(
        health.node_ids(),
        vec![id("a")],
        "a refused start adds nothing"
    );
    wait_for(&mut rx, is_change("a", NodeStatus::Healthy)).await;
    health.stop();
    assert!(!health.is_running());
    let calls = script.calls_of("a").len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(script.calls_of("a").len(), calls, "no checks after stop");
    assert!(health.is_healthy(&id("a")).unwrap(), "state kept");
    health.stop(); // idempotent
    health.start([]).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(script.calls_of("a").len() > calls, "restarted");
}

#[test]
fn start_needs_a_runtime() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    assert!(matches!(
        health.start([spec("a")]),
        Err(HealthError::NoRuntime)
    ));
}

#[tokio::test(start_paused = true)]
async fn unknown_nodes_are_errors_where_the_seeds_throw_and_ignored_where_they_ignore() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    let ghost = id("ghost");
    for err in [
        health.is_healthy(&ghost).unwrap_err(),
        health.status(&ghost).unwrap_err(),
        health.node_health(&ghost).map(|_| ()).unwrap_err(),
        health.reset_node(&ghost).unwrap_err(),
        health.try_acquire_probe(&ghost).map(|_| ()).unwrap_err(),
    ] {
        match err {
            HealthError::UnknownNode { node } => assert_eq!(node, ghost),
            other => panic!("expected UnknownNode, got {other:?}"),
        }
    }
    assert!(!health.record_success(&ghost, Duration::from_millis(5)));
    assert!(!health.record_failure(
        &ghost,
        HealthError::Loading {
            node: ghost.clone()
        }
    ));
    assert!(!health.record_overload(&ghost, None));
    assert!(!health.remove_node(&ghost));
    assert!(health.routing_view(&ghost).is_none());
    assert!(health.all_node_health().is_empty());
    assert_eq!(health.cluster_status(), ClusterStatus::Offline);
}

#[derive(Debug)]
struct Hanging;

#[async_trait]
impl HealthChecker for Hanging {
    async fn check(&self, _node: &NodeSpec) -> Result<Duration, HealthError> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_is_cancelled_at_the_timeout() {
    let health = ClusterHealth::builder()
        .checker(Arc::new(Hanging))
        .seed(1)
        .build()
        .unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    let HealthEvent::CheckCompleted(report) =
        wait_for(&mut rx, |e| matches!(e, HealthEvent::CheckCompleted(_))).await
    else {
        unreachable!()
    };
    match report.result.as_ref().map_err(|e| &**e) {
        Err(HealthError::Timeout { node, timeout }) => {
            assert_eq!(node.as_str(), "a");
            assert_eq!(*timeout, Duration::from_secs(2));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    wait_for(&mut rx, is_change("a", NodeStatus::Unhealthy)).await;
}

#[tokio::test(start_paused = true)]
async fn panicking_callbacks_never_stop_the_checker() {
    let script = Script::default();
    script.set("a", Outcome::Fail);
    let health = builder(&script)
        .on_status_change(|_| panic!("status callback bug"))
        .on_health_check(|_| panic!("check callback bug"))
        .build()
        .unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    wait_for(&mut rx, is_change("a", NodeStatus::Unhealthy)).await;
    wait_for(&mut rx, is_change("a", NodeStatus::Offline)).await;
    script.set("a", Outcome::Ok);
    wait_for(&mut rx, is_change("a", NodeStatus::Healthy)).await;
    // Passive calls that trigger the panicking callback return normally too.
    for _ in 0..10 {
        health.record_failure(
            &id("a"),
            HealthError::network(id("a"), std::io::Error::other("x")),
        );
    }
    assert!(!health.is_healthy(&id("a")).unwrap());
}

#[tokio::test(start_paused = true)]
async fn callbacks_may_call_back_in_and_see_events_in_order() {
    let script = Script::default();
    let cell: Arc<OnceLock<Arc<ClusterHealth>>> = Arc::new(OnceLock::new());
    let seen: Arc<Mutex<Vec<(NodeStatus, NodeStatus, NodeStatus)>>> = Arc::default();
    let (c2, s2) = (Arc::clone(&cell), Arc::clone(&seen));
    let health = Arc::new(
        builder(&script)
            .on_status_change(move |change| {
                let health = c2.get().expect("set before start");
                let now = health.status(&change.node).unwrap();
                s2.lock().push((change.from, change.to, now));
                // Re-entrant: causes more events while this one is dispatched.
                if change.to == NodeStatus::Healthy {
                    for _ in 0..3 {
                        health.record_failure(
                            &change.node,
                            HealthError::network(change.node.clone(), std::io::Error::other("x")),
                        );
                    }
                }
            })
            .build()
            .unwrap(),
    );
    cell.set(Arc::clone(&health)).unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    wait_for(&mut rx, is_change("a", NodeStatus::Unhealthy)).await;
    let seen = seen.lock().clone();
    use NodeStatus::*;
    assert_eq!(seen[0].0, Initializing);
    assert_eq!(seen[0].1, Healthy);
    // Healthy -> Degraded (rate 1/2) -> Unhealthy (1/3), in order.
    assert_eq!(seen[1].0, Healthy);
    assert_eq!(seen[1].1, Degraded);
    assert_eq!(seen[2].0, Degraded);
    assert_eq!(seen[2].1, Unhealthy);
    health.stop();
}

#[tokio::test(start_paused = true)]
async fn nodes_come_and_go_while_running() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    wait_for(&mut rx, is_change("a", NodeStatus::Healthy)).await;

    // A node added while running is checked at once.
    let added_at = tokio::time::Instant::now();
    assert!(health.add_node(spec("b")));
    wait_for(
        &mut rx,
        |e| matches!(e, HealthEvent::NodeAdded { node } if node.as_str() == "b"),
    )
    .await;
    wait_for(&mut rx, is_change("b", NodeStatus::Healthy)).await;
    assert_eq!(script.calls_of("b")[0], added_at);

    // Same spec again: not new, health kept.
    assert!(!health.add_node(spec("b")));
    assert!(health.is_healthy(&id("b")).unwrap());
    // Weight change: kept. URL change: another server, back to initializing.
    let mut heavier = spec("b");
    heavier.weight = 3;
    assert!(!health.add_node(heavier));
    assert!(health.is_healthy(&id("b")).unwrap());
    assert_eq!(health.node_spec(&id("b")).unwrap().weight, 3);
    assert!(!health.add_node(NodeSpec::new("b", "http://elsewhere.invalid:9000")));
    wait_for(&mut rx, is_change("b", NodeStatus::Initializing)).await;
    wait_for(&mut rx, is_change("b", NodeStatus::Healthy)).await;

    // Removed: no more checks, an event, unknown afterwards.
    assert!(health.remove_node(&id("b")));
    wait_for(
        &mut rx,
        |e| matches!(e, HealthEvent::NodeRemoved { node } if node.as_str() == "b"),
    )
    .await;
    let calls = script.calls_of("b").len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(script.calls_of("b").len(), calls);
    assert!(health.status(&id("b")).is_err());
    assert!(health.routing_table().get(&id("b")).is_none());
    assert!(!health.remove_node(&id("b")));

    // sync_nodes: add c, remove a.
    health.sync_nodes([spec("c")]);
    assert_eq!(health.node_ids(), vec![id("c")]);
    wait_for(&mut rx, is_change("c", NodeStatus::Healthy)).await;
}

#[tokio::test(start_paused = true)]
async fn loading_is_initializing_not_failure() {
    let script = Script::default();
    script.set("a", Outcome::Loading);
    let health = builder(&script).build().unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(script.calls_of("a").len() >= 10);
    assert_eq!(health.status(&id("a")).unwrap(), NodeStatus::Initializing);
    script.set("a", Outcome::Ok);
    wait_for(&mut rx, is_change("a", NodeStatus::Healthy)).await;
    script.set("a", Outcome::Loading);
    wait_for(&mut rx, is_change("a", NodeStatus::Initializing)).await;
    assert!(!health.routing_table().get(&id("a")).unwrap().routable);
}

#[tokio::test(start_paused = true)]
async fn routing_table_is_rebuilt_only_when_a_view_changes() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    health.add_node(spec("a"));
    health.add_node(spec("b"));
    let t1 = health.routing_table();
    assert_eq!(t1.len(), 2);
    assert!(Arc::ptr_eq(&t1, &health.routing_table()));
    health.record_success(&id("a"), Duration::from_millis(3));
    let t2 = health.routing_table();
    assert!(t2.version() > t1.version());
    assert_eq!(t2.get(&id("a")).unwrap().status, NodeStatus::Healthy);
    // A success on a healthy node changes nothing the router sees.
    health.record_success(&id("a"), Duration::from_millis(3));
    assert!(Arc::ptr_eq(&t2, &health.routing_table()));
    health.record_failure(
        &id("a"),
        HealthError::Overloaded {
            node: id("a"),
            code: 503,
            retry_after: Some(Duration::from_secs(4)),
        },
    );
    let t3 = health.routing_table();
    assert!(t3.get(&id("a")).unwrap().is_saturated(TokioClock.now()));
    assert_eq!(
        t3.get(&id("a")).unwrap().status,
        NodeStatus::Healthy,
        "overload is not failure"
    );
    assert!(!t3.is_empty());
    assert_eq!(t3.iter().count(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_orchestrator_stops_its_tasks() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    wait_for(&mut rx, is_change("a", NodeStatus::Healthy)).await;
    drop(health);
    let calls = script.calls_of("a").len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(script.calls_of("a").len(), calls);
}

#[tokio::test(start_paused = true)]
async fn reports_convert_to_the_published_node_health() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    health.add_node(spec("a"));
    let a = id("a");
    health.record_success(&a, Duration::from_millis(40));
    for _ in 0..3 {
        health.record_failure(
            &a,
            HealthError::network(a.clone(), std::io::Error::other("x")),
        );
    }
    let report = health.node_health(&a).unwrap();
    let now = TokioClock.now();
    let published = report.to_node_health(now, 1_000_000);
    assert_eq!(published.total_samples, 4);
    assert_eq!(published.consecutive_failures, 3);
    assert_eq!(published.avg_latency_ms, Some(40.0));
    assert!((published.success_rate - 0.25).abs() < 1e-9);
    let next = published.next_probe_unix_ms.unwrap();
    let delay = u64::try_from(report.backoff_delay.as_millis()).unwrap();
    assert_eq!(next, 1_000_000 + delay);
    assert_eq!(published.last_check_unix_ms, None, "no active check yet");
    assert!(health.reset_node(&a).is_ok());
    assert_eq!(health.status(&a).unwrap(), NodeStatus::Initializing);
}

#[tokio::test(start_paused = true)]
async fn event_stream_wrapper_yields_events() {
    use tokio_stream::StreamExt;
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    let mut events = health.events();
    health.add_node(spec("a"));
    let first = events.next().await.unwrap().unwrap();
    assert!(matches!(first, HealthEvent::NodeAdded { .. }));
}
