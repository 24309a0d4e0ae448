//! The mlx-cluster facade: one [`Router`] core — health filter, strategies,
//! sticky sessions and a model of every node's prompt cache — published as
//! one immutable snapshot, with request guards that feed the outcome back.
//!
//! # Routing in one paragraph
//! `select` loads the current [`ClusterSnapshot`] (one atomic load), picks
//! the candidate list (healthy, else degraded, else saturated, else one
//! half-open probe; only nodes serving the requested model; never nodes the
//! request already tried), and lets the configured strategy choose. Ours,
//! `cache-aware`, estimates each node's time to first token from the prefix
//! blocks it is believed to hold, its learned prefill rate and the work
//! already queued there, and breaks ties with a rendezvous hash so gateway
//! replicas agree. The returned [`RequestGuard`] counts the request in
//! flight until [`RequestGuard::finish`] reports the outcome, which corrects
//! the cache model with the `cached_tokens` the node reported.
//! `docs/routing.md` documents every parameter.
//!
//! # Example
//! ```
//! use cluster_facade::{NodeEntry, RequestOutcome, Router, RouterParams};
//! use cluster_metrics::ManualClock;
//! use cluster_types::{NodeSpec, NodeStatus, PrefixFingerprint, RoutingContext, RoutingReason, SegmentKind};
//!
//! let clock = ManualClock::new();
//! let router = Router::new(RouterParams::default(), clock.shared()); // cache-aware
//! router.publish(
//!     ["a", "b", "c"]
//!         .map(|id| NodeEntry::new(NodeSpec::new(id, format!("http://{id}:8080")), NodeStatus::Healthy))
//!         .to_vec(),
//! );
//! let ctx = |question: &str| {
//!     let mut fp = PrefixFingerprint::builder(256);
//!     fp.push_segment(SegmentKind::System, &"You are a coding agent. ".repeat(500))
//!         .push_segment(SegmentKind::Message { role: "user" }, question);
//!     RoutingContext { fingerprint: fp.finish(), prompt_tokens_estimate: 3_000, ..Default::default() }
//! };
//! let first = router.select(&ctx("fix the bug")).unwrap();
//! let node = first.decision.node_id.clone();
//! first.guard.finish(RequestOutcome::success_with_usage(3_000, 0, 50));
//! // The next request with the same long system prompt goes where it is cached.
//! let second = router.select(&ctx("and add a test")).unwrap();
//! assert_eq!(second.decision.node_id, node);
//! assert_eq!(second.decision.reason, RoutingReason::CacheHit);
//! ```

#![forbid(unsafe_code)]

pub mod cache_model;
mod cluster;
mod config;
mod coordinator;
mod decisions;
#[cfg(test)]
mod decisions_tests;
mod error;
mod events;
mod guard;
mod layered;
mod learn;
mod live;
mod node_tls;
mod outcome;
mod params;
mod prefill_gate;
mod probe;
mod published;
mod router;
#[cfg(test)]
mod router_tests;
mod shared;
mod snapshot;
mod strategy;
mod ticket;

pub use cache_model::{CacheModel, CacheModelParams};
pub use cluster::{Cluster, ClusterBuilder, EVENT_CAPACITY, ReloadReport};
/// The mDNS announcer and its node check, for `mlx-cluster announce`
/// (feature `mdns`).
#[cfg(feature = "mdns")]
pub use cluster_discovery::{AnnounceConfig, AnnouncerState, HttpNodeValidator, MdnsAnnouncer};
pub use config::{load_config, load_config_with_env};
pub use coordinator::{WARMUP_USER_MESSAGE, warmup_context};
pub use decisions::{DecisionLog, DecisionQuery};
pub use error::FacadeError;
pub use events::ClusterEvent;
pub use guard::{RequestGuard, Selection};
pub use layered::{RUNTIME_ORIGIN, TAG_RUNTIME};
pub use outcome::{FailureKind, RequestOutcome};
pub use params::{CostParams, RouterParams};
pub use prefill_gate::TAG_PREFILL_CONCURRENCY;
pub use published::{
    LlamaSlot, PublishedMetrics, SlotSummary, SlotsError, parse_metrics, parse_slots,
    summarize_slots,
};
pub use router::{Router, TAG_CACHE_ENTRIES, TAG_CACHE_TOKENS};
pub use snapshot::{ClusterSnapshot, NodeEntry, NodeTarget};
