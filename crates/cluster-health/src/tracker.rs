//! [`NodeHealthTracker`]: the per-node circuit breaker, a pure state machine.
//!
//! It owns a [`RollingWindow`] of outcomes, the node's [`NodeStatus`], a
//! jittered [`Backoff`] and the half-open probe slot. It never reads a clock
//! or sleeps: every method that depends on time takes `now`, so tests drive
//! it with a `ManualClock` and the orchestrator with a
//! [`TokioClock`](crate::TokioClock).
//!
//! # States and transitions
//!
//! The breaker is *closed* in `Initializing`, `Healthy` and `Degraded` and
//! *open* in `Unhealthy` and `Offline`. With the seeds' defaults
//! (`HealthConfig`): degraded below a 0.8 success rate, unhealthy below 0.5
//! or after 3 consecutive failures, healthy again after 5 consecutive
//! successes. After recording an outcome in the window:
//!
//! | state         | success                                   | failure                                              |
//! |---------------|-------------------------------------------|------------------------------------------------------|
//! | Initializing  | → Healthy (first success)                 | → Unhealthy after `max_consecutive_failures`          |
//! | Healthy       | stays                                     | → Unhealthy if cf ≥ max or rate < unhealthy; → Degraded if rate < degraded |
//! | Degraded      | → Healthy if cs ≥ recovery, or rate ≥ degraded outside probation | → Unhealthy if cf ≥ max or rate < unhealthy |
//! | Unhealthy     | probe: → Degraded (→ Healthy if cs ≥ recovery); other: → Healthy only if cs ≥ recovery | probe: → Offline, backoff grows; other: stays |
//! | Offline       | as Unhealthy                              | probe: stays Offline, backoff grows; other: stays    |
//!
//! (cf / cs: consecutive failures / successes in the window; rate: the
//! window's success rate.)
//!
//! **Opening** the breaker (entering `Unhealthy`, or `Offline` after a failed
//! probe) draws the next jittered backoff delay and sets `retry_at = now +
//! delay`. Until then no probe is admitted and the node takes no traffic.
//!
//! **Half-open.** Once `retry_at` has passed, [`try_acquire_probe`]
//! hands out exactly one
//! [`ProbePermit`]; every other caller is refused until that probe reports
//! through [`complete_probe`](NodeHealthTracker::complete_probe), is
//! released with [`release_probe`](NodeHealthTracker::release_probe), or
//! its lease ([`BreakerPolicy::probe_lease`]) expires. The probe — an active
//! check or one real request — decides: success closes the breaker (to
//! `Degraded`, or `Healthy` once `recovery_successes` consecutive successes
//! are in the window), failure re-opens it as `Offline` with the next,
//! longer delay. Until it is healthy again a node closed by a probe is on
//! *probation*: its success rate alone does not heal it (old failures may
//! have aged out of the window), only `recovery_successes` consecutive
//! successes do. The backoff restarts from its initial delay only once the
//! node is `Healthy` again, so a node that flaps right after recovering
//! keeps backing off further.
//!
//! **Overload is backpressure.** A 429/503 answer
//! ([`Observation::Overloaded`]) marks the node *saturated* until
//! `Retry-After` (default [`BreakerPolicy::default_retry_after`], capped at
//! [`BreakerPolicy::max_retry_after`]) and raises its
//! [`load_penalty`](NodeHealthTracker::load_penalty), without touching the
//! status or the window. It counts toward the breaker only when it
//! **persists**: the node has answered overload at least
//! `max_consecutive_failures` times with no success in between, over at
//! least [`BreakerPolicy::overload_persist_after`] (default 30 s, the
//! health window), and the streak was never interrupted for a whole window
//! (the previous overload answer, or the end of the saturation it asked
//! for, was less than one window ago). From then on every overload answer of that streak is
//! recorded as a failure; any success ends the streak. A half-open probe
//! answered with (non-persistent) overload re-opens nothing: the next probe
//! is admitted when the saturation ends.
//!
//! **Loading** (llama.cpp's `503 Loading model`,
//! [`Observation::Loading`]) means the node restarted and is not ready: from
//! any state it goes to `Initializing` with a fresh window and backoff, and
//! the next success makes it `Healthy`, as for a new node.
//!
//! [`try_acquire_probe`]: NodeHealthTracker::try_acquire_probe

use std::time::{Duration, Instant};

use cluster_metrics::{RollingWindow, WindowSnapshot};
use cluster_types::{HealthConfig, NodeId, NodeStatus};

use crate::{Backoff, Observation};

/// Breaker settings beyond the seeds' `HealthConfig`.
///
/// Defaults: `probe_lease` 30 s, `overload_persist_after` 30 s,
/// `default_retry_after` 1 s, `max_retry_after` 300 s, `penalty_half_life`
/// 10 s.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// How long a half-open probe may stay unanswered before the slot is
    /// handed to someone else (a lost permit never wedges a node). Default
    /// 30 s.
    pub probe_lease: Duration,
    /// How long an overload streak must last before its answers count as
    /// failures (see the module docs). Default 30 s.
    pub overload_persist_after: Duration,
    /// Saturation period of an overload answer without `Retry-After`.
    /// Default 1 s.
    pub default_retry_after: Duration,
    /// Upper bound on a `Retry-After` (a node asking for a day is not taken
    /// at its word). Default 300 s.
    pub max_retry_after: Duration,
    /// Half-life of the load penalty that overload answers add. Default
    /// 10 s.
    pub penalty_half_life: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            probe_lease: Duration::from_secs(30),
            overload_persist_after: Duration::from_secs(30),
            default_retry_after: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(300),
            penalty_half_life: Duration::from_secs(10),
        }
    }
}

/// A status change reported by the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Status before.
    pub from: NodeStatus,
    /// Status after (never equal to `from`).
    pub to: NodeStatus,
    /// When it happened.
    pub at: Instant,
}

/// The right to send the one half-open probe of a node.
///
/// Not `Clone`: report its outcome with
/// [`NodeHealthTracker::complete_probe`] or give it back with
/// [`NodeHealthTracker::release_probe`]. A permit that is simply dropped
/// keeps the slot until its lease expires ([`BreakerPolicy::probe_lease`]);
/// `ClusterHealth`'s `ProbeGuard` releases on drop instead.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "report the probe's outcome with complete_probe or give it back with release_probe"]
pub struct ProbePermit {
    generation: u64,
}

/// The half-open probe slot of a node, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeSlot {
    /// The breaker is closed: no probe is needed.
    Closed,
    /// The breaker is open and backing off until the given instant.
    Waiting {
        /// When the backoff ends.
        until: Instant,
    },
    /// The breaker is half-open and nobody holds the probe permit.
    Free,
    /// A probe is in flight.
    InFlight {
        /// When its permit was handed out.
        since: Instant,
    },
}

/// A decaying load penalty: each overload answer adds 1, and the value
/// halves every `half_life`. Zero when the node never pushed back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadPenalty {
    value: f64,
    at: Option<Instant>,
    half_life: Duration,
}

impl LoadPenalty {
    fn new(half_life: Duration) -> Self {
        Self {
            value: 0.0,
            at: None,
            half_life,
        }
    }

    /// The penalty at `now`: ≥ 0, about the number of overload answers in
    /// the last `half_life`. A router can multiply a node's cost by
    /// `1 + penalty`.
    #[must_use]
    pub fn value_at(&self, now: Instant) -> f64 {
        match self.at {
            None => 0.0,
            Some(at) => {
                let half_life = self.half_life.as_secs_f64();
                if half_life <= 0.0 {
                    return 0.0;
                }
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                self.value * (-elapsed / half_life).exp2()
            }
        }
    }

    fn bump(&mut self, now: Instant) {
        self.value = self.value_at(now) + 1.0;
        self.at = Some(now);
    }
}

/// What the router needs to know about a node, at the last change. Plain
/// data; the time-dependent questions take `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingView {
    /// The node's status.
    pub status: NodeStatus,
    /// Whether the status takes traffic (`Healthy` or `Degraded`).
    pub routable: bool,
    /// Until when the node asked not to be sent work (429/503); `None` if
    /// it never did. In the past means no longer saturated.
    pub saturated_until: Option<Instant>,
    /// While the breaker is open: when the next probe may go.
    pub retry_at: Option<Instant>,
    /// When the current half-open probe's lease started, if one is in
    /// flight.
    pub probe_since: Option<Instant>,
    /// How long a probe lease lasts.
    pub probe_lease: Duration,
    /// The decaying overload penalty.
    pub penalty: LoadPenalty,
}

impl RoutingView {
    /// Whether the node is saturated at `now`.
    #[must_use]
    pub fn is_saturated(&self, now: Instant) -> bool {
        self.saturated_until.is_some_and(|until| now < until)
    }

    /// The probe slot at `now`.
    #[must_use]
    pub fn probe_slot(&self, now: Instant) -> ProbeSlot {
        let Some(retry_at) = self.retry_at else {
            return ProbeSlot::Closed;
        };
        if let Some(since) = self.probe_since
            && now < since + self.probe_lease
        {
            return ProbeSlot::InFlight { since };
        }
        if now < retry_at {
            ProbeSlot::Waiting { until: retry_at }
        } else {
            ProbeSlot::Free
        }
    }

    /// The load penalty at `now` (see [`LoadPenalty::value_at`]).
    #[must_use]
    pub fn load_penalty(&self, now: Instant) -> f64 {
        self.penalty.value_at(now)
    }
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    generation: u64,
    since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct OverloadStreak {
    start: Instant,
    last: Instant,
    count: u32,
}

/// Circuit breaker and health state of one node: the seeds'
/// `NodeHealthTracker`, pure (see the [module docs](self) for the state
/// machine).
///
/// Defaults: those of [`HealthConfig`] (window 30 s / 100 samples,
/// thresholds 0.5 / 0.8, 3 failures, 5 recovery successes) and
/// [`BreakerPolicy`]; the backoff is whatever [`Backoff`] it is given.
///
/// ```
/// use std::time::Duration;
/// use cluster_health::{Backoff, NodeHealthTracker, Observation};
/// use cluster_metrics::{Clock, ManualClock};
/// use cluster_types::{BackoffConfig, HealthConfig, NodeStatus};
///
/// let clock = ManualClock::new();
/// let backoff = Backoff::from_seed(BackoffConfig::default(), 1);
/// let mut node = NodeHealthTracker::new("mac-1".into(), &HealthConfig::default(), backoff, clock.now());
/// node.record_success(Some(Duration::from_millis(20)), clock.now());
/// assert_eq!(node.status(), NodeStatus::Healthy);
///
/// for _ in 0..3 {
///     node.record_failure(clock.now());
/// }
/// assert_eq!(node.status(), NodeStatus::Unhealthy);
/// assert!(node.try_acquire_probe(clock.now()).is_none()); // backing off
///
/// clock.advance(node.backoff_delay());
/// let permit = node.try_acquire_probe(clock.now()).expect("half-open");
/// assert!(node.try_acquire_probe(clock.now()).is_none()); // only one probe
/// node.complete_probe(permit, Observation::Failure, clock.now());
/// assert_eq!(node.status(), NodeStatus::Offline); // and the backoff grew
/// ```
#[derive(Debug, Clone)]
pub struct NodeHealthTracker {
    node: NodeId,
    max_consecutive_failures: u32,
    unhealthy_threshold: f64,
    degraded_threshold: f64,
    recovery_successes: u32,
    policy: BreakerPolicy,
    window: RollingWindow,
    status: NodeStatus,
    backoff: Backoff,
    /// The delay applied when the breaker last opened; zero while closed.
    current_delay: Duration,
    /// `Some` exactly while the breaker is open.
    retry_at: Option<Instant>,
    probe: Option<Lease>,
    next_generation: u64,
    saturated_until: Option<Instant>,
    overload: Option<OverloadStreak>,
    penalty: LoadPenalty,
    since: Instant,
    /// Closed by a half-open probe and not yet healthy: only
    /// `recovery_successes` consecutive successes heal it.
    probation: bool,
}

impl NodeHealthTracker {
    /// A tracker for `node` in `Initializing`, created at `now`.
    #[must_use]
    pub fn new(node: NodeId, config: &HealthConfig, backoff: Backoff, now: Instant) -> Self {
        Self::with_policy(node, config, BreakerPolicy::default(), backoff, now)
    }

    /// Like [`new`](Self::new) with explicit breaker settings.
    #[must_use]
    pub fn with_policy(
        node: NodeId,
        config: &HealthConfig,
        policy: BreakerPolicy,
        backoff: Backoff,
        now: Instant,
    ) -> Self {
        Self {
            node,
            max_consecutive_failures: config.max_consecutive_failures.max(1),
            unhealthy_threshold: config.unhealthy_threshold,
            degraded_threshold: config.degraded_threshold,
            recovery_successes: config.recovery_successes.max(1),
            penalty: LoadPenalty::new(policy.penalty_half_life),
            policy,
            window: RollingWindow::new(config.window, config.max_samples),
            status: NodeStatus::Initializing,
            backoff,
            current_delay: Duration::ZERO,
            retry_at: None,
            probe: None,
            next_generation: 0,
            saturated_until: None,
            overload: None,
            since: now,
            probation: false,
        }
    }

    /// The node tracked.
    #[must_use]
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The current status (the seeds' `getStatus`).
    #[must_use]
    pub fn status(&self) -> NodeStatus {
        self.status
    }

    /// When the current status was entered.
    #[must_use]
    pub fn status_since(&self) -> Instant {
        self.since
    }

    /// The window's metrics at `now` (the seeds' `getHealth`).
    #[must_use]
    pub fn health(&self, now: Instant) -> WindowSnapshot {
        self.window.snapshot(now)
    }

    /// The breaker settings.
    #[must_use]
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// Whether the breaker is open (`Unhealthy` or `Offline`).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.retry_at.is_some()
    }

    /// Whether the node may be tried at `now` (the seeds'
    /// `isEligibleForRetry`): the breaker is closed, or it is open, the
    /// backoff has expired and no probe is in flight.
    #[must_use]
    pub fn is_eligible_for_retry(&self, now: Instant) -> bool {
        matches!(self.probe_slot(now), ProbeSlot::Closed | ProbeSlot::Free)
    }

    /// The backoff delay applied when the breaker last opened, zero while it
    /// is closed (the seeds' `getBackoffDelayMs`).
    #[must_use]
    pub fn backoff_delay(&self) -> Duration {
        self.current_delay
    }

    /// Backoff delays drawn since the node was last healthy.
    #[must_use]
    pub fn backoff_attempt(&self) -> u32 {
        self.backoff.attempt()
    }

    /// While the breaker is open: when the next probe may go.
    #[must_use]
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Until when the node asked not to be sent work, if it ever did.
    #[must_use]
    pub fn saturated_until(&self) -> Option<Instant> {
        self.saturated_until
    }

    /// Whether the node is saturated (overload answer) at `now`.
    #[must_use]
    pub fn is_saturated(&self, now: Instant) -> bool {
        self.saturated_until.is_some_and(|until| now < until)
    }

    /// The decaying overload penalty at `now` (0 when the node never pushed
    /// back).
    #[must_use]
    pub fn load_penalty(&self, now: Instant) -> f64 {
        self.penalty.value_at(now)
    }

    /// The half-open probe slot at `now`.
    #[must_use]
    pub fn probe_slot(&self, now: Instant) -> ProbeSlot {
        self.routing_view().probe_slot(now)
    }

    /// The router's view of this node.
    #[must_use]
    pub fn routing_view(&self) -> RoutingView {
        RoutingView {
            status: self.status,
            routable: self.status.is_routable(),
            saturated_until: self.saturated_until,
            retry_at: self.retry_at,
            probe_since: self.probe.map(|lease| lease.since),
            probe_lease: self.policy.probe_lease,
            penalty: self.penalty,
        }
    }

    /// Records a success (a passive request outcome or a closed-state
    /// check). See [`observe`](Self::observe).
    pub fn record_success(
        &mut self,
        latency: Option<Duration>,
        now: Instant,
    ) -> Option<Transition> {
        self.observe(Observation::Success { latency }, now)
    }

    /// Records a failure. See [`observe`](Self::observe).
    pub fn record_failure(&mut self, now: Instant) -> Option<Transition> {
        self.observe(Observation::Failure, now)
    }

    /// Records an overload answer. See [`observe`](Self::observe).
    pub fn record_overload(
        &mut self,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Transition> {
        self.observe(Observation::Overloaded { retry_after }, now)
    }

    /// Records an outcome that is not the half-open probe's: an active check
    /// while the breaker is closed, or a real request. Returns the status
    /// change, if any.
    pub fn observe(&mut self, observation: Observation, now: Instant) -> Option<Transition> {
        self.apply(observation, now, false)
    }

    /// Hands out the half-open probe permit if the breaker is open, its
    /// backoff has expired and no other probe is in flight (or the other
    /// one's lease expired). `None` otherwise — including while the breaker
    /// is closed, when no probe is needed.
    pub fn try_acquire_probe(&mut self, now: Instant) -> Option<ProbePermit> {
        if self.probe_slot(now) != ProbeSlot::Free {
            return None;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.probe = Some(Lease {
            generation,
            since: now,
        });
        Some(ProbePermit { generation })
    }

    /// Reports the outcome of the probe `permit` was handed out for. If the
    /// permit is stale (its lease expired and the slot moved on, or the
    /// breaker closed meanwhile) the outcome is recorded like any other
    /// observation.
    pub fn complete_probe(
        &mut self,
        permit: ProbePermit,
        observation: Observation,
        now: Instant,
    ) -> Option<Transition> {
        let current = self.take_lease(&permit);
        self.apply(observation, now, current && self.is_open())
    }

    /// Gives a probe permit back without an outcome (the probe was
    /// cancelled). The slot is free again at once.
    pub fn release_probe(&mut self, permit: ProbePermit) {
        self.take_lease(&permit);
    }

    /// Whether `permit` is the live lease, clearing it if so.
    fn take_lease(&mut self, permit: &ProbePermit) -> bool {
        match self.probe {
            Some(lease) if lease.generation == permit.generation => {
                self.probe = None;
                true
            }
            _ => false,
        }
    }

    /// Back to `Initializing` with an empty window, a reset backoff and no
    /// saturation (the seeds' "manual reset"). Returns the status change,
    /// if any.
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        self.window.reset();
        self.overload = None;
        self.saturated_until = None;
        self.penalty = LoadPenalty::new(self.policy.penalty_half_life);
        self.backoff.reset();
        self.close(NodeStatus::Initializing, now)
    }

    fn apply(&mut self, observation: Observation, now: Instant, probe: bool) -> Option<Transition> {
        match observation {
            Observation::Success { latency } => {
                self.window.record_success(now, latency);
                self.overload = None;
                self.after_success(now, probe)
            }
            Observation::Failure => {
                self.window.record_failure(now);
                self.after_failure(now, probe)
            }
            Observation::Overloaded { retry_after } => self.after_overload(retry_after, now, probe),
            Observation::Loading => {
                self.overload = None;
                if self.status == NodeStatus::Initializing {
                    return None;
                }
                self.window.reset();
                self.backoff.reset();
                self.close(NodeStatus::Initializing, now)
            }
        }
    }

    fn after_success(&mut self, now: Instant, probe: bool) -> Option<Transition> {
        let snap = self.window.snapshot(now);
        let recovered = snap.consecutive_successes >= self.recovery_successes;
        match self.status {
            NodeStatus::Initializing => self.close(NodeStatus::Healthy, now),
            NodeStatus::Healthy => None,
            NodeStatus::Degraded => {
                let rate_ok = !self.probation && snap.success_rate >= self.degraded_threshold;
                if recovered || rate_ok {
                    self.close(NodeStatus::Healthy, now)
                } else {
                    None
                }
            }
            NodeStatus::Unhealthy | NodeStatus::Offline => {
                if recovered {
                    self.close(NodeStatus::Healthy, now)
                } else if probe {
                    let transition = self.close(NodeStatus::Degraded, now);
                    self.probation = true;
                    transition
                } else {
                    None
                }
            }
        }
    }

    fn after_failure(&mut self, now: Instant, probe: bool) -> Option<Transition> {
        let snap = self.window.snapshot(now);
        let too_many = snap.consecutive_failures >= self.max_consecutive_failures;
        match self.status {
            NodeStatus::Initializing if too_many => self.open(NodeStatus::Unhealthy, now),
            NodeStatus::Initializing => None,
            NodeStatus::Healthy | NodeStatus::Degraded => {
                if too_many || snap.success_rate < self.unhealthy_threshold {
                    self.open(NodeStatus::Unhealthy, now)
                } else if self.status == NodeStatus::Healthy
                    && snap.success_rate < self.degraded_threshold
                {
                    self.close(NodeStatus::Degraded, now)
                } else {
                    None
                }
            }
            NodeStatus::Unhealthy | NodeStatus::Offline => {
                if probe {
                    self.open(NodeStatus::Offline, now)
                } else {
                    None
                }
            }
        }
    }

    fn after_overload(
        &mut self,
        retry_after: Option<Duration>,
        now: Instant,
        probe: bool,
    ) -> Option<Transition> {
        let delay = retry_after
            .unwrap_or(self.policy.default_retry_after)
            .min(self.policy.max_retry_after);
        let until = now + delay;
        let previous_end = self.saturated_until;
        self.saturated_until = Some(previous_end.map_or(until, |old| old.max(until)));
        self.penalty.bump(now);

        let window = self.window.window();
        let streak = match self.overload {
            // The streak goes on while the previous answer, or the end of the
            // saturation the node asked for, is less than a window ago.
            Some(mut s)
                if now.saturating_duration_since(
                    previous_end.map_or(s.last, |end| end.max(s.last)),
                ) < window =>
            {
                s.last = now;
                s.count = s.count.saturating_add(1);
                s
            }
            _ => OverloadStreak {
                start: now,
                last: now,
                count: 1,
            },
        };
        self.overload = Some(streak);
        let persists = streak.count >= self.max_consecutive_failures
            && now.saturating_duration_since(streak.start) >= self.policy.overload_persist_after;
        if persists {
            self.window.record_failure(now);
            return self.after_failure(now, probe);
        }
        if let Some(retry_at) = self.retry_at {
            // Open: the next probe waits for the saturation to end.
            self.retry_at = Some(retry_at.max(until));
        }
        None
    }

    /// Opens (or re-opens) the breaker into `to` with the next backoff delay.
    fn open(&mut self, to: NodeStatus, now: Instant) -> Option<Transition> {
        let delay = self.backoff.next_delay();
        self.probation = false;
        self.current_delay = delay;
        self.retry_at = Some(now + delay);
        self.probe = None;
        self.set_status(to, now)
    }

    /// Closes the breaker into `to`; the backoff restarts once healthy.
    fn close(&mut self, to: NodeStatus, now: Instant) -> Option<Transition> {
        self.probation = false;
        self.current_delay = Duration::ZERO;
        self.retry_at = None;
        self.probe = None;
        if to == NodeStatus::Healthy {
            self.backoff.reset();
        }
        self.set_status(to, now)
    }

    fn set_status(&mut self, to: NodeStatus, now: Instant) -> Option<Transition> {
        let from = self.status;
        if from == to {
            return None;
        }
        self.status = to;
        self.since = now;
        Some(Transition { from, to, at: now })
    }
}
