use super::*;

const VLLM: &str = include_str!("../testdata/vllm-0.11-metrics.txt");
const SGLANG: &str = include_str!("../testdata/sglang-0.5-metrics.txt");
const LLAMA: &str = include_str!("../testdata/llama-server-b11434-metrics.txt");
const LLAMA_SLOTS: &str = include_str!("../testdata/llama-server-b11434-slots.json");

#[test]
fn vllm_documented_format() {
    let m = parse_metrics(VLLM);
    assert_eq!(m.running, Some(3));
    assert_eq!(m.waiting, Some(5));
    assert_eq!(m.outstanding(), Some(8));
    assert_eq!(m.kv_usage, Some(0.4375));
    assert_eq!(m.prefix_hit_rate, Some(0.75));
    assert_eq!(m.token_capacity, Some(16 * 8192));
    assert_eq!(m.entries, None);
}

#[test]
fn vllm_before_0_10_names_kv_usage_differently() {
    let m = parse_metrics("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n");
    assert_eq!(m.kv_usage, Some(0.5));
}

#[test]
fn sglang_documented_format() {
    let m = parse_metrics(SGLANG);
    assert_eq!(m.running, Some(4));
    assert_eq!(m.waiting, Some(7));
    assert_eq!(m.kv_usage, Some(0.28));
    assert_eq!(m.prefix_hit_rate, Some(0.75));
    assert_eq!(m.token_capacity, Some(500_000));
}

#[test]
fn llama_server_real_text() {
    // Captured from the real llama-server (see the file's header) after two
    // identical requests: the second reused the first one's prompt.
    let m = parse_metrics(LLAMA);
    assert_eq!(m.running, Some(0));
    assert_eq!(m.waiting, Some(0));
    assert_eq!(m.outstanding(), Some(0));
    assert_eq!(
        m.kv_usage, None,
        "b11434 no longer publishes kv_cache_usage_ratio"
    );
    let hit = m.prefix_hit_rate.expect("cached / total prompt tokens");
    assert!(hit > 0.0 && hit < 1.0, "{hit}");
}

#[test]
fn llama_server_real_slots() {
    let slots = parse_slots(LLAMA_SLOTS.as_bytes()).expect("parses");
    assert_eq!(slots.len(), 2);
    let summary = summarize_slots(&slots);
    assert_eq!(summary.slots, 2);
    assert_eq!(summary.cached_tokens, 98, "{summary:?}");
    assert_eq!(summary.busy, 0);
    // Both requests landed in the same slot (it held their prefix); the
    // other slot never served a task. b11434 sends no prompt text.
    assert_eq!(summary.cached_prompts, 1);
    let used = slots
        .iter()
        .find(|s| s.holds_prompt())
        .expect("a used slot");
    assert_eq!(used.n_prompt_tokens, Some(98));
    assert!(used.id_task.is_some());
}

#[test]
fn simulator_gauges_and_sums() {
    let text = "# HELP mlx_sim_prompt_cache_entries x\n# TYPE mlx_sim_prompt_cache_entries gauge\nmlx_sim_prompt_cache_entries 3\nmlx_sim_prompt_cache_tokens{node=\"a\"} 12345\nbroken\nmlx_sim_prompt_cache_entries_total nan\n";
    let m = parse_metrics(text);
    assert_eq!(m.entries, Some(3));
    assert_eq!(m.tokens, Some(12_345));
    assert_eq!(m.outstanding(), None);
    // Counts sum over label sets; ratios take the largest.
    let two = "vllm:num_requests_waiting{engine=\"0\"} 2\nvllm:num_requests_waiting{engine=\"1\"} 3\nvllm:kv_cache_usage_perc{engine=\"0\"} 0.2\nvllm:kv_cache_usage_perc{engine=\"1\"} 0.6\n";
    let m = parse_metrics(two);
    assert_eq!(m.waiting, Some(5));
    assert_eq!(m.kv_usage, Some(0.6));
}

#[test]
fn garbage_gives_an_empty_report() {
    for text in [
        "",
        "not metrics at all",
        "{}",
        "vllm:num_requests_waiting{ 3",
        "vllm:num_requests_waiting -1\nsglang:token_usage +Inf\nsglang:num_queue_reqs NaN\n",
        "<html><body>404</body></html>",
    ] {
        assert!(parse_metrics(text).is_empty(), "{text:?}");
    }
    assert!(parse_slots(b"{\"error\": \"slots disabled\"}").is_err());
    assert!(parse_slots(b"[{\"no_id\": 1}]").is_err());
}

#[test]
fn slots_of_older_builds_use_n_past() {
    let slots =
        parse_slots(br#"[{"id":0,"n_ctx":2048,"is_processing":false,"id_task":7,"n_past":40}]"#)
            .expect("parses");
    assert_eq!(slots[0].n_prompt_tokens, Some(40));
    let fresh = parse_slots(br#"[{"id":0,"n_ctx":2048,"is_processing":false}]"#).expect("parses");
    assert!(!fresh[0].holds_prompt());
}
