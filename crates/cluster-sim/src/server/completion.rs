//! `POST /v1/chat/completions` and `/v1/completions`: validation as
//! mlx_lm.server does it, fault injection, admission into the cost model,
//! and the answer (JSON or SSE) paced in scaled real time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

use super::{FaultState, NodeState, error_response, lock, mlx_json_response, unix_now};
use crate::api::{
    ChatRequest, Choice, CompletionBody, Delta, FunctionOut, Message, TextRequest, ToolCallOut,
    Usage, to_mlx_json,
};
use crate::faults::FaultAction;
use crate::model::{Admission, SimRequest};
use crate::tool_calls::ToolCallPlan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// What the answer must look like, from the request.
struct RequestMeta {
    kind: Kind,
    model: String,
    stream: bool,
    include_usage: bool,
    /// `stream_options` without `include_usage`: mlx_lm 0.32 then ends the
    /// stream after the finish chunk (no usage, no `[DONE]`).
    usage_key_missing: bool,
    created: u64,
    /// Answer with this tool call instead of text (see
    /// [`crate::tool_calls`]).
    tool_call: Option<ToolCallPlan>,
}

fn length_required(headers: &HeaderMap) -> Option<Response> {
    (!headers.contains_key(header::CONTENT_LENGTH)).then(|| {
        error_response(
            StatusCode::LENGTH_REQUIRED,
            "Content-Length header is required",
        )
    })
}

/// mlx_lm.server's message for a body that does not make a valid request.
fn explain(body: &[u8], required: &str, error: &serde_json::Error) -> String {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return format!("Invalid JSON in request body: {e}"),
    };
    let Some(object) = value.as_object() else {
        return "Request should be a JSON dictionary".to_owned();
    };
    if object.get("stream").is_some_and(|v| !v.is_boolean()) {
        return "stream must be of type bool".to_owned();
    }
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = object.get(key).filter(|v| !v.is_null()) {
            if v.as_i64().is_some_and(|n| n < 1) {
                return "max_tokens must be at least 1".to_owned();
            }
            if !v.is_u64() {
                return "max_tokens must be of type int".to_owned();
            }
        }
    }
    if object.get("model").is_some_and(|v| !v.is_string()) {
        return "requested_model must be of type str".to_owned();
    }
    if !object.contains_key(required) {
        return if required == "messages" {
            "Request did not contain messages".to_owned()
        } else {
            "Request did not contain a prompt".to_owned()
        };
    }
    format!("Invalid request: {error}")
}

/// Parses a request body; the error is mlx_lm.server's 400 message.
fn parse<T: DeserializeOwned>(body: &[u8], required: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| explain(body, required, &e))
}

/// Output tokens to generate; the error is mlx_lm.server's 400 message.
fn output_tokens(state: &NodeState, limit: Option<u32>) -> Result<usize, String> {
    match limit {
        Some(0) => Err("max_tokens must be at least 1".to_owned()),
        Some(n) => Ok(n as usize),
        None => Ok(state.config.default_max_tokens as usize),
    }
}

pub(super) async fn chat_completions(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = length_required(&headers) {
        return response;
    }
    let request: ChatRequest = match parse(&body, "messages") {
        Ok(r) => r,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let mut output = match output_tokens(&state, request.output_limit()) {
        Ok(n) => n,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let tool_call = ToolCallPlan::for_request(&request);
    if let Some(call) = &tool_call {
        // One token for the call's name, one per argument fragment.
        output = output.min(call.fragments().len() + 1);
    }
    let meta = RequestMeta {
        kind: Kind::Chat,
        stream: request.stream,
        include_usage: request.include_usage(),
        usage_key_missing: request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage.is_none()),
        created: unix_now(),
        model: request.model.clone(),
        tool_call,
    };
    let sim = SimRequest::from_chat(request.prompt_tokens(), output);
    serve(state, meta, sim).await
}

pub(super) async fn text_completions(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = length_required(&headers) {
        return response;
    }
    let request: TextRequest = match parse(&body, "prompt") {
        Ok(r) => r,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let output = match output_tokens(&state, request.max_tokens) {
        Ok(n) => n,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let options = request.stream_options.as_ref();
    let meta = RequestMeta {
        kind: Kind::Text,
        stream: request.stream,
        include_usage: options.is_some_and(|o| o.include_usage == Some(true)),
        usage_key_missing: options.is_some_and(|o| o.include_usage.is_none()),
        created: unix_now(),
        model: request.model,
        tool_call: None,
    };
    let sim = SimRequest::from_text(&request.prompt, output);
    serve(state, meta, sim).await
}

fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn serve(state: Arc<NodeState>, meta: RequestMeta, request: SimRequest) -> Response {
    state.counters.completions.fetch_add(1, Ordering::Relaxed);
    let (decision, dead) = {
        let mut faults = lock(&state.faults);
        let FaultState { config, rng } = &mut *faults;
        (config.decide(rng), config.generation_dead)
    };
    if dead {
        return error_response(StatusCode::NOT_FOUND, "generation thread died");
    }
    if decision.action != FaultAction::Serve || decision.spike > Duration::ZERO {
        state
            .counters
            .injected_faults
            .fetch_add(1, Ordering::Relaxed);
    }
    if decision.spike > Duration::ZERO {
        tokio::time::sleep(state.real_duration(decision.spike)).await;
    }
    match decision.action {
        FaultAction::Hang => return std::future::pending::<Response>().await,
        FaultAction::Overload {
            status,
            retry_after_seconds,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let response = error_response(status, "simulated overload");
            return match retry_after_seconds {
                Some(seconds) => with_retry_after(response, seconds),
                None => response,
            };
        }
        FaultAction::Error { status } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error_response(status, "simulated internal error");
        }
        FaultAction::Garbage | FaultAction::Close | FaultAction::Serve => {}
    }
    let admitted = {
        let now = state.sim_now();
        lock(&state.model).admit(now, &request)
    };
    let admission = match admitted {
        Ok(a) => a,
        Err(full) => {
            state
                .counters
                .rejected_overload
                .fetch_add(1, Ordering::Relaxed);
            let seconds = state.real_duration(full.retry_after).as_secs_f64().ceil();
            let seconds = seconds as u64;
            let response = error_response(StatusCode::SERVICE_UNAVAILABLE, &full.to_string());
            return with_retry_after(response, seconds);
        }
    };
    let reply = request.reply_text();
    let id = state.new_id(match meta.kind {
        Kind::Chat => "chatcmpl-",
        Kind::Text => "cmpl-",
    });
    let plan = ResponsePlan {
        state,
        admission,
        meta,
        id,
        reply,
        action: decision.action,
    };
    if plan.meta.stream {
        stream_response(plan)
    } else {
        full_response(plan).await
    }
}

struct ResponsePlan {
    state: Arc<NodeState>,
    admission: Admission,
    meta: RequestMeta,
    id: String,
    reply: String,
    action: FaultAction,
}

impl ResponsePlan {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.meta.kind, chunk) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn usage(&self) -> Usage {
        let a = &self.admission;
        Usage::new(
            a.prompt_tokens as u64,
            a.output_tokens as u64,
            a.cached_tokens as u64,
        )
    }

    fn finish_reason(&self) -> &'static str {
        if let Some(call) = &self.meta.tool_call {
            // Cut short by max_tokens: "length", as a real server says.
            return if self.admission.output_tokens > call.fragments().len() {
                "tool_calls"
            } else {
                "length"
            };
        }
        if self.admission.output_tokens == 0 {
            "stop"
        } else {
            "length"
        }
    }

    /// The tool call pieces of output tokens `from..to` (token 0 is the
    /// call's id and name, token `k` its `k`-th argument fragment), as a
    /// message's `tool_calls` (`chunk` false) or a delta's.
    fn tool_calls(&self, chunk: bool, from: usize, to: usize) -> Option<Vec<ToolCallOut<'_>>> {
        let call = self.meta.tool_call.as_ref()?;
        let fragments = call.fragments();
        let arguments: String = fragments
            .get(
                from.saturating_sub(1).min(fragments.len())
                    ..to.saturating_sub(1).min(fragments.len()),
            )
            .unwrap_or_default()
            .concat();
        let header = from == 0;
        Some(vec![ToolCallOut {
            index: chunk.then_some(0),
            id: header.then_some(call.id.as_str()),
            kind: header.then_some("function"),
            function: FunctionOut {
                name: header.then_some(call.name.as_str()),
                arguments: arguments.into(),
            },
        }])
    }

    /// A response (`chunk` false) or stream chunk with `text` (or, for a
    /// tool call answer, `calls`).
    fn body(
        &self,
        chunk: bool,
        text: Option<&str>,
        calls: Option<Vec<ToolCallOut<'_>>>,
        finish: Option<&'static str>,
    ) -> Vec<u8> {
        let role = "assistant";
        let mut choice = Choice {
            index: 0,
            finish_reason: finish,
            message: None,
            delta: None,
            text: None,
        };
        match (self.meta.kind, chunk) {
            (Kind::Chat, false) => {
                choice.message = Some(Message {
                    role,
                    content: text,
                    tool_calls: calls,
                });
            }
            (Kind::Chat, true) => {
                choice.delta = Some(Delta {
                    role,
                    content: text,
                    tool_calls: calls,
                });
            }
            (Kind::Text, _) => choice.text = Some(text.unwrap_or("")),
        }
        to_mlx_json(&CompletionBody {
            id: &self.id,
            system_fingerprint: &self.state.fingerprint,
            object: self.object(chunk),
            model: &self.meta.model,
            created: self.meta.created,
            choices: vec![choice],
            usage: (!chunk).then(|| self.usage()),
        })
    }

    /// The final `usage` chunk (`object` is `chat.completion` even for text
    /// completions, as in mlx_lm.server).
    fn usage_chunk(&self) -> Vec<u8> {
        to_mlx_json(&CompletionBody {
            id: &self.id,
            system_fingerprint: &self.state.fingerprint,
            object: "chat.completion",
            model: &self.meta.model,
            created: self.meta.created,
            choices: Vec::new(),
            usage: Some(self.usage()),
        })
    }

    fn reply_slice(&self, from: usize, to: usize) -> &str {
        let n = self.reply.len();
        let a = (from * crate::tokenizer::BYTES_PER_TOKEN).min(n);
        let b = (to * crate::tokenizer::BYTES_PER_TOKEN).min(n);
        self.reply.get(a..b).unwrap_or("")
    }
}

fn closed_mid_response() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "simulated connection close",
    )
}

const GARBAGE: &str = "{\"id\": \"garbage\", \"object\": \"chat.completion\", \"choices\": [{\"index\": 0, \"mess\u{fffd}";

async fn full_response(plan: ResponsePlan) -> Response {
    tokio::time::sleep_until(plan.state.real_at(plan.admission.finish)).await;
    let body = if plan.action == FaultAction::Garbage {
        GARBAGE.as_bytes().to_vec()
    } else {
        let n = plan.admission.output_tokens;
        let calls = plan.tool_calls(false, 0, n);
        let text = if calls.is_some() {
            ""
        } else {
            plan.reply_slice(0, n)
        };
        let text = (!text.is_empty()).then_some(text);
        plan.body(false, text, calls, Some(plan.finish_reason()))
    };
    if plan.action == FaultAction::Close {
        let len = body.len();
        let half = Bytes::from(body).slice(..len / 2);
        // Let the headers and the first half leave before the connection drops.
        let cut = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(closed_mid_response())
        });
        let parts = futures::stream::iter([Ok::<_, std::io::Error>(half)]).chain(cut);
        let mut response = mlx_json_response(StatusCode::OK, Body::from_stream(parts));
        if let Ok(value) = HeaderValue::from_str(&len.to_string()) {
            response.headers_mut().insert(header::CONTENT_LENGTH, value);
        }
        return response;
    }
    mlx_json_response(StatusCode::OK, Body::from(body))
}

/// The `: keepalive P/T` progress points of mlx_lm 0.32, where `T` is the
/// number of prompt tokens to process: every `step` tokens below `T - 1`,
/// then `T - 1` and `T` (just `1/1` when `T` is 1).
fn progress_points(to_process: usize, step: usize) -> Vec<usize> {
    let step = step.max(1);
    let t = to_process.max(1);
    let mut points: Vec<usize> = (1..)
        .map(|k| k * step)
        .take_while(|&p| p < t.saturating_sub(1))
        .collect();
    if t > 1 {
        points.push(t - 1);
    }
    points.push(t);
    points
}

enum Phase {
    Prefill { index: usize },
    Tokens { next: usize },
    Usage,
    Done,
    End,
}

struct StreamState {
    plan: ResponsePlan,
    phase: Phase,
    progress: Vec<usize>,
    interval: Duration,
    next_chunk: Option<Instant>,
    close_after: Option<usize>,
}

fn sse_data(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl StreamState {
    async fn next_item(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        let state = Arc::clone(&self.plan.state);
        let a = &self.plan.admission;
        match self.phase {
            Phase::Prefill { index } => {
                let to_process = a.prompt_tokens - a.cached_tokens;
                let point = self.progress.get(index).copied().unwrap_or(to_process);
                let at = a.prefill_progress_time(a.cached_tokens + point);
                tokio::time::sleep_until(state.real_at(at)).await;
                self.phase = if index + 1 < self.progress.len() {
                    Phase::Prefill { index: index + 1 }
                } else {
                    Phase::Tokens { next: 0 }
                };
                let total = to_process.max(1);
                Some(Ok(Bytes::from(format!(": keepalive {point}/{total}\n\n"))))
            }
            Phase::Tokens { next } => {
                let total = a.output_tokens;
                if self.close_after.is_some_and(|c| next >= c) {
                    self.phase = Phase::End;
                    return Some(Err(closed_mid_response()));
                }
                if next >= total {
                    self.phase = if self.plan.meta.include_usage {
                        Phase::Usage
                    } else if self.plan.meta.usage_key_missing {
                        Phase::End
                    } else {
                        Phase::Done
                    };
                    tokio::time::sleep_until(state.real_at(a.finish)).await;
                    let body = self
                        .plan
                        .body(true, None, None, Some(self.plan.finish_reason()));
                    return Some(Ok(sse_data(&body)));
                }
                let due = state.real_at(a.token_time(next));
                tokio::time::sleep_until(self.next_chunk.map_or(due, |n| n.max(due))).await;
                if self.plan.action == FaultAction::Garbage {
                    self.phase = Phase::Done;
                    return Some(Ok(sse_data(GARBAGE.as_bytes())));
                }
                let now = Instant::now();
                let mut end = next + 1;
                let limit = self.close_after.unwrap_or(total).min(total);
                // Tool call pieces go out one per chunk, as servers stream
                // them; text tokens due by now share one.
                let grouped = self.plan.meta.tool_call.is_none();
                while grouped && end < limit && state.real_at(a.token_time(end)) <= now {
                    end += 1;
                }
                self.phase = Phase::Tokens { next: end };
                let body = match self.plan.tool_calls(true, next, end) {
                    Some(calls) => self.plan.body(true, None, Some(calls), None),
                    None => {
                        self.plan
                            .body(true, Some(self.plan.reply_slice(next, end)), None, None)
                    }
                };
                // Tokens due before the next chunk may go out join it.
                self.next_chunk = Some(now + self.interval);
                Some(Ok(sse_data(&body)))
            }
            Phase::Usage => {
                self.phase = Phase::Done;
                Some(Ok(sse_data(&self.plan.usage_chunk())))
            }
            Phase::Done => {
                self.phase = Phase::End;
                Some(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            }
            Phase::End => None,
        }
    }
}

fn stream_response(plan: ResponsePlan) -> Response {
    let interval = Duration::try_from_secs_f64(plan.state.config.stream_chunk_interval_ms / 1000.0)
        .unwrap_or_default();
    let close_after =
        (plan.action == FaultAction::Close).then_some(plan.admission.output_tokens / 2);
    let a = &plan.admission;
    let progress = progress_points(
        a.prompt_tokens - a.cached_tokens,
        plan.state.config.model.prefill_step_tokens,
    );
    let state = StreamState {
        plan,
        phase: Phase::Prefill { index: 0 },
        progress,
        interval,
        next_chunk: None,
        close_after,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        s.next_item().await.map(|item| (item, s))
    })
    .boxed();
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_progress_matches_mlx() {
        assert_eq!(progress_points(21, 2048), vec![20, 21]);
        assert_eq!(progress_points(1, 2048), vec![1]);
        assert_eq!(progress_points(3134, 2048), vec![2048, 3133, 3134]);
        assert_eq!(progress_points(5000, 2048), vec![2048, 4096, 4999, 5000]);
    }

    #[test]
    fn explains_bad_bodies_like_mlx() {
        let e = serde_json::from_slice::<ChatRequest>(b"x").unwrap_err();
        let msg = |body: &[u8]| explain(body, "messages", &e);
        assert!(msg(b"{not json").starts_with("Invalid JSON in request body: "));
        assert_eq!(msg(b"[1]"), "Request should be a JSON dictionary");
        assert_eq!(msg(b"{}"), "Request did not contain messages");
        assert_eq!(
            msg(br#"{"messages":[],"stream":"true"}"#),
            "stream must be of type bool"
        );
        assert_eq!(
            msg(br#"{"messages":[],"model":5}"#),
            "requested_model must be of type str"
        );
        assert_eq!(
            msg(br#"{"messages":[],"max_tokens":0}"#),
            "max_tokens must be at least 1"
        );
        assert_eq!(
            explain(b"{}", "prompt", &e),
            "Request did not contain a prompt"
        );
    }
}
