//! Helpers shared by the process fixtures (mlx_lm.server, llama-server):
//! free ports, work directories, log tails, fixture checks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::FixtureError;

/// Checks that `dir` exists and holds `files`; the error says to run
/// `cargo xtask setup` (or set `env_var`).
pub(crate) fn require(
    dir: &Path,
    what: &'static str,
    env_var: &'static str,
    files: &[&str],
) -> Result<(), FixtureError> {
    if !dir.is_dir() {
        return Err(FixtureError::Missing {
            what,
            path: dir.to_path_buf(),
            problem: "no such directory".to_owned(),
            env_var,
        });
    }
    match files.iter().find(|f| !dir.join(f).exists()) {
        Some(file) => Err(FixtureError::Missing {
            what,
            path: dir.to_path_buf(),
            problem: format!("{file} is missing"),
            env_var,
        }),
        None => Ok(()),
    }
}

/// `path`, canonicalized.
pub(crate) fn canonical(path: &Path) -> Result<PathBuf, FixtureError> {
    std::fs::canonicalize(path).map_err(|source| FixtureError::Io {
        action: "canonicalize",
        path: path.to_path_buf(),
        source,
    })
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, FixtureError> {
    let io = |source| FixtureError::Io {
        action: "bind",
        path: PathBuf::from("127.0.0.1:0"),
        source,
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

/// A fresh directory under the system temp dir for one server's HF cache
/// and log.
pub(crate) fn make_work_dir() -> Result<PathBuf, FixtureError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "mlx-cluster-fixture-{}-{}-{nanos:09}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
    ));
    create_dir(&dir)?;
    Ok(dir)
}

pub(crate) fn create_dir(path: &Path) -> Result<(), FixtureError> {
    std::fs::create_dir_all(path).map_err(|source| FixtureError::Io {
        action: "create directory",
        path: path.to_path_buf(),
        source,
    })
}

/// The last `lines` lines of a file (lossily decoded), or a note that it
/// cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
