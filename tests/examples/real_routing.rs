//! Routing quality on real `mlx_lm.server` nodes, every router in one run.
//!
//! `cargo xtask bench real-routing` builds the gateway and SMG's venv and
//! runs this with the right paths; by hand:
//!
//! ```text
//! cargo run -p cluster-tests --example real_routing -- \
//!     --gateway target/release/mlx-cluster --smg ~/.cache/mlx-cluster/venv-smg-…/bin/smg
//! ```
//!
//! Starts `--nodes` (3) real `mlx_lm.server` processes serving the tiny
//! random-weight model, draws an agentic workload from cluster-sim's
//! generator (24 sessions × 5 turns over 3 shared system prompts, see
//! `cluster_tests::agentic::WorkloadShape`), and replays it with the real
//! OpenAI Python SDK (streamed with usage, the model's own replies appended,
//! think time between turns) through each router: the mlx-cluster gateway
//! with each strategy, SMG `cache_aware`, nginx consistent hashing on the
//! session header, and no router at all (every request to one node: the
//! cache-hit ceiling of the workload). Every node is restarted before each
//! router, so every router starts cold. Routers run in a rotated order in each
//! round so that machine noise spreads over all of them.
//!
//! Variants: `header` (6 sessions at a time, an `x-session-id` header on
//! every request), `no-header` (the same without the header) and `burst`
//! (every session at once, with the header).
//!
//! Prints one table per variant and writes `results.json` and `table.md`
//! under `--work` (default `target/real-routing`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_tests::agentic::{
    RequestRecord, SessionPlan, Summary, WorkloadShape, plan_sessions, run_client,
};
use cluster_tests::mlx::{MlxFixture, MlxServer};
use cluster_tests::routers::{RouterKind, RouterPrograms, start_router};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Variant {
    Header,
    NoHeader,
    Burst,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::NoHeader => "no-header",
            Self::Burst => "burst",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Header, Self::NoHeader, Self::Burst]
            .into_iter()
            .find(|v| v.name() == s)
    }
}

#[derive(Debug)]
struct Args {
    gateway: PathBuf,
    gateway_alt: Option<PathBuf>,
    smg: Option<PathBuf>,
    nginx: PathBuf,
    nodes: usize,
    rounds: usize,
    variants: Vec<Variant>,
    routers: Vec<RouterKind>,
    shape: WorkloadShape,
    concurrency: usize,
    work: PathBuf,
    seed_per_round: bool,
}

fn all_routers() -> Vec<RouterKind> {
    let gw = |s: &str, sticky: bool| RouterKind::Gateway {
        strategy: s.to_owned(),
        sticky,
    };
    vec![
        gw("cache-aware", true),
        gw("cache-score", true),
        gw("round-robin", false),
        gw("least-loaded", false),
        gw("round-robin", true),
        RouterKind::Smg,
        RouterKind::NginxHash,
        RouterKind::SingleNode,
    ]
}

fn router_key(kind: &RouterKind) -> String {
    match kind {
        RouterKind::Gateway { strategy, sticky } if *sticky && strategy == "round-robin" => {
            "round-robin-sticky".to_owned()
        }
        RouterKind::Gateway { strategy, .. } => strategy.clone(),
        RouterKind::GatewayAlt => "alt".to_owned(),
        RouterKind::Smg => "smg".to_owned(),
        RouterKind::NginxHash => "nginx-hash".to_owned(),
        RouterKind::SingleNode => "single".to_owned(),
    }
}

fn usage() -> String {
    let keys: Vec<String> = all_routers().iter().map(router_key).collect();
    format!(
        "real_routing --gateway PATH [--smg PATH] [--nginx PATH] [--nodes 3] [--rounds 2]\n\
         \x20 [--gateway-alt PATH (router `alt`: a second build, cache-aware)]\n\
         \x20 [--variants header,no-header,burst] [--routers {}]\n\
         \x20 [--sessions 24] [--turns 5] [--concurrency 6] [--seed 7] [--seed-per-round]\n\
         \x20 [--work target/real-routing]",
        keys.join(",")
    )
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        gateway: PathBuf::from("target/release/mlx-cluster"),
        gateway_alt: None,
        smg: std::env::var_os("REAL_ROUTING_SMG").map(PathBuf::from),
        nginx: PathBuf::from("/usr/sbin/nginx"),
        nodes: 3,
        rounds: 2,
        variants: vec![Variant::Header, Variant::NoHeader, Variant::Burst],
        routers: all_routers(),
        shape: WorkloadShape::default(),
        concurrency: 6,
        work: PathBuf::from("target/real-routing"),
        seed_per_round: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--seed-per-round" {
            args.seed_per_round = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(usage());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|e| format!("{flag} {v}: {e}\n{}", usage()))
        };
        match flag.as_str() {
            "--gateway" => args.gateway = PathBuf::from(value),
            "--smg" => args.smg = Some(PathBuf::from(value)),
            "--gateway-alt" => args.gateway_alt = Some(PathBuf::from(value)),
            "--nginx" => args.nginx = PathBuf::from(value),
            "--nodes" => args.nodes = number(&value)?.max(1),
            "--rounds" => args.rounds = number(&value)?.max(1),
            "--sessions" => args.shape.sessions = number(&value)?.max(1),
            "--turns" => {
                args.shape.turns = u32::try_from(number(&value)?.max(1)).unwrap_or(u32::MAX);
            }
            "--concurrency" => args.concurrency = number(&value)?.max(1),
            "--seed" => args.shape.seed = number(&value)? as u64,
            "--work" => args.work = PathBuf::from(value),
            "--variants" => {
                args.variants = value
                    .split(',')
                    .map(|v| Variant::parse(v).ok_or_else(|| format!("unknown variant {v}")))
                    .collect::<Result<_, _>>()?;
            }
            "--routers" => {
                let mut known = all_routers();
                known.push(RouterKind::GatewayAlt);
                args.routers = value
                    .split(',')
                    .map(|k| {
                        known
                            .iter()
                            .find(|r| router_key(r) == k)
                            .cloned()
                            .ok_or_else(|| format!("unknown router {k}\n{}", usage()))
                    })
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    if args.routers.contains(&RouterKind::Smg) && args.smg.is_none() {
        return Err(format!("the smg router needs --smg PATH\n{}", usage()));
    }
    Ok(args)
}

/// One router in one round of one variant.
#[derive(Debug, Clone, Serialize)]
struct Run {
    variant: Variant,
    round: usize,
    router: String,
    label: String,
    summary: Summary,
    /// Requests each node served (from its access log).
    per_node: Vec<usize>,
    /// Router process CPU seconds per request.
    cpu_per_request: f64,
    /// The gateway's cache-model fidelity: share of predictions within one
    /// block of the node's report (`None` for other routers).
    within_block: Option<f64>,
}

/// Share of cache predictions within one block, from the gateway's
/// `/metrics` text (sums the `le="1.0"` buckets and the counts over nodes).
fn prediction_fidelity(metrics: &str) -> Option<f64> {
    let family = "mlx_cluster_node_cache_prediction_error_blocks";
    let value = |line: &str| {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut within = 0.0;
    let mut count = 0.0;
    for line in metrics.lines() {
        if line.starts_with(&format!("{family}_bucket")) && line.contains("le=\"1.0\"") {
            within += value(line);
        } else if line.starts_with(&format!("{family}_count")) {
            count += value(line);
        }
    }
    (count > 0.0).then(|| within / count)
}

fn count_completions(log: &Path, from: u64) -> usize {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..])
        .lines()
        .filter(|l| l.contains("\"POST /v1/chat/completions"))
        .count()
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args).await {
        eprintln!("real_routing: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let fixture = MlxFixture::locate().map_err(|e| e.to_string())?;
    let programs = RouterPrograms {
        gateway: args.gateway.clone(),
        gateway_alt: args.gateway_alt.clone(),
        smg: args.smg.clone(),
        nginx: args.nginx.clone(),
    };
    if !programs.gateway.is_file() {
        return Err(format!(
            "no gateway binary at {} (build it: cargo build --release -p cluster-gateway)",
            programs.gateway.display()
        ));
    }
    std::fs::create_dir_all(&args.work).map_err(|e| format!("{}: {e}", args.work.display()))?;
    let mut servers = Vec::new();
    for _ in 0..args.nodes {
        servers.push(
            MlxServer::start(&fixture)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let urls: Vec<String> = servers.iter().map(MlxServer::base_url).collect();
    eprintln!("real_routing: {} nodes at {urls:?}", servers.len());
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        let mut shape = args.shape.clone();
        if args.seed_per_round {
            shape.seed += round as u64;
        }
        let sessions = plan_sessions(&shape).map_err(|e| e.to_string())?;
        for &variant in &args.variants {
            // Rotate the router order each round.
            let mut order = args.routers.clone();
            let n = order.len();
            order.rotate_left((round * (n / args.rounds.max(1)).max(1)) % n.max(1));
            for kind in order {
                let key = router_key(&kind);
                let dir = args.work.join(format!("r{round}-{}-{key}", variant.name()));
                futures_restart(&mut servers).await?;
                let offsets: Vec<u64> = servers.iter().map(|s| log_len(s.log_path())).collect();
                let router = start_router(&kind, &programs, &urls, &dir, Duration::from_secs(60))
                    .await
                    .map_err(|e| e.to_string())?;
                let cpu_before = router.cpu_seconds();
                let plan = SessionPlan {
                    base_url: router.base_url.clone(),
                    model: fixture.model_id(),
                    concurrency: if variant == Variant::Burst {
                        sessions.len()
                    } else {
                        args.concurrency
                    },
                    lockstep: false,
                    session_header: (variant != Variant::NoHeader)
                        .then(|| "x-session-id".to_owned()),
                    timeout_s: 300.0,
                    sessions: sessions.clone(),
                };
                let records = run_client(&fixture.python(), &plan, &dir, Duration::from_secs(3600))
                    .await
                    .map_err(|e| e.to_string())?;
                let cpu = router.cpu_seconds() - cpu_before;
                let mut within_block = None;
                if matches!(kind, RouterKind::Gateway { .. } | RouterKind::GatewayAlt)
                    && let Ok(metrics) = fetch_metrics(&router.base_url).await
                {
                    within_block = prediction_fidelity(&metrics);
                    let _ = std::fs::write(dir.join("metrics.txt"), metrics);
                }
                router.stop().await;
                let per_node: Vec<usize> = servers
                    .iter()
                    .zip(&offsets)
                    .map(|(s, &o)| count_completions(s.log_path(), o))
                    .collect();
                let summary = Summary::of(&records);
                let run = Run {
                    variant,
                    round,
                    router: key,
                    label: kind.label(),
                    cpu_per_request: cpu / summary.requests.max(1) as f64,
                    summary,
                    per_node,
                    within_block,
                };
                eprintln!(
                    "real_routing: round {round} {:<9} {:<34} hit {:.3} ttft p50 {:.2} mean {:.2} p99 {:.2} s  wall {:.0} s  nodes {:?}  errors {}",
                    variant.name(),
                    run.label,
                    run.summary.hit_ratio,
                    run.summary.ttft_p50,
                    run.summary.ttft_mean,
                    run.summary.ttft_p99,
                    run.summary.wall,
                    run.per_node,
                    run.summary.errors,
                );
                write_errors(&dir, &records);
                runs.push(run);
            }
        }
    }
    for server in &mut servers {
        let _ = server.kill().await;
    }
    let table = render(args, &runs);
    println!("{table}");
    let json = serde_json::to_string_pretty(&runs).map_err(|e| e.to_string())?;
    std::fs::write(args.work.join("results.json"), json).map_err(|e| e.to_string())?;
    std::fs::write(args.work.join("table.md"), &table).map_err(|e| e.to_string())?;
    Ok(())
}

async fn futures_restart(servers: &mut [MlxServer]) -> Result<(), String> {
    let restarts = servers.iter_mut().map(MlxServer::restart);
    for result in futures::future::join_all(restarts).await {
        result.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn fetch_metrics(base_url: &str) -> Result<String, reqwest::Error> {
    let root = base_url.trim_end_matches("/v1");
    reqwest::get(format!("{root}/metrics")).await?.text().await
}

fn write_errors(dir: &Path, records: &[RequestRecord]) {
    let errors: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("{}/{}: {e}", r.session, r.turn))
        })
        .collect();
    if !errors.is_empty() {
        let _ = std::fs::write(dir.join("errors.txt"), errors.join("\n"));
    }
}

fn spread(values: &[f64], digits: usize) -> String {
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() < 2 || (hi - lo).abs() < 10f64.powi(-(digits as i32)) {
        format!("{mean:.digits$}")
    } else {
        format!("{mean:.digits$} ({lo:.digits$}–{hi:.digits$})")
    }
}

fn render(args: &Args, runs: &[Run]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Real-node routing: {} mlx_lm.server nodes (tiny model), {} sessions × {} turns, \
         {} round(s); mean over rounds (min–max).\n",
        args.nodes, args.shape.sessions, args.shape.turns, args.rounds
    ));
    for &variant in &args.variants {
        out.push_str(&format!("\n### {}\n\n", variant.name()));
        out.push_str(
            "| router | hit ratio | TTFT p50 s | TTFT mean s | TTFT p99 s | wall s | \
             req/node max/mean | router CPU ms/req | cache model ≤ 1 block | errors |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        let mut by_router: BTreeMap<usize, Vec<&Run>> = BTreeMap::new();
        for run in runs.iter().filter(|r| r.variant == variant) {
            let pos = args
                .routers
                .iter()
                .position(|k| router_key(k) == run.router)
                .unwrap_or(usize::MAX);
            by_router.entry(pos).or_default().push(run);
        }
        for rs in by_router.values() {
            let pick = |f: &dyn Fn(&Run) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<_>>();
            let balance = pick(&|r| {
                let max = r.per_node.iter().copied().max().unwrap_or(0) as f64;
                let mean = r.per_node.iter().sum::<usize>() as f64 / r.per_node.len().max(1) as f64;
                if mean > 0.0 { max / mean } else { 0.0 }
            });
            let fidelity: Vec<f64> = rs.iter().filter_map(|r| r.within_block).collect();
            let fidelity = if fidelity.is_empty() {
                "—".to_owned()
            } else {
                spread(&fidelity, 3)
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                rs[0].label,
                spread(&pick(&|r| r.summary.hit_ratio), 3),
                spread(&pick(&|r| r.summary.ttft_p50), 2),
                spread(&pick(&|r| r.summary.ttft_mean), 2),
                spread(&pick(&|r| r.summary.ttft_p99), 2),
                spread(&pick(&|r| r.summary.wall), 0),
                spread(&balance, 2),
                spread(&pick(&|r| r.cpu_per_request * 1000.0), 2),
                fidelity,
                rs.iter().map(|r| r.summary.errors).sum::<usize>(),
            ));
        }
    }
    out
}
