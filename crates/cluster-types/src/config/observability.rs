//! `[observability]`: decision records, topology headers and the
//! dashboard's history.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// Largest accepted `observability.decision_log_size`.
pub const MAX_DECISION_LOG_SIZE: u32 = 1_000_000;

/// Most samples `history / sample_interval` may keep.
const MAX_SAMPLES: u128 = 100_000;

/// Shortest accepted `observability.sample_interval`.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// What the gateway records and exposes about its own decisions.
///
/// Defaults: `decision_log_size` 1000, `topology_headers` true,
/// `sample_interval` 5s, `history` 15m, `otlp_endpoint` none (tracing off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Decision records kept in memory (the most recent ones), served by
    /// `GET /v1/cluster/decisions`; 0 turns the log off. At most 1000000.
    /// Default 1000.
    pub decision_log_size: u32,
    /// Whether proxied answers carry `x-mlx-cluster-node` and
    /// `x-mlx-cluster-reason`. Default true.
    pub topology_headers: bool,
    /// How often the dashboard's time series are sampled (at least 100ms).
    /// Default 5s.
    #[serde(with = "crate::duration")]
    pub sample_interval: Duration,
    /// How much of the time series the gateway keeps (at least
    /// `sample_interval`, at most 100000 samples). Default 15m.
    #[serde(with = "crate::duration")]
    pub history: Duration,
    /// OTLP/HTTP (protobuf) endpoint the gateway exports its OpenTelemetry
    /// traces to, e.g. `http://127.0.0.1:4318/v1/traces`; the gateway then
    /// also sends W3C `traceparent` to the nodes. Default none: no traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            decision_log_size: 1000,
            topology_headers: true,
            sample_interval: Duration::from_secs(5),
            history: Duration::from_secs(15 * 60),
            otlp_endpoint: None,
        }
    }
}

impl ObservabilityConfig {
    /// Samples of the time series kept: `history / sample_interval`,
    /// at least 1.
    #[must_use]
    pub fn samples_kept(&self) -> usize {
        let interval = self.sample_interval.as_nanos().max(1);
        let n = (self.history.as_nanos() / interval).clamp(1, MAX_SAMPLES);
        usize::try_from(n).unwrap_or(1)
    }

    /// Every semantic problem of the section, with its path.
    pub(crate) fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut push = |path: &str, message: String| p.push(ConfigProblem::new(path, message));
        if self.decision_log_size > MAX_DECISION_LOG_SIZE {
            push(
                "observability.decision_log_size",
                format!(
                    "must be at most {MAX_DECISION_LOG_SIZE} (got {})",
                    self.decision_log_size
                ),
            );
        }
        if self.sample_interval < MIN_SAMPLE_INTERVAL {
            push(
                "observability.sample_interval",
                format!(
                    "must be at least 100ms (got {})",
                    crate::duration::format(self.sample_interval)
                ),
            );
        } else if self.history < self.sample_interval {
            push(
                "observability.history",
                format!(
                    "must be at least observability.sample_interval ({})",
                    crate::duration::format(self.sample_interval)
                ),
            );
        } else if self.history.as_nanos() / self.sample_interval.as_nanos() > MAX_SAMPLES {
            push(
                "observability.history",
                format!(
                    "keeps more than {MAX_SAMPLES} samples of observability.sample_interval ({})",
                    crate::duration::format(self.sample_interval)
                ),
            );
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let scheme_ok = ["http://", "https://"]
                .iter()
                .any(|s| endpoint.len() > s.len() && endpoint.starts_with(s));
            if !scheme_ok || endpoint.chars().any(char::is_whitespace) {
                push(
                    "observability.otlp_endpoint",
                    format!("must be an http:// or https:// URL (got {endpoint:?})"),
                );
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_keep_fifteen_minutes_of_five_second_samples() {
        let c = ObservabilityConfig::default();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.samples_kept(), 180);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let c = ObservabilityConfig {
            decision_log_size: MAX_DECISION_LOG_SIZE + 1,
            sample_interval: Duration::from_millis(10),
            ..ObservabilityConfig::default()
        };
        let paths: Vec<String> = c.problems().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "observability.decision_log_size",
                "observability.sample_interval",
            ]
        );
        let short = ObservabilityConfig {
            history: Duration::from_secs(1),
            ..ObservabilityConfig::default()
        };
        assert_eq!(short.problems()[0].path, "observability.history");
        let long = ObservabilityConfig {
            sample_interval: Duration::from_millis(100),
            history: Duration::from_secs(24 * 3600),
            ..ObservabilityConfig::default()
        };
        assert!(long.problems()[0].message.contains("100000 samples"));
        let otlp = ObservabilityConfig {
            otlp_endpoint: Some("collector:4318".into()),
            ..ObservabilityConfig::default()
        };
        assert_eq!(otlp.problems()[0].path, "observability.otlp_endpoint");
        let good = ObservabilityConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318/v1/traces".into()),
            ..ObservabilityConfig::default()
        };
        assert!(good.problems().is_empty());
    }
}
