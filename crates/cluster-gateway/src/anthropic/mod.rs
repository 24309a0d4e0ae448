//! The Anthropic Messages API — what Claude Code speaks — in front of nodes
//! that speak only OpenAI's.
//!
//! `POST /v1/messages` (any query string, e.g. Claude Code's `?beta=true`)
//! is parsed and checked ([`MessagesRequest::parse`]; a malformed request
//! gets a 400 naming the field), its model mapped
//! ([`ModelMap`]: `gateway.model_aliases`, else the name itself when a node
//! lists it, else `gateway.default_model`), and routed like an OpenAI
//! request: its fingerprint is computed from the *translated* request, so
//! a Messages conversation and the same conversation sent as chat
//! completions share their prefix blocks and the node cache that holds
//! them. The session key is the `routing.session_header`, else Claude
//! Code's `x-claude-code-session-id`, else `metadata.user_id` (Claude
//! Code's is a JSON string holding `session_id`).
//!
//! Then per node (its `api` tag, see [`cluster_types::NodeApi`]):
//! - **`openai`** (default; mlx_lm.server): the request is translated to
//!   `/v1/chat/completions` ([`MessagesRequest::to_chat_completions`]) and
//!   the answer back: non-streamed with [`translate_response`], streamed
//!   event by event with [`StreamTranslator`] (no buffering; a node that
//!   fails mid-stream ends the stream with an `error` event). Node errors
//!   become Anthropic errors ([`AnthropicError`]).
//! - **`anthropic`** (a node serving `/v1/messages` itself): the client's
//!   body is passed through with only `model` and `max_tokens` rewritten
//!   ([`rewrite_native_body`]), and the answer relayed unchanged.
//!
//! Either way `max_tokens` is capped ([`capped_max_tokens`]) by the node's
//! `max_output_tokens` tag, else `gateway.max_output_tokens` (default
//! 8192). Clients' credentials (`x-api-key`, `authorization`) are never
//! forwarded; the node's own API key is used. Anthropic's headers are not
//! sent to OpenAI nodes.
//!
//! `POST /v1/messages/count_tokens` is answered by the gateway: an estimate
//! at 4 bytes a token of the canonical prompt.
//!
//! The translation functions are pure (bytes in, bytes out), so they can
//! be tested and fuzzed alone:
//!
//! ```
//! use cluster_gateway::{Endpoint, MessagesRequest, ReplyMeta, translate_response};
//!
//! let body = br#"{"model":"claude-x","max_tokens":64,
//!     "messages":[{"role":"user","content":"Hello"}]}"#;
//! let request = MessagesRequest::parse(body, Endpoint::Messages).unwrap();
//! let chat = request.to_chat_completions("qwen", Some(64));
//! assert!(std::str::from_utf8(&chat).unwrap().starts_with(r#"{"model":"qwen","messages":[{"role":"user","content":"Hello"}]"#));
//!
//! let answer = br#"{"choices":[{"finish_reason":"stop","message":{"content":"Hi!"}}],
//!     "usage":{"prompt_tokens":9,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}"#;
//! let meta = ReplyMeta::new(&request.model, &request.stop_sequences);
//! let message: serde_json::Value = serde_json::from_slice(&translate_response(answer, &meta).unwrap()).unwrap();
//! assert_eq!(message["content"][0]["text"], "Hi!");
//! assert_eq!(message["stop_reason"], "end_turn");
//! assert_eq!(message["usage"]["cache_read_input_tokens"], 8);
//! assert_eq!(message["usage"]["input_tokens"], 1);
//! ```
//!
//! Not supported: extended thinking (`thinking` is ignored, thinking
//! blocks in the conversation are dropped, a node's reasoning text is not
//! passed on), Anthropic server tools (web search, code execution: not
//! offered to the model), PDF documents and file references (400), an
//! assistant message at the end as a prefill (sent as an ordinary message).

mod body;
mod error;
mod events;
mod handler;
mod native;
mod parse;
mod request;
mod response;
mod stream;
mod types;
mod wire;

pub use parse::Endpoint;
pub use response::{ReplyMeta, translate_response};
pub use stream::StreamTranslator;
pub use types::MessagesRequest;

pub(crate) use error::AnthropicError;
pub(crate) use handler::{count_tokens, messages};
