//! Shared by the gateway end-to-end tests: a gateway over a real
//! `cluster_facade::Cluster` on loopback, configs with fast health checks,
//! bounded polling, and paths of the external programs used.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cluster_facade::Cluster;
use cluster_gateway::{Gateway, GatewaySettings};
use cluster_types::{
    ClusterConfig, DiscoveryConfig, LoadBalanceStrategy, NodeId, NodeSpec, NodeStatus,
    StaticDiscovery,
};
use tokio::sync::oneshot;

/// Health probes every `CHECK_INTERVAL`: the failover tests' yardstick.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(1000);

/// A config with static `nodes` (id, base URL), fast health checks (probe
/// every second, 500 ms timeout, 2 successes to recover, backoff from
/// 200 ms), and `strategy`.
pub fn config(nodes: &[(&str, String)], strategy: LoadBalanceStrategy) -> ClusterConfig {
    let mut config = ClusterConfig {
        discovery: DiscoveryConfig::Static(StaticDiscovery {
            nodes: nodes
                .iter()
                .map(|(id, url)| NodeSpec::new(*id, url.clone()))
                .collect(),
            ..StaticDiscovery::default()
        }),
        ..ClusterConfig::default()
    };
    config.health.check_interval = CHECK_INTERVAL;
    config.health.timeout = Duration::from_millis(500);
    config.health.recovery_successes = 2;
    config.backoff.initial = Duration::from_millis(200);
    config.backoff.max = Duration::from_secs(1);
    config.routing.strategy = strategy;
    config.routing.retry_delay = Duration::from_millis(20);
    config.gateway.shutdown_grace = Duration::from_secs(5);
    config
}

/// A gateway serving on an ephemeral loopback port over a started cluster.
pub struct GatewayUnderTest {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub cluster: Cluster,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts `count` real mlx_lm.server nodes of `fixture`, each warmed up.
pub async fn warm_mlx_nodes(
    fixture: &cluster_tests::mlx::MlxFixture,
    count: usize,
) -> Vec<cluster_tests::mlx::MlxServer> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        let node = cluster_tests::mlx::MlxServer::start(fixture).await.unwrap();
        node.warm_up().await.unwrap();
        nodes.push(node);
    }
    nodes
}

/// [`config`] over `nodes`, named `mlx-a`, `mlx-b`, ... in order.
pub fn config_over_mlx(
    nodes: &[cluster_tests::mlx::MlxServer],
    strategy: LoadBalanceStrategy,
) -> ClusterConfig {
    let named: Vec<(String, String)> = nodes
        .iter()
        .zip('a'..='z')
        .map(|(n, c)| (format!("mlx-{c}"), n.base_url()))
        .collect();
    let refs: Vec<(&str, String)> = named
        .iter()
        .map(|(id, u)| (id.as_str(), u.clone()))
        .collect();
    config(&refs, strategy)
}

impl GatewayUnderTest {
    /// Sends one non-streamed and one streamed chat completion for `model`
    /// (both must answer 200), then returns the gateway's `/metrics` text.
    pub async fn metrics_after_traffic(&self, model: &str) -> String {
        for stream in [false, true] {
            let r = client()
                .post(format!("{}/chat/completions", self.v1()))
                .json(
                    &serde_json::json!({"model": model, "stream": stream, "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hello there"}]}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
        client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn start(config: ClusterConfig) -> Self {
        let settings = GatewaySettings::from_config(&config);
        let cluster = Cluster::start(config).await.unwrap();
        let gateway = Gateway::new(cluster.clone(), settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let gw = Arc::clone(&gateway);
        let task = tokio::spawn(async move {
            cluster_gateway::serve(listener, gw, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            url,
            cluster,
            gateway,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// OpenAI base URL (`.../v1`).
    pub fn v1(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub fn status_of(&self, id: &str) -> Option<NodeStatus> {
        self.cluster
            .status()
            .nodes
            .iter()
            .find(|n| n.spec.id == NodeId::from(id))
            .map(|n| n.status)
    }

    pub fn requests_of(&self, id: &str) -> u64 {
        self.cluster
            .status()
            .nodes
            .iter()
            .find(|n| n.spec.id == NodeId::from(id))
            .map_or(0, |n| n.metrics.requests_total)
    }

    /// Waits until every node is routable.
    pub async fn wait_all_routable(&self) {
        wait_until("every node routable", Duration::from_secs(30), || {
            let s = self.cluster.status();
            !s.nodes.is_empty() && s.nodes.iter().all(|n| n.status.is_routable())
        })
        .await;
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.cluster.shutdown().await;
    }
}

/// Polls `condition` until it holds; panics after `limit`. (The state
/// comes from real processes: there is no clock to advance.)
#[allow(unused_imports)] // not every test binary uses it
pub use test_support::poll_until as wait_until;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `target/artifacts/` of the workspace (test artifacts such as screenshots).
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Path of a program that `cargo xtask setup` installs, or a panic saying so.
pub fn program(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin"] {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is missing: run `cargo xtask setup` (Debian package {package})");
}

/// Runs `gateway_openai_sdk.py` (the real OpenAI Python SDK: a chat, two
/// identical streams — one without usage —, a legacy completion, a bad
/// request, the model list) against `gw` for `model`, checks what every
/// kind of node must give — streamed chunks, token counts, the 400, the
/// usage-less stream's counts reaching the cluster — and returns the
/// script's report for node-specific checks. `logs` adds the nodes' logs to
/// a failure.
pub async fn openai_sdk_through(
    gw: &GatewayUnderTest,
    model: &str,
    logs: impl Fn() -> String,
) -> serde_json::Value {
    let fixture = cluster_tests::mlx::MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway_openai_sdk.py");
    let out = tokio::process::Command::new(fixture.python())
        .arg(script)
        .arg(gw.v1())
        .arg(model)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed:\n{}\n{}\nnode logs:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        result["stream"]["chunks"].as_u64().unwrap() >= 2,
        "{result}"
    );
    assert!(result["stream"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(result["chat"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(result["error"]["status"], 400);
    // The stream without usage reached the router with its counts: every
    // forwarded request's prompt tokens are in the cluster's total (the
    // usage-less stream sent the same prompt as the other stream).
    assert_eq!(result["stream_no_usage"]["usage_chunks"], 0);
    let tokens = |k: &str| result[k]["prompt_tokens"].as_u64().unwrap();
    let expected = tokens("chat") + 2 * tokens("stream") + tokens("completion");
    // A guard finishes when the gateway has polled the body to its end,
    // which may be just after the client has read the last byte.
    let total = || gw.cluster.status().metrics.prompt_tokens_total;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while total() != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total(), expected, "{result}");
    result
}

/// Reads a streamed answer until its first content delta; panics (with
/// `context()`, e.g. the node's log) if it ends before.
pub async fn read_until_content(response: &mut reqwest::Response, context: impl Fn() -> String) {
    let mut body = String::new();
    while !body.contains("\"content\"") {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended early: {body}\n{}", context()));
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// After the stream's node died: the gateway ends the stream within
/// `limit` (no hang), and its last event is an `upstream_error` naming
/// `node`.
pub async fn assert_ends_with_upstream_error(
    response: &mut reqwest::Response,
    limit: Duration,
    node: &str,
) {
    let rest = tokio::time::timeout(limit, async {
        let mut rest = String::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        rest
    })
    .await
    .expect("the gateway closed the stream");
    let last = rest
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(last.starts_with("data: {\"error\""), "last event: {last:?}");
    let error: serde_json::Value = serde_json::from_str(&last["data: ".len()..]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error");
    assert!(
        error["error"]["message"].as_str().unwrap().contains(node),
        "{error}"
    );
}
