//! [`FakeNode`]: an OpenAI-compatible node on loopback whose answers the
//! test scripts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::response::Response;
use bytes::Bytes;
use http::HeaderMap;

/// One request as the node saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
}

impl Seen {
    /// The body as JSON (`Null` when it is not JSON).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// A header's value as text.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Response + Send + Sync>;

/// A node answering `GET /v1/models` with the model `m` and every other
/// request (`POST /v1/chat/completions`, `/v1/messages`, ...) with the
/// test's handler; it counts those requests and keeps the last one.
#[derive(Debug, Clone)]
pub struct FakeNode {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Seen>>>,
}

impl FakeNode {
    /// Starts the node on a fresh loopback port.
    pub async fn start(handler: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let answer = {
            let (hits, last) = (Arc::clone(&hits), Arc::clone(&last));
            move |uri: http::Uri, headers: HeaderMap, body: Bytes| {
                let seen = Seen {
                    path: uri
                        .path_and_query()
                        .map_or_else(|| uri.path().to_owned(), ToString::to_string),
                    headers,
                    body,
                };
                hits.fetch_add(1, Ordering::SeqCst);
                let response = handler(&seen);
                *last.lock().unwrap() = Some(seen);
                async move { response }
            }
        };
        let app = axum::Router::new().fallback(answer).route(
            "/v1/models",
            axum::routing::get(|| async {
                r#"{"object":"list","data":[{"id":"m","object":"model"}]}"#
            }),
        );
        let addr = crate::serve(app).await;
        Self { addr, hits, last }
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far (not counting `/v1/models`).
    #[must_use]
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The last request (panics before the first).
    #[must_use]
    pub fn last(&self) -> Seen {
        self.last.lock().unwrap().clone().unwrap()
    }
}
