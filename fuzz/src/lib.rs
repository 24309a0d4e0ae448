//! The fuzz targets of mlx-cluster: every parser that takes input from
//! outside the process, each as a plain function of arbitrary bytes that
//! must not panic, hang or allocate without bound, and that checks what
//! it can of the result.
//!
//! | target | input | checks |
//! |---|---|---|
//! | [`config`] | a config file (TOML, JSON or YAML, picked by the first byte), then `MLX_CLUSTER_*` overrides, one per line | an accepted config has no problems; the api-keys file parser |
//! | [`request`] | a client request body (chat, completions or messages, picked by the first byte) | the JSON depth guard; a parsed request fingerprints the same twice |
//! | [`sse`] | a node's answer, cut into frames at points taken from the first bytes | the SSE sniffer finds the same usage, first data and end however the stream is cut; the JSON usage reader |
//! | [`probe_response`] | a node's whole reply to a health probe | the probe's HTTP/1.x reader (heads, chunked, lengths) and the checker's classification |
//! | [`srv_answer`] | a DNS response message | SRV answers to nodes; every node URL is valid |
//! | [`endpoint_slices`] | EndpointSlice JSON (one or an array) | slices to nodes |
//! | [`anthropic`] | a Messages request, or a node's chat answer (whole or streamed, cut into frames) | the translation both ways: whatever is produced is valid JSON / well-formed events |
//!
//! `cargo xtask fuzz` runs them coverage-guided with AFL++ (`fuzz/afl`, a
//! separate crate built by `cargo afl`); `cargo test -p cluster-fuzz` runs
//! each over its seed corpus (`fuzz/corpus/TARGET/`) and over
//! structure-aware generated inputs (proptest).
//!
//! ```
//! cluster_fuzz::request(b"\x00{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
//! ```

use bytes::Bytes;
use cluster_gateway::{ApiKind, ParsedRequest};
use cluster_gateway::{JsonSniffer, SseSniffer, usage_from_json};
use cluster_gateway::{MAX_JSON_DEPTH, json_too_deep};
use cluster_types::{ClusterConfig, ConfigFormat, parse_api_keys_file};
use http::HeaderMap;

/// A fuzz target.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz/corpus/` and of
/// `cargo xtask fuzz TARGET`).
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("request", request),
    ("sse", sse),
    ("probe_response", probe_response),
    ("srv_answer", srv_answer),
    ("endpoint_slices", endpoint_slices),
    ("anthropic", anthropic),
];

/// The target named `name`.
#[must_use]
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A config file and environment overrides: byte 0 picks the format (`% 3`:
/// TOML, JSON, YAML); the text runs to the first NUL byte; after it, one
/// `NAME=VALUE` override per line. The text is also read as an
/// `api_keys_file`.
pub fn config(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let format =
        [ConfigFormat::Toml, ConfigFormat::Json, ConfigFormat::Yaml][usize::from(selector % 3)];
    let (text, env) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let env_text = String::from_utf8_lossy(env);
    let vars: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if let Ok(config) = ClusterConfig::parse_with_env(&text, format, vars) {
        let problems = config.problems();
        assert!(
            problems.is_empty(),
            "an accepted config has problems: {problems:?}"
        );
    }
    let _ = parse_api_keys_file(&text);
}

/// A client request body: byte 0 picks the API (`% 3`), the rest is the
/// body, checked as the proxy does (depth guard, then the parser).
pub fn request(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let api = ApiKind::ALL[usize::from(selector % 3)];
    if json_too_deep(body, MAX_JSON_DEPTH) {
        return;
    }
    let mut headers = HeaderMap::new();
    headers.insert("x-session-id", http::HeaderValue::from_static("fuzz"));
    if let Ok(parsed) = ParsedRequest::parse(api, &headers, "x-session-id", body) {
        let a = parsed.fingerprint(16);
        let b = parsed.fingerprint(16);
        assert_eq!(a, b, "fingerprints of one request differ");
        let _ = parsed.routing_context(256);
        let _ = parsed.system_prompt_hash();
        let _ = parsed.tools_hash();
    }
}

/// A node's answer: the first byte gives how many cut points follow (up to
/// 8, each one byte: a position as a fraction of the rest); the rest is the
/// stream. The SSE sniffer must see the same usage, first-data moment and
/// end marker however the stream is cut; the JSON sniffer and usage reader
/// must not panic.
pub fn sse(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 9).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * stream.len() / 256)
        .collect();
    points.sort_unstable();
    let mut whole = SseSniffer::new();
    let first_whole = whole.feed(stream).first_data;
    let mut cut = SseSniffer::new();
    let mut first_cut = false;
    let mut start = 0;
    for &p in points.iter().chain(std::iter::once(&stream.len())) {
        first_cut |= cut.feed(&stream[start..p]).first_data;
        start = p;
    }
    assert_eq!(whole.usage(), cut.usage(), "usage depends on framing");
    assert_eq!(
        whole.seen_data(),
        cut.seen_data(),
        "data seen depends on framing"
    );
    assert_eq!(
        whole.saw_end(),
        cut.saw_end(),
        "end marker depends on framing"
    );
    assert_eq!(first_whole, first_cut, "first data depends on framing");
    let mut json = JsonSniffer::new(JsonSniffer::DEFAULT_LIMIT);
    let mut start = 0;
    for &p in points.iter().chain(std::iter::once(&stream.len())) {
        json.feed(&Bytes::copy_from_slice(&stream[start..p]));
        start = p;
    }
    let _ = json.finish();
    let _ = usage_from_json(stream);
}

/// A node's whole reply to a health probe.
pub fn probe_response(data: &[u8]) {
    let _ = cluster_health::fuzzing::probe_response(data);
}

/// A DNS response message.
pub fn srv_answer(data: &[u8]) {
    let _ = cluster_discovery::fuzzing::srv_answer(data);
}

/// EndpointSlice JSON.
pub fn endpoint_slices(data: &[u8]) {
    let _ = cluster_discovery::fuzzing::endpoint_slices(data);
}

/// The Anthropic Messages translation: byte 0 picks what the rest is (`% 3`):
/// a Messages request (parsed, translated to chat completions: the result
/// must be JSON), a node's non-streamed chat answer (translated to a
/// message: JSON when it succeeds), or a node's chat stream cut at the
/// points given by byte 1 (translated event by event: every `data:` line
/// written must be JSON, and cutting the stream elsewhere must not change
/// the events).
pub fn anthropic(data: &[u8]) {
    use cluster_gateway::{Endpoint, MessagesRequest, ReplyMeta, StreamTranslator};
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let json = |bytes: &[u8], what: &str| {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
            panic!(
                "{what} is not JSON ({e}): {}",
                String::from_utf8_lossy(bytes)
            );
        }
    };
    let meta = || ReplyMeta::new("claude-fuzz", &[]);
    match selector % 3 {
        0 => {
            if json_too_deep(rest, MAX_JSON_DEPTH) {
                return;
            }
            for endpoint in [Endpoint::Messages, Endpoint::CountTokens] {
                if let Ok(request) = MessagesRequest::parse(rest, endpoint) {
                    json(
                        &request.to_chat_completions("m", Some(64)),
                        "a translated request",
                    );
                    json(
                        &request.to_chat_completions("m", None),
                        "a translated request",
                    );
                }
            }
        }
        1 => {
            if let Ok(message) = cluster_gateway::translate_response(rest, &meta()) {
                json(&message, "a translated answer");
            }
        }
        _ => {
            let Some((&cut, stream)) = rest.split_first() else {
                return;
            };
            let at = usize::from(cut) * stream.len() / 256;
            let run = |pieces: &[&[u8]]| {
                let mut t = StreamTranslator::new(meta());
                let mut out = t.start();
                for piece in pieces {
                    t.feed(piece, &mut out);
                }
                t.finish(&mut out);
                out
            };
            let whole = run(&[stream]);
            let cut = run(&[&stream[..at], &stream[at..]]);
            for line in String::from_utf8_lossy(&whole).lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    json(data.as_bytes(), "an event's data");
                }
            }
            // Message ids are random; compare the events without them.
            let strip = |events: &[u8]| {
                String::from_utf8_lossy(events)
                    .lines()
                    .filter(|l| !l.contains("\"id\""))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(strip(&whole), strip(&cut), "the events depend on framing");
        }
    }
}
