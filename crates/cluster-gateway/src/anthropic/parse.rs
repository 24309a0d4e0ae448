//! Reading a Messages request: the body is parsed once, borrowing from its
//! bytes, and checked field by field so that a malformed request gets a 400
//! naming the field (`messages.1.content.0.tool_use_id: field required`).
//!
//! Fields the gateway does not use (`thinking`, `context_management`,
//! `output_config`, `container`, `service_tier`, `cache_control` markers,
//! ...) are ignored, whatever their shape.

use std::borrow::Cow;

use serde::Deserialize;

use super::error::AnthropicError;
use super::types::{Block, Content, ImageSource, Message, MessagesRequest, Role, Tool, ToolChoice};
use super::wire::{
    WireBlock, WireContent, WireMessage, WireRequest, WireSource, WireTool, WireToolChoice,
};

/// The first system block Claude Code sends: billing metadata for
/// Anthropic's API, not prompt text (and a cache breaker when it changes).
const BILLING_HEADER_PREFIX: &str = "x-anthropic-billing-header:";

/// A serde path as Anthropic writes it: `messages.0.content`.
fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        let piece = match segment {
            Segment::Seq { index } => index.to_string(),
            Segment::Map { key } => key.clone(),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => "?".to_owned(),
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&piece);
    }
    out
}

/// The error of a body that did not decode, with the path of the bad
/// field. (The path is found by decoding again with path tracking, which
/// would copy every string on the good path.)
fn explain(body: &[u8], error: &serde_json::Error) -> AnthropicError {
    if error.classify() != serde_json::error::Category::Data {
        return syntax_error("", error);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, WireRequest<'_>>(&mut de) {
        Err(e) => syntax_error(&dotted(e.path()), e.inner()),
        Ok(_) => syntax_error("", error),
    }
}

fn syntax_error(path: &str, e: &serde_json::Error) -> AnthropicError {
    if path.is_empty() {
        AnthropicError::invalid_request(format!("the body is not a valid Messages request: {e}"))
    } else {
        AnthropicError::invalid_request(format!("{path}: {e}"))
    }
}

fn required(path: &str) -> AnthropicError {
    AnthropicError::invalid_request(format!("{path}: field required"))
}

/// Which endpoint the body is for: `max_tokens` is required by
/// `/v1/messages` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
}

impl<'a> MessagesRequest<'a> {
    /// Parses and checks a Messages request body (see the module docs).
    ///
    /// # Errors
    /// 400 `invalid_request_error` naming the first bad field.
    pub fn parse(body: &'a [u8], endpoint: Endpoint) -> Result<Self, AnthropicError> {
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(AnthropicError::invalid_request(
                "the body is not a valid Messages request: expected a JSON object",
            ));
        }
        let wire: WireRequest<'a> = serde_json::from_slice(body).map_err(|e| explain(body, &e))?;
        let model = wire
            .model
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| required("model"))?;
        let max_tokens = match (wire.max_tokens, endpoint) {
            (None, Endpoint::Messages) => return Err(required("max_tokens")),
            (Some(0), _) => {
                return Err(AnthropicError::invalid_request(
                    "max_tokens: must be at least 1",
                ));
            }
            (m, _) => m,
        };
        let system = match wire.system {
            None => Vec::new(),
            Some(content) => system_text(content)?,
        };
        let wire_messages = wire.messages.ok_or_else(|| required("messages"))?;
        if wire_messages.is_empty() {
            return Err(AnthropicError::invalid_request(
                "messages: at least one message is required",
            ));
        }
        let messages = wire_messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tools = Vec::new();
        for (i, t) in wire.tools.unwrap_or_default().into_iter().enumerate() {
            if let Some(tool) = tool(i, t)? {
                tools.push(tool);
            }
        }
        let (tool_choice, disable_parallel_tool_use) = match wire.tool_choice {
            None => (None, false),
            Some(c) => {
                let parallel = c.disable_parallel_tool_use.unwrap_or(false);
                (Some(tool_choice(c)?), parallel)
            }
        };
        for (name, v) in [("temperature", wire.temperature), ("top_p", wire.top_p)] {
            if v.is_some_and(|v| !(0.0..=2.0).contains(&v)) {
                return Err(AnthropicError::invalid_request(format!(
                    "{name}: must be between 0 and 2"
                )));
            }
        }
        let stop_sequences = wire.stop_sequences.unwrap_or_default();
        if let Some(i) = stop_sequences.iter().position(|s| s.is_empty()) {
            return Err(AnthropicError::invalid_request(format!(
                "stop_sequences.{i}: must not be empty"
            )));
        }
        Ok(Self {
            model,
            max_tokens,
            stream: wire.stream.unwrap_or(false),
            system,
            messages,
            tools,
            tool_choice,
            disable_parallel_tool_use,
            temperature: wire.temperature,
            top_p: wire.top_p,
            top_k: wire.top_k,
            stop_sequences,
            user_id: wire
                .metadata
                .and_then(|m| m.user_id)
                .filter(|u| !u.is_empty()),
        })
    }

    /// The session key carried by `metadata.user_id`: Claude Code's user id
    /// is a JSON string holding `session_id`; any other non-empty user id is
    /// the key itself.
    #[must_use]
    pub fn session_from_user_id(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct ClaudeCodeUser {
            #[serde(default)]
            session_id: Option<String>,
        }
        let user = self.user_id.as_deref()?;
        if user.trim_start().starts_with('{')
            && let Ok(parsed) = serde_json::from_str::<ClaudeCodeUser>(user)
            && let Some(session) = parsed.session_id.filter(|s| !s.is_empty())
        {
            return Some(session);
        }
        Some(user.to_owned())
    }
}

fn system_text(content: WireContent<'_>) -> Result<Vec<Cow<'_, str>>, AnthropicError> {
    match content {
        WireContent::Text(t) => Ok(if t.is_empty() { Vec::new() } else { vec![t] }),
        WireContent::Blocks(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.into_iter().enumerate() {
                let path = format!("system.{j}");
                match b.kind.as_deref() {
                    Some("text") => {
                        let text = b.text.ok_or_else(|| required(&format!("{path}.text")))?;
                        if !text.starts_with(BILLING_HEADER_PREFIX) {
                            out.push(text);
                        }
                    }
                    Some(other) => {
                        return Err(AnthropicError::invalid_request(format!(
                            "{path}.type: system blocks must be text blocks (got {other:?})"
                        )));
                    }
                    None => return Err(required(&format!("{path}.type"))),
                }
            }
            Ok(out)
        }
    }
}

fn message(i: usize, m: WireMessage<'_>) -> Result<Message<'_>, AnthropicError> {
    let role = match m.role.as_deref() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        Some(other) => {
            return Err(AnthropicError::invalid_request(format!(
                "messages.{i}.role: must be \"user\", \"assistant\" or \"system\" (got {other:?})"
            )));
        }
        None => return Err(required(&format!("messages.{i}.role"))),
    };
    let content = match m
        .content
        .ok_or_else(|| required(&format!("messages.{i}.content")))?
    {
        WireContent::Text(t) => Content::Text(t),
        WireContent::Blocks(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.into_iter().enumerate() {
                if let Some(block) = block(&format!("messages.{i}.content.{j}"), role, b)? {
                    out.push(block);
                }
            }
            Content::Blocks(out)
        }
    };
    Ok(Message { role, content })
}

/// One block of a message; `None` for blocks that are dropped (thinking).
fn block<'a>(
    path: &str,
    role: Role,
    b: WireBlock<'a>,
) -> Result<Option<Block<'a>>, AnthropicError> {
    let kind = b.kind.ok_or_else(|| required(&format!("{path}.type")))?;
    let field = |name: &str| required(&format!("{path}.{name}"));
    let misplaced = |what: &str, wanted: Role| {
        AnthropicError::invalid_request(format!(
            "{path}: {what} blocks belong in {} messages",
            wanted.as_str()
        ))
    };
    Ok(Some(match &*kind {
        "text" => Block::Text(b.text.ok_or_else(|| field("text"))?),
        "image" => Block::Image(image_source(path, b.source)?),
        "document" => match b.source {
            Some(WireSource {
                kind: Some(k),
                data: Some(data),
                ..
            }) if k == "text" => Block::Text(data),
            _ => {
                return Err(AnthropicError::invalid_request(format!(
                    "{path}: only document blocks with a plain-text source are supported by the gateway (PDF and other documents are not)"
                )));
            }
        },
        "thinking" | "redacted_thinking" => return Ok(None),
        "tool_use" => {
            if role != Role::Assistant {
                return Err(misplaced("tool_use", Role::Assistant));
            }
            Block::ToolUse {
                id: b.id.filter(|s| !s.is_empty()).ok_or_else(|| field("id"))?,
                name: b
                    .name
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| field("name"))?,
                input: b.input.ok_or_else(|| field("input"))?,
            }
        }
        "tool_result" => {
            if role != Role::User {
                return Err(misplaced("tool_result", Role::User));
            }
            let tool_use_id = b
                .tool_use_id
                .filter(|s| !s.is_empty())
                .ok_or_else(|| field("tool_use_id"))?;
            let content = match b.content {
                None => Vec::new(),
                Some(WireContent::Text(t)) => vec![Block::Text(t)],
                Some(WireContent::Blocks(inner)) => {
                    let mut out = Vec::with_capacity(inner.len());
                    for (k, ib) in inner.into_iter().enumerate() {
                        let ipath = format!("{path}.content.{k}");
                        match ib.kind.as_deref() {
                            Some("text" | "image" | "document") => {
                                if let Some(b) = block(&ipath, Role::User, ib)? {
                                    out.push(b);
                                }
                            }
                            Some(other) => {
                                return Err(AnthropicError::invalid_request(format!(
                                    "{ipath}.type: a tool result holds text and image blocks (got {other:?})"
                                )));
                            }
                            None => return Err(required(&format!("{ipath}.type"))),
                        }
                    }
                    out
                }
            };
            Block::ToolResult {
                tool_use_id,
                content,
                is_error: b.is_error.unwrap_or(false),
            }
        }
        other => {
            return Err(AnthropicError::invalid_request(format!(
                "{path}.type: content blocks of type {other:?} are not supported by the gateway (it serves text, image, tool_use and tool_result blocks)"
            )));
        }
    }))
}

fn image_source<'a>(
    path: &str,
    source: Option<WireSource<'a>>,
) -> Result<ImageSource<'a>, AnthropicError> {
    let source = source.ok_or_else(|| required(&format!("{path}.source")))?;
    match source.kind.as_deref() {
        Some("base64") => Ok(ImageSource::Base64 {
            media_type: source
                .media_type
                .ok_or_else(|| required(&format!("{path}.source.media_type")))?,
            data: source
                .data
                .ok_or_else(|| required(&format!("{path}.source.data")))?,
        }),
        Some("url") => Ok(ImageSource::Url(
            source
                .url
                .ok_or_else(|| required(&format!("{path}.source.url")))?,
        )),
        Some(other) => Err(AnthropicError::invalid_request(format!(
            "{path}.source.type: image sources of type {other:?} are not supported by the gateway (base64 and url are)"
        ))),
        None => Err(required(&format!("{path}.source.type"))),
    }
}

/// A tool, or `None` for tools the model cannot call through a node.
fn tool(i: usize, t: WireTool<'_>) -> Result<Option<Tool<'_>>, AnthropicError> {
    if t.defer_loading == Some(true) {
        return Ok(None);
    }
    let custom = t.kind.as_deref().is_none_or(|k| k == "custom");
    if !custom && t.input_schema.is_none() {
        // An Anthropic server tool (web search, code execution, ...).
        return Ok(None);
    }
    let name = t
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| required(&format!("tools.{i}.name")))?;
    let input_schema = t
        .input_schema
        .ok_or_else(|| required(&format!("tools.{i}.input_schema")))?;
    if !input_schema.get().starts_with('{') {
        return Err(AnthropicError::invalid_request(format!(
            "tools.{i}.input_schema: must be a JSON schema object"
        )));
    }
    Ok(Some(Tool {
        name,
        description: t.description,
        input_schema,
    }))
}

fn tool_choice(c: WireToolChoice<'_>) -> Result<ToolChoice<'_>, AnthropicError> {
    match c.kind.as_deref() {
        Some("auto") => Ok(ToolChoice::Auto),
        Some("any") => Ok(ToolChoice::Any),
        Some("none") => Ok(ToolChoice::None),
        Some("tool") => Ok(ToolChoice::Tool(
            c.name
                .filter(|n| !n.is_empty())
                .ok_or_else(|| required("tool_choice.name"))?,
        )),
        Some(other) => Err(AnthropicError::invalid_request(format!(
            "tool_choice.type: must be \"auto\", \"any\", \"tool\" or \"none\" (got {other:?})"
        ))),
        None => Err(required("tool_choice.type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<MessagesRequest<'_>, AnthropicError> {
        MessagesRequest::parse(body.as_bytes(), Endpoint::Messages)
    }

    fn error(body: &str) -> String {
        let e = parse(body).unwrap_err();
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{e}");
        e.message
    }

    #[test]
    fn minimal_request() {
        let r = parse(
            r#"{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(r.model, "claude-x");
        assert_eq!(r.max_tokens, Some(5));
        assert!(!r.stream);
        assert!(matches!(&r.messages[0].content, Content::Text(t) if t == "hi"));
        assert!(
            matches!(r.model, Cow::Borrowed(_)),
            "strings borrow from the body"
        );
    }

    #[test]
    fn useful_messages_for_malformed_requests() {
        assert!(
            error("[]").contains("not a valid Messages request"),
            "{}",
            error("[]")
        );
        assert!(error("{").contains("not a valid Messages request"));
        assert_eq!(
            error(r#"{"max_tokens":1,"messages":[]}"#),
            "model: field required"
        );
        assert_eq!(
            error(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#),
            "max_tokens: field required"
        );
        assert!(
            error(r#"{"model":"m","max_tokens":-3,"messages":[]}"#)
                .starts_with("max_tokens: invalid value")
        );
        assert_eq!(
            error(r#"{"model":"m","max_tokens":1,"messages":[]}"#),
            "messages: at least one message is required"
        );
        assert_eq!(
            error(r#"{"model":"m","max_tokens":1,"messages":[{"role":"bot","content":"x"}]}"#),
            "messages.0.role: must be \"user\", \"assistant\" or \"system\" (got \"bot\")"
        );
        assert!(
            error(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":7}]}"#)
                .starts_with("messages.0.content: invalid type: integer `7`, expected a string or an array of content blocks"),
            "{}",
            error(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":7}]}"#)
        );
        assert_eq!(
            error(
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result"}]}]}"#
            ),
            "messages.0.content.0.tool_use_id: field required"
        );
        assert_eq!(
            error(
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_use","id":"a","name":"b","input":{}}]}]}"#
            ),
            "messages.0.content.0: tool_use blocks belong in assistant messages"
        );
        assert!(
            error(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"video"}]}]}"#)
                .starts_with("messages.0.content.0.type: content blocks of type \"video\" are not supported")
        );
        assert_eq!(
            error(
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"t"}]}"#
            ),
            "tools.0.input_schema: field required"
        );
        assert_eq!(
            error(
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"tool"}}"#
            ),
            "tool_choice.name: field required"
        );
        assert!(error(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#)
            .starts_with("temperature: invalid type"));
    }

    #[test]
    fn claude_code_shapes() {
        let body = r##"{
            "model": "claude-opus-5-5",
            "max_tokens": 128000,
            "stream": true,
            "thinking": {"type": "adaptive", "display": "omitted"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "medium"},
            "metadata": {"user_id": "{\"device_id\":\"d\",\"account_uuid\":\"\",\"session_id\":\"s-1\"}"},
            "system": [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli;"},
                {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}
            ],
            "tools": [
                {"name": "Bash", "description": "Run", "input_schema": {"type": "object"}},
                {"name": "Deferred", "description": "later", "input_schema": {"type": "object"}, "defer_loading": true},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
            ],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Say hi", "cache_control": {"type": "ephemeral"}}]},
                {"role": "system", "content": "# Environment"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a.txt"}], "is_error": false}
                ]}
            ]
        }"##;
        let r = parse(body).unwrap();
        assert!(r.stream);
        assert_eq!(r.system, vec!["You are an agent."]);
        assert_eq!(r.tools.len(), 1, "deferred and server tools are left out");
        assert_eq!(r.messages[1].role, Role::System);
        let Content::Blocks(blocks) = &r.messages[2].content else {
            panic!("blocks")
        };
        assert_eq!(blocks.len(), 1, "thinking dropped");
        assert_eq!(r.session_from_user_id().as_deref(), Some("s-1"));
    }

    #[test]
    fn plain_user_id_is_the_session() {
        let r = parse(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"metadata":{"user_id":"alice"}}"#).unwrap();
        assert_eq!(r.session_from_user_id().as_deref(), Some("alice"));
        let r = parse(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"metadata":{"user_id":"{not json"}}"#).unwrap();
        assert_eq!(r.session_from_user_id().as_deref(), Some("{not json"));
    }

    #[test]
    fn count_tokens_needs_no_max_tokens() {
        let r = MessagesRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            Endpoint::CountTokens,
        )
        .unwrap();
        assert_eq!(r.max_tokens, None);
    }
}
