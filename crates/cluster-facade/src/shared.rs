//! The state shared by the router and every request guard: parameters,
//! clock, the published snapshot, the cache model and the strategies'
//! state. The router reads and publishes it; guards record into it.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use cluster_metrics::SharedClock;
use cluster_types::NodeId;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::cache_model::CacheModel;
use crate::decisions::DecisionLog;
use crate::live::{AtomicF64, Epoch, NodeLive};
use crate::params::RouterParams;
use crate::probe::{OutcomeObserver, ProbeGate};
use crate::snapshot::ClusterSnapshot;
use crate::strategy::cache_aware::Scratch;
use crate::strategy::cache_score::CacheScore;
use crate::strategy::least_loaded::LeastLoaded;
use crate::strategy::round_robin::RoundRobin;
use crate::strategy::session::SessionTable;

/// The cache model with the scratch space the cache-aware strategy uses
/// while it reads the model (so one lock covers both). Derefs to the model.
#[derive(Debug)]
pub(crate) struct CacheState {
    pub(crate) model: CacheModel,
    pub(crate) scratch: Scratch,
}

impl Deref for CacheState {
    type Target = CacheModel;

    fn deref(&self) -> &CacheModel {
        &self.model
    }
}

impl DerefMut for CacheState {
    fn deref_mut(&mut self) -> &mut CacheModel {
        &mut self.model
    }
}

/// Serialises snapshot rebuilds and remembers each node's live state.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    pub(crate) generation: u64,
    pub(crate) lives: HashMap<NodeId, Arc<NodeLive>>,
}

/// State shared by the router and every request guard.
pub(crate) struct RouterShared {
    /// Swapped whole by [`Router::set_params`](crate::Router::set_params) (config reload).
    pub(crate) params: ArcSwap<RouterParams>,
    pub(crate) clock: SharedClock,
    pub(crate) epoch: Epoch,
    pub(crate) snapshot: ArcSwap<ClusterSnapshot>,
    pub(crate) publisher: Mutex<Publisher>,
    /// The cache model and the cache-aware strategy's scratch space, under
    /// one lock.
    pub(crate) cache: Mutex<CacheState>,
    /// Measured uncached tokens of a follow-up turn (EWMA over answers that
    /// were cache hits; 0 = none yet).
    pub(crate) warm_turn: AtomicF64,
    pub(crate) sessions: SessionTable,
    pub(crate) rr: RoundRobin,
    pub(crate) ll: LeastLoaded,
    pub(crate) score: CacheScore,
    pub(crate) rng: Mutex<SmallRng>,
    pub(crate) observer: OnceLock<Arc<dyn OutcomeObserver>>,
    pub(crate) probe_gate: OnceLock<Arc<dyn ProbeGate>>,
    /// The records of the most recent routed requests.
    pub(crate) decisions: DecisionLog,
}

impl fmt::Debug for RouterShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterShared")
            .field("strategy", &self.params.load().strategy)
            .field("generation", &self.snapshot.load().generation())
            .finish_non_exhaustive()
    }
}

impl RouterShared {
    /// Converts a router-clock instant to unix milliseconds (through the
    /// system clock's current offset).
    pub(crate) fn unix_ms(&self, t: Instant) -> u64 {
        let now = self.clock.now();
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let at = if t <= now {
            sys.saturating_sub(now - t)
        } else {
            sys + (t - now)
        };
        u64::try_from(at.as_millis()).unwrap_or(u64::MAX)
    }

    /// Fresh state: no nodes, an empty cache model, `params` and `clock`.
    pub(crate) fn new(params: RouterParams, clock: SharedClock) -> Self {
        let epoch = Epoch::new(clock.now());
        Self {
            cache: Mutex::new(CacheState {
                model: CacheModel::new(params.cache),
                scratch: Scratch::default(),
            }),
            warm_turn: AtomicF64::new(0.0),
            sessions: SessionTable::new(params.session_ttl, params.max_sessions),
            rng: Mutex::new(SmallRng::seed_from_u64(params.seed)),
            decisions: DecisionLog::new(params.decision_log_size),
            params: ArcSwap::from_pointee(params),
            clock,
            epoch,
            snapshot: ArcSwap::from_pointee(ClusterSnapshot::default()),
            publisher: Mutex::new(Publisher::default()),
            rr: RoundRobin::default(),
            ll: LeastLoaded::default(),
            score: CacheScore::default(),
            observer: OnceLock::new(),
            probe_gate: OnceLock::new(),
        }
    }
}
