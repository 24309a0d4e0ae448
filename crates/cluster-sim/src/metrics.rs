//! Prometheus text exposition of one node (`GET /metrics`).
//!
//! Metric names use the `mlx_sim_` prefix; the queue, running and cache
//! gauges are repeated under the names vLLM (`vllm:`) and SGLang (`sglang:`)
//! use, so peer routers that scrape those engines read the simulated fleet
//! too.

use std::fmt::Write as _;

use crate::model::{NodeLoad, NodeTotals};

/// Everything `/metrics` reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetricsInput<'a> {
    pub(crate) node_id: &'a str,
    pub(crate) model_id: &'a str,
    pub(crate) load: NodeLoad,
    pub(crate) totals: NodeTotals,
    pub(crate) cache_max_entries: usize,
    pub(crate) kv_bytes_per_token: u64,
    pub(crate) http_requests: u64,
    pub(crate) injected_faults: u64,
    pub(crate) rejected_overload: u64,
    pub(crate) sim_seconds: f64,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, labels: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name}{{{labels}}} {value}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the exposition text.
pub(crate) fn render(m: &MetricsInput<'_>) -> String {
    let labels = format!(
        "node=\"{}\",model_name=\"{}\"",
        escape(m.node_id),
        escape(m.model_id)
    );
    let l = &labels;
    let load = &m.load;
    let t = &m.totals;
    let usage = load.cache_entries as f64 / m.cache_max_entries.max(1) as f64;
    let hit_rate = if t.prompt_tokens == 0 {
        0.0
    } else {
        t.cached_tokens as f64 / t.prompt_tokens as f64
    };
    let mut out = String::with_capacity(4096);
    let o = &mut out;
    metric(
        o,
        "mlx_sim_running_requests",
        "gauge",
        "Requests holding a slot (prefill or decode).",
        l,
        load.running as f64,
    );
    metric(
        o,
        "mlx_sim_queue_depth",
        "gauge",
        "Requests waiting for a slot.",
        l,
        load.queued as f64,
    );
    metric(
        o,
        "mlx_sim_prefilling_requests",
        "gauge",
        "Requests in prompt processing.",
        l,
        load.prefilling as f64,
    );
    metric(
        o,
        "mlx_sim_prompt_cache_entries",
        "gauge",
        "Prompt-cache entries held.",
        l,
        load.cache_entries as f64,
    );
    metric(
        o,
        "mlx_sim_prompt_cache_max_entries",
        "gauge",
        "Prompt-cache entry limit.",
        l,
        m.cache_max_entries as f64,
    );
    metric(
        o,
        "mlx_sim_prompt_cache_tokens",
        "gauge",
        "Tokens held by the prompt cache.",
        l,
        load.cache_tokens as f64,
    );
    metric(
        o,
        "mlx_sim_prompt_cache_bytes",
        "gauge",
        "Estimated KV bytes held by the prompt cache.",
        l,
        load.cache_tokens as f64 * m.kv_bytes_per_token as f64,
    );
    metric(
        o,
        "mlx_sim_prompt_cache_usage_ratio",
        "gauge",
        "Prompt-cache entries over the limit (0..1).",
        l,
        usage,
    );
    metric(
        o,
        "mlx_sim_requests_total",
        "counter",
        "Completion requests admitted.",
        l,
        t.requests as f64,
    );
    metric(
        o,
        "mlx_sim_rejected_requests_total",
        "counter",
        "Completion requests rejected (queue full).",
        l,
        (t.rejected.max(m.rejected_overload)) as f64,
    );
    metric(
        o,
        "mlx_sim_prompt_tokens_total",
        "counter",
        "Prompt tokens of admitted requests.",
        l,
        t.prompt_tokens as f64,
    );
    metric(
        o,
        "mlx_sim_cached_prompt_tokens_total",
        "counter",
        "Prompt tokens served from the prompt cache.",
        l,
        t.cached_tokens as f64,
    );
    metric(
        o,
        "mlx_sim_generation_tokens_total",
        "counter",
        "Output tokens generated.",
        l,
        t.output_tokens as f64,
    );
    metric(
        o,
        "mlx_sim_http_requests_total",
        "counter",
        "HTTP requests received.",
        l,
        m.http_requests as f64,
    );
    metric(
        o,
        "mlx_sim_injected_faults_total",
        "counter",
        "Requests that drew an injected fault.",
        l,
        m.injected_faults as f64,
    );
    metric(
        o,
        "mlx_sim_time_seconds",
        "gauge",
        "Simulated seconds since the node started.",
        l,
        m.sim_seconds,
    );
    // vLLM names.
    metric(
        o,
        "vllm:num_requests_running",
        "gauge",
        "Number of requests running (simulated).",
        l,
        load.running as f64,
    );
    metric(
        o,
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting (simulated).",
        l,
        load.queued as f64,
    );
    metric(
        o,
        "vllm:gpu_cache_usage_perc",
        "gauge",
        "Cache usage, 1 is full (simulated).",
        l,
        usage,
    );
    metric(
        o,
        "vllm:kv_cache_usage_perc",
        "gauge",
        "Cache usage, 1 is full (simulated).",
        l,
        usage,
    );
    // SGLang names.
    metric(
        o,
        "sglang:num_running_reqs",
        "gauge",
        "Running requests (simulated).",
        l,
        load.running as f64,
    );
    metric(
        o,
        "sglang:num_queue_reqs",
        "gauge",
        "Queued requests (simulated).",
        l,
        load.queued as f64,
    );
    metric(
        o,
        "sglang:token_usage",
        "gauge",
        "Cache usage, 1 is full (simulated).",
        l,
        usage,
    );
    metric(
        o,
        "sglang:cache_hit_rate",
        "gauge",
        "Cached over prompt tokens (simulated).",
        l,
        hit_rate,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once() {
        let text = render(&MetricsInput {
            node_id: "n\"1",
            model_id: "m",
            load: NodeLoad {
                running: 2,
                queued: 3,
                ..NodeLoad::default()
            },
            totals: NodeTotals::default(),
            cache_max_entries: 10,
            kv_bytes_per_token: 1,
            http_requests: 5,
            injected_faults: 0,
            rejected_overload: 0,
            sim_seconds: 1.5,
        });
        assert!(text.contains("mlx_sim_queue_depth{node=\"n\\\"1\",model_name=\"m\"} 3\n"));
        assert!(text.contains("vllm:num_requests_running{"));
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(types, samples);
    }
}
