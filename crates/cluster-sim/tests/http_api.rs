//! The HTTP node answers with mlx_lm.server's shapes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{chat_body, client, keys, sse_data, sse_events, start_fast};
use serde_json::{Value, json};

#[tokio::test]
async fn models_and_health() {
    let node = start_fast().await;
    let base = node.base_url();
    let models: Value = client()
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let card = &models["data"][0];
    assert_eq!(keys(card), ["created", "id", "object"]);
    assert_eq!(card["object"], "model");
    assert_eq!(card["id"], node.config().model_id.as_str());

    let health = client().get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), r#"{"status": "ok"}"#);

    let missing = client().get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn chat_completion_non_streamed() {
    let node = start_fast().await;
    let url = format!("{}/v1/chat/completions", node.base_url());
    let body: Value = client()
        .post(&url)
        .json(&chat_body("fix the bug", false, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys(&body),
        [
            "choices",
            "created",
            "id",
            "model",
            "object",
            "system_fingerprint",
            "usage"
        ]
    );
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "default_model");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(keys(choice), ["finish_reason", "index", "message"]);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"].as_str().unwrap().len(), 16 * 4);
    assert_eq!(choice["finish_reason"], "length");
    let usage = &body["usage"];
    assert_eq!(
        keys(usage),
        [
            "completion_tokens",
            "prompt_tokens",
            "prompt_tokens_details",
            "total_tokens"
        ]
    );
    assert_eq!(usage["completion_tokens"], 16);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 16
    );
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);

    // Same system prompt again: the system block is cached.
    let again: Value = client()
        .post(&url)
        .json(&chat_body("another question", false, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached > 1000, "cached {cached}");

    // The reply is deterministic.
    let third: Value = client()
        .post(&url)
        .json(&chat_body("fix the bug", false, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        third["choices"][0]["message"],
        body["choices"][0]["message"]
    );
}

#[tokio::test]
async fn chat_completion_streamed_with_usage() {
    let node = start_fast().await;
    let url = format!("{}/v1/chat/completions", node.base_url());
    let response = client()
        .post(&url)
        .json(&chat_body("stream please", true, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    assert!(events[0].starts_with(": keepalive "), "{}", events[0]);
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    let data = sse_data(&text);
    let (usage_chunk, chunks) = data.split_last().unwrap();
    let mut content = String::new();
    for chunk in chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(
            keys(chunk),
            [
                "choices",
                "created",
                "id",
                "model",
                "object",
                "system_fingerprint"
            ]
        );
        let choice = &chunk["choices"][0];
        assert_eq!(choice["delta"]["role"], "assistant");
        content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(content.len(), 16 * 4);
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 16);
    assert!(usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert_eq!(usage_chunk["id"], chunks[0]["id"]);
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let node = start_fast().await;
    let url = format!("{}/v1/chat/completions", node.base_url());
    let text = client()
        .post(&url)
        .json(&chat_body("no usage", true, false))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert!(
        data.iter()
            .all(|c| c.get("usage").is_none() && !c["choices"].as_array().unwrap().is_empty())
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn text_completions() {
    let node = start_fast().await;
    let url = format!("{}/v1/completions", node.base_url());
    let body: Value = client()
        .post(&url)
        .json(&json!({"prompt": "def fib(n):", "max_tokens": 8}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(
        keys(&body["choices"][0]),
        ["finish_reason", "index", "text"]
    );
    assert_eq!(body["usage"]["completion_tokens"], 8);
    // BOS + 3 four-byte chunks.
    assert_eq!(body["usage"]["prompt_tokens"], 4);

    let text = client()
        .post(&url)
        .json(&json!({"prompt": "def fib(n):", "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert!(
        data[..data.len() - 1]
            .iter()
            .all(|c| c["object"] == "text_completion")
    );
    assert_eq!(data.last().unwrap()["usage"]["completion_tokens"], 8);
}

#[tokio::test]
async fn bad_requests_get_400() {
    let node = start_fast().await;
    let url = format!("{}/v1/chat/completions", node.base_url());
    let response = client().post(&url).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Invalid JSON"));
    let response = client()
        .post(&url)
        .json(&json!({"model": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn peer_router_endpoints_and_metrics() {
    let node = start_fast().await;
    let base = node.base_url();
    let c = client();
    assert_eq!(
        c.get(format!("{base}/health_generate"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let info: Value = c
        .get(format!("{base}/get_model_info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["is_generation"], true);
    assert_eq!(info["model_path"], node.config().model_id.as_str());
    let server: Value = c
        .get(format!("{base}/get_server_info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(server["prompt_cache_size"], 10);
    assert_eq!(server["max_running_requests"], 32);

    c.post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("count me", false, false))
        .send()
        .await
        .unwrap();
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "mlx_sim_queue_depth",
        "mlx_sim_running_requests",
        "mlx_sim_prompt_cache_entries",
        "mlx_sim_prompt_cache_usage_ratio",
        "mlx_sim_prompt_tokens_total",
        "vllm:num_requests_waiting",
        "sglang:num_queue_reqs",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    let line = metrics
        .lines()
        .find(|l| l.starts_with("mlx_sim_requests_total{"))
        .unwrap();
    assert!(line.ends_with(" 1"), "{line}");

    let stats: Value = c
        .get(format!("{base}/admin/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["totals"]["requests"], 1);
    assert!(!stats["cache_entry_tokens"].as_array().unwrap().is_empty());
    assert_eq!(
        c.delete(format!("{base}/admin/cache"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(node.with_model(|m| m.cache().len()), 0);
}

/// Sends raw bytes and reads until the server closes.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http10_close_mode_like_mlx() {
    let node = cluster_sim::SimNode::start(cluster_sim::SimNodeConfig {
        keep_alive: false,
        ..common::fast_config()
    })
    .await
    .unwrap();
    let answer = raw_exchange(
        node.addr(),
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with(r#"{"status": "ok"}"#), "{answer}");

    let body = serde_json::to_string(&chat_body("stream over http/1.0", true, true)).unwrap();
    let answer = raw_exchange(
        node.addr(),
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding"),
        "{answer}"
    );
    assert!(answer.ends_with("data: [DONE]\n\n"), "{answer}");
}

#[tokio::test]
async fn transport_details_like_mlx() {
    let node = start_fast().await;
    let base = node.base_url();
    let c = client();
    let health = c.get(format!("{base}/health")).send().await.unwrap();
    for h in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
    ] {
        assert_eq!(health.headers()[h], "*", "{h}");
    }
    let options = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/v1/chat/completions"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    let put = c
        .put(format!("{base}/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 501);
    let other = c
        .post(format!("{base}/v1/embeddings"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(other.text().await.unwrap(), "Not Found");

    // Python-style JSON spacing.
    let text = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.starts_with(r#"{"object": "list", "data": [{"id": "#),
        "{text}"
    );

    // Chunked bodies (no Content-Length) are refused.
    let answer = raw_exchange(
        node.addr(),
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    assert!(
        answer.contains(r#"{"error": "Content-Length header is required"}"#),
        "{answer}"
    );
}

#[tokio::test]
async fn validation_errors_like_mlx() {
    let node = start_fast().await;
    let url = format!("{}/v1/chat/completions", node.base_url());
    let cases = [
        (json!([1]), "Request should be a JSON dictionary"),
        (
            json!({"model": "default_model"}),
            "Request did not contain messages",
        ),
        (
            json!({"messages": [], "max_tokens": 0}),
            "max_tokens must be at least 1",
        ),
        (
            json!({"messages": [], "model": 5}),
            "requested_model must be of type str",
        ),
        (
            json!({"messages": [], "stream": "true"}),
            "stream must be of type bool",
        ),
    ];
    for (body, message) in cases {
        let response = client().post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error, json!({"error": message}));
    }
    let response = client()
        .post(format!("{}/v1/completions", node.base_url()))
        .json(&json!({"max_tokens": 3}))
        .send()
        .await
        .unwrap();
    let error: Value = response.json().await.unwrap();
    assert_eq!(error, json!({"error": "Request did not contain a prompt"}));
}

#[tokio::test]
async fn keepalive_progress_and_cache_counts_like_mlx() {
    let node = start_fast().await;
    let url = format!("{}/v1/chat/completions", node.base_url());
    let body = chat_body("stream please", true, true);
    let first = client()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let usage = sse_data(&first).last().unwrap()["usage"].clone();
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    let comments: Vec<String> = sse_events(&first)
        .into_iter()
        .filter(|e| e.starts_with(':'))
        .collect();
    assert_eq!(
        comments,
        [
            format!(": keepalive {}/{prompt}", prompt - 1),
            format!(": keepalive {prompt}/{prompt}")
        ]
    );
    // The very same request: everything but the last token is cached, and the
    // only progress line is 1/1.
    let again = client()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let usage = sse_data(&again).last().unwrap()["usage"].clone();
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        prompt - 1
    );
    assert!(again.starts_with(": keepalive 1/1\n\n"), "{again}");
}

#[tokio::test]
async fn empty_stream_options_end_the_stream_early_like_mlx() {
    let node = start_fast().await;
    let url = format!("{}/v1/chat/completions", node.base_url());
    let mut body = chat_body("quirk", true, false);
    body["stream_options"] = json!({});
    let text = client()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(sse_data(&text).iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        sse_data(&text).last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

fn tool_request(user: &str, stream: bool) -> Value {
    json!({
        "model": "sim",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "max_tokens": 64,
        "messages": [{"role": "user", "content": user}],
        "tools": [{"type": "function", "function": {"name": "read_file", "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "max_lines": {"type": "integer"}}, "required": ["path", "max_lines"]}}}]
    })
}

#[tokio::test]
async fn tool_calls_on_the_trigger_streamed_in_fragments() {
    let node = start_fast().await;
    let url = format!("{}/v1/chat/completions", node.base_url());
    let full: Value = client()
        .post(&url)
        .json(&tool_request("Open a.txt. sim:call read_file", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let choice = &full["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "read_file");
    let arguments = call["function"]["arguments"].as_str().unwrap().to_owned();
    assert_eq!(arguments, r#"{"max_lines":1,"path":"sim-path"}"#);
    assert!(call["id"].as_str().unwrap().starts_with("call_"));

    let text = client()
        .post(&url)
        .json(&tool_request("Open a.txt. sim:call read_file", true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    let (usage, chunks) = data.split_last().unwrap();
    let pieces: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(pieces.len() >= 3, "arguments come in fragments: {text}");
    assert_eq!(pieces[0]["index"], 0);
    assert_eq!(pieces[0]["id"], call["id"]);
    assert_eq!(pieces[0]["function"]["name"], "read_file");
    assert!(pieces[1..].iter().all(|p| p.get("id").is_none()));
    let streamed: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, arguments);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(usage["usage"]["completion_tokens"], pieces.len());

    // The tool's result: the usual text answer.
    let mut after = tool_request("Open a.txt. sim:call read_file", false);
    after["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": null, "tool_calls": [call]}),
        json!({"role": "tool", "tool_call_id": call["id"], "content": "hello"}),
    ]);
    let answer: Value = client()
        .post(&url)
        .json(&after)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert!(answer["choices"][0]["message"]["content"].is_string());
    assert!(answer["choices"][0]["message"].get("tool_calls").is_none());
}
