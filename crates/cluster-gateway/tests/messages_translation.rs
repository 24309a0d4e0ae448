//! The Messages translation as pure functions: the canonical prompt is the
//! same whichever API a conversation came in, and no input — valid or
//! not — makes the translation panic; malformed requests get a 400 that
//! names the field.
#![allow(clippy::unwrap_used)]

use cluster_gateway::{ApiKind, ParsedRequest};
use cluster_gateway::{Endpoint, MessagesRequest, ReplyMeta, StreamTranslator, translate_response};
use cluster_types::PrefixFingerprint;
use http::HeaderMap;
use proptest::prelude::*;
use serde_json::{Value, json};

const BLOCK: u32 = 64;

/// The fingerprint of a Messages request, as the gateway computes it: from
/// its translation.
fn messages_fingerprint(body: &Value) -> PrefixFingerprint {
    let bytes = serde_json::to_vec(body).unwrap();
    let request = MessagesRequest::parse(&bytes, Endpoint::Messages).unwrap();
    let chat = request.to_chat_completions("qwen", Some(100));
    let headers = HeaderMap::new();
    ParsedRequest::parse(ApiKind::ChatCompletions, &headers, "x-session-id", &chat)
        .unwrap()
        .fingerprint(BLOCK)
}

fn openai_fingerprint(body: &Value) -> PrefixFingerprint {
    let bytes = serde_json::to_vec(body).unwrap();
    let headers = HeaderMap::new();
    ParsedRequest::parse(ApiKind::ChatCompletions, &headers, "x-session-id", &bytes)
        .unwrap()
        .fingerprint(BLOCK)
}

fn read_tool_schema() -> Value {
    json!({"type": "object", "properties": {"path": {"type": "string", "description": "Absolute path"}}, "required": ["path"]})
}

/// A Claude Code-like conversation in the Messages API: billing header and
/// cache markers, tools, a system message inside the conversation, a tool
/// round trip.
fn claude_code_conversation(turns: usize) -> Value {
    let mut messages = vec![
        json!({"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>Be careful.</system-reminder>\n"},
            {"type": "text", "text": "Look at a.txt", "cache_control": {"type": "ephemeral"}}
        ]}),
        json!({"role": "system", "content": [{"type": "text", "text": "# Environment\nPlatform: linux", "cache_control": {"type": "ephemeral"}}]}),
        json!({"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should read it.", "signature": "c2ln"},
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "/a.txt"}}
        ]}),
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "hello world"}]},
            {"type": "text", "text": "What does it say?"}
        ]}),
    ];
    if turns > 1 {
        messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": "It says hello world."}]}));
        messages.push(json!({"role": "user", "content": "Thanks."}));
    }
    json!({
        "model": "claude-opus-5-5",
        "max_tokens": 64000,
        "stream": true,
        "thinking": {"type": "adaptive"},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use the tools. ".repeat(40)}
        ],
        "tools": [
            {"name": "Read", "description": "Read a file.", "input_schema": read_tool_schema()},
            {"name": "Bash", "description": "Run a command.", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}
        ],
        "messages": messages,
    })
}

/// The same conversation as an OpenAI client writes it (members in another
/// order, whitespace in the arguments).
fn openai_twin(turns: usize) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": format!("You are a coding agent.\n\n{}", "Use the tools. ".repeat(40))}),
        json!({"role": "user", "content": "<system-reminder>Be careful.</system-reminder>\nLook at a.txt"}),
        json!({"role": "system", "content": "# Environment\nPlatform: linux"}),
        json!({"role": "assistant", "content": "Reading.", "tool_calls": [
            {"type": "function", "function": {"arguments": "{\"path\": \"/a.txt\"}", "name": "Read"}, "id": "toolu_1"}
        ]}),
        json!({"role": "tool", "tool_call_id": "toolu_1", "content": "hello world"}),
        json!({"role": "user", "content": "What does it say?"}),
    ];
    if turns > 1 {
        messages.push(json!({"role": "assistant", "content": "It says hello world."}));
        messages.push(json!({"role": "user", "content": "Thanks."}));
    }
    json!({
        "messages": messages,
        "model": "qwen",
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [
            {"type": "function", "function": {"name": "Read", "description": "Read a file.", "parameters": read_tool_schema()}},
            {"type": "function", "function": {"parameters": {"properties": {"command": {"type": "string"}}, "type": "object"}, "description": "Run a command.", "name": "Bash"}}
        ],
        "max_tokens": 100,
    })
}

#[test]
fn a_messages_conversation_and_its_openai_twin_have_the_same_block_chain() {
    for turns in [1, 2] {
        let messages = messages_fingerprint(&claude_code_conversation(turns));
        let openai = openai_fingerprint(&openai_twin(turns));
        assert!(messages.len() > 10, "{}", messages.len());
        assert_eq!(messages.blocks(), openai.blocks(), "turns = {turns}");
    }
    // The second turn extends the first: every full block is shared.
    let first = messages_fingerprint(&claude_code_conversation(1));
    let second = messages_fingerprint(&claude_code_conversation(2));
    assert_eq!(
        first.full_blocks(),
        &second.blocks()[..first.full_blocks().len()]
    );
}

#[test]
fn moving_cache_markers_do_not_change_the_chain() {
    let a = claude_code_conversation(1);
    let mut b = a.clone();
    b["messages"][0]["content"][1]
        .as_object_mut()
        .unwrap()
        .remove("cache_control");
    b["messages"][3]["content"][1]["cache_control"] = json!({"type": "ephemeral"});
    assert_eq!(messages_fingerprint(&a), messages_fingerprint(&b));
}

// ---- properties --------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 .,!?\n]{0,40}",
        ".{0,20}",
        Just("\u{1F600} \"quoted\" \\ back\\slash".to_owned()),
    ]
}

fn cache_control() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(Just(json!({"type": "ephemeral"})))
}

fn with_cache(mut block: Value, cc: Option<Value>) -> Value {
    if let Some(cc) = cc {
        block["cache_control"] = cc;
    }
    block
}

fn schema() -> impl Strategy<Value = Value> {
    ("[a-z]{1,8}", prop::bool::ANY).prop_map(|(prop, required)| {
        let mut s = json!({"type": "object", "properties": {prop.clone(): {"type": "string"}}});
        if required {
            s["required"] = json!([prop]);
        }
        s
    })
}

fn user_block() -> impl Strategy<Value = Value> {
    prop_oneof![
        (text(), cache_control()).prop_map(|(t, cc)| with_cache(json!({"type": "text", "text": t}), cc)),
        ("[A-Za-z0-9+/]{0,16}", prop_oneof![Just("image/png"), Just("image/jpeg")]).prop_map(
            |(data, media)| json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
        ),
        "[a-z]{1,10}".prop_map(|url| json!({"type": "image", "source": {"type": "url", "url": format!("https://example.invalid/{url}.png")}})),
        ("toolu_[a-z0-9]{1,8}", prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(text(), 0..3).prop_map(|ts| Value::Array(ts.into_iter().map(|t| json!({"type": "text", "text": t})).collect())),
        ], prop::option::of(prop::bool::ANY), cache_control())
            .prop_map(|(id, content, is_error, cc)| {
                let mut b = json!({"type": "tool_result", "tool_use_id": id, "content": content});
                if let Some(e) = is_error {
                    b["is_error"] = json!(e);
                }
                with_cache(b, cc)
            }),
        text().prop_map(|t| json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": t}})),
    ]
}

fn assistant_block() -> impl Strategy<Value = Value> {
    prop_oneof![
        (text(), cache_control()).prop_map(|(t, cc)| with_cache(json!({"type": "text", "text": t}), cc)),
        ("toolu_[a-z0-9]{1,8}", "[A-Za-z_]{1,10}", prop::collection::btree_map("[a-z]{1,5}", text(), 0..3))
            .prop_map(|(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input})),
        text().prop_map(|t| json!({"type": "thinking", "thinking": t, "signature": "sig"})),
        Just(json!({"type": "redacted_thinking", "data": "xyz"})),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    prop_oneof![
        (prop_oneof![Just("user"), Just("assistant"), Just("system")], text())
            .prop_map(|(role, t)| json!({"role": role, "content": t})),
        prop::collection::vec(user_block(), 0..4).prop_map(|b| json!({"role": "user", "content": b})),
        prop::collection::vec(assistant_block(), 0..4).prop_map(|b| json!({"role": "assistant", "content": b})),
        prop::collection::vec((text(), cache_control()), 0..3).prop_map(|b| json!({"role": "system", "content":
            b.into_iter().map(|(t, cc)| with_cache(json!({"type": "text", "text": t}), cc)).collect::<Vec<_>>()})),
    ]
}

fn tool() -> impl Strategy<Value = Value> {
    prop_oneof![
        (
            "[A-Za-z_]{1,12}",
            prop::option::of(text()),
            schema(),
            cache_control()
        )
            .prop_map(|(name, description, schema, cc)| {
                let mut t = json!({"name": name, "input_schema": schema});
                if let Some(d) = description {
                    t["description"] = json!(d);
                }
                with_cache(t, cc)
            }),
        Just(json!({"type": "web_search_20250305", "name": "web_search", "max_uses": 3})),
        ("[A-Za-z_]{1,12}", schema()).prop_map(
            |(name, schema)| json!({"name": name, "input_schema": schema, "defer_loading": true})
        ),
    ]
}

fn tool_choice() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"type": "auto"})),
        Just(json!({"type": "any", "disable_parallel_tool_use": true})),
        Just(json!({"type": "none"})),
        "[A-Za-z_]{1,8}".prop_map(|n| json!({"type": "tool", "name": n})),
    ]
}

fn system() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        prop::collection::vec((text(), cache_control()), 0..4).prop_map(|b| Value::Array(
            b.into_iter()
                .map(|(t, cc)| with_cache(json!({"type": "text", "text": t}), cc))
                .collect()
        )),
    ]
}

/// Any request the Messages schema allows (within what the gateway serves),
/// with the extra fields Claude Code sends.
fn messages_request() -> impl Strategy<Value = Value> {
    (
        "[a-z0-9.-]{1,20}",
        1u64..200_000,
        prop::collection::vec(message(), 1..6),
        prop::option::of(system()),
        prop::option::of(prop::collection::vec(tool(), 0..4)),
        prop::option::of(tool_choice()),
        (prop::option::of(0.0f64..=1.0), prop::option::of(0.0f64..=1.0), prop::option::of(0u64..100)),
        prop::option::of(prop::collection::vec("[a-zA-Z#\n]{1,5}", 0..3)),
        prop::option::of(prop::bool::ANY),
        prop::option::of("[a-z0-9{}\":,_-]{0,30}"),
    )
        .prop_map(|(model, max_tokens, messages, system, tools, choice, (temperature, top_p, top_k), stops, stream, user)| {
            let mut r = json!({
                "model": model, "max_tokens": max_tokens, "messages": messages,
                "thinking": {"type": "adaptive"}, "context_management": {"edits": []}, "output_config": {"effort": "low"},
            });
            let fields = [
                ("system", system),
                ("tools", tools.map(Value::Array)),
                ("tool_choice", choice),
                ("temperature", temperature.map(Value::from)),
                ("top_p", top_p.map(Value::from)),
                ("top_k", top_k.map(Value::from)),
                ("stop_sequences", stops.map(|s| json!(s))),
                ("stream", stream.map(Value::Bool)),
                ("metadata", user.map(|u| json!({"user_id": u}))),
            ];
            for (key, value) in fields {
                if let Some(v) = value {
                    r[key] = v;
                }
            }
            r
        })
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            "[a-z_]{0,10}",
            Just("user".to_owned()),
            Just("assistant".to_owned()),
            Just("text".to_owned()),
            Just("tool_use".to_owned()),
            Just("tool_result".to_owned()),
            Just("image".to_owned()),
            Just("base64".to_owned()),
        ]
        .prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("model".to_owned()),
        Just("max_tokens".to_owned()),
        Just("messages".to_owned()),
        Just("role".to_owned()),
        Just("content".to_owned()),
        Just("type".to_owned()),
        Just("text".to_owned()),
        Just("system".to_owned()),
        Just("tools".to_owned()),
        Just("input_schema".to_owned()),
        Just("name".to_owned()),
        Just("id".to_owned()),
        Just("input".to_owned()),
        Just("tool_use_id".to_owned()),
        Just("source".to_owned()),
        Just("tool_choice".to_owned()),
        Just("stream".to_owned()),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Everything downstream of a successful parse: translation, the routing
/// fingerprint, a node answer translated back, a stream translated back.
fn translate_all(body: &[u8]) {
    let Ok(request) = MessagesRequest::parse(body, Endpoint::Messages) else {
        return;
    };
    let chat = request.to_chat_completions("local", Some(16));
    let headers = HeaderMap::new();
    let parsed = ParsedRequest::parse(ApiKind::ChatCompletions, &headers, "x-session-id", &chat)
        .unwrap_or_else(|e| {
            panic!(
                "the translation is not a chat request: {e}\n{}",
                String::from_utf8_lossy(&chat)
            )
        });
    let _ = parsed.routing_context(BLOCK);
    let chat: Value = serde_json::from_slice(&chat).unwrap();
    assert!(chat["messages"].is_array());
    let meta = ReplyMeta::new(&request.model, &request.stop_sequences);
    let _ = request.session_from_user_id();
    let answer = json!({"choices": [{"finish_reason": "stop", "message": {"content": "x", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}]}}]});
    translate_response(&serde_json::to_vec(&answer).unwrap(), &meta).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_request_translates(request in messages_request()) {
        let body = serde_json::to_vec(&request).unwrap();
        let parsed = MessagesRequest::parse(&body, Endpoint::Messages);
        prop_assert!(parsed.is_ok(), "{:?}\n{}", parsed.err(), request);
        translate_all(&body);
    }

    #[test]
    fn any_json_is_translated_or_refused_with_a_400(value in arb_json()) {
        let body = serde_json::to_vec(&value).unwrap();
        match MessagesRequest::parse(&body, Endpoint::Messages) {
            Ok(_) => translate_all(&body),
            Err(e) => {
                prop_assert_eq!(e.status.as_u16(), 400);
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn a_broken_field_is_named(request in messages_request(), which in 0usize..5) {
        let mut broken = request.clone();
        let (path, expect) = match which {
            0 => { broken.as_object_mut().unwrap().remove("model"); ("model", "model") }
            1 => { broken["max_tokens"] = json!("many"); ("max_tokens", "max_tokens") }
            2 => { broken["messages"][0]["role"] = json!("robot"); ("role", "messages.0.role") }
            3 => { broken["messages"][0]["content"] = json!(42); ("content", "messages.0.content") }
            _ => { broken["messages"] = json!({}); ("messages", "messages") }
        };
        let body = serde_json::to_vec(&broken).unwrap();
        let e = MessagesRequest::parse(&body, Endpoint::Messages).unwrap_err();
        prop_assert_eq!(e.status.as_u16(), 400);
        prop_assert!(e.message.starts_with(expect), "{} broken: {}", path, e.message);
    }

    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = MessagesRequest::parse(&bytes, Endpoint::Messages) {
            prop_assert_eq!(e.status.as_u16(), 400);
        }
        let meta = ReplyMeta::new("m", &[]);
        let _ = translate_response(&bytes, &meta);
        let mut t = StreamTranslator::new(meta);
        let mut out = t.start();
        t.feed(&bytes, &mut out);
        t.finish(&mut out);
        prop_assert!(t.is_ended());
        prop_assert!(std::str::from_utf8(&out).is_ok() || !bytes.is_ascii());
    }
}
