//! `HttpHealthChecker` against loopback servers that misbehave: hang past the
//! timeout, 500, 503 with Retry-After, 503 loading, garbage JSON, connection
//! reset, slow headers, slow body, refused connections, oversized bodies.
//!
//! Every case runs against both transports: the lean hyper client (plain
//! `http://`, the default) and reqwest (`lean_http1(false)`, what `https://`
//! nodes use). These use real sockets on 127.0.0.1 and therefore real time;
//! the only waits are the checker's own (short) timeouts.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cluster_health::{
    HealthChecker, HealthError, HttpHealthChecker, HttpHealthCheckerBuilder, ResponseValidation,
};
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
    /// Writes these bytes as the answer, keeping the connection open.
    Raw(&'static str),
    /// Answers like `Respond` (200, model list, no `Connection: close`), then
    /// closes the connection anyway: the client's pooled connection goes
    /// stale.
    CloseAfterAnswer,
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
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

async fn serve(behavior: Behavior) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let behavior = behavior.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let _ = handle(stream, behavior, seen).await;
            });
        }
    });
    Server {
        url,
        requests,
        connections,
    }
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
            Behavior::Raw(bytes) => {
                stream.write_all(bytes.as_bytes()).await?;
            }
            Behavior::CloseAfterAnswer => {
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{MODELS}",
                    MODELS.len()
                );
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await?;
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

/// The default transport for `http://`: the lean hyper client.
mod lean {
    use super::*;

    fn builder() -> HttpHealthCheckerBuilder {
        HttpHealthChecker::builder()
    }

    include!("support/http_cases.rs");
}

/// reqwest, as for `https://` nodes.
mod reqwest_transport {
    use super::*;

    fn builder() -> HttpHealthCheckerBuilder {
        HttpHealthChecker::builder().lean_http1(false)
    }

    include!("support/http_cases.rs");
}
