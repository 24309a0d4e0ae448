//! Helpers shared by the `discovery_*` tests: small HTTP servers on
//! 127.0.0.1 that answer `GET /v1/models` rightly or wrongly, and waiting
//! for discovery events.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_discovery::DiscoveryEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How a [`ModelsStub`] answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with an OpenAI model list of these ids.
    Models(Vec<String>),
    /// This status with a small JSON error body.
    Status(u16),
    /// 200 with this content type and body.
    Body(&'static str, String),
}

impl Answer {
    /// A model list of one id.
    pub fn model(id: &str) -> Self {
        Self::Models(vec![id.to_owned()])
    }
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every request with the
/// current [`Answer`] and closes the connection.
pub struct ModelsStub {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ModelsStub {
    pub async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (Arc::clone(&answer), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let answer = a.lock().unwrap().clone();
                let requests = Arc::clone(&r);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    // Validations: the model list (kind detection asks
                    // other paths too).
                    if request.starts_with(b"GET /v1/models") {
                        requests.fetch_add(1, Ordering::SeqCst);
                    }
                    let (status, content_type, body) = match answer {
                        Answer::Models(ids) => {
                            let data: Vec<_> = ids
                                .iter()
                                .map(|id| {
                                    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "stub"})
                                })
                                .collect();
                            let body = serde_json::json!({"object": "list", "data": data});
                            (200, "application/json", body.to_string())
                        }
                        Answer::Status(code) => (
                            code,
                            "application/json",
                            format!(r#"{{"error":{{"message":"stub status {code}"}}}}"#),
                        ),
                        Answer::Body(content_type, body) => (200, content_type, body),
                    };
                    let response = format!(
                        "HTTP/1.1 {status} Stub\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            answer,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// `GET /v1/models` requests received (one per validation).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ModelsStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[allow(unused_imports)] // not every test binary uses it
pub use test_support::closed_port;

/// The next event, or a panic after `timeout` (a safety net for a test that
/// would otherwise hang, not a wait for a state change).
pub async fn next_event(
    rx: &mut broadcast::Receiver<DiscoveryEvent>,
    timeout: Duration,
) -> DiscoveryEvent {
    match tokio::time::timeout(timeout, rx.recv()).await {
        Ok(Ok(event)) => event,
        Ok(Err(e)) => panic!("event channel: {e}"),
        Err(_) => panic!("no discovery event within {timeout:?}"),
    }
}

/// Short text for an event: `+id`, `-id`, `~id` or `!code`.
pub fn describe(event: &DiscoveryEvent) -> String {
    match event {
        DiscoveryEvent::Discovered(n) => format!("+{}", n.id()),
        DiscoveryEvent::Lost(n) => format!("-{}", n.id()),
        DiscoveryEvent::Updated { current, .. } => format!("~{}", current.id()),
        DiscoveryEvent::Error(e) => format!("!{}", e.code()),
        other => format!("?{other:?}"),
    }
}

/// The events received so far, described.
pub fn drain(rx: &mut broadcast::Receiver<DiscoveryEvent>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(describe(&event));
    }
    out
}
