//! The gateway in front of real mlx_lm.server processes (the tiny-model
//! fixture; HTTP/1.0, one connection per request): the OpenAI Python SDK,
//! failover when a node is killed under steady load (and its return after a
//! restart), and a node killed mid-stream.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cluster_tests::mlx::{MlxFixture, MlxServer};
use cluster_types::LoadBalanceStrategy;
use gateway_support::{
    CHECK_INTERVAL, GatewayUnderTest, assert_ends_with_upstream_error, client, config,
    openai_sdk_through, read_until_content, wait_until,
};
use serde_json::json;

fn fixture() -> MlxFixture {
    MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_against_real_mlx_nodes() {
    let fixture = fixture();
    let a = MlxServer::start(&fixture).await.unwrap();
    let b = MlxServer::start(&fixture).await.unwrap();
    let gw = GatewayUnderTest::start(config(
        &[("mlx-a", a.base_url()), ("mlx-b", b.base_url())],
        LoadBalanceStrategy::CacheAware,
    ))
    .await;
    gw.wait_all_routable().await;
    let result = openai_sdk_through(&gw, &fixture.model_id(), || {
        format!("{}\n{}", a.log_tail(), b.log_tail())
    })
    .await;
    // The second identical prompt went where the first is cached.
    assert!(
        result["stream"]["cached_tokens"].as_u64().unwrap() > 0,
        "{result}"
    );
    let state = gw.cluster.status();
    assert!(state.metrics.cached_tokens_total > 0, "{:?}", state.metrics);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_under_load_fails_no_client_request() {
    let fixture = fixture();
    let a = MlxServer::start(&fixture).await.unwrap();
    let mut b = MlxServer::start(&fixture).await.unwrap();
    let gw = GatewayUnderTest::start(config(
        &[("mlx-a", a.base_url()), ("mlx-b", b.base_url())],
        LoadBalanceStrategy::RoundRobin,
    ))
    .await;
    gw.wait_all_routable().await;

    // Steady non-streamed load from 4 clients until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let url = format!("{}/chat/completions", gw.v1());
    let model = fixture.model_id();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, ok, failed, url, model) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
                url.clone(),
                model.clone(),
            );
            tokio::spawn(async move {
                let client = client();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = client
                        .post(&url)
                        .json(&json!({"model": model, "max_tokens": 2,
                            "messages": [{"role": "user", "content": format!("worker {w} request {i}")}]}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            r.bytes().await.unwrap();
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            let line = format!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                            failed.lock().unwrap().push(line);
                        }
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();

    let routable =
        |gw: &GatewayUnderTest, id: &str| gw.status_of(id).is_some_and(|s| s.is_routable());
    wait_until("both nodes serve traffic", Duration::from_secs(60), || {
        gw.requests_of("mlx-a") > 3 && gw.requests_of("mlx-b") > 3
    })
    .await;

    b.kill().await.unwrap();
    // Out of rotation within one probe interval (plus the probe's own
    // timeout and scheduling slack); passive failures usually win earlier.
    let left_after = wait_until("mlx-b leaves rotation", Duration::from_secs(30), || {
        !routable(&gw, "mlx-b")
    })
    .await;
    assert!(
        left_after <= CHECK_INTERVAL + Duration::from_millis(500) + Duration::from_secs(1),
        "mlx-b left rotation only after {left_after:?} (probe interval {CHECK_INTERVAL:?})"
    );
    let ok_while_down = ok.load(Ordering::Relaxed);
    wait_until(
        "traffic continues on mlx-a",
        Duration::from_secs(60),
        || ok.load(Ordering::Relaxed) > ok_while_down + 10,
    )
    .await;

    b.restart().await.unwrap();
    wait_until("mlx-b returns to rotation", Duration::from_secs(60), || {
        routable(&gw, "mlx-b")
    })
    .await;
    let b_before = gw.requests_of("mlx-b");
    wait_until("mlx-b takes traffic again", Duration::from_secs(60), || {
        gw.requests_of("mlx-b") > b_before + 3
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} of {} client requests failed: {failed:?}",
        failed.len(),
        failed.len() as u64 + ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_mid_stream_sends_an_error_event_and_closes() {
    let fixture = fixture();
    let mut node = MlxServer::start(&fixture).await.unwrap();
    let gw = GatewayUnderTest::start(config(
        &[("mlx-a", node.base_url())],
        LoadBalanceStrategy::CacheAware,
    ))
    .await;
    gw.wait_all_routable().await;
    let mut response = client()
        .post(format!("{}/chat/completions", gw.v1()))
        .json(&json!({
            "model": fixture.model_id(),
            "stream": true,
            "max_tokens": 1_000_000,
            "messages": [{"role": "user", "content": "go on forever"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    read_until_content(&mut response, || node.log_tail()).await;
    node.kill().await.unwrap();
    assert_ends_with_upstream_error(&mut response, Duration::from_secs(60), "mlx-a").await;
    gw.stop().await;
}
