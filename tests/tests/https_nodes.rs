//! `https://` nodes: a node serving TLS on loopback with a certificate made
//! in the test (rcgen: a test CA and a certificate for `localhost`) — here an
//! mlx-cluster gateway serving TLS in front of a simulated node, the way a
//! TLS-terminating proxy fronts a real server — is validated, probed and
//! proxied, streamed and not, when the node's `tls.ca_file` names the CA.
//! With a CA that did not sign its certificate it is refused with a clear
//! error and shown offline, steadily (never routable, never flapping).
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::time::Duration;

use cluster_sim::{SimNode, SimNodeConfig};
use cluster_tests::tls::TestCa;
use cluster_types::{LoadBalanceStrategy, NodeStatus, NodeTls, TlsConfig};
use gateway_support::{GatewayUnderTest, client, config, wait_until};
use serde_json::json;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-https-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An https:// node: a TLS-serving gateway over one simulated node.
async fn tls_node(ca: &TestCa, sim: &SimNode) -> (GatewayUnderTest, String) {
    let mut cfg = config(&[("sim", sim.base_url())], LoadBalanceStrategy::RoundRobin);
    cfg.gateway.tls = Some(TlsConfig {
        cert: ca.cert_pem.clone(),
        key: ca.key_pem.clone(),
    });
    let node = GatewayUnderTest::start(cfg).await;
    node.wait_all_routable().await;
    let port = node.url.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}");
    (node, url)
}

fn front(url: &str, ca_file: &std::path::Path) -> cluster_types::ClusterConfig {
    let mut cfg = config(
        &[("tls-node", url.to_owned())],
        LoadBalanceStrategy::RoundRobin,
    );
    if let cluster_types::DiscoveryConfig::Static(s) = &mut cfg.discovery {
        s.nodes[0].tls = NodeTls {
            ca_file: Some(ca_file.to_path_buf()),
            insecure_skip_verify: false,
        };
        s.refresh_interval = Duration::from_millis(300);
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_node_is_validated_probed_and_proxied() {
    let dir = temp_dir("ok");
    let ca = TestCa::generate(&dir).unwrap();
    let sim = SimNode::start(SimNodeConfig {
        time_scale: 100.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let model = sim.config().model_id.clone();
    let (node, url) = tls_node(&ca, &sim).await;
    let gw = GatewayUnderTest::start(front(&url, &ca.ca_pem)).await;
    gw.wait_all_routable().await;
    // Probed over TLS for a while: stays routable.
    let checks = Duration::from_millis(2500);
    tokio::time::sleep(checks).await;
    assert_eq!(gw.status_of("tls-node"), Some(NodeStatus::Healthy));

    let http = client();
    for stream in [false, true] {
        let r = http
            .post(format!("{}/chat/completions", gw.v1()))
            .json(&json!({"model": model, "max_tokens": 4, "stream": stream,
                "messages": [{"role": "user", "content": "over TLS"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-mlx-cluster-node"], "tls-node");
        let body = r.text().await.unwrap();
        if stream {
            assert!(body.contains("data: [DONE]"), "{body}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{body}");
        }
    }
    let state = gw.cluster.status();
    assert_eq!(state.nodes[0].metrics.requests_total, 2);
    assert_eq!(state.nodes[0].metrics.failures_total, 0);
    gw.stop().await;
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_clearly_and_the_node_stays_offline() {
    let dir = temp_dir("wrong");
    for sub in ["right", "other"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let ca = TestCa::generate(&dir.join("right")).unwrap();
    let other = TestCa::generate(&dir.join("other")).unwrap();
    let sim = SimNode::start(SimNodeConfig::default()).await.unwrap();
    let (node, url) = tls_node(&ca, &sim).await;
    let gw = GatewayUnderTest::start(front(&url, &other.ca_pem)).await;
    let offline = |gw: &GatewayUnderTest| {
        gw.cluster
            .status()
            .nodes
            .into_iter()
            .find(|n| n.spec.id.as_str() == "tls-node")
    };
    wait_until("the node shown offline", Duration::from_secs(30), || {
        offline(&gw).is_some()
    })
    .await;
    // Several refreshes later it is still offline, with the reason; it was
    // never routable.
    for _ in 0..10 {
        let n = offline(&gw).unwrap();
        assert_eq!(n.status, NodeStatus::Offline);
        let reason = n.health.last_error.unwrap();
        assert!(
            reason.contains("certificate") || reason.contains("UnknownIssuer"),
            "{reason}"
        );
        assert!(!gw.cluster.is_ready());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = client()
        .post(format!("{}/chat/completions", gw.v1()))
        .json(&json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    gw.stop().await;
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
