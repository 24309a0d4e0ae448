//! OpenAI-compatible request and response shapes, as mlx_lm.server reads and
//! writes them (field order included, so answers look the same byte for
//! byte apart from ids, timestamps and spacing).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::tokenizer::{ChatTokens, MessageText, content_to_text, tokenize_chat};

/// The model name mlx_lm.server assumes when a request names none:
/// `default_model`.
pub const DEFAULT_MODEL: &str = "default_model";

fn default_model() -> String {
    DEFAULT_MODEL.to_owned()
}

/// A JSON value kept as the exact text that was received (no parsing into
/// a tree, no re-serialization). Equality compares the text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// The JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Serializes `value` once.
    ///
    /// # Errors
    /// The serializer's error (only for maps with non-string keys).
    pub fn from_value(value: &Value) -> Result<Self, serde_json::Error> {
        RawValue::from_string(value.to_string()).map(Self)
    }

    /// Whether the JSON is an empty array or null.
    #[must_use]
    pub fn is_empty_or_null(&self) -> bool {
        let t = self.as_str().trim();
        t == "null" || (t.starts_with('[') && t[1..].trim_start().starts_with(']'))
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// `stream_options` of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with `usage` (and `choices: []`). Default absent,
    /// which mlx_lm 0.32 trips over: `"stream_options": {}` ends the stream
    /// after the finish chunk, without usage and without `[DONE]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// One message of a chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, an array of text parts, or null. Default null.
    #[serde(default)]
    pub content: Value,
    /// Tool calls of an assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// Id of the tool call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with text content.
    #[must_use]
    pub fn text(role: &str, content: String) -> Self {
        Self {
            role: role.to_owned(),
            content: Value::String(content),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

/// A `POST /v1/chat/completions` body (the fields the simulator reads; the
/// rest are accepted and ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name. Default `default_model`.
    #[serde(default = "default_model")]
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Tool definitions, as the JSON text received (the simulator tokenizes
    /// that text). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<RawJson>,
    /// Output token limit (takes precedence over `max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Output token limit. Default: the node's default (512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stream the answer as server-sent events. Default false.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

impl ChatRequest {
    /// Renders the prompt with the simulator's template (see
    /// [`crate::tokenizer::tokenize_chat`]).
    #[must_use]
    pub fn prompt_tokens(&self) -> ChatTokens {
        let contents: Vec<_> = self
            .messages
            .iter()
            .map(|m| {
                let calls = m.tool_calls.as_ref().map(Value::to_string);
                (content_to_text(&m.content), calls)
            })
            .collect();
        let texts: Vec<MessageText<'_>> = self
            .messages
            .iter()
            .zip(&contents)
            .map(|(m, (content, calls))| MessageText {
                role: &m.role,
                content,
                tool_calls: calls.as_deref(),
            })
            .collect();
        let tools = self
            .tools
            .as_ref()
            .filter(|t| !t.is_empty_or_null())
            .map(RawJson::as_str);
        tokenize_chat(&texts, tools)
    }

    /// The requested output limit, if any.
    #[must_use]
    pub fn output_limit(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether a streamed answer ends with a usage chunk.
    #[must_use]
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage == Some(true))
    }
}

/// A `POST /v1/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextRequest {
    /// Model name. Default `default_model`.
    #[serde(default = "default_model")]
    pub model: String,
    /// The prompt text.
    pub prompt: String,
    /// Output token limit. Default: the node's default (512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stream the answer as server-sent events. Default false.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prompt cache. Default 0.
    #[serde(default)]
    pub cached_tokens: u64,
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens. Default 0.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens. Default 0.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Their sum. Default 0.
    #[serde(default)]
    pub total_tokens: u64,
    /// Cache details. Default: no cached tokens.
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    /// Usage for the given counts.
    #[must_use]
    pub fn new(prompt: u64, completion: u64, cached: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached,
            },
        }
    }
}

/// A streamed `delta` (no `content` key when there is no text).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Delta<'a> {
    pub(crate) role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_calls: Option<Vec<ToolCallOut<'a>>>,
}

/// A chat `message` (`content` is null when there is no text).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Message<'a> {
    pub(crate) role: &'a str,
    pub(crate) content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_calls: Option<Vec<ToolCallOut<'a>>>,
}

/// A tool call of a message, or a piece of one in a streamed delta (only
/// the first piece carries `id`, `type` and the name).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'a str>,
    pub(crate) function: FunctionOut<'a>,
}

/// `function` of a [`ToolCallOut`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<&'a str>,
    pub(crate) arguments: std::borrow::Cow<'a, str>,
}

/// One choice of a response.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Choice<'a> {
    pub(crate) index: u32,
    pub(crate) finish_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delta: Option<Delta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<&'a str>,
}

/// A response or stream chunk, keys in mlx_lm.server's order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CompletionBody<'a> {
    pub(crate) id: &'a str,
    pub(crate) system_fingerprint: &'a str,
    pub(crate) object: &'a str,
    pub(crate) model: &'a str,
    pub(crate) created: u64,
    pub(crate) choices: Vec<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

/// `GET /v1/models` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Model id.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
}

/// `GET /v1/models` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelCard>,
}

/// serde_json formatter that writes like Python's `json.dumps` defaults, as
/// mlx_lm.server does: `", "` between items, `": "` after keys, non-ASCII as
/// `\uXXXX` escapes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        if fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        let mut ascii = [0u8; 4];
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(c.encode_utf8(&mut ascii).as_bytes())?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Serializes `value` the way mlx_lm.server writes JSON (see
/// [`PythonFormatter`]).
#[must_use]
pub fn to_mlx_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Serializing plain data into a Vec cannot fail.
    let _ = value.serialize(&mut serializer);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_style_json() {
        let v = serde_json::json!({"a": [1, 2], "b": "\u{e9}\n"});
        assert_eq!(
            String::from_utf8(to_mlx_json(&v)).unwrap_or_default(),
            r#"{"a": [1, 2], "b": "\u00e9\n"}"#
        );
    }
}
