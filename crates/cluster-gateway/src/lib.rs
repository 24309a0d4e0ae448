//! The mlx-cluster gateway: one OpenAI-compatible address in front of many
//! local inference servers (mlx_lm.server, llama.cpp, vLLM, ...), built on
//! [`cluster_facade::Cluster`]. This crate is the `mlx-cluster` binary and
//! the library behind it.
//!
//! Modules are private; what other crates use is re-exported here. Where
//! things live (see `docs/architecture.md`):
//!
//! - `request.rs` parses a client request once and builds its
//!   [`cluster_types::RoutingContext`] (model, session, prefix fingerprint);
//! - `proxy.rs` routes it, forwards it with the pooled client of
//!   `upstream.rs` and retries on the next-best node before the first byte;
//! - `relay.rs` streams the answer back frame by frame, sniffing time to
//!   first token and usage (`sniff.rs`), and ends a broken stream with an
//!   SSE error event;
//! - `anthropic/` serves the Anthropic Messages API (Claude Code),
//!   translated to chat completions for nodes that speak only OpenAI;
//! - `routes.rs` is the table of HTTP routes; `ops.rs` serves status,
//!   models, metrics, health, admin and the dashboard, `decisions.rs` the
//!   records of the latest routing decisions, `timeseries.rs` the
//!   dashboard's charts; `server.rs` serves it all with graceful shutdown,
//!   over TLS when configured (`tls.rs`);
//! - `reload.rs` re-reads the configuration (`SIGHUP`, admin endpoint) and
//!   adds or removes nodes at run time;
//! - `auth.rs` checks client keys and their rate limits; `limits.rs` caps
//!   open connections (the header, body and size limits are listed there);
//! - `cli.rs`, `announce.rs` and `demo.rs` (feature `demo`, default on: it
//!   links the simulator) are the command line.
//!
//! Endpoints, CLI and operations are described in `docs/gateway.md`.
//!
//! # Example: a gateway in front of one node
//!
//! ```no_run
//! use cluster_facade::Cluster;
//! use cluster_gateway::Gateway;
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
//! let listener = cluster_gateway::bind(config.gateway.listen).await?;
//! let cluster = Cluster::start(config).await?;
//! let gateway = Gateway::from_cluster(cluster.clone());
//! cluster_gateway::serve(listener, gateway, cluster_gateway::shutdown_signal()).await?;
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod announce;
mod anthropic;
mod auth;
mod backend;
mod canonical;
mod checks;
mod cli;
mod decisions;
#[cfg(feature = "demo")]
mod demo;
mod error;
mod first_frame;
mod gateway;
mod limits;
mod metrics;
mod ops;
mod proxy;
mod relay;
mod reload;
mod request;
mod routes;
mod server;
mod sniff;
mod telemetry;
mod timeseries;
mod tls;
mod upstream;

pub use anthropic::{Endpoint, MessagesRequest, ReplyMeta, StreamTranslator, translate_response};
pub use auth::{ClientKeys, sha256_hex};
pub use backend::ClusterHandle;
pub use cli::{Cli, run};
pub use error::GatewayError;
pub use gateway::{Gateway, GatewaySettings};
pub use limits::{MAX_JSON_DEPTH, json_too_deep, open_fds};
pub use request::{ApiKind, ParsedRequest};
pub use server::{bind, serve, shutdown_signal};
pub use sniff::{JsonSniffer, SseSniffer, usage_from_json};
pub use telemetry::{Traces, init_logging_and_traces};
