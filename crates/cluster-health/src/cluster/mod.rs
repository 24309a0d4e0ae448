//! [`ClusterHealth`]: the orchestrator — a thin task per node driving its
//! [`NodeHealthTracker`], passive outcomes, events and the routing table.
//!
//! Every node gets its own task on its own schedule: the first check at a
//! random phase within one interval (nodes added while running are checked
//! at once), then every `check_interval` spread by the backoff's jitter
//! (±20 % by default). While the breaker is open the task sleeps until the
//! backoff expires and then sends the one half-open probe; while a node is
//! saturated (429/503) its active checks pause until the saturation ends.
//! A check that outlives `HealthConfig::timeout` is cancelled and counts as
//! [`HealthError::Timeout`].
//!
//! Events — status changes, check results, saturation, nodes added and
//! removed — go out in the order they happened, both to the callbacks and
//! to a [`tokio::sync::broadcast`] channel ([`ClusterHealth::subscribe`]).
//! Callbacks run on the thread that caused the event, after every lock is
//! released, so a callback may call back into `ClusterHealth`; a panicking
//! callback is caught and logged and never stops the checks. Keep callbacks
//! quick; for heavy work subscribe to the stream (a subscriber that falls
//! more than the channel's capacity behind loses the oldest events and is
//! told so by `RecvError::Lagged`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cluster_metrics::{Clock, SharedClock, WindowSnapshot};
use cluster_types::{BackoffConfig, ClusterStatus, HealthConfig, NodeId, NodeSpec, NodeStatus};
use parking_lot::{Mutex, RwLock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, broadcast};
use tokio::task::AbortHandle;
use tokio_stream::wrappers::BroadcastStream;

use crate::tracker::{BreakerPolicy, ProbePermit, ProbeSlot, RoutingView, Transition};
use crate::{
    Backoff, HealthChecker, HealthError, HttpHealthChecker, NodeHealthTracker, Observation,
    TokioClock,
};

/// Default capacity of the event channel: 1024 events.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// A node's status changed (the seeds' `onStatusChange` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// The node.
    pub node: NodeId,
    /// Status before.
    pub from: NodeStatus,
    /// Status after.
    pub to: NodeStatus,
    /// The node's window metrics right after the change.
    pub metrics: WindowSnapshot,
    /// When it changed.
    pub at: Instant,
}

/// The result of one active check (the seeds' `onHealthCheck` arguments).
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The node checked.
    pub node: NodeId,
    /// `Ok(latency)` or the error.
    pub result: Result<Duration, Arc<HealthError>>,
    /// Whether this check was the half-open probe of an open breaker.
    pub probe: bool,
    /// When it completed.
    pub at: Instant,
}

impl CheckReport {
    /// Whether the check passed.
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }
}

/// Something that happened to the tracked nodes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HealthEvent {
    /// A node changed status.
    StatusChanged(StatusChange),
    /// An active check completed.
    CheckCompleted(CheckReport),
    /// A node answered 429/503 and is saturated until `until`.
    Saturated {
        /// The node.
        node: NodeId,
        /// End of the saturation.
        until: Instant,
    },
    /// A node started being tracked.
    NodeAdded {
        /// The node.
        node: NodeId,
    },
    /// A node stopped being tracked.
    NodeRemoved {
        /// The node.
        node: NodeId,
    },
}

/// Status and metrics of one node (the seeds' `getNodeHealth` result, with
/// the breaker's state).
#[derive(Debug, Clone)]
pub struct NodeHealthReport {
    /// Current status.
    pub status: NodeStatus,
    /// When the status was entered.
    pub status_since: Instant,
    /// Window metrics now.
    pub metrics: WindowSnapshot,
    /// The error of the last active check, if it failed.
    pub last_error: Option<Arc<HealthError>>,
    /// When the last active check completed.
    pub last_check: Option<Instant>,
    /// The backoff delay applied when the breaker last opened; zero while
    /// closed.
    pub backoff_delay: Duration,
    /// While the breaker is open: when the next probe may go.
    pub retry_at: Option<Instant>,
    /// Until when the node asked not to be sent work, if it did.
    pub saturated_until: Option<Instant>,
    /// The decaying overload penalty now.
    pub load_penalty: f64,
}

impl NodeHealthReport {
    /// Converts to the published [`cluster_types::NodeHealth`], mapping
    /// instants to unix milliseconds given the current instant and unix
    /// time.
    #[must_use]
    pub fn to_node_health(&self, now: Instant, now_unix_ms: u64) -> cluster_types::NodeHealth {
        let unix_ms = |at: Instant| -> u64 {
            if at >= now {
                let ahead = u64::try_from(at.duration_since(now).as_millis()).unwrap_or(u64::MAX);
                now_unix_ms.saturating_add(ahead)
            } else {
                let ago = u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX);
                now_unix_ms.saturating_sub(ago)
            }
        };
        cluster_types::NodeHealth {
            success_rate: self.metrics.success_rate,
            avg_latency_ms: self.metrics.avg_latency.map(|d| d.as_secs_f64() * 1000.0),
            total_samples: self.metrics.total_samples as u64,
            consecutive_successes: self.metrics.consecutive_successes,
            consecutive_failures: self.metrics.consecutive_failures,
            last_check_unix_ms: self.last_check.map(unix_ms),
            last_error: self.last_error.as_ref().map(|e| e.to_string()),
            next_probe_unix_ms: self.retry_at.map(unix_ms),
        }
    }
}

/// Every node's [`RoutingView`], as of one moment: what the router reads.
///
/// Rebuilt lazily — only when some view changed since the last read — and
/// shared as an `Arc`, so reading it when nothing changed costs one atomic
/// load.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    version: u64,
    views: BTreeMap<NodeId, RoutingView>,
}

impl RoutingTable {
    /// Increases whenever a view changes; equal versions mean equal tables.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The view of one node.
    #[must_use]
    pub fn get(&self, node: &NodeId) -> Option<&RoutingView> {
        self.views.get(node)
    }

    /// Every node's view, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &RoutingView)> {
        self.views.iter()
    }

    /// Number of nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether no node is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }
}

type StatusCallback = Arc<dyn Fn(&StatusChange) + Send + Sync>;
type CheckCallback = Arc<dyn Fn(&CheckReport) + Send + Sync>;

/// Builder of [`ClusterHealth`].
///
/// Defaults: [`HealthConfig::default`], [`BackoffConfig::default`],
/// [`BreakerPolicy::default`], an [`HttpHealthChecker`] built from the
/// health config, the [`TokioClock`], a random seed, no callbacks, an event
/// channel of [`DEFAULT_EVENT_CAPACITY`] (1024) events.
pub struct ClusterHealthBuilder {
    config: HealthConfig,
    backoff: BackoffConfig,
    policy: BreakerPolicy,
    checker: Option<Arc<dyn HealthChecker>>,
    clock: SharedClock,
    seed: Option<u64>,
    on_status_change: Vec<StatusCallback>,
    on_health_check: Vec<CheckCallback>,
    event_capacity: usize,
}

impl fmt::Debug for ClusterHealthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHealthBuilder")
            .field("config", &self.config)
            .field("backoff", &self.backoff)
            .field("policy", &self.policy)
            .field("custom_checker", &self.checker.is_some())
            .field("clock", &self.clock)
            .field("seed", &self.seed)
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

impl Default for ClusterHealthBuilder {
    fn default() -> Self {
        Self {
            config: HealthConfig::default(),
            backoff: BackoffConfig::default(),
            policy: BreakerPolicy::default(),
            checker: None,
            clock: Arc::new(TokioClock),
            seed: None,
            on_status_change: Vec::new(),
            on_health_check: Vec::new(),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }
}

impl ClusterHealthBuilder {
    /// Thresholds, interval, timeout, window. Default
    /// [`HealthConfig::default`].
    #[must_use]
    pub fn config(mut self, config: HealthConfig) -> Self {
        self.config = config;
        self
    }

    /// Backoff of open breakers; its jitter also spreads the check
    /// schedule. Default [`BackoffConfig::default`].
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Breaker settings beyond the config. Default
    /// [`BreakerPolicy::default`].
    #[must_use]
    pub fn policy(mut self, policy: BreakerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The active checker. Default: an [`HttpHealthChecker`] with the
    /// config's probe path and timeout.
    #[must_use]
    pub fn checker(mut self, checker: Arc<dyn HealthChecker>) -> Self {
        self.checker = Some(checker);
        self
    }

    /// The clock. Default [`TokioClock`]; a custom clock should follow
    /// tokio's time, since the schedule sleeps with `tokio::time`.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Seed of the RNG behind every node's backoff jitter and schedule.
    /// Default: a random seed (so gateway replicas do not jitter in step).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds a callback run on every status change (the seeds'
    /// `onStatusChange`).
    #[must_use]
    pub fn on_status_change(
        mut self,
        callback: impl Fn(&StatusChange) + Send + Sync + 'static,
    ) -> Self {
        self.on_status_change.push(Arc::new(callback));
        self
    }

    /// Adds a callback run after every active check (the seeds'
    /// `onHealthCheck`).
    #[must_use]
    pub fn on_health_check(
        mut self,
        callback: impl Fn(&CheckReport) + Send + Sync + 'static,
    ) -> Self {
        self.on_health_check.push(Arc::new(callback));
        self
    }

    /// Capacity of the broadcast channel. Default 1024; at least 1.
    #[must_use]
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Builds the orchestrator (not started).
    ///
    /// # Errors
    /// [`HealthError::Client`] if the default HTTP checker cannot be built.
    pub fn build(self) -> Result<ClusterHealth, HealthError> {
        let checker: Arc<dyn HealthChecker> = match self.checker {
            Some(checker) => checker,
            None => Arc::new(HttpHealthChecker::new(&self.config)?),
        };
        let seed = self.seed.unwrap_or_else(random_seed);
        let (events, _) = broadcast::channel(self.event_capacity);
        let table = RoutingTable::default();
        Ok(ClusterHealth {
            shared: Arc::new(Shared {
                config: self.config,
                backoff: self.backoff,
                policy: self.policy,
                checker,
                clock: self.clock,
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                nodes: RwLock::new(HashMap::new()),
                running: Mutex::new(None),
                events,
                queue: Mutex::new(VecDeque::new()),
                draining: AtomicBool::new(false),
                on_status_change: self.on_status_change,
                on_health_check: self.on_health_check,
                table: ArcSwap::from_pointee(table),
                dirty: AtomicBool::new(false),
                version: AtomicU64::new(0),
                rebuild: Mutex::new(()),
            }),
        })
    }
}

/// A seed from the standard library's per-process random hasher keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x6d6c_785f_636c_7573);
    hasher.finish()
}

/// Health of every node of the cluster: periodic active checks, passive
/// outcomes, events, and the routing table (the seeds' `ClusterHealth`).
///
/// Not `Clone`; share it in an `Arc`. Dropping it stops the checks.
/// Defaults: see [`ClusterHealthBuilder`]. See the [crate docs](crate) for
/// an example.
pub struct ClusterHealth {
    shared: Arc<Shared>,
}

impl fmt::Debug for ClusterHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHealth")
            .field("config", &self.shared.config)
            .field("nodes", &self.shared.nodes.read().len())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: HealthConfig,
    backoff: BackoffConfig,
    policy: BreakerPolicy,
    checker: Arc<dyn HealthChecker>,
    clock: SharedClock,
    rng: Mutex<StdRng>,
    nodes: RwLock<HashMap<NodeId, Arc<NodeEntry>>>,
    /// `Some(runtime)` while checks run. Lock order: `running`, then a
    /// node's `task`.
    running: Mutex<Option<tokio::runtime::Handle>>,
    events: broadcast::Sender<HealthEvent>,
    /// Events not yet dispatched, in order; pushed under the node's state
    /// lock so per-node order is the order of the changes.
    queue: Mutex<VecDeque<HealthEvent>>,
    draining: AtomicBool,
    on_status_change: Vec<StatusCallback>,
    on_health_check: Vec<CheckCallback>,
    table: ArcSwap<RoutingTable>,
    dirty: AtomicBool,
    version: AtomicU64,
    rebuild: Mutex<()>,
}

struct NodeEntry {
    id: NodeId,
    spec: Mutex<Arc<NodeSpec>>,
    state: Mutex<NodeState>,
    task: Mutex<Option<AbortHandle>>,
    /// Wakes the node's task when the breaker opened from outside it.
    wake: Notify,
    removed: AtomicBool,
}

struct NodeState {
    tracker: NodeHealthTracker,
    view: RoutingView,
    last_error: Option<Arc<HealthError>>,
    last_check: Option<Instant>,
}

impl Shared {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn new_entry(&self, spec: NodeSpec) -> Arc<NodeEntry> {
        let seed = self.rng.lock().random::<u64>();
        let backoff = Backoff::from_seed(self.backoff.clone(), seed);
        let tracker = NodeHealthTracker::with_policy(
            spec.id.clone(),
            &self.config,
            self.policy.clone(),
            backoff,
            self.now(),
        );
        Arc::new(NodeEntry {
            id: spec.id.clone(),
            spec: Mutex::new(Arc::new(spec)),
            state: Mutex::new(NodeState {
                view: tracker.routing_view(),
                tracker,
                last_error: None,
                last_check: None,
            }),
            task: Mutex::new(None),
            wake: Notify::new(),
            removed: AtomicBool::new(false),
        })
    }

    fn entry(&self, node: &NodeId) -> Option<Arc<NodeEntry>> {
        self.nodes.read().get(node).cloned()
    }

    fn push(&self, event: HealthEvent) {
        self.queue.lock().push_back(event);
    }

    fn mark_dirty(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.dirty.store(true, Ordering::Release);
    }

    /// Bookkeeping after the tracker of `entry` changed: republish its view
    /// if it changed, queue the status change. Called with the state lock
    /// held.
    fn after_change(
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
    fn observe(&self, entry: &NodeEntry, observation: Observation, error: Option<HealthError>) {
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
    fn apply_check(
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

    /// Dispatches queued events to the channel and the callbacks, in order,
    /// on this thread, with no lock held while a callback runs. Only one
    /// thread drains at a time; a callback that causes events (re-entrantly)
    /// finds the drain running and leaves them to it.
    fn drain(&self) {
        loop {
            if self
                .draining
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            loop {
                let Some(event) = self.queue.lock().pop_front() else {
                    break;
                };
                self.dispatch(&event);
                // No receivers is fine: events are optional.
                let _ = self.events.send(event);
            }
            self.draining.store(false, Ordering::Release);
            if self.queue.lock().is_empty() {
                return;
            }
        }
    }

    fn dispatch(&self, event: &HealthEvent) {
        match event {
            HealthEvent::StatusChanged(change) => {
                for callback in &self.on_status_change {
                    if catch_unwind(AssertUnwindSafe(|| callback(change))).is_err() {
                        tracing::error!(node = %change.node, "on_status_change callback panicked; ignored");
                    }
                }
            }
            HealthEvent::CheckCompleted(report) => {
                for callback in &self.on_health_check {
                    if catch_unwind(AssertUnwindSafe(|| callback(report))).is_err() {
                        tracing::error!(node = %report.node, "on_health_check callback panicked; ignored");
                    }
                }
            }
            _ => {}
        }
    }

    /// Spawns the task of `entry` unless it has one. `running` is the held
    /// lock's content.
    fn spawn_task(
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

    fn first_delay(&self) -> Duration {
        let fraction: f64 = self.rng.lock().random_range(0.0..1.0);
        self.config.check_interval.mul_f64(fraction)
    }

    fn rebuild_table(&self) -> Arc<RoutingTable> {
        let _guard = self.rebuild.lock();
        if self.dirty.swap(false, Ordering::AcqRel) {
            let version = self.version.load(Ordering::Acquire);
            let entries: Vec<Arc<NodeEntry>> = self.nodes.read().values().cloned().collect();
            let views = entries
                .iter()
                .map(|entry| (entry.id.clone(), entry.state.lock().view))
                .collect();
            self.table.store(Arc::new(RoutingTable { version, views }));
        }
        self.table.load_full()
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

/// The half-open probe permit of one node, for sending one real request as
/// the probe ([`ClusterHealth::try_acquire_probe`]).
///
/// Report the request's outcome with [`success`](Self::success),
/// [`failure`](Self::failure) or [`complete`](Self::complete); dropping the
/// guard without an outcome (the request was cancelled) frees the slot for
/// the next probe.
#[must_use = "a probe guard frees the probe slot when dropped"]
pub struct ProbeGuard {
    shared: Arc<Shared>,
    entry: Arc<NodeEntry>,
    permit: Option<ProbePermit>,
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

impl ClusterHealth {
    /// A builder with every default.
    #[must_use]
    pub fn builder() -> ClusterHealthBuilder {
        ClusterHealthBuilder::default()
    }

    /// An orchestrator with `config` and `backoff` and the other defaults
    /// (the seeds' constructor without callbacks).
    ///
    /// # Errors
    /// [`HealthError::Client`] if the HTTP checker cannot be built.
    pub fn new(config: HealthConfig, backoff: BackoffConfig) -> Result<Self, HealthError> {
        Self::builder().config(config).backoff(backoff).build()
    }

    /// The health configuration.
    #[must_use]
    pub fn config(&self) -> &HealthConfig {
        &self.shared.config
    }

    /// The clock used.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// Starts periodic checks of every tracked node, adding `nodes` first
    /// (the seeds' `startHealthChecks`). Must be called inside a tokio
    /// runtime; the tasks run on it.
    ///
    /// # Errors
    /// [`HealthError::AlreadyRunning`] if checks are running (call
    /// [`stop`](Self::stop) first); [`HealthError::NoRuntime`] outside a
    /// tokio runtime.
    pub fn start(&self, nodes: impl IntoIterator<Item = NodeSpec>) -> Result<(), HealthError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HealthError::NoRuntime)?;
        let mut running = self.shared.running.lock();
        if running.is_some() {
            return Err(HealthError::AlreadyRunning);
        }
        for spec in nodes {
            self.upsert(spec, None);
        }
        let entries: Vec<Arc<NodeEntry>> = self.shared.nodes.read().values().cloned().collect();
        for entry in &entries {
            let delay = self.shared.first_delay();
            self.shared.spawn_task(&runtime, entry, delay);
        }
        *running = Some(runtime);
        drop(running);
        self.shared.drain();
        Ok(())
    }

    /// Stops every periodic check; status, metrics and nodes are kept (the
    /// seeds' `stopHealthChecks`). Does nothing when not running.
    pub fn stop(&self) {
        let mut running = self.shared.running.lock();
        if running.take().is_none() {
            return;
        }
        for entry in self.shared.nodes.read().values() {
            if let Some(task) = entry.task.lock().take() {
                task.abort();
            }
        }
    }

    /// Whether periodic checks are running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.shared.running.lock().is_some()
    }

    /// Adds a node, or updates the spec of a tracked one (returns `true`
    /// only when it was new). A changed URL resets the node to
    /// `Initializing` (it is another server now); other spec changes keep
    /// its health. While running, a new node is checked at once and then on
    /// its own schedule.
    pub fn add_node(&self, spec: NodeSpec) -> bool {
        let added = {
            let running = self.shared.running.lock();
            self.upsert(spec, running.as_ref())
        };
        self.shared.drain();
        added
    }

    fn upsert(&self, spec: NodeSpec, runtime: Option<&tokio::runtime::Handle>) -> bool {
        let existing = self.shared.entry(&spec.id);
        if let Some(entry) = existing {
            let url_changed = {
                let mut current = entry.spec.lock();
                let changed = current.url != spec.url;
                *current = Arc::new(spec);
                changed
            };
            if url_changed {
                let now = self.shared.now();
                let mut state = entry.state.lock();
                let transition = state.tracker.reset(now);
                state.last_error = None;
                state.last_check = None;
                self.shared
                    .after_change(&entry, &mut state, transition, now);
                entry.wake.notify_one();
            }
            return false;
        }
        let id = spec.id.clone();
        let entry = self.shared.new_entry(spec);
        {
            let mut nodes = self.shared.nodes.write();
            if nodes.contains_key(&id) {
                // Lost a race with another add of the same id.
                return false;
            }
            nodes.insert(id.clone(), Arc::clone(&entry));
        }
        self.shared.mark_dirty();
        self.shared.push(HealthEvent::NodeAdded { node: id });
        if let Some(runtime) = runtime {
            self.shared.spawn_task(runtime, &entry, Duration::ZERO);
        }
        true
    }

    /// Stops tracking a node; returns whether it was tracked.
    pub fn remove_node(&self, node: &NodeId) -> bool {
        let Some(entry) = self.shared.nodes.write().remove(node) else {
            return false;
        };
        {
            let _running = self.shared.running.lock();
            let _state = entry.state.lock();
            entry.removed.store(true, Ordering::Release);
            if let Some(task) = entry.task.lock().take() {
                task.abort();
            }
        }
        self.shared.mark_dirty();
        self.shared
            .push(HealthEvent::NodeRemoved { node: node.clone() });
        self.shared.drain();
        true
    }

    /// Makes the tracked set equal to `specs`: adds the new, updates the
    /// changed (see [`add_node`](Self::add_node)), removes the missing.
    pub fn sync_nodes(&self, specs: impl IntoIterator<Item = NodeSpec>) {
        let specs: Vec<NodeSpec> = specs.into_iter().collect();
        let keep: std::collections::HashSet<&NodeId> = specs.iter().map(|s| &s.id).collect();
        let gone: Vec<NodeId> = self
            .shared
            .nodes
            .read()
            .keys()
            .filter(|id| !keep.contains(id))
            .cloned()
            .collect();
        for id in &gone {
            self.remove_node(id);
        }
        for spec in specs {
            self.add_node(spec);
        }
    }

    /// Ids of the tracked nodes, sorted.
    #[must_use]
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.shared.nodes.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The spec of a tracked node.
    #[must_use]
    pub fn node_spec(&self, node: &NodeId) -> Option<NodeSpec> {
        self.shared.entry(node).map(|e| (**e.spec.lock()).clone())
    }

    fn known(&self, node: &NodeId) -> Result<Arc<NodeEntry>, HealthError> {
        self.shared
            .entry(node)
            .ok_or_else(|| HealthError::UnknownNode { node: node.clone() })
    }

    /// Whether the node is `Healthy` (the seeds' `isHealthy`; `Degraded`
    /// is not healthy here, use the routing table for routability).
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn is_healthy(&self, node: &NodeId) -> Result<bool, HealthError> {
        Ok(self.status(node)? == NodeStatus::Healthy)
    }

    /// The node's status.
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn status(&self, node: &NodeId) -> Result<NodeStatus, HealthError> {
        Ok(self.known(node)?.state.lock().tracker.status())
    }

    /// Status and metrics of one node (the seeds' `getNodeHealth`).
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn node_health(&self, node: &NodeId) -> Result<NodeHealthReport, HealthError> {
        let entry = self.known(node)?;
        Ok(self.report(&entry))
    }

    fn report(&self, entry: &NodeEntry) -> NodeHealthReport {
        let now = self.shared.now();
        let state = entry.state.lock();
        let t = &state.tracker;
        NodeHealthReport {
            status: t.status(),
            status_since: t.status_since(),
            metrics: t.health(now),
            last_error: state.last_error.clone(),
            last_check: state.last_check,
            backoff_delay: t.backoff_delay(),
            retry_at: t.retry_at(),
            saturated_until: t.saturated_until(),
            load_penalty: t.load_penalty(now),
        }
    }

    /// Status and metrics of every node, by id (the seeds'
    /// `getAllNodeHealth`).
    #[must_use]
    pub fn all_node_health(&self) -> BTreeMap<NodeId, NodeHealthReport> {
        let entries: Vec<Arc<NodeEntry>> = self.shared.nodes.read().values().cloned().collect();
        entries
            .iter()
            .map(|e| (e.id.clone(), self.report(e)))
            .collect()
    }

    /// The cluster status aggregated from every node's status.
    #[must_use]
    pub fn cluster_status(&self) -> ClusterStatus {
        ClusterStatus::aggregate(self.routing_table().iter().map(|(_, v)| v.status))
    }

    /// Records a successful real request (the seeds' `recordSuccess`).
    /// Unknown nodes are ignored, as in the seeds; returns whether the node
    /// is tracked.
    pub fn record_success(&self, node: &NodeId, latency: Duration) -> bool {
        self.record(
            node,
            Observation::Success {
                latency: Some(latency),
            },
        )
    }

    /// Records a failed real request (the seeds' `recordFailure`), classified
    /// by [`HealthError::observation`]: an `Overloaded` or `Loading` error is
    /// recorded as such, not as a failure. Unknown nodes are ignored; returns
    /// whether the node is tracked.
    pub fn record_failure(&self, node: &NodeId, error: HealthError) -> bool {
        let Some(entry) = self.shared.entry(node) else {
            return false;
        };
        self.shared
            .observe(&entry, error.observation(), Some(error));
        true
    }

    /// Records a 429/503 answer to a real request: the node is saturated for
    /// `retry_after` (default 1 s) and its load penalty rises; it counts as a
    /// failure only when it persists (see [`tracker`](crate::tracker)).
    /// Unknown nodes are ignored; returns whether the node is tracked.
    pub fn record_overload(&self, node: &NodeId, retry_after: Option<Duration>) -> bool {
        self.record(node, Observation::Overloaded { retry_after })
    }

    /// Records any observation of a real request. Unknown nodes are
    /// ignored; returns whether the node is tracked.
    pub fn record(&self, node: &NodeId, observation: Observation) -> bool {
        let Some(entry) = self.shared.entry(node) else {
            return false;
        };
        self.shared.observe(&entry, observation, None);
        true
    }

    /// Puts a node back to `Initializing` with an empty window and backoff
    /// (the seeds' manual reset).
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn reset_node(&self, node: &NodeId) -> Result<(), HealthError> {
        let entry = self.known(node)?;
        {
            let now = self.shared.now();
            let mut state = entry.state.lock();
            let transition = state.tracker.reset(now);
            self.shared
                .after_change(&entry, &mut state, transition, now);
            entry.wake.notify_one();
        }
        self.shared.drain();
        Ok(())
    }

    /// The half-open probe permit of a node whose breaker is open and whose
    /// backoff has expired, so that one real request can serve as the
    /// probe; `None` if the breaker is closed, still backing off, or another
    /// probe is in flight. Only one caller gets it.
    ///
    /// # Errors
    /// [`HealthError::UnknownNode`].
    pub fn try_acquire_probe(&self, node: &NodeId) -> Result<Option<ProbeGuard>, HealthError> {
        let entry = self.known(node)?;
        let now = self.shared.now();
        let mut state = entry.state.lock();
        let Some(permit) = state.tracker.try_acquire_probe(now) else {
            return Ok(None);
        };
        self.shared.after_change(&entry, &mut state, None, now);
        drop(state);
        Ok(Some(ProbeGuard {
            shared: Arc::clone(&self.shared),
            entry,
            permit: Some(permit),
        }))
    }

    /// Every node's routing view. Costs one atomic load when nothing changed
    /// since the last call, one pass over the nodes otherwise.
    #[must_use]
    pub fn routing_table(&self) -> Arc<RoutingTable> {
        if self.shared.dirty.load(Ordering::Acquire) {
            self.shared.rebuild_table()
        } else {
            self.shared.table.load_full()
        }
    }

    /// One node's routing view, read directly.
    #[must_use]
    pub fn routing_view(&self, node: &NodeId) -> Option<RoutingView> {
        self.shared.entry(node).map(|e| e.state.lock().view)
    }

    /// A receiver of every event from now on (see the module docs on
    /// lagging).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.shared.events.subscribe()
    }

    /// The events as a `Stream` (items are `Err(Lagged(n))` when `n`
    /// events were missed).
    #[must_use]
    pub fn events(&self) -> BroadcastStream<HealthEvent> {
        BroadcastStream::new(self.subscribe())
    }
}

impl Drop for ClusterHealth {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
