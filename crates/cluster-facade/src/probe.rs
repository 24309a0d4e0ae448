//! The health link's hooks into routing: a half-open node's single probe
//! slot, lent to one request ([`ProbeGate`] hands out [`ProbeTicket`]s, a
//! request holds a [`ProbeClaim`]), and the observer every finished request
//! reports to ([`OutcomeObserver`], passive health). Implemented by the
//! cluster (`cluster/health_link.rs`); a bare router has neither.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster_types::NodeId;

use crate::live::NodeLive;
use crate::outcome::RequestOutcome;

/// One request's claim on a half-open node's single probe slot.
pub(crate) trait ProbeTicket: Send {
    /// Reports the probe request's outcome (this is the node's passive
    /// health signal for the request).
    fn complete(self: Box<Self>, outcome: &RequestOutcome, latency: Duration);
}

/// Hands out probe slots (the cluster's health orchestrator).
pub(crate) trait ProbeGate: Send + Sync {
    /// The node's probe slot, if it is free now.
    fn try_acquire(&self, node: &NodeId) -> Option<Box<dyn ProbeTicket>>;
}

/// How a request holds a probe slot.
pub(crate) enum ProbeClaim {
    /// The node's own flag (routers without health).
    Flag,
    /// A permit from the health orchestrator.
    Ticket(Box<dyn ProbeTicket>),
}

impl std::fmt::Debug for ProbeClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flag => "ProbeClaim::Flag",
            Self::Ticket(_) => "ProbeClaim::Ticket",
        })
    }
}

/// Receives every finished request (the cluster feeds passive health with
/// it).
pub(crate) trait OutcomeObserver: Send + Sync {
    /// Reports one finished request of `node`.
    fn observe(&self, node: &NodeId, outcome: &RequestOutcome, latency: Duration);
}

/// Reports a finished request: a probe permit's outcome is the node's
/// health signal (no second report); otherwise the node's own probe flag,
/// if the request held it, is released and the observer told.
pub(crate) fn report(
    claim: Option<ProbeClaim>,
    live: &NodeLive,
    observer: Option<&Arc<dyn OutcomeObserver>>,
    node: &NodeId,
    outcome: &RequestOutcome,
    latency: Duration,
) {
    match claim {
        Some(ProbeClaim::Ticket(ticket)) => ticket.complete(outcome, latency),
        claim => {
            if matches!(claim, Some(ProbeClaim::Flag)) {
                live.probe_in_flight.store(false, Ordering::Release);
            }
            if let Some(obs) = observer {
                obs.observe(node, outcome, latency);
            }
        }
    }
}
