//! The state every node task, passive report and API call shares, and the
//! bookkeeping after a node's tracker changed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cluster_metrics::{Clock, SharedClock};
use cluster_types::{BackoffConfig, HealthConfig, NodeId};
use parking_lot::{Mutex, RwLock};
use rand::rngs::StdRng;
use tokio::sync::broadcast;

use super::events::{CheckCallback, CheckReport, HealthEvent, StatusCallback, StatusChange};
use super::table::{NodeEntry, NodeState, RoutingTable};
use crate::tracker::{BreakerPolicy, ProbePermit, Transition};
use crate::{HealthChecker, HealthError, Observation};

pub(super) struct Shared {
    pub(super) config: HealthConfig,
    pub(super) backoff: BackoffConfig,
    pub(super) policy: BreakerPolicy,
    pub(super) checker: Arc<dyn HealthChecker>,
    pub(super) clock: SharedClock,
    pub(super) rng: Mutex<StdRng>,
    pub(super) nodes: RwLock<HashMap<NodeId, Arc<NodeEntry>>>,
    /// `Some(runtime)` while checks run. Lock order: `running`, then a
    /// node's `task`.
    pub(super) running: Mutex<Option<tokio::runtime::Handle>>,
    pub(super) events: broadcast::Sender<HealthEvent>,
    /// Events not yet dispatched, in order; pushed under the node's state
    /// lock so per-node order is the order of the changes.
    pub(super) queue: Mutex<VecDeque<HealthEvent>>,
    pub(super) draining: AtomicBool,
    pub(super) on_status_change: Vec<StatusCallback>,
    pub(super) on_health_check: Vec<CheckCallback>,
    pub(super) table: ArcSwap<RoutingTable>,
    pub(super) dirty: AtomicBool,
    pub(super) version: AtomicU64,
    pub(super) rebuild: Mutex<()>,
}

impl Shared {
    pub(super) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Bookkeeping after the tracker of `entry` changed: republish its view
    /// if it changed, queue the status change. Called with the state lock
    /// held.
    pub(super) fn after_change(
        &self,
        entry: &NodeEntry,
        state: &mut NodeState,
        transition: Option<Transition>,
        now: Instant,
    ) {
        let view = state.tracker.routing_view();
        if view != state.view {
            if view.saturated_until != state.view.saturated_until
                && let Some(until) = view.saturated_until
            {
                self.push(HealthEvent::Saturated {
                    node: entry.id.clone(),
                    until,
                });
            }
            state.view = view;
            self.mark_dirty();
        }
        if let Some(t) = transition {
            tracing::info!(node = %entry.id, from = %t.from, to = %t.to, "node status changed");
            self.push(HealthEvent::StatusChanged(StatusChange {
                node: entry.id.clone(),
                from: t.from,
                to: t.to,
                metrics: state.tracker.health(now),
                at: t.at,
            }));
        }
    }

    /// Applies a passive observation (not an active check).
    pub(super) fn observe(
        &self,
        entry: &NodeEntry,
        observation: Observation,
        error: Option<HealthError>,
    ) {
        {
            let now = self.now();
            let mut state = entry.state.lock();
            if entry.removed.load(Ordering::Acquire) {
                return;
            }
            let was_open = state.tracker.is_open();
            let transition = state.tracker.observe(observation, now);
            if let Some(error) = error {
                tracing::debug!(node = %entry.id, error = %error, "request failed");
            }
            self.after_change(entry, &mut state, transition, now);
            if !was_open && state.tracker.is_open() {
                entry.wake.notify_one();
            }
        }
        self.drain();
    }

    /// Applies the result of an active check (with its probe permit, if it
    /// was the half-open probe).
    pub(super) fn apply_check(
        &self,
        entry: &NodeEntry,
        permit: Option<ProbePermit>,
        result: Result<Duration, HealthError>,
    ) {
        {
            let now = self.now();
            let result = result.map_err(Arc::new);
            let observation = match &result {
                Ok(latency) => Observation::Success {
                    latency: Some(*latency),
                },
                Err(error) => error.observation(),
            };
            let mut state = entry.state.lock();
            if entry.removed.load(Ordering::Acquire) {
                if let Some(permit) = permit {
                    state.tracker.release_probe(permit);
                }
                return;
            }
            let probe = permit.is_some();
            let transition = match permit {
                Some(permit) => state.tracker.complete_probe(permit, observation, now),
                None => state.tracker.observe(observation, now),
            };
            state.last_check = Some(now);
            state.last_error = result.as_ref().err().cloned();
            if let Err(error) = &result {
                tracing::debug!(node = %entry.id, error = %error, probe, "health check failed");
            }
            self.push(HealthEvent::CheckCompleted(CheckReport {
                node: entry.id.clone(),
                result,
                probe,
                at: now,
            }));
            self.after_change(entry, &mut state, transition, now);
        }
        self.drain();
    }
}
