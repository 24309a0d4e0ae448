//! What mlx-cluster's tests share, written once: loopback ports
//! ([`free_port`], [`closed_port`]), waiting without sleeping blindly
//! ([`poll_until`]), and fake OpenAI-compatible nodes ([`FakeNode`]) whose
//! answers a test scripts — JSON replies, error statuses, streams that the
//! test feeds or that never end ([`reply`]).
//!
//! A dev-dependency only: no crate depends on it for its own build
//! (`cargo xtask tidy` checks). It needs tokio and axum, nothing from the
//! cluster.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use test_support::{FakeNode, poll_until, reply};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let node = FakeNode::start(|_seen| reply::completion("hello", 20, 2)).await;
//! assert!(node.url().starts_with("http://127.0.0.1:"));
//! poll_until("the node is counted", Duration::from_secs(5), || node.hits() == 0).await;
//! # }
//! ```
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod net;
mod node;
mod poll;
pub mod reply;

pub use net::{closed_port, closed_url, free_port, serve};
pub use node::{FakeNode, Seen};
pub use poll::{poll_until, poll_until_async};
