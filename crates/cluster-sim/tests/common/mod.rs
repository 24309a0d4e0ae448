//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use cluster_sim::{SimNode, SimNodeConfig};
use serde_json::{Value, json};

/// A fast node: time scale 1000, so a 20-second prefill takes 20 ms.
pub fn fast_config() -> SimNodeConfig {
    SimNodeConfig {
        time_scale: 1000.0,
        ..SimNodeConfig::default()
    }
}

pub async fn start_fast() -> SimNode {
    SimNode::start(fast_config()).await.unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A chat body with a long system prompt.
pub fn chat_body(user: &str, stream: bool, include_usage: bool) -> Value {
    let system = "You are a careful coding agent. ".repeat(200);
    let mut body = json!({
        "model": "default_model",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user}
        ],
        "max_tokens": 16,
        "stream": stream
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Splits an SSE body into its events (blank-line separated).
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The JSON payloads of the `data:` events, `[DONE]` excluded.
pub fn sse_data(text: &str) -> Vec<Value> {
    sse_events(text)
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Sorted keys of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}
