//! Per-request records and the summary both replays produce (HTTP replay
//! against real servers and the in-process discrete-event simulation).
//!
//! All durations are in *simulated* seconds: wall-clock measurements are
//! multiplied by the replay's time scale, so a report reads the same whether
//! the trace ran in real time against real Macs or 500× faster against
//! simulated nodes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Session number.
    pub session: u32,
    /// Turn within the session.
    pub turn: u32,
    /// Index of the target (URL or node) it was sent to.
    pub target: usize,
    /// Planned arrival from the trace, seconds from the start.
    pub scheduled_s: f64,
    /// When it was actually sent, seconds from the start.
    pub sent_s: f64,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// Error kind (`http_503`, `connect`, `timeout`, `body`, `invalid_json`,
    /// `incomplete_stream`, ...) when the request failed.
    pub error: Option<String>,
    /// Time to the first byte of the response body.
    pub ttfb_s: Option<f64>,
    /// Time to the first generated token (first content chunk, or the whole
    /// answer when not streaming).
    pub ttft_s: Option<f64>,
    /// Time to the end of the response.
    pub latency_s: f64,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: u64,
    /// `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: u64,
    /// `usage.completion_tokens`.
    pub completion_tokens: u64,
}

impl RequestRecord {
    /// Whether the request succeeded.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Distribution of one measurement, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values`; `None` when empty.
    #[must_use]
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Some(Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            mean,
            max: v[v.len() - 1],
        })
    }
}

/// Totals for one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSummary {
    /// The target's URL or node id.
    pub target: String,
    /// Requests sent to it.
    pub requests: usize,
    /// Of which failed.
    pub errors: usize,
    /// Prompt tokens it reported.
    pub prompt_tokens: u64,
    /// Cached tokens it reported.
    pub cached_tokens: u64,
}

/// Summary of a replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplaySummary {
    /// Requests sent.
    pub requests: usize,
    /// Requests that succeeded.
    pub succeeded: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Failures by kind.
    pub error_kinds: BTreeMap<String, usize>,
    /// Time to first byte of successful requests.
    pub ttfb: Option<Percentiles>,
    /// Time to first token of successful requests.
    pub ttft: Option<Percentiles>,
    /// Latency of successful requests.
    pub latency: Option<Percentiles>,
    /// Prompt tokens over successful requests.
    pub prompt_tokens: u64,
    /// Cached prompt tokens over successful requests.
    pub cached_tokens: u64,
    /// `cached_tokens / prompt_tokens` (0 when no prompt tokens).
    pub cache_hit_ratio: f64,
    /// Generated tokens over successful requests.
    pub completion_tokens: u64,
    /// Simulated seconds per wall second of the replay.
    pub time_scale: f64,
    /// Wall-clock duration of the replay.
    pub wall_seconds: f64,
    /// Simulated duration (last response end).
    pub sim_seconds: f64,
    /// Per-target totals.
    pub targets: Vec<TargetSummary>,
}

impl ReplaySummary {
    /// Summarises `records`; `targets` names the target indices.
    #[must_use]
    pub fn from_records(
        records: &[RequestRecord],
        targets: &[String],
        time_scale: f64,
        wall_seconds: f64,
    ) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
        let mut error_kinds = BTreeMap::new();
        for r in records {
            if let Some(kind) = &r.error {
                *error_kinds.entry(kind.clone()).or_insert(0) += 1;
            }
        }
        let collect = |f: fn(&RequestRecord) -> Option<f64>| -> Vec<f64> {
            ok.iter().filter_map(|r| f(r)).collect()
        };
        let prompt_tokens: u64 = ok.iter().map(|r| r.prompt_tokens).sum();
        let cached_tokens: u64 = ok.iter().map(|r| r.cached_tokens).sum();
        let cache_hit_ratio = if prompt_tokens == 0 {
            0.0
        } else {
            cached_tokens as f64 / prompt_tokens as f64
        };
        let mut per_target: Vec<TargetSummary> = targets
            .iter()
            .map(|t| TargetSummary {
                target: t.clone(),
                requests: 0,
                errors: 0,
                prompt_tokens: 0,
                cached_tokens: 0,
            })
            .collect();
        for r in records {
            if let Some(t) = per_target.get_mut(r.target) {
                t.requests += 1;
                if r.ok() {
                    t.prompt_tokens += r.prompt_tokens;
                    t.cached_tokens += r.cached_tokens;
                } else {
                    t.errors += 1;
                }
            }
        }
        Self {
            requests: records.len(),
            succeeded: ok.len(),
            errors: records.len() - ok.len(),
            error_kinds,
            ttfb: Percentiles::of(&collect(|r| r.ttfb_s)),
            ttft: Percentiles::of(&collect(|r| r.ttft_s)),
            latency: Percentiles::of(&collect(|r| Some(r.latency_s))),
            prompt_tokens,
            cached_tokens,
            cache_hit_ratio,
            completion_tokens: ok.iter().map(|r| r.completion_tokens).sum(),
            time_scale,
            wall_seconds,
            sim_seconds: records
                .iter()
                .map(|r| r.sent_s + r.latency_s)
                .fold(0.0, f64::max),
            targets: per_target,
        }
    }

    /// A human-readable summary.
    #[must_use]
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "requests {}  ok {}  errors {}  wall {:.1}s  simulated {:.0}s (x{})",
            self.requests,
            self.succeeded,
            self.errors,
            self.wall_seconds,
            self.sim_seconds,
            self.time_scale
        );
        for (kind, n) in &self.error_kinds {
            let _ = writeln!(out, "  error {kind}: {n}");
        }
        let line = |out: &mut String, name: &str, p: &Option<Percentiles>| {
            if let Some(p) = p {
                let _ = writeln!(
                    out,
                    "{name:<8} p50 {:>8.2}s  p90 {:>8.2}s  p99 {:>8.2}s  mean {:>8.2}s  max {:>8.2}s",
                    p.p50, p.p90, p.p99, p.mean, p.max
                );
            }
        };
        line(&mut out, "ttft", &self.ttft);
        line(&mut out, "latency", &self.latency);
        line(&mut out, "ttfb", &self.ttfb);
        let _ = writeln!(
            out,
            "prompt tokens {}  cached {}  cache hit ratio {:.3}  completion tokens {}",
            self.prompt_tokens, self.cached_tokens, self.cache_hit_ratio, self.completion_tokens
        );
        for t in &self.targets {
            let ratio = if t.prompt_tokens == 0 {
                0.0
            } else {
                t.cached_tokens as f64 / t.prompt_tokens as f64
            };
            let _ = writeln!(
                out,
                "  {:<28} requests {:>5}  errors {:>4}  hit ratio {:.3}",
                t.target, t.requests, t.errors, ratio
            );
        }
        out
    }
}

/// Records and summary of one replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The summary.
    pub summary: ReplaySummary,
    /// One record per request, in completion order.
    pub records: Vec<RequestRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap_or_else(|| panic!("empty"));
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn summary_counts_errors_and_hit_ratio() {
        let ok = RequestRecord {
            session: 0,
            turn: 0,
            target: 0,
            scheduled_s: 0.0,
            sent_s: 0.0,
            status: Some(200),
            error: None,
            ttfb_s: Some(0.1),
            ttft_s: Some(1.0),
            latency_s: 2.0,
            prompt_tokens: 100,
            cached_tokens: 75,
            completion_tokens: 10,
        };
        let failed = RequestRecord {
            status: Some(503),
            error: Some("http_503".to_owned()),
            target: 1,
            ..ok.clone()
        };
        let s =
            ReplaySummary::from_records(&[ok, failed], &["a".to_owned(), "b".to_owned()], 1.0, 3.0);
        assert_eq!((s.requests, s.succeeded, s.errors), (2, 1, 1));
        assert!((s.cache_hit_ratio - 0.75).abs() < 1e-9);
        assert_eq!(s.error_kinds.get("http_503"), Some(&1));
        assert_eq!(s.targets[1].errors, 1);
        assert!(s.render_text().contains("cache hit ratio 0.750"));
    }
}
