//! [`Cluster`]: discovery → health → routing → cache coordination, behind
//! one cloneable handle (the seeds' `ClusterManager`, without the
//! process-wide singleton).
//!
//! Where things live: `builder` (start-up, stage by stage), `api` (the
//! public methods), `state` (the shared state and the snapshot rebuild),
//! `health_link` (passive outcomes and probe permits between routing and
//! health), `tasks` (the background loops) and `reload` (configuration
//! reloads and runtime nodes).

mod api;
mod builder;
mod health_link;
mod reload;
mod state;
mod tasks;

pub use api::Cluster;
pub use builder::{ClusterBuilder, EVENT_CAPACITY};
pub use reload::ReloadReport;

#[cfg(test)]
mod reload_tests;
#[cfg(test)]
pub(crate) mod tests;
