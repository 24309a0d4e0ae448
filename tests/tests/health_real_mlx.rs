//! cluster-health against a real `mlx_lm.server`: healthy after start;
//! killed → unhealthy → offline with the backoff growing; restarted → back
//! to healthy through the half-open probe. A missing fixture fails (run
//! `cargo xtask setup`).
//!
//! Real processes, real time: the test waits for health events (with
//! generous deadlines), never sleeps to wait for a state change.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_health::{ClusterHealth, HealthError, HealthEvent, HttpHealthChecker};
use cluster_tests::mlx::{MlxFixture, MlxServer};
use cluster_types::{BackoffConfig, HealthConfig, NodeId, NodeSpec, NodeStatus};
use tokio::sync::broadcast::Receiver;

/// Deadline for any one awaited event (a busy 2-core CI machine restarts
/// mlx_lm.server in a few seconds; this leaves a wide margin).
const DEADLINE: Duration = Duration::from_secs(120);

fn fixture() -> MlxFixture {
    match MlxFixture::locate() {
        Ok(fixture) => fixture,
        Err(e) => panic!("{e}"),
    }
}

async fn next_event(rx: &mut Receiver<HealthEvent>, what: &str) -> HealthEvent {
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Ok(event)) => event,
        Ok(Err(e)) => panic!("event stream broke while waiting for {what}: {e}"),
        Err(_) => panic!("no event within {DEADLINE:?} while waiting for {what}"),
    }
}

/// Waits for a status change of `node` to `to`; returns every event seen
/// on the way (including the change).
async fn wait_for_status(
    rx: &mut Receiver<HealthEvent>,
    node: &NodeId,
    to: NodeStatus,
) -> Vec<HealthEvent> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(rx, &format!("{node} -> {to}")).await;
        let done = matches!(&event, HealthEvent::StatusChanged(c) if &c.node == node && c.to == to);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_real_mlx_server_through_kill_and_restart() {
    let fixture = fixture();
    let mut server = MlxServer::start(&fixture).await.unwrap();
    let node = NodeSpec::new("mlx-1", server.base_url());
    let id = node.id.clone();

    // The checker discovery uses lists the tiny model.
    let checker = HttpHealthChecker::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let models = checker.list_models(&node).await.unwrap();
    assert!(
        models.contains(&server.model_id()),
        "{models:?}\nlog:\n{}",
        server.log_tail()
    );

    let config = HealthConfig {
        check_interval: Duration::from_secs(1),
        timeout: Duration::from_millis(800),
        ..HealthConfig::default()
    };
    let backoff = BackoffConfig {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(2),
        multiplier: 2.0,
        jitter: 0.2,
    };
    let health = ClusterHealth::builder()
        .config(config)
        .backoff(backoff)
        .seed(3)
        .build()
        .unwrap();
    let mut rx = health.subscribe();
    health.start([node]).unwrap();

    // Up: healthy after the first check.
    wait_for_status(&mut rx, &id, NodeStatus::Healthy).await;
    assert!(health.is_healthy(&id).unwrap());
    assert!(health.routing_table().get(&id).unwrap().routable);

    // Killed: connection refused → unhealthy → offline, backing off longer
    // at each failed probe.
    server.kill().await.unwrap();
    wait_for_status(&mut rx, &id, NodeStatus::Unhealthy).await;
    let report = health.node_health(&id).unwrap();
    assert!(
        matches!(
            report.last_error.as_deref(),
            Some(HealthError::Network { .. })
        ),
        "{report:?}"
    );
    assert!(!health.routing_table().get(&id).unwrap().routable);
    wait_for_status(&mut rx, &id, NodeStatus::Offline).await;
    let mut delays = vec![health.node_health(&id).unwrap().backoff_delay];
    while delays.len() < 4 {
        if let HealthEvent::CheckCompleted(report) = next_event(&mut rx, "a failed probe").await {
            assert!(
                report.probe,
                "only probes while the breaker is open: {report:?}"
            );
            assert!(report.result.is_err());
            delays.push(health.node_health(&id).unwrap().backoff_delay);
        }
    }
    // 0.4, 0.8, 1.6, 2 s (cap), each ±20 %: strictly growing until the cap.
    assert!(
        delays
            .windows(2)
            .all(|d| d[1] > d[0] || d[1] >= Duration::from_millis(1600)),
        "{delays:?}"
    );
    assert!(delays[3] >= Duration::from_millis(1280), "{delays:?}");

    // Restarted on the same port: the half-open probe closes the breaker
    // (degraded, on probation), consecutive successes make it healthy.
    server.restart().await.unwrap();
    let seen = wait_for_status(&mut rx, &id, NodeStatus::Degraded).await;
    let probe_ok = seen.iter().rev().find_map(|e| match e {
        HealthEvent::CheckCompleted(r) => Some(r.probe && r.is_success()),
        _ => None,
    });
    assert_eq!(
        probe_ok,
        Some(true),
        "the transition follows a successful probe: {seen:?}"
    );
    match seen.last() {
        Some(HealthEvent::StatusChanged(change)) => assert_eq!(change.from, NodeStatus::Offline),
        other => panic!("{other:?}"),
    }
    wait_for_status(&mut rx, &id, NodeStatus::Healthy).await;
    let report = health.node_health(&id).unwrap();
    assert_eq!(report.backoff_delay, Duration::ZERO);
    assert!(report.metrics.consecutive_successes >= 5);

    // Passive outcomes count as well.
    assert!(health.record_success(&id, Duration::from_millis(30)));
    health.stop();
}
