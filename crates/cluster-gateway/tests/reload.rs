//! Changes without restarts, on the real `mlx-cluster serve` under a steady
//! load of streamed and plain chat completions: SIGHUP adds a node and
//! changes the strategy, `POST /admin/config/reload` removes a node that
//! has requests in flight, invalid files are refused with every problem
//! (by the endpoint and by SIGHUP) while the running configuration is kept,
//! and a node is added and removed at run time — with zero failed requests.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_sim::{SimNode, SimNodeConfig};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mlx-cluster");
const TOKEN: &str = "reload-test-token";

struct Served {
    child: Child,
    log: PathBuf,
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
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn write_config(file: &Path, port: u16, nodes: &[(&str, String)], strategy: &str, extra: &str) {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(id, url)| format!("{{ id = \"{id}\", url = \"{url}\" }}"))
        .collect();
    std::fs::write(
        file,
        format!(
            r#"
[discovery]
mode = "static"
nodes = [{}]

[health]
check_interval = "500ms"
timeout = "400ms"
recovery_successes = 1

[routing]
strategy = "{strategy}"

[gateway]
listen = "127.0.0.1:{port}"
admin_token = "{TOKEN}"
{extra}
"#,
            nodes.join(", ")
        ),
    )
    .unwrap();
}

/// The nodes in the gateway's status (none while it does not answer yet).
async fn node_ids(client: &reqwest::Client, url: &str) -> Vec<(String, bool, Value)> {
    let Ok(response) = client.get(format!("{url}/v1/cluster/status")).send().await else {
        return Vec::new();
    };
    let Ok(state) = response.json::<Value>().await else {
        return Vec::new();
    };
    state["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let status = n["status"].as_str().unwrap_or_default();
            (
                n["spec"]["id"].as_str().unwrap().to_owned(),
                status == "healthy" || status == "degraded",
                n["spec"]["tags"].clone(),
            )
        })
        .collect()
}

async fn wait_nodes(client: &reqwest::Client, url: &str, want: &[&str], what: &str) {
    let started = Instant::now();
    loop {
        let nodes = node_ids(client, url).await;
        let routable: Vec<&str> = nodes
            .iter()
            .filter(|(_, r, _)| *r)
            .map(|(id, _, _)| id.as_str())
            .collect();
        if nodes.len() == want.len() && routable == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: nodes {nodes:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One client of the load: chat completions, every other one streamed,
/// each checked to the end.
async fn load(url: String, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let stream = i.is_multiple_of(2);
        let body = json!({
            "model": "sim",
            "stream": stream,
            "max_tokens": 8,
            "messages": [
                {"role": "system", "content": "You are a careful coding agent. ".repeat(40)},
                {"role": "user", "content": format!("request {i}")},
            ],
        });
        let result = async {
            let response = client
                .post(format!("{url}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("{status}: {text}"));
            }
            if stream && !text.trim_end().ends_with("data: [DONE]") {
                return Err(format!("stream did not finish: {text}"));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("request failed: {e}");
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    let dir = std::env::temp_dir().join(format!("mlx-cluster-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            SimNode::start(SimNodeConfig {
                id: format!("n{i}"),
                model_id: "sim".to_owned(),
                time_scale: 20.0,
                ..SimNodeConfig::default()
            })
            .await
            .unwrap(),
        );
    }
    let n = |i: usize| (["n0", "n1", "n2"][i], nodes[i].base_url());
    let port = test_support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let file = dir.join("config.toml");
    write_config(&file, port, &[n(0), n(1)], "cache-aware", "");
    let log = dir.join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let served = Served {
        child: Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
        log,
    };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_nodes(&client, &url, &["n0", "n1"], "start").await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load(
                url.clone(),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
            ))
        })
        .collect();
    let served_by = |i: usize| nodes[i].totals().requests;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. SIGHUP: a third node, another strategy.
    write_config(&file, port, &[n(0), n(1), n(2)], "round-robin", "");
    served.signal("HUP");
    wait_nodes(&client, &url, &["n0", "n1", "n2"], "after SIGHUP").await;
    let before = served_by(2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(served_by(2) > before, "the new node takes traffic");

    // 2. The admin endpoint: n0 leaves while it has requests in flight.
    write_config(&file, port, &[n(1), n(2)], "round-robin", "");
    let answer: Value = client
        .post(format!("{url}/admin/config/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["applied"], json!(["discovery"]), "{answer}");
    assert_eq!(answer["lost"], json!(["n0"]), "{answer}");
    wait_nodes(&client, &url, &["n1", "n2"], "after reload").await;

    // 3. Invalid files are refused, every problem listed, config kept.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("timeout = \"400ms\"", "timeout = \"5s\"\nmax_samples = 0")
            .replace("strategy = \"round-robin\"", "strategy = \"fastest\""),
    )
    .unwrap();
    let response = client
        .post(format!("{url}/admin/config/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let refused: Value = response.json().await.unwrap();
    let paths: Vec<&str> = refused["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"routing.strategy"), "{refused}");
    assert!(paths.contains(&"health.timeout"), "{refused}");
    assert!(paths.contains(&"health.max_samples"), "{refused}");
    served.signal("HUP");
    let started = Instant::now();
    while !served.log().contains("reload refused") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_nodes(&client, &url, &["n1", "n2"], "after refused reloads").await;

    // 4. A node added and removed at run time (token required).
    let spec = json!({"id": "extra", "url": nodes[0].base_url(), "weight": 2});
    let anonymous = client
        .post(format!("{url}/admin/nodes"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let added = client
        .post(format!("{url}/admin/nodes"))
        .bearer_auth(TOKEN)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["announced"], true, "{added}");
    assert_eq!(added["persisted"], false);
    wait_nodes(&client, &url, &["extra", "n1", "n2"], "runtime node").await;
    let tags = node_ids(&client, &url)
        .await
        .into_iter()
        .find(|(id, _, _)| id == "extra")
        .unwrap()
        .2;
    assert_eq!(tags["mlx-cluster.runtime"], "admin");
    let again = client
        .post(format!("{url}/admin/nodes"))
        .bearer_auth(TOKEN)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let removed = client
        .delete(format!("{url}/admin/nodes/extra"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let configured = client
        .delete(format!("{url}/admin/nodes/n1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(configured.status(), 409);
    wait_nodes(&client, &url, &["n1", "n2"], "runtime node removed").await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("reload under load: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0, "serve log:\n{}", served.log());
    assert!(ok >= 40, "too little load to mean anything: {ok}");
    let _ = std::fs::remove_dir_all(&dir);
}
