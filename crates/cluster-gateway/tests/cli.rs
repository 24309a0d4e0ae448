//! The `mlx-cluster` binary: `check-config`, `serve` (configured by file or
//! environment, JSON logs, graceful shutdown on SIGTERM) and `status`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster_sim::{SimNode, SimNodeConfig};
use serde_json::json;
use test_support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_mlx-cluster");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-cluster-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The gateway process; killed if still running when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Served {
    /// Runs `mlx-cluster ARGS`; stderr is captured when `capture` (read it,
    /// or the pipe may fill), else inherited.
    fn start(args: &[&str], env: &[(&str, String)], port: u16, capture: bool) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().unwrap(),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if let Ok(r) = client().get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "gateway not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[test]
fn check_config_lists_every_problem_with_its_path() {
    let dir = temp_dir("bad-config");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        r#"
[discovery]
mode = "static"
nodes = [{ id = "a", url = "ftp://10.0.0.1:8080" }]

[health]
check_interval = "1s"
timeout = "5s"

[backoff]
jitter = 2.0
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["discovery.nodes[0].url", "health.timeout", "backoff.jitter"] {
        assert!(
            err.contains(&format!("{path}: ")),
            "{path} missing from:\n{err}"
        );
    }
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[discovery]\nmode = \"static\"\nnodes = [{ id = \"a\", url = \"http://10.0.0.1:8080\" }]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    let missing = Command::new(BIN)
        .arg("check-config")
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_config_uses_the_environment_and_logs_json() {
    let node = SimNode::start(SimNodeConfig {
        time_scale: 1000.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let port = free_port();
    let mut served = Served::start(
        &["serve"],
        &[
            ("MLX_CLUSTER_DISCOVERY__NODES__0__URL", node.base_url()),
            ("MLX_CLUSTER_GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
            ("MLX_CLUSTER_GATEWAY__LOG_FORMAT", "json".into()),
        ],
        port,
        true,
    );
    served.wait_ready().await;
    let r = client()
        .post(format!("{}/v1/chat/completions", served.url))
        .json(&json!({"model": node.config().model_id, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mlx-cluster-node"], "local");
    served.sigterm();
    let stderr = served.child.stderr.take().unwrap();
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(served.child.wait().unwrap().success());
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("listening on")),
        "{lines:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_stream_then_exits() {
    // Real time with a slow decode: the stream lasts a few seconds.
    let node = SimNode::start(SimNodeConfig {
        time_scale: 1.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let dir = temp_dir("sigterm");
    let port = free_port();
    let config = dir.join("cluster.yaml");
    std::fs::write(
        &config,
        format!(
            "discovery:\n  mode: static\n  nodes:\n    - id: sim\n      url: {}\ngateway:\n  listen: 127.0.0.1:{port}\n  shutdown_grace: 20s\n",
            node.base_url()
        ),
    )
    .unwrap();
    let mut served = Served::start(
        &["serve", "--config", config.to_str().unwrap()],
        &[],
        port,
        false,
    );
    served.wait_ready().await;

    // `status` prints the node table of the running gateway.
    let out = Command::new(BIN)
        .args(["status", "--url", &served.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("sim") && table.contains("healthy"),
        "{table}"
    );
    assert!(table.contains(&node.base_url()), "{table}");

    let mut response = client()
        .post(format!("{}/v1/chat/completions", served.url))
        .json(
            &json!({"model": node.config().model_id, "stream": true, "max_tokens": 40,
            "messages": [{"role": "user", "content": "count slowly"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = String::new();
    while !body.contains("\"content\"") {
        body.push_str(&String::from_utf8_lossy(
            &response.chunk().await.unwrap().unwrap(),
        ));
    }
    served.sigterm();
    // New connections are refused or told the gateway is not ready ...
    let started = Instant::now();
    loop {
        match client().get(format!("{}/readyz", served.url)).send().await {
            Ok(r) if r.status() == 200 => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "still ready after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => break,
        }
    }
    // ... while the in-flight stream runs to its end.
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let status = served.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
