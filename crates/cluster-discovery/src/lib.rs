//! Node discovery for mlx-cluster: finds the inference servers, validates
//! them and announces who came and who went.
//!
//! - [`DiscoverySource`] is the small trait every backend implements: it
//!   returns the whole current set of nodes as a [`DiscoverySnapshot`], and a
//!   source that can watch also pushes snapshots ([`DiscoverySource::watch`]).
//! - Backends: [`StaticSource`] (always compiled), `DnsSource` (feature
//!   `dns`: SRV records through hickory-resolver) and `KubernetesSource`
//!   (feature `k8s`: EndpointSlices through kube's watcher) and
//!   `MdnsSource` (feature `mdns`: DNS-SD browsing through mdns-sd, with
//!   `MdnsAnnouncer` to advertise a node that does not advertise itself).
//! - [`ClusterDiscovery`] runs one source: periodic, never-overlapping
//!   refreshes, dedupe by id and by URL, validation of new nodes
//!   ([`NodeValidator`]), and [`DiscoveryEvent`]s as callbacks and as a
//!   stream. A failing source keeps the last good set of nodes.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use cluster_discovery::{ClusterDiscovery, DiscoveryCallbacks, DiscoveryEvent, StaticSource};
//! use cluster_types::NodeSpec;
//! use futures::StreamExt;
//!
//! # async fn example() -> Result<(), cluster_discovery::DiscoveryError> {
//! let source = StaticSource::new(vec![
//!     NodeSpec::new("mac-1", "http://192.0.2.10:8080"),
//!     NodeSpec::new("mac-2", "http://192.0.2.11:8080"),
//! ]);
//! let discovery = ClusterDiscovery::builder(Arc::new(source))
//!     .refresh_interval(Duration::from_secs(30))
//!     .callbacks(DiscoveryCallbacks::new().on_node_lost(|node| {
//!         eprintln!("lost {}", node.id());
//!     }))
//!     .build();
//! let mut events = Box::pin(discovery.events());
//! let first = discovery.start().await?;
//! println!("first refresh found {:?}", first.discovered);
//! while let Some(event) = events.next().await {
//!     if let DiscoveryEvent::Discovered(node) = event {
//!         println!("{} serves {:?}", node.id(), node.models);
//!     }
//! }
//! discovery.stop().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

// The Rust examples of docs/discovery.md compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/discovery.md")]
mod discovery_md {}

mod config;
mod diff;
mod discovery;
#[cfg(test)]
mod discovery_tests;
#[cfg(feature = "dns")]
pub mod dns;
mod error;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "k8s")]
pub mod k8s;
#[cfg(feature = "mdns")]
pub mod mdns;
mod node;
mod source;
mod validate;

pub use config::{options_from_config, source_from_config};
pub use discovery::{
    ClusterDiscovery, ClusterDiscoveryBuilder, DEFAULT_EVENT_CAPACITY, DEFAULT_REFRESH_INTERVAL,
    DEFAULT_VALIDATION_TIMEOUT, DiscoveryCallbacks, DiscoveryEvent, DiscoveryOptions,
    RefreshReport,
};
#[cfg(feature = "dns")]
pub use dns::{DnsSource, DnsSourceConfig, SrvPriorities};
pub use error::{BoxError, DiscoveryError};
#[cfg(feature = "k8s")]
pub use k8s::{KubernetesSource, KubernetesSourceConfig};
#[cfg(feature = "mdns")]
pub use mdns::{AnnounceConfig, AnnouncerState, MdnsAnnouncer, MdnsSource, MdnsSourceConfig};
pub use node::{DiscoveredNode, DiscoverySnapshot, NodeOrigin, ValidatedNode, normalize_base_url};
#[cfg(any(test, feature = "mock"))]
pub use source::MockDiscoverySource;
pub use source::{DiscoverySource, SnapshotStream, StaticSource};
#[cfg(any(test, feature = "mock"))]
pub use validate::MockNodeValidator;
pub use validate::{AcceptAll, HttpNodeValidator, NodeValidator};
