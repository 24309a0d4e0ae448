//! The `mlx-cluster` command line: `serve`, `demo`, `check-config`,
//! `status`, `announce`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cluster_facade::{Cluster, FacadeError};
use cluster_types::{ClusterConfig, ClusterState, ConfigFormat};
use http_body_util::BodyExt;

#[cfg(feature = "demo")]
use crate::demo::DemoArgs;
use crate::error::GatewayError;
use crate::gateway::{Gateway, GatewaySettings};
use crate::server;
use crate::upstream::{UpstreamClient, UpstreamSettings};

/// The configuration `serve` uses without `--config`: one static node at
/// mlx_lm.server's default address. `MLX_CLUSTER_*` variables override it
/// like a file (e.g. `MLX_CLUSTER_DISCOVERY__NODES__0__URL`).
pub(crate) const DEFAULT_CONFIG_TOML: &str = r#"
[discovery]
mode = "static"
nodes = [{ id = "local", url = "http://127.0.0.1:8080" }]
"#;

/// One OpenAI-compatible address in front of many local inference servers
/// (mlx_lm.server, llama.cpp, vLLM, ...), routing each request to the node
/// that already holds its prompt prefix.
#[derive(Debug, Parser)]
#[command(name = "mlx-cluster", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Start simulated nodes and a gateway per strategy, drive an agentic
    /// workload through them, and compare the strategies (feature `demo`).
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Check a configuration file; print every problem with its path.
    CheckConfig(CheckConfigArgs),
    /// Show the node table of a running gateway.
    Status(StatusArgs),
    /// Print the `gateway.api_keys_file` line of a client key read from
    /// standard input (its SHA-256; the key itself is not printed).
    HashKey(HashKeyArgs),
    /// Advertise a node running on this machine over mDNS / DNS-SD while
    /// it answers (for servers that do not advertise themselves).
    Announce(crate::announce::AnnounceArgs),
}

/// `mlx-cluster hash-key`.
#[derive(Debug, Args)]
pub struct HashKeyArgs {
    /// Name of the key's holder (the label of its metrics).
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `mlx-cluster serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (.toml, .json, .yaml, .yml). Without it: one
    /// static node at http://127.0.0.1:8080. `MLX_CLUSTER_*` environment
    /// variables override either (e.g. `MLX_CLUSTER_GATEWAY__LISTEN`).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address; overrides `gateway.listen` (default 127.0.0.1:8000).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// `mlx-cluster check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The file to check (`MLX_CLUSTER_*` variables apply, as for `serve`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `mlx-cluster status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Base URL of the gateway.
    #[arg(long, default_value = "http://127.0.0.1:8000", env = "MLX_CLUSTER_URL")]
    pub url: String,
    /// Print the raw status JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command line; the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    crate::tls::install_crypto_provider();
    match cli.command {
        Command::HashKey(args) => hash_key(&args.name),
        Command::CheckConfig(args) => check_config(&args.file),
        Command::Serve(args) => block_on(serve(args)),
        Command::Status(args) => block_on(status(args)),
        #[cfg(feature = "demo")]
        Command::Demo(args) => block_on(crate::demo::run(args)),
        Command::Announce(args) => block_on(crate::announce::run(args)),
    }
}

fn block_on<F: std::future::Future<Output = Result<(), GatewayError>>>(f: F) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mlx-cluster: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mlx-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: &FacadeError) -> GatewayError {
    GatewayError::Config {
        message: describe_config_error(e),
    }
}

/// Every problem of a configuration error, one `path: message` per line.
#[must_use]
pub(crate) fn describe_config_error(e: &FacadeError) -> String {
    match e {
        FacadeError::InvalidConfig { path, problems } => {
            let mut text = String::new();
            if let Some(path) = path {
                text.push_str(&format!("{}:\n", path.display()));
            }
            for p in problems.problems() {
                text.push_str(&format!("  {}: {}\n", p.path, p.message));
            }
            text
        }
        other => other.to_string(),
    }
}

/// Loads the configuration `serve` would use.
pub(crate) fn load_serve_config(path: Option<&Path>) -> Result<ClusterConfig, FacadeError> {
    match path {
        Some(path) => cluster_facade::load_config(path),
        None => {
            ClusterConfig::parse_with_env(DEFAULT_CONFIG_TOML, ConfigFormat::Toml, std::env::vars())
                .map_err(|problems| FacadeError::InvalidConfig {
                    path: None,
                    problems,
                })
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
    let loaded = cluster_facade::load_config(file).map_err(|e| describe_config_error(&e));
    // The files the config names must be usable too.
    let loaded = loaded.and_then(|config| {
        GatewaySettings::load(&config).map_err(|e| e.to_string())?;
        if let Some(tls) = &config.gateway.tls {
            crate::tls::server_config(tls).map_err(|e| e.to_string())?;
        }
        Ok(config)
    });
    match loaded {
        Ok(config) => {
            let nodes = match &config.discovery {
                cluster_types::DiscoveryConfig::Static(s) => {
                    format!("{} static node(s)", s.nodes.len())
                }
                cluster_types::DiscoveryConfig::Dns(d) => format!("DNS SRV {}", d.srv_name),
                cluster_types::DiscoveryConfig::Kubernetes(k) => {
                    format!("Kubernetes EndpointSlices in namespace {}", k.namespace)
                }
                cluster_types::DiscoveryConfig::Mdns(m) => {
                    format!("mDNS browsing {}", m.service_types.join(", "))
                }
            };
            let (errors, warnings) =
                crate::checks::check(&config, &crate::checks::compiled_features());
            for w in &warnings {
                let _ = writeln!(std::io::stderr(), "  warning: {}: {}", w.path, w.message);
            }
            if !errors.is_empty() {
                let _ = writeln!(std::io::stderr(), "{}:", file.display());
                for e in &errors {
                    let _ = writeln!(std::io::stderr(), "  {}: {}", e.path, e.message);
                }
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok ({nodes}, strategy {}, listen {}{})",
                file.display(),
                config.routing.strategy,
                config.gateway.listen,
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", warnings.len())
                }
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "{}", message.trim_end());
            ExitCode::FAILURE
        }
    }
}

/// The key file line for `name` and `secret` (surrounding whitespace of
/// the secret, such as a trailing newline, is ignored).
///
/// # Errors
/// A message when `name` is not a valid key name or the secret is empty.
pub(crate) fn key_file_line(name: &str, secret: &str) -> Result<String, String> {
    if !cluster_types::config::is_valid_key_name(name) {
        return Err(format!(
            "invalid key name {name:?}: 1-64 characters of A-Z a-z 0-9 _ - ."
        ));
    }
    let secret = secret.trim();
    if secret.is_empty() {
        return Err("no key on standard input".to_owned());
    }
    Ok(format!(
        "{name} sha256:{}",
        crate::auth::sha256_hex(secret.as_bytes())
    ))
}

fn hash_key(name: &str) -> ExitCode {
    let mut secret = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut secret) {
        eprintln!("mlx-cluster: cannot read the key from standard input: {e}");
        return ExitCode::FAILURE;
    }
    match key_file_line(name, &secret) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("mlx-cluster: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), GatewayError> {
    let mut config = load_serve_config(args.config.as_deref()).map_err(|e| config_error(&e))?;
    let reload_listen = args.listen;
    if let Some(listen) = args.listen {
        config.gateway.listen = listen;
    }
    let traces = crate::telemetry::init_logging_and_traces(
        config.gateway.log_format,
        "info",
        config.observability.otlp_endpoint.as_deref(),
    )?;
    let settings = GatewaySettings::load(&config)?;
    if let Some(tls) = &config.gateway.tls {
        // Fail before binding when the certificate cannot be used.
        crate::tls::server_config(tls)?;
    }
    let listen = config.gateway.listen;
    let listener = server::bind(listen).await?;
    let cluster = Cluster::start(config)
        .await
        .map_err(|e| GatewayError::Config {
            message: e.to_string(),
        })?;
    let gateway = Gateway::new(cluster.clone(), settings);
    let reloader = std::sync::Arc::new(crate::reload::ConfigReloader::new(
        cluster.clone(),
        args.config.clone(),
        reload_listen,
    ));
    reloader.reload_on_sighup();
    gateway.set_reloader((*reloader).clone());
    let local = listener.local_addr().unwrap_or(listen);
    let scheme = if config_has_tls(&gateway) {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        "mlx-cluster listening on {scheme}://{local} (dashboard {scheme}://{local}/, OpenAI base URL {scheme}://{local}/v1)"
    );
    let result = server::serve(listener, gateway, server::shutdown_signal()).await;
    cluster.shutdown().await;
    if let Some(traces) = traces {
        // Exports the buffered spans; blocks until the collector answers.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    tracing::info!("stopped");
    result
}

fn config_has_tls(gateway: &Gateway) -> bool {
    gateway.settings().tls.is_some()
}

/// Fetches a gateway's `/v1/cluster/status`.
pub(crate) async fn fetch_status(url: &str) -> Result<ClusterState, GatewayError> {
    let client = UpstreamClient::new(UpstreamSettings::default());
    let base = url.trim_end_matches('/');
    let http_err = |message: String| GatewayError::Http {
        url: format!("{base}/v1/cluster/status"),
        message,
    };
    let response = client
        .get(base, "/v1/cluster/status")
        .await
        .map_err(|e| http_err(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| http_err(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(http_err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(|e| http_err(format!("not a cluster status: {e}")))
}

async fn status(args: StatusArgs) -> Result<(), GatewayError> {
    let state = fetch_status(&args.url).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&state).unwrap_or_default()
        );
    } else {
        print!("{}", node_table(&state));
    }
    Ok(())
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}ms"))
}

/// The node table printed by `mlx-cluster status`.
#[must_use]
pub(crate) fn node_table(state: &ClusterState) -> String {
    let m = &state.metrics;
    let mut rows = vec![[
        "NODE".to_owned(),
        "STATUS".to_owned(),
        "KIND".to_owned(),
        "URL".to_owned(),
        "IN-FLIGHT".to_owned(),
        "REQUESTS".to_owned(),
        "ERRORS".to_owned(),
        "LATENCY".to_owned(),
        "TTFT".to_owned(),
        "CACHE-HIT".to_owned(),
        "MODELS".to_owned(),
    ]];
    for node in &state.nodes {
        let nm = &node.metrics;
        rows.push([
            node.spec.id.to_string(),
            node.status.to_string(),
            node.kind.to_string(),
            node.spec.url.clone(),
            nm.in_flight.to_string(),
            nm.requests_total.to_string(),
            nm.failures_total.to_string(),
            opt_ms(nm.ewma_latency_ms.or(node.health.avg_latency_ms)),
            opt_ms(nm.avg_ttft_ms),
            format!("{:.1}%", 100.0 * nm.cache_hit_ratio()),
            node.models.join(","),
        ]);
    }
    let mut widths = [0usize; 11];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "cluster {}: {}/{} nodes routable, {} in flight, {} requests, cache hit {:.1}%\n",
        state.status,
        m.routable_nodes(),
        m.total_nodes,
        m.in_flight,
        m.requests_total,
        100.0 * m.cache_hit_ratio
    );
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use cluster_types::{ClusterMetrics, Node, NodeSpec, NodeStatus};

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn default_config_parses_with_a_local_node() {
        let c = ClusterConfig::parse(DEFAULT_CONFIG_TOML, ConfigFormat::Toml).unwrap();
        let cluster_types::DiscoveryConfig::Static(s) = &c.discovery else {
            panic!("static expected")
        };
        assert_eq!(s.nodes[0].url, "http://127.0.0.1:8080");
    }

    #[test]
    fn env_overrides_the_default_node() {
        let c = ClusterConfig::parse_with_env(
            DEFAULT_CONFIG_TOML,
            ConfigFormat::Toml,
            [(
                "MLX_CLUSTER_DISCOVERY__NODES__0__URL",
                "http://10.0.0.9:8080",
            )],
        )
        .unwrap();
        let cluster_types::DiscoveryConfig::Static(s) = &c.discovery else {
            panic!("static expected")
        };
        assert_eq!(s.nodes[0].url, "http://10.0.0.9:8080");
    }

    #[test]
    fn key_file_line_hashes_the_trimmed_key() {
        let line = key_file_line("alice", "sk-test\n").unwrap();
        assert_eq!(
            line,
            format!("alice sha256:{}", crate::auth::sha256_hex(b"sk-test"))
        );
        assert!(!line.contains("sk-test"));
        let keys = cluster_types::parse_api_keys_file(&line).unwrap();
        assert_eq!(keys[0].name, "alice");
        assert!(key_file_line("a b", "k").is_err());
        assert!(key_file_line("alice", " \n").is_err());
    }

    #[test]
    fn table_lists_nodes() {
        let mut a = Node::new(NodeSpec::new("mac-a", "http://a:8080"));
        a.status = NodeStatus::Healthy;
        a.models = vec!["qwen".into()];
        a.kind = cluster_types::NodeKind::LlamaCpp;
        let state = ClusterState::new(vec![a], ClusterMetrics::default(), 1);
        let t = node_table(&state);
        assert!(t.contains("mac-a"), "{t}");
        assert!(t.contains("llama_cpp"), "{t}");
        assert!(t.lines().nth(1).unwrap().contains("KIND"), "{t}");
        assert!(t.contains("healthy"));
        assert!(t.contains("qwen"));
        assert!(t.lines().nth(1).unwrap().starts_with("NODE"));
    }
}
