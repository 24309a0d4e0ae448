//! The mlx-cluster gateway: one OpenAI-compatible address in front of many
//! local inference servers.
#![forbid(unsafe_code)]

pub mod error;
pub mod metrics;
pub mod relay;
pub mod request;
pub mod sniff;
pub mod upstream;
