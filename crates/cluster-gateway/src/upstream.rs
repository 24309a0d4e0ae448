//! The client that talks to nodes: pooled HTTP/1.1 connections (hyper-util),
//! TCP_NODELAY, connect and first-byte timeouts, and header hygiene.
//!
//! Nodes that answer in HTTP/1.0 and close every connection (mlx_lm.server)
//! need nothing special: hyper reads such a body until the connection
//! closes and never returns that connection to the pool. Connections to
//! keep-alive nodes (llama.cpp, vLLM, the simulator) are reused.
//!
//! `https://` nodes are reached over rustls (aws-lc-rs), HTTP/1.1: their
//! certificate is verified against the system roots plus the node's
//! `tls.ca_file` (the global `node_tls` applies underneath), or not at all
//! with `tls.insecure_skip_verify` (logged as a warning). One pooled client
//! per distinct TLS setting, built on first use (see
//! `cluster_health::tls_client_config`). Any other scheme is refused with
//! [`UpstreamError::UnsupportedScheme`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cluster_types::NodeTls;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Timeouts and pool settings of the node client.
///
/// Defaults: connect 2 s, first byte 300 s (a cold 30k-token prefill on a
/// Mac takes a minute or more before a non-streamed answer's headers
/// arrive), idle connections kept 90 s, at most 64 idle connections per
/// node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// From sending the request to the node's response headers.
    pub first_byte_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per node.
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
        }
    }
}

/// Why a request to a node failed before its response headers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The node's URL and the path do not form a valid URI.
    #[error("invalid node URL {url:?}")]
    InvalidUrl {
        /// The URL that was built.
        url: String,
    },
    /// The node's URL is neither `http://` nor `https://`.
    #[error("node URL {url:?} is neither http:// nor https://")]
    UnsupportedScheme {
        /// The node's base URL.
        url: String,
    },
    /// The node's TLS settings cannot be used (unreadable CA file).
    #[error("TLS settings of {url}: {source}")]
    Tls {
        /// The node's base URL.
        url: String,
        /// What is wrong.
        #[source]
        source: cluster_health::TlsSetupError,
    },
    /// No TCP connection could be made (refused, unreachable, connect timeout).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The node's base URL.
        url: String,
        /// What failed.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The node did not answer within the first-byte timeout.
    #[error("{url} sent no response within {after:?}")]
    Timeout {
        /// The node's base URL.
        url: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection failed after it was made (reset, closed, bad HTTP).
    #[error("request to {url} failed: {source}")]
    Request {
        /// The node's base URL.
        url: String,
        /// What failed.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

/// Request headers never forwarded to a node: hop-by-hop headers, the
/// client's own credentials for the gateway, and headers the client
/// recomputes (`host`, `content-length`). `accept-encoding` is dropped so
/// nodes answer uncompressed and the gateway can read usage.
const DROPPED_REQUEST_HEADERS: &[HeaderName] = &[
    header::HOST,
    header::CONTENT_LENGTH,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::ACCEPT_ENCODING,
    header::EXPECT,
];

/// Response headers never passed back to a client (hop-by-hop).
const DROPPED_RESPONSE_HEADERS: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

fn is_dropped_request_header(name: &HeaderName) -> bool {
    DROPPED_REQUEST_HEADERS.contains(name)
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "x-api-key"
        )
}

/// Removes hop-by-hop headers from a node's response (in place).
pub(crate) fn clean_response_headers(headers: &mut HeaderMap) {
    for name in DROPPED_RESPONSE_HEADERS {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// One request to send to a node.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    /// The node's base URL (`http://host:port`, no trailing slash).
    pub base_url: &'a str,
    /// Path and query (`/v1/chat/completions`).
    pub path: &'a str,
    /// The node's API key, sent as `Authorization: Bearer` (and `x-api-key`
    /// on `/v1/messages`).
    pub api_key: Option<&'a str>,
    /// The client's headers; end-to-end ones are forwarded.
    pub client_headers: &'a HeaderMap,
    /// The body, exactly as the client sent it.
    pub body: Bytes,
    /// Certificate verification for an `https://` node (`None`: system
    /// roots, verification on).
    pub tls: Option<&'a NodeTls>,
}

type NodeHttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Pooled HTTP client for nodes (cheap to clone: shares its pools).
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    /// `http://` nodes and `https://` nodes with default TLS settings.
    client: NodeHttpClient,
    /// `https://` nodes with their own TLS settings.
    by_tls: Arc<Mutex<HashMap<NodeTls, NodeHttpClient>>>,
    settings: UpstreamSettings,
}

fn node_client(
    settings: &UpstreamSettings,
    tls: &NodeTls,
) -> Result<NodeHttpClient, cluster_health::TlsSetupError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cluster_health::tls_client_config(tls)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(https))
}

impl UpstreamClient {
    /// A client with `settings`. Must be called inside a Tokio runtime.
    ///
    /// # Panics
    /// Never in practice: the default TLS settings have no file to read.
    #[must_use]
    pub fn new(settings: UpstreamSettings) -> Self {
        #[allow(clippy::expect_used)]
        let client =
            node_client(&settings, &NodeTls::default()).expect("default TLS settings read no file");
        Self {
            client,
            by_tls: Arc::default(),
            settings,
        }
    }

    /// The pooled client for `tls` (`None` or the defaults: the shared one).
    fn client_for(
        &self,
        url: &str,
        tls: Option<&NodeTls>,
    ) -> Result<NodeHttpClient, UpstreamError> {
        let Some(tls) = tls.filter(|t| !t.is_default() && url.starts_with("https://")) else {
            return Ok(self.client.clone());
        };
        let mut by_tls = self
            .by_tls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = by_tls.get(tls) {
            return Ok(client.clone());
        }
        let client = node_client(&self.settings, tls).map_err(|source| UpstreamError::Tls {
            url: url.to_owned(),
            source,
        })?;
        by_tls.insert(tls.clone(), client.clone());
        Ok(client)
    }

    /// The settings this client was built with.
    #[must_use]
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Sends `req` as a POST and waits for the response headers (at most the
    /// first-byte timeout). The body is left to stream.
    pub async fn post(
        &self,
        req: UpstreamRequest<'_>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let request = build_request(Method::POST, &req)?;
        let client = self.client_for(req.base_url, req.tls)?;
        self.send(&client, request, req.base_url).await
    }

    /// Sends a GET to `base_url` + `path` (used by `mlx-cluster status`).
    pub async fn get(
        &self,
        base_url: &str,
        path: &str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let headers = HeaderMap::new();
        let request = build_request(
            Method::GET,
            &UpstreamRequest {
                base_url,
                path,
                api_key: None,
                client_headers: &headers,
                body: Bytes::new(),
                tls: None,
            },
        )?;
        self.send(&self.client, request, base_url).await
    }

    async fn send(
        &self,
        client: &NodeHttpClient,
        request: Request<Full<Bytes>>,
        base_url: &str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let after = self.settings.first_byte_timeout;
        match tokio::time::timeout(after, client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(source)) if source.is_connect() => Err(UpstreamError::Connect {
                url: base_url.to_owned(),
                source,
            }),
            Ok(Err(source)) => Err(UpstreamError::Request {
                url: base_url.to_owned(),
                source,
            }),
            Err(_) => Err(UpstreamError::Timeout {
                url: base_url.to_owned(),
                after,
            }),
        }
    }
}

fn build_request(
    method: Method,
    req: &UpstreamRequest<'_>,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    if !req.base_url.starts_with("http://") && !req.base_url.starts_with("https://") {
        return Err(UpstreamError::UnsupportedScheme {
            url: req.base_url.to_owned(),
        });
    }
    let mut url = String::with_capacity(req.base_url.len() + req.path.len());
    url.push_str(req.base_url.trim_end_matches('/'));
    url.push_str(req.path);
    let uri: Uri = url
        .parse()
        .map_err(|_| UpstreamError::InvalidUrl { url: url.clone() })?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(req.body.clone()))
        .map_err(|_| UpstreamError::InvalidUrl { url })?;
    let headers = request.headers_mut();
    for (name, value) in req.client_headers {
        if !is_dropped_request_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(key) = req.api_key {
        // A key that is not a valid header value is not sent (and not logged).
        if let Ok(mut bearer) = HeaderValue::try_from(format!("Bearer {key}")) {
            bearer.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, bearer);
        }
        if req.path.starts_with("/v1/messages")
            && let Ok(mut value) = HeaderValue::try_from(key)
        {
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
    }
    if !req.body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(request)
}

/// Parses a `Retry-After` header given in seconds (HTTP dates are ignored:
/// nodes send seconds).
#[must_use]
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_end_to_end_headers_only_and_sets_key() {
        let mut client = HeaderMap::new();
        client.insert(
            header::AUTHORIZATION,
            "Bearer client-dummy".parse().unwrap(),
        );
        client.insert("x-api-key", "client".parse().unwrap());
        client.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        client.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        client.insert("anthropic-version", "2023-06-01".parse().unwrap());
        client.insert(header::ACCEPT, "text/event-stream".parse().unwrap());
        let req = UpstreamRequest {
            base_url: "http://127.0.0.1:9/",
            path: "/v1/messages",
            api_key: Some("sekret"),
            client_headers: &client,
            body: Bytes::from_static(b"{}"),
            tls: None,
        };
        let built = build_request(Method::POST, &req).unwrap();
        assert_eq!(built.uri(), "http://127.0.0.1:9/v1/messages");
        let h = built.headers();
        assert_eq!(h[header::AUTHORIZATION], "Bearer sekret");
        assert!(h[header::AUTHORIZATION].is_sensitive());
        assert_eq!(h["x-api-key"], "sekret");
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key(header::ACCEPT_ENCODING));
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(h[header::ACCEPT], "text/event-stream");
    }

    #[test]
    fn client_auth_is_not_forwarded_without_node_key() {
        let mut client = HeaderMap::new();
        client.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        let req = UpstreamRequest {
            base_url: "http://n:1",
            path: "/v1/chat/completions",
            api_key: None,
            client_headers: &client,
            body: Bytes::new(),
            tls: None,
        };
        let built = build_request(Method::POST, &req).unwrap();
        assert!(!built.headers().contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn other_schemes_are_refused() {
        let h = HeaderMap::new();
        let req = UpstreamRequest {
            base_url: "ftp://n:1",
            path: "/v1/models",
            api_key: None,
            client_headers: &h,
            body: Bytes::new(),
            tls: None,
        };
        assert!(matches!(
            build_request(Method::GET, &req),
            Err(UpstreamError::UnsupportedScheme { .. })
        ));
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(header::RETRY_AFTER, "0.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[tokio::test]
    async fn connect_refused_is_a_connect_error() {
        // Bind then drop to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = UpstreamClient::new(UpstreamSettings::default());
        let url = format!("http://127.0.0.1:{port}");
        let err = client.get(&url, "/v1/models").await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
    }
}
