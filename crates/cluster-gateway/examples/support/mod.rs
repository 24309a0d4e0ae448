//! Shared by the reliability examples (`chaos`, `soak`): the release
//! `mlx-cluster` binary as a child process, its resource use read from
//! `/proc`, and a few helpers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `mlx-cluster` next to this example's directory
/// (`target/<profile>/examples/NAME` → `target/<profile>/mlx-cluster`), or
/// `$MLX_CLUSTER_BIN`.
pub fn gateway_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("MLX_CLUSTER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("mlx-cluster"))
        .unwrap()
}

pub use test_support::free_port;

/// The gateway process, stopped (SIGTERM, then SIGKILL) on drop.
pub struct GatewayProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl GatewayProcess {
    /// Writes `config` (TOML; must listen on `port`) to `dir`, starts
    /// `mlx-cluster serve` with logs to `dir/gateway.log`, and waits until
    /// `/readyz` answers 200.
    pub async fn start(dir: &Path, config: &str, port: u16) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let path = dir.join("gateway.toml");
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("gateway.log")).map_err(|e| e.to_string())?;
        let child = Command::new(gateway_binary())
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", gateway_binary().display()))?;
        let me = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = client();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", me.base)).send().await
                && r.status() == 200
            {
                return Ok(me);
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err("the gateway did not become ready within 30 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(Iterator::count)
            .unwrap_or(0)
    }

    /// Resident set size in bytes (`VmRSS` of `/proc/PID/status`).
    pub fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// A gauge of the gateway's `/metrics` (e.g.
    /// `mlx_cluster_gateway_runtime_alive_tasks`).
    pub async fn gauge(&self, name: &str) -> Option<f64> {
        let text = client()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `target/reliability/NAME` of the workspace.
pub fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/reliability")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `f` every 50 ms until it returns `Some`, at most `limit`.
pub async fn poll<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
