//! The real-mlx fixture works: the server starts, lists the tiny model,
//! answers chat completions with prompt-cache usage, and survives a
//! kill / restart on the same port. A missing fixture fails these tests.
#![allow(clippy::unwrap_used)]

use cluster_tests::mlx::{MlxFixture, MlxServer};
use serde_json::{Value, json};

fn fixture() -> MlxFixture {
    match MlxFixture::locate() {
        Ok(fixture) => fixture,
        Err(e) => panic!("{e}"),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn chat(server: &MlxServer, content: &str) -> Value {
    let response = client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .json(&json!({
            "model": server.model_id(),
            "messages": [
                {"role": "system", "content": "You are a test fixture."},
                {"role": "user", "content": content},
            ],
            "max_tokens": 4,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "log:\n{}", server.log_tail());
    response.json().await.unwrap()
}

#[tokio::test]
async fn serves_models_and_chat_with_cached_tokens() {
    let fixture = fixture();
    let server = MlxServer::start(&fixture).await.unwrap();

    let models: Value = client()
        .get(format!("{}/v1/models", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [fixture.model_id().as_str()]);

    let health: Value = client()
        .get(format!("{}/health", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));

    let prompt = "cluster gateway router cache ".repeat(40);
    let first = chat(&server, &prompt).await;
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");
    assert_eq!(first["choices"][0]["finish_reason"], "length");
    let usage = &first["usage"];
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 100, "{usage}");
    assert_eq!(usage["completion_tokens"], 4);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        prompt_tokens + 4,
        "{usage}"
    );
    let cached_first = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();

    // The same prompt again is served from mlx_lm's prompt cache, and the
    // greedy answer is the same.
    let second = chat(&server, &prompt).await;
    let cached_second = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached_second > cached_first,
        "cached_tokens {cached_first} then {cached_second}"
    );
    assert_eq!(second["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(
        second["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );
}

#[tokio::test]
async fn kill_refuses_connections_and_restart_reuses_the_port() {
    let mut server = MlxServer::start(&fixture()).await.unwrap();
    let port = server.port();
    let url = format!("{}/v1/models", server.base_url());
    assert!(server.is_running());

    server.kill().await.unwrap();
    assert!(!server.is_running());
    let refused = client().get(&url).send().await.unwrap_err();
    assert!(refused.is_connect(), "{refused:?}");
    server.kill().await.unwrap(); // idempotent

    server.restart().await.unwrap();
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // HTTP/1.0: the server closes every connection after one answer.
    assert_eq!(response.version(), reqwest::Version::HTTP_10);

    // A restarted server has an empty prompt cache.
    let answer = chat(&server, "after restart").await;
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

#[tokio::test]
async fn broken_generation_thread_keeps_listing_models_but_fails_health() {
    let mut server = MlxServer::start(&fixture()).await.unwrap();
    server.break_generation().await.unwrap();

    let models = client()
        .get(format!("{}/v1/models", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let health = client()
        .get(format!("{}/health", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "unavailable"})
    );
    let completion = client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(completion.status(), 404);
    assert_eq!(
        completion.json::<Value>().await.unwrap(),
        json!({"error": "generation thread died"})
    );

    server.restart().await.unwrap();
    let health = client()
        .get(format!("{}/health", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
