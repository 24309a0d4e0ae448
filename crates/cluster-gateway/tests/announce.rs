//! `mlx-cluster announce` and `mlx-cluster serve` with `mode = "mdns"`, the
//! real binaries, with real multicast confined to two network namespaces
//! joined by a veth pair (`cluster_tests::netns`): the gateway serves in
//! namespace `a`, a simulated node and its announcer run in namespace `b`.
//! Announced → the gateway routes to it; announcer stopped (SIGTERM) →
//! goodbye → the node leaves the gateway.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cluster_sim::{SimNode, SimNodeConfig};
use cluster_tests::netns::NetnsPair;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mlx-cluster");

/// A process started under `ip netns exec`; killed if still running when
/// dropped. `ip netns exec` execs the program, so the pid is the program's.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(mut command: std::process::Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The node ids in the gateway's status and whether each is routable.
async fn nodes(client: &reqwest::Client, gateway: &str) -> Vec<(String, bool)> {
    let Ok(response) = client
        .get(format!("{gateway}/v1/cluster/status"))
        .send()
        .await
    else {
        return Vec::new();
    };
    let Ok(state) = response.json::<Value>().await else {
        return Vec::new();
    };
    state["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    let status = n["status"].as_str().unwrap_or_default();
                    (
                        n["spec"]["id"].as_str().unwrap_or_default().to_owned(),
                        status == "healthy" || status == "degraded",
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn announced_node_is_served_by_an_mdns_gateway_and_leaves_on_goodbye() {
    let pair = NetnsPair::create().unwrap();
    let rt_a = pair.a.runtime().unwrap();
    let rt_b = pair.b.runtime().unwrap();
    let dir = std::env::temp_dir().join(format!("mlx-cluster-announce-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // The node, on every address of namespace b.
    let node = rt_b
        .block_on(rt_b.spawn(SimNode::start(SimNodeConfig {
            id: "desk-mac".to_owned(),
            model_id: "tiny-sim".to_owned(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            ..SimNodeConfig::default()
        })))
        .unwrap()
        .unwrap();
    let node_port = node.addr().port();

    // The gateway in namespace a, discovering over mDNS.
    let gateway_port = rt_a
        .block_on(rt_a.spawn(async {
            let l = tokio::net::TcpListener::bind((NetnsPair::ADDR_A, 0))
                .await
                .unwrap();
            l.local_addr().unwrap().port()
        }))
        .unwrap();
    let config = dir.join("mdns.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[discovery]
mode = "mdns"

[health]
check_interval = "1s"
timeout = "500ms"
recovery_successes = 1

[gateway]
listen = "{}:{gateway_port}"
"#,
            NetnsPair::ADDR_A
        ),
    )
    .unwrap();
    let mut serve = pair.a.command(BIN);
    serve.arg("serve").arg("--config").arg(&config);
    let _gateway = Process::start(serve, dir.join("serve.log"));

    let mut announce = pair.b.command(BIN);
    announce.args([
        "announce",
        "--port",
        &node_port.to_string(),
        "--name",
        "desk-mac",
        "--txt",
        "weight=4",
        "--txt",
        "tag.room=desk",
        "--check-interval",
        "500ms",
    ]);
    let mut announcer = Process::start(announce, dir.join("announce.log"));

    let gateway = format!("http://{}:{gateway_port}", NetnsPair::ADDR_A);
    let handle = rt_a.spawn(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        // Announced → discovered, validated and routable.
        let started = Instant::now();
        while !nodes(&client, &gateway)
            .await
            .contains(&("desk-mac".to_owned(), true))
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "desk-mac not routable at the gateway after 20 s:\nannounce:\n{}",
                announcer.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "announce started -> routable at the gateway in {:?}",
            started.elapsed()
        );
        let status: Value = client
            .get(format!("{gateway}/v1/cluster/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let spec = &status["nodes"][0]["spec"];
        assert_eq!(spec["weight"], 4);
        assert_eq!(spec["tags"]["room"], "desk");
        assert_eq!(spec["tags"]["model"], "tiny-sim");

        let answer = client
            .post(format!("{gateway}/v1/chat/completions"))
            .json(&json!({
                "model": "tiny-sim",
                "messages": [{"role": "user", "content": "hello over mDNS"}],
                "max_tokens": 4,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.unwrap();
        assert!(body["choices"][0]["message"]["content"].is_string());

        // SIGTERM: the announcer says goodbye and exits; the node leaves.
        announcer.sigterm();
        let stopped = Instant::now();
        assert!(announcer.wait_exit(Duration::from_secs(10)).await.success());
        assert!(
            announcer.log().contains("goodbye sent"),
            "{}",
            announcer.log()
        );
        while nodes(&client, &gateway)
            .await
            .iter()
            .any(|(id, _)| id == "desk-mac")
        {
            assert!(
                stopped.elapsed() < Duration::from_secs(5),
                "desk-mac still at the gateway 5 s after the goodbye"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "announce stopped -> gone from the gateway in {:?}",
            stopped.elapsed()
        );
    });
    let result = rt_a.block_on(handle);
    drop(node);
    drop(rt_b);
    if let Err(e) = result {
        let serve_log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
        eprintln!("serve log:\n{serve_log}");
        std::panic::resume_unwind(e.into_panic());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
