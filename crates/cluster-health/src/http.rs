//! [`HttpHealthChecker`]: active checks over HTTP with reqwest.
//!
//! One request per check, `GET {url}{probe_path}` (default `/v1/models`,
//! because `mlx_lm.server`'s `/health` answers ok whatever state the model
//! is in), bounded as a whole — connect, headers and body — by one timeout.
//! The answer is classified as:
//!
//! | answer                                             | result                                   |
//! |----------------------------------------------------|------------------------------------------|
//! | 2xx and a valid body                               | `Ok(latency)`                            |
//! | 2xx and an invalid body (validation on)            | [`HealthError::InvalidResponse`]         |
//! | 429                                                | [`HealthError::Overloaded`]              |
//! | 503 whose body says "Loading model" (llama.cpp)    | [`HealthError::Loading`]                 |
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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cluster_types::{HealthConfig, NodeId, NodeSpec};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use serde::Deserialize;

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
/// Defaults (from [`HealthConfig::default`]): probe path `/v1/models`,
/// timeout 2 s, validation [`ResponseValidation::for_path`] of the path
/// (model list for `/v1/models`), body limit 1 MiB. Cloning is cheap (the
/// connection pool is shared).
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
    probe_path: String,
    timeout: Duration,
    validation: ResponseValidation,
    max_body_bytes: usize,
}

/// Builder of [`HttpHealthChecker`]; every setting has the default listed
/// on [`HttpHealthChecker`].
#[derive(Debug, Clone)]
pub struct HttpHealthCheckerBuilder {
    client: Option<reqwest::Client>,
    probe_path: String,
    timeout: Duration,
    validation: Option<ResponseValidation>,
    max_body_bytes: usize,
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
        }
    }
}

impl HttpHealthCheckerBuilder {
    /// Path probed on each node, appended to its base URL. Default
    /// `/v1/models`. A missing leading `/` is added.
    #[must_use]
    pub fn probe_path(mut self, path: impl Into<String>) -> Self {
        self.probe_path = path.into();
        self
    }

    /// Bound on one whole check (connect, headers, body). Default 2 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Body validation. Default [`ResponseValidation::for_path`] of the
    /// probe path.
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

    /// Uses this client instead of building one (its own timeout, proxy and
    /// TLS settings then apply as well). Default: a client without
    /// environment proxies and without redirects.
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
        let client = match self.client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(90))
                .build()
                .map_err(|source| HealthError::Client { source })?,
        };
        let probe_path = if self.probe_path.starts_with('/') {
            self.probe_path
        } else {
            format!("/{}", self.probe_path)
        };
        let validation = self
            .validation
            .unwrap_or_else(|| ResponseValidation::for_path(&probe_path));
        Ok(HttpHealthChecker {
            client,
            probe_path,
            timeout: self.timeout,
            validation,
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
            .probe_path(config.probe_path.clone())
            .timeout(config.timeout)
            .build()
    }

    /// A builder with every default.
    #[must_use]
    pub fn builder() -> HttpHealthCheckerBuilder {
        HttpHealthCheckerBuilder::default()
    }

    /// The path probed (always starts with `/`).
    #[must_use]
    pub fn probe_path(&self) -> &str {
        &self.probe_path
    }

    /// The bound on one check.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The body validation applied to 2xx answers of the probe.
    #[must_use]
    pub fn validation(&self) -> ResponseValidation {
        self.validation
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
        let (latency, body) = self.fetch(node, &self.probe_path).await?;
        if self.validation == ResponseValidation::ModelList {
            parse_model_list(&node.id, &body)?;
        }
        Ok(latency)
    }

    /// GETs `path` on `node` within the timeout; returns the latency and the
    /// body of a 2xx answer, or the classified error.
    async fn fetch(&self, node: &NodeSpec, path: &str) -> Result<(Duration, Vec<u8>), HealthError> {
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
        let mut request = self.client.get(&url).header(ACCEPT, "application/json");
        if let Some(key) = &node.api_key {
            // reqwest marks the header value sensitive.
            request = request.bearer_auth(key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&node.id, e))?;
        let status = response.status();
        if status.is_success() {
            return self
                .read_body(&node.id, response, self.max_body_bytes)
                .await;
        }
        let retry_after = parse_retry_after(response.headers(), SystemTime::now());
        match status {
            StatusCode::TOO_MANY_REQUESTS => Err(HealthError::Overloaded {
                node: node.id.clone(),
                code: status.as_u16(),
                retry_after,
            }),
            StatusCode::SERVICE_UNAVAILABLE => {
                // Only the first few KiB matter for the loading marker; a
                // body that cannot be read is just an overload answer.
                let body = self
                    .read_body(&node.id, response, 16 * 1024)
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

    async fn read_body(
        &self,
        node: &NodeId,
        mut response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, HealthError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(node, e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(HealthError::InvalidResponse {
                    node: node.clone(),
                    reason: format!("body larger than {limit} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, node: &NodeId, error: reqwest::Error) -> HealthError {
        if error.is_timeout() {
            HealthError::Timeout {
                node: node.clone(),
                timeout: self.timeout,
            }
        } else {
            // Strip the URL: it is the node's base URL plus the path, which the
            // node id already identifies, and a URL may carry credentials.
            HealthError::network(node.clone(), error.without_url())
        }
    }
}

#[async_trait]
impl HealthChecker for HttpHealthChecker {
    async fn check(&self, node: &NodeSpec) -> Result<Duration, HealthError> {
        self.probe(node).await
    }
}

fn parse_model_list(node: &NodeId, body: &[u8]) -> Result<Vec<String>, HealthError> {
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
fn is_loading_body(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("loading model") || text.contains("model is loading")
}

/// Parses `Retry-After`: delay-seconds, or an IMF-fixdate HTTP date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) relative to `now` (a date in the past
/// is zero). Anything else is `None`.
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
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
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
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
        assert_eq!(c.probe_path(), "/health");
        assert_eq!(c.validation(), ResponseValidation::StatusOnly);
        let c = HttpHealthChecker::new(&HealthConfig::default()).unwrap();
        assert_eq!(c.probe_path(), "/v1/models");
        assert_eq!(c.timeout(), Duration::from_secs(2));
        assert_eq!(c.validation(), ResponseValidation::ModelList);
    }
}
