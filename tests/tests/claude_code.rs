//! The real Claude Code CLI (the npm package, run headless) through the
//! gateway in front of three real mlx_lm.server nodes: it exits 0 with the
//! node's answer as its result, and the second turn of its conversation
//! (`--continue`) goes to the node that holds the first turn's prompt and
//! reads it from that node's cache.
//!
//! The nodes serve the tiny model's variant that ends its answers after a
//! few tokens (the same text whatever the prompt): Claude Code treats an
//! answer cut at `max_tokens` as an error after asking three times for the
//! rest.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_tests::claude_code::ClaudeCode;
use cluster_tests::mlx::{MlxFixture, MlxServer};
use cluster_types::LoadBalanceStrategy;
use gateway_support::{GatewayUnderTest, client, config_over_mlx, warm_mlx_nodes};
use serde_json::{Value, json};

/// Claude Code retries failing requests for minutes; a cold first turn
/// (a ~11k-token prompt on a CPU node) takes well under a minute.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn requests_per_node(gw: &GatewayUnderTest) -> BTreeMap<String, u64> {
    gw.cluster
        .status()
        .nodes
        .iter()
        .map(|n| (n.spec.id.to_string(), n.metrics.requests_total))
        .collect()
}

/// The nodes that served requests between two snapshots.
fn served(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter(|(id, n)| before.get(*id).is_some_and(|b| *n > b))
        .map(|(id, _)| id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_through_the_gateway_and_its_second_turn_reads_the_cache() {
    let fixture = MlxFixture::locate_chat().unwrap_or_else(|e| panic!("{e}"));
    let claude = ClaudeCode::locate().unwrap_or_else(|e| panic!("{e}"));
    let nodes = warm_mlx_nodes(&fixture, 3).await;
    let mut config = config_over_mlx(&nodes, LoadBalanceStrategy::CacheAware);
    config.gateway.max_output_tokens = 64;
    let gw = GatewayUnderTest::start(config).await;
    gw.wait_all_routable().await;

    // What the model answers, whatever it is asked.
    let direct: Value = client()
        .post(format!("{}/v1/chat/completions", nodes[0].base_url()))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(direct["choices"][0]["finish_reason"], "stop", "{direct}");
    let answer = direct["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!answer.is_empty());

    let logs = || {
        nodes
            .iter()
            .map(MlxServer::log_tail)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let session = claude.session(&gw.url).unwrap();
    let before = requests_per_node(&gw);
    let first = session
        .prompt("Say hello to the cluster.", false, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(
        first.success,
        "claude exited {}:\n{}\n{}\nnode logs:\n{}",
        first.status,
        first.stdout,
        first.stderr,
        logs()
    );
    let result = first.json().unwrap_or_else(|| panic!("{}", first.stdout));
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], answer.as_str(), "{result}");
    // Claude Code's system prompt and tools: thousands of tokens.
    let prompt_tokens = result["usage"]["input_tokens"].as_u64().unwrap()
        + result["usage"]["cache_read_input_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 5000, "{result}");
    let after_first = requests_per_node(&gw);
    let home = served(&before, &after_first);
    assert_eq!(home.len(), 1, "the first turn went to {home:?}");

    let second = session
        .prompt("And once more, please.", true, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(
        second.success,
        "claude exited {}:\n{}\n{}",
        second.status, second.stdout, second.stderr
    );
    let result2 = second.json().unwrap_or_else(|| panic!("{}", second.stdout));
    assert_eq!(result2["is_error"], false, "{result2}");
    assert_eq!(result2["result"], answer.as_str());
    assert_eq!(
        result2["session_id"], result["session_id"],
        "the same conversation"
    );
    // Routed to the node holding the first turn, which read it from its
    // prompt cache: all of it but the last token or so.
    let after_second = requests_per_node(&gw);
    assert_eq!(served(&after_first, &after_second), home, "{result2}");
    let read = result2["usage"]["cache_read_input_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        read + 8 >= prompt_tokens,
        "read {read} of {prompt_tokens}: {result2}"
    );
    let state = gw.cluster.status();
    assert!(
        state.metrics.cached_tokens_total >= read,
        "{:?}",
        state.metrics
    );
    gw.stop().await;
}
