//! Every fuzz target over its checked-in seed corpus, over byte-level
//! mutations of the seeds, and over structure-aware generated inputs
//! (proptest). The coverage-guided runs are `cargo xtask fuzz`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

#[test]
fn every_target_runs_its_seeds() {
    for (name, target) in cluster_fuzz::TARGETS {
        for seed in corpus(name) {
            target(&seed);
        }
    }
}

#[test]
fn the_seeds_reach_past_the_parsers() {
    // Seeds that are rejected at the first step would teach the fuzzer
    // nothing about what follows.
    for seed in corpus("srv_answer") {
        assert!(cluster_discovery::fuzzing::srv_answer(&seed) > 0);
    }
    for seed in corpus("endpoint_slices") {
        assert!(cluster_discovery::fuzzing::endpoint_slices(&seed) > 0);
    }
    for seed in corpus("probe_response") {
        assert!(
            cluster_health::fuzzing::probe_response(&seed).is_some(),
            "{}",
            String::from_utf8_lossy(&seed)
        );
    }
}

fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        0..seeds.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    )
        .prop_map(move |(i, edits)| {
            let mut data = seeds[i].clone();
            for (at, byte, kind) in edits {
                if data.is_empty() {
                    data.push(byte);
                    continue;
                }
                let at = at.index(data.len());
                match kind {
                    0 => data[at] = byte,
                    1 => data.insert(at, byte),
                    _ => {
                        data.remove(at);
                    }
                }
            }
            data
        })
}

/// One SSE event of the kinds nodes send.
fn sse_event() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(": keepalive 1/10\n\n".to_owned()),
        "[a-z ]{0,12}".prop_map(|t| format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n")),
        (0u32..100_000, 0u32..100_000, 0u32..1000).prop_map(|(p, c, o)| format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{o},\"prompt_tokens_details\":{{\"cached_tokens\":{c}}}}}}}\n\n"
        )),
        (0u32..1000, 0u32..1000).prop_map(|(i, r)| format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{i},\"cache_read_input_tokens\":{r}}}}}}}\n\n"
        )),
        Just("data: [DONE]\n\n".to_owned()),
        Just("event: message_stop\ndata: {}\n\n".to_owned()),
        Just("data: {\"usage\": null}\r\n\r\n".to_owned()),
    ]
}

/// A chat message in any of the content shapes clients send.
fn message() -> impl Strategy<Value = serde_json::Value> {
    let text = "[ -~]{0,40}";
    let part = prop_oneof![
        text.prop_map(|t| serde_json::json!({"type": "text", "text": t})),
        text.prop_map(|t| serde_json::json!({"type": "text", "text": t, "cache_control": {"type": "ephemeral"}})),
        Just(serde_json::json!({"type": "image_url", "image_url": {"url": "data:,"}})),
        text.prop_map(|t| serde_json::json!({"type": "tool_result", "tool_use_id": "x", "content": t})),
    ];
    let content = prop_oneof![
        text.prop_map(serde_json::Value::from),
        prop::collection::vec(part, 0..4).prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
    ];
    (
        prop::sample::select(vec!["system", "developer", "user", "assistant", "tool"]),
        content,
    )
        .prop_map(|(role, content)| serde_json::json!({"role": role, "content": content}))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn sse_framing_never_changes_what_is_sniffed(
        events in prop::collection::vec(sse_event(), 0..12),
        cuts in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut data = vec![u8::try_from(cuts.len()).unwrap()];
        data.extend(&cuts);
        data.extend(events.concat().into_bytes());
        cluster_fuzz::sse(&data);
        // The same stream through the Anthropic stream translation.
        let mut translated = vec![2, cuts.first().copied().unwrap_or(0)];
        translated.extend(events.concat().into_bytes());
        cluster_fuzz::anthropic(&translated);
    }

    #[test]
    fn generated_requests(
        api in 0u8..3,
        messages in prop::collection::vec(message(), 0..8),
        stream in any::<bool>(),
        system in prop::option::of("[ -~]{0,20}"),
    ) {
        let mut body = serde_json::json!({"model": "m", "stream": stream, "messages": messages});
        if let Some(system) = system {
            body["system"] = serde_json::Value::from(system);
        }
        let mut data = vec![api];
        data.extend(body.to_string().into_bytes());
        cluster_fuzz::request(&data);
        // The same conversation as an Anthropic Messages request.
        data[0] = 0;
        cluster_fuzz::anthropic(&data);
    }

    #[test]
    fn generated_configs(
        format in 0u8..3,
        entries in prop::collection::vec(
            (prop::sample::select(cluster_types::config::config_reference()), "[ -~]{0,12}", any::<u16>()),
            0..6,
        ),
    ) {
        // Keys from the reference with string or number values, as
        // environment overrides over an empty file.
        let mut data = vec![format, 0];
        for (entry, text, number) in entries {
            let name = entry.path.replace("[]", ".0").replace('.', "__").to_ascii_uppercase();
            let value = if entry.ty.starts_with("integer") { number.to_string() } else { text };
            data.extend(format!("MLX_CLUSTER_{name}={value}\n").into_bytes());
        }
        cluster_fuzz::config(&data);
    }

    #[test]
    fn mutated_seeds_of_every_target(
        config in mutated(corpus("config")),
        request in mutated(corpus("request")),
        sse in mutated(corpus("sse")),
        probe in mutated(corpus("probe_response")),
        srv in mutated(corpus("srv_answer")),
        slices in mutated(corpus("endpoint_slices")),
        anthropic in mutated(corpus("anthropic")),
    ) {
        cluster_fuzz::anthropic(&anthropic);
        cluster_fuzz::config(&config);
        cluster_fuzz::request(&request);
        cluster_fuzz::sse(&sse);
        cluster_fuzz::probe_response(&probe);
        cluster_fuzz::srv_answer(&srv);
        cluster_fuzz::endpoint_slices(&slices);
    }
}
