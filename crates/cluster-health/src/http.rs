//! [`HttpHealthChecker`]: active checks over HTTP (reqwest, and a minimal
//! HTTP/1.1 client for plain `http://`).
//!
//! One request per check, `GET {url}{probe_path}`, bounded as a whole —
//! connect, headers and body — by one timeout. Without a configured probe
//! path each node is probed on the path of its kind (its `kind` tag, see
//! [`NodeKind::default_probe_path`]): `/health` for mlx_lm.server (which
//! answers 503 once its generation thread died, while `/v1/models` still
//! answers 200), llama.cpp (503 while loading), vLLM and SGLang;
//! `/v1/models` for generic nodes.
//! The answer is classified as:
//!
//! | answer                                             | result                                   |
//! |----------------------------------------------------|------------------------------------------|
//! | 2xx and a valid body                               | `Ok(latency)`                            |
//! | 2xx and an invalid body (validation on)            | [`HealthError::InvalidResponse`]         |
//! | 429                                                | [`HealthError::Overloaded`]              |
//! | 503 whose body says "Loading model" (llama.cpp)    | [`HealthError::Loading`]                 |
//! | 503 from an `mlx_lm` node (generation thread died) | [`HealthError::FailedStatus`]            |
//! | any other 503                                      | [`HealthError::Overloaded`]              |
//! | any other non-2xx                                  | [`HealthError::FailedStatus`]            |
//! | no complete answer within the timeout              | [`HealthError::Timeout`]                 |
//! | refused, reset, TLS or DNS failure                 | [`HealthError::Network`]                 |
//!
//! `Retry-After` is read from 429 and 503 answers, as delay-seconds or as an
//! HTTP date (IMF-fixdate). A node's API key is sent as
//! `Authorization: Bearer …`, marked sensitive, and never logged or printed.
//! Redirects are not followed and proxies from the environment are not used:
//! probes go straight to the node.
//!
//! Two transports: `https://` nodes (and every node, when a custom reqwest
//! client is given) go through reqwest — with rustls, verifying the node's
//! certificate against the system roots plus its `tls.ca_file` (or skipping
//! verification with its `tls.insecure_skip_verify`, see [`crate::NodeClients`]); plain `http://` nodes go through a
//! minimal HTTP/1.1 `GET` client of this crate, because a kept-alive probe
//! connection through reqwest/hyper holds about 13–19 KiB of buffers and
//! state between checks, and one of ours only its socket — the difference
//! between 10 000 nodes fitting in 200 MB or not (see `docs/benchmarks.md`).
//! Both classify answers the same way (the tests run every case against
//! both).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use std::sync::Arc;

use cluster_types::{HealthConfig, NodeId, NodeKind, NodeSpec};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Deserialize;

use crate::wire::{Target, WireClient, WireError};
use crate::{HealthChecker, HealthError};

/// Default limit on a probe's body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The path of the OpenAI model list, used by
/// [`HttpHealthChecker::list_models`].
pub const MODELS_PATH: &str = "/v1/models";

/// How a 2xx answer's body is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseValidation {
    /// The body must be an OpenAI model list: JSON `{"data": [{"id": "…"},
    /// …]}` (other fields ignored; an empty list is accepted).
    ModelList,
    /// Any 2xx answer passes; the body is read (within the size limit) and
    /// ignored.
    StatusOnly,
}

impl ResponseValidation {
    /// The default for a probe path: [`ModelList`](Self::ModelList) when the
    /// path (without query) ends in `/models`, [`StatusOnly`](Self::StatusOnly)
    /// otherwise (e.g. `/health`).
    #[must_use]
    pub fn for_path(path: &str) -> Self {
        let path = path.split('?').next().unwrap_or(path);
        if path.trim_end_matches('/').ends_with("/models") {
            Self::ModelList
        } else {
            Self::StatusOnly
        }
    }
}

/// Active health checks over HTTP (reqwest), also used by discovery to
/// validate a new node ([`list_models`](Self::list_models)).
///
/// Defaults (from [`HealthConfig::default`]): probe path by node kind,
/// timeout 2 s, validation [`ResponseValidation::for_path`] of the path
/// (model list for `/v1/models`), body limit 1 MiB, kept-alive connections
/// closed after 90 s idle. Cloning is cheap (the connection pool is shared).
///
/// ```no_run
/// use cluster_health::{HealthChecker, HttpHealthChecker};
/// use cluster_types::{HealthConfig, NodeSpec};
///
/// # async fn demo() -> Result<(), cluster_health::HealthError> {
/// let checker = HttpHealthChecker::new(&HealthConfig::default())?;
/// let node = NodeSpec::new("studio", "http://127.0.0.1:8080");
/// let latency = checker.check(&node).await?;
/// let models = checker.list_models(&node).await?;
/// println!("{} answered in {latency:?} and serves {models:?}", node.id);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HttpHealthChecker {
    client: reqwest::Client,
    /// Whether `client` was given by the caller (then used for every node).
    custom_client: bool,
    /// Clients for `https://` nodes, by TLS settings.
    tls_clients: crate::NodeClients,
    /// For `http://` nodes, unless a custom reqwest client was given.
    lean: Option<Arc<WireClient>>,
    probe_path: Option<String>,
    timeout: Duration,
    validation: Option<ResponseValidation>,
    max_body_bytes: usize,
}

/// Builder of [`HttpHealthChecker`]; every setting has the default listed
/// on [`HttpHealthChecker`].
#[derive(Debug, Clone)]
pub struct HttpHealthCheckerBuilder {
    client: Option<reqwest::Client>,
    probe_path: Option<String>,
    timeout: Duration,
    validation: Option<ResponseValidation>,
    max_body_bytes: usize,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    lean_http1: bool,
}

impl Default for HttpHealthCheckerBuilder {
    fn default() -> Self {
        let config = HealthConfig::default();
        Self {
            client: None,
            probe_path: config.probe_path,
            timeout: config.timeout,
            validation: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: usize::MAX,
            lean_http1: true,
        }
    }
}

impl HttpHealthCheckerBuilder {
    /// Path probed on every node, appended to its base URL. Default: by
    /// node kind (see the module docs). A missing leading `/` is added.
    #[must_use]
    pub fn probe_path(mut self, path: impl Into<String>) -> Self {
        self.probe_path = Some(path.into());
        self
    }

    /// Sets or clears (`None`: by node kind) the probe path.
    #[must_use]
    pub fn probe_path_opt(mut self, path: Option<String>) -> Self {
        self.probe_path = path;
        self
    }

    /// Bound on one whole check (connect, headers, body). Default 2 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Body validation. Default [`ResponseValidation::for_path`] of the
    /// path probed.
    #[must_use]
    pub fn validation(mut self, validation: ResponseValidation) -> Self {
        self.validation = Some(validation);
        self
    }

    /// Largest body read; a longer one is an invalid response. Default
    /// 1 MiB.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How long an idle kept-alive connection to a node stays open. Default
    /// 90 s. Ignored with [`client`](Self::client).
    #[must_use]
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Idle connections kept per node; 0 opens a new connection for every
    /// check. Default unlimited (one is used per node in practice). Ignored
    /// with [`client`](Self::client).
    #[must_use]
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Whether plain `http://` nodes are probed with the crate's minimal
    /// HTTP/1.1 client (see the module docs) rather than reqwest. Default true; ignored
    /// (false) with [`client`](Self::client).
    #[must_use]
    pub fn lean_http1(mut self, enabled: bool) -> Self {
        self.lean_http1 = enabled;
        self
    }

    /// Uses this client for every node instead of building one (its own
    /// timeout, proxy and TLS settings then apply as well). Default: a
    /// client without environment proxies and without redirects, used for
    /// `https://` nodes.
    #[must_use]
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Builds the checker.
    ///
    /// # Errors
    /// [`HealthError::Client`] if the HTTP client cannot be built (TLS
    /// backend initialization).
    pub fn build(self) -> Result<HttpHealthChecker, HealthError> {
        let lean = (self.lean_http1 && self.client.is_none()).then(|| {
            Arc::new(WireClient::new(
                self.pool_idle_timeout,
                self.pool_max_idle_per_host,
            ))
        });
        let custom_client = self.client.is_some();
        let client = match self.client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(self.pool_idle_timeout)
                .pool_max_idle_per_host(self.pool_max_idle_per_host)
                .build()
                .map_err(|source| HealthError::Client { source })?,
        };
        let probe_path = self.probe_path.map(|path| {
            if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            }
        });
        Ok(HttpHealthChecker {
            client,
            custom_client,
            tls_clients: crate::NodeClients::new(),
            lean,
            probe_path,
            timeout: self.timeout,
            validation: self.validation,
            max_body_bytes: self.max_body_bytes,
        })
    }
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

impl HttpHealthChecker {
    /// A checker with `config`'s probe path and timeout and the other
    /// defaults.
    ///
    /// # Errors
    /// [`HealthError::Client`] if the HTTP client cannot be built.
    pub fn new(config: &HealthConfig) -> Result<Self, HealthError> {
        Self::builder()
            .probe_path_opt(config.probe_path.clone())
            .timeout(config.timeout)
            .build()
    }

    /// A builder with every default.
    #[must_use]
    pub fn builder() -> HttpHealthCheckerBuilder {
        HttpHealthCheckerBuilder::default()
    }

    /// The path probed on every node, when one is configured (starts with
    /// `/`); `None`: by node kind.
    #[must_use]
    pub fn probe_path(&self) -> Option<&str> {
        self.probe_path.as_deref()
    }

    /// The path probed on `node`: the configured one, else its kind's
    /// ([`NodeKind::from_tags`], generic when untagged).
    #[must_use]
    pub fn probe_path_for<'a>(&'a self, node: &NodeSpec) -> &'a str {
        match &self.probe_path {
            Some(path) => path,
            None => NodeKind::from_tags(&node.tags)
                .unwrap_or_default()
                .default_probe_path(),
        }
    }

    /// The bound on one check.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The body validation applied to 2xx answers of a probe of `path`.
    #[must_use]
    pub fn validation_for(&self, path: &str) -> ResponseValidation {
        self.validation
            .unwrap_or_else(|| ResponseValidation::for_path(path))
    }

    /// `GET {url}/v1/models` (whatever the probe path), within the timeout,
    /// returning the model ids in the node's order.
    ///
    /// # Errors
    /// The same classification as a check; a body that is not a model list
    /// is [`HealthError::InvalidResponse`].
    pub async fn list_models(&self, node: &NodeSpec) -> Result<Vec<String>, HealthError> {
        let (_, body) = self.fetch(node, MODELS_PATH).await?;
        parse_model_list(&node.id, &body)
    }

    /// One probe of `node`: `GET {url}{probe_path}`, validated; the latency
    /// covers the whole exchange including the body.
    ///
    /// # Errors
    /// See the module documentation's table.
    pub async fn probe(&self, node: &NodeSpec) -> Result<Duration, HealthError> {
        let path = self.probe_path_for(node);
        let (latency, body) = match self.fetch(node, path).await {
            // mlx_lm.server's /health answers 503 only once its generation
            // thread died: a broken node, not a busy one.
            Err(HealthError::Overloaded { code: 503, .. })
                if NodeKind::from_tags(&node.tags) == Some(NodeKind::MlxLm) =>
            {
                return Err(HealthError::FailedStatus {
                    node: node.id.clone(),
                    code: 503,
                    text: "Service Unavailable (mlx_lm.server's generation thread died)".to_owned(),
                });
            }
            other => other?,
        };
        if self.validation_for(path) == ResponseValidation::ModelList {
            parse_model_list(&node.id, &body)?;
        }
        Ok(latency)
    }

    /// GETs `path` on `node` within the timeout; returns the latency and the
    /// body of a 2xx answer, or the classified error.
    pub(crate) async fn fetch(
        &self,
        node: &NodeSpec,
        path: &str,
    ) -> Result<(Duration, Vec<u8>), HealthError> {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.timeout, self.fetch_unbounded(node, path)).await {
            Ok(Ok(body)) => Ok((started.elapsed(), body)),
            Ok(Err(err)) => Err(err),
            Err(_elapsed) => Err(HealthError::Timeout {
                node: node.id.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn fetch_unbounded(&self, node: &NodeSpec, path: &str) -> Result<Vec<u8>, HealthError> {
        let url = format!("{}{}", node.url.trim_end_matches('/'), path);
        let target = self
            .lean
            .as_ref()
            .and_then(|lean| Some((lean, Target::parse(&url)?)));
        let (status, headers, mut body) = match target {
            Some((lean, target)) => self.send_lean(lean, node, &target).await?,
            None => self.send_reqwest(node, &url).await?,
        };
        if status.is_success() {
            return body.read(&node.id, self.max_body_bytes, self.timeout).await;
        }
        let retry_after = parse_retry_after(&headers, SystemTime::now());
        match status {
            StatusCode::TOO_MANY_REQUESTS => Err(HealthError::Overloaded {
                node: node.id.clone(),
                code: status.as_u16(),
                retry_after,
            }),
            StatusCode::SERVICE_UNAVAILABLE => {
                // Only the first few KiB matter for the loading marker; a
                // body that cannot be read is just an overload answer.
                let body = body
                    .read(&node.id, 16 * 1024, self.timeout)
                    .await
                    .unwrap_or_default();
                if is_loading_body(&body) {
                    Err(HealthError::Loading {
                        node: node.id.clone(),
                    })
                } else {
                    Err(HealthError::Overloaded {
                        node: node.id.clone(),
                        code: status.as_u16(),
                        retry_after,
                    })
                }
            }
            _ => Err(HealthError::FailedStatus {
                node: node.id.clone(),
                code: status.as_u16(),
                text: status.canonical_reason().unwrap_or("").to_owned(),
            }),
        }
    }

    async fn send_reqwest(
        &self,
        node: &NodeSpec,
        url: &str,
    ) -> Result<(StatusCode, HeaderMap, ResponseBody), HealthError> {
        let client = if !self.custom_client && url.starts_with("https://") {
            self.tls_clients
                .client_for(node)
                .map_err(|e| HealthError::network(node.id.clone(), e))?
        } else {
            self.client.clone()
        };
        let mut request = client.get(url).header(ACCEPT, "application/json");
        if let Some(key) = &node.api_key {
            // reqwest marks the header value sensitive.
            request = request.bearer_auth(key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| reqwest_error(&node.id, e, self.timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        Ok((status, headers, ResponseBody::Reqwest(response)))
    }

    async fn send_lean(
        &self,
        lean: &WireClient,
        node: &NodeSpec,
        target: &Target,
    ) -> Result<(StatusCode, HeaderMap, ResponseBody), HealthError> {
        let auth = match &node.api_key {
            Some(key) => {
                let value = format!("Bearer {}", key.expose());
                // Reject what would break the request (CR, LF, controls);
                // the error does not contain the value.
                HeaderValue::from_str(&value)
                    .map_err(|e| HealthError::network(node.id.clone(), e))?;
                Some(value)
            }
            None => None,
        };
        let extra: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|value| ("Authorization", value))
            .into_iter()
            .collect();
        let answer = lean
            .get(target, &extra, self.max_body_bytes)
            .await
            .map_err(|e| match e {
                WireError::Io(e) => HealthError::network(node.id.clone(), e),
                WireError::Protocol(reason) => HealthError::InvalidResponse {
                    node: node.id.clone(),
                    reason,
                },
            })?;
        Ok((
            answer.status,
            answer.headers,
            ResponseBody::Buffered {
                body: Some(answer.body),
                truncated: answer.truncated,
            },
        ))
    }
}

/// The body of an answer, from either transport.
enum ResponseBody {
    Reqwest(reqwest::Response),
    /// Already read by the minimal client.
    Buffered {
        body: Option<Vec<u8>>,
        truncated: bool,
    },
}

impl ResponseBody {
    /// Reads the whole body; longer than `limit` is an invalid response.
    async fn read(
        &mut self,
        node: &NodeId,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, HealthError> {
        let too_large = || HealthError::InvalidResponse {
            node: node.clone(),
            reason: format!("body larger than {limit} bytes"),
        };
        match self {
            Self::Buffered { body, truncated } => {
                let body = body.take().unwrap_or_default();
                if *truncated || body.len() > limit {
                    return Err(too_large());
                }
                Ok(body)
            }
            Self::Reqwest(response) => {
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| reqwest_error(node, e, timeout))?
                {
                    if body.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }
}

fn reqwest_error(node: &NodeId, error: reqwest::Error, timeout: Duration) -> HealthError {
    if error.is_timeout() {
        HealthError::Timeout {
            node: node.clone(),
            timeout,
        }
    } else {
        // Strip the URL: it is the node's base URL plus the path, which the
        // node id already identifies, and a URL may carry credentials.
        HealthError::network(node.clone(), error.without_url())
    }
}

#[async_trait]
impl HealthChecker for HttpHealthChecker {
    async fn check(&self, node: &NodeSpec) -> Result<Duration, HealthError> {
        self.probe(node).await
    }
}

pub(crate) fn parse_model_list(node: &NodeId, body: &[u8]) -> Result<Vec<String>, HealthError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(HealthError::InvalidResponse {
            node: node.clone(),
            reason: "empty body (expected a JSON model list)".to_owned(),
        });
    }
    match serde_json::from_slice::<ModelList>(body) {
        Ok(list) => Ok(list.data.into_iter().map(|m| m.id).collect()),
        Err(e) => Err(HealthError::InvalidResponse {
            node: node.clone(),
            reason: format!(
                "not a model list {{\"data\": [{{\"id\": ...}}]}}: {} at line {} column {}",
                match e.classify() {
                    serde_json::error::Category::Io => "I/O error",
                    serde_json::error::Category::Syntax => "malformed JSON",
                    serde_json::error::Category::Data => "unexpected JSON shape",
                    serde_json::error::Category::Eof => "truncated JSON",
                },
                e.line(),
                e.column()
            ),
        }),
    }
}

/// Whether a 503 body is llama.cpp's (or a similar server's) "model is
/// loading" answer.
pub(crate) fn is_loading_body(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("loading model") || text.contains("model is loading")
}

/// Parses `Retry-After`: delay-seconds, or an IMF-fixdate HTTP date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) relative to `now` (a date in the past
/// is zero). Anything else is `None`.
pub(crate) fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_imf_fixdate(value: &str) -> Option<SystemTime> {
    let mut parts = value.split_ascii_whitespace();
    let _weekday = parts.next()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let hour: u64 = hms.next()?.parse().ok()?;
    let minute: u64 = hms.next()?.parse().ok()?;
    let second: u64 = hms.next()?.parse().ok()?;
    // An IMF-fixdate's year has four digits; a larger one would overflow
    // the day count below (a fuzzed node's `Sun, 06 Nov 19999999999994`).
    if parts.next()? != "GMT"
        || !(1..=31).contains(&day)
        || !(0..=9999).contains(&year)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after(&headers("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&headers("Sun, 06 Nov 1994 08:49:47 GMT"), now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(&headers("Sun, 06 Nov 1994 08:49:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&headers("soon"), now), None);
        assert_eq!(parse_retry_after(&headers("-3"), now), None);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
        // Found by AFL (probe_response): a year past 9999 is refused, not
        // an overflow.
        for year in ["19999999999994", "1994444444444444", "10000"] {
            let date = format!("Sun, 06 Nov {year} 08:49:37 GMT");
            assert_eq!(parse_retry_after(&headers(&date), now), None, "{date}");
        }
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1994, 11, 6), 9_075);
    }

    #[test]
    fn validation_for_paths() {
        assert_eq!(
            ResponseValidation::for_path("/v1/models"),
            ResponseValidation::ModelList
        );
        assert_eq!(
            ResponseValidation::for_path("/v1/models/?x=1"),
            ResponseValidation::ModelList
        );
        assert_eq!(
            ResponseValidation::for_path("/health"),
            ResponseValidation::StatusOnly
        );
    }

    #[test]
    fn model_list_parsing() {
        let node = NodeId::from("n");
        assert_eq!(
            parse_model_list(
                &node,
                br#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"}]}"#
            )
            .unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert!(
            parse_model_list(&node, br#"{"data":[]}"#)
                .unwrap()
                .is_empty()
        );
        for bad in [
            &b""[..],
            b"  ",
            b"{",
            b"[]",
            br#"{"data":[{"name":"x"}]}"#,
            b"<html>",
        ] {
            let err = parse_model_list(&node, bad).unwrap_err();
            assert!(
                matches!(err, HealthError::InvalidResponse { .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn loading_bodies() {
        assert!(is_loading_body(
            br#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#
        ));
        assert!(!is_loading_body(b"Service Unavailable"));
    }

    #[test]
    fn builder_normalizes_the_path() {
        let c = HttpHealthChecker::builder()
            .probe_path("health")
            .build()
            .unwrap();
        assert_eq!(c.probe_path(), Some("/health"));
        let generic = NodeSpec::new("n", "http://127.0.0.1:1");
        assert_eq!(c.probe_path_for(&generic), "/health");
        assert_eq!(c.validation_for("/health"), ResponseValidation::StatusOnly);
        let c = HttpHealthChecker::new(&HealthConfig::default()).unwrap();
        assert_eq!(c.probe_path(), None);
        assert_eq!(c.timeout(), Duration::from_secs(2));
        // By kind: generic nodes on the model list, mlx_lm.server on /health.
        assert_eq!(c.probe_path_for(&generic), "/v1/models");
        assert_eq!(
            c.validation_for("/v1/models"),
            ResponseValidation::ModelList
        );
        let mut mlx = generic.clone();
        mlx.tags
            .insert(cluster_types::KIND_TAG.to_owned(), "mlx_lm".to_owned());
        assert_eq!(c.probe_path_for(&mlx), "/health");
    }
}
