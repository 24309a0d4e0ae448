//! The per-node task: thin — decide, check, apply, sleep.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::probe::ProbeGuard;
use super::shared::Shared;
use super::table::NodeEntry;
use crate::tracker::ProbeSlot;
use crate::{Backoff, HealthError};

impl Shared {
    /// Spawns the task of `entry` unless it has one. `running` is the held
    /// lock's content.
    pub(super) fn spawn_task(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        entry: &Arc<NodeEntry>,
        first_delay: Duration,
    ) {
        let mut task = entry.task.lock();
        if task.is_some() {
            return;
        }
        let seed = self.rng.lock().random::<u64>();
        let schedule = Backoff::from_seed(self.backoff.clone(), seed);
        let handle = runtime.spawn(node_task(
            Arc::clone(self),
            Arc::clone(entry),
            schedule,
            first_delay,
        ));
        *task = Some(handle.abort_handle());
    }

    pub(super) fn first_delay(&self) -> Duration {
        let fraction: f64 = self.rng.lock().random_range(0.0..1.0);
        self.config.check_interval.mul_f64(fraction)
    }
}

/// What a node's task does at one tick.
enum Tick {
    Check,
    Probe(ProbeGuard),
    Skip,
}

/// The per-node task: thin — decide, check, apply, sleep.
async fn node_task(
    shared: Arc<Shared>,
    entry: Arc<NodeEntry>,
    mut schedule: Backoff,
    first_delay: Duration,
) {
    if !first_delay.is_zero() {
        tokio::time::sleep(first_delay).await;
    }
    let timeout = shared.config.timeout;
    loop {
        let started = tokio::time::Instant::now();
        let tick = {
            let now = shared.now();
            let mut state = entry.state.lock();
            if state.tracker.is_open() {
                match state.tracker.try_acquire_probe(now) {
                    Some(permit) => {
                        shared.after_change(&entry, &mut state, None, now);
                        Tick::Probe(ProbeGuard {
                            shared: Arc::clone(&shared),
                            entry: Arc::clone(&entry),
                            permit: Some(permit),
                        })
                    }
                    None => Tick::Skip,
                }
            } else if state.tracker.is_saturated(now) {
                Tick::Skip
            } else {
                Tick::Check
            }
        };
        if !matches!(tick, Tick::Skip) {
            let spec = Arc::clone(&*entry.spec.lock());
            let result = match tokio::time::timeout(timeout, shared.checker.check(&spec)).await {
                Ok(result) => result,
                Err(_) => Err(HealthError::Timeout {
                    node: entry.id.clone(),
                    timeout,
                }),
            };
            match tick {
                Tick::Probe(mut guard) => {
                    let permit = guard.permit.take();
                    shared.apply_check(&entry, permit, result);
                }
                _ => shared.apply_check(&entry, None, result),
            }
        }

        // The interval runs from the start of this tick, so a slow check
        // does not stretch the schedule.
        let next_tick = started + schedule.jittered(shared.config.check_interval);
        let wake_at = {
            let now = shared.now();
            let tokio_now = tokio::time::Instant::now();
            let state = entry.state.lock();
            match state.tracker.probe_slot(now) {
                ProbeSlot::Waiting { until } => tokio_now + until.saturating_duration_since(now),
                ProbeSlot::Free => tokio_now,
                ProbeSlot::InFlight { .. } => next_tick,
                ProbeSlot::Closed => match state.tracker.saturated_until() {
                    Some(until) if until > now => next_tick.max(tokio_now + (until - now)),
                    _ => next_tick,
                },
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake_at) => {}
            () = entry.wake.notified() => {}
        }
    }
}
