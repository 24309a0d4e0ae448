//! Replica agreement: do gateway replicas that share nothing route alike?
//!
//! Three gateways (real `Cluster` + `Gateway`, the same configuration,
//! cache-aware routing) behind a round-robin nginx, in front of simulated
//! `mlx_lm.server` nodes, replaying the agentic workload
//! (`cluster_sim::workload`). Before each request goes through nginx, each
//! replica is asked which node it would choose for it (a `select` whose
//! guard is finished as cancelled: the cache model's prediction is rolled
//! back), then the request is sent and the node that served it read from
//! `x-mlx-cluster-node`. Reported: the share of requests for which all three
//! replicas chose the same node, the share served by the node the majority
//! chose, and the cluster's cache hit ratio (cached / prompt tokens, from
//! the nodes' usage) against a single gateway on a fresh, identical fleet.
//!
//! ```sh
//! cargo run --release -p cluster-tests --example replica_agreement -- [SESSIONS] [NODES]
//! ```
//! (nginx from Debian's `nginx-light`, as `cargo xtask setup` installs it.)
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use cluster_facade::{Cluster, RequestOutcome, RouterParams};
use cluster_gateway::Gateway;
use cluster_gateway::{ApiKind, ParsedRequest};
use cluster_sim::SimNodeConfig;
use cluster_sim::fleet::{Fleet, FleetConfig};
use cluster_sim::workload::{Expander, Trace, WorkloadConfig};
use cluster_types::{ClusterConfig, DiscoveryConfig, NodeSpec, StaticDiscovery};
use tokio::sync::Mutex;

const TIME_SCALE: f64 = 20.0;

struct Replica {
    cluster: Cluster,
    url: String,
}

async fn replica(nodes: &[String], consistent: bool) -> Replica {
    let mut config = ClusterConfig {
        discovery: DiscoveryConfig::Static(StaticDiscovery {
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, url)| NodeSpec::new(format!("sim-{i}"), url.clone()))
                .collect(),
            ..StaticDiscovery::default()
        }),
        ..ClusterConfig::default()
    };
    config.health.check_interval = Duration::from_secs(1);
    config.health.timeout = Duration::from_millis(500);
    config.routing.consistent_replicas = consistent;
    // The nodes run TIME_SCALE times faster than real ones: so is the rate
    // assumed before the first measurement, and the window of activity.
    let mut params = RouterParams::from_config(&config);
    params.cost.default_prefill_tokens_per_second *= TIME_SCALE;
    params.cost.active_window = params.cost.active_window.div_f64(TIME_SCALE);
    let cluster = Cluster::builder(config)
        .router_params(params)
        .start()
        .await
        .unwrap();
    let gateway = Gateway::from_cluster(cluster.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = cluster_gateway::serve(listener, gateway, std::future::pending()).await;
    });
    let started = Instant::now();
    while cluster
        .status()
        .nodes
        .iter()
        .any(|n| !n.status.is_routable())
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nodes not routable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Replica { cluster, url }
}

/// nginx round-robin over `replicas`, listening on a free port.
fn nginx(replicas: &[Replica], dir: &std::path::Path) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let servers: String = replicas
        .iter()
        .map(|r| format!("        server {};\n", r.url.trim_start_matches("http://")))
        .collect();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
         client_max_body_size 64m;\n    upstream replicas {{\n{servers}        keepalive 64;\n    }}\n\
         server {{\n        listen 127.0.0.1:{port};\n        location / {{\n            proxy_pass http://replicas;\n\
         proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n            proxy_buffering off;\n\
         proxy_read_timeout 600s;\n        }}\n    }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    (child, format!("http://127.0.0.1:{port}"))
}

#[derive(Default)]
struct Tally {
    requests: u64,
    all_agree: u64,
    served_by_majority: u64,
    errors: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
}

/// Replays `trace` through `front`; when `probes` is not empty, asks each
/// probe which node it would choose before sending.
async fn run(trace: &Trace, front: &str, probes: &[Cluster], block_bytes: u32) -> Tally {
    let expander = Arc::new(Expander::new(&trace.header));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut by_session: HashMap<u32, Vec<_>> = HashMap::new();
    for r in &trace.requests {
        by_session.entry(r.session).or_default().push(r.clone());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (_, turns) in by_session {
        let (expander, tally, client) = (Arc::clone(&expander), Arc::clone(&tally), client.clone());
        let probes = probes.to_vec();
        let front = front.to_owned();
        tasks.push(tokio::spawn(async move {
            for (k, request) in turns.iter().enumerate() {
                let wait = if k == 0 {
                    Duration::from_secs_f64(request.at / TIME_SCALE)
                        .saturating_sub(started.elapsed())
                } else {
                    Duration::from_secs_f64(request.think / TIME_SCALE)
                };
                tokio::time::sleep(wait).await;
                let body = expander.body(request);
                let mut chosen = Vec::new();
                if !probes.is_empty() {
                    let headers = HeaderMap::new();
                    let parsed = ParsedRequest::parse(
                        ApiKind::ChatCompletions,
                        &headers,
                        "x-session-id",
                        &body,
                    )
                    .unwrap();
                    let ctx = parsed.routing_context(block_bytes);
                    for p in &probes {
                        if let Ok(selection) = p.select(&ctx) {
                            chosen.push(selection.decision.node_id.to_string());
                            selection.guard.finish(RequestOutcome::ClientCancelled);
                        }
                    }
                }
                let answer = client
                    .post(format!("{front}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let mut t = tally.lock().await;
                t.requests += 1;
                let Ok(answer) = answer else {
                    t.errors += 1;
                    continue;
                };
                let served = answer
                    .headers()
                    .get("x-mlx-cluster-node")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let ok = answer.status().is_success();
                let json: serde_json::Value = answer.json().await.unwrap_or_default();
                if !ok {
                    t.errors += 1;
                    continue;
                }
                let usage = &json["usage"];
                t.prompt_tokens += usage["prompt_tokens"].as_u64().unwrap_or(0);
                t.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0);
                if chosen.len() == probes.len() && !probes.is_empty() {
                    if chosen.iter().all(|c| *c == chosen[0]) {
                        t.all_agree += 1;
                    }
                    let mut counts: HashMap<&str, usize> = HashMap::new();
                    for c in &chosen {
                        *counts.entry(c.as_str()).or_default() += 1;
                    }
                    let majority = counts.iter().max_by_key(|(_, n)| **n).map(|(c, _)| *c);
                    if majority == Some(served.as_str()) {
                        t.served_by_majority += 1;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(tally).ok().unwrap().into_inner()
}

async fn fleet(nodes: usize) -> Fleet {
    let node = SimNodeConfig {
        time_scale: TIME_SCALE,
        ..SimNodeConfig::default()
    };
    Fleet::start(FleetConfig::uniform(nodes, &node))
        .await
        .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sessions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(24);
    let nodes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let trace = WorkloadConfig {
        sessions,
        stream: false,
        ..WorkloadConfig::default()
    }
    .generate()
    .unwrap();
    let block_bytes = ClusterConfig::default().cache.fingerprint_block_bytes;
    let dir = std::env::temp_dir().join(format!("mlx-replicas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "workload: {} sessions, {} requests; {nodes} simulated nodes (time scale {TIME_SCALE})",
        sessions,
        trace.requests.len()
    );

    // Three replicas behind nginx: with the default routing, then with
    // `routing.consistent_replicas`.
    let mut three = Vec::new();
    for consistent in [false, true] {
        let fleet3 = fleet(nodes).await;
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(replica(&fleet3.urls(), consistent).await);
        }
        let (mut nginx, front) = nginx(&replicas, &dir);
        let probes: Vec<Cluster> = replicas.iter().map(|r| r.cluster.clone()).collect();
        let t0 = Instant::now();
        let tally = run(&trace, &front, &probes, block_bytes).await;
        three.push((consistent, tally, t0.elapsed().as_secs_f64()));
        // SIGTERM, not SIGKILL: the master stops its workers.
        let _ = Command::new("kill")
            .args(["-TERM", &nginx.id().to_string()])
            .status();
        let _ = nginx.wait();
    }

    // One gateway, fresh identical fleet.
    let fleet1 = fleet(nodes).await;
    let single = replica(&fleet1.urls(), false).await;
    let t0 = Instant::now();
    let one = run(&trace, &single.url, &[], block_bytes).await;
    let one_secs = t0.elapsed().as_secs_f64();

    let ratio = |t: &Tally| t.cached_tokens as f64 / t.prompt_tokens.max(1) as f64;
    let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
    println!(
        "| setup | requests | errors | all 3 replicas chose the same node | served by the majority's node | cache hit ratio | wall |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (consistent, t, secs) in &three {
        println!(
            "| 3 replicas behind nginx round-robin{} | {} | {} | {:.1} % | {:.1} % | {:.3} | {:.0} s |",
            if *consistent {
                ", `routing.consistent_replicas`"
            } else {
                ""
            },
            t.requests,
            t.errors,
            pct(t.all_agree, t.requests - t.errors),
            pct(t.served_by_majority, t.requests - t.errors),
            ratio(t),
            secs
        );
    }
    println!(
        "| 1 gateway | {} | {} | — | — | {:.3} | {:.0} s |",
        one.requests,
        one.errors,
        ratio(&one),
        one_secs
    );
    for (consistent, t, _) in &three {
        println!(
            "hit ratio, 3 replicas{} / 1 gateway: {:.3}",
            if *consistent { " (consistent)" } else { "" },
            ratio(t) / ratio(&one).max(1e-9)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
