//! Node health for mlx-cluster: a circuit breaker per node, jittered
//! exponential backoff, active HTTP checks and passive outcomes from real
//! requests.
//!
//! The pieces, bottom up:
//!
//! - [`Backoff`] — jittered exponential backoff, one reusable type.
//! - [`NodeHealthTracker`] — the per-node state machine (pure: time comes in
//!   as an argument, randomness through the injected backoff). The module
//!   [`tracker`] documents every transition, the half-open probe, overload
//!   as backpressure and model loading.
//! - [`HealthChecker`] — one async check of one node; [`HttpHealthChecker`]
//!   implements it with reqwest (`GET /v1/models` by default) and also lists
//!   a node's models for discovery ([`HttpHealthChecker::list_models`]).
//! - [`ClusterHealth`] — the orchestrator: a thin task per node on its own
//!   jittered schedule, nodes added and removed while running, passive
//!   `record_*` calls, callbacks and a broadcast stream of
//!   [`HealthEvent`]s, and a cheap [`RoutingTable`] for the router.
//!
//! ```no_run
//! use std::time::Duration;
//! use cluster_health::{ClusterHealth, HealthEvent};
//! use cluster_types::NodeSpec;
//!
//! # async fn demo() -> Result<(), cluster_health::HealthError> {
//! let health = ClusterHealth::builder()
//!     .on_status_change(|change| println!("{}: {} -> {}", change.node, change.from, change.to))
//!     .build()?;
//! let mut events = health.subscribe();
//! health.start([
//!     NodeSpec::new("studio", "http://10.0.0.2:8080"),
//!     NodeSpec::new("mini", "http://10.0.0.3:8080"),
//! ])?;
//!
//! // Outcomes of real requests count too.
//! health.record_success(&"studio".into(), Duration::from_millis(850));
//!
//! while let Ok(event) = events.recv().await {
//!     if let HealthEvent::StatusChanged(change) = event {
//!         if health.is_healthy(&change.node)? {
//!             break;
//!         }
//!     }
//! }
//! health.stop();
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod backoff;
mod checker;
mod clock;
mod cluster;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod profile;
mod tls;
pub mod tracker;
mod wire;

pub use backoff::Backoff;
pub use checker::HealthChecker;
#[cfg(any(test, feature = "mock"))]
pub use checker::MockHealthChecker;
pub use clock::TokioClock;
pub use cluster::{
    CheckReport, ClusterHealth, ClusterHealthBuilder, DEFAULT_EVENT_CAPACITY, HealthEvent,
    NodeHealthReport, ProbeGuard, RoutingTable, StatusChange,
};
pub use error::{BoxError, HealthError, Observation};
pub use http::{
    DEFAULT_MAX_BODY_BYTES, HttpHealthChecker, HttpHealthCheckerBuilder, MODELS_PATH,
    ResponseValidation,
};
pub use tls::{NodeClients, TlsSetupError, client_config as tls_client_config};
pub use tracker::{
    BreakerPolicy, LoadPenalty, NodeHealthTracker, ProbePermit, ProbeSlot, RoutingView, Transition,
};
