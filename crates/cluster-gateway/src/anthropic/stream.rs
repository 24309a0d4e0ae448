//! From a node's chat completion event stream to a Messages event stream,
//! chunk by chunk: each node chunk is translated as it arrives, nothing is
//! held back but a line cut in two.
//!
//! | node stream | Messages events |
//! |---|---|
//! | (the answer's headers) | `message_start` (usage still 0: nodes report it at the end) |
//! | `: keepalive` comments (mlx_lm.server while it prefills) | `ping` |
//! | nothing for 10 s (other servers while they prefill) | `ping`, from [`super::TranslatedStream`] |
//! | first `delta.content` | `content_block_start` (text), then `content_block_delta` `text_delta` for each piece |
//! | a new `delta.tool_calls[i]` (id, name) | `content_block_stop` of the open block, `content_block_start` (`tool_use`, `input: {}`) |
//! | `delta.tool_calls[i].function.arguments` pieces | `content_block_delta` `input_json_delta` with each piece as `partial_json` |
//! | `finish_reason` | closes the open block (`content_block_stop`) |
//! | the usage chunk, `data: [DONE]` | `message_delta` (`stop_reason`, `stop_sequence`, usage), `message_stop` |
//! | the gateway's `data: {"error": …}` (the node failed mid-stream) | `event: error` with `api_error` (`timeout_error` for timeouts), and nothing after it |
//!
//! `reasoning` pieces of reasoning models are not passed on.

use std::borrow::Cow;

use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::AnthropicError;
use super::events::{
    BlockDelta, BlockStart, BlockStop, DeltaOut, Empty, MessageDelta, MessageStart, PING,
    StartBlock, StartMessage, StopDelta, event,
};
use super::response::{ChatUsage, MessageUsage, ReplyMeta, matched_stop, new_id};
use crate::error::codes;

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<&'a RawValue>,
    #[serde(borrow, default)]
    matched_stop: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// The gateway's own mid-stream error (see [`crate::relay`]).
#[derive(Deserialize)]
struct RelayErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text(usize),
    Tool(usize),
}

/// The streaming translation as a pure state machine: feed it the node's
/// bytes, send what it writes (see the module docs).
#[derive(Debug)]
pub struct StreamTranslator {
    meta: ReplyMeta,
    /// The start of a line whose end has not arrived.
    carry: Vec<u8>,
    open: Option<OpenBlock>,
    next_index: usize,
    /// The node's tool call index → our block index.
    tools: Vec<(u32, usize)>,
    finish_reason: Option<String>,
    matched: Option<String>,
    usage: Option<ChatUsage>,
    /// Content pieces seen (the output token count when the node reports
    /// no usage).
    pieces: u64,
    ended: bool,
}

impl StreamTranslator {
    /// A translator for the answer to a request described by `meta`.
    #[must_use]
    pub fn new(meta: ReplyMeta) -> Self {
        Self {
            meta,
            carry: Vec::new(),
            open: None,
            next_index: 0,
            tools: Vec::new(),
            finish_reason: None,
            matched: None,
            usage: None,
            pieces: 0,
            ended: false,
        }
    }

    /// The first event, `message_start`, sent as soon as the node answered.
    #[must_use]
    pub fn start(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        event(
            &mut out,
            "message_start",
            &MessageStart {
                kind: "message_start",
                message: StartMessage {
                    id: &self.meta.id,
                    kind: "message",
                    role: "assistant",
                    model: &self.meta.model,
                    content: [],
                    stop_reason: None,
                    stop_sequence: None,
                    usage: MessageUsage::default(),
                },
            },
        );
        out
    }

    /// Whether `message_stop` or an error event was written: nothing more
    /// will be.
    #[must_use]
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Translates one piece of the node's stream, appending events to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut rest = bytes;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.carry.is_empty() {
                self.line(line, out);
            } else {
                self.carry.extend_from_slice(line);
                let whole = std::mem::take(&mut self.carry);
                self.line(&whole, out);
            }
        }
        if !self.ended {
            self.carry.extend_from_slice(rest);
        }
    }

    /// The node's stream ended: when it did so without `data: [DONE]` (and
    /// without an error event), writes an `api_error` event.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.line(&line, out);
        }
        if !self.ended {
            self.fail(
                &AnthropicError::bad_node_answer("the node's stream ended before it was complete"),
                out,
            );
        }
    }

    /// Ends the stream with `error` (nothing is written after it).
    pub fn fail(&mut self, error: &AnthropicError, out: &mut Vec<u8>) {
        if !self.ended {
            self.ended = true;
            out.extend_from_slice(&error.to_sse_event());
        }
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b':') {
            out.extend_from_slice(PING);
            return;
        }
        let Some(payload) = line.strip_prefix(b"data:") else {
            return; // blank lines, `event:`, `id:`, `retry:`
        };
        let payload = payload.trim_ascii();
        if payload == b"[DONE]" {
            self.end_message(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(payload) else {
            tracing::debug!("skipping a stream line that is not a chat completion chunk");
            return;
        };
        if let Some(error) = chunk.error {
            self.relay_error(error, out);
            return;
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return;
        };
        if let Some(delta) = choice.delta {
            if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.text(text, out);
            }
            for call in delta.tool_calls.unwrap_or_default() {
                self.tool_call(call, out);
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.close_block(out);
            self.finish_reason = Some(reason.into_owned());
            if let Some(m) = matched_stop(choice.stop_reason, choice.matched_stop) {
                self.matched = Some(m);
            }
        }
    }

    fn relay_error(&mut self, error: &RawValue, out: &mut Vec<u8>) {
        let body: RelayErrorBody = serde_json::from_str(error.get()).unwrap_or(RelayErrorBody {
            message: None,
            code: None,
        });
        let status = match body.code.as_deref() {
            Some(codes::UPSTREAM_TIMEOUT | codes::UPSTREAM_IDLE_TIMEOUT) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        let message = body
            .message
            .unwrap_or_else(|| "the node failed mid-stream".to_owned());
        self.fail(&AnthropicError::new(status, message), out);
    }

    fn open_block(&mut self, block: OpenBlock, out: &mut Vec<u8>, start: StartBlock<'_>) {
        self.close_block(out);
        let index = match block {
            OpenBlock::Text(i) | OpenBlock::Tool(i) => i,
        };
        event(
            out,
            "content_block_start",
            &BlockStart {
                kind: "content_block_start",
                index,
                content_block: start,
            },
        );
        self.open = Some(block);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some(OpenBlock::Text(index) | OpenBlock::Tool(index)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &BlockStop {
                    kind: "content_block_stop",
                    index,
                },
            );
        }
    }

    fn take_index(&mut self) -> usize {
        let i = self.next_index;
        self.next_index += 1;
        i
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        let index = match self.open {
            Some(OpenBlock::Text(i)) => i,
            _ => {
                let i = self.take_index();
                self.open_block(OpenBlock::Text(i), out, StartBlock::Text { text: "" });
                i
            }
        };
        self.pieces += 1;
        event(
            out,
            "content_block_delta",
            &BlockDelta {
                kind: "content_block_delta",
                index,
                delta: DeltaOut::TextDelta { text },
            },
        );
    }

    fn tool_call(&mut self, call: ToolCallDelta<'_>, out: &mut Vec<u8>) {
        let node_index = call
            .index
            .unwrap_or_else(|| self.tools.last().map_or(0, |(n, _)| *n));
        let known = self
            .tools
            .iter()
            .find(|(n, _)| *n == node_index)
            .map(|(_, i)| *i);
        let function = call.function;
        let index = match known {
            // A call seen before: its arguments continue (a parallel call's
            // pieces may arrive after the next call began).
            Some(i) if call.id.is_none() || self.open == Some(OpenBlock::Tool(i)) => i,
            _ => {
                let i = self.take_index();
                self.tools.push((node_index, i));
                let id = call
                    .id
                    .as_deref()
                    .filter(|id| !id.is_empty())
                    .map_or_else(|| Cow::Owned(new_id("toolu_")), Cow::Borrowed);
                let name = function
                    .as_ref()
                    .and_then(|f| f.name.as_deref())
                    .unwrap_or_default();
                self.open_block(
                    OpenBlock::Tool(i),
                    out,
                    StartBlock::ToolUse {
                        id: &id,
                        name,
                        input: Empty {},
                    },
                );
                i
            }
        };
        if let Some(arguments) = function
            .as_ref()
            .and_then(|f| f.arguments.as_deref())
            .filter(|a| !a.is_empty())
        {
            self.pieces += 1;
            event(
                out,
                "content_block_delta",
                &BlockDelta {
                    kind: "content_block_delta",
                    index,
                    delta: DeltaOut::InputJsonDelta {
                        partial_json: arguments,
                    },
                },
            );
        }
    }

    fn end_message(&mut self, out: &mut Vec<u8>) {
        self.close_block(out);
        let (stop_reason, stop_sequence) = self
            .meta
            .stop_reason(self.finish_reason.as_deref(), self.matched.as_deref());
        let usage = self.usage.map_or(
            MessageUsage {
                output_tokens: self.pieces,
                ..MessageUsage::default()
            },
            MessageUsage::from,
        );
        event(
            out,
            "message_delta",
            &MessageDelta {
                kind: "message_delta",
                delta: StopDelta {
                    stop_reason,
                    stop_sequence: stop_sequence.as_deref(),
                },
                usage,
            },
        );
        out.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        self.ended = true;
    }
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

    /// The events in `sse` as (name, data).
    fn events(sse: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(sse).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let mut name = String::new();
                let mut data = Value::Null;
                for line in e.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).unwrap();
                    }
                }
                assert_eq!(data["type"], name.as_str(), "{e}");
                (name, data)
            })
            .collect()
    }

    fn names(ev: &[(String, Value)]) -> Vec<&str> {
        ev.iter().map(|(n, _)| n.as_str()).collect()
    }

    const MLX_STREAM: &str = concat!(
        ": keepalive 64/120\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"finish_reason\":null,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"finish_reason\":null,\"delta\":{\"role\":\"assistant\",\"content\":\"lo\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"finish_reason\":\"length\",\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":2,\"total_tokens\":122,\"prompt_tokens_details\":{\"cached_tokens\":100}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn mlx_text_stream_in_one_piece_and_byte_by_byte() {
        let mut whole = StreamTranslator::new(meta(&[]));
        let mut out = whole.start();
        whole.feed(MLX_STREAM.as_bytes(), &mut out);
        assert!(whole.is_ended());
        let ev = events(&out);
        assert_eq!(
            names(&ev),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[0].1["message"]["model"], "claude-x");
        assert_eq!(ev[0].1["message"]["content"], json!([]));
        assert_eq!(
            ev[2].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            ev[3].1["delta"],
            json!({"type": "text_delta", "text": "Hel"})
        );
        assert_eq!(
            ev[6].1["delta"],
            json!({"stop_reason": "max_tokens", "stop_sequence": null})
        );
        assert_eq!(
            ev[6].1["usage"],
            json!({"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100, "output_tokens": 2})
        );

        let mut split = StreamTranslator::new(meta(&[]));
        let mut out2 = split.start();
        for b in MLX_STREAM.as_bytes() {
            split.feed(std::slice::from_ref(b), &mut out2);
        }
        assert_eq!(out, out2);
    }

    #[test]
    fn streamed_tool_calls_become_input_json_deltas() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Let me look.\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"Read\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"pa\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"th\\\": \\\"a\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"function\":{\"name\":\"Bash\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let mut t = StreamTranslator::new(meta(&[]));
        let mut out = Vec::new();
        t.feed(stream.as_bytes(), &mut out);
        let ev = events(&out);
        assert_eq!(
            names(&ev),
            [
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            ev[3].1,
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_a", "name": "Read", "input": {}}})
        );
        let json: String = ev[4..6]
            .iter()
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(json, "{\"path\": \"a\"}");
        assert_eq!(ev[7].1["index"], 2);
        assert_eq!(ev[10].1["delta"]["stop_reason"], "tool_use");
        // No usage chunk: the pieces are counted.
        assert_eq!(ev[10].1["usage"]["output_tokens"], 4);
    }

    #[test]
    fn relay_error_becomes_error_event_and_ends() {
        let mut t = StreamTranslator::new(meta(&[]));
        let mut out = Vec::new();
        t.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"node mac-2 failed mid-stream: reset\",\"type\":\"server_error\",\"code\":\"upstream_error\"}}\n\n", &mut out);
        t.feed(b"data: [DONE]\n\n", &mut out);
        t.finish(&mut out);
        let ev = events(&out);
        assert_eq!(
            names(&ev),
            ["content_block_start", "content_block_delta", "error"]
        );
        assert_eq!(ev[2].1["error"]["type"], "api_error");
        assert!(
            ev[2].1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mac-2")
        );

        let mut idle = StreamTranslator::new(meta(&[]));
        let mut out = Vec::new();
        idle.feed(
            b"data: {\"error\":{\"message\":\"x\",\"code\":\"upstream_idle_timeout\"}}\n\n",
            &mut out,
        );
        assert_eq!(events(&out)[0].1["error"]["type"], "timeout_error");
    }

    #[test]
    fn a_stream_that_just_stops_ends_with_an_error() {
        let mut t = StreamTranslator::new(meta(&[]));
        let mut out = Vec::new();
        t.feed(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"cho",
            &mut out,
        );
        t.finish(&mut out);
        let ev = events(&out);
        assert_eq!(names(&ev).last(), Some(&"error"));
    }

    #[test]
    fn stop_sequence_reported() {
        let mut t = StreamTranslator::new(meta(&["###"]));
        let mut out = Vec::new();
        t.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"ab\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", &mut out);
        let ev = events(&out);
        let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "###"})
        );
    }
}
