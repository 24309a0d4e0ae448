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
//!
//! Where things live: `api` (the public [`ClusterHealth`] methods),
//! `builder`, `events` (what is reported), `table` (the node entries and
//! the routing table), `shared` (the state every task shares and the
//! bookkeeping after a tracker changed), `dispatch` (the event queue),
//! `task` (the per-node task) and `probe` (the half-open probe permit lent
//! to a real request).

mod api;
mod builder;
mod dispatch;
mod events;
mod probe;
mod shared;
mod table;
mod task;

pub use api::ClusterHealth;
pub use builder::ClusterHealthBuilder;
pub use events::{
    CheckReport, DEFAULT_EVENT_CAPACITY, HealthEvent, NodeHealthReport, StatusChange,
};
pub use probe::ProbeGuard;
pub use table::RoutingTable;

#[cfg(test)]
mod tests;
