//! The Anthropic Messages API through the gateway with real clients: the
//! Anthropic Python SDK in front of real mlx_lm.server nodes (text,
//! streaming, a stop sequence, usage with cache reads on the second turn,
//! count_tokens, errors) and in front of simulated nodes that call tools
//! (a tool-use round trip, the arguments streamed in pieces).
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::time::Duration;

use cluster_sim::SimNodeConfig;
use cluster_sim::fleet::{Fleet, FleetConfig};
use cluster_tests::mlx::{MlxFixture, MlxServer};
use cluster_types::LoadBalanceStrategy;
use gateway_support::{GatewayUnderTest, config, config_over_mlx, warm_mlx_nodes};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway_anthropic_sdk.py");

async fn run_sdk(fixture: &MlxFixture, mode: &str, base_url: &str) -> Result<Value, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(fixture.python())
            .arg(SCRIPT)
            .arg(mode)
            .arg(base_url)
            .env("NO_PROXY", "127.0.0.1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "the SDK script ran for more than 600 s".to_owned())?
    .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "SDK script failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_against_real_mlx_nodes() {
    let fixture = MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let nodes = warm_mlx_nodes(&fixture, 3).await;
    let mut config = config_over_mlx(&nodes, LoadBalanceStrategy::CacheAware);
    // The tiny model writes until max_tokens: keep answers short.
    config.gateway.max_output_tokens = 12;
    let gw = GatewayUnderTest::start(config).await;
    gw.wait_all_routable().await;

    let result = match run_sdk(&fixture, "text", &gw.url).await {
        Ok(v) => v,
        Err(e) => panic!(
            "{e}\nnode logs:\n{}",
            nodes
                .iter()
                .map(MlxServer::log_tail)
                .collect::<Vec<_>>()
                .join("\n---\n")
        ),
    };
    // Claude Code's 64000 became the gateway's cap.
    assert_eq!(result["create"]["usage"]["output_tokens"], 12, "{result}");
    assert_eq!(result["stream"]["usage"]["output_tokens"], 12);
    assert!(result["stream"]["text_deltas"].as_u64().unwrap() >= 2);
    // The same prompt, greedy decoding: the same text either way.
    assert_eq!(result["create"]["text"], result["stream"]["text"]);
    // The second turn went to the node holding the first and read it from
    // its cache: the whole first turn but the last token or so.
    assert_eq!(
        result["second_turn"]["node"], result["create"]["node"],
        "{result}"
    );
    let first_prompt = result["create"]["usage"]["input_tokens"].as_u64().unwrap();
    let read = result["second_turn"]["usage"]["cache_read_input_tokens"]
        .as_u64()
        .unwrap();
    assert!(first_prompt > 1000, "{result}");
    assert!(read >= first_prompt - 2, "{result}");
    assert_eq!(result["error"]["status"], 400);
    assert_eq!(
        result["error"]["body"]["error"]["type"],
        "invalid_request_error"
    );
    assert!(result["count_tokens"].as_u64().unwrap() > 100);
    let state = gw.cluster.status();
    assert!(state.metrics.cached_tokens_total > 0, "{:?}", state.metrics);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_tool_use_round_trip_against_sim_nodes() {
    let fixture = MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let node = SimNodeConfig {
        time_scale: 50.0,
        ..SimNodeConfig::default()
    };
    let fleet = Fleet::start(FleetConfig::uniform(2, &node)).await.unwrap();
    let urls = fleet.urls();
    let mut config = config(
        &[("sim-0", urls[0].clone()), ("sim-1", urls[1].clone())],
        LoadBalanceStrategy::CacheAware,
    );
    config.gateway.max_output_tokens = 32;
    let gw = GatewayUnderTest::start(config).await;
    gw.wait_all_routable().await;
    let result = run_sdk(&fixture, "tools", &gw.url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result["create"]["input"]["path"], "sim-path", "{result}");
    assert!(
        result["stream"]["pieces"].as_u64().unwrap() >= 2,
        "{result}"
    );
    assert!(!result["final"]["text"].as_str().unwrap().is_empty());
    gw.stop().await;
    fleet.shutdown().await;
}
