//! `mlx-cluster demo`: the whole system on one machine, no Macs needed.
//!
//! For each routing strategy compared, the demo starts a fleet of simulated
//! mlx_lm.server nodes (cluster-sim) on loopback, a cluster over them and a
//! gateway in front, all in this process. It generates one seeded agentic
//! coding workload (sessions that share long system prompts and re-send a
//! growing history every turn) and replays it through every gateway at once,
//! in scaled time, so the strategies see the same traffic over the same
//! wall-clock minute. While it runs it prints the dashboards' URLs and a
//! progress bar; at the end, a table of cache hit ratio and time to first
//! token per strategy.

use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use cluster_facade::{Cluster, RouterParams};
use cluster_sim::SimNodeConfig;
use cluster_sim::fleet::{Fleet, FleetConfig};
use cluster_sim::replay::{ReplayConfig, replay};
use cluster_sim::report::ReplaySummary;
use cluster_sim::workload::{Arrival, WorkloadConfig};
use cluster_types::{ClusterConfig, LoadBalanceStrategy, NodeSpec, StaticDiscovery};
use tokio::sync::oneshot;

use crate::error::GatewayError;
use crate::gateway::{Gateway, GatewaySettings};
use crate::request::ApiKind;
use crate::server;

/// Options of `mlx-cluster demo`.
///
/// Defaults: 4 nodes, 16 sessions, strategies cache-aware, cache-score,
/// least-loaded and round-robin, about 60 s of wall time, seed 1.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Simulated nodes per strategy.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Agentic coding sessions in the workload.
    #[arg(long, default_value_t = 16)]
    pub sessions: usize,
    /// Strategies to compare (comma separated): cache-aware, cache-score,
    /// least-loaded, latency-based, round-robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cache-aware,cache-score,least-loaded,round-robin"
    )]
    pub strategies: Vec<LoadBalanceStrategy>,
    /// Wall-clock seconds the workload should take (the time scale is
    /// chosen to fit it).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Simulated seconds per wall second; overrides the fit to --duration.
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Port of the first gateway (the others follow); 0 picks free ports.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Keep the gateways and dashboards up after the table, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// One strategy's stack: fleet, cluster, gateway.
struct Stack {
    strategy: LoadBalanceStrategy,
    fleet: Fleet,
    cluster: Cluster,
    gateway: Arc<Gateway>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

fn demo_error(message: impl Into<String>) -> GatewayError {
    GatewayError::Demo {
        message: message.into(),
    }
}

/// The cluster configuration of one strategy's stack: static nodes, fast
/// health checks (the demo runs in scaled time), the given strategy.
#[must_use]
pub(crate) fn demo_config(urls: &[String], strategy: LoadBalanceStrategy) -> ClusterConfig {
    let mut config = ClusterConfig {
        discovery: cluster_types::DiscoveryConfig::Static(StaticDiscovery {
            nodes: urls
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
    config.routing.strategy = strategy;
    config.routing.retry_delay = Duration::from_millis(10);
    config
}

/// Routing parameters for a cluster whose nodes run `time_scale` times
/// faster than real Macs. The cost model is work in tokens over each node's
/// measured rate, so only what is tied to the clock changes: the rate
/// assumed before the first measurement (in wall-clock tokens/s, else it
/// would sit at its clamp) and the window in which a conversation counts as
/// active.
fn time_scaled_params(config: &ClusterConfig, time_scale: f64) -> RouterParams {
    let mut params = RouterParams::from_config(config);
    let scale = time_scale.max(1.0);
    let cost = &mut params.cost;
    cost.default_prefill_tokens_per_second *= scale;
    cost.active_window = cost.active_window.div_f64(scale);
    params
}

async fn start_stack(
    strategy: LoadBalanceStrategy,
    nodes: usize,
    node: &SimNodeConfig,
    listen: SocketAddr,
    time_scale: f64,
) -> Result<Stack, GatewayError> {
    let fleet = Fleet::start(FleetConfig::uniform(nodes, node))
        .await
        .map_err(|e| demo_error(format!("cannot start simulated nodes: {e}")))?;
    let config = demo_config(&fleet.urls(), strategy);
    let settings = GatewaySettings::from_config(&config);
    let params = time_scaled_params(&config, time_scale);
    let cluster = Cluster::builder(config)
        .router_params(params)
        .start()
        .await
        .map_err(|e| demo_error(format!("cannot start the {strategy} cluster: {e}")))?;
    let listener = server::bind(listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| GatewayError::Serve { source })?;
    let gateway = Gateway::new(cluster.clone(), settings);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, Arc::clone(&gateway), async move {
        let _ = stopped.await;
    }));
    Ok(Stack {
        strategy,
        fleet,
        cluster,
        gateway,
        url: format!("http://{addr}"),
        stop: Some(stop),
        server,
    })
}

fn completed(stacks: &[Stack]) -> u64 {
    stacks
        .iter()
        .map(|s| {
            let m = s.gateway.metrics();
            (1..=5)
                .map(|class| m.responses(ApiKind::ChatCompletions, class))
                .sum::<u64>()
        })
        .sum()
}

fn progress_line(done: u64, total: u64, started: Instant) -> String {
    const WIDTH: usize = 30;
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * WIDTH as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%  {done}/{total} requests  {:.0}s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        100.0 * fraction,
        started.elapsed().as_secs_f64()
    )
}

/// Runs the demo (see the module docs).
pub(crate) async fn run(args: DemoArgs) -> Result<(), GatewayError> {
    server::init_logging(cluster_types::LogFormat::Human, "warn");
    if args.strategies.is_empty() || args.nodes == 0 || args.sessions == 0 {
        return Err(demo_error("need at least one strategy, node and session"));
    }
    let workload = WorkloadConfig {
        seed: args.seed,
        sessions: args.sessions,
        arrival: Arrival::Poisson {
            sessions_per_minute: 8.0,
        },
        ..WorkloadConfig::default()
    };
    let trace = workload
        .generate()
        .map_err(|e| demo_error(format!("cannot generate the workload: {e}")))?;
    let horizon = trace
        .requests
        .iter()
        .map(|r| r.at)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    // The trace's offsets count think time only; with every turn waiting for
    // its reply (closed pacing) a run takes about 3× longer in simulated
    // time. Aim at 80% of the wall-clock budget.
    let sim_seconds = horizon * 3.0;
    let wall = (args.duration.max(5) as f64) * 0.8;
    let time_scale = args
        .time_scale
        .unwrap_or((sim_seconds / wall).clamp(1.0, 10_000.0));
    let node = SimNodeConfig {
        time_scale,
        ..SimNodeConfig::default()
    };
    eprintln!(
        "mlx-cluster demo: {} strategies × {} simulated nodes, {} sessions / {} requests, time ×{time_scale:.0}",
        args.strategies.len(),
        args.nodes,
        args.sessions,
        trace.requests.len()
    );

    let mut stacks = Vec::new();
    for (i, strategy) in args.strategies.iter().enumerate() {
        let port = if args.port == 0 {
            0
        } else {
            args.port
                .saturating_add(u16::try_from(i).unwrap_or(u16::MAX))
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        stacks.push(start_stack(*strategy, args.nodes, &node, listen, time_scale).await?);
    }
    let ready_by = Instant::now() + Duration::from_secs(15);
    while stacks.iter().any(|s| !all_nodes_healthy(&s.cluster)) {
        if Instant::now() > ready_by {
            return Err(demo_error(
                "simulated nodes did not become healthy within 15 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &stacks {
        eprintln!("  {:<14} dashboard {}/", s.strategy.as_str(), s.url);
    }

    let total = (trace.requests.len() * stacks.len()) as u64;
    let started = Instant::now();
    let replays = stacks.iter().map(|s| {
        let config = ReplayConfig {
            targets: vec![s.url.clone()],
            time_scale,
            ..ReplayConfig::default()
        };
        let trace = &trace;
        async move { replay(trace, &config).await }
    });
    let all = futures::future::join_all(replays);
    let mut all = std::pin::pin!(all);
    let tty = std::io::stderr().is_terminal();
    let mut last_print = Instant::now();
    let reports = loop {
        tokio::select! {
            reports = &mut all => break reports,
            () = tokio::time::sleep(Duration::from_millis(if tty { 250 } else { 5000 })) => {
                let line = progress_line(completed(&stacks), total, started);
                if tty {
                    eprint!("\r{line}");
                } else if last_print.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{line}");
                    last_print = Instant::now();
                }
                let _ = std::io::stderr().flush();
            }
        }
    };
    let line = progress_line(completed(&stacks), total, started);
    if tty {
        eprintln!("\r{line}");
    } else {
        eprintln!("{line}");
    }

    let mut rows = Vec::new();
    for (stack, report) in stacks.iter().zip(reports) {
        let report =
            report.map_err(|e| demo_error(format!("replay through {} failed: {e}", stack.url)))?;
        rows.push((stack.strategy, report.summary));
    }
    println!();
    print!("{}", comparison_table(&rows));
    for (strategy, summary) in &rows {
        if summary.errors > 0 {
            println!(
                "{}: {} failed requests: {:?}",
                strategy.as_str(),
                summary.errors,
                summary.error_kinds
            );
        }
    }
    println!(
        "\nEach strategy served the same {} requests on its own {} simulated nodes (time ×{time_scale:.0}).\n\
         Cache hit = prompt tokens served from the node's prompt cache / all prompt tokens;\n\
         TTFT in simulated seconds (what the time would be on real Macs).",
        trace.requests.len(),
        args.nodes
    );

    if args.keep_running {
        eprintln!("\ngateways still up (dashboards above); Ctrl-C to stop");
        server::shutdown_signal().await;
    }
    for mut s in stacks {
        if let Some(stop) = s.stop.take() {
            let _ = stop.send(());
        }
        let _ = s.server.await;
        s.cluster.shutdown().await;
        s.fleet.shutdown().await;
    }
    Ok(())
}

fn all_nodes_healthy(cluster: &Cluster) -> bool {
    let state = cluster.status();
    !state.nodes.is_empty() && state.nodes.iter().all(|n| n.status.is_routable())
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}s"))
}

/// The end-of-demo table: one row per strategy.
#[must_use]
pub(crate) fn comparison_table(rows: &[(LoadBalanceStrategy, ReplaySummary)]) -> String {
    let baseline = rows
        .iter()
        .find(|(s, _)| *s == LoadBalanceStrategy::RoundRobin)
        .and_then(|(_, r)| r.ttft.as_ref().map(|t| t.mean));
    let mut out = format!(
        "{:<14} {:>9} {:>7} {:>10} {:>10} {:>10} {:>10} {:>12}\n",
        "strategy",
        "requests",
        "errors",
        "cache hit",
        "TTFT p50",
        "TTFT mean",
        "TTFT p99",
        "mean vs RR"
    );
    for (strategy, r) in rows {
        let ttft = r.ttft.as_ref();
        let vs = match (baseline, ttft) {
            (Some(b), Some(t)) if b > 0.0 => format!("{:.2}×", t.mean / b),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "{:<14} {:>9} {:>7} {:>9.1}% {:>10} {:>10} {:>10} {:>12}\n",
            strategy.as_str(),
            r.requests,
            r.errors,
            100.0 * r.cache_hit_ratio,
            secs(ttft.map(|t| t.p50)),
            secs(ttft.map(|t| t.mean)),
            secs(ttft.map(|t| t.p99)),
            vs
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shape() {
        let l = progress_line(5, 10, Instant::now());
        assert!(
            l.starts_with("[###############---------------]  50%"),
            "{l}"
        );
        assert!(progress_line(0, 0, Instant::now()).contains("100%"));
    }

    #[test]
    fn demo_config_is_valid() {
        let c = demo_config(
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            LoadBalanceStrategy::RoundRobin,
        );
        let text = serde_json::to_string(&c).unwrap();
        let parsed = ClusterConfig::parse(&text, cluster_types::ConfigFormat::Json).unwrap();
        assert_eq!(parsed.routing.strategy, LoadBalanceStrategy::RoundRobin);
    }
}
