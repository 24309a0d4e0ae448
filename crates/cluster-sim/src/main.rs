//! The `cluster-sim` command line: simulated nodes and fleets, workload
//! generation, trace replay and discrete-event simulation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cluster_sim::fleet::{Fleet, FleetConfig, NodeAnnouncement, ProcessFleet};
use cluster_sim::model::NodeModelConfig;
use cluster_sim::replay::{Assignment, Pacing, ReplayConfig, replay};
use cluster_sim::report::ReplayReport;
use cluster_sim::simulation::{
    LeastLoadedRouter, OracleRouter, RoundRobinRouter, SimRouter, Simulation, StickySessionRouter,
};
use cluster_sim::workload::{Arrival, Trace, WorkloadConfig};
use cluster_sim::{FaultConfig, SimError, SimNode, SimNodeConfig};

/// Simulated mlx_lm.server nodes, agentic workloads and trace replay.
///
/// Typical use: start a fleet (`cluster-sim fleet --nodes 8 --time-scale
/// 100`), generate a trace (`cluster-sim workload --out trace.jsonl`), then
/// replay it against the fleet, the gateway or a peer router (`cluster-sim
/// replay --trace trace.jsonl --target http://127.0.0.1:PORT --time-scale
/// 100`). `cluster-sim bench` does all three in one process.
#[derive(Debug, Parser)]
#[command(name = "cluster-sim", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one simulated node until interrupted.
    ///
    /// Prints one JSON line `{"id":...,"url":...}` on stdout once listening.
    Node(NodeArgs),
    /// Run several simulated nodes (in this process, or one process each)
    /// until interrupted.
    ///
    /// Prints one JSON line `{"id":...,"url":...}` per node on stdout.
    Fleet(FleetArgs),
    /// Generate an agentic-coding workload trace (JSON Lines).
    Workload(WorkloadArgs),
    /// Replay a trace against OpenAI-compatible base URLs and report
    /// TTFT, latency and cache hit ratio.
    Replay(ReplayArgs),
    /// Start an in-process fleet, generate a workload and replay it against
    /// the fleet directly (a quick end-to-end benchmark of the simulator).
    Bench(BenchArgs),
    /// Run a trace through the discrete-event simulation (no HTTP) with a
    /// built-in routing strategy.
    Simulate(SimulateArgs),
}

#[derive(Debug, Clone, Args)]
struct NodeOptions {
    /// Model id served at /v1/models.
    #[arg(long, default_value = "mlx-community/Qwen3-30B-A3B-4bit")]
    model_id: String,
    /// Prompt tokens per second at an empty context.
    #[arg(long, default_value_t = 1500.0)]
    prefill_tps: f64,
    /// Output tokens per second per request at an empty context.
    #[arg(long, default_value_t = 60.0)]
    decode_tps: f64,
    /// Requests running at once (prefill is serial among them, decode
    /// concurrent).
    #[arg(long, default_value_t = 8)]
    max_concurrency: usize,
    /// Requests allowed to wait; more are rejected with 503 and Retry-After
    /// (default: unbounded, like mlx_lm).
    #[arg(long)]
    max_queue: Option<usize>,
    /// Prompt-cache entries (mlx_lm --prompt-cache-size).
    #[arg(long, default_value_t = 10)]
    cache_entries: usize,
    /// Optional limit on tokens held by the prompt cache.
    #[arg(long)]
    cache_tokens: Option<usize>,
    /// Output tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 512)]
    default_max_tokens: u32,
    /// Close the connection after each response, as mlx_lm.server (HTTP/1.0)
    /// does.
    #[arg(long)]
    no_keep_alive: bool,
    /// Faults injected from the start, as JSON, e.g.
    /// '{"error_rate":0.1,"overload_rate":0.05,"overload_status":429}'.
    /// Fields: error_rate, error_status, spike_rate, spike_seconds, hang_rate,
    /// close_rate, overload_rate, overload_status, retry_after_seconds,
    /// garbage_rate, fail_health. Change at run time with POST /admin/faults.
    #[arg(long)]
    faults: Option<String>,
    /// Seed of fault draws and response ids (node i of a fleet uses
    /// node-seed + i).
    #[arg(long, default_value_t = 0)]
    node_seed: u64,
}

impl NodeOptions {
    fn to_config(&self, time_scale: f64) -> Result<SimNodeConfig, String> {
        let faults = match &self.faults {
            Some(json) => {
                serde_json::from_str::<FaultConfig>(json).map_err(|e| format!("--faults: {e}"))?
            }
            None => FaultConfig::default(),
        };
        Ok(SimNodeConfig {
            model_id: self.model_id.clone(),
            time_scale,
            model: NodeModelConfig {
                prefill_tokens_per_second: self.prefill_tps,
                decode_tokens_per_second: self.decode_tps,
                max_concurrency: self.max_concurrency,
                max_queue: self.max_queue,
                cache_entries: self.cache_entries,
                cache_tokens: self.cache_tokens,
                ..NodeModelConfig::default()
            },
            faults,
            seed: self.node_seed,
            keep_alive: !self.no_keep_alive,
            default_max_tokens: self.default_max_tokens,
            ..SimNodeConfig::default()
        })
    }
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port; 0 picks an ephemeral port.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Node id.
    #[arg(long, default_value = "sim-0")]
    id: String,
    /// Full node configuration as JSON (a SimNodeConfig); overrides every
    /// other option. Used by `fleet --processes`.
    #[arg(long)]
    config_json: Option<String>,
    /// Simulated seconds per real second (100 runs 100 minutes of traffic in
    /// one minute).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    #[command(flatten)]
    node: NodeOptions,
}

#[derive(Debug, Args)]
struct FleetArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Speed multipliers, cycled over the nodes (e.g. 1,1,0.5 makes every
    /// third node half as fast).
    #[arg(long, value_delimiter = ',')]
    speeds: Vec<f64>,
    /// Prompt-cache entries, cycled over the nodes (e.g. 10,4); overrides
    /// --cache-entries.
    #[arg(long, value_delimiter = ',')]
    cache_sizes: Vec<usize>,
    /// Run each node as its own `cluster-sim node` process.
    #[arg(long)]
    processes: bool,
    /// Simulated seconds per real second (100 runs 100 minutes of traffic in
    /// one minute).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    #[command(flatten)]
    node: NodeOptions,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArrivalKind {
    /// Poisson arrivals at --sessions-per-minute.
    Poisson,
    /// Bursts of --burst-sessions every --burst-every seconds.
    Bursty,
}

#[derive(Debug, Clone, Args)]
struct WorkloadOptions {
    /// Seed: the same options and seed always give the same trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of sessions.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Distinct shared system+tools prompts.
    #[arg(long, default_value_t = 3)]
    shared_prompts: usize,
    /// Smallest shared prompt, tokens.
    #[arg(long, default_value_t = 10_000)]
    prompt_tokens_min: u32,
    /// Largest shared prompt, tokens.
    #[arg(long, default_value_t = 30_000)]
    prompt_tokens_max: u32,
    /// Fewest turns per session.
    #[arg(long, default_value_t = 4)]
    turns_min: u32,
    /// Most turns per session.
    #[arg(long, default_value_t = 24)]
    turns_max: u32,
    /// Smallest new user message (tool result) per turn, tokens.
    #[arg(long, default_value_t = 200)]
    message_tokens_min: u32,
    /// Largest new user message per turn, tokens.
    #[arg(long, default_value_t = 3000)]
    message_tokens_max: u32,
    /// Smallest reply, tokens.
    #[arg(long, default_value_t = 30)]
    output_tokens_min: u32,
    /// Largest reply, tokens.
    #[arg(long, default_value_t = 800)]
    output_tokens_max: u32,
    /// Mean think time between turns, simulated seconds.
    #[arg(long, default_value_t = 5.0)]
    think_mean: f64,
    /// Session arrival process.
    #[arg(long, value_enum, default_value_t = ArrivalKind::Poisson)]
    arrival: ArrivalKind,
    /// Poisson rate: sessions per simulated minute.
    #[arg(long, default_value_t = 4.0)]
    sessions_per_minute: f64,
    /// Bursty: sessions per burst.
    #[arg(long, default_value_t = 20)]
    burst_sessions: usize,
    /// Bursty: simulated seconds between bursts.
    #[arg(long, default_value_t = 300.0)]
    burst_every: f64,
    /// Model name put in the requests (mlx_lm.server maps default_model to
    /// the model it was started with).
    #[arg(long, default_value = "default_model")]
    model: String,
    /// Send non-streaming requests.
    #[arg(long)]
    no_stream: bool,
}

impl WorkloadOptions {
    fn to_config(&self) -> WorkloadConfig {
        WorkloadConfig {
            seed: self.seed,
            sessions: self.sessions,
            shared_prompts: self.shared_prompts,
            prompt_tokens_min: self.prompt_tokens_min,
            prompt_tokens_max: self.prompt_tokens_max,
            turns_min: self.turns_min,
            turns_max: self.turns_max,
            message_tokens_min: self.message_tokens_min,
            message_tokens_max: self.message_tokens_max,
            output_tokens_min: self.output_tokens_min,
            output_tokens_max: self.output_tokens_max,
            think_mean_seconds: self.think_mean,
            arrival: match self.arrival {
                ArrivalKind::Poisson => Arrival::Poisson {
                    sessions_per_minute: self.sessions_per_minute,
                },
                ArrivalKind::Bursty => Arrival::Bursty {
                    burst_sessions: self.burst_sessions,
                    every_seconds: self.burst_every,
                    spread_seconds: 10.0,
                },
            },
            model: self.model.clone(),
            stream: !self.no_stream,
            ..WorkloadConfig::default()
        }
    }
}

#[derive(Debug, Args)]
struct WorkloadArgs {
    /// Where to write the trace (JSON Lines); `-` for stdout.
    #[arg(long, short, default_value = "-")]
    out: String,
    #[command(flatten)]
    workload: WorkloadOptions,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PacingArg {
    /// A session's next turn waits for the previous reply plus think time.
    Closed,
    /// Every request is sent at its trace offset.
    Open,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AssignmentArg {
    /// Target = session % number of targets (sessions stick to a target).
    Session,
    /// Requests rotate over the targets.
    RoundRobin,
}

#[derive(Debug, Clone, Args)]
struct ReplayOptions {
    /// Simulated seconds per real second; use the nodes' --time-scale (1
    /// against real servers). Trace offsets are divided by it.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Most requests started per real second (default: unlimited).
    #[arg(long)]
    rate: Option<f64>,
    /// How a session's turns are paced.
    #[arg(long, value_enum, default_value_t = PacingArg::Closed)]
    pacing: PacingArg,
    /// How requests are spread over several targets.
    #[arg(long, value_enum, default_value_t = AssignmentArg::Session)]
    assignment: AssignmentArg,
    /// Per-request timeout, real seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Replay only the first N requests.
    #[arg(long)]
    max_requests: Option<usize>,
    /// Write the summary as JSON here.
    #[arg(long)]
    summary_out: Option<PathBuf>,
    /// Write every request's record as JSON Lines here.
    #[arg(long)]
    records_out: Option<PathBuf>,
}

impl ReplayOptions {
    fn to_config(&self, targets: Vec<String>, api_key: Option<String>) -> ReplayConfig {
        ReplayConfig {
            targets,
            time_scale: self.time_scale,
            concurrency: self.concurrency,
            rate_limit: self.rate,
            pacing: match self.pacing {
                PacingArg::Closed => Pacing::Closed,
                PacingArg::Open => Pacing::Open,
            },
            assignment: match self.assignment {
                AssignmentArg::Session => Assignment::Session,
                AssignmentArg::RoundRobin => Assignment::RoundRobin,
            },
            request_timeout: Duration::try_from_secs_f64(self.timeout)
                .unwrap_or(Duration::from_secs(600)),
            api_key,
            max_requests: self.max_requests,
        }
    }
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The trace to replay.
    #[arg(long)]
    trace: PathBuf,
    /// Base URL of a target (repeat for several), e.g. http://127.0.0.1:8080.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Bearer token sent with every request.
    #[arg(long, env = "CLUSTER_SIM_API_KEY")]
    api_key: Option<String>,
    #[command(flatten)]
    replay: ReplayOptions,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    #[command(flatten)]
    node: NodeOptions,
    #[command(flatten)]
    workload: WorkloadOptions,
    #[command(flatten)]
    replay: ReplayOptions,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RouterArg {
    /// Rotate over the nodes.
    RoundRobin,
    /// Node = session % nodes.
    Sticky,
    /// Fewest running + queued requests.
    LeastLoaded,
    /// Earliest predicted first token, reading every node's cache (an upper
    /// bound, not a real strategy).
    Oracle,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// The trace; generated from the workload options when absent.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Number of nodes.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Routing strategies to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "round-robin,sticky,least-loaded,oracle"
    )]
    routers: Vec<RouterArg>,
    #[command(flatten)]
    node: NodeOptions,
    #[command(flatten)]
    workload: WorkloadOptions,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cluster-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cluster-sim: {message}");
            ExitCode::FAILURE
        }
    }
}

fn announce(id: &str, url: String) -> Result<(), String> {
    let line = serde_json::to_string(&NodeAnnouncement {
        id: id.to_owned(),
        url,
    })
    .map_err(|e| e.to_string())?;
    println!("{line}");
    Ok(())
}

async fn wait_for_interrupt() -> Result<(), String> {
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))
}

async fn run(cli: Cli) -> Result<(), String> {
    let err = |e: SimError| e.to_string();
    match cli.command {
        Command::Node(args) => {
            let config = match &args.config_json {
                Some(json) => {
                    serde_json::from_str(json).map_err(|e| format!("--config-json: {e}"))?
                }
                None => SimNodeConfig {
                    id: args.id.clone(),
                    bind: SocketAddr::new(args.host, args.port),
                    ..args.node.to_config(args.time_scale)?
                },
            };
            let node = SimNode::start(config).await.map_err(err)?;
            announce(node.id(), node.base_url())?;
            wait_for_interrupt().await?;
            node.shutdown().await;
            Ok(())
        }
        Command::Fleet(args) => {
            let base = args.node.to_config(args.time_scale)?;
            let config =
                FleetConfig::heterogeneous(args.nodes, &base, &args.speeds, &args.cache_sizes);
            if args.processes {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find own executable: {e}"))?;
                let fleet = ProcessFleet::spawn(&exe, &config).await.map_err(err)?;
                for n in fleet.nodes() {
                    announce(&n.id, n.url.clone())?;
                }
                wait_for_interrupt().await?;
                fleet.shutdown().await;
            } else {
                let fleet = Fleet::start(config).await.map_err(err)?;
                for n in fleet.nodes() {
                    announce(n.id(), n.base_url())?;
                }
                wait_for_interrupt().await?;
                fleet.shutdown().await;
            }
            Ok(())
        }
        Command::Workload(args) => {
            let trace = args.workload.to_config().generate().map_err(err)?;
            if args.out == "-" {
                let stdout = std::io::stdout();
                trace
                    .write_jsonl(std::io::BufWriter::new(stdout.lock()))
                    .map_err(|e| format!("stdout: {e}"))?;
            } else {
                trace
                    .write_file(std::path::Path::new(&args.out))
                    .map_err(err)?;
                eprintln!(
                    "wrote {} requests of {} sessions to {}",
                    trace.requests.len(),
                    trace.session_count(),
                    args.out
                );
            }
            Ok(())
        }
        Command::Replay(args) => {
            let trace = Trace::read_file(&args.trace).map_err(err)?;
            let config = args
                .replay
                .to_config(args.targets.clone(), args.api_key.clone());
            let report = replay(&trace, &config).await.map_err(err)?;
            finish_report(&report, &args.replay)
        }
        Command::Bench(args) => {
            let base = args.node.to_config(args.replay.time_scale)?;
            let fleet = Fleet::start(FleetConfig::uniform(args.nodes, &base))
                .await
                .map_err(err)?;
            let trace = args.workload.to_config().generate().map_err(err)?;
            eprintln!(
                "fleet of {} nodes, {} requests in {} sessions, time scale {}",
                fleet.len(),
                trace.requests.len(),
                trace.session_count(),
                args.replay.time_scale
            );
            let report = replay(&trace, &args.replay.to_config(fleet.urls(), None))
                .await
                .map_err(err)?;
            fleet.shutdown().await;
            finish_report(&report, &args.replay)
        }
        Command::Simulate(args) => {
            let trace = match &args.trace {
                Some(path) => Trace::read_file(path).map_err(err)?,
                None => args.workload.to_config().generate().map_err(err)?,
            };
            let node = args.node.to_config(1.0)?.model;
            for router in &args.routers {
                let mut strategy: Box<dyn SimRouter> = match router {
                    RouterArg::RoundRobin => Box::new(RoundRobinRouter::default()),
                    RouterArg::Sticky => Box::new(StickySessionRouter),
                    RouterArg::LeastLoaded => Box::new(LeastLoadedRouter),
                    RouterArg::Oracle => Box::new(OracleRouter),
                };
                let report =
                    Simulation::new(&trace, vec![node.clone(); args.nodes]).run(strategy.as_mut());
                println!("== {router:?}");
                print!("{}", report.summary.render_text());
            }
            Ok(())
        }
    }
}

fn finish_report(report: &ReplayReport, options: &ReplayOptions) -> Result<(), String> {
    print!("{}", report.summary.render_text());
    if let Some(path) = &options.summary_out {
        let json = serde_json::to_vec_pretty(&report.summary).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &options.records_out {
        let mut out = Vec::new();
        for record in &report.records {
            serde_json::to_writer(&mut out, record).map_err(|e| e.to_string())?;
            out.push(b'\n');
        }
        std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
