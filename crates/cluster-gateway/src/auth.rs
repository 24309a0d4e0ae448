//! Client authentication and per-key limits.
//!
//! With `gateway.api_keys` (or `gateway.api_keys_file`) configured, every
//! request except `GET /healthz`, `GET /readyz`, the dashboard page `GET /`
//! and the admin API (which has its own `gateway.admin_token`) must present
//! a configured key as `Authorization: Bearer KEY` or `x-api-key: KEY`.
//! Otherwise it is answered 401 in the OpenAI error shape (`code`
//! `invalid_api_key`), or in the Anthropic shape (`authentication_error`)
//! on `/v1/messages`.
//!
//! Keys are held as SHA-256 digests only: a presented key is hashed and its
//! digest compared with every configured digest in constant time
//! ([`subtle`]), so neither the comparison's timing nor a memory dump gives
//! a key away. The client's key is never forwarded to a node (see
//! [`crate::upstream`]) and never logged; metrics and logs name the key's
//! `name`.
//!
//! Per-key limits: `requests_per_minute` is a token bucket holding that
//! many requests and refilled continuously ([`TokenBucket`]);
//! `max_concurrent` counts requests until their response body ends (a
//! stream counts until its last event). Beyond either, 429 with
//! `Retry-After` (OpenAI `rate_limit_exceeded`, Anthropic
//! `rate_limit_error`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cluster_types::config::is_sha256_hex;
use cluster_types::{ClientKey, GatewayConfig, parse_api_keys_file};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::Frame;
use pin_project_lite::pin_project;
use subtle::ConstantTimeEq;

use crate::anthropic::AnthropicError;
use crate::error::{ApiError, GatewayError, codes};
use crate::gateway::Gateway;

/// SHA-256 of `secret`.
#[must_use]
pub(crate) fn sha256(secret: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, secret).as_ref());
    out
}

/// SHA-256 of `secret` in lowercase hex (the `key_sha256` form).
#[must_use]
pub fn sha256_hex(secret: &[u8]) -> String {
    sha256(secret)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if !is_sha256_hex(hex) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per `period`.
/// Pure: time comes in as an argument. Starts full.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled over `period`.
    #[must_use]
    pub(crate) fn new(capacity: u32, period: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            per_second: capacity / period.as_secs_f64().max(f64::MIN_POSITIVE),
            tokens: capacity,
            last: None,
        }
    }

    /// Takes one token at `now`, or says how long until one is available.
    ///
    /// # Errors
    /// The wait until the next token.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

/// The counters and limits of one key, shared with the permits it hands out.
#[derive(Debug)]
struct KeyState {
    name: String,
    bucket: Option<Mutex<TokenBucket>>,
    max_concurrent: Option<u32>,
    in_flight: AtomicU32,
    requests: AtomicU64,
    rate_limited: AtomicU64,
    concurrency_limited: AtomicU64,
}

struct KeyEntry {
    /// `None` for an entry whose digest could not be decoded (an
    /// unvalidated config): it never matches, but keeps auth switched on.
    digest: Option<[u8; 32]>,
    state: Arc<KeyState>,
}

/// The configured client keys (digests only), their limits and counters.
pub struct ClientKeys {
    entries: Vec<KeyEntry>,
    unauthenticated: AtomicU64,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.state.name.as_str()).collect();
        f.debug_struct("ClientKeys").field("names", &names).finish()
    }
}

/// Why a request with a valid key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `requests_per_minute` used up; a token is due after the duration.
    RateLimited(Duration),
    /// `max_concurrent` requests already in flight.
    TooManyConcurrent,
}

/// A request admitted for a key: counts it in flight until dropped.
#[derive(Debug)]
pub struct Admission {
    state: Arc<KeyState>,
    counted: bool,
}

impl Admission {
    /// The key's name.
    #[must_use]
    pub fn key_name(&self) -> &str {
        &self.state.name
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.counted {
            self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl ClientKeys {
    /// Keys from config entries (secrets are hashed here and dropped).
    /// An entry whose digest is invalid never matches.
    #[must_use]
    pub fn new(keys: &[ClientKey]) -> Self {
        let entries = keys
            .iter()
            .map(|k| {
                let digest = match (&k.key, &k.key_sha256) {
                    (Some(secret), _) if !secret.is_empty() => {
                        Some(sha256(secret.expose().as_bytes()))
                    }
                    (None, Some(hex)) => decode_hex(hex),
                    _ => None,
                };
                KeyEntry {
                    digest,
                    state: Arc::new(KeyState {
                        name: k.name.clone(),
                        bucket: k
                            .requests_per_minute
                            .map(|n| Mutex::new(TokenBucket::new(n, Duration::from_secs(60)))),
                        max_concurrent: k.max_concurrent,
                        in_flight: AtomicU32::new(0),
                        requests: AtomicU64::new(0),
                        rate_limited: AtomicU64::new(0),
                        concurrency_limited: AtomicU64::new(0),
                    }),
                }
            })
            .collect();
        Self {
            entries,
            unauthenticated: AtomicU64::new(0),
        }
    }

    /// The keys of `config` without reading `api_keys_file`: `None` when
    /// no key is configured. With a key file configured the result is
    /// `Some` (authentication on) even before the file is read, so a
    /// gateway never runs open by mistake.
    #[must_use]
    pub fn from_config_inline(config: &GatewayConfig) -> Option<Self> {
        (!config.api_keys.is_empty() || config.api_keys_file.is_some())
            .then(|| Self::new(&config.api_keys))
    }

    /// Every key of `config`: `api_keys` and the lines of `api_keys_file`.
    /// `None` when neither is configured.
    ///
    /// # Errors
    /// [`GatewayError::Config`] when the file cannot be read, has problems
    /// (each listed with its line), or repeats a name of `api_keys`.
    pub fn load(config: &GatewayConfig) -> Result<Option<Self>, GatewayError> {
        let Some(path) = &config.api_keys_file else {
            return Ok(Self::from_config_inline(config));
        };
        let text = std::fs::read_to_string(path).map_err(|e| GatewayError::Config {
            message: format!("gateway.api_keys_file: cannot read {}: {e}", path.display()),
        })?;
        let from_file = parse_api_keys_file(&text).map_err(|problems| GatewayError::Config {
            message: problems
                .iter()
                .map(|p| format!("{} ({}): {}", p.path, path.display(), p.message))
                .collect::<Vec<_>>()
                .join("\n"),
        })?;
        if let Some(dup) = from_file
            .iter()
            .find(|k| config.api_keys.iter().any(|i| i.name == k.name))
        {
            return Err(GatewayError::Config {
                message: format!(
                    "gateway.api_keys_file ({}): key name {:?} is also in gateway.api_keys",
                    path.display(),
                    dup.name
                ),
            });
        }
        let mut all = config.api_keys.clone();
        all.extend(from_file);
        Ok(Some(Self::new(&all)))
    }

    /// How many keys are configured.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is configured (every request is then refused).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry whose key is `presented`, comparing digests in constant
    /// time against every entry.
    fn find(&self, presented: &[u8]) -> Option<&Arc<KeyState>> {
        let digest = sha256(presented);
        let mut found = None;
        for entry in &self.entries {
            if let Some(d) = &entry.digest
                && bool::from(d.ct_eq(&digest))
            {
                found = Some(&entry.state);
            }
        }
        found
    }

    /// Checks the key presented in `headers` and the key's limits at `now`.
    ///
    /// # Errors
    /// `Err(None)` without a valid key, `Err(Some(refusal))` when the key's
    /// limits refuse the request.
    pub fn admit(&self, headers: &HeaderMap, now: Instant) -> Result<Admission, Option<Refusal>> {
        let state = presented_keys(headers)
            .find_map(|key| self.find(key))
            .ok_or_else(|| {
                self.unauthenticated.fetch_add(1, Ordering::Relaxed);
                None
            })?;
        let counted = if let Some(max) = state.max_concurrent {
            let admitted = state
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok();
            if !admitted {
                state.concurrency_limited.fetch_add(1, Ordering::Relaxed);
                return Err(Some(Refusal::TooManyConcurrent));
            }
            true
        } else {
            false
        };
        // From here on the admission releases its slot if dropped.
        let admission = Admission {
            state: Arc::clone(state),
            counted,
        };
        if let Some(bucket) = &state.bucket {
            let taken = bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_take(now);
            if let Err(wait) = taken {
                state.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(Some(Refusal::RateLimited(wait)));
            }
        }
        state.requests.fetch_add(1, Ordering::Relaxed);
        Ok(admission)
    }

    /// Requests admitted for the key named `name` (0 for an unknown name).
    #[must_use]
    pub fn requests_of(&self, name: &str) -> u64 {
        self.entries
            .iter()
            .find(|e| e.state.name == name)
            .map_or(0, |e| e.state.requests.load(Ordering::Relaxed))
    }

    /// Appends the per-key counters in the text exposition format to `out`
    /// (OpenMetrics-style family names when `openmetrics`). Labels carry key
    /// names only.
    pub fn encode(&self, out: &mut String, openmetrics: bool) {
        let family = |name: &'static str| {
            if openmetrics {
                name.strip_suffix("_total").unwrap_or(name)
            } else {
                name
            }
        };
        let _ = writeln!(
            out,
            "# HELP {0} Proxied requests admitted, by client key name.\n# TYPE {0} counter",
            family("mlx_cluster_gateway_client_requests_total")
        );
        for e in &self.entries {
            let _ = writeln!(
                out,
                "mlx_cluster_gateway_client_requests_total{{key=\"{}\"}} {}",
                e.state.name,
                e.state.requests.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {0} Requests with a valid key refused by its limits (429), by key name and limit.\n# TYPE {0} counter",
            family("mlx_cluster_gateway_client_limited_total")
        );
        for e in &self.entries {
            for (limit, v) in [
                ("requests_per_minute", &e.state.rate_limited),
                ("max_concurrent", &e.state.concurrency_limited),
            ] {
                let _ = writeln!(
                    out,
                    "mlx_cluster_gateway_client_limited_total{{key=\"{}\",limit=\"{limit}\"}} {}",
                    e.state.name,
                    v.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP {0} Requests refused with 401: no valid client key.\n# TYPE {0} counter\nmlx_cluster_gateway_unauthenticated_total {1}",
            family("mlx_cluster_gateway_unauthenticated_total"),
            self.unauthenticated.load(Ordering::Relaxed)
        );
    }
}

/// The keys a request presents: `Authorization: Bearer KEY` (scheme
/// case-insensitive), then `x-api-key: KEY`.
fn presented_keys(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| {
            let v = v.as_bytes();
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| rest.trim_ascii())
        });
    let x_api_key = headers
        .get_all("x-api-key")
        .iter()
        .map(|v| v.as_bytes().trim_ascii());
    bearer.chain(x_api_key).filter(|k| !k.is_empty())
}

/// Whether `path` is served without a client key.
#[must_use]
pub(crate) fn is_open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/") || path.starts_with("/admin/")
}

fn is_anthropic(path: &str) -> bool {
    path.starts_with("/v1/messages")
}

/// The 401 answer for `path`.
#[must_use]
pub(crate) fn unauthorized(path: &str) -> Response {
    const MESSAGE: &str = "missing or invalid API key: send a key configured in gateway.api_keys as `Authorization: Bearer KEY` or `x-api-key: KEY`";
    let mut response = if is_anthropic(path) {
        AnthropicError::new(StatusCode::UNAUTHORIZED, MESSAGE).into_response()
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            codes::INVALID_API_KEY,
            MESSAGE,
        )
        .into_response()
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The 429 answer for `path` and `refusal`, with `Retry-After`.
#[must_use]
pub(crate) fn limited(path: &str, key_name: &str, refusal: Refusal) -> Response {
    let (message, wait) = match refusal {
        Refusal::RateLimited(wait) => (
            format!("rate limit of key {key_name:?} reached (requests_per_minute)"),
            wait,
        ),
        Refusal::TooManyConcurrent => (
            format!("key {key_name:?} has max_concurrent requests in flight"),
            Duration::from_secs(1),
        ),
    };
    if is_anthropic(path) {
        AnthropicError::new(StatusCode::TOO_MANY_REQUESTS, message)
            .with_retry_after(Some(wait))
            .into_response()
    } else {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            codes::RATE_LIMITED,
            message,
        )
        .with_retry_after(Some(wait))
        .into_response()
    }
}

/// Middleware: enforces client keys and their limits (see the module docs).
/// Does nothing when no key is configured.
pub(crate) async fn authenticate(
    State(gw): State<Arc<Gateway>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(keys) = gw.settings().client_keys.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    // The decision log has the admin token when one is set.
    let admin_guarded =
        path == crate::decisions::DECISIONS_PATH && gw.settings().admin_token.is_some();
    if is_open_path(path) || admin_guarded {
        return next.run(req).await;
    }
    let admission = match keys.admit(req.headers(), Instant::now()) {
        Ok(admission) => admission,
        Err(None) => {
            tracing::debug!(path, "request refused: no valid client key");
            return unauthorized(path);
        }
        Err(Some(refusal)) => {
            // Which key: admit() found it; look it up again for the message.
            let name = presented_keys(req.headers())
                .find_map(|k| keys.find(k))
                .map(|s| s.name.clone())
                .unwrap_or_default();
            tracing::debug!(path, key = %name, ?refusal, "request refused by the key's limits");
            return limited(path, &name, refusal);
        }
    };
    let response = next.run(req).await;
    if admission.counted {
        // The key's in-flight count ends with the response body.
        response.map(|body| {
            Body::new(HeldBody {
                inner: body,
                _held: admission,
            })
        })
    } else {
        response
    }
}

pin_project! {
    /// A body that holds a value (an [`Admission`]) until it is dropped.
    struct HeldBody<T> {
        #[pin]
        inner: Body,
        _held: T,
    }
}

impl<T> http_body::Body for HeldBody<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(decode_hex(&sha256_hex(b"abc")), Some(sha256(b"abc")));
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn bearer_and_x_api_key_are_accepted_plain_and_hashed() {
        let keys = ClientKeys::new(&[
            ClientKey::secret("alice", "sk-alice"),
            ClientKey::hashed("bob", sha256_hex(b"sk-bob")),
        ]);
        let now = Instant::now();
        let a = keys
            .admit(&headers(&[("authorization", "Bearer sk-alice")]), now)
            .unwrap();
        assert_eq!(a.key_name(), "alice");
        let b = keys
            .admit(&headers(&[("x-api-key", "sk-bob")]), now)
            .unwrap();
        assert_eq!(b.key_name(), "bob");
        let lower = keys
            .admit(&headers(&[("authorization", "bearer  sk-bob ")]), now)
            .unwrap();
        assert_eq!(lower.key_name(), "bob");
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Bearer sk-alicE")]),
            headers(&[("authorization", "Basic sk-alice")]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("x-api-key", "")]),
        ] {
            assert!(matches!(keys.admit(&bad, now), Err(None)), "{bad:?}");
        }
        assert_eq!(keys.requests_of("alice"), 1);
        assert_eq!(keys.requests_of("bob"), 2);
        let mut text = String::new();
        keys.encode(&mut text, false);
        assert!(text.contains("mlx_cluster_gateway_client_requests_total{key=\"bob\"} 2"));
        assert!(text.contains("mlx_cluster_gateway_unauthenticated_total 5"));
        assert!(!text.contains("sk-"));
    }

    #[test]
    fn an_undecodable_entry_keeps_auth_on_and_never_matches() {
        let keys = ClientKeys::new(&[ClientKey::hashed("x", "not-hex")]);
        assert!(matches!(
            keys.admit(&headers(&[("x-api-key", "not-hex")]), Instant::now()),
            Err(None)
        ));
    }

    #[test]
    fn token_bucket_refills_continuously() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, Duration::from_secs(60));
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(30));
        assert!(b.try_take(t0 + Duration::from_secs(29)).is_err());
        assert!(b.try_take(t0 + Duration::from_secs(30)).is_ok());
        // Never more than the capacity after a long pause.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn limits_refuse_and_release() {
        let mut key = ClientKey::secret("alice", "k");
        key.max_concurrent = Some(1);
        key.requests_per_minute = Some(3);
        let keys = ClientKeys::new(&[key]);
        let h = headers(&[("x-api-key", "k")]);
        let now = Instant::now();
        let first = keys.admit(&h, now).unwrap();
        assert!(matches!(
            keys.admit(&h, now),
            Err(Some(Refusal::TooManyConcurrent))
        ));
        drop(first);
        // A refusal for concurrency takes no token: two more fit.
        drop(keys.admit(&h, now).unwrap());
        drop(keys.admit(&h, now).unwrap());
        assert!(matches!(
            keys.admit(&h, now),
            Err(Some(Refusal::RateLimited(_)))
        ));
        // The refused request released its concurrency slot.
        assert!(matches!(
            keys.admit(&h, now),
            Err(Some(Refusal::RateLimited(_)))
        ));
    }

    #[test]
    fn error_shapes() {
        let openai = unauthorized("/v1/chat/completions");
        assert_eq!(openai.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(openai.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let anthropic = limited(
            "/v1/messages",
            "a",
            Refusal::RateLimited(Duration::from_millis(1500)),
        );
        assert_eq!(anthropic.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(anthropic.headers()[header::RETRY_AFTER], "2");
        assert!(is_open_path("/healthz") && is_open_path("/admin/nodes/a/drain"));
        assert!(!is_open_path("/v1/models") && !is_open_path("/metrics"));
    }
}
