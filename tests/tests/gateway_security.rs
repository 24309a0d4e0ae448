//! Serving TLS to clients: the gateway with `gateway.tls` (a certificate
//! signed by a throwaway CA) and client keys, used by a rustls client and by
//! the real OpenAI Python SDK.
#![allow(clippy::unwrap_used)]

mod gateway_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_sim::{SimNode, SimNodeConfig};
use cluster_tests::tls::TestCa;
use cluster_types::{ClientKey, LoadBalanceStrategy, TlsConfig};
use gateway_support::{GatewayUnderTest, config};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "sk-tls-test-4e1b";

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn tls_gateway(ca: &TestCa, node: &SimNode) -> GatewayUnderTest {
    let mut config = config(&[("sim", node.base_url())], LoadBalanceStrategy::CacheAware);
    config.gateway.tls = Some(TlsConfig {
        cert: ca.cert_pem.clone(),
        key: ca.key_pem.clone(),
    });
    config.gateway.api_keys = vec![ClientKey::secret("sdk", KEY)];
    let gw = GatewayUnderTest::start(config).await;
    gw.wait_all_routable().await;
    gw
}

/// `GET path` over TLS with a rustls client trusting only the test CA.
async fn tls_get(addr: SocketAddr, ca: &TestCa, path: &str) -> String {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca.ca_pem).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serving_to_a_rustls_client_and_plain_http_is_refused() {
    let dir = temp_dir("tls-rustls");
    let ca = TestCa::generate(&dir).unwrap();
    let node = SimNode::start(SimNodeConfig::default()).await.unwrap();
    let gw = tls_gateway(&ca, &node).await;
    let addr: SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    let answer = tls_get(addr, &ca, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = tls_get(addr, &ca, "/v1/models").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Plain HTTP on the TLS port gets no HTTP answer; the failed handshake
    // is counted.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out).await;
    assert!(!out.starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    loop {
        let mut text = String::new();
        gw.gateway.connections().encode(&mut text, false);
        if text.contains("mlx_cluster_gateway_tls_handshake_failures_total 1") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_over_tls_with_a_client_key() {
    let dir = temp_dir("tls-sdk");
    let ca = TestCa::generate(&dir).unwrap();
    let node = SimNode::start(SimNodeConfig {
        time_scale: 100.0,
        ..SimNodeConfig::default()
    })
    .await
    .unwrap();
    let model = node.config().model_id.clone();
    let gw = tls_gateway(&ca, &node).await;
    let port = gw.url.rsplit(':').next().unwrap().to_owned();
    let fixture = cluster_tests::mlx::MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway_tls_sdk.py");
    let out = tokio::process::Command::new(fixture.python())
        .arg(script)
        .arg(format!("https://localhost:{port}/v1"))
        .arg(&model)
        .arg(KEY)
        .arg(&ca.ca_pem)
        .env("NO_PROXY", "localhost,127.0.0.1")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        result["chat_prompt_tokens"].as_u64().unwrap() > 0,
        "{result}"
    );
    assert!(result["stream_chunks"].as_u64().unwrap() >= 2, "{result}");
    assert_eq!(result["wrong_key"]["status"], 401, "{result}");
    assert_eq!(result["wrong_key"]["code"], "invalid_api_key", "{result}");
    assert_eq!(result["untrusted"], "refused", "{result}");
    let keys = gw.gateway.settings().client_keys.clone().unwrap();
    assert_eq!(keys.requests_of("sdk"), 2);
    gw.stop().await;
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
