//! The mlx-cluster gateway: one OpenAI-compatible address in front of many
//! local inference servers.
#![forbid(unsafe_code)]

pub mod backend;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod relay;
pub mod request;
pub mod server;
pub mod sniff;
pub mod upstream;
