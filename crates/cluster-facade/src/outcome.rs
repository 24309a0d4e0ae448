//! How a routed request ended, as the gateway reports it to its guard.

use std::time::Duration;

/// Why a request failed (for passive health and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The connection could not be established.
    Connect,
    /// No answer (or no first byte) in time.
    Timeout,
    /// The node answered with a 5xx status other than 503.
    ServerError {
        /// The HTTP status.
        status: u16,
    },
    /// The connection broke mid-way.
    Reset,
    /// The answer could not be understood.
    InvalidResponse,
    /// The node answered that it cannot serve what it listed: 404 on the
    /// completion path (mlx_lm.server once its generation thread died
    /// answers every completion 404 while `/v1/models` still lists the
    /// model).
    NotServed {
        /// The HTTP status.
        status: u16,
    },
}

/// How a routed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestOutcome {
    /// Completed; token counts from the answer's `usage` when present
    /// (`prompt_tokens`, `prompt_tokens_details.cached_tokens`,
    /// `completion_tokens`).
    Success {
        /// Prompt tokens the node reported.
        prompt_tokens: Option<u32>,
        /// Of those, tokens served from its prompt cache.
        cached_tokens: Option<u32>,
        /// Tokens generated.
        completion_tokens: Option<u32>,
    },
    /// 429 or 503: the node is busy. Raises its load estimate and skips it
    /// for `retry_after` (default 1 s, at most 60 s); does not count against
    /// its health.
    Overloaded {
        /// The `Retry-After` the node sent, if any.
        retry_after: Option<Duration>,
    },
    /// The request failed at the node; counts against its health.
    Failed {
        /// What went wrong.
        kind: FailureKind,
    },
    /// The client went away; neither success nor failure for the node.
    ClientCancelled,
}

impl RequestOutcome {
    /// A success without token counts.
    #[must_use]
    pub const fn success() -> Self {
        Self::Success {
            prompt_tokens: None,
            cached_tokens: None,
            completion_tokens: None,
        }
    }

    /// A success with token counts.
    #[must_use]
    pub const fn success_with_usage(prompt: u32, cached: u32, completion: u32) -> Self {
        Self::Success {
            prompt_tokens: Some(prompt),
            cached_tokens: Some(cached),
            completion_tokens: Some(completion),
        }
    }

    /// Whether this counts against the node's health.
    #[must_use]
    pub const fn is_node_failure(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}
