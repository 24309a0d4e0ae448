//! The endpoints: `POST /v1/messages` (routed like any request, translated
//! or passed through per node, the answer translated back) and
//! `POST /v1/messages/count_tokens` (answered by the gateway).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cluster_facade::NodeTarget;
use cluster_types::{NodeApi, RoutingContext, max_output_tokens_tag};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Limited};

use super::body::TranslatedStream;
use super::error::AnthropicError;
use super::native::rewrite_native_body;
use super::parse::Endpoint;
use super::request::{ModelMap, capped_max_tokens};
use super::response::{ReplyMeta, translate_response};
use super::types::MessagesRequest;
use crate::gateway::Gateway;
use crate::proxy::{
    ATTEMPTS_HEADER, Attempt, AttemptPlan, Forwarded, NODE_HEADER, forward, read_request_body,
    request_deadline,
};
use crate::request::{ANY_MODEL, ApiKind, ParsedRequest};
use crate::sniff::JsonSniffer;
use crate::upstream::retry_after;

/// Claude Code's session header.
pub(super) const CLAUDE_CODE_SESSION_HEADER: HeaderName =
    HeaderName::from_static("x-claude-code-session-id");

/// Largest node error body read for its message (the rest is not needed).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// `POST /v1/messages`.
pub(crate) async fn messages(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let _in_flight = gw.metrics().begin();
    let span = crate::telemetry::request_span(ApiKind::Messages.path(), req.headers());
    let response =
        match tracing::Instrument::instrument(handle_messages(&gw, req), span.clone()).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
    crate::telemetry::record_status(&span, response.status().as_u16());
    gw.metrics()
        .response(ApiKind::Messages, response.status().as_u16());
    response
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, an estimate of
/// the prompt's tokens from its canonical text (system, tools, messages)
/// at 4 bytes a token, the same estimate the router uses. No node is asked:
/// mlx_lm.server has no tokenizer endpoint.
pub(crate) async fn count_tokens(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match handle_count_tokens(&gw, req).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// How the request went to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Translated to chat completions.
    Translated,
    /// Passed through to a node serving Messages itself.
    Native,
}

/// Sends each attempt translated or not, by the chosen node's `api` tag,
/// with `max_tokens` capped by its `max_output_tokens` tag or the gateway's
/// cap.
struct MessagesPlan<'p> {
    request: &'p MessagesRequest<'p>,
    /// The client's body (for nodes that serve Messages).
    original: &'p [u8],
    /// Path and query the client used (`/v1/messages?beta=true`).
    native_path: &'p str,
    client_headers: &'p HeaderMap,
    /// The client's headers without Anthropic's (for OpenAI nodes).
    openai_headers: HeaderMap,
    /// The model sent to nodes.
    model: &'p str,
    /// `gateway.max_output_tokens`.
    global_cap: u32,
    /// The translation with `global_cap`, made once for routing.
    translated: Bytes,
}

impl AttemptPlan for MessagesPlan<'_> {
    type Mode = Mode;

    fn attempt(&mut self, target: &NodeTarget) -> Attempt<'_, Mode> {
        let api = NodeApi::from_tags(&target.tags).unwrap_or_else(|e| {
            tracing::warn!(node = %target.node_id, "ignoring its tag: {e}");
            NodeApi::OpenAi
        });
        let cap = max_output_tokens_tag(&target.tags)
            .unwrap_or_else(|e| {
                tracing::warn!(node = %target.node_id, "ignoring its max_output_tokens tag: {e}");
                None
            })
            .unwrap_or(self.global_cap);
        let max_tokens = capped_max_tokens(self.request.max_tokens, cap);
        if api == NodeApi::Anthropic {
            let body = rewrite_native_body(self.original, self.model, max_tokens)
                .map_or_else(|_| Bytes::copy_from_slice(self.original), Bytes::from);
            return Attempt {
                path: self.native_path,
                headers: self.client_headers,
                body,
                mode: Mode::Native,
            };
        }
        let body = if cap == self.global_cap {
            self.translated.clone()
        } else {
            Bytes::from(self.request.to_chat_completions(self.model, max_tokens))
        };
        Attempt {
            path: ApiKind::ChatCompletions.path(),
            headers: &self.openai_headers,
            body,
            mode: Mode::Translated,
        }
    }
}

/// The client's headers minus Anthropic's (`anthropic-version`,
/// `anthropic-beta`, ...): an OpenAI node has no use for them.
/// (Credentials — `x-api-key`, `authorization` — are never forwarded by
/// the upstream client in any case.)
fn openai_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(client.len());
    for (name, value) in client {
        if !name.as_str().starts_with("anthropic-") && name != CLAUDE_CODE_SESSION_HEADER {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The parsed request, the model sent to nodes, and the translation used
/// for routing.
fn prepare<'b>(
    gw: &Gateway,
    body: &'b [u8],
    endpoint: Endpoint,
) -> Result<(MessagesRequest<'b>, String), AnthropicError> {
    let request = MessagesRequest::parse(body, endpoint)?;
    let settings = gw.settings();
    let map = ModelMap {
        aliases: &settings.model_aliases,
        default_model: &settings.default_model,
    };
    let models = gw.cluster().models();
    let model = map
        .resolve(&request.model, |m| {
            m == ANY_MODEL || models.iter().any(|listed| listed == m)
        })
        .to_owned();
    Ok((request, model))
}

/// The routing context of the translated request: the same canonical
/// prompt (and so the same fingerprint) as the OpenAI request a client
/// would send for this conversation.
fn routing_context(
    gw: &Gateway,
    headers: &HeaderMap,
    request: &MessagesRequest<'_>,
    translated: &[u8],
) -> Result<RoutingContext, AnthropicError> {
    let settings = gw.settings();
    let parsed = ParsedRequest::parse(
        ApiKind::ChatCompletions,
        headers,
        &settings.session_header,
        translated,
    )
    .map_err(|e| AnthropicError::from(crate::error::ApiError::internal(e.message)))?;
    let mut ctx = parsed.routing_context(settings.fingerprint_block_bytes);
    if ctx.session_id.is_none() {
        ctx.session_id = headers
            .get(&CLAUDE_CODE_SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or_else(|| request.session_from_user_id());
    }
    Ok(ctx)
}

async fn handle_messages(gw: &Arc<Gateway>, req: Request) -> Result<Response, AnthropicError> {
    let settings = gw.settings();
    let deadline = request_deadline(gw);
    let (parts, body) = req.into_parts();
    let body = read_request_body(gw, &parts.headers, body).await?;
    let (request, model) = prepare(gw, &body, Endpoint::Messages)?;
    let global_cap = settings.max_output_tokens;
    let translated = Bytes::from(
        request.to_chat_completions(&model, capped_max_tokens(request.max_tokens, global_cap)),
    );
    let ctx = routing_context(gw, &parts.headers, &request, &translated)?;
    let meta = ReplyMeta::new(&request.model, &request.stop_sequences);
    let native_path = parts
        .uri
        .path_and_query()
        .map_or("/v1/messages", |p| p.as_str());
    let mut plan = MessagesPlan {
        request: &request,
        original: &body,
        native_path,
        client_headers: &parts.headers,
        openai_headers: openai_headers(&parts.headers),
        model: &model,
        global_cap,
        translated,
    };
    let forwarded = forward(gw, &mut plan, ctx, request.stream, deadline).await?;
    Ok(translate_answer(forwarded, meta).await)
}

/// Turns a translated node answer into a Messages answer (answers of
/// nodes serving Messages pass unchanged).
async fn translate_answer(forwarded: Forwarded<Mode>, meta: ReplyMeta) -> Response {
    if forwarded.mode == Mode::Native {
        return forwarded.response;
    }
    let (mut parts, body) = forwarded.response.into_parts();
    let node = parts
        .headers
        .get(&NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    if !parts.status.is_success() {
        let bytes = Limited::new(body, ERROR_BODY_LIMIT)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let error = AnthropicError::from_node_answer(
            &node,
            parts.status,
            &bytes,
            retry_after(&parts.headers),
        );
        let mut response = error.into_response();
        for name in [NODE_HEADER, ATTEMPTS_HEADER] {
            if let Some(v) = parts.headers.get(&name) {
                response.headers_mut().insert(name, v.clone());
            }
        }
        return response;
    }
    let event_stream = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if event_stream {
        parts.headers.remove(CONTENT_LENGTH);
        parts.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        return Response::from_parts(parts, Body::new(TranslatedStream::new(body, meta)));
    }
    let translated = match Limited::new(body, JsonSniffer::DEFAULT_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => translate_response(&collected.to_bytes(), &meta),
        Err(e) => Err(AnthropicError::bad_node_answer(format!(
            "node {node}'s answer could not be read: {e}"
        ))),
    };
    match translated {
        Ok(json) => {
            parts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(json.len()));
            Response::from_parts(parts, Body::from(json))
        }
        Err(mut error) => {
            error.message = format!("node {node}: {}", error.message);
            let mut response = error.into_response();
            if let Some(v) = parts.headers.get(&NODE_HEADER) {
                response.headers_mut().insert(NODE_HEADER, v.clone());
            }
            response
        }
    }
}

async fn handle_count_tokens(gw: &Arc<Gateway>, req: Request) -> Result<Response, AnthropicError> {
    let (parts, body) = req.into_parts();
    let body = read_request_body(gw, &parts.headers, body).await?;
    let (request, model) = prepare(gw, &body, Endpoint::CountTokens)?;
    let translated = request.to_chat_completions(&model, None);
    let ctx = routing_context(gw, &parts.headers, &request, &translated)?;
    let json = serde_json::json!({ "input_tokens": ctx.prompt_tokens_estimate });
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json.to_string(),
    )
        .into_response())
}
