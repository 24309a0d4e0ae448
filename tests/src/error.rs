//! The one error type of the fixtures.

use std::path::PathBuf;
use std::time::Duration;

/// Why a fixture could not be found, started or stopped.
///
/// Every variant that concerns a running server carries the server log's
/// path and its last lines, so a failing test shows why without a rerun.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FixtureError {
    /// Neither `MLX_CLUSTER_CACHE` nor `HOME` is set.
    #[error(
        "cannot find the fixture cache: set HOME or MLX_CLUSTER_CACHE, then run `cargo xtask setup`"
    )]
    NoCacheDir,

    /// A fixture that `cargo xtask setup` builds is not there (or is
    /// half-built).
    #[error(
        "{what} not found at {path} ({problem}); run `cargo xtask setup` \
         (it prints the {env_var} value to use), or point {env_var} at one"
    )]
    Missing {
        /// What is missing, e.g. "mlx venv".
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The file that is missing or the check that failed.
        problem: String,
        /// The environment variable that overrides the location.
        env_var: &'static str,
    },

    /// A test certificate could not be made.
    #[error("cannot make a test certificate: {message}")]
    Tls {
        /// What rcgen said.
        message: String,
    },

    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The server process could not be spawned.
    #[error("cannot spawn {program}: {source}")]
    Spawn {
        /// The program that was run.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The server exited before it answered `GET /v1/models`.
    #[error("the server on port {port} exited during start-up ({status}); log {log}:\n{log_tail}")]
    Exited {
        /// The port it was started on.
        port: u16,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },

    /// The port the server must use is taken by another process.
    #[error("port {port} on 127.0.0.1 is already in use; log {log}:\n{log_tail}")]
    PortInUse {
        /// The port.
        port: u16,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },

    /// The server did not become ready within the deadline.
    #[error(
        "the server at {url} not ready after {timeout:?} (last answer: {last}); log {log}:\n{log_tail}"
    )]
    StartupTimeout {
        /// The URL that was polled.
        url: String,
        /// The deadline.
        timeout: Duration,
        /// The last poll's outcome.
        last: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },

    /// A request the fixture made to its server failed.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },

    /// The server answered something other than what the fixture expects.
    #[error("unexpected answer from {url}: {detail}")]
    Unexpected {
        /// The URL.
        url: String,
        /// What was expected and what came.
        detail: String,
    },

    /// A setup command (e.g. `ip netns add`) failed.
    #[error("`{command}` failed: {output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        output: String,
    },

    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),

    /// A workload plan or a client run went wrong (bad shape, client
    /// failure, unreadable records).
    #[error("agentic workload: {0}")]
    Plan(String),

    /// A process the fixture waits for did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
}
