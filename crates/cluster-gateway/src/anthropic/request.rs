//! From a Messages request to what the node receives: an OpenAI chat
//! completion request for nodes that speak only OpenAI, or the client's own
//! body (model and `max_tokens` rewritten) for nodes that serve Messages.
//!
//! # Translation to `/v1/chat/completions`
//! | Messages | chat completions |
//! |---|---|
//! | `system` (string or text blocks) | a leading `system` message, blocks joined with a blank line |
//! | message with string content | same role, string content |
//! | text blocks | string content (blocks concatenated) |
//! | `image` blocks (base64 or url) | content parts: text parts and `image_url` parts (base64 as a `data:` URL) |
//! | `tool_use` blocks (assistant) | `tool_calls` (`id` kept, `input` as the `arguments` string) |
//! | `tool_result` blocks (user) | one `tool` message each (`tool_call_id` = `tool_use_id`, text content), before the rest of the user message; images in a result go to that user message |
//! | `system` message inside `messages` | a `system` message at the same place |
//! | `thinking` blocks | dropped |
//! | `tools` (`input_schema`) | `tools` of type `function` (`parameters` = the schema, byte for byte) |
//! | `tool_choice` auto / any / tool / none | `"auto"` / `"required"` / `{"type":"function",...}` / `"none"`; `disable_parallel_tool_use` → `parallel_tool_calls: false` |
//! | `max_tokens` | `max_tokens`, capped (see [`capped_max_tokens`]) |
//! | `temperature`, `top_p`, `top_k`, `stop_sequences`, `stream` | `temperature`, `top_p`, `top_k`, `stop`, `stream` with `stream_options.include_usage` |
//!
//! Everything else (`metadata`, `thinking`, `context_management`, ...) is
//! not sent.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;

use super::types::{Block, Content, ImageSource, MessagesRequest, Role, ToolChoice};

/// Where Messages model names go: `gateway.model_aliases` and
/// `gateway.default_model`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ModelMap<'c> {
    /// Exact names, or prefixes ending in `*`.
    pub aliases: &'c BTreeMap<String, String>,
    /// For names no alias matches and no node lists.
    pub default_model: &'c str,
}

impl ModelMap<'_> {
    /// The model to send for `requested`: an exact alias, else the longest
    /// matching prefix alias, else `requested` itself when `is_listed` says
    /// a node lists it, else the default model.
    #[must_use]
    pub(super) fn resolve<'r>(
        &'r self,
        requested: &'r str,
        is_listed: impl Fn(&str) -> bool,
    ) -> &'r str {
        if let Some(target) = self.aliases.get(requested) {
            return target;
        }
        let prefix = self
            .aliases
            .iter()
            .filter_map(|(pattern, target)| {
                let prefix = pattern.strip_suffix('*')?;
                requested
                    .starts_with(prefix)
                    .then_some((prefix.len(), target))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, target)) = prefix {
            return target;
        }
        if is_listed(requested) {
            requested
        } else {
            self.default_model
        }
    }
}

/// `max_tokens` after the cap: the smaller of what the client asked and
/// `cap`, where a cap of 0 means none. A request without `max_tokens` (only
/// `count_tokens`) gets the cap, if any.
#[must_use]
pub(super) fn capped_max_tokens(requested: Option<u64>, cap: u32) -> Option<u64> {
    match (requested, cap) {
        (r, 0) => r,
        (None, cap) => Some(u64::from(cap)),
        (Some(r), cap) => Some(r.min(u64::from(cap))),
    }
}

// ---- the chat completion request ----------------------------------------

#[derive(Serialize)]
struct ChatRequest<'r> {
    model: &'r str,
    messages: Vec<ChatMessage<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'r [Cow<'r, str>],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ChatTool<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ChatToolChoice<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ChatMessage<'r> {
    role: &'static str,
    content: ChatContent<'r>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ChatToolCall<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'r str>,
}

enum ChatContent<'r> {
    Null,
    Text(Cow<'r, str>),
    Parts(Vec<ChatPart<'r>>),
}

impl Serialize for ChatContent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => s.serialize_none(),
            Self::Text(t) => s.serialize_str(t),
            Self::Parts(parts) => parts.serialize(s),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChatPart<'r> {
    Text { text: &'r str },
    ImageUrl { image_url: ImageUrl<'r> },
}

#[derive(Serialize)]
struct ImageUrl<'r> {
    url: Cow<'r, str>,
}

#[derive(Serialize)]
struct ChatToolCall<'r> {
    id: &'r str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: ChatFunctionCall<'r>,
}

#[derive(Serialize)]
struct ChatFunctionCall<'r> {
    name: &'r str,
    arguments: &'r str,
}

#[derive(Serialize)]
struct ChatTool<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ChatFunction<'r>,
}

#[derive(Serialize)]
struct ChatFunction<'r> {
    name: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'r str>,
    parameters: &'r RawValue,
}

enum ChatToolChoice<'r> {
    Keyword(&'static str),
    Function(&'r str),
}

impl Serialize for ChatToolChoice<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Name<'n> {
            name: &'n str,
        }
        match self {
            Self::Keyword(k) => s.serialize_str(k),
            Self::Function(name) => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("type", "function")?;
                map.serialize_entry("function", &Name { name })?;
                map.end()
            }
        }
    }
}

fn image_url<'r>(source: &'r ImageSource<'_>) -> ChatPart<'r> {
    let url = match source {
        ImageSource::Base64 { media_type, data } => {
            Cow::Owned(format!("data:{media_type};base64,{data}"))
        }
        ImageSource::Url(url) => Cow::Borrowed(&**url),
    };
    ChatPart::ImageUrl {
        image_url: ImageUrl { url },
    }
}

/// Text and image blocks as chat content: a string when there is no image
/// (blocks concatenated), else parts in order.
fn user_content<'r>(blocks: &[&'r Block<'_>]) -> ChatContent<'r> {
    let has_image = blocks.iter().any(|b| matches!(b, Block::Image(_)));
    if has_image {
        let parts = blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(ChatPart::Text { text: t }),
                Block::Image(source) => Some(image_url(source)),
                _ => None,
            })
            .collect();
        return ChatContent::Parts(parts);
    }
    let mut texts = blocks.iter().filter_map(|b| match b {
        Block::Text(t) => Some(&**t),
        _ => None,
    });
    match (texts.next(), texts.next()) {
        (None, _) => ChatContent::Text(Cow::Borrowed("")),
        (Some(one), None) => ChatContent::Text(Cow::Borrowed(one)),
        (Some(a), Some(b)) => {
            let mut joined = String::with_capacity(a.len() + b.len());
            joined.push_str(a);
            joined.push_str(b);
            for t in texts {
                joined.push_str(t);
            }
            ChatContent::Text(Cow::Owned(joined))
        }
    }
}

fn push_message<'r>(out: &mut Vec<ChatMessage<'r>>, role: Role, blocks: &'r [Block<'_>]) {
    match role {
        Role::Assistant => {
            let texts: Vec<&Block<'_>> = blocks
                .iter()
                .filter(|b| matches!(b, Block::Text(_)))
                .collect();
            let tool_calls: Vec<ChatToolCall<'r>> = blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, name, input } => Some(ChatToolCall {
                        id,
                        kind: "function",
                        function: ChatFunctionCall {
                            name,
                            arguments: input.get(),
                        },
                    }),
                    _ => None,
                })
                .collect();
            let content = if texts.is_empty() && !tool_calls.is_empty() {
                ChatContent::Null
            } else {
                user_content(&texts)
            };
            out.push(ChatMessage {
                role: "assistant",
                content,
                tool_calls,
                tool_call_id: None,
            });
        }
        Role::User | Role::System => {
            // Tool results first, as `tool` messages; their images join
            // the rest of the message.
            let mut rest: Vec<&'r Block<'_>> = Vec::new();
            for b in blocks {
                if let Block::ToolResult {
                    tool_use_id,
                    content,
                    ..
                } = b
                {
                    let texts: Vec<&Block<'_>> = content
                        .iter()
                        .filter(|c| matches!(c, Block::Text(_)))
                        .collect();
                    rest.extend(content.iter().filter(|c| matches!(c, Block::Image(_))));
                    out.push(ChatMessage {
                        role: "tool",
                        content: user_content(&texts),
                        tool_calls: Vec::new(),
                        tool_call_id: Some(tool_use_id),
                    });
                }
            }
            // Images of tool results come before the message's own blocks.
            rest.extend(
                blocks
                    .iter()
                    .filter(|b| !matches!(b, Block::ToolResult { .. })),
            );
            let only_results = rest.is_empty() && !blocks.is_empty();
            if !only_results {
                out.push(ChatMessage {
                    role: role.as_str(),
                    content: user_content(&rest),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                });
            }
        }
    }
}

impl MessagesRequest<'_> {
    /// The equivalent OpenAI chat completion request (see the module docs)
    /// for `model`, with `max_tokens` (already capped). Streams ask for the
    /// usage chunk (`stream_options.include_usage`).
    #[must_use]
    pub fn to_chat_completions(&self, model: &str, max_tokens: Option<u64>) -> Vec<u8> {
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        let system;
        if !self.system.is_empty() {
            system = match self.system.as_slice() {
                [one] => Cow::Borrowed(&**one),
                many => Cow::Owned(many.iter().map(|s| &**s).collect::<Vec<_>>().join("\n\n")),
            };
            messages.push(ChatMessage {
                role: "system",
                content: ChatContent::Text(Cow::Borrowed(&*system)),
                tool_calls: Vec::new(),
                tool_call_id: None,
            });
        }
        for m in &self.messages {
            match &m.content {
                Content::Text(t) => messages.push(ChatMessage {
                    role: m.role.as_str(),
                    content: ChatContent::Text(Cow::Borrowed(t)),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                }),
                Content::Blocks(blocks) => push_message(&mut messages, m.role, blocks),
            }
        }
        let tools = self
            .tools
            .iter()
            .map(|t| ChatTool {
                kind: "function",
                function: ChatFunction {
                    name: &t.name,
                    description: t.description.as_deref(),
                    parameters: t.input_schema,
                },
            })
            .collect();
        let tool_choice = self.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => ChatToolChoice::Keyword("auto"),
            ToolChoice::Any => ChatToolChoice::Keyword("required"),
            ToolChoice::None => ChatToolChoice::Keyword("none"),
            ToolChoice::Tool(name) => ChatToolChoice::Function(name),
        });
        let request = ChatRequest {
            model,
            messages,
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stop: &self.stop_sequences,
            stream: self.stream,
            stream_options: self.stream.then_some(StreamOptions {
                include_usage: true,
            }),
            tools,
            tool_choice,
            parallel_tool_calls: self.disable_parallel_tool_use.then_some(false),
        };
        // Strings, numbers and raw JSON already checked: cannot fail.
        serde_json::to_vec(&request).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::parse::Endpoint;
    use super::*;

    fn translate(body: &Value, max: Option<u64>) -> Value {
        let bytes = serde_json::to_vec(body).unwrap();
        let parsed = MessagesRequest::parse(&bytes, Endpoint::Messages).unwrap();
        serde_json::from_slice(&parsed.to_chat_completions("local", max)).unwrap()
    }

    #[test]
    fn aliases_and_default_model() {
        let aliases: BTreeMap<String, String> = [
            ("claude-*".to_owned(), "qwen".to_owned()),
            ("claude-haiku-*".to_owned(), "small".to_owned()),
            ("claude-opus-5-5".to_owned(), "big".to_owned()),
        ]
        .into();
        let map = ModelMap {
            aliases: &aliases,
            default_model: "default_model",
        };
        let none = |_: &str| false;
        assert_eq!(map.resolve("claude-opus-5-5", none), "big");
        assert_eq!(map.resolve("claude-haiku-4-5", none), "small");
        assert_eq!(map.resolve("claude-sonnet-4", none), "qwen");
        assert_eq!(map.resolve("gpt", none), "default_model");
        assert_eq!(map.resolve("served", |m| m == "served"), "served");
    }

    #[test]
    fn cap() {
        assert_eq!(capped_max_tokens(Some(128_000), 8192), Some(8192));
        assert_eq!(capped_max_tokens(Some(100), 8192), Some(100));
        assert_eq!(capped_max_tokens(Some(128_000), 0), Some(128_000));
        assert_eq!(capped_max_tokens(None, 16), Some(16));
        assert_eq!(capped_max_tokens(None, 0), None);
    }

    #[test]
    fn full_translation() {
        let body = json!({
            "model": "claude-x",
            "max_tokens": 64000,
            "stream": true,
            "temperature": 0.5,
            "top_k": 40,
            "stop_sequences": ["END"],
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
            "tools": [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look "}, {"type": "text", "text": "at a.txt"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.txt"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                        {"type": "text", "text": "hello"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
                    ]},
                    {"type": "text", "text": "Now?"}
                ]},
                {"role": "system", "content": "Be careful."}
            ]
        });
        let out = translate(&body, Some(16));
        assert_eq!(
            out,
            json!({
                "model": "local",
                "max_tokens": 16,
                "temperature": 0.5,
                "top_k": 40,
                "stop": ["END"],
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "Read", "description": "Read a file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "messages": [
                    {"role": "system", "content": "Be brief.\n\nUse tools."},
                    {"role": "user", "content": "Look at a.txt"},
                    {"role": "assistant", "content": "Reading.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"a.txt\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "hello"},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                        {"type": "text", "text": "Now?"}
                    ]},
                    {"role": "system", "content": "Be careful."}
                ]
            })
        );
    }

    #[test]
    fn tool_only_turns_and_choices() {
        let body = json!({
            "model": "m", "max_tokens": 5,
            "tool_choice": {"type": "tool", "name": "Bash"},
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done", "is_error": true}]}
            ]
        });
        let out = translate(&body, None);
        assert_eq!(
            out["tool_choice"],
            json!({"type": "function", "function": {"name": "Bash"}})
        );
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[1]["content"], Value::Null);
        assert_eq!(
            msgs[2],
            json!({"role": "tool", "tool_call_id": "t1", "content": "done"})
        );
        assert!(out.get("stream").is_none() && out.get("max_tokens").is_none());
    }
}
