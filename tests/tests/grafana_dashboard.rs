//! `deploy/grafana/mlx-cluster.json` cannot drift from the gateway: every
//! metric its queries read is in the real `/metrics` output of a gateway
//! that served traffic (simulated mlx_lm.server nodes, a real `Cluster`),
//! every query parses as PromQL (`promtool check rules`, from the Debian
//! `prometheus` package), and the file is an importable dashboard (a
//! Prometheus data source input, unique panel ids, queries on every panel).
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::collections::BTreeSet;
use std::process::Command;

use cluster_sim::SimNodeConfig;
use cluster_sim::fleet::{Fleet, FleetConfig};
use cluster_types::LoadBalanceStrategy;
use gateway_support::{GatewayUnderTest, config, program};
use serde_json::{Value, json};

const DASHBOARD: &str = include_str!("../../deploy/grafana/mlx-cluster.json");

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every `(panel title, expr)` of the dashboard's queries and variables.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap().to_owned();
            out.push((title, t["expr"].as_str().unwrap().to_owned()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let name = format!("variable {}", v["name"].as_str().unwrap());
            out.push((name, q.to_owned()));
        }
    }
    out
}

/// The `mlx_cluster_*` names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mlx_cluster_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Sample names (`name` of `name{labels} value`) of a text exposition.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Grafana's variables replaced by what Prometheus itself would accept.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$node", ".*")
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() {
    let d: Value = serde_json::from_str(DASHBOARD).unwrap();
    assert_eq!(d["uid"], "mlx-cluster");
    assert_eq!(
        d["__inputs"][0],
        json!({"name": "DS_PROMETHEUS", "label": "Prometheus",
            "description": "The Prometheus that scrapes the gateway's /metrics",
            "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"})
    );
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let grid = &p["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title} is wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        }
    }
    // What the issue asks the dashboard to show.
    let all: String = queries(&d).into_iter().map(|(_, e)| e).collect();
    for needed in [
        "mlx_cluster_node_requests_total",
        "mlx_cluster_node_time_to_first_token_seconds_bucket",
        "mlx_cluster_node_cached_tokens_total",
        "mlx_cluster_routing_decisions_total",
        "mlx_cluster_node_status",
        "mlx_cluster_node_cache_prediction_error_blocks_bucket",
    ] {
        assert!(all.contains(needed), "no panel reads {needed}");
    }
}

#[test]
fn every_query_parses_as_promql() {
    let d: Value = serde_json::from_str(DASHBOARD).unwrap();
    // One recording rule per query: `promtool check rules` parses each.
    let mut rules = String::from("groups:\n  - name: grafana\n    rules:\n");
    for (i, (_, expr)) in queries(&d).iter().enumerate() {
        if expr.starts_with("label_values(") {
            continue; // Grafana's own function, not PromQL
        }
        let quoted = serde_json::to_string(&as_promql(expr)).unwrap();
        rules.push_str(&format!(
            "      - record: grafana:q{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("grafana-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new(program("promtool", "prometheus"))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}\n--- rules ---\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_reads_is_in_the_gateways_metrics() {
    let node = SimNodeConfig {
        time_scale: 1000.0,
        ..SimNodeConfig::default()
    };
    let fleet = Fleet::start(FleetConfig::uniform(2, &node)).await.unwrap();
    let nodes: Vec<_> = ["sim-0", "sim-1"].into_iter().zip(fleet.urls()).collect();
    let gw = GatewayUnderTest::start(config(&nodes, LoadBalanceStrategy::CacheAware)).await;
    gw.wait_all_routable().await;
    let model = fleet.nodes()[0].config().model_id.clone();
    let exposition = gw.metrics_after_traffic(&model).await;
    gw.stop().await;
    let exported = sample_names(&exposition);

    let d: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut missing = Vec::new();
    let mut read = BTreeSet::new();
    for (title, expr) in queries(&d) {
        for name in metric_names(&expr) {
            if !exported.contains(&name) {
                missing.push(format!("{title}: {name}"));
            }
            read.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics the gateway does not export:\n{}\n--- /metrics ---\n{exposition}",
        missing.join("\n")
    );
    assert!(
        read.len() >= 15,
        "only {} metrics read: {read:?}",
        read.len()
    );
    // The fidelity panel selects the bucket at one block by its label.
    assert!(
        exposition.contains("mlx_cluster_node_cache_prediction_error_blocks_bucket{le=\"1.0\""),
        "the fidelity panel's le=\"1.0\" is not a bucket:\n{exposition}"
    );
}
