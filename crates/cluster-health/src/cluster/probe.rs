//! [`ProbeGuard`]: a half-open node's single probe slot, lent to one real
//! request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cluster_types::NodeId;

use super::shared::Shared;
use super::table::NodeEntry;
use crate::tracker::ProbePermit;
use crate::{HealthError, Observation};

/// The half-open probe permit of one node, for sending one real request as
/// the probe ([`ClusterHealth::try_acquire_probe`](crate::ClusterHealth::try_acquire_probe)).
///
/// Report the request's outcome with [`success`](Self::success),
/// [`failure`](Self::failure) or [`complete`](Self::complete); dropping the
/// guard without an outcome (the request was cancelled) frees the slot for
/// the next probe.
#[must_use = "a probe guard frees the probe slot when dropped"]
pub struct ProbeGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) entry: Arc<NodeEntry>,
    pub(super) permit: Option<ProbePermit>,
}

impl fmt::Debug for ProbeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeGuard")
            .field("node", &self.entry.id)
            .field("pending", &self.permit.is_some())
            .finish()
    }
}

impl ProbeGuard {
    /// The node probed.
    #[must_use]
    pub fn node(&self) -> &NodeId {
        &self.entry.id
    }

    /// The probe request succeeded after `latency`.
    pub fn success(self, latency: Duration) {
        self.complete(Observation::Success {
            latency: Some(latency),
        });
    }

    /// The probe request failed with `error` (classified by
    /// [`HealthError::observation`]: overload and loading are not failures).
    pub fn failure(self, error: &HealthError) {
        self.complete(error.observation());
    }

    /// Reports the probe's outcome.
    pub fn complete(mut self, observation: Observation) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        {
            let now = shared.now();
            let mut state = self.entry.state.lock();
            let transition = state.tracker.complete_probe(permit, observation, now);
            shared.after_change(&self.entry, &mut state, transition, now);
            self.entry.wake.notify_one();
        }
        shared.drain();
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let mut state = self.entry.state.lock();
            state.tracker.release_probe(permit);
            let now = self.shared.now();
            self.shared.after_change(&self.entry, &mut state, None, now);
        }
    }
}
