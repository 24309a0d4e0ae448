//! `HttpHealthChecker` against loopback servers that misbehave: hang past the
//! timeout, 500, 503 with Retry-After, 503 loading, garbage JSON, connection
//! reset, slow headers, slow body, refused connections, oversized bodies.
//!
//! These use real sockets on 127.0.0.1 and therefore real time; the only
//! waits are the checker's own (short) timeouts.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cluster_health::{HealthChecker, HealthError, HttpHealthChecker, ResponseValidation};
use cluster_types::{ApiKey, NodeSpec};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_millis(400);
const MODELS: &str =
    r#"{"object":"list","data":[{"id":"tiny-llama","object":"model","created":1},{"id":"other"}]}"#;

/// What a test server does with each request.
#[derive(Clone)]
enum Behavior {
    /// `HTTP/1.1 <status>` with these extra headers and body.
    Respond {
        status: &'static str,
        headers: Vec<String>,
        body: String,
    },
    /// `HTTP/1.0 200` without Content-Length, body ends at close (what
    /// mlx_lm.server does).
    Http10(&'static str),
    /// Reads the request and never answers.
    Hang,
    /// Reads the request, then closes with RST.
    Reset,
    /// Sends the status line, then stalls before the rest of the headers.
    SlowHeaders,
    /// Sends complete headers, then half the body, then stalls.
    SlowBody,
}

fn ok(body: &str) -> Behavior {
    Behavior::Respond {
        status: "200 OK",
        headers: vec!["Content-Type: application/json".into()],
        body: body.to_owned(),
    }
}

struct Server {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn serve(behavior: Behavior) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let behavior = behavior.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let _ = handle(stream, behavior, seen).await;
            });
        }
    });
    Server { url, requests }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn handle(
    mut stream: TcpStream,
    behavior: Behavior,
    seen: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    // Keep-alive: answer every request on the connection.
    loop {
        let head = read_head(&mut stream).await?;
        if head.is_empty() {
            return Ok(());
        }
        seen.lock().push(head);
        match &behavior {
            Behavior::Respond {
                status,
                headers,
                body,
            } => {
                let mut response =
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
                for h in headers {
                    response.push_str(h);
                    response.push_str("\r\n");
                }
                response.push_str("\r\n");
                response.push_str(body);
                stream.write_all(response.as_bytes()).await?;
            }
            Behavior::Http10(body) => {
                let response =
                    format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await?;
                return Ok(());
            }
            Behavior::Hang => {
                std::future::pending::<()>().await;
            }
            Behavior::Reset => {
                stream.set_zero_linger()?;
                drop(stream);
                return Ok(());
            }
            Behavior::SlowHeaders => {
                stream.write_all(b"HTTP/1.1 200 OK\r\n").await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_secs(30)).await;
                return Ok(());
            }
            Behavior::SlowBody => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\":[")
                    .await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_secs(30)).await;
                return Ok(());
            }
        }
    }
}

fn checker() -> HttpHealthChecker {
    HttpHealthChecker::builder()
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

fn node(server: &Server) -> NodeSpec {
    NodeSpec::new("node-a", server.url.clone())
}

#[tokio::test]
async fn healthy_model_list() {
    let server = serve(ok(MODELS)).await;
    let c = checker();
    let latency = c.check(&node(&server)).await.unwrap();
    assert!(latency < TIMEOUT);
    assert_eq!(
        c.list_models(&node(&server)).await.unwrap(),
        vec!["tiny-llama", "other"]
    );
    let head = server.requests.lock()[0].clone();
    assert!(head.starts_with("GET /v1/models HTTP/1.1\r\n"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("authorization"));
}

#[tokio::test]
async fn http10_close_delimited_body_like_mlx() {
    let server = serve(Behavior::Http10(MODELS)).await;
    let c = checker();
    c.check(&node(&server)).await.unwrap();
    c.check(&node(&server)).await.unwrap();
    assert_eq!(c.list_models(&node(&server)).await.unwrap().len(), 2);
}

#[tokio::test]
async fn hang_past_the_timeout() {
    let server = serve(Behavior::Hang).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    match err {
        HealthError::Timeout { node, timeout } => {
            assert_eq!(node.as_str(), "node-a");
            assert_eq!(timeout, TIMEOUT);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn slow_headers_time_out() {
    let server = serve(Behavior::SlowHeaders).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(matches!(err, HealthError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn slow_body_times_out() {
    let server = serve(Behavior::SlowBody).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(matches!(err, HealthError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn internal_server_error_is_a_failed_status() {
    let server = serve(Behavior::Respond {
        status: "500 Internal Server Error",
        headers: vec![],
        body: "boom".into(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    match &err {
        HealthError::FailedStatus { node, code, text } => {
            assert_eq!(node.as_str(), "node-a");
            assert_eq!(*code, 500);
            assert_eq!(text, "Internal Server Error");
        }
        other => panic!("expected FailedStatus, got {other:?}"),
    }
    assert_eq!(err.observation(), cluster_health::Observation::Failure);
}

#[tokio::test]
async fn not_found_is_a_failed_status() {
    let server = serve(Behavior::Respond {
        status: "404 Not Found",
        headers: vec![],
        body: String::new(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(
        matches!(err, HealthError::FailedStatus { code: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn service_unavailable_with_retry_after_is_overload() {
    let server = serve(Behavior::Respond {
        status: "503 Service Unavailable",
        headers: vec!["Retry-After: 7".into()],
        body: "busy".into(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    match err {
        HealthError::Overloaded {
            code, retry_after, ..
        } => {
            assert_eq!(code, 503);
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
}

#[tokio::test]
async fn too_many_requests_with_an_http_date() {
    let server = serve(Behavior::Respond {
        status: "429 Too Many Requests",
        headers: vec!["Retry-After: Fri, 31 Dec 1999 23:59:59 GMT".into()],
        body: String::new(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    match err {
        // A date in the past: retry at once.
        HealthError::Overloaded {
            code, retry_after, ..
        } => {
            assert_eq!(code, 429);
            assert_eq!(retry_after, Some(Duration::ZERO));
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
}

#[tokio::test]
async fn service_unavailable_loading_model_is_loading() {
    let server = serve(Behavior::Respond {
        status: "503 Service Unavailable",
        headers: vec!["Content-Type: application/json".into()],
        body: r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#
            .into(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(matches!(err, HealthError::Loading { .. }), "{err:?}");
    assert_eq!(err.observation(), cluster_health::Observation::Loading);
}

#[tokio::test]
async fn garbage_json_is_invalid() {
    for body in [
        "{\"data\": [",
        "<html>hello</html>",
        "{\"data\": {\"id\": 1}}",
        "[]",
        "",
    ] {
        let server = serve(ok(body)).await;
        let err = checker().check(&node(&server)).await.unwrap_err();
        match err {
            HealthError::InvalidResponse { node, reason } => {
                assert_eq!(node.as_str(), "node-a");
                assert!(!reason.is_empty());
            }
            other => panic!("{body:?}: expected InvalidResponse, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn status_only_validation_accepts_any_2xx() {
    let server = serve(ok("ok")).await;
    let c = HttpHealthChecker::builder()
        .probe_path("/health")
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    assert_eq!(c.validation(), ResponseValidation::StatusOnly);
    c.check(&node(&server)).await.unwrap();
    assert!(server.requests.lock()[0].starts_with("GET /health "));
    // list_models always asks /v1/models, and validates.
    assert!(matches!(
        c.list_models(&node(&server)).await.unwrap_err(),
        HealthError::InvalidResponse { .. }
    ));
}

#[tokio::test]
async fn oversized_body_is_invalid() {
    let big = format!(r#"{{"data":[{{"id":"{}"}}]}}"#, "x".repeat(4096));
    let server = serve(ok(&big)).await;
    let c = HttpHealthChecker::builder()
        .timeout(TIMEOUT)
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let err = c.check(&node(&server)).await.unwrap_err();
    assert!(
        matches!(err, HealthError::InvalidResponse { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn connection_reset_is_a_network_error() {
    let server = serve(Behavior::Reset).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(matches!(err, HealthError::Network { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = checker()
        .check(&NodeSpec::new("gone", url))
        .await
        .unwrap_err();
    match &err {
        HealthError::Network { node, source } => {
            assert_eq!(node.as_str(), "gone");
            // The URL is stripped from the source.
            assert!(!source.to_string().contains("127.0.0.1"), "{source}");
        }
        other => panic!("expected Network, got {other:?}"),
    }
}

#[tokio::test]
async fn bearer_key_is_sent_and_never_printed() {
    let server = serve(ok(MODELS)).await;
    let mut spec = node(&server);
    spec.api_key = Some(ApiKey::new("sk-very-secret"));
    let c = checker();
    c.check(&spec).await.unwrap();
    let head = server.requests.lock()[0].clone();
    assert!(
        head.contains("authorization: Bearer sk-very-secret\r\n"),
        "{head}"
    );
    assert!(!format!("{c:?}").contains("sk-very-secret"));
    assert!(!format!("{spec:?}").contains("sk-very-secret"));

    // Errors do not carry it either.
    let failing = serve(Behavior::Respond {
        status: "401 Unauthorized",
        headers: vec![],
        body: "sk-very-secret is wrong".into(),
    })
    .await;
    let mut spec = node(&failing);
    spec.api_key = Some(ApiKey::new("sk-very-secret"));
    let err = c.check(&spec).await.unwrap_err();
    assert!(matches!(err, HealthError::FailedStatus { code: 401, .. }));
    assert!(!format!("{err:?} {err}").contains("sk-very-secret"));
}

#[tokio::test]
async fn trailing_slash_and_path_prefix() {
    let server = serve(ok(MODELS)).await;
    let spec = NodeSpec::new("p", format!("{}/prefix/", server.url));
    checker().check(&spec).await.unwrap();
    assert!(server.requests.lock()[0].starts_with("GET /prefix/v1/models "));
}
