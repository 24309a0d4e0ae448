//! The routers a user would put in front of a set of nodes, as real
//! processes on loopback: the mlx-cluster gateway binary, SMG (PyPI `smg`)
//! and nginx — plus "no router" (every request to one node).
//!
//! Used by the real-node routing benchmark (`tests/examples/real_routing.rs`)
//! and the simulator-calibration test. Each [`RouterProcess`] is killed when
//! dropped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::FixtureError;

/// A router to put in front of the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterKind {
    /// The `mlx-cluster` gateway with `routing.strategy = strategy` and
    /// `routing.sticky_sessions = sticky`.
    Gateway {
        /// Strategy name as in the config (`cache-aware`, `round-robin`, …).
        strategy: String,
        /// Whether sessions are pinned to their node.
        sticky: bool,
    },
    /// The second gateway binary ([`RouterPrograms::gateway_alt`]) with
    /// `cache-aware`, for A/B comparisons of two builds in one run.
    GatewayAlt,
    /// SMG with `--policy cache_aware` (its defaults otherwise).
    Smg,
    /// nginx with `hash $http_x_session_id consistent` (round-robin when a
    /// request has no session header).
    NginxHash,
    /// No router: every request goes to the first node.
    SingleNode,
}

impl RouterKind {
    /// The row label in result tables.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Self::Gateway { strategy, sticky } if *sticky && strategy == "round-robin" => {
                "mlx-cluster round-robin + sticky".to_owned()
            }
            Self::Gateway { strategy, .. } => format!("mlx-cluster {strategy}"),
            Self::GatewayAlt => "mlx-cluster cache-aware (alternative build)".to_owned(),
            Self::Smg => "SMG cache_aware".to_owned(),
            Self::NginxHash => "nginx hash consistent".to_owned(),
            Self::SingleNode => "one node (no router)".to_owned(),
        }
    }
}

/// Where the router programs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterPrograms {
    /// The `mlx-cluster` binary.
    pub gateway: PathBuf,
    /// A second `mlx-cluster` binary for A/B runs
    /// ([`RouterKind::GatewayAlt`]), if any.
    pub gateway_alt: Option<PathBuf>,
    /// The `smg` entry point of its venv.
    pub smg: Option<PathBuf>,
    /// The `nginx` binary. Default `/usr/sbin/nginx`.
    pub nginx: PathBuf,
}

/// A running router (or the first node's URL for [`RouterKind::SingleNode`]).
#[derive(Debug)]
pub struct RouterProcess {
    /// OpenAI base URL clients use (`…/v1`).
    pub base_url: String,
    child: Option<Child>,
}

impl RouterProcess {
    /// Process id of the router, if it is a process.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// CPU seconds (user + system) used so far by the router and its
    /// children (nginx workers), from `/proc`.
    #[must_use]
    pub fn cpu_seconds(&self) -> f64 {
        self.pid().map_or(0.0, process_tree_cpu_seconds)
    }

    /// Stops the router.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// A free port on 127.0.0.1.
///
/// # Errors
/// [`FixtureError::Io`] when no socket can be bound.
pub fn free_port() -> Result<u16, FixtureError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| FixtureError::Io {
            action: "bind",
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })
}

/// Starts `kind` in front of `nodes` (base URLs without `/v1`), with its
/// config and log in `work_dir`, and waits until it routes to every node.
///
/// # Errors
/// [`FixtureError`] when the program is missing, cannot start, or is not
/// ready within `ready_timeout`.
pub async fn start_router(
    kind: &RouterKind,
    programs: &RouterPrograms,
    nodes: &[String],
    work_dir: &Path,
    ready_timeout: Duration,
) -> Result<RouterProcess, FixtureError> {
    std::fs::create_dir_all(work_dir).map_err(|source| FixtureError::Io {
        action: "create",
        path: work_dir.to_path_buf(),
        source,
    })?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let log = work_dir.join("router.log");
    let (mut command, program) = match kind {
        RouterKind::Gateway { strategy, sticky } => {
            let config = work_dir.join("gateway.toml");
            write(&config, &gateway_config(port, nodes, strategy, *sticky))?;
            let mut c = Command::new(&programs.gateway);
            c.arg("serve").arg("--config").arg(&config);
            (c, programs.gateway.clone())
        }
        RouterKind::GatewayAlt => {
            let program = programs
                .gateway_alt
                .clone()
                .ok_or_else(|| FixtureError::Missing {
                    what: "alternative gateway",
                    path: PathBuf::from("mlx-cluster"),
                    problem: "no alternative gateway binary given".into(),
                    env_var: "REAL_ROUTING_GATEWAY_ALT",
                })?;
            let config = work_dir.join("gateway.toml");
            write(&config, &gateway_config(port, nodes, "cache-aware", true))?;
            let mut c = Command::new(&program);
            c.arg("serve").arg("--config").arg(&config);
            (c, program)
        }
        RouterKind::Smg => {
            let smg = programs.smg.clone().ok_or_else(|| FixtureError::Missing {
                what: "smg",
                path: PathBuf::from("smg"),
                problem: "no SMG venv given".into(),
                env_var: "MLX_CLUSTER_SMG",
            })?;
            let metrics = free_port()?;
            let mut c = Command::new(&smg);
            c.args(["launch", "--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--policy", "cache_aware", "--disable-tokenizer-autoload"])
                .args(["--prometheus-host", "127.0.0.1"])
                .args(["--prometheus-port", &metrics.to_string()])
                .arg("--worker-urls")
                .args(nodes);
            (c, smg)
        }
        RouterKind::NginxHash => {
            let config = work_dir.join("nginx.conf");
            write(&config, &nginx_config(port, nodes, work_dir))?;
            let mut c = Command::new(&programs.nginx);
            c.arg("-p")
                .arg(work_dir)
                .arg("-c")
                .arg(&config)
                .args(["-g", "daemon off;"]);
            (c, programs.nginx.clone())
        }
        RouterKind::SingleNode => {
            let first = nodes
                .first()
                .ok_or_else(|| FixtureError::Plan("no nodes".into()))?;
            return Ok(RouterProcess {
                base_url: format!("{first}/v1"),
                child: None,
            });
        }
    };
    let log_file = std::fs::File::create(&log).map_err(|source| FixtureError::Io {
        action: "create",
        path: log.clone(),
        source,
    })?;
    let err_file = log_file.try_clone().map_err(|source| FixtureError::Io {
        action: "clone",
        path: log.clone(),
        source,
    })?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(err_file))
        .env(
            "RUST_LOG",
            std::env::var("REAL_ROUTING_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|source| FixtureError::Spawn { program, source })?;
    let mut process = RouterProcess {
        base_url: format!("{base}/v1"),
        child: Some(child),
    };
    wait_ready(&mut process, kind, &base, nodes.len(), ready_timeout, &log).await?;
    Ok(process)
}

fn write(path: &Path, text: &str) -> Result<(), FixtureError> {
    std::fs::write(path, text).map_err(|source| FixtureError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// The gateway config: static nodes `n0…`, the strategy, quiet logs.
#[must_use]
pub fn gateway_config(port: u16, nodes: &[String], strategy: &str, sticky: bool) -> String {
    let mut c = String::from("[discovery]\nmode = \"static\"\n");
    for (i, url) in nodes.iter().enumerate() {
        let _ = write!(c, "\n[[discovery.nodes]]\nid = \"n{i}\"\nurl = \"{url}\"\n");
    }
    let _ = write!(
        c,
        "\n[routing]\nstrategy = \"{strategy}\"\nsticky_sessions = {sticky}\n\n\
         [gateway]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    c
}

/// nginx as a consistent-hash proxy on the session header, streaming
/// unbuffered.
#[must_use]
pub fn nginx_config(port: u16, nodes: &[String], work_dir: &Path) -> String {
    let dir = work_dir.display();
    let mut upstream = String::new();
    for url in nodes {
        let host = url.trim_start_matches("http://");
        let _ = writeln!(upstream, "        server {host};");
    }
    format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {dir}/body;\n\
         proxy_temp_path {dir}/proxy;\n    client_max_body_size 64m;\n\
         upstream nodes {{\n        hash $http_x_session_id consistent;\n{upstream}    }}\n\
         server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
         proxy_pass http://nodes;\n            proxy_http_version 1.1;\n\
         proxy_buffering off;\n            proxy_read_timeout 600s;\n        }}\n    }}\n}}\n"
    )
}

async fn wait_ready(
    process: &mut RouterProcess,
    kind: &RouterKind,
    base: &str,
    nodes: usize,
    timeout: Duration,
    log: &Path,
) -> Result<(), FixtureError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(FixtureError::Client)?;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some(child) = process.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            last = format!("exited: {status}");
            break;
        }
        let ready = match kind {
            RouterKind::Gateway { .. } | RouterKind::GatewayAlt => {
                match client.get(format!("{base}/v1/cluster/status")).send().await {
                    Ok(r) => {
                        let text = r.text().await.unwrap_or_default();
                        let healthy = text.matches("\"status\":\"healthy\"").count();
                        last = format!("{healthy} healthy");
                        healthy >= nodes
                    }
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                }
            }
            RouterKind::Smg => match client.get(format!("{base}/workers")).send().await {
                Ok(r) => {
                    let text = r.text().await.unwrap_or_default();
                    let healthy = text.matches("\"is_healthy\":true").count();
                    last = format!("{healthy} healthy workers");
                    healthy >= nodes
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            },
            RouterKind::NginxHash => match client.get(format!("{base}/health")).send().await {
                Ok(r) => {
                    last = r.status().to_string();
                    r.status().is_success()
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            },
            RouterKind::SingleNode => true,
        };
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(FixtureError::Unexpected {
        url: base.to_owned(),
        detail: format!(
            "router {} not ready within {timeout:?} ({last}); log {}:\n{}",
            kind.label(),
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    })
}

/// CPU seconds (user + system) of `pid` and every descendant, from
/// `/proc/*/stat`; 0 when unreadable.
#[must_use]
pub fn process_tree_cpu_seconds(pid: u32) -> f64 {
    let mut stats = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(p) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(text) = std::fs::read_to_string(entry.path().join("stat"))
                && let Some(parsed) = parse_stat(&text)
            {
                stats.push((p, parsed));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for (p, (ppid, _)) in &stats {
            if *ppid == parent && !tree.contains(p) {
                tree.push(*p);
            }
        }
        i += 1;
    }
    let ticks: u64 = stats
        .iter()
        .filter(|(p, _)| tree.contains(p))
        .map(|(_, (_, t))| *t)
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// `(ppid, utime + stime)` from a `/proc/PID/stat` line.
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    // The command name may hold spaces: fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) … utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line() {
        let line = "42 (my proc) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some((7, 300)));
        assert!(process_tree_cpu_seconds(std::process::id()) >= 0.0);
    }

    #[test]
    fn configs() {
        let nodes = vec![
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
        ];
        let g = gateway_config(9, &nodes, "cache-aware", false);
        assert!(g.contains("id = \"n1\"") && g.contains("sticky_sessions = false"));
        let n = nginx_config(9, &nodes, Path::new("/tmp/x"));
        assert!(n.contains("hash $http_x_session_id consistent;"));
        assert!(n.contains("server 127.0.0.1:2;"));
        assert_eq!(RouterKind::Smg.label(), "SMG cache_aware");
    }
}
