//! The `cluster-sim` binary: help, workload determinism, node and fleet
//! processes.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use cluster_sim::SimNodeConfig;
use cluster_sim::fleet::{FleetConfig, ProcessFleet};
use cluster_sim::workload::Trace;

const EXE: &str = env!("CARGO_BIN_EXE_cluster-sim");

#[test]
fn help_explains_every_subcommand() {
    for sub in ["node", "fleet", "workload", "replay", "bench", "simulate"] {
        let out = Command::new(EXE).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: cluster-sim"), "{sub}: {text}");
    }
    let out = Command::new(EXE)
        .arg("replay")
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--trace",
        "--target",
        "--time-scale",
        "--concurrency",
        "--rate",
        "--pacing",
        "--summary-out",
    ] {
        assert!(text.contains(option), "{option}");
    }
}

#[test]
fn workload_is_reproducible_from_the_command_line() {
    let args = [
        "workload",
        "--sessions",
        "5",
        "--seed",
        "9",
        "--turns-max",
        "5",
        "--out",
        "-",
    ];
    let a = Command::new(EXE).args(args).output().unwrap();
    let b = Command::new(EXE).args(args).output().unwrap();
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    let trace = Trace::read_jsonl(a.stdout.as_slice(), "<stdout>").unwrap();
    assert_eq!(trace.session_count(), 5);
    assert_eq!(trace.header.seed, 9);
}

#[test]
fn bad_faults_json_is_reported() {
    let out = Command::new(EXE)
        .args(["node", "--faults", "{\"error_rate\": \"x\"}"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--faults"));
}

#[tokio::test]
async fn fleet_as_processes() {
    let config = FleetConfig::heterogeneous(
        2,
        &SimNodeConfig {
            time_scale: 1000.0,
            ..SimNodeConfig::default()
        },
        &[1.0, 0.5],
        &[10, 4],
    );
    let mut fleet = ProcessFleet::spawn(Path::new(EXE), &config).await.unwrap();
    assert_eq!(fleet.nodes().len(), 2);
    assert_eq!(fleet.nodes()[1].id, "sim-1");
    let client = reqwest::Client::new();
    for url in fleet.urls() {
        let info: serde_json::Value = client
            .get(format!("{url}/get_server_info"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(info["prompt_cache_size"] == 10 || info["prompt_cache_size"] == 4);
    }
    let url = fleet.urls()[0].clone();
    assert!(fleet.kill(0).await);
    assert!(client.get(format!("{url}/health")).send().await.is_err());
    fleet.shutdown().await;
}
