//! Fault injection: what a misbehaving node does to a completion request.
//!
//! A [`FaultConfig`] is given at start ([`crate::SimNodeConfig::faults`],
//! `--faults` on the command line) and can be replaced at run time with
//! `POST /admin/faults` or [`crate::SimNode::set_faults`]. Each completion
//! request draws, from the node's seeded generator and in this order, whether
//! it hangs, is rejected as overloaded, fails, gets garbage, or has its
//! connection closed mid-response; the first fault drawn wins. A latency
//! spike is drawn independently and delays the request before anything else.
//! Rates are probabilities in `0..=1`; 1 makes a fault certain, which is what
//! tests use. Crash and restart are not rates: see
//! [`crate::SimNode::crash`], [`crate::SimNode::restart`] and
//! `POST /admin/crash`.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// Faults a node injects into completion requests.
///
/// Defaults: no faults (every rate 0), `error_status` 500, `overload_status`
/// 503, `retry_after_seconds` 1, `omit_retry_after` false, `spike_seconds`
/// 5, `fail_health` and `generation_dead` false, no `wire` fault,
/// `junk_bytes` 10 MiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Probability of answering `error_status` with a JSON error. Default 0.
    pub error_rate: f64,
    /// Status of injected errors. Default 500.
    pub error_status: u16,
    /// Probability of a latency spike before the request is served. Default 0.
    pub spike_rate: f64,
    /// Length of a spike in simulated seconds. Default 5.
    pub spike_seconds: f64,
    /// Probability of never answering (the connection stays open). Default 0.
    pub hang_rate: f64,
    /// Probability of closing the connection mid-response: after half of a
    /// stream's tokens, or after the headers and part of a JSON body. Default 0.
    pub close_rate: f64,
    /// Probability of an overload answer with `Retry-After`. Default 0.
    pub overload_rate: f64,
    /// Status of overload answers: 429 or 503. Default 503.
    pub overload_status: u16,
    /// `Retry-After` value of overload answers, in seconds. Default 1.
    pub retry_after_seconds: u64,
    /// Send overload answers without `Retry-After`. Default false.
    pub omit_retry_after: bool,
    /// Probability of a 200 answer whose JSON (or SSE data line) is invalid.
    /// Default 0.
    pub garbage_rate: f64,
    /// Answer `/health`, `/health_generate` and `/v1/models` with 503
    /// `{"status": "unavailable"}`. Default false.
    pub fail_health: bool,
    /// mlx_lm.server's "generation thread died" state: `/health` answers 503
    /// `{"status": "unavailable"}`, `/v1/models` still 200, every completion
    /// 404 `{"error": "generation thread died"}`. Default false.
    pub generation_dead: bool,
    /// A fault below HTTP: every connection accepted while it is set is
    /// answered by [`WireFault`]'s behaviour instead of the API (probes
    /// included). Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire: Option<WireFault>,
    /// Bytes written by [`WireFault::Junk`]. Default 10 MiB.
    pub junk_bytes: usize,
}

/// How a node misbehaves on the wire (see [`FaultConfig::wire`]). Each
/// reads the request head first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireFault {
    /// Accepts the connection and never answers (nor closes it).
    Silent,
    /// Answers `junk_bytes` of random bytes that are not HTTP, then closes.
    Junk,
    /// Answers a 200 event-stream head with `Transfer-Encoding: chunked`,
    /// then bytes that are not chunked encoding, then closes.
    GarbageChunked,
    /// Answers a 200 event-stream head and then nothing, keeping the
    /// connection open.
    HangAfterHeaders,
    /// Answers a 200 event stream whose events never end (one every 50 ms).
    EndlessStream,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 500,
            spike_rate: 0.0,
            spike_seconds: 5.0,
            hang_rate: 0.0,
            close_rate: 0.0,
            overload_rate: 0.0,
            overload_status: 503,
            retry_after_seconds: 1,
            garbage_rate: 0.0,
            fail_health: false,
            generation_dead: false,
            wire: None,
            junk_bytes: 10 << 20,
            omit_retry_after: false,
        }
    }
}

/// What to do with one request, as drawn by [`FaultConfig::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Serve it normally.
    Serve,
    /// Never answer.
    Hang,
    /// Answer with an overload status and `Retry-After`.
    Overload {
        /// 429 or 503.
        status: u16,
        /// `Retry-After` seconds (`None`: no header).
        retry_after_seconds: Option<u64>,
    },
    /// Answer with an error status.
    Error {
        /// The status.
        status: u16,
    },
    /// Answer 200 with invalid JSON.
    Garbage,
    /// Close the connection mid-response.
    Close,
}

/// The faults drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDecision {
    /// The main action.
    pub action: FaultAction,
    /// Extra simulated delay before serving (zero when no spike).
    pub spike: Duration,
}

fn check_rate(field: &'static str, rate: f64) -> Result<(), SimError> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(SimError::InvalidConfig {
            field,
            message: format!("{rate} is not a probability in 0..=1"),
        })
    }
}

impl FaultConfig {
    /// Checks rates, statuses and durations.
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), SimError> {
        check_rate("error_rate", self.error_rate)?;
        check_rate("spike_rate", self.spike_rate)?;
        check_rate("hang_rate", self.hang_rate)?;
        check_rate("close_rate", self.close_rate)?;
        check_rate("overload_rate", self.overload_rate)?;
        check_rate("garbage_rate", self.garbage_rate)?;
        if !(400..=599).contains(&self.error_status) {
            return Err(SimError::InvalidConfig {
                field: "error_status",
                message: format!("{} is not an error status", self.error_status),
            });
        }
        if !matches!(self.overload_status, 429 | 503) {
            return Err(SimError::InvalidConfig {
                field: "overload_status",
                message: format!("{} is neither 429 nor 503", self.overload_status),
            });
        }
        if !(self.spike_seconds.is_finite() && self.spike_seconds >= 0.0) {
            return Err(SimError::InvalidConfig {
                field: "spike_seconds",
                message: format!("{} is not a duration", self.spike_seconds),
            });
        }
        Ok(())
    }

    /// Whether any per-request fault is enabled (wire faults are not
    /// per-request).
    #[must_use]
    pub fn any(&self) -> bool {
        [
            self.error_rate,
            self.spike_rate,
            self.hang_rate,
            self.close_rate,
            self.overload_rate,
            self.garbage_rate,
        ]
        .iter()
        .any(|&r| r > 0.0)
    }

    /// Draws the faults for one request. A rate of 0 draws nothing, so a
    /// fault-free node never advances `rng`.
    pub fn decide(&self, rng: &mut impl Rng) -> FaultDecision {
        let mut hit = |rate: f64| rate > 0.0 && rng.random::<f64>() < rate;
        let spike = if hit(self.spike_rate) {
            Duration::try_from_secs_f64(self.spike_seconds).unwrap_or_default()
        } else {
            Duration::ZERO
        };
        let action = if hit(self.hang_rate) {
            FaultAction::Hang
        } else if hit(self.overload_rate) {
            FaultAction::Overload {
                status: self.overload_status,
                retry_after_seconds: (!self.omit_retry_after).then_some(self.retry_after_seconds),
            }
        } else if hit(self.error_rate) {
            FaultAction::Error {
                status: self.error_status,
            }
        } else if hit(self.garbage_rate) {
            FaultAction::Garbage
        } else if hit(self.close_rate) {
            FaultAction::Close
        } else {
            FaultAction::Serve
        };
        FaultDecision { action, spike }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn no_faults_serves() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = FaultConfig::default().decide(&mut rng);
        assert_eq!(d.action, FaultAction::Serve);
        assert_eq!(d.spike, Duration::ZERO);
    }

    #[test]
    fn certain_faults_and_precedence() {
        let mut rng = StdRng::seed_from_u64(1);
        let all = FaultConfig {
            error_rate: 1.0,
            hang_rate: 1.0,
            spike_rate: 1.0,
            ..FaultConfig::default()
        };
        let d = all.decide(&mut rng);
        assert_eq!(d.action, FaultAction::Hang);
        assert_eq!(d.spike, Duration::from_secs(5));
        let garbage = FaultConfig {
            garbage_rate: 1.0,
            close_rate: 1.0,
            ..FaultConfig::default()
        };
        assert_eq!(garbage.decide(&mut rng).action, FaultAction::Garbage);
    }

    #[test]
    fn rates_are_roughly_respected() {
        let mut rng = StdRng::seed_from_u64(7);
        let config = FaultConfig {
            error_rate: 0.25,
            ..FaultConfig::default()
        };
        let errors = (0..4000)
            .filter(|_| matches!(config.decide(&mut rng).action, FaultAction::Error { .. }))
            .count();
        assert!((800..1200).contains(&errors), "{errors}");
    }

    #[test]
    fn validation() {
        assert!(FaultConfig::default().validate().is_ok());
        let bad = FaultConfig {
            error_rate: 1.5,
            ..FaultConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = FaultConfig {
            overload_status: 500,
            ..FaultConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
