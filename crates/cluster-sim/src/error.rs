//! The crate's error type.

use std::net::SocketAddr;

/// Errors of the simulator's library API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A listening socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {field}: {message}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A trace file could not be parsed.
    #[error("trace {source_name}, line {line}: {message}")]
    Trace {
        /// File name or `<memory>`.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("http client: {source}")]
    Client {
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// A replay target URL is unusable.
    #[error("invalid target URL {url:?}: {message}")]
    InvalidTarget {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A child node process failed to start or report its address.
    #[error("node process {index}: {message}")]
    Process {
        /// Index of the node in the fleet.
        index: usize,
        /// What went wrong.
        message: String,
    },
}
