//! cluster-sim: simulated mlx_lm.server nodes, fleets, an agentic coding
//! workload and trace replay, for mlx-cluster's tests, benchmarks and demo.
//!
//! The pieces, from the inside out:
//!
//! * [`model::NodeModel`] — the pure cost model of one node (prompt cache,
//!   serial prefill, batched decode, concurrency limit and queue). No clock,
//!   no I/O: you pass simulated times in and get an [`model::Admission`]
//!   (start, first token, finish, cached tokens) back.
//! * [`simulation::Simulation`] — a discrete-event run of a trace over a set
//!   of `NodeModel`s with a pluggable [`simulation::SimRouter`]: compares
//!   routing strategies on hours of traffic in well under a second.
//! * [`SimNode`] — an HTTP server shaped like mlx_lm.server (same endpoints
//!   and JSON) whose answers follow a `NodeModel` in scaled real time, with
//!   fault injection ([`FaultConfig`]) and the endpoints peer routers probe.
//! * [`fleet::Fleet`] / [`fleet::ProcessFleet`] — many nodes on ephemeral
//!   loopback ports, in-process or as child processes.
//! * [`workload`] — a seeded generator of agentic coding sessions and the
//!   compact JSONL trace format, with an expander back to full requests.
//! * [`hostile`] — misbehaving *clients* (slow-loris, idle floods, raw
//!   malformed requests, mid-stream disconnects) and a well-behaved client
//!   that measures what they cost it, for chaos tests of a gateway.
//! * [`tool_calls`] — OpenAI tool calls on demand (a trigger in the last
//!   user message), streamed in argument fragments, for clients' tool-use
//!   round trips.
//! * [`replay::replay`] — sends a trace to any OpenAI-compatible base URLs
//!   and reports TTFT, latency and cache hit ratio ([`report`]).
//!
//! Cost-model defaults and their sources are in `docs/simulation.md`.
//!
//! # Example: a fleet, a workload and a replay
//!
//! ```no_run
//! use cluster_sim::fleet::{Fleet, FleetConfig};
//! use cluster_sim::replay::{ReplayConfig, replay};
//! use cluster_sim::workload::WorkloadConfig;
//! use cluster_sim::SimNodeConfig;
//!
//! # async fn run() -> Result<(), cluster_sim::SimError> {
//! let node = SimNodeConfig { time_scale: 200.0, ..SimNodeConfig::default() };
//! let fleet = Fleet::start(FleetConfig::uniform(4, &node)).await?;
//! let trace = WorkloadConfig { sessions: 20, ..WorkloadConfig::default() }.generate()?;
//! let report = replay(
//!     &trace,
//!     &ReplayConfig { targets: fleet.urls(), time_scale: 200.0, ..ReplayConfig::default() },
//! )
//! .await?;
//! println!("{}", report.summary.render_text());
//! fleet.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod error;
pub mod faults;
pub mod fleet;
pub mod hostile;
mod metrics;
pub mod model;
pub mod replay;
pub mod report;
pub mod server;
pub mod simulation;
pub mod tokenizer;
pub mod tool_calls;
pub mod workload;

pub use error::SimError;
pub use faults::{FaultConfig, WireFault};
pub use server::{SimNode, SimNodeConfig};
