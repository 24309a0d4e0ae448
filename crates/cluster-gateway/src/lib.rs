//! The mlx-cluster gateway: one OpenAI-compatible address in front of many
//! local inference servers (mlx_lm.server, llama.cpp, vLLM, ...), built on
//! [`cluster_facade::Cluster`]. This crate is the `mlx-cluster` binary and
//! the library behind it.
//!
//! - [`request`] parses a client request once and builds its
//!   [`cluster_types::RoutingContext`] (model, session, prefix fingerprint);
//! - [`proxy`] routes it, forwards it with the pooled [`upstream`] client and
//!   retries on the next-best node before the first byte;
//! - [`relay`] streams the answer back frame by frame, sniffing time to
//!   first token and usage ([`sniff`]), and ends a broken stream with an SSE
//!   error event;
//! - [`anthropic`] serves the Anthropic Messages API (Claude Code),
//!   translated to chat completions for nodes that speak only OpenAI;
//! - [`ops`] serves status, models, metrics, health, admin and the
//!   dashboard; [`decisions`] the records of the latest routing decisions,
//!   [`timeseries`] the dashboard's charts; [`server`] serves it all with graceful shutdown, over TLS
//!   when configured ([`tls`]);
//! - [`reload`] re-reads the configuration (`SIGHUP`, admin endpoint) and
//!   adds or removes nodes at run time;
//! - [`auth`] checks client keys and their rate limits; [`limits`] caps
//!   open connections (the header, body and size limits are listed there);
//! - [`cli`], [`announce`] and `demo` (feature `demo`, default on: it links
//!   the simulator) are the command line.
//!
//! Endpoints, CLI and operations are described in `docs/gateway.md`.
//!
//! # Example: a gateway in front of one node
//!
//! ```no_run
//! use cluster_facade::Cluster;
//! use cluster_gateway::gateway::Gateway;
//! use cluster_types::{ClusterConfig, ConfigFormat};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClusterConfig::parse(
//!     r#"
//!     [discovery]
//!     mode = "static"
//!     nodes = [{ id = "studio", url = "http://127.0.0.1:8080" }]
//!     "#,
//!     ConfigFormat::Toml,
//! )?;
//! let listener = cluster_gateway::server::bind(config.gateway.listen).await?;
//! let cluster = Cluster::start(config).await?;
//! let gateway = Gateway::from_cluster(cluster.clone());
//! cluster_gateway::server::serve(listener, gateway, cluster_gateway::server::shutdown_signal()).await?;
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod announce;
pub mod anthropic;
pub mod auth;
pub mod backend;
mod canonical;
pub mod checks;
pub mod cli;
pub mod decisions;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod first_frame;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod request;
pub mod server;
pub mod sniff;
pub mod timeseries;
pub mod tls;
pub mod upstream;
