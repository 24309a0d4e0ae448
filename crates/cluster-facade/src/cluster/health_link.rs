//! The link from routing to health: outcomes of real requests feed passive
//! health, and a half-open node's probe permit is lent to one request.

use std::sync::Arc;
use std::time::Duration;

use cluster_health::{ClusterHealth, Observation, ProbeGuard};
use cluster_types::NodeId;

use crate::outcome::RequestOutcome;
use crate::probe::{OutcomeObserver, ProbeGate, ProbeTicket};

/// Feeds passive outcomes of real requests to health.
pub(super) struct HealthObserver(pub(super) Arc<ClusterHealth>);

fn observation(outcome: &RequestOutcome, latency: Duration) -> Option<Observation> {
    match outcome {
        RequestOutcome::Success { .. } => Some(Observation::Success {
            latency: Some(latency),
        }),
        RequestOutcome::Overloaded { retry_after } => Some(Observation::Overloaded {
            retry_after: *retry_after,
        }),
        RequestOutcome::Failed { .. } => Some(Observation::Failure),
        _ => None,
    }
}

impl OutcomeObserver for HealthObserver {
    fn observe(&self, node: &NodeId, outcome: &RequestOutcome, latency: Duration) {
        if let Some(obs) = observation(outcome, latency) {
            self.0.record(node, obs);
        }
    }
}

/// Hands out health's half-open probe permits to requests.
pub(super) struct HealthGate(pub(super) Arc<ClusterHealth>);

struct HealthTicket(ProbeGuard);

impl ProbeTicket for HealthTicket {
    fn complete(self: Box<Self>, outcome: &RequestOutcome, latency: Duration) {
        match observation(outcome, latency) {
            Some(obs) => self.0.complete(obs),
            // Cancelled: dropping the guard frees the slot for the next probe.
            None => drop(self.0),
        }
    }
}

impl ProbeGate for HealthGate {
    fn try_acquire(&self, node: &NodeId) -> Option<Box<dyn ProbeTicket>> {
        match self.0.try_acquire_probe(node) {
            Ok(Some(guard)) => Some(Box::new(HealthTicket(guard))),
            _ => None,
        }
    }
}
