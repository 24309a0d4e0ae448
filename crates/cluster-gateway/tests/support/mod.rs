//! Shared by the gateway's integration tests: a gateway over a bare router
//! on loopback, and a node whose streams never end (and which counts the
//! streams its clients cancelled).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use cluster_facade::{NodeEntry, Router, RouterParams};
use cluster_gateway::{Gateway, GatewaySettings};
use cluster_types::LoadBalanceStrategy;
use cluster_types::{NodeSpec, NodeStatus};
use serde_json::Value;
use tokio::net::TcpListener;

/// A gateway over a bare router with one healthy node `n1` at `url`
/// (model `m`); its base URL and the gateway.
pub async fn gateway(
    url: &str,
    tweak: impl FnOnce(&mut GatewaySettings),
) -> (String, Arc<Gateway>) {
    let router = Router::new(
        RouterParams::default().with_strategy(LoadBalanceStrategy::RoundRobin),
        cluster_metrics::system_clock(),
    );
    let mut entry = NodeEntry::new(NodeSpec::new("n1", url), NodeStatus::Healthy);
    entry.models = vec!["m".into()];
    router.publish(vec![entry]);
    let mut settings = GatewaySettings::default();
    tweak(&mut settings);
    let gateway = Gateway::new(router, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(cluster_gateway::serve(
        listener,
        Arc::clone(&gateway),
        std::future::pending(),
    ));
    (format!("http://{addr}"), gateway)
}

/// Counts a stream's end when dropped.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A node answering non-streamed chat requests at once and streamed ones
/// with an event every 20 ms, forever.
pub struct EndlessNode {
    pub url: String,
    /// Streams whose client (the gateway) went away.
    pub streams_ended: Arc<AtomicUsize>,
    pub streams_started: Arc<AtomicUsize>,
}

impl EndlessNode {
    pub async fn start() -> Self {
        let ended = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let (e, s) = (Arc::clone(&ended), Arc::clone(&started));
        let app = axum::Router::new()
            .route(
                "/v1/chat/completions",
                axum::routing::post(move |body: Bytes| {
                    let (e, s) = (Arc::clone(&e), Arc::clone(&s));
                    async move {
                        let streamed = serde_json::from_slice::<Value>(&body)
                            .is_ok_and(|v| v["stream"] == Value::Bool(true));
                        if !streamed {
                            return Response::builder()
                                .header("content-type", "application/json")
                                .body(Body::from(
                                    r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
                                ))
                                .unwrap();
                        }
                        s.fetch_add(1, Ordering::SeqCst);
                        let guard = DropCounter(e);
                        let stream = futures::stream::unfold(guard, |guard| async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Some((
                                Ok::<_, std::io::Error>(Bytes::from_static(
                                    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
                                )),
                                guard,
                            ))
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
        Self {
            url,
            streams_ended: ended,
            streams_started: started,
        }
    }
}

/// Polls `condition` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
