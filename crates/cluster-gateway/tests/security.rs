//! Client authentication, per-key limits, and what the gateway writes: no key and no prompt text ever appears in its logs
//! (debug level), status, metrics or error bodies. (TLS serving is tested
//! with the OpenAI SDK in `tests/tests/gateway_security.rs`.)
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use cluster_gateway::sha256_hex;
use cluster_sim::{SimNode, SimNodeConfig};
use cluster_types::ClientKey;
use serde_json::{Value, json};
use support::gateway;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_mlx-cluster");
const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-cluster-sec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A node whose chat answers stream SSE events pushed through a channel
/// (one stream at a time); other requests get a JSON answer.
async fn streaming_node() -> (String, mpsc::Sender<mpsc::Receiver<Bytes>>) {
    let (tx, rx) = mpsc::channel::<mpsc::Receiver<Bytes>>(4);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |body: Bytes| {
                let rx = Arc::clone(&rx);
                async move {
                    let streamed =
                        serde_json::from_slice::<Value>(&body).unwrap()["stream"] == json!(true);
                    if !streamed {
                        return Response::builder()
                            .header("content-type", "application/json")
                            .body(Body::from(r#"{"choices":[],"usage":{"prompt_tokens":3}}"#))
                            .unwrap();
                    }
                    let events = rx.lock().await.recv().await.unwrap();
                    let stream = futures::stream::unfold(events, |mut events| async move {
                        events
                            .recv()
                            .await
                            .map(|b| (Ok::<_, std::io::Error>(b), events))
                    });
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(stream))
                        .unwrap()
                }
            }),
        )
        .route(
            "/v1/models",
            axum::routing::get(|| async { r#"{"data":[{"id":"m"}]}"# }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, tx)
}

fn keys(list: Vec<ClientKey>) -> Option<Arc<cluster_gateway::ClientKeys>> {
    Some(Arc::new(cluster_gateway::ClientKeys::new(&list)))
}

#[tokio::test]
async fn client_keys_gate_every_endpoint_but_health() {
    let (node, _streams) = streaming_node().await;
    let (base, _gw) = gateway(&node, |s| {
        s.client_keys = keys(vec![
            ClientKey::secret("alice", "sk-alice-1"),
            ClientKey::hashed("bob", sha256_hex(b"sk-bob-2")),
        ]);
    })
    .await;
    let c = client();
    let post = |path: &str| {
        c.post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(CHAT)
    };

    // No key, a wrong key, a key in the wrong scheme: 401, OpenAI shape.
    for request in [
        post("/v1/chat/completions"),
        post("/v1/chat/completions").bearer_auth("sk-alice-2"),
        post("/v1/completions").header("authorization", "Basic sk-alice-1"),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // Anthropic's shape on /v1/messages.
    let r = post("/v1/messages").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");

    // Valid keys, either header.
    let r = post("/v1/chat/completions")
        .bearer_auth("sk-alice-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post("/v1/chat/completions")
        .header("x-api-key", "sk-bob-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Health stays open; everything else needs a key.
    for path in ["/healthz", "/readyz", "/"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for path in ["/metrics", "/v1/models", "/v1/cluster/status", "/nope"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let metrics = c
        .get(format!("{base}/metrics"))
        .bearer_auth("sk-bob-2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("mlx_cluster_gateway_client_requests_total{key=\"alice\"} 1"));
    // bob: the chat request and this scrape.
    assert!(metrics.contains("mlx_cluster_gateway_client_requests_total{key=\"bob\"} 2"));
    assert!(metrics.contains("mlx_cluster_gateway_unauthenticated_total 8"));
    assert!(!metrics.contains("sk-"));
}

#[tokio::test]
async fn per_key_rate_and_concurrency_limits_answer_429_with_retry_after() {
    let (node, streams) = streaming_node().await;
    let mut slow = ClientKey::secret("slow", "sk-slow");
    slow.requests_per_minute = Some(2);
    let mut one = ClientKey::secret("one", "sk-one");
    one.max_concurrent = Some(1);
    let (base, _gw) = gateway(&node, |s| s.client_keys = keys(vec![slow, one])).await;
    let c = client();
    let chat = |key: &str, body: &'static str| {
        c.post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .bearer_auth(key)
            .body(body)
    };

    for _ in 0..2 {
        assert_eq!(chat("sk-slow", CHAT).send().await.unwrap().status(), 200);
    }
    let r = chat("sk-slow", CHAT).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&after), "{after}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");

    // A stream holds the key's only slot until its last event.
    let (events_tx, events_rx) = mpsc::channel(8);
    streams.send(events_rx).await.unwrap();
    let streamed = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    // The first event is ready before the request: the gateway commits an
    // answer only once its first frame is in.
    events_tx
        .send(Bytes::from_static(b"data: {\"choices\":[]}\n\n"))
        .await
        .unwrap();
    let mut stream = chat("sk-one", streamed).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some());
    let r = chat("sk-one", CHAT).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    events_tx
        .send(Bytes::from_static(b"data: [DONE]\n\n"))
        .await
        .unwrap();
    drop(events_tx);
    while stream.chunk().await.unwrap().is_some() {}
    // The slot is released once the body has ended (on the server's task).
    let started = Instant::now();
    loop {
        let status = chat("sk-one", CHAT).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slot never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Secrets and prompt text that must never appear in anything the gateway
/// writes.
const NODE_KEY: &str = "node-key-3c9e1d77a0";
const ALICE_KEY: &str = "sk-alice-9f2b6a41e8";
const BOB_KEY: &str = "sk-bob-5d7c02ab13";
const WRONG_KEY: &str = "sk-wrong-0a4f9c3e21";
const ADMIN_TOKEN: &str = "admin-token-77e1c5b940";
const MARKER: &str = "PROMPT-MARKER-b41f07d2e9";

#[tokio::test]
async fn no_key_or_prompt_text_appears_in_logs_status_metrics_or_errors() {
    let dir = temp_dir("leaks");
    let a = SimNode::start(SimNodeConfig {
        id: "a".into(),
        time_scale: 50.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let b = SimNode::start(SimNodeConfig {
        id: "b".into(),
        time_scale: 50.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let port = test_support::free_port();
    let key_file = dir.join("keys");
    std::fs::write(
        &key_file,
        format!(
            "bob sha256:{} requests_per_minute=1000\n",
            sha256_hex(BOB_KEY.as_bytes())
        ),
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[discovery]
mode = "static"
nodes = [
  {{ id = "a", url = "{}", api_key = "{NODE_KEY}" }},
  {{ id = "b", url = "{}", api_key = "{NODE_KEY}" }},
]
[health]
check_interval = "500ms"
timeout = "400ms"
[gateway]
listen = "127.0.0.1:{port}"
admin_token = "{ADMIN_TOKEN}"
api_keys = [{{ name = "alice", key = "{ALICE_KEY}", max_concurrent = 2 }}]
api_keys_file = "{}"
"#,
            a.base_url(),
            b.base_url(),
            key_file.display()
        ),
    )
    .unwrap();
    let log = dir.join("gateway.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    let started = Instant::now();
    loop {
        if let Ok(r) = c.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gateway not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut written = String::new();
    let chat = |stream: bool| {
        json!({
            "model": "default_model",
            "stream": stream,
            "max_tokens": 8,
            "messages": [
                {"role": "system", "content": format!("You are a test. {MARKER}")},
                {"role": "user", "content": format!("Repeat {MARKER} please")},
            ],
        })
        .to_string()
    };
    for (key, stream) in [
        (Some(ALICE_KEY), false),
        (Some(ALICE_KEY), true),
        (Some(BOB_KEY), true),
        (Some(WRONG_KEY), false),
        (None, true),
    ] {
        for (header, value) in [
            ("authorization", key.map(|k| format!("Bearer {k}"))),
            ("x-api-key", key.map(str::to_owned)),
        ] {
            let mut r = c
                .post(format!("{base}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(chat(stream));
            if let Some(v) = value {
                r = r.header(header, v);
            }
            written.push_str(&r.send().await.unwrap().text().await.unwrap());
        }
    }
    // Anthropic-shaped refusal, a bad body, an admin call with a wrong token.
    for (path, key, body) in [
        ("/v1/messages", Some(WRONG_KEY), "{}".to_owned()),
        (
            "/v1/chat/completions",
            Some(ALICE_KEY),
            format!("{{\"messages\": \"{MARKER}\""),
        ),
        ("/admin/nodes/a/drain", Some(ALICE_KEY), String::new()),
    ] {
        let mut r = c.post(format!("{base}{path}")).body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let r = r.send().await.unwrap();
        written.push_str(&format!("{:?}", r.headers()));
        written.push_str(&r.text().await.unwrap());
    }
    // Nodes go down: retries and errors get logged.
    for node in [&a, &b] {
        node.crash().await;
        for _ in 0..2 {
            let r = c
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(ALICE_KEY)
                .header("content-type", "application/json")
                .body(chat(false))
                .send()
                .await
                .unwrap();
            written.push_str(&r.text().await.unwrap());
        }
    }
    a.restart().await.unwrap();
    // What the gateway holds about requests: status (with the cache
    // model), metrics, models, and (below) its log.
    let mut state = String::new();
    for path in ["/v1/cluster/status", "/metrics", "/v1/models"] {
        let r = c
            .get(format!("{base}{path}"))
            .bearer_auth(BOB_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        state.push_str(&r.text().await.unwrap());
    }
    // The gateway shuts down cleanly (it logs while draining).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    state.push_str(&std::fs::read_to_string(&log).unwrap());
    state.push_str(&std::fs::read_to_string(dir.join("stdout.log")).unwrap());
    written.push_str(&state);

    assert!(state.contains("mlx_cluster_gateway_client_requests_total{key=\"alice\"}"));
    assert!(state.contains("\"cache\""), "no cache model in the status");
    assert!(
        state.contains("DEBUG"),
        "the log was not written at debug level"
    );
    for secret in [NODE_KEY, ALICE_KEY, BOB_KEY, WRONG_KEY, ADMIN_TOKEN] {
        assert!(
            !written.contains(secret),
            "{secret} appears in what the gateway wrote (log: {})",
            log.display()
        );
    }
    // Prompts are held as hashes only: the marker sent in every prompt is
    // nowhere in the status, the metrics or the log (error bodies may quote
    // a client's own malformed body back to it).
    assert!(
        !state.contains(MARKER),
        "prompt text appears in the gateway's state (log: {})",
        log.display()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_config_reads_the_key_file_and_the_certificate() {
    let dir = temp_dir("check-config");
    let keys = dir.join("keys");
    std::fs::write(&keys, "alice sha256:nothex\n").unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\napi_keys_file = \"{}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            keys.display(),
            dir.join("missing-cert.pem").display(),
            dir.join("missing-key.pem").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.api_keys_file:1.key_sha256"), "{err}");
    std::fs::write(&keys, format!("alice sha256:{}\n", sha256_hex(b"k"))).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing-cert.pem"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
