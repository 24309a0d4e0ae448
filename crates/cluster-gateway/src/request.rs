//! Reading a client request once: which API, model, streaming, session and
//! the canonical prompt the router fingerprints.
//!
//! The body is parsed a single time into [`ParsedRequest`], which borrows
//! from the body's bytes. The bytes forwarded to the node are the client's
//! own; nothing is re-serialized.
//!
//! # Canonical prompt
//! Following [`cluster_types::fingerprint`]'s convention, the prompt is fed
//! to the fingerprint builder as: the model, the system prompt, the tool
//! list, then each message with its role, in order.
//!
//! - Text is the decoded *text* of contents: a string content, or the `text`
//!   of each text part/block of an array content (OpenAI content parts,
//!   Anthropic content blocks). Other parts (images, `tool_use`,
//!   `tool_result`) are fed as their JSON with `cache_control` removed:
//!   Anthropic clients move their `cache_control` markers to the newest
//!   block on every turn, and a marker must not change the prefix.
//! - OpenAI chat's system prompt is its leading `system`/`developer`
//!   messages; Anthropic's is the `system` field.
//! - An assistant message's `tool_calls` follow its content, one piece per
//!   call: id, name and arguments (whitespace between JSON tokens removed).
//! - Tools: one segment per tool: name, description and schema, in either
//!   API's shape, members in any order, whitespace between JSON tokens
//!   removed; so an Anthropic Messages request, translated,
//!   and the same conversation sent as chat completions have the same
//!   canonical prompt.
//! - `/v1/completions`: the prompt (a string, or the JSON of an array).
//!
//! An agent that re-sends its conversation with a new turn appended
//! therefore shares every earlier segment, and its fingerprint shares every
//! full block before the new turn.

use std::borrow::Cow;

use cluster_types::fingerprint::xxh64;
use cluster_types::{PrefixFingerprint, RoutingContext, SegmentKind};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// The model name mlx_lm.server reads as "whatever model I serve"; requests
/// naming it may go to any node.
pub(crate) const ANY_MODEL: &str = "default_model";

/// Which API a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiKind {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/completions`.
    Completions,
    /// Anthropic `POST /v1/messages` (passed through to nodes that serve it).
    Messages,
}

impl ApiKind {
    /// Every API, in declaration order.
    pub const ALL: [ApiKind; 3] = [Self::ChatCompletions, Self::Completions, Self::Messages];

    /// The path the request is forwarded to on the node.
    #[must_use]
    pub const fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Messages => "/v1/messages",
        }
    }

    /// A short label for metrics and logs (`chat`, `completions`, `messages`).
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat",
            Self::Completions => "completions",
            Self::Messages => "messages",
        }
    }
}

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Option<Vec<WireMessage<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    system: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
}

/// One message of the canonical prompt: its role and its text pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage<'a> {
    /// `user`, `assistant`, `tool`, ... (`prompt` for `/v1/completions`).
    pub role: Cow<'a, str>,
    /// Content pieces in order (see the module docs).
    pub parts: Vec<Cow<'a, str>>,
}

/// A parsed client request, borrowing from the body (see the module docs).
#[derive(Debug)]
pub struct ParsedRequest<'a> {
    /// The API spoken.
    pub api: ApiKind,
    /// The requested model (`None` when the body names none; mlx_lm.server
    /// then uses the model it loaded).
    pub model: Option<Cow<'a, str>>,
    /// Whether the client asked for a server-sent-event stream
    /// (default `false`).
    pub stream: bool,
    /// Whether a stream will end with a usage chunk
    /// (`stream_options.include_usage`; default `false`).
    pub include_usage: bool,
    /// Session key: the session header (`routing.session_header`, default
    /// `x-session-id`), else the body's `user`, else `metadata.user_id`.
    pub session: Option<Cow<'a, str>>,
    /// The system prompt's text pieces, in order (empty when none).
    pub system: Vec<Cow<'a, str>>,
    /// The tool definitions, one canonical text each (see the module docs).
    pub tools: Vec<Cow<'a, str>>,
    /// The remaining messages in order.
    pub messages: Vec<PromptMessage<'a>>,
}

fn bad(api: ApiKind, what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_body(format!("invalid body for {}: {what}", api.path()))
}

/// Decodes a content value (string, array of parts, or other JSON) into text
/// pieces appended to `out`.
fn content_parts<'a>(
    api: ApiKind,
    raw: &'a RawValue,
    out: &mut Vec<Cow<'a, str>>,
) -> Result<(), ApiError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let s: Cow<'a, str> = serde_json::from_str(text).map_err(|e| bad(api, e))?;
            out.push(s);
        }
        Some(b'[') => {
            let parts: Vec<&'a RawValue> = serde_json::from_str(text).map_err(|e| bad(api, e))?;
            for part in parts {
                out.push(part_text(part));
            }
        }
        Some(b'n') => {} // null
        _ => out.push(Cow::Borrowed(text)),
    }
    Ok(())
}

/// The members of a JSON object in their original order, values raw.
struct OrderedObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for OrderedObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = OrderedObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(OrderedObject(members))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// One content part as text, parsed once: a text part (`"type": "text"` or
/// `"input_text"` with a string `text`) is its decoded text; any other
/// object is its members in the client's order, without whitespace between
/// them and without `cache_control`; anything that is not an object is fed
/// raw.
fn part_text(part: &RawValue) -> Cow<'_, str> {
    let text = part.get();
    let Ok(OrderedObject(members)) = serde_json::from_str::<OrderedObject<'_>>(text) else {
        return Cow::Borrowed(text);
    };
    let member = |name: &str| {
        let mut found = members.iter().filter(|(k, _)| k == name);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => serde_json::from_str::<Cow<'_, str>>(v.get()).ok(),
            _ => None,
        }
    };
    if let (Some(kind), Some(t)) = (member("type"), member("text"))
        && (kind == "text" || kind == "input_text")
    {
        return t;
    }
    let mut out = String::with_capacity(text.len());
    out.push('{');
    let mut first = true;
    for (key, value) in members.iter().filter(|(k, _)| k != "cache_control") {
        if !first {
            out.push(',');
        }
        first = false;
        // A key is a plain string: serializing it cannot fail.
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    Cow::Owned(out)
}

/// `body` (a JSON object) with `stream_options.include_usage` set to true,
/// every other member kept in order and byte for byte; `None` when the body
/// is not a JSON object. The gateway sends this upstream for a streamed
/// request whose client did not ask for usage, so every answer reports its
/// token counts (the usage chunk is then removed from what the client sees).
#[must_use]
pub(crate) fn with_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let OrderedObject(members) = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len() + 40);
    out.push(b'{');
    let mut wrote_options = false;
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // A key is a plain string: serializing it cannot fail.
        out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
        out.push(b':');
        if key == "stream_options" {
            wrote_options = true;
            push_options_with_usage(&mut out, value);
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    if !wrote_options {
        if !members.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    }
    out.push(b'}');
    Some(out)
}

/// `stream_options` with `include_usage: true` (other members kept).
fn push_options_with_usage(out: &mut Vec<u8>, raw: &RawValue) {
    let members = serde_json::from_str::<OrderedObject<'_>>(raw.get())
        .map(|o| o.0)
        .unwrap_or_default();
    out.push(b'{');
    for (key, value) in members.iter().filter(|(k, _)| k != "include_usage") {
        out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(br#""include_usage":true}"#);
}

impl<'a> ParsedRequest<'a> {
    /// Parses `body` as a request of `api`, taking the session from the
    /// `session_header` of `headers` when present. Errors are 400s in the
    /// OpenAI shape.
    pub fn parse(
        api: ApiKind,
        headers: &'a HeaderMap,
        session_header: &str,
        body: &'a [u8],
    ) -> Result<Self, ApiError> {
        let wire: WireRequest<'a> = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_body(format!(
                "request body is not valid JSON for {}: {e}",
                api.path()
            ))
        })?;
        let mut system = Vec::new();
        let mut messages = Vec::new();
        match api {
            ApiKind::ChatCompletions | ApiKind::Messages => {
                let wire_messages = wire
                    .messages
                    .ok_or_else(|| bad(api, "`messages` is required"))?;
                if let Some(raw) = wire.system {
                    content_parts(api, raw, &mut system)?;
                }
                let mut leading_system = api == ApiKind::ChatCompletions;
                for m in wire_messages {
                    let role = m.role.unwrap_or(Cow::Borrowed(""));
                    if leading_system && matches!(&*role, "system" | "developer") {
                        if let Some(raw) = m.content {
                            content_parts(api, raw, &mut system)?;
                        }
                        continue;
                    }
                    leading_system = false;
                    let mut parts = Vec::new();
                    if let Some(raw) = m.content {
                        content_parts(api, raw, &mut parts)?;
                    }
                    if let Some(calls) = m.tool_calls {
                        parts.extend(crate::canonical::tool_calls(calls));
                    }
                    messages.push(PromptMessage { role, parts });
                }
            }
            ApiKind::Completions => {
                let prompt = wire
                    .prompt
                    .ok_or_else(|| bad(api, "`prompt` is required"))?;
                let mut parts = Vec::new();
                content_parts(api, prompt, &mut parts)?;
                messages.push(PromptMessage {
                    role: Cow::Borrowed("prompt"),
                    parts,
                });
            }
        }
        let header_session = headers
            .get(session_header)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(Cow::Borrowed);
        let session = header_session
            .or(wire.user.filter(|u| !u.is_empty()))
            .or(wire
                .metadata
                .and_then(|m| m.user_id)
                .filter(|u| !u.is_empty()));
        Ok(Self {
            api,
            model: wire.model.filter(|m| !m.is_empty()),
            stream: wire.stream.unwrap_or(false),
            include_usage: wire
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            session,
            system,
            tools: wire.tools.map(crate::canonical::tools).unwrap_or_default(),
            messages,
        })
    }

    /// The canonical prompt as fingerprint segments (see the module docs).
    pub fn segments(&self) -> impl Iterator<Item = (SegmentKind<'_>, &str)> + '_ {
        let model = self.model.as_deref().map(|m| (SegmentKind::Model, m));
        let system = self.system.iter().map(|s| (SegmentKind::System, &**s));
        let tools = self.tools.iter().map(|t| (SegmentKind::Tools, &**t));
        let messages = self.messages.iter().flat_map(|m| {
            let role = SegmentKind::Message { role: &m.role };
            m.parts.iter().map(move |p| (role, &**p))
        });
        model.into_iter().chain(system).chain(tools).chain(messages)
    }

    /// The prefix fingerprint with blocks of `block_bytes`
    /// (`cache.fingerprint_block_bytes`, default 256).
    #[must_use]
    pub fn fingerprint(&self, block_bytes: u32) -> PrefixFingerprint {
        let mut builder = PrefixFingerprint::builder(block_bytes);
        for (kind, text) in self.segments() {
            builder.push_segment(kind, text);
        }
        builder.finish()
    }

    /// Stable hash of the system prompt's text pieces (`None` without a
    /// system prompt), for the seeds' cache score.
    #[must_use]
    pub fn system_prompt_hash(&self) -> Option<u64> {
        if self.system.is_empty() {
            return None;
        }
        Some(
            self.system
                .iter()
                .fold(0, |seed, piece| xxh64(piece.as_bytes(), seed)),
        )
    }

    /// A key every turn of this conversation shares, from the request
    /// alone: the session key when there is one, else the model, system
    /// prompt, tools and first message (an agent re-sends them unchanged on
    /// every turn). `None` for an empty request.
    #[must_use]
    pub fn conversation_key(&self) -> Option<u64> {
        if let Some(session) = self.session.as_deref() {
            return Some(xxh64(session.as_bytes(), 0x5e55));
        }
        let mut parts =
            self.model
                .iter()
                .map(|m| &**m)
                .chain(self.system.iter().map(|s| &**s))
                .chain(self.tools.iter().map(|t| &**t))
                .chain(
                    self.messages.first().into_iter().flat_map(|m| {
                        std::iter::once(&*m.role).chain(m.parts.iter().map(|p| &**p))
                    }),
                )
                .peekable();
        parts.peek()?;
        Some(parts.fold(0x636f_6e76, |seed, piece| xxh64(piece.as_bytes(), seed)))
    }

    /// Stable hash of the canonical tool list (`None` without tools).
    #[must_use]
    pub fn tools_hash(&self) -> Option<u64> {
        if self.tools.is_empty() {
            return None;
        }
        Some(
            self.tools
                .iter()
                .fold(0, |seed, tool| xxh64(tool.as_bytes(), seed)),
        )
    }

    /// The router's view of this request: model, session, fingerprint,
    /// system/tools hashes and a token estimate (4 bytes a token).
    ///
    /// The model `"default_model"` (mlx_lm.server's name for
    /// "the model this server loaded") routes like a request without a
    /// model: to any node. The fingerprint still includes it.
    #[must_use]
    pub fn routing_context(&self, block_bytes: u32) -> RoutingContext {
        let fingerprint = self.fingerprint(block_bytes);
        let estimate = fingerprint.total_bytes().div_ceil(4);
        RoutingContext {
            model: self
                .model
                .as_deref()
                .filter(|m| *m != ANY_MODEL)
                .map(str::to_owned),
            session_id: self.session.as_deref().map(str::to_owned),
            system_prompt_hash: self.system_prompt_hash(),
            tools_hash: self.tools_hash(),
            prompt_tokens_estimate: u32::try_from(estimate).unwrap_or(u32::MAX),
            conversation_key: self.conversation_key(),
            fingerprint,
            excluded: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "x-session-id";

    fn parse<'a>(api: ApiKind, h: &'a HeaderMap, body: &'a str) -> ParsedRequest<'a> {
        ParsedRequest::parse(api, h, SESSION, body.as_bytes()).unwrap()
    }

    fn texts(p: &ParsedRequest<'_>) -> Vec<String> {
        p.segments()
            .map(|(k, t)| match k {
                SegmentKind::Model => format!("model:{t}"),
                SegmentKind::System => format!("system:{t}"),
                SegmentKind::Tools => format!("tools:{t}"),
                SegmentKind::Message { role } => format!("{role}:{t}"),
            })
            .collect()
    }

    #[test]
    fn chat_canonical_order_and_text() {
        let h = HeaderMap::new();
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"system","content":"S\nline"},{"role":"developer","content":[{"type":"text","text":"D"}]},
            {"role":"user","content":"hi"},{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},
            {"role":"system","content":"late"}],
            "tools":[{"type":"function"}],"user":"u1"}"#;
        let p = parse(ApiKind::ChatCompletions, &h, body);
        assert!(p.stream && p.include_usage);
        assert_eq!(p.session.as_deref(), Some("u1"));
        assert_eq!(
            texts(&p),
            [
                "model:m",
                "system:S\nline",
                "system:D",
                r#"tools:{"type":"function"}"#,
                "user:hi",
                "assistant:1\n\n",
                "system:late",
            ]
        );
        assert!(p.system_prompt_hash().is_some());
        assert!(p.tools_hash().is_some());
    }

    #[test]
    fn appended_turn_shares_the_prefix() {
        let h = HeaderMap::new();
        let sys = "You are a coding agent. ".repeat(100);
        let t1 = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"a"}}]}}"#
        );
        let t2 = format!(
            r#"{{"messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"a"}},{{"role":"assistant","content":"b"}}],"model":"m"}}"#
        );
        let a = parse(ApiKind::ChatCompletions, &h, &t1).fingerprint(256);
        let b = parse(ApiKind::ChatCompletions, &h, &t2).fingerprint(256);
        assert_eq!(a.full_blocks(), &b.blocks()[..a.full_blocks().len()]);
        assert!(a.full_blocks().len() >= 9);
    }

    #[test]
    fn anthropic_cache_control_does_not_change_the_prefix() {
        let h = HeaderMap::new();
        let t1 = r#"{"model":"c","system":[{"type":"text","text":"S","cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"1","content":"x","cache_control":{"type":"ephemeral"}}]}]}"#;
        let t2 = r#"{"model":"c","system":[{"type":"text","text":"S"}],
            "messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"1","content":"x"}]},
            {"role":"assistant","content":[{"type":"text","text":"ok","cache_control":{"type":"ephemeral"}}]}]}"#;
        let a = texts(&parse(ApiKind::Messages, &h, t1));
        let b = texts(&parse(ApiKind::Messages, &h, t2));
        assert_eq!(a[..], b[..a.len()]);
        assert_eq!(b.last().unwrap(), "assistant:ok");
        assert_eq!(a[1], "system:S");
    }

    #[test]
    fn include_usage_is_added_or_forced_keeping_everything_else() {
        let add = |b: &str| String::from_utf8(with_include_usage(b.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            add(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#),
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#
        );
        // mlx_lm.server raises KeyError on `{}`: the key is always written.
        assert_eq!(
            add(r#"{"stream":true, "stream_options": {}}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            add(r#"{"stream_options":{"include_usage":false,"x":1},"stream":true}"#),
            r#"{"stream_options":{"x":1,"include_usage":true},"stream":true}"#
        );
        assert_eq!(add("{}"), r#"{"stream_options":{"include_usage":true}}"#);
        let parsed: serde_json::Value =
            serde_json::from_str(&add(r#"{"a":"\u00e9\n","stream_options":null}"#)).unwrap();
        assert_eq!(parsed["a"], "\u{e9}\n");
        assert_eq!(parsed["stream_options"]["include_usage"], true);
        assert!(with_include_usage(b"[1]").is_none());
        assert!(with_include_usage(b"{").is_none());
    }

    #[test]
    fn session_precedence_header_user_metadata() {
        let mut h = HeaderMap::new();
        let body = r#"{"model":"m","messages":[],"user":"u","metadata":{"user_id":"meta"}}"#;
        assert_eq!(
            parse(ApiKind::Messages, &h, body).session.as_deref(),
            Some("u")
        );
        let body2 = r#"{"model":"m","messages":[],"metadata":{"user_id":"meta","x":1}}"#;
        assert_eq!(
            parse(ApiKind::Messages, &h, body2).session.as_deref(),
            Some("meta")
        );
        h.insert(SESSION, "hdr".parse().unwrap());
        assert_eq!(
            parse(ApiKind::Messages, &h, body).session.as_deref(),
            Some("hdr")
        );
    }

    #[test]
    fn completions_prompt_and_empty_model() {
        let h = HeaderMap::new();
        let p = parse(
            ApiKind::Completions,
            &h,
            r#"{"prompt":"once upon","model":""}"#,
        );
        assert_eq!(p.model, None);
        assert_eq!(texts(&p), ["prompt:once upon"]);
        let ctx = p.routing_context(256);
        assert_eq!(ctx.model, None);
        assert_eq!(ctx.prompt_tokens_estimate, 4); // "prompt" + "once upon" = 15 bytes
        assert_eq!(ctx.fingerprint.len(), 1);
        assert!(ctx.excluded.is_empty());
    }

    #[test]
    fn routing_context_fields() {
        let mut h = HeaderMap::new();
        h.insert(SESSION, "s1".parse().unwrap());
        let p = parse(
            ApiKind::ChatCompletions,
            &h,
            r#"{"model":"qwen","messages":[{"role":"user","content":"hello"}]}"#,
        );
        let ctx = p.routing_context(16);
        assert_eq!(ctx.model.as_deref(), Some("qwen"));
        assert_eq!(ctx.session_id.as_deref(), Some("s1"));
        assert_eq!(ctx.system_prompt_hash, None);
        assert_eq!(ctx.tools_hash, None);
        assert_eq!(ctx.fingerprint.block_bytes(), 16);
        // The conversation key: the session when there is one, else the
        // conversation's start, the same on every turn.
        let none = HeaderMap::new();
        let turn = |body: &str| parse(ApiKind::ChatCompletions, &none, body).conversation_key();
        let first = turn(
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"task"}]}"#,
        );
        let later = turn(
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"task"},{"role":"assistant","content":"ok"},{"role":"user","content":"more"}]}"#,
        );
        let other = turn(
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"other task"}]}"#,
        );
        assert!(first.is_some());
        assert_eq!(first, later);
        assert_ne!(first, other);
        assert_ne!(ctx.conversation_key, first);
        assert_eq!(turn(r#"{"messages":[]}"#), None);
        let p = parse(
            ApiKind::ChatCompletions,
            &h,
            r#"{"model":"default_model","messages":[{"role":"user","content":"hello"}]}"#,
        );
        assert_eq!(p.routing_context(16).model, None);
    }

    #[test]
    fn errors_are_400_with_reason() {
        let h = HeaderMap::new();
        for (api, body, needle) in [
            (ApiKind::ChatCompletions, "{", "not valid JSON"),
            (ApiKind::ChatCompletions, "[1]", "not valid JSON"),
            (
                ApiKind::ChatCompletions,
                r#"{"model":"m"}"#,
                "`messages` is required",
            ),
            (
                ApiKind::Completions,
                r#"{"model":"m"}"#,
                "`prompt` is required",
            ),
            (
                ApiKind::ChatCompletions,
                r#"{"messages":[],"stream":"yes"}"#,
                "not valid JSON",
            ),
        ] {
            let e = ParsedRequest::parse(api, &h, SESSION, body.as_bytes()).unwrap_err();
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }
}
