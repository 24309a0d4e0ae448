//! From a node's chat completion answer to a Messages answer.
//!
//! | chat completion | Messages |
//! |---|---|
//! | `message.content` | a `text` block (none when empty) |
//! | `message.tool_calls` | `tool_use` blocks: `id` kept (made up when missing), `input` = the parsed `arguments` (arguments that are not a JSON object become `{"arguments": "<text>"}`) |
//! | `finish_reason` `stop` / `length` / `tool_calls` | `stop_reason` `end_turn` (or `stop_sequence`, see [`ReplyMeta::stop_reason`]) / `max_tokens` / `tool_use` |
//! | `usage.prompt_tokens`, `prompt_tokens_details.cached_tokens`, `completion_tokens` | `usage.input_tokens` (prompt minus cached), `cache_read_input_tokens`, `cache_creation_input_tokens` 0, `output_tokens` |
//!
//! `reasoning` text of reasoning models is not passed on (thinking blocks
//! are not supported).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::AnthropicError;

/// What a translated answer says about its request: the message id, the
/// model the client asked for (echoed back), and its stop sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyMeta {
    /// `msg_…`.
    pub id: String,
    /// The model name the client sent (before aliases).
    pub model: String,
    /// The request's stop sequences.
    pub stop_sequences: Vec<String>,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A fresh id with `prefix` (`msg_`, `toolu_`): unique within the process
/// and unlikely to repeat across restarts.
#[must_use]
pub(super) fn new_id(prefix: &str) -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}{:016x}{n:08x}",
        (nanos as u64) ^ u64::from(std::process::id())
    )
}

impl ReplyMeta {
    /// Meta for a request to `model` with `stop_sequences`, with a new id.
    #[must_use]
    pub fn new(model: &str, stop_sequences: &[Cow<'_, str>]) -> Self {
        Self {
            id: new_id("msg_"),
            model: model.to_owned(),
            stop_sequences: stop_sequences.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `stop_reason` and `stop_sequence` for a node's `finish_reason`.
    ///
    /// OpenAI's `stop` does not say whether the model ended its turn or hit
    /// a stop sequence, and mlx_lm.server removes the matched sequence from
    /// the text. The node's own report is used when it gives one (vLLM's
    /// `stop_reason`, SGLang's `matched_stop`, as `matched`); otherwise a
    /// `stop` of a request with stop sequences counts as `stop_sequence`
    /// (naming the sequence when the request had exactly one).
    #[must_use]
    pub fn stop_reason(
        &self,
        finish_reason: Option<&str>,
        matched: Option<&str>,
    ) -> (&'static str, Option<String>) {
        match finish_reason {
            Some("length") => ("max_tokens", None),
            Some("tool_calls" | "function_call") => ("tool_use", None),
            _ => {
                if let Some(m) = matched.filter(|m| self.stop_sequences.iter().any(|s| s == m)) {
                    return ("stop_sequence", Some(m.to_owned()));
                }
                if finish_reason == Some("stop") && !self.stop_sequences.is_empty() {
                    let which = match self.stop_sequences.as_slice() {
                        [only] => Some(only.clone()),
                        _ => None,
                    };
                    return ("stop_sequence", which);
                }
                ("end_turn", None)
            }
        }
    }
}

/// Usage as a node reports it (OpenAI's shape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(super) struct ChatUsage {
    /// All prompt tokens, cached included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(super) struct PromptDetails {
    /// Prompt tokens read from the node's cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

/// Anthropic's usage object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(super) struct MessageUsage {
    /// Prompt tokens not read from a cache.
    pub input_tokens: u64,
    /// Prompt tokens written to a cache (always 0: nodes do not say).
    pub cache_creation_input_tokens: u64,
    /// Prompt tokens read from the node's cache.
    pub cache_read_input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

impl From<ChatUsage> for MessageUsage {
    fn from(u: ChatUsage) -> Self {
        let cached = u
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(u.prompt_tokens);
        Self {
            input_tokens: u.prompt_tokens - cached,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cached,
            output_tokens: u.completion_tokens,
        }
    }
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow, default)]
    choices: Vec<CompletionChoice<'a>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct CompletionChoice<'a> {
    #[serde(borrow, default)]
    message: Option<CompletionMessage<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<&'a RawValue>,
    #[serde(borrow, default)]
    matched_stop: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CompletionMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Vec<CompletionToolCall<'a>>,
}

#[derive(Deserialize)]
struct CompletionToolCall<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<CompletionFunction<'a>>,
}

#[derive(Deserialize)]
struct CompletionFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// A node's report of the matched stop sequence (a string), if any.
pub(crate) fn matched_stop<'a>(
    stop_reason: Option<&'a RawValue>,
    matched_stop: Option<&'a RawValue>,
) -> Option<String> {
    [stop_reason, matched_stop]
        .into_iter()
        .flatten()
        .find_map(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// `tool_use.input`: the tool call's arguments when they are a JSON object
/// (kept byte for byte), else `{"arguments": "<text>"}` (`{}` when empty).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum ToolInput {
    /// A JSON object, raw.
    Raw(Box<RawValue>),
    /// Anything else, wrapped.
    Wrapped(serde_json::Value),
}

/// Tool call arguments as a JSON object for `tool_use.input`.
pub(crate) fn tool_input(arguments: &str) -> ToolInput {
    let trimmed = arguments.trim();
    if trimmed.is_empty() {
        return ToolInput::Wrapped(serde_json::Value::Object(serde_json::Map::new()));
    }
    if trimmed.starts_with('{')
        && let Ok(raw) = serde_json::from_str::<Box<RawValue>>(trimmed)
    {
        return ToolInput::Raw(raw);
    }
    ToolInput::Wrapped(serde_json::json!({ "arguments": arguments }))
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: &'a str,
        input: ToolInput,
    },
}

#[derive(Serialize)]
struct OutMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<OutBlock<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    usage: MessageUsage,
}

/// Translates a node's non-streamed chat completion (`body`) into a
/// Messages answer (see the module docs).
///
/// # Errors
/// 502 `api_error` when the body is not a chat completion.
pub fn translate_response(body: &[u8], meta: &ReplyMeta) -> Result<Vec<u8>, AnthropicError> {
    let completion: Completion<'_> = serde_json::from_slice(body).map_err(|e| {
        AnthropicError::bad_node_answer(format!("the node's answer is not a chat completion: {e}"))
    })?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| AnthropicError::bad_node_answer("the node's answer has no choices"))?;
    let matched = matched_stop(choice.stop_reason, choice.matched_stop);
    let (stop_reason, stop_sequence) =
        meta.stop_reason(choice.finish_reason.as_deref(), matched.as_deref());
    let message = choice.message.unwrap_or(CompletionMessage {
        content: None,
        tool_calls: Vec::new(),
    });
    let mut content = Vec::with_capacity(1 + message.tool_calls.len());
    if let Some(text) = message.content.as_deref().filter(|t| !t.is_empty()) {
        content.push(OutBlock::Text { text });
    }
    for call in &message.tool_calls {
        let function = call.function.as_ref();
        content.push(OutBlock::ToolUse {
            id: call
                .id
                .as_deref()
                .filter(|id| !id.is_empty())
                .map_or_else(|| Cow::Owned(new_id("toolu_")), Cow::Borrowed),
            name: function.and_then(|f| f.name.as_deref()).unwrap_or_default(),
            input: tool_input(function.and_then(|f| f.arguments.as_deref()).unwrap_or("")),
        });
    }
    let out = OutMessage {
        id: &meta.id,
        kind: "message",
        role: "assistant",
        model: &meta.model,
        content,
        stop_reason,
        stop_sequence,
        usage: completion.usage.map(MessageUsage::from).unwrap_or_default(),
    };
    serde_json::to_vec(&out)
        .map_err(|e| AnthropicError::bad_node_answer(format!("cannot encode the answer: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn meta(stops: &[&str]) -> ReplyMeta {
        ReplyMeta {
            id: "msg_1".into(),
            model: "claude-x".into(),
            stop_sequences: stops.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn translate(body: &Value, stops: &[&str]) -> Value {
        let out = translate_response(&serde_json::to_vec(body).unwrap(), &meta(stops)).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn mlx_text_answer() {
        let mlx = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "/m", "created": 1,
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "abc"}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 3, "total_tokens": 123, "prompt_tokens_details": {"cached_tokens": 100}}
        });
        assert_eq!(
            translate(&mlx, &[]),
            json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": "abc"}],
                "stop_reason": "max_tokens", "stop_sequence": null,
                "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100, "output_tokens": 3}
            })
        );
    }

    #[test]
    fn tool_calls_become_tool_use() {
        let answer = json!({
            "choices": [{"finish_reason": "tool_calls", "message": {"content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\": \"a\"}"}},
                {"type": "function", "function": {"name": "Bash", "arguments": "not json"}}
            ]}}]
        });
        let out = translate(&answer, &[]);
        assert_eq!(out["stop_reason"], "tool_use");
        assert_eq!(
            out["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "Read", "input": {"path": "a"}})
        );
        assert_eq!(out["content"][1]["input"], json!({"arguments": "not json"}));
        assert!(
            out["content"][1]["id"]
                .as_str()
                .unwrap()
                .starts_with("toolu_")
        );
        assert_eq!(out["usage"]["output_tokens"], 0);
    }

    #[test]
    fn stop_reasons() {
        let m = meta(&["END"]);
        assert_eq!(
            m.stop_reason(Some("stop"), None),
            ("stop_sequence", Some("END".into()))
        );
        assert_eq!(
            m.stop_reason(Some("stop"), Some("END")),
            ("stop_sequence", Some("END".into()))
        );
        let two = meta(&["A", "B"]);
        assert_eq!(
            two.stop_reason(Some("stop"), Some("B")),
            ("stop_sequence", Some("B".into()))
        );
        assert_eq!(two.stop_reason(Some("stop"), None), ("stop_sequence", None));
        let none = meta(&[]);
        assert_eq!(none.stop_reason(Some("stop"), None), ("end_turn", None));
        assert_eq!(none.stop_reason(None, None), ("end_turn", None));
        assert_eq!(none.stop_reason(Some("length"), None), ("max_tokens", None));
    }

    #[test]
    fn garbage_is_a_502() {
        let e = translate_response(b"<html>", &meta(&[])).unwrap_err();
        assert_eq!(e.status, http::StatusCode::BAD_GATEWAY);
        let e = translate_response(b"{\"choices\":[]}", &meta(&[])).unwrap_err();
        assert!(e.message.contains("no choices"));
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_id("msg_"), new_id("msg_"));
    }
}
