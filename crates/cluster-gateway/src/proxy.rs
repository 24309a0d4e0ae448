//! The proxy endpoints: read the body once, route, forward, retry before the
//! first byte, relay the answer.
//!
//! # Retries
//! A request is retried on the next-best node (`select` again with the
//! nodes already tried in [`RoutingContext::excluded`], so never the same
//! node twice) when, before any byte of the answer reached the client,
//!
//! - the connection to the node failed or timed out (connect or first-byte
//!   timeout), or
//! - the node answered 5xx, or 429 (overloaded), or
//! - the node answered 404: the router sent the request there because the
//!   node lists the model (or serves any), so a 404 on the completion path
//!   means the node cannot serve what it listed (mlx_lm.server whose
//!   generation thread died answers exactly that). It counts against the
//!   node's health like a 5xx, not as a success.
//!
//! At most `routing.max_retries` retries (default 2), each after
//! `routing.retry_delay` (default 100 ms). An overloaded node's
//! `Retry-After` is honoured per node: the facade keeps that node out of
//! rotation until then (`RequestOutcome::Overloaded`). When no other node can
//! take the request, the last node answer is passed to the client unchanged
//! (status, `Retry-After`, body); when no node answered at all, the client
//! gets a 502/504 in the OpenAI error shape naming the nodes tried.
//!
//! A node that answers a non-retryable status is given
//! `gateway.idle_timeout` to send its first body frame (see
//! [`crate::first_frame`]); headers followed by nothing, or by a body that
//! fails at once (invalid chunked encoding), are retried like a failed
//! connection. Once the answer's headers and first frame are on their way
//! to the client the request is committed; a failure after that ends the stream with an SSE error event
//! (see [`crate::relay`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cluster_facade::{FacadeError, FailureKind, NodeTarget, RequestGuard, RequestOutcome};
use cluster_types::{NodeId, RoutingContext, RoutingReason};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::error::{ApiError, codes};
use crate::first_frame::{FirstFrame, Peeked, first_frame};
use crate::gateway::Gateway;
use crate::metrics::RetryCause;
use crate::relay::{NoSink, OutcomeSink, RelayBody, RelayFailure, RelayMode, RelayOutcome};
use crate::request::{ApiKind, ParsedRequest, with_include_usage};
use crate::telemetry;
use crate::upstream::{UpstreamError, UpstreamRequest, clean_response_headers, retry_after};

/// Response header naming the node that answered (node ids are not secret;
/// off with `observability.topology_headers = false`).
pub(crate) const NODE_HEADER: HeaderName = HeaderName::from_static("x-mlx-cluster-node");

/// Response header saying why that node was chosen: a routing reason
/// (`cache-hit`, `rendezvous`, `least-loaded`, `retry`, ...; off with
/// `observability.topology_headers = false`).
pub(crate) const REASON_HEADER: HeaderName = HeaderName::from_static("x-mlx-cluster-reason");

/// Response header with how many nodes were tried (1 = no retry).
pub(crate) const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-mlx-cluster-attempts");

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    handle(&gw, ApiKind::ChatCompletions, req).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    handle(&gw, ApiKind::Completions, req).await
}

async fn handle(gw: &Arc<Gateway>, api: ApiKind, req: Request) -> Response {
    let _in_flight = gw.metrics().begin();
    let span = telemetry::request_span(api.path(), req.headers());
    let response = match proxy(gw, api, req).instrument(span.clone()).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    telemetry::record_status(&span, response.status().as_u16());
    gw.metrics().response(api, response.status().as_u16());
    response
}

/// Reads the whole request body, refusing more than `limit` bytes with 413.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(limit))
        }
        Err(e) => Err(ApiError::invalid_body(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// The overall deadline of a request received now (`gateway.request_timeout`),
/// with the timeout itself for messages.
#[must_use]
pub(crate) fn request_deadline(gw: &Gateway) -> Option<(tokio::time::Instant, Duration)> {
    gw.settings()
        .request_timeout
        .map(|t| (tokio::time::Instant::now() + t, t))
}

/// Reads a proxied request's body: at most `gateway.max_body_bytes` (413),
/// within `gateway.body_read_timeout` (408), JSON nested at most
/// [`crate::limits::MAX_JSON_DEPTH`] levels (400).
///
/// # Errors
/// Those client errors, in the OpenAI shape.
pub(crate) async fn read_request_body(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let settings = gw.settings();
    let body = tokio::time::timeout(
        settings.body_read_timeout,
        read_body(headers, body, settings.max_body_bytes),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            codes::BODY_READ_TIMEOUT,
            format!(
                "the request body did not arrive within gateway.body_read_timeout ({:?})",
                settings.body_read_timeout
            ),
        )
    })??;
    if crate::limits::json_too_deep(&body, crate::limits::MAX_JSON_DEPTH) {
        return Err(ApiError::invalid_body(format!(
            "the body nests JSON deeper than {} levels",
            crate::limits::MAX_JSON_DEPTH
        )));
    }
    Ok(body)
}

async fn proxy(gw: &Arc<Gateway>, api: ApiKind, req: Request) -> Result<Response, ApiError> {
    let settings = gw.settings();
    let deadline = request_deadline(gw);
    let (parts, body) = req.into_parts();
    let body = read_request_body(gw, &parts.headers, body).await?;
    let (ctx, stream, add_usage) = {
        let parsed = ParsedRequest::parse(api, &parts.headers, &settings.session_header, &body)?;
        (
            parsed.routing_context(settings.fingerprint_block_bytes),
            parsed.stream,
            // Every answer should report its token counts (they teach the
            // router): ask for usage on the client's behalf, hide it again.
            parsed.stream && !parsed.include_usage && api != ApiKind::Messages,
        )
    };
    let (body, strip_usage) = match add_usage.then(|| with_include_usage(&body)).flatten() {
        Some(rewritten) => (Bytes::from(rewritten), true),
        None => (body, false),
    };
    let mut plan = SameForEveryNode {
        path: api.path(),
        headers: &parts.headers,
        body,
        strip_usage,
    };
    forward(gw, &mut plan, ctx, stream, deadline)
        .await
        .map(|f| f.response)
}

/// What one attempt sends to the node `select` chose.
#[derive(Debug)]
pub(crate) struct Attempt<'p, M> {
    /// Path (and query) on the node, e.g. `/v1/chat/completions`.
    pub path: &'p str,
    /// The client's headers; the upstream client forwards the end-to-end
    /// ones (never credentials).
    pub headers: &'p HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Whatever the caller needs to know about this attempt when the
    /// node's answer comes back (e.g. whether the request was translated).
    pub mode: M,
}

/// Decides, for each attempt, what to send to the chosen node. The OpenAI
/// endpoints send the client's request unchanged; `/v1/messages` translates
/// it or not depending on the node (see [`crate::anthropic`]).
pub(crate) trait AttemptPlan {
    /// Returned with the answer of the node it was sent to.
    type Mode: Copy;
    /// What to send to `target`.
    fn attempt(&mut self, target: &NodeTarget) -> Attempt<'_, Self::Mode>;

    /// Whether the usage-only chunk is removed from the streamed answer
    /// (the gateway asked for usage on the client's behalf). Default false.
    fn strip_usage_chunk(&self) -> bool {
        false
    }
}

/// The client's request, unchanged, to whichever node is chosen.
#[derive(Debug)]
pub(crate) struct SameForEveryNode<'p> {
    /// Path on the node.
    pub path: &'p str,
    /// The client's headers.
    pub headers: &'p HeaderMap,
    /// The client's body (with `stream_options.include_usage` added when
    /// `strip_usage`).
    pub body: Bytes,
    /// The gateway added `stream_options.include_usage`: remove the usage
    /// chunk from the stream the client sees.
    pub strip_usage: bool,
}

impl AttemptPlan for SameForEveryNode<'_> {
    type Mode = ();

    fn strip_usage_chunk(&self) -> bool {
        self.strip_usage
    }

    fn attempt(&mut self, _target: &NodeTarget) -> Attempt<'_, ()> {
        Attempt {
            path: self.path,
            headers: self.headers,
            body: self.body.clone(),
            mode: (),
        }
    }
}

/// A node's answer, relayed ([`forward`]): the response for the client and
/// the mode of the attempt that produced it.
#[derive(Debug)]
pub(crate) struct Forwarded<M> {
    /// The node's response, relayed (body streaming).
    pub response: Response,
    /// The [`Attempt::mode`] of the node whose answer this is.
    pub mode: M,
}

/// The failure kept from the previous attempt, used when no attempt
/// succeeds.
enum LastFailure<M> {
    /// A node answered with a retryable status: passed through as is.
    Answer(NodeId, RoutingReason, Response<Incoming>, M),
    /// No answer: turned into an [`ApiError`].
    Error(ApiError),
}

/// Routes a request and forwards it, retrying on the next-best node before
/// the first byte (see the module docs); `plan` says what each attempt
/// sends. Each attempt first waits at the chosen node's prefill gate
/// (`routing.prefill_concurrency`); `stream` says whether the node's answer
/// is streamed (its first event then opens the gate).
///
/// # Errors
/// The gateway's own errors when no node answer is relayed: 503 when no
/// node is routable, 502/504 when no node answered, 500 on an internal
/// failure.
pub(crate) async fn forward<P: AttemptPlan>(
    gw: &Arc<Gateway>,
    plan: &mut P,
    mut ctx: RoutingContext,
    stream: bool,
    deadline: Option<(tokio::time::Instant, Duration)>,
) -> Result<Forwarded<P::Mode>, ApiError> {
    let settings = gw.settings();
    let attempts = settings.max_retries.saturating_add(1);
    let mut last: Option<LastFailure<P::Mode>> = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(settings.retry_delay).await;
        }
        let select = telemetry::select_span(attempt + 1);
        let selected = select.in_scope(|| gw.cluster().select(&ctx));
        let selection = match selected {
            Ok(selection) => selection,
            Err(FacadeError::NoRoutableNode { model, nodes }) => {
                if last.is_none() {
                    gw.metrics().no_routable_node();
                }
                return match last {
                    Some(last) => last_failure_response(gw, last, attempt),
                    None => Err(no_routable_node(model.as_deref(), &nodes)),
                };
            }
            Err(other) => return Err(ApiError::internal(other.to_string())),
        };
        let node_id = selection.target.node_id.clone();
        let mut guard = selection.guard;
        let reason = guard.reason();
        ctx.excluded.push(node_id.clone());
        telemetry::record_choice(&select, node_id.as_str(), reason.as_str());
        drop(select);
        if let Some(trace_id) = telemetry::current_trace_id() {
            guard.set_trace_id(trace_id);
        }
        let upstream =
            telemetry::upstream_span(node_id.as_str(), &selection.target.base_url, attempt + 1);
        // One prefill per node at a time (routing.prefill_concurrency).
        match deadline {
            None => guard.admitted(stream).instrument(upstream.clone()).await,
            Some((at, timeout)) => {
                if tokio::time::timeout_at(at, guard.admitted(stream))
                    .instrument(upstream.clone())
                    .await
                    .is_err()
                {
                    guard.finish(RequestOutcome::ClientCancelled);
                    telemetry::record_outcome(&upstream, "prefill gate timeout");
                    return Err(ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "server_error",
                        codes::UPSTREAM_TIMEOUT,
                        format!(
                            "node {node_id} was still busy with earlier prompts when gateway.request_timeout ({timeout:?}) ran out"
                        ),
                    ));
                }
            }
        }
        let Attempt {
            path,
            headers,
            body,
            mode,
        } = plan.attempt(&selection.target);
        // An https:// node's TLS settings live in its spec.
        let tls = selection
            .target
            .base_url
            .starts_with("https://")
            .then(|| gw.cluster().node_tls(&node_id))
            .flatten();
        // The node's parent span is this attempt (W3C trace context).
        let traced = telemetry::with_traceparent(headers, &upstream);
        let request = UpstreamRequest {
            base_url: &selection.target.base_url,
            path,
            api_key: selection.target.api_key.as_ref().map(|k| k.expose()),
            client_headers: traced.as_ref().unwrap_or(headers),
            body,
            tls: tls.as_ref(),
        };
        let sent = match deadline {
            None => {
                gw.upstream()
                    .post(request)
                    .instrument(upstream.clone())
                    .await
            }
            Some((at, timeout)) => {
                match tokio::time::timeout_at(at, gw.upstream().post(request))
                    .instrument(upstream.clone())
                    .await
                {
                    Ok(sent) => sent,
                    Err(_) => {
                        guard.finish(RequestOutcome::Failed {
                            kind: FailureKind::Timeout,
                        });
                        telemetry::record_outcome(&upstream, "request timeout");
                        return Err(ApiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "server_error",
                            codes::UPSTREAM_TIMEOUT,
                            format!(
                                "no answer from node {node_id} within gateway.request_timeout ({timeout:?})"
                            ),
                        ));
                    }
                }
            }
        };
        match sent {
            Ok(response) => {
                let status = response.status();
                if !upstream.is_none() {
                    upstream.record("http.response.status_code", i64::from(status.as_u16()));
                }
                let retryable = status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::NOT_FOUND;
                if !retryable {
                    // Committed only once the first body frame is in: a node
                    // that sends headers and then nothing (or garbage) is
                    // retried like one that sent nothing.
                    let (parts, incoming) = response.into_parts();
                    let within = deadline.map_or(settings.idle_timeout, |(at, _)| {
                        settings
                            .idle_timeout
                            .min(at.saturating_duration_since(tokio::time::Instant::now()))
                    });
                    telemetry::record_outcome(&upstream, "ok");
                    drop(upstream);
                    let first_byte = telemetry::first_byte_span(node_id.as_str());
                    let first = first_frame(incoming, within)
                        .instrument(first_byte.clone())
                        .await;
                    if !matches!(first, FirstFrame::Ready(_)) {
                        telemetry::record_outcome(&first_byte, "no first frame");
                    }
                    drop(first_byte);
                    match first {
                        FirstFrame::Ready(body) => {
                            tracing::debug!(node = %node_id, %status, stream, attempt, "forwarded");
                            telemetry::record_served(
                                node_id.as_str(),
                                reason.as_str(),
                                attempt + 1,
                            );
                            let how = RelayHow {
                                attempts: attempt + 1,
                                deadline,
                                strip_usage: plan.strip_usage_chunk(),
                                reason,
                            };
                            let response = Response::from_parts(parts, body);
                            return Ok(Forwarded {
                                response: relay(gw, response, node_id, guard, how),
                                mode,
                            });
                        }
                        FirstFrame::Failed(error) => {
                            guard.finish(RequestOutcome::Failed {
                                kind: FailureKind::InvalidResponse,
                            });
                            gw.metrics().retry(RetryCause::Request);
                            tracing::warn!(node = %node_id, %error, attempt, "node's body failed before its first byte; trying another node");
                            last = Some(LastFailure::Error(ApiError::new(
                                StatusCode::BAD_GATEWAY,
                                "server_error",
                                codes::UPSTREAM_ERROR,
                                format!(
                                    "node {node_id} sent an invalid body: {}",
                                    error_chain(&error)
                                ),
                            )));
                        }
                        FirstFrame::TimedOut => {
                            guard.finish(RequestOutcome::Failed {
                                kind: FailureKind::Timeout,
                            });
                            gw.metrics().retry(RetryCause::Timeout);
                            tracing::warn!(node = %node_id, attempt, ?within, "node sent headers but no body; trying another node");
                            last = Some(LastFailure::Error(ApiError::new(
                                StatusCode::GATEWAY_TIMEOUT,
                                "server_error",
                                codes::UPSTREAM_IDLE_TIMEOUT,
                                format!(
                                    "node {node_id} sent its headers but no body within {within:?}"
                                ),
                            )));
                        }
                    }
                    continue;
                }
                let overloaded = matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                );
                if overloaded {
                    guard.finish(RequestOutcome::Overloaded {
                        retry_after: retry_after(response.headers()),
                    });
                    gw.metrics().retry(RetryCause::Overloaded);
                } else if status == StatusCode::NOT_FOUND {
                    guard.finish(RequestOutcome::Failed {
                        kind: FailureKind::NotServed {
                            status: status.as_u16(),
                        },
                    });
                    gw.metrics().retry(RetryCause::NotServed);
                } else {
                    guard.finish(RequestOutcome::Failed {
                        kind: FailureKind::ServerError {
                            status: status.as_u16(),
                        },
                    });
                    gw.metrics().retry(RetryCause::ServerError);
                }
                telemetry::record_outcome(&upstream, status.as_str());
                tracing::warn!(parent: &upstream, node = %node_id, %status, attempt, "node answered {status}; trying another node");
                last = Some(LastFailure::Answer(node_id, reason, response, mode));
            }
            Err(error) => {
                let (kind, cause) = match &error {
                    UpstreamError::Connect { .. } => (FailureKind::Connect, RetryCause::Connect),
                    UpstreamError::Timeout { .. } => (FailureKind::Timeout, RetryCause::Timeout),
                    _ => (FailureKind::Reset, RetryCause::Request),
                };
                guard.finish(RequestOutcome::Failed { kind });
                gw.metrics().retry(cause);
                telemetry::record_outcome(&upstream, &format!("{cause:?}").to_lowercase());
                tracing::warn!(parent: &upstream, node = %node_id, %error, attempt, "request failed before its first byte; trying another node");
                last = Some(LastFailure::Error(upstream_error(&node_id, &error)));
            }
        }
    }
    match last {
        Some(last) => last_failure_response(gw, last, attempts),
        None => Err(ApiError::internal("no attempt was made")),
    }
}

fn upstream_error(node: &NodeId, error: &UpstreamError) -> ApiError {
    match error {
        UpstreamError::Timeout { after, .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            codes::UPSTREAM_TIMEOUT,
            format!("node {node} sent no response within {after:?}"),
        ),
        UpstreamError::Connect { source, .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            codes::UPSTREAM_UNAVAILABLE,
            // The chain says why, e.g. a refused certificate.
            format!("cannot connect to node {node}: {}", error_chain(source)),
        ),
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            codes::UPSTREAM_UNAVAILABLE,
            format!("request to node {node} failed: {}", error_chain(other)),
        ),
    }
}

/// An error and its sources, `: `-joined (hyper's top-level messages are
/// terse).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn last_failure_response<M>(
    gw: &Gateway,
    last: LastFailure<M>,
    attempts: u32,
) -> Result<Forwarded<M>, ApiError> {
    match last {
        LastFailure::Answer(node, reason, response, mode) => {
            let response = response.map(Peeked::unread);
            let topology = gw
                .settings()
                .observability
                .topology_headers
                .then_some(reason);
            let mut response = relay_parts(response, &node, topology, |incoming, mode, node| {
                RelayBody::new(incoming, mode, Duration::from_secs(60), node, NoSink)
            });
            response
                .headers_mut()
                .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
            Ok(Forwarded { response, mode })
        }
        LastFailure::Error(mut error) => {
            if attempts > 1 {
                error.message = format!("{} (after {attempts} attempts)", error.message);
            }
            Err(error)
        }
    }
}

/// 503 with every node's state, so the client sees why.
fn no_routable_node(
    model: Option<&str>,
    nodes: &[(NodeId, cluster_types::NodeStatus)],
) -> ApiError {
    let states = if nodes.is_empty() {
        "no nodes are known".to_owned()
    } else {
        nodes
            .iter()
            .map(|(id, status)| format!("{id}: {status}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = match model {
        Some(model) => format!("no healthy node serves model {model:?}"),
        None => "no healthy node is available".to_owned(),
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        codes::NO_ROUTABLE_NODE,
        format!("{what} (nodes: {states})"),
    )
    .with_retry_after(Some(Duration::from_secs(1)))
}

/// The facade's request guard as the relay's outcome sink.
struct GuardSink {
    guard: RequestGuard,
    gateway: Arc<Gateway>,
    /// The trace's `stream` span, ended with the relay.
    trace: telemetry::StreamTrace,
}

impl OutcomeSink for GuardSink {
    fn first_byte(&mut self) {
        self.guard.first_byte();
    }

    fn finish(self, outcome: RelayOutcome) {
        self.trace.record(&outcome);
        let outcome = match outcome {
            RelayOutcome::Success(usage) => RequestOutcome::Success {
                prompt_tokens: usage.prompt_tokens,
                cached_tokens: usage.cached_tokens,
                completion_tokens: usage.completion_tokens,
            },
            RelayOutcome::Failed(failure) => {
                self.gateway.metrics().stream_failure(failure);
                RequestOutcome::Failed {
                    kind: match failure {
                        RelayFailure::Reset => FailureKind::Reset,
                        RelayFailure::IdleTimeout => FailureKind::Timeout,
                        RelayFailure::Truncated => FailureKind::InvalidResponse,
                        RelayFailure::Deadline => FailureKind::Timeout,
                    },
                }
            }
            RelayOutcome::Cancelled => RequestOutcome::ClientCancelled,
        };
        // The trace ends before the decision record is written, so a
        // reader of the record finds the trace complete.
        self.trace.end();
        self.guard.finish(outcome);
    }
}

/// How an answer is relayed: attempts so far, the request's deadline,
/// whether to remove the usage chunk, and why the node was chosen.
struct RelayHow {
    attempts: u32,
    deadline: Option<(tokio::time::Instant, Duration)>,
    strip_usage: bool,
    reason: RoutingReason,
}

fn relay(
    gw: &Arc<Gateway>,
    response: Response<Peeked>,
    node: NodeId,
    guard: RequestGuard,
    how: RelayHow,
) -> Response {
    let idle = gw.settings().idle_timeout;
    let sink = GuardSink {
        guard,
        gateway: Arc::clone(gw),
        trace: telemetry::StreamTrace::start(node.as_str()),
    };
    let RelayHow {
        attempts,
        deadline,
        strip_usage,
        reason,
    } = how;
    let topology = gw
        .settings()
        .observability
        .topology_headers
        .then_some(reason);
    let mut response = relay_parts(response, &node, topology, move |incoming, mode, node| {
        RelayBody::new(incoming, mode, idle, node, sink)
            .with_deadline(deadline)
            .strip_usage_chunk(strip_usage)
    });
    if attempts > 1 {
        response
            .headers_mut()
            .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    }
    response
}

/// The node's response with its body relayed; `topology` (the reason) when
/// the topology headers are on.
fn relay_parts<S: OutcomeSink>(
    response: Response<Peeked>,
    node: &NodeId,
    topology: Option<RoutingReason>,
    make: impl FnOnce(Peeked, RelayMode, String) -> RelayBody<Peeked, S>,
) -> Response {
    let (mut parts, incoming) = response.into_parts();
    clean_response_headers(&mut parts.headers);
    // Nodes may answer in HTTP/1.0 (mlx_lm.server); the client keeps the
    // version it spoke.
    parts.version = Version::HTTP_11;
    let mode = RelayMode::for_response(
        parts.status,
        parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
    );
    if mode == RelayMode::Sse {
        // An error event may be appended; proxies in front must not buffer.
        parts.headers.remove(CONTENT_LENGTH);
        parts
            .headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    if let Some(reason) = topology {
        if let Ok(value) = HeaderValue::from_str(node.as_str()) {
            parts.headers.insert(NODE_HEADER, value);
        }
        parts
            .headers
            .insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    } else {
        // A node must not reveal the topology either.
        parts.headers.remove(NODE_HEADER);
        parts.headers.remove(REASON_HEADER);
    }
    let body = make(incoming, mode, node.as_str().to_owned());
    Response::from_parts(parts, Body::new(body))
}
