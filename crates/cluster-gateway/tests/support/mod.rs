//! Shared by the gateway's integration tests: a gateway over a bare router
//! on loopback, and a node whose streams never end (and which counts the
//! streams its clients cancelled).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster_facade::{NodeEntry, Router, RouterParams};
use cluster_gateway::{Gateway, GatewaySettings};
use cluster_types::LoadBalanceStrategy;
use cluster_types::{NodeSpec, NodeStatus};
use serde_json::Value;
use test_support::{FakeNode, reply};
use tokio::net::TcpListener;

/// A gateway over a bare router (`strategy`, publishing `entries`) on
/// loopback, with default settings changed by `tweak`: the router, the
/// gateway and its base URL.
pub async fn serve_router(
    entries: Vec<NodeEntry>,
    strategy: LoadBalanceStrategy,
    tweak: impl FnOnce(&mut GatewaySettings),
) -> (Router, Arc<Gateway>, String) {
    let router = Router::new(
        RouterParams::default().with_strategy(strategy),
        cluster_metrics::system_clock(),
    );
    router.publish(entries);
    let mut settings = GatewaySettings::default();
    tweak(&mut settings);
    let gateway = Gateway::new(router.clone(), settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(cluster_gateway::serve(
        listener,
        Arc::clone(&gateway),
        std::future::pending(),
    ));
    (router, gateway, format!("http://{addr}"))
}

/// A gateway over a bare router with one healthy node `n1` at `url`
/// (model `m`); its base URL and the gateway.
pub async fn gateway(
    url: &str,
    tweak: impl FnOnce(&mut GatewaySettings),
) -> (String, Arc<Gateway>) {
    let mut entry = NodeEntry::new(NodeSpec::new("n1", url), NodeStatus::Healthy);
    entry.models = vec!["m".into()];
    let (_, gateway, base) =
        serve_router(vec![entry], LoadBalanceStrategy::RoundRobin, tweak).await;
    (base, gateway)
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
        let node = FakeNode::start(move |seen| {
            if seen.json()["stream"] != Value::Bool(true) {
                return reply::completion("ok", 3, 1);
            }
            s.fetch_add(1, Ordering::SeqCst);
            let e = Arc::clone(&e);
            reply::endless(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
                Duration::from_millis(20),
                move || {
                    e.fetch_add(1, Ordering::SeqCst);
                },
            )
        })
        .await;
        Self {
            url: node.url(),
            streams_ended: ended,
            streams_started: started,
        }
    }
}

#[allow(unused_imports)] // not every test binary uses it
pub use test_support::poll_until as wait_until;
