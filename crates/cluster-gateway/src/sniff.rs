//! Reading what the gateway needs out of a response without holding it up.
//!
//! The proxy forwards every body frame as soon as it arrives. On the way it
//! looks for two things:
//!
//! - the moment the first *data* arrives (time to first byte / token). For a
//!   server-sent-event stream that is the first `data:` line, not the
//!   `: keepalive` comment lines mlx_lm.server sends while it prefills;
//! - the token usage the node reports: OpenAI's `usage.prompt_tokens` and
//!   `usage.prompt_tokens_details.cached_tokens` (mlx_lm.server, llama.cpp,
//!   vLLM), or Anthropic's `input_tokens` / `cache_read_input_tokens` (also
//!   nested under `message.usage` in a `message_start` event).
//!
//! [`SseSniffer`] scans each frame line by line and parses only the `data:`
//! lines whose `"usage"` is an object (OpenAI streams with `include_usage`
//! put `"usage": null` in every chunk); it copies bytes only for a line
//! split across two frames. [`JsonSniffer`] keeps cheap reference-counted handles to the
//! frames of a non-streamed answer (no copy while streaming) and parses the
//! usage once at the end.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;

/// Token counts a node reported for one request. Every field is `None` when
/// the node did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached or not (`prompt_tokens`; Anthropic: input +
    /// cache read + cache creation tokens).
    pub prompt_tokens: Option<u32>,
    /// Prompt tokens served from the node's prompt cache
    /// (`prompt_tokens_details.cached_tokens`; Anthropic:
    /// `cache_read_input_tokens`).
    pub cached_tokens: Option<u32>,
    /// Generated tokens (`completion_tokens`; Anthropic: `output_tokens`).
    pub completion_tokens: Option<u32>,
}

impl Usage {
    /// Whether any count is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.prompt_tokens.is_none()
            && self.cached_tokens.is_none()
            && self.completion_tokens.is_none()
    }

    /// Takes every count `other` knows, keeping ours for the others
    /// (Anthropic streams report input tokens first and output tokens last).
    pub fn merge(&mut self, other: Usage) {
        self.prompt_tokens = other.prompt_tokens.or(self.prompt_tokens);
        self.cached_tokens = other.cached_tokens.or(self.cached_tokens);
        self.completion_tokens = other.completion_tokens.or(self.completion_tokens);
    }
}

#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    message: Option<NestedMessage>,
}

#[derive(Deserialize)]
struct NestedMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

fn clamp(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl WireUsage {
    fn into_usage(self) -> Usage {
        let anthropic_prompt = self.input_tokens.map(|input| {
            input
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
        });
        Usage {
            prompt_tokens: self.prompt_tokens.or(anthropic_prompt).map(clamp),
            cached_tokens: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(self.cache_read_input_tokens)
                .map(clamp),
            completion_tokens: self.completion_tokens.or(self.output_tokens).map(clamp),
        }
    }
}

/// Parses the usage out of one JSON document (a non-streamed answer or the
/// payload of one SSE `data:` line). `None` when the document is not JSON or
/// carries no usage (`"usage": null` included).
#[must_use]
pub fn usage_from_json(json: &[u8]) -> Option<Usage> {
    parse_document(json).ok().flatten()
}

/// Like [`usage_from_json`], but tells invalid JSON (`Err`) from valid JSON
/// without usage (`Ok(None)`).
fn parse_document(json: &[u8]) -> Result<Option<Usage>, ()> {
    match serde_json::from_slice::<Document>(json) {
        Ok(doc) => Ok(doc
            .usage
            .or(doc.message.and_then(|m| m.usage))
            .map(WireUsage::into_usage)
            .filter(|u| !u.is_empty())),
        // Valid JSON whose usage has an unexpected shape is still valid.
        Err(_) => serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .map(|_| None)
            .map_err(|_| ()),
    }
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memmem::find(haystack, needle).is_some()
}

/// Whether `bytes` (whole lines of JSON) hold a `"usage"` key whose value is
/// an object — not `null`, which OpenAI streams with `include_usage` send in
/// every chunk but the last. A quote inside a JSON string is escaped, so
/// message text never matches.
fn carries_usage(bytes: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    memmem::find_iter(bytes, KEY).any(|at| {
        bytes[at + KEY.len()..]
            .trim_ascii_start()
            .strip_prefix(b":")
            .is_some_and(|value| value.trim_ascii_start().first() == Some(&b'{'))
    })
}

/// What one [`SseSniffer::feed`] call saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedResult {
    /// This frame completed the stream's first `data:` line.
    pub first_data: bool,
}

/// Line scanner over a server-sent-event stream (see the module docs).
///
/// Default: nothing seen, no usage, not inside a line.
#[derive(Debug, Default)]
pub struct SseSniffer {
    /// The start of a line whose end has not arrived yet.
    carry: BytesMut,
    seen_data: bool,
    usage: Usage,
    /// Saw `data: [DONE]` (OpenAI) or `event: message_stop` (Anthropic).
    saw_end: bool,
    /// The last two bytes seen, carriage returns skipped (`[0, 0]` before
    /// anything): `\n\n` there means the stream sits between events.
    tail: [u8; 2],
}

impl SseSniffer {
    /// A fresh sniffer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans one frame of the stream.
    pub fn feed(&mut self, frame: &[u8]) -> FeedResult {
        let mut result = FeedResult::default();
        if frame.is_empty() {
            return result;
        }
        let mut last = frame.iter().rev().filter(|&&b| b != b'\r');
        match (last.next(), last.next()) {
            (Some(&end), Some(&before)) => self.tail = [before, end],
            (Some(&end), None) => self.tail = [self.tail[1], end],
            _ => {}
        }
        let mut rest = frame;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.carry.is_empty() {
                self.line(line, &mut result);
            } else {
                self.carry.extend_from_slice(line);
                let whole = std::mem::take(&mut self.carry);
                self.line(&whole, &mut result);
            }
        }
        self.carry.extend_from_slice(rest);
        result
    }

    fn line(&mut self, line: &[u8], result: &mut FeedResult) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(payload) = line.strip_prefix(b"data:") else {
            if line.starts_with(b"event:") && contains(line, b"message_stop") {
                self.saw_end = true;
            }
            return;
        };
        if payload.trim_ascii() == b"[DONE]" {
            self.saw_end = true;
        }
        if !self.seen_data {
            self.seen_data = true;
            result.first_data = true;
        }
        if carries_usage(payload)
            && let Some(usage) = usage_from_json(payload)
        {
            self.usage.merge(usage);
        }
    }

    /// Whether a `data:` line has been seen.
    #[must_use]
    pub fn seen_data(&self) -> bool {
        self.seen_data
    }

    /// Whether the stream's end marker arrived: `data: [DONE]` (OpenAI) or
    /// `event: message_stop` (Anthropic). A stream that closes without it was
    /// cut short (an HTTP/1.0 node that dies just closes the connection).
    #[must_use]
    pub fn saw_end(&self) -> bool {
        self.saw_end
    }

    /// The usage reported so far (merged over events).
    #[must_use]
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Bytes to send before an error event so that it starts a fresh event:
    /// empty at an event boundary (or before anything was sent), else the
    /// line and event terminators still missing.
    #[must_use]
    pub fn terminator(&self) -> &'static [u8] {
        if self.tail == [0, 0] || self.tail == [b'\n', b'\n'] {
            b""
        } else if self.tail[1] == b'\n' {
            b"\n"
        } else {
            b"\n\n"
        }
    }
}

/// Removes the usage-only chunk (`"choices": []` with a `usage`) from an
/// OpenAI stream, for clients that did not ask for usage when the gateway
/// asked the node for it (`stream_options.include_usage`).
///
/// Frames pass through untouched (no copy) unless they hold such a chunk or
/// end inside a line; then complete lines are copied out and a partial last
/// line waits for the next frame. Default: nothing held.
#[derive(Debug, Default)]
pub(crate) struct UsageChunkFilter {
    /// The start of a line whose end has not arrived yet.
    carry: BytesMut,
    /// The blank line that ends a dropped event is dropped too.
    drop_blank: bool,
}

#[derive(Deserialize)]
struct ChunkShape {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
}

/// Whether an SSE `data:` payload is a chunk that only carries usage.
fn is_usage_only(payload: &[u8]) -> bool {
    carries_usage(payload)
        && serde_json::from_slice::<ChunkShape>(payload)
            .is_ok_and(|c| c.usage.is_some() && c.choices.is_none_or(|v| v.is_empty()))
}

impl UsageChunkFilter {
    /// What to forward of `frame` (possibly empty).
    pub(crate) fn filter(&mut self, frame: &Bytes) -> Bytes {
        if self.carry.is_empty()
            && !self.drop_blank
            && frame.last() == Some(&b'\n')
            && !carries_usage(frame)
        {
            return frame.clone();
        }
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(frame);
        let mut out = BytesMut::with_capacity(input.len());
        let mut rest: &[u8] = &input;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(pos + 1);
            rest = tail;
            let text = line[..pos].strip_suffix(b"\r").unwrap_or(&line[..pos]);
            if self.drop_blank && text.is_empty() {
                self.drop_blank = false;
                continue;
            }
            self.drop_blank = false;
            if let Some(payload) = text.strip_prefix(b"data:")
                && is_usage_only(payload.trim_ascii())
            {
                self.drop_blank = true;
                continue;
            }
            out.extend_from_slice(line);
        }
        self.carry.extend_from_slice(rest);
        out.freeze()
    }

    /// Bytes still held (a line the stream never finished); forwarded when
    /// the stream ends.
    pub(crate) fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.carry).freeze()
    }
}

/// Collects the frames of a non-streamed answer by reference (each
/// [`Bytes`] clone is a reference count, not a copy) up to `limit` bytes, and
/// parses the usage at the end. Answers longer than the limit are passed
/// through unsniffed.
///
/// Default limit: [`JsonSniffer::DEFAULT_LIMIT`].
#[derive(Debug)]
pub struct JsonSniffer {
    frames: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
}

impl Default for JsonSniffer {
    fn default() -> Self {
        Self::new(Self::DEFAULT_LIMIT)
    }
}

impl JsonSniffer {
    /// 8 MiB: far above any chat completion, small enough to bound memory.
    pub const DEFAULT_LIMIT: usize = 8 << 20;

    /// A sniffer that gives up beyond `limit` bytes.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            frames: Vec::new(),
            len: 0,
            limit,
            overflowed: false,
        }
    }

    /// Keeps a handle to one frame.
    pub fn feed(&mut self, frame: &Bytes) {
        if self.overflowed {
            return;
        }
        self.len += frame.len();
        if self.len > self.limit {
            self.overflowed = true;
            self.frames = Vec::new();
            return;
        }
        self.frames.push(frame.clone());
    }

    /// Parses the whole answer (copies only when it came in more than one
    /// frame).
    #[must_use]
    pub fn finish(self) -> JsonVerdict {
        if self.overflowed {
            return JsonVerdict::Unchecked;
        }
        let check = |json: &[u8]| match parse_document(json) {
            Ok(usage) => JsonVerdict::Valid(usage),
            Err(()) => JsonVerdict::Invalid,
        };
        match self.frames.as_slice() {
            [] => JsonVerdict::Invalid,
            [one] => check(one),
            many => {
                let mut all = Vec::with_capacity(self.len);
                for frame in many {
                    all.extend_from_slice(frame);
                }
                check(&all)
            }
        }
    }
}

/// What [`JsonSniffer::finish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonVerdict {
    /// Complete JSON, with the usage if it had one.
    Valid(Option<Usage>),
    /// Not JSON, or cut short.
    Invalid,
    /// Larger than the sniffer's limit: passed through unchecked.
    Unchecked,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLX_FINAL: &[u8] = br#"data: {"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":120,"completion_tokens":7,"total_tokens":127,"prompt_tokens_details":{"cached_tokens":96}}}"#;

    #[test]
    fn openai_usage_from_json() {
        let body = br#"{"id":"a","choices":[{"message":{"content":"hi \"usage\""}}],"usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(
            usage_from_json(body),
            Some(Usage {
                prompt_tokens: Some(10),
                cached_tokens: Some(4),
                completion_tokens: Some(2)
            })
        );
    }

    #[test]
    fn null_or_missing_usage_is_none() {
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
        assert_eq!(usage_from_json(br#"{"choices":[]}"#), None);
        assert_eq!(usage_from_json(b"not json"), None);
    }

    #[test]
    fn anthropic_usage_nested_and_top_level() {
        let start = br#"{"type":"message_start","message":{"usage":{"input_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":3,"output_tokens":1}}}"#;
        let u = usage_from_json(start).unwrap();
        assert_eq!(u.prompt_tokens, Some(108));
        assert_eq!(u.cached_tokens, Some(100));
        let delta = br#"{"type":"message_delta","usage":{"output_tokens":42}}"#;
        let mut all = u;
        all.merge(usage_from_json(delta).unwrap());
        assert_eq!(all.completion_tokens, Some(42));
        assert_eq!(all.prompt_tokens, Some(108));
    }

    #[test]
    fn usage_chunk_filter_drops_only_the_usage_event() {
        let stream = concat!(
            ": keepalive 1/2\n\n",
            "data: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}]}\n\n",
            "data: {\"choices\": [{\"delta\": {}, \"finish_reason\": \"length\"}]}\n\n",
            "data: {\"object\": \"chat.completion\", \"choices\": [], \"usage\": {\"prompt_tokens\": 5}}\n\n",
            "data: [DONE]\n\n",
        );
        let expected = stream.replace(
            "data: {\"object\": \"chat.completion\", \"choices\": [], \"usage\": {\"prompt_tokens\": 5}}\n\n",
            "",
        );
        // Any split of the stream into frames gives the same output.
        for size in [1, 2, 3, 7, 16, 50, stream.len()] {
            let mut f = UsageChunkFilter::default();
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(size) {
                out.extend_from_slice(&f.filter(&Bytes::copy_from_slice(piece)));
            }
            out.extend_from_slice(&f.take_rest());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "frames of {size}"
            );
        }
        // Frames without usage pass through as the same bytes.
        let mut f = UsageChunkFilter::default();
        let frame = Bytes::from_static(b"data: {\"choices\": []}\n\n");
        assert_eq!(f.filter(&frame).as_ptr(), frame.as_ptr());
        // A usage field inside a choice chunk (vLLM's continuous usage) stays.
        let mixed = Bytes::from_static(b"data: {\"choices\": [{}], \"usage\": null}\r\n\r\n");
        assert_eq!(f.filter(&mixed).as_ptr(), mixed.as_ptr());
        let continuous =
            Bytes::from_static(b"data: {\"choices\": [{}], \"usage\": {\"prompt_tokens\": 1}}\n\n");
        assert_eq!(f.filter(&continuous), continuous);
    }

    #[test]
    fn only_usage_objects_count() {
        assert!(carries_usage(
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(carries_usage(br#"{"usage" :  {}}"#));
        assert!(carries_usage(
            br#"{"type":"message_start","message":{"usage":{"input_tokens":5}}}"#
        ));
        assert!(!carries_usage(
            br#"{"choices":[{"delta":{}}],"usage":null}"#
        ));
        assert!(!carries_usage(
            br#"{"choices":[{"delta":{"content":"\"usage\": {"}}]}"#
        ));
        assert!(!carries_usage(br#"{"usage""#));
    }

    #[test]
    fn sse_first_data_skips_keepalive_comments() {
        let mut s = SseSniffer::new();
        assert!(!s.feed(b": keepalive\n\n").first_data);
        assert!(!s.seen_data());
        assert!(s.feed(b"data: {\"choices\":[]}\n\n").first_data);
        assert!(!s.feed(b"data: {\"choices\":[]}\n\n").first_data);
    }

    #[test]
    fn sse_usage_in_final_chunk() {
        let mut s = SseSniffer::new();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n");
        let mut frame = MLX_FINAL.to_vec();
        frame.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        s.feed(&frame);
        assert_eq!(s.usage().cached_tokens, Some(96));
        assert_eq!(s.usage().prompt_tokens, Some(120));
        assert_eq!(s.usage().completion_tokens, Some(7));
        assert!(s.saw_end());
    }

    #[test]
    fn anthropic_end_marker() {
        let mut s = SseSniffer::new();
        s.feed(b"event: message_start\ndata: {}\n\n");
        assert!(!s.saw_end());
        s.feed(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        assert!(s.saw_end());
    }

    #[test]
    fn sse_line_split_across_frames_byte_by_byte() {
        let mut stream = b": keepalive\n\n".to_vec();
        stream.extend_from_slice(MLX_FINAL);
        stream.extend_from_slice(b"\r\n\r\ndata: [DONE]\n\n");
        let mut s = SseSniffer::new();
        let mut firsts = 0;
        for b in &stream {
            if s.feed(std::slice::from_ref(b)).first_data {
                firsts += 1;
            }
        }
        assert_eq!(firsts, 1);
        assert_eq!(s.usage().cached_tokens, Some(96));
        assert_eq!(s.terminator(), b"");
    }

    #[test]
    fn terminator_depends_on_position() {
        let mut s = SseSniffer::new();
        assert_eq!(s.terminator(), b"");
        s.feed(b"data: {\"a\":");
        assert_eq!(s.terminator(), b"\n\n");
        s.feed(b"1}\n");
        assert_eq!(s.terminator(), b"\n");
        s.feed(b"\n");
        assert_eq!(s.terminator(), b"");
    }

    #[test]
    fn json_sniffer_single_and_multi_frame() {
        let body = br#"{"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":1}}}"#;
        let mut one = JsonSniffer::default();
        one.feed(&Bytes::from_static(body));
        let JsonVerdict::Valid(Some(u)) = one.finish() else {
            panic!("no usage")
        };
        assert_eq!(u.cached_tokens, Some(1));
        let mut many = JsonSniffer::default();
        for chunk in body.chunks(5) {
            many.feed(&Bytes::copy_from_slice(chunk));
        }
        let JsonVerdict::Valid(Some(u)) = many.finish() else {
            panic!("no usage")
        };
        assert_eq!(u.prompt_tokens, Some(3));
        let mut cut = JsonSniffer::default();
        cut.feed(&Bytes::from_static(&body[..20]));
        assert_eq!(cut.finish(), JsonVerdict::Invalid);
    }

    #[test]
    fn json_sniffer_gives_up_past_limit() {
        let mut s = JsonSniffer::new(4);
        s.feed(&Bytes::from_static(b"{\"usage\":{\"prompt_tokens\":1}}"));
        assert_eq!(s.finish(), JsonVerdict::Unchecked);
    }
}
