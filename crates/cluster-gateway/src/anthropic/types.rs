//! The checked form of a Messages request ([`MessagesRequest`]), borrowing
//! from the body; made by [`MessagesRequest::parse`].

use std::borrow::Cow;

use serde_json::value::RawValue;

/// A Messages request, checked (see the module docs). Borrows from the body.
#[derive(Debug, Clone)]
pub struct MessagesRequest<'a> {
    /// The requested model (before aliases).
    pub model: Cow<'a, str>,
    /// `max_tokens` as asked (required by `/v1/messages`, absent for
    /// `/v1/messages/count_tokens`).
    pub max_tokens: Option<u64>,
    /// Whether the client asked for a stream (default `false`).
    pub stream: bool,
    /// The system prompt's text blocks, in order (Claude Code's
    /// `x-anthropic-billing-header: …` block excluded: it is metadata for
    /// Anthropic's API, not prompt text).
    pub system: Vec<Cow<'a, str>>,
    /// The conversation.
    pub messages: Vec<Message<'a>>,
    /// Tools the model may call (Anthropic server tools and tools with
    /// `defer_loading` are left out: the model cannot call them here).
    pub tools: Vec<Tool<'a>>,
    /// How the model must use the tools (default: the node decides).
    pub tool_choice: Option<ToolChoice<'a>>,
    /// Whether at most one tool call per turn was asked for
    /// (`tool_choice.disable_parallel_tool_use`; default `false`).
    pub disable_parallel_tool_use: bool,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Top-k sampling.
    pub top_k: Option<u64>,
    /// Stop sequences (default none).
    pub stop_sequences: Vec<Cow<'a, str>>,
    /// `metadata.user_id` as sent (Claude Code: a JSON string holding
    /// `session_id`).
    pub user_id: Option<Cow<'a, str>>,
}

/// The role of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `user`.
    User,
    /// `assistant`.
    Assistant,
    /// `system` (Claude Code sends system messages inside the conversation).
    System,
}

impl Role {
    /// The wire name (also OpenAI's).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::System => "system",
        }
    }
}

/// One message: its role and content.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// Who speaks.
    pub role: Role,
    /// What was said: a plain string, or blocks.
    pub content: Content<'a>,
}

/// A message's content.
#[derive(Debug, Clone)]
pub enum Content<'a> {
    /// `"content": "…"`.
    Text(Cow<'a, str>),
    /// `"content": [blocks]` (thinking blocks dropped).
    Blocks(Vec<Block<'a>>),
}

/// One content block.
#[derive(Debug, Clone)]
pub enum Block<'a> {
    /// `text` (also a `document` with a plain-text source).
    Text(Cow<'a, str>),
    /// `image`.
    Image(ImageSource<'a>),
    /// `tool_use` (assistant messages).
    ToolUse {
        /// Call id, echoed by the matching `tool_result`.
        id: Cow<'a, str>,
        /// Tool name.
        name: Cow<'a, str>,
        /// Arguments, raw JSON.
        input: &'a RawValue,
    },
    /// `tool_result` (user messages).
    ToolResult {
        /// The `tool_use` it answers.
        tool_use_id: Cow<'a, str>,
        /// Its content: text and image blocks.
        content: Vec<Block<'a>>,
        /// Whether the tool failed (default `false`).
        is_error: bool,
    },
}

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource<'a> {
    /// Inline data.
    Base64 {
        /// `image/png`, ...
        media_type: Cow<'a, str>,
        /// Base64 data.
        data: Cow<'a, str>,
    },
    /// A URL the node fetches.
    Url(Cow<'a, str>),
}

/// A tool the model may call.
#[derive(Debug, Clone)]
pub struct Tool<'a> {
    /// Name.
    pub name: Cow<'a, str>,
    /// What it does.
    pub description: Option<Cow<'a, str>>,
    /// JSON schema of its input, raw.
    pub input_schema: &'a RawValue,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    /// `auto`: the model decides.
    Auto,
    /// `any`: some tool must be called.
    Any,
    /// `none`: no tool may be called.
    None,
    /// `tool`: this tool must be called.
    Tool(Cow<'a, str>),
}
