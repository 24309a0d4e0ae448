//! The simulated node must answer like the real `mlx_lm.server`: for every
//! endpoint the gateway uses, the JSON key structure of the simulator's
//! answer equals the real server's, and streams have the same framing
//! (leading `: keepalive` comments, chunk shapes, usage chunk, `[DONE]`).
//! Values (ids, timestamps, text) are free to differ; keys are not.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use cluster_sim::{SimNode, SimNodeConfig};
use cluster_tests::mlx::{MlxFixture, MlxServer};
use serde_json::{Value, json};

/// Every key path in a JSON value; array elements share the `[]` segment,
/// and each path records the JSON type at its end (so `null` vs string
/// differences show up too).
fn shape(value: &Value) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    walk(value, String::new(), &mut paths);
    paths
}

fn walk(value: &Value, path: String, out: &mut BTreeSet<String>) {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    out.insert(format!("{path}: {kind}"));
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                walk(child, format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for child in items {
                walk(child, format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// A stream reduced to what must match: the comment lines' prefix, the
/// distinct chunk shapes in order of first appearance, and the last line.
#[derive(Debug, PartialEq)]
struct StreamShape {
    starts_with_keepalive: bool,
    chunk_shapes: Vec<BTreeSet<String>>,
    ends_with_done: bool,
}

fn stream_shape(body: &str) -> StreamShape {
    let mut chunk_shapes: Vec<BTreeSet<String>> = Vec::new();
    let mut last_data = String::new();
    let first_line = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        last_data = data.trim().to_owned();
        if data.trim() == "[DONE]" {
            continue;
        }
        let value: Value = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("stream chunk is not JSON ({e}): {data}"));
        let s = shape(&value);
        if !chunk_shapes.contains(&s) {
            chunk_shapes.push(s);
        }
    }
    StreamShape {
        starts_with_keepalive: first_line.starts_with(": keepalive"),
        chunk_shapes,
        ends_with_done: last_data == "[DONE]",
    }
}

async fn get_json(client: &reqwest::Client, url: String) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> (u16, String) {
    let response = client.post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn assert_same_shape(what: &str, real: &BTreeSet<String>, sim: &BTreeSet<String>) {
    let only_real: Vec<_> = real.difference(sim).collect();
    let only_sim: Vec<_> = sim.difference(real).collect();
    assert!(
        only_real.is_empty() && only_sim.is_empty(),
        "{what}: key structure differs\n  only in mlx_lm.server: {only_real:?}\n  only in the simulator: {only_sim:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_answers_with_the_real_servers_json_shapes() {
    let fixture = MlxFixture::locate().unwrap();
    let real = MlxServer::start(&fixture).await.unwrap();
    let sim = SimNode::start(SimNodeConfig {
        model_id: real.model_id(),
        keep_alive: false,
        time_scale: 1000.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let model = real.model_id();

    for path in ["/v1/models", "/health"] {
        let (real_status, real_body) =
            get_json(&client, format!("{}{path}", real.base_url())).await;
        let (sim_status, sim_body) = get_json(&client, format!("{}{path}", sim.base_url())).await;
        assert_eq!(real_status, sim_status, "GET {path} status");
        assert_same_shape(
            &format!("GET {path}"),
            &shape(&real_body),
            &shape(&sim_body),
        );
    }

    let chat = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a terse assistant for a test."},
            {"role": "user", "content": "Say something short."}
        ],
        "max_tokens": 8,
    });
    let completion = json!({"model": model, "prompt": "Once upon a time", "max_tokens": 8});

    for (path, body) in [
        ("/v1/chat/completions", &chat),
        ("/v1/completions", &completion),
    ] {
        // Non-streamed.
        let (real_status, real_text) =
            post(&client, format!("{}{path}", real.base_url()), body).await;
        let (sim_status, sim_text) = post(&client, format!("{}{path}", sim.base_url()), body).await;
        assert_eq!(real_status, 200, "real {path}: {real_text}");
        assert_eq!(sim_status, 200, "sim {path}: {sim_text}");
        let real_json: Value = serde_json::from_str(&real_text).unwrap();
        let sim_json: Value = serde_json::from_str(&sim_text).unwrap();
        assert_same_shape(
            &format!("POST {path}"),
            &shape(&real_json),
            &shape(&sim_json),
        );
        assert!(
            sim_json
                .pointer("/usage/prompt_tokens_details/cached_tokens")
                .is_some(),
            "sim {path} lacks usage.prompt_tokens_details.cached_tokens: {sim_text}"
        );

        // Streamed, with the usage chunk.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let (real_status, real_text) =
            post(&client, format!("{}{path}", real.base_url()), &streamed).await;
        let (sim_status, sim_text) =
            post(&client, format!("{}{path}", sim.base_url()), &streamed).await;
        assert_eq!(
            (real_status, sim_status),
            (200, 200),
            "streamed {path} status"
        );
        let real_stream = stream_shape(&real_text);
        let sim_stream = stream_shape(&sim_text);
        assert!(
            real_stream.ends_with_done,
            "real {path} stream: {real_text}"
        );
        assert_eq!(
            real_stream.starts_with_keepalive, sim_stream.starts_with_keepalive,
            "{path}: leading keepalive comment\nreal:\n{real_text}\nsim:\n{sim_text}"
        );
        assert_eq!(
            real_stream.ends_with_done, sim_stream.ends_with_done,
            "{path}: [DONE]"
        );
        let real_shapes: BTreeSet<_> = real_stream.chunk_shapes.iter().cloned().collect();
        let sim_shapes: BTreeSet<_> = sim_stream.chunk_shapes.iter().cloned().collect();
        assert_eq!(
            real_shapes, sim_shapes,
            "{path}: streamed chunk shapes differ\nreal:\n{real_text}\nsim:\n{sim_text}"
        );
    }
}
