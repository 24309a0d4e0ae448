//! The "done when": a fleet of 8 nodes and a 200-session trace,
//! replayed directly against the fleet over HTTP at a high time scale.
//!
//! The test asserts completion without errors and a sensible cache hit
//! ratio, never timing; it prints the wall time it took. Observed on the
//! loaded 2-core development machine: 22 s in a debug build at scale 200
//! (hit ratio 0.89); the release binary's `cluster-sim bench --nodes 8
//! --sessions 200 --time-scale 1000` with default sizes takes 3.6 s. A debug
//! build cannot keep up with scale 1000 (every millisecond of CPU is a
//! simulated second), which would inflate the simulated latencies and thrash
//! the caches: see docs/simulation.md.
#![allow(clippy::unwrap_used)]

use cluster_sim::fleet::{Fleet, FleetConfig};
use cluster_sim::replay::{Pacing, ReplayConfig, replay};
use cluster_sim::workload::WorkloadConfig;
use cluster_sim::{SimNode, SimNodeConfig};

const TIME_SCALE: f64 = 200.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_two_hundred_sessions() {
    let base = SimNodeConfig {
        time_scale: TIME_SCALE,
        ..SimNodeConfig::default()
    };
    let fleet = Fleet::start(FleetConfig::heterogeneous(
        8,
        &base,
        &[1.0, 1.0, 0.7],
        &[10, 10, 6],
    ))
    .await
    .unwrap();
    assert_eq!(fleet.len(), 8);
    // Half the default sizes keep a debug build's CPU time per request small
    // enough for the nodes to keep up at this scale (the default sizes are
    // measured with `cluster-sim bench`, see docs/simulation.md).
    let trace = WorkloadConfig {
        sessions: 200,
        seed: 42,
        prompt_tokens_min: 5_000,
        prompt_tokens_max: 15_000,
        first_message_tokens_max: 2_000,
        message_tokens_max: 1_500,
        ..WorkloadConfig::default()
    }
    .generate()
    .unwrap();
    assert_eq!(trace.session_count(), 200);
    let started = std::time::Instant::now();
    let report = replay(
        &trace,
        &ReplayConfig {
            targets: fleet.urls(),
            time_scale: TIME_SCALE,
            pacing: Pacing::Closed,
            ..ReplayConfig::default()
        },
    )
    .await
    .unwrap();
    let wall = started.elapsed();
    let s = &report.summary;
    println!("{}", s.render_text());
    println!("wall time of the 8-node / 200-session replay: {wall:?}");
    assert_eq!(s.requests, trace.requests.len());
    assert_eq!(s.errors, 0, "{:?}", s.error_kinds);
    assert!(
        s.cache_hit_ratio > 0.6,
        "cache hit ratio {}",
        s.cache_hit_ratio
    );
    assert!(s.targets.iter().all(|t| t.requests > 0));
    // The nodes counted the same tokens the client saw.
    let prompt: u64 = fleet.nodes().iter().map(|n| n.totals().prompt_tokens).sum();
    assert_eq!(prompt, s.prompt_tokens);
    let cached: u64 = fleet.nodes().iter().map(|n| n.totals().cached_tokens).sum();
    assert_eq!(cached, s.cached_tokens);
    fleet.shutdown().await;
}

#[tokio::test]
async fn replay_counts_errors_by_kind() {
    let node = SimNode::start(SimNodeConfig {
        time_scale: TIME_SCALE,
        faults: cluster_sim::FaultConfig {
            error_rate: 1.0,
            ..cluster_sim::FaultConfig::default()
        },
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let trace = WorkloadConfig {
        sessions: 3,
        turns_max: 4,
        prompt_tokens_min: 1000,
        prompt_tokens_max: 2000,
        ..WorkloadConfig::default()
    }
    .generate()
    .unwrap();
    let report = replay(
        &trace,
        &ReplayConfig {
            targets: vec![format!("{}/v1", node.base_url())],
            time_scale: TIME_SCALE,
            pacing: Pacing::Open,
            ..ReplayConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.summary.errors, trace.requests.len());
    assert_eq!(
        report.summary.error_kinds.get("http_500"),
        Some(&trace.requests.len())
    );
    assert!(report.summary.ttft.is_none());
}

#[tokio::test]
async fn replay_detects_broken_streams() {
    for (faults, kind) in [
        (
            cluster_sim::FaultConfig {
                garbage_rate: 1.0,
                ..cluster_sim::FaultConfig::default()
            },
            "invalid_json",
        ),
        (
            cluster_sim::FaultConfig {
                close_rate: 1.0,
                ..cluster_sim::FaultConfig::default()
            },
            "body",
        ),
    ] {
        let node = SimNode::start(SimNodeConfig {
            time_scale: TIME_SCALE,
            faults,
            ..SimNodeConfig::default()
        })
        .await
        .unwrap();
        let trace = WorkloadConfig {
            sessions: 2,
            turns_max: 4,
            prompt_tokens_min: 1000,
            prompt_tokens_max: 2000,
            output_tokens_min: 50,
            ..WorkloadConfig::default()
        }
        .generate()
        .unwrap();
        let report = replay(
            &trace,
            &ReplayConfig {
                targets: vec![node.base_url()],
                time_scale: TIME_SCALE,
                ..ReplayConfig::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            report.summary.error_kinds.get(kind),
            Some(&trace.requests.len()),
            "{kind}: {:?}",
            report.summary.error_kinds
        );
    }
}
