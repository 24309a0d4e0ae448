//! The gateway end to end over a real `Cluster` (discovery, health checks,
//! routing) with simulated mlx_lm.server nodes: an agentic workload, the
//! real OpenAI Python SDK, `curl -N`, a node crashing mid-stream, the
//! Prometheus exposition checked by promtool, and the dashboard (charts,
//! decisions, nodes) rendered by headless Chromium.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use cluster_sim::fleet::{Fleet, FleetConfig};
use cluster_sim::replay::{ReplayConfig, replay};
use cluster_sim::workload::WorkloadConfig;
use cluster_sim::{SimNode, SimNodeConfig};
use cluster_types::LoadBalanceStrategy;
use gateway_support::{
    GatewayUnderTest, artifacts_dir, assert_ends_with_upstream_error, client, config,
    openai_sdk_through, program, read_until_content, wait_until,
};
use serde_json::{Value, json};

const SCALE: f64 = 50.0;

async fn fleet(n: usize, time_scale: f64) -> Fleet {
    let node = SimNodeConfig {
        time_scale,
        ..SimNodeConfig::default()
    };
    Fleet::start(FleetConfig::uniform(n, &node)).await.unwrap()
}

fn nodes_of(fleet: &Fleet) -> Vec<(&'static str, String)> {
    const IDS: [&str; 8] = [
        "sim-0", "sim-1", "sim-2", "sim-3", "sim-4", "sim-5", "sim-6", "sim-7",
    ];
    fleet
        .urls()
        .into_iter()
        .enumerate()
        .map(|(i, u)| (IDS[i], u))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentic_workload_through_the_gateway_hits_the_node_caches() {
    let fleet = fleet(3, SCALE).await;
    let gw =
        GatewayUnderTest::start(config(&nodes_of(&fleet), LoadBalanceStrategy::CacheAware)).await;
    gw.wait_all_routable().await;
    let trace = WorkloadConfig {
        sessions: 6,
        turns_min: 3,
        turns_max: 5,
        ..WorkloadConfig::default()
    }
    .generate()
    .unwrap();
    let report = replay(
        &trace,
        &ReplayConfig {
            targets: vec![gw.url.clone()],
            time_scale: SCALE,
            ..ReplayConfig::default()
        },
    )
    .await
    .unwrap();
    let s = &report.summary;
    assert_eq!(s.errors, 0, "{:?}", s.error_kinds);
    assert_eq!(s.requests, trace.requests.len());
    // Later turns re-send their prefix: most prompt tokens come from caches.
    assert!(
        s.cache_hit_ratio > 0.5,
        "cache hit ratio {}",
        s.cache_hit_ratio
    );
    // The gateway saw the usage the nodes reported.
    let state = gw.cluster.status();
    assert!(state.metrics.cached_tokens_total > 0, "{:?}", state.metrics);
    assert_eq!(state.metrics.failures_total, 0);
    gw.stop().await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_streams_and_not_through_the_gateway() {
    let fleet = fleet(2, 1000.0).await;
    let gw =
        GatewayUnderTest::start(config(&nodes_of(&fleet), LoadBalanceStrategy::CacheAware)).await;
    gw.wait_all_routable().await;
    let model = fleet.nodes()[0].config().model_id.clone();
    let result = openai_sdk_through(&gw, &model, String::new).await;
    assert_eq!(result["models"], json!([model]));
    gw.stop().await;
    fleet.shutdown().await;
}

/// A node whose stream the test holds open: the first event goes out at
/// once, the rest only when the test says.
async fn held_stream_node() -> (String, Arc<tokio::sync::Notify>) {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = Arc::clone(&release);
    let app = axum::Router::new()
        .route(
            "/v1/models",
            axum::routing::get(|| async {
                axum::Json(json!({"object":"list","data":[{"id":"held","object":"model"}]}))
            }),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let release = Arc::clone(&r);
                async move {
                    let stream = async_stream(release);
                    axum::response::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(axum::body::Body::from_stream(stream))
                        .unwrap()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, release)
}

fn async_stream(
    release: Arc<tokio::sync::Notify>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(0u8, move |step| {
        let release = Arc::clone(&release);
        async move {
            match step {
                0 => Some((
                    Ok(Bytes::from_static(
                        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"first\"}}]}\n\n",
                    )),
                    1,
                )),
                1 => {
                    release.notified().await;
                    Some((
                        Ok(Bytes::from_static(
                            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"last\"}}]}\n\ndata: [DONE]\n\n",
                        )),
                        2,
                    ))
                }
                _ => None,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_sse_chunks_before_the_response_ends() {
    let (node_url, release) = held_stream_node().await;
    let gw = GatewayUnderTest::start(config(
        &[("held", node_url)],
        LoadBalanceStrategy::CacheAware,
    ))
    .await;
    gw.wait_all_routable().await;
    let curl = program("curl", "curl");
    let url = format!("{}/chat/completions", gw.v1());
    let mut child = tokio::task::spawn_blocking(move || {
        Command::new(curl)
            .args([
                "-sS",
                "-N",
                "--noproxy",
                "*",
                "-H",
                "content-type: application/json",
                "-d",
            ])
            .arg(r#"{"model":"held","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
            .arg(url)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first, rest, still_running) = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        // The node still holds its stream: curl has not seen the end.
        let still_running = child.try_wait().unwrap().is_none();
        (first, (reader, child), still_running)
    })
    .await
    .unwrap();
    assert!(first.contains("\"first\""), "{first}");
    assert!(
        still_running,
        "curl finished before the node released its stream"
    );
    release.notify_one();
    let (mut reader, mut child) = rest;
    let tail = tokio::task::spawn_blocking(move || {
        let mut tail = String::new();
        reader.read_to_string(&mut tail).unwrap();
        assert!(child.wait().unwrap().success());
        tail
    })
    .await
    .unwrap();
    assert!(tail.contains("\"last\""), "{tail}");
    assert!(tail.trim_end().ends_with("data: [DONE]"), "{tail}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_crashing_mid_stream_ends_the_stream_with_an_error_event() {
    // Real time, slow decode: the stream is long enough to crash it midway.
    let node = SimNode::start(SimNodeConfig {
        time_scale: 1.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let gw = GatewayUnderTest::start(config(
        &[("sim-0", node.base_url())],
        LoadBalanceStrategy::CacheAware,
    ))
    .await;
    gw.wait_all_routable().await;
    let mut response = client()
        .post(format!("{}/chat/completions", gw.v1()))
        .json(&json!({
            "model": node.config().model_id,
            "stream": true,
            "max_tokens": 100_000,
            "messages": [{"role": "user", "content": "write a long story"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    read_until_content(&mut response, String::new).await;
    node.crash().await;
    assert_ends_with_upstream_error(&mut response, Duration::from_secs(30), "sim-0").await;
    gw.stop().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let fleet = fleet(2, 1000.0).await;
    let gw =
        GatewayUnderTest::start(config(&nodes_of(&fleet), LoadBalanceStrategy::CacheAware)).await;
    gw.wait_all_routable().await;
    let model = fleet.nodes()[0].config().model_id.clone();
    let metrics = gw.metrics_after_traffic(&model).await;
    assert!(metrics.contains("mlx_cluster_gateway_responses_total{api=\"chat\",status=\"2xx\"}"));
    assert!(metrics.contains("mlx_cluster_node_requests_total"));
    let promtool = program("promtool", "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Prometheus asks for OpenMetrics and gets it.
    let om = client()
        .get(format!("{}/metrics", gw.url))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        om.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(om.text().await.unwrap().ends_with("# EOF\n"));
    gw.stop().await;
    fleet.shutdown().await;
}

/// The completion tokens the nodes report, streamed or not, reach
/// `/metrics` (per node) and the status JSON (per node and in total).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_tokens_reach_metrics_and_status() {
    let fleet = fleet(2, 1000.0).await;
    let gw =
        GatewayUnderTest::start(config(&nodes_of(&fleet), LoadBalanceStrategy::CacheAware)).await;
    gw.wait_all_routable().await;
    let model = fleet.nodes()[0].config().model_id.clone();
    let mut expected = 0;
    for (i, stream) in [false, true, false, true].into_iter().enumerate() {
        let r = client()
            .post(format!("{}/chat/completions", gw.v1()))
            .json(
                &json!({"model": model, "stream": stream, "max_tokens": 3 + i,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": format!("question {i}")}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        let usage = if stream {
            body.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .find(|v| v["usage"].is_object())
                .unwrap()["usage"]
                .clone()
        } else {
            serde_json::from_str::<Value>(&body).unwrap()["usage"].clone()
        };
        expected += usage["completion_tokens"].as_u64().unwrap();
    }
    assert!(expected > 0);
    // Guards finish once the gateway has polled each body to its end.
    gateway_support::wait_until("4 successes", Duration::from_secs(10), || {
        gw.cluster.status().metrics.successes_total == 4
    })
    .await;
    let metrics = client()
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exposed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("mlx_cluster_node_completion_tokens_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(exposed, expected, "{metrics}");
    let status: Value = client()
        .get(format!("{}/cluster/status", gw.v1()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["metrics"]["completion_tokens_total"], expected);
    let per_node: u64 = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metrics"]["completion_tokens_total"].as_u64().unwrap())
        .sum();
    assert_eq!(per_node, expected, "{status}");
    gw.stop().await;
    fleet.shutdown().await;
}

/// The `<svg data-chart="NAME">…</svg>` element of a rendered page.
fn chart<'a>(html: &'a str, name: &str) -> &'a str {
    let start = html
        .find(&format!("data-chart=\"{name}\""))
        .unwrap_or_else(|| panic!("no chart {name}"));
    let end = html[start..].find("</svg>").unwrap() + start;
    &html[start..end]
}

/// The `data-points` of each drawn series of a chart, and the distinct y
/// coordinates of its paths.
fn series_of(svg: &str) -> (Vec<usize>, usize) {
    let mut points = Vec::new();
    let mut ys = std::collections::BTreeSet::new();
    for path in svg.split("<path ").skip(1) {
        let attr = |name: &str| {
            let from = path.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            &path[from..from + path[from..].find('"').unwrap()]
        };
        assert_eq!(attr("class"), "series");
        points.push(attr("data-points").parse::<usize>().unwrap());
        for xy in attr("d").split(['M', 'L']).filter(|p| !p.is_empty()) {
            ys.insert(xy.split(',').nth(1).unwrap().to_owned());
        }
    }
    (points, ys.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_charts_decisions_and_nodes_in_headless_chromium() {
    let fleet = fleet(3, 1000.0).await;
    // A fourth node, stopped during the test: a status change marker.
    let doomed = SimNode::start(SimNodeConfig {
        time_scale: 1000.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let mut nodes = nodes_of(&fleet);
    nodes.push(("sim-3", doomed.base_url()));
    let mut cfg = config(&nodes, LoadBalanceStrategy::CacheAware);
    cfg.observability.sample_interval = Duration::from_millis(250);
    let gw = GatewayUnderTest::start(cfg).await;
    gw.wait_all_routable().await;
    let model = fleet.nodes()[0].config().model_id.clone();

    // A short workload: four conversations at once, each with its own
    // system prompt, until the series holds a few intervals with requests.
    let system = "You are a careful coding agent. Answer briefly. ".repeat(80);
    let series_has_traffic = || {
        gw.gateway
            .timeseries()
            .samples()
            .iter()
            .filter(|s| s.ttft_p50_ms.is_some() && s.requests_per_second.unwrap_or(0.0) > 0.0)
            .count()
            >= 4
    };
    let mut turn = 0;
    while !series_has_traffic() {
        assert!(
            turn < 500,
            "no traffic in the time series after {turn} turns"
        );
        let requests = (0..4).map(|conversation| {
            let mut messages = vec![json!({"role": "system", "content": format!("Project {conversation}. {system}")})];
            messages.extend((0..=turn).map(|t| {
                json!({"role": "user", "content": format!("conversation {conversation}, step {t}")})
            }));
            client()
                .post(format!("{}/chat/completions", gw.v1()))
                .json(&json!({"model": model, "max_tokens": 4, "stream": conversation % 2 == 0, "messages": messages}))
                .send()
        });
        for r in futures::future::join_all(requests).await {
            let r = r.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
        turn += 1;
    }
    doomed.shutdown().await;
    wait_until(
        "sim-3's status change in the series",
        Duration::from_secs(30),
        || {
            gw.gateway
                .timeseries()
                .status_changes()
                .iter()
                .any(|c| c.node == "sim-3" && c.to != Some(cluster_types::NodeStatus::Healthy))
        },
    )
    .await;

    let chromium = program("chromium", "chromium");
    let profile = std::env::temp_dir().join(format!("mlx-cluster-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).unwrap();
    let run = |extra: Vec<String>| {
        let mut cmd = tokio::process::Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
            "--virtual-time-budget=5000",
            "--window-size=1280,1180",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("{}/", gw.url))
        .kill_on_drop(true);
        async move { tokio::time::timeout(Duration::from_secs(120), cmd.output()).await }
    };
    let dom = run(vec!["--dump-dom".into()])
        .await
        .expect("chromium finished")
        .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout).into_owned();
    std::fs::write(artifacts_dir().join("dashboard.html"), html.as_bytes()).unwrap();
    let context = || {
        format!(
            "chromium stderr:\n{}\n(DOM in target/artifacts/dashboard.html)",
            String::from_utf8_lossy(&dom.stderr)
        )
    };
    // The node table, with the cache model's fidelity.
    for id in ["sim-0", "sim-1", "sim-2", "sim-3"] {
        assert!(
            html.contains(&format!("data-node-id=\"{id}\"")),
            "node {id}; {}",
            context()
        );
    }
    assert!(html.contains("status-healthy"), "{}", context());
    assert!(
        html.split("class=\"num fidelity\">")
            .skip(1)
            .any(|cell| { cell.split('<').next().is_some_and(|t| t.ends_with(" %")) }),
        "no fidelity figure; {}",
        context()
    );
    // The charts: lines with several points, varying where there was
    // traffic; a line per node; the stopped node's marker.
    let (rps, rps_levels) = series_of(chart(&html, "rps"));
    assert!(
        rps.len() == 1 && rps[0] >= 4 && rps_levels >= 2,
        "rps {rps:?}; {}",
        context()
    );
    let (ttft, _) = series_of(chart(&html, "ttft"));
    assert!(
        ttft.len() == 2 && ttft.iter().all(|&n| n >= 4),
        "ttft {ttft:?}"
    );
    let (hit, _) = series_of(chart(&html, "hit"));
    assert!(hit.len() == 1 && hit[0] >= 4, "hit {hit:?}");
    let (in_flight, _) = series_of(chart(&html, "inflight"));
    assert_eq!(in_flight.len(), 4, "a line per node");
    let markers: Vec<&str> = chart(&html, "rps")
        .split("<line class=\"marker\"")
        .skip(1)
        .collect();
    assert!(
        markers
            .iter()
            .any(|m| m.contains("data-node=\"sim-3\"") && !m.contains("data-to=\"healthy\"")),
        "no marker for sim-3: {markers:?}"
    );
    // The recent decisions, with their reasons.
    let decisions = html.matches("<tr class=\"decision\"").count();
    assert!(decisions >= 10, "{decisions} decision rows; {}", context());
    assert!(html.contains("data-reason=\"cache-hit\""), "{}", context());

    let shot = artifacts_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = run(vec![format!("--screenshot={}", shot.display())])
        .await
        .expect("chromium finished")
        .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 1000,
        "no screenshot at {}: {}",
        shot.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&profile);
    gw.stop().await;
    fleet.shutdown().await;
}
