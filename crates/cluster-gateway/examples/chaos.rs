//! `cargo xtask chaos`: hostile clients against the release `mlx-cluster`
//! binary, each while a well-behaved client keeps sending requests.
//!
//! Two simulated mlx_lm.server nodes (cluster-sim, in this process, time
//! scale 20) sit behind the gateway (a child process, header- and
//! body-read timeouts of 2 s for the run). First the well-behaved client
//! runs alone (the baseline), then with each attack of
//! [`cluster_sim::hostile`]:
//!
//! | case | attack |
//! |---|---|
//! | `slow-headers` | 1000 connections sending a header one byte per 200 ms |
//! | `slow-bodies` | 1000 requests sending their body one byte per 200 ms |
//! | `idle-5000` | 5000 connections that send nothing (own gateway, default limits) |
//! | `connection-limit` | 5000 connections that send nothing (own gateway, `max_connections = 1000`) |
//! | `oversized-headers` | 500 requests with 100 KB of headers |
//! | `body-33mb` | 33 MB bodies, declared (20) and chunked (3) |
//! | `malformed` | 300 bodies with invalid UTF-8 or JSON nested 100,000 deep |
//! | `mid-stream-disconnect` | 200 clients that start a long stream and vanish |
//!
//! Then misbehaving nodes (`--only nodes` runs just these), each on a fresh
//! pair of simulated nodes behind a fresh gateway (round-robin, so the bad
//! node is tried; first-byte and idle timeouts 2 s, request timeout 5 s):
//! `node-silent` (accepts, never answers), `node-junk-10mb`,
//! `node-garbage-chunked`, `node-hang-after-headers`,
//! `node-endless-stream`, `node-429-retry-after` and
//! `node-429-no-retry-after` (every completion answered 429), and
//! `node-flapping` (down 2 s, up 2 s). The bad node must leave rotation (the
//! wire faults) and the client must see no error (the endless stream may
//! cost the requests it took before its demotion).
//!
//! A client case passes when the well-behaved client saw no error (and,
//! with `--strict-latency`, its p99 stayed within 2× its baseline or 5 ms
//! of it, whichever is larger), the attackers got the expected
//! answers, and the gateway's open file descriptors and runtime tasks came
//! back to where they were. A Markdown table goes to stdout and
//! `target/reliability/chaos/report.md`.
//!
//! ```text
//! cargo build --release -p cluster-gateway --bin mlx-cluster --example chaos
//! target/release/examples/chaos [--seconds 5] [--only CASE]
//! ```
#![allow(clippy::unwrap_used)]

mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use cluster_sim::hostile::{
    LatencyReport, WellBehavedClient, disconnect_mid_stream, idle_connections, post_head,
    raw_request, slow_loris,
};
use cluster_sim::{SimNode, SimNodeConfig};
use support::{GatewayProcess, free_port, out_dir, poll};

/// Options of the chaos run.
#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    about = "Hostile clients against the mlx-cluster gateway"
)]
struct Options {
    /// Seconds the well-behaved client runs alone and at least during each
    /// attack.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Run only the cases whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Fail a case whose well-behaved p99 is above 2× its baseline (or 5 ms
    /// above it). Off by default: on a shared machine other processes move
    /// tail latency more than the attacks do; the figure is reported
    /// either way.
    #[arg(long)]
    strict_latency: bool,
}

const GOOD_BODY: &str = r#"{"model":"default_model","max_tokens":4,"messages":[{"role":"user","content":"Hello from the well-behaved client."}]}"#;
const LONG_STREAM: &str = r#"{"model":"default_model","stream":true,"max_tokens":4000,"messages":[{"role":"user","content":"Write a very long story."}]}"#;

/// One row of the report.
struct Case {
    name: &'static str,
    client: LatencyReport,
    attackers: String,
    fds: (usize, usize),
    tasks: (f64, f64),
    problems: Vec<String>,
}

fn main() -> ExitCode {
    let options = Options::parse();
    STRICT_LATENCY.store(options.strict_latency, std::sync::atomic::Ordering::Relaxed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(run(&options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options) -> Result<bool, String> {
    // Enough slots that hundreds of streams start at once: the nodes are
    // not what is measured.
    let node = |id: &str| {
        let mut config = SimNodeConfig {
            id: id.into(),
            time_scale: 20.0,
            ..SimNodeConfig::default()
        };
        config.model.max_concurrency = 1024;
        config
    };
    let a = SimNode::start(node("a")).await.map_err(|e| e.to_string())?;
    let b = SimNode::start(node("b")).await.map_err(|e| e.to_string())?;
    let port = free_port();
    let config = format!(
        r#"
[discovery]
mode = "static"
nodes = [{{ id = "a", url = "{}" }}, {{ id = "b", url = "{}" }}]
[health]
check_interval = "1s"
timeout = "500ms"
[gateway]
listen = "127.0.0.1:{port}"
header_read_timeout = "2s"
body_read_timeout = "2s"
"#,
        a.base_url(),
        b.base_url()
    );
    let dir = out_dir("chaos");
    let gw = GatewayProcess::start(&dir, &config, port).await?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = format!("{}/v1/chat/completions", gw.base);
    let seconds = Duration::from_secs(options.seconds);
    let wanted = |name: &str| options.only.as_deref().is_none_or(|o| name.contains(o));

    // Warm-up, then the baseline.
    let warm = WellBehavedClient::start(url.clone(), GOOD_BODY.into(), None, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(1)).await;
    warm.stop().await;
    let baseline = {
        let good = WellBehavedClient::start(url.clone(), GOOD_BODY.into(), None, Duration::ZERO);
        tokio::time::sleep(seconds).await;
        good.stop().await
    };
    eprintln!("chaos: baseline {baseline:?}");
    let mut cases = Vec::new();

    macro_rules! case {
        ($name:expr, $attack:expr) => {
            if wanted($name) {
                eprintln!("chaos: {} ...", $name);
                let fds_before = gw.fds();
                let tasks_before = gw
                    .gauge("mlx_cluster_gateway_runtime_alive_tasks")
                    .await
                    .unwrap_or(0.0);
                let good =
                    WellBehavedClient::start(url.clone(), GOOD_BODY.into(), None, Duration::ZERO);
                // The good client is connected before the attack starts.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let started = Instant::now();
                let (attackers, mut problems): (String, Vec<String>) = $attack;
                let rest = seconds.saturating_sub(started.elapsed());
                tokio::time::sleep(rest).await;
                let client = good.stop().await;
                // Everything the attack held must be released.
                let back = poll(Duration::from_secs(30), async || {
                    let fds = gw.fds();
                    let tasks = gw.gauge("mlx_cluster_gateway_runtime_alive_tasks").await?;
                    (fds <= fds_before + LEAK_SLACK && tasks <= tasks_before + LEAK_SLACK as f64)
                        .then_some((fds, tasks))
                })
                .await;
                let (fds_after, tasks_after) = back.unwrap_or_else(|| {
                    problems.push("file descriptors or tasks did not return to baseline".into());
                    (gw.fds(), 0.0)
                });
                let limit = (baseline.p99 * 2).max(baseline.p99 + Duration::from_millis(5));
                if client.errors > 0 {
                    problems.push(format!(
                        "well-behaved client errors: {:?}",
                        client.error_samples
                    ));
                }
                if client.p99 > limit {
                    problems.push(format!(
                        "well-behaved p99 {:?} above {:?}",
                        client.p99, limit
                    ));
                }
                eprintln!("chaos: {} done: {attackers}; {problems:?}", $name);
                cases.push(Case {
                    name: $name,
                    client,
                    attackers,
                    fds: (fds_before, fds_after),
                    tasks: (tasks_before, tasks_after),
                    problems,
                });
            }
        };
    }

    case!("slow-headers", {
        let r = slow_loris(
            addr,
            1000,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ".to_vec(),
            b"abcdefgh",
            Duration::from_millis(200),
            Duration::from_secs(15),
        )
        .await;
        let mut p = Vec::new();
        if r.closed_by_server != 1000 {
            p.push(format!(
                "{} of 1000 closed by the gateway",
                r.closed_by_server
            ));
        }
        (
            format!(
                "{}/{} closed by the gateway, the last after {:.1} s",
                r.closed_by_server,
                r.connections,
                r.slowest_close.as_secs_f64()
            ),
            p,
        )
    });

    case!("slow-bodies", {
        let mut prefix = post_head("/v1/chat/completions", 4096, "");
        prefix.extend_from_slice(b"{\"messages\": [");
        let r = slow_loris(
            addr,
            1000,
            prefix,
            b" ",
            Duration::from_millis(200),
            Duration::from_secs(15),
        )
        .await;
        // A 408 can be lost to a TCP reset when the client writes its
        // next byte as the gateway closes (the gateway does not linger):
        // such a connection is closed without a status.
        let got_408 = r.statuses.iter().filter(|&&s| s == 408).count();
        let other = r.statuses.iter().filter(|&&s| s != 408 && s != 0).count();
        let mut p = Vec::new();
        if r.closed_by_server != 1000 || other > 0 {
            p.push(format!(
                "{} of 1000 closed by the gateway, {other} with a status other than 408",
                r.closed_by_server
            ));
        }
        (
            format!(
                "{}/{} closed, {got_408} of them with a 408 (the others reset under it), the last after {:.1} s",
                r.closed_by_server,
                r.connections,
                r.slowest_close.as_secs_f64()
            ),
            p,
        )
    });

    case!("oversized-headers", {
        let header = format!("x-big: {}\r\n", "a".repeat(100 * 1024));
        let head = post_head("/v1/chat/completions", GOOD_BODY.len(), &header);
        let statuses = many(500, 20, move || {
            let head = head.clone();
            async move {
                raw_request(addr, &head, GOOD_BODY.as_bytes(), Duration::from_secs(20))
                    .await
                    .map_or(0, |a| a.status)
            }
        })
        .await;
        expect_all("oversized-headers", &statuses, 431)
    });

    case!("body-33mb", {
        let mut statuses = many(20, 4, move || async move {
            raw_request(
                addr,
                &post_head("/v1/chat/completions", 33 * 1024 * 1024, ""),
                &[],
                Duration::from_secs(20),
            )
            .await
            .map_or(0, |a| a.status)
        })
        .await;
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut chunked = Vec::new();
        for _ in 0..33 {
            chunked.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
            chunked.extend_from_slice(&vec![b' '; 1 << 20]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        for _ in 0..3 {
            statuses.push(
                raw_request(addr, head, &chunked, Duration::from_secs(20))
                    .await
                    .map_or(0, |a| a.status),
            );
        }
        expect_all("body-33mb", &statuses, 413)
    });

    case!("malformed", {
        let statuses = many(300, 10, move || async move {
            let deep = format!(
                "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":{}1{}}}]}}",
                "[".repeat(50_000),
                "]".repeat(50_000)
            )
            .into_bytes();
            let utf8 =
                b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"
                    .to_vec();
            let mut last = 0;
            for body in [deep, utf8] {
                last = raw_request(
                    addr,
                    &post_head("/v1/chat/completions", body.len(), ""),
                    &body,
                    Duration::from_secs(20),
                )
                .await
                .map_or(0, |a| a.status);
                if last != 400 {
                    break;
                }
            }
            last
        })
        .await;
        expect_all("malformed", &statuses, 400)
    });

    case!("mid-stream-disconnect", {
        let cancelled_before = cluster_totals(&gw.base).await.map_or(0, |t| t.1);
        let started = disconnect_mid_stream(
            addr,
            200,
            post_head("/v1/chat/completions", LONG_STREAM.len(), ""),
            LONG_STREAM.as_bytes().to_vec(),
            Duration::from_secs(30),
        )
        .await;
        // The gateway cancels every upstream stream: the facade counts them
        // cancelled and nothing stays in flight but the good client.
        let drained = poll(Duration::from_secs(20), async || {
            let (in_flight, cancelled) = cluster_totals(&gw.base).await?;
            (in_flight <= 1 && cancelled >= cancelled_before + 200).then_some(cancelled)
        })
        .await;
        let mut p = Vec::new();
        if started != 200 {
            p.push(format!("{started} of 200 streams started"));
        }
        if drained.is_none() {
            p.push("upstream streams still in flight".to_owned());
        }
        (
            format!(
                "{started}/200 streams started then dropped; {} counted cancelled upstream",
                drained.map_or(0, |c| c - cancelled_before)
            ),
            p,
        )
    });

    for (name, max, n) in [
        ("idle-5000", 8192usize, 5000usize),
        ("connection-limit", 1000, 5000),
    ] {
        if wanted(name) {
            cases.push(idle_case(name, max, n, &a, &b, &baseline, seconds).await?);
        }
    }
    let mut report = render(&baseline, &cases, options.seconds);
    drop(gw);
    a.shutdown().await;
    b.shutdown().await;
    let mut ok = cases.iter().all(|c| c.problems.is_empty());
    if wanted("nodes")
        || options
            .only
            .as_deref()
            .is_some_and(|o| o.starts_with("node-"))
    {
        let nodes = node_cases(options).await?;
        ok &= nodes.iter().all(|c| c.problems.is_empty());
        report.push('\n');
        report.push_str(&render_nodes(&nodes));
    }
    print!("{report}");
    std::fs::write(dir.join("report.md"), &report).map_err(|e| e.to_string())?;
    Ok(ok)
}

/// One misbehaving-node case.
struct NodeCase {
    name: &'static str,
    baseline: LatencyReport,
    client: LatencyReport,
    demoted_after: Option<Duration>,
    bad_requests: u64,
    problems: Vec<String>,
}

/// Requests in flight on all nodes and requests cancelled so far, from
/// the gateway's `/v1/cluster/status`.
async fn cluster_totals(base: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = support::client()
        .get(format!("{base}/v1/cluster/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let nodes = v["nodes"].as_array()?;
    Some((
        nodes
            .iter()
            .map(|n| n["metrics"]["in_flight"].as_u64().unwrap_or(0))
            .sum(),
        nodes
            .iter()
            .map(|n| n["metrics"]["cancelled_total"].as_u64().unwrap_or(0))
            .sum(),
    ))
}

/// The status of node `id` in the gateway's `/v1/cluster/status`, and its
/// request count.
async fn node_state(base: &str, id: &str) -> Option<(String, u64)> {
    let v: serde_json::Value = support::client()
        .get(format!("{base}/v1/cluster/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let node = v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["spec"]["id"] == id)?;
    Some((
        node["status"].as_str()?.to_owned(),
        node["metrics"]["requests_total"].as_u64().unwrap_or(0),
    ))
}

/// Each case on a fresh pair of simulated nodes (round-robin, so the bad
/// one is tried) behind a fresh gateway: the well-behaved client's
/// baseline, then the fault on node `bad`; time until `bad` leaves
/// rotation, and what the client saw meanwhile and after.
async fn node_cases(options: &Options) -> Result<Vec<NodeCase>, String> {
    use cluster_sim::{FaultConfig, WireFault};
    let wire = |w| FaultConfig {
        wire: Some(w),
        ..FaultConfig::default()
    };
    let storm = |omit_retry_after| FaultConfig {
        overload_rate: 1.0,
        overload_status: 429,
        retry_after_seconds: 5,
        omit_retry_after,
        ..FaultConfig::default()
    };
    let cases: Vec<(&'static str, Option<FaultConfig>, bool)> = vec![
        ("node-silent", Some(wire(WireFault::Silent)), true),
        ("node-junk-10mb", Some(wire(WireFault::Junk)), true),
        (
            "node-garbage-chunked",
            Some(wire(WireFault::GarbageChunked)),
            true,
        ),
        (
            "node-hang-after-headers",
            Some(wire(WireFault::HangAfterHeaders)),
            true,
        ),
        (
            "node-endless-stream",
            Some(wire(WireFault::EndlessStream)),
            true,
        ),
        ("node-429-retry-after", Some(storm(false)), false),
        ("node-429-no-retry-after", Some(storm(true)), false),
        ("node-flapping", None, false),
    ];
    let seconds = Duration::from_secs(options.seconds);
    let mut out = Vec::new();
    for (name, faults, must_demote) in cases {
        if options
            .only
            .as_deref()
            .is_some_and(|o| !name.contains(o) && o != "nodes")
        {
            continue;
        }
        eprintln!("chaos: {name} ...");
        let node = |id: &str| SimNodeConfig {
            id: id.into(),
            time_scale: 20.0,
            ..SimNodeConfig::default()
        };
        let good = SimNode::start(node("good"))
            .await
            .map_err(|e| e.to_string())?;
        let bad = SimNode::start(node("bad"))
            .await
            .map_err(|e| e.to_string())?;
        let port = free_port();
        let config = format!(
            r#"
[discovery]
mode = "static"
nodes = [{{ id = "good", url = "{}" }}, {{ id = "bad", url = "{}" }}]
[health]
check_interval = "1s"
timeout = "500ms"
[routing]
strategy = "round-robin"
retry_delay = "10ms"
[gateway]
listen = "127.0.0.1:{port}"
first_byte_timeout = "2s"
idle_timeout = "2s"
request_timeout = "5s"
"#,
            good.base_url(),
            bad.base_url()
        );
        let gw = GatewayProcess::start(&out_dir(&format!("chaos/{name}")), &config, port).await?;
        let url = format!("{}/v1/chat/completions", gw.base);
        let baseline = {
            let c = WellBehavedClient::start(url.clone(), GOOD_BODY.into(), None, Duration::ZERO);
            tokio::time::sleep(seconds).await;
            c.stop().await
        };
        let before = node_state(&gw.base, "bad").await.map_or(0, |s| s.1);
        let client = WellBehavedClient::start(url.clone(), GOOD_BODY.into(), None, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let mut demoted_after = None;
        match faults {
            Some(faults) => {
                bad.set_faults_and_reconnect(faults)
                    .await
                    .map_err(|e| e.to_string())?;
                while started.elapsed() < (seconds * 3).max(Duration::from_secs(10)) {
                    if demoted_after.is_none()
                        && let Some((status, _)) = node_state(&gw.base, "bad").await
                        && !matches!(status.as_str(), "healthy" | "degraded")
                    {
                        demoted_after = Some(started.elapsed());
                        if must_demote {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                tokio::time::sleep(seconds).await;
            }
            None => {
                // Down for 2 s, up for 2 s, for 4 × seconds.
                while started.elapsed() < seconds * 4 {
                    bad.crash().await;
                    let down = Instant::now();
                    while down.elapsed() < Duration::from_secs(2) {
                        if demoted_after.is_none()
                            && let Some((status, _)) = node_state(&gw.base, "bad").await
                            && !matches!(status.as_str(), "healthy" | "degraded")
                        {
                            demoted_after = Some(down.elapsed());
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    bad.restart().await.map_err(|e| e.to_string())?;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        let client = client.stop().await;
        let after = node_state(&gw.base, "bad").await.map_or(0, |s| s.1);
        let mut problems = Vec::new();
        if must_demote && demoted_after.is_none() {
            problems.push("the bad node was never demoted".to_owned());
        }
        // An endless stream commits before it can be judged: the requests
        // it took before demotion end at gateway.request_timeout.
        let allowed = if name == "node-endless-stream" { 3 } else { 0 };
        if client.errors > allowed {
            problems.push(format!("client errors: {:?}", client.error_samples));
        }
        out.push(NodeCase {
            name,
            baseline,
            client,
            demoted_after,
            bad_requests: after.saturating_sub(before),
            problems,
        });
        drop(gw);
        good.shutdown().await;
        bad.shutdown().await;
    }
    Ok(out)
}

fn render_nodes(cases: &[NodeCase]) -> String {
    let mut out = String::from(
        "| case | out of rotation after | requests sent to the bad node | client requests | client errors | client p99 ms (baseline) | result |\n|---|---|---|---|---|---|---|\n",
    );
    for c in cases {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} ({}) | {} |",
            c.name,
            c.demoted_after.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.2} s", d.as_secs_f64())
            ),
            c.bad_requests,
            c.client.requests,
            c.client.errors,
            ms(c.client.p99),
            ms(c.baseline.p99),
            if c.problems.is_empty() {
                "pass".to_owned()
            } else {
                format!("FAIL: {}", c.problems.join("; "))
            }
        );
    }
    out
}

/// `n` idle connections against a gateway of its own with default timeouts
/// and `max_connections = max`, held for `seconds` while the well-behaved
/// client (connected first) keeps going.
async fn idle_case(
    name: &'static str,
    max: usize,
    n: usize,
    a: &SimNode,
    b: &SimNode,
    baseline: &LatencyReport,
    seconds: Duration,
) -> Result<Case, String> {
    eprintln!("chaos: {name} ...");
    let port = free_port();
    let config = format!(
        "[discovery]\nmode = \"static\"\nnodes = [{{ id = \"a\", url = \"{}\" }}, {{ id = \"b\", url = \"{}\" }}]\n[gateway]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = {max}\n",
        a.base_url(),
        b.base_url()
    );
    let gw = GatewayProcess::start(&out_dir(&format!("chaos/{name}")), &config, port).await?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = format!("{}/v1/chat/completions", gw.base);
    let fds_before = gw.fds();
    let tasks_before = gw
        .gauge("mlx_cluster_gateway_runtime_alive_tasks")
        .await
        .unwrap_or(0.0);
    let good = WellBehavedClient::start(url, GOOD_BODY.into(), None, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flood = idle_connections(addr, n, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    // At the limit, the scrape itself is refused.
    let open_at_gateway = gw
        .gauge("mlx_cluster_gateway_connections_open")
        .await
        .map_or_else(
            || "a full gateway".to_owned(),
            |v| format!("{v} open at the gateway"),
        );
    tokio::time::sleep(seconds).await;
    let clear = flood
        .refused
        .iter()
        .filter(|r| r.status == 503 && r.body_text().contains("connection_limit"))
        .count();
    let (held, closed) = (flood.open.len(), flood.closed);
    drop(flood);
    let client = good.stop().await;
    let mut problems = Vec::new();
    // The good client holds one of the `max` slots.
    let expect_held = n.min(max - 1);
    if held != expect_held || clear != n - expect_held || closed != 0 {
        problems.push(format!(
            "held {held} (expected {expect_held}), refused with 503 {clear}, closed {closed}"
        ));
    }
    let back = poll(Duration::from_secs(10), async || {
        let fds = gw.fds();
        let tasks = gw.gauge("mlx_cluster_gateway_runtime_alive_tasks").await?;
        (fds <= fds_before + LEAK_SLACK && tasks <= tasks_before + LEAK_SLACK as f64)
            .then_some((fds, tasks))
    })
    .await;
    let (fds_after, tasks_after) = match back {
        Some(v) => v,
        None => {
            let tasks = gw
                .gauge("mlx_cluster_gateway_runtime_alive_tasks")
                .await
                .unwrap_or(-1.0);
            // Reported, not failed: the main gateway's cases check the same
            // code for leaks, and so does `cargo test --test hostile`.
            eprintln!(
                "chaos: {name}: fds {} and tasks {tasks} not back to {fds_before} / {tasks_before} within 10 s",
                gw.fds()
            );
            (gw.fds(), tasks)
        }
    };
    judge(&client, baseline, &mut problems);
    Ok(Case {
        name,
        client,
        attackers: format!(
            "{held} held open ({open_at_gateway}, limit {max}), {clear} refused with 503 connection_limit"
        ),
        fds: (fds_before, fds_after),
        tasks: (tasks_before, tasks_after),
        problems,
    })
}

/// Pooled node connections opened under load (one fd and one task each)
/// may outlive an attack; more than this many extra is a leak.
const LEAK_SLACK: usize = 4;

/// The well-behaved client's verdict: no error, p99 within 2× (or 5 ms) of
/// the baseline.
fn judge(client: &LatencyReport, baseline: &LatencyReport, problems: &mut Vec<String>) {
    let limit = (baseline.p99 * 2).max(baseline.p99 + Duration::from_millis(5));
    if client.errors > 0 {
        problems.push(format!(
            "well-behaved client errors: {:?}",
            client.error_samples
        ));
    }
    if client.p99 > limit && STRICT_LATENCY.load(std::sync::atomic::Ordering::Relaxed) {
        problems.push(format!(
            "well-behaved p99 {:?} above {:?}",
            client.p99, limit
        ));
    }
}

/// `--strict-latency`.
static STRICT_LATENCY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `n` copies of `job`, at most `parallel` at once; their results.
async fn many<F, Fut>(n: usize, parallel: usize, job: F) -> Vec<u16>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if set.len() >= parallel
            && let Some(done) = set.join_next().await
        {
            out.push(done.unwrap_or(0));
        }
        set.spawn(job());
    }
    while let Some(done) = set.join_next().await {
        out.push(done.unwrap_or(0));
    }
    out
}

fn expect_all(name: &str, statuses: &[u16], want: u16) -> (String, Vec<String>) {
    let ok = statuses.iter().filter(|&&s| s == want).count();
    let mut p = Vec::new();
    if ok != statuses.len() {
        let mut other: Vec<u16> = statuses.iter().copied().filter(|&s| s != want).collect();
        other.sort_unstable();
        other.dedup();
        p.push(format!(
            "{name}: {} not {want} (got {other:?})",
            statuses.len() - ok
        ));
    }
    (format!("{ok}/{} answered {want}", statuses.len()), p)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn render(baseline: &LatencyReport, cases: &[Case], seconds: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Well-behaved client alone: {} requests, p50 {} ms, p99 {} ms, errors {} ({seconds} s).\n",
        baseline.requests,
        ms(baseline.p50),
        ms(baseline.p99),
        baseline.errors
    );
    out.push_str("| case | what the attackers got | well-behaved requests | errors | p50 ms | p99 ms | p99 / baseline | gateway fds before → after | runtime tasks before → after | result |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for c in cases {
        let ratio = c.client.p99.as_secs_f64() / baseline.p99.as_secs_f64().max(1e-9);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.2}× | {} → {} | {} → {} | {} |",
            c.name,
            c.attackers,
            c.client.requests,
            c.client.errors,
            ms(c.client.p50),
            ms(c.client.p99),
            ratio,
            c.fds.0,
            c.fds.1,
            c.tasks.0,
            c.tasks.1,
            if c.problems.is_empty() {
                "pass".to_owned()
            } else {
                format!("FAIL: {}", c.problems.join("; "))
            }
        );
    }
    out
}
