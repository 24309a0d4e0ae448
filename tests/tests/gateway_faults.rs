//! Misbehaving nodes behind the gateway over a real `Cluster`: two simulated
//! nodes, one of which misbehaves on the wire (never answers, answers junk,
//! garbage chunked encoding, headers then nothing, an endless stream), or
//! storms 429s (with and without `Retry-After`), or flaps. A well-behaved
//! client keeps sending requests throughout. The node must be demoted (or,
//! when overloaded, kept out of rotation) and the client must see no error
//! that a retry before the first byte could have avoided. Figures (time to
//! demotion, errors, p99) come from `cargo xtask chaos`. A real
//! mlx_lm.server is stopped (`SIGSTOP`), resumed, killed and restarted.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::time::{Duration, Instant};

use cluster_sim::fleet::{Fleet, FleetConfig};
use cluster_sim::hostile::{LatencyReport, WellBehavedClient};
use cluster_sim::{FaultConfig, SimNodeConfig, WireFault};
use cluster_types::{LoadBalanceStrategy, NodeStatus};
use gateway_support::{GatewayUnderTest, config, wait_until};

const BODY: &str =
    r#"{"model":"default_model","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#;

struct Setup {
    fleet: Fleet,
    gw: GatewayUnderTest,
}

async fn setup() -> Setup {
    let node = SimNodeConfig {
        time_scale: 200.0,
        ..SimNodeConfig::default()
    };
    let fleet = Fleet::start(FleetConfig::uniform(2, &node)).await.unwrap();
    let nodes: Vec<(&str, String)> = vec![
        ("good", fleet.urls()[0].clone()),
        ("bad", fleet.urls()[1].clone()),
    ];
    let mut config = config(&nodes, LoadBalanceStrategy::RoundRobin);
    config.gateway.first_byte_timeout = Duration::from_secs(1);
    config.gateway.idle_timeout = Duration::from_secs(1);
    config.gateway.request_timeout = Some(Duration::from_secs(2));
    let gw = GatewayUnderTest::start(config).await;
    gw.wait_all_routable().await;
    Setup { fleet, gw }
}

fn good_client(gw: &GatewayUnderTest) -> WellBehavedClient {
    WellBehavedClient::start(
        format!("{}/chat/completions", gw.v1()),
        BODY.to_owned(),
        None,
        Duration::from_millis(20),
    )
}

/// Sets `faults` on the bad node, runs the client until the bad node is out
/// of rotation and one second more; the client's report and the time to
/// demotion.
async fn demote(s: &Setup, faults: FaultConfig) -> (LatencyReport, Duration) {
    let client = good_client(&s.gw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.fleet.nodes()[1]
        .set_faults_and_reconnect(faults)
        .await
        .unwrap();
    let took = wait_until("the bad node demoted", Duration::from_secs(30), || {
        !s.gw.status_of("bad").unwrap().is_routable()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    (client.stop().await, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_faults_are_demoted_and_retried_elsewhere() {
    for fault in [
        WireFault::Silent,
        WireFault::Junk,
        WireFault::GarbageChunked,
        WireFault::HangAfterHeaders,
    ] {
        let s = setup().await;
        let (report, took) = demote(
            &s,
            FaultConfig {
                wire: Some(fault),
                ..FaultConfig::default()
            },
        )
        .await;
        assert!(report.requests > 5, "{fault:?}: {report:?}");
        assert_eq!(
            report.errors, 0,
            "{fault:?}: {report:?} (demoted after {took:?})"
        );
        s.gw.stop().await;
        s.fleet.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_stream_is_cut_by_the_request_timeout_and_demoted() {
    let s = setup().await;
    let (report, took) = demote(
        &s,
        FaultConfig {
            wire: Some(WireFault::EndlessStream),
            ..FaultConfig::default()
        },
    )
    .await;
    // Requests that reached the node before it was demoted end at
    // gateway.request_timeout (2 s) with an error; none after.
    assert!(report.requests > report.errors, "{report:?}");
    assert!(report.errors <= 3, "{report:?} (demoted after {took:?})");
    s.gw.stop().await;
    s.fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_retried_elsewhere_with_and_without_retry_after() {
    for omit_retry_after in [false, true] {
        let s = setup().await;
        let client = good_client(&s.gw);
        s.fleet.nodes()[1]
            .set_faults(FaultConfig {
                overload_rate: 1.0,
                overload_status: 429,
                retry_after_seconds: 5,
                omit_retry_after,
                ..FaultConfig::default()
            })
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let report = client.stop().await;
        assert!(report.requests > 10, "{report:?}");
        assert_eq!(
            report.errors, 0,
            "omit_retry_after {omit_retry_after}: {report:?}"
        );
        // The storming node is kept out of rotation: it sees few of the
        // requests.
        let (good, bad) = (s.gw.requests_of("good"), s.gw.requests_of("bad"));
        assert!(
            good > 3 * bad,
            "omit_retry_after {omit_retry_after}: good {good} bad {bad}"
        );
        s.gw.stop().await;
        s.fleet.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_node_costs_the_client_nothing() {
    let s = setup().await;
    let client = good_client(&s.gw);
    let started = Instant::now();
    // The first refused connection demotes the node (degraded nodes get no
    // traffic while a healthy one is there); failed probes may take it
    // further out. Either way the breaker must react to every crash.
    let mut demotions = 0;
    let mut crashes = 0;
    while started.elapsed() < Duration::from_secs(8) {
        s.fleet.nodes()[1].crash().await;
        crashes += 1;
        let mut demoted = false;
        for _ in 0..50 {
            demoted |= s.gw.status_of("bad") != Some(NodeStatus::Healthy);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        demotions += u32::from(demoted);
        s.fleet.nodes()[1].restart().await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report = client.stop().await;
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(
        demotions + 1 >= crashes,
        "the flapping node was left in rotation: demoted in {demotions} of {crashes} crashes"
    );
    s.gw.stop().await;
    s.fleet.shutdown().await;
}

/// Real mlx_lm.server nodes: one is stopped (`SIGSTOP`: the kernel still
/// accepts its connections, nothing answers), then resumed, then killed and
/// restarted. The client sees no error throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mlx_server_that_stops_answering_or_restarts() {
    let fixture = cluster_tests::mlx::MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let good = cluster_tests::mlx::MlxServer::start(&fixture)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut bad = cluster_tests::mlx::MlxServer::start(&fixture)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let nodes: Vec<(&str, String)> = vec![("good", good.base_url()), ("bad", bad.base_url())];
    let mut config = config(&nodes, LoadBalanceStrategy::RoundRobin);
    config.gateway.first_byte_timeout = Duration::from_secs(3);
    config.gateway.idle_timeout = Duration::from_secs(3);
    let gw = GatewayUnderTest::start(config).await;
    gw.wait_all_routable().await;
    let signal = |sig: &str, pid: u32| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let client = good_client(&gw);
    let pid = bad.pid().unwrap();
    signal("-STOP", pid);
    wait_until(
        "the stopped server demoted",
        Duration::from_secs(30),
        || !gw.status_of("bad").unwrap().is_routable(),
    )
    .await;
    signal("-CONT", pid);
    wait_until("the resumed server back", Duration::from_secs(60), || {
        gw.status_of("bad").unwrap().is_routable()
    })
    .await;
    bad.kill().await.unwrap();
    wait_until("the killed server demoted", Duration::from_secs(30), || {
        !gw.status_of("bad").unwrap().is_routable()
    })
    .await;
    bad.restart().await.unwrap();
    wait_until("the restarted server back", Duration::from_secs(60), || {
        gw.status_of("bad").unwrap().is_routable()
    })
    .await;
    let report = client.stop().await;
    assert!(report.requests > 10, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    gw.stop().await;
}
