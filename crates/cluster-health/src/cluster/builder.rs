//! [`ClusterHealthBuilder`]: configuration, checker, clock, seed and
//! callbacks of a [`ClusterHealth`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use arc_swap::ArcSwap;
use cluster_metrics::SharedClock;
use cluster_types::{BackoffConfig, HealthConfig};
use parking_lot::{Mutex, RwLock};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::broadcast;

use super::api::ClusterHealth;
use super::events::{
    CheckCallback, CheckReport, DEFAULT_EVENT_CAPACITY, StatusCallback, StatusChange,
};
use super::shared::Shared;
use super::table::RoutingTable;
use crate::tracker::BreakerPolicy;
use crate::{HealthChecker, HealthError, HttpHealthChecker, TokioClock};

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
