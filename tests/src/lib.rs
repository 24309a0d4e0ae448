//! Fixtures shared by the integration tests of mlx-cluster.
//!
//! - [`mlx`]: a real `mlx_lm.server` serving a tiny random-weight Llama model
//!   on 127.0.0.1, from the Python venv and model directory that
//!   `cargo xtask setup` caches under [`cache_dir()`] (and a variant of the
//!   model that ends its answers, for Claude Code).
//! - [`claude_code`]: the real Claude Code CLI, run headless in a throw-away
//!   home against a gateway.
//! - [`llama`]: a real llama.cpp `llama-server` (built from source by
//!   `cargo xtask setup`) serving a tiny random-weight GGUF model.
//! - [`dns`]: a real `dnsmasq` serving SRV and address records on 127.0.0.1.
//! - [`tls`]: a throwaway CA and server certificate for TLS tests.
//! - [`k8s`]: a Kubernetes API server speaking EndpointSlice JSON (list,
//!   chunked watch, bookmarks, 410 Gone) for the real kube client.
//! - [`netns`]: two network namespaces joined by a veth pair, for multicast
//!   (mDNS) tests that never touch the machine's real interfaces.
//! - [`zeroconf`]: python-zeroconf as a real mDNS responder in a namespace.
//!
//! A missing fixture is a test **failure** (an [`FixtureError`] whose message
//! says to run `cargo xtask setup`), never a skip.
//!
//! ```no_run
//! use cluster_tests::mlx::{MlxFixture, MlxServer};
//!
//! # async fn demo() -> Result<(), cluster_tests::FixtureError> {
//! let fixture = MlxFixture::locate()?;
//! let mut server = MlxServer::start(&fixture).await?;
//! let models = reqwest::get(format!("{}/v1/models", server.base_url())).await;
//! assert!(models.is_ok());
//! server.kill().await?; // the node is down: connection refused
//! server.restart().await?; // back on the same port, with an empty prompt cache
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::path::PathBuf;

pub mod agentic;
pub mod claude_code;
pub mod dns;
mod error;
pub mod k8s;
pub mod llama;
pub mod mlx;
pub mod netns;
mod process;
pub mod routers;
pub mod tls;
pub mod zeroconf;

/// Where the deployment checks' tools are: `kubernetes-validate` and
/// `hadolint` in the venv of `scripts/requirements-deploy.txt`
/// (`$MLX_CLUSTER_DEPLOY_VENV`, else `<cache_dir>/venv-deploy-<key>`).
///
/// # Errors
/// [`FixtureError::Missing`] when `cargo xtask setup` has not built it.
pub fn deploy_tools_bin() -> Result<PathBuf, FixtureError> {
    small_venv_bin(
        "deploy",
        "MLX_CLUSTER_DEPLOY_VENV",
        include_bytes!("../../scripts/requirements-deploy.txt"),
    )
}

pub use error::FixtureError;

/// Environment variable that overrides [`cache_dir()`].
pub const CACHE_DIR_ENV: &str = "MLX_CLUSTER_CACHE";

/// Where `cargo xtask setup` keeps slow-to-build fixtures (the mlx venv, the
/// tiny model): `$MLX_CLUSTER_CACHE` if set, else `$HOME/.cache/mlx-cluster`.
///
/// # Errors
/// [`FixtureError::NoCacheDir`] when neither variable is set.
pub fn cache_dir() -> Result<PathBuf, FixtureError> {
    cache_dir_from(|name| std::env::var_os(name))
}

pub(crate) fn cache_dir_from(
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, FixtureError> {
    if let Some(dir) = env(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = env("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(FixtureError::NoCacheDir)?;
    Ok(PathBuf::from(home).join(".cache").join("mlx-cluster"))
}

/// The `bin/` directory of a small venv that `cargo xtask setup` builds
/// from `scripts/requirements-NAME.txt` (whose bytes are `requirements`):
/// `$ENV_VAR`, else `<cache_dir>/venv-NAME-<fnv1a(requirements)>`.
///
/// # Errors
/// [`FixtureError::Missing`] when the venv is not there or is half-built.
pub fn small_venv_bin(
    name: &str,
    env_var: &'static str,
    requirements: &[u8],
) -> Result<PathBuf, FixtureError> {
    small_venv_bin_from(name, env_var, requirements, |v| std::env::var_os(v))
}

pub(crate) fn small_venv_bin_from(
    name: &str,
    env_var: &'static str,
    requirements: &[u8],
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, FixtureError> {
    let venv = match env(env_var).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => cache_dir_from(&env)?.join(format!("venv-{name}-{}", fnv1a(&[requirements]))),
    };
    if !venv.join("bin/python").exists() || !venv.join(".complete").exists() {
        return Err(FixtureError::Missing {
            what: "python venv",
            path: venv,
            problem: "bin/python or .complete is missing".to_owned(),
            env_var,
        });
    }
    Ok(venv.join("bin"))
}

/// FNV-1a (64-bit) over `parts`, each followed by a `0xff` separator byte,
/// printed as the top 48 bits in 12 lowercase hex digits.
///
/// This is the key of the cache directories (`venv-<key>`,
/// `tiny-model-<key>`), and must stay identical to `xtask`'s `fnv1a`.
pub fn fnv1a(parts: &[&[u8]]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(PRIME);
    }
    format!("{:012x}", hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_stable() {
        // Pinned values: changing the algorithm would orphan every cache.
        assert_eq!(fnv1a(&[]), "cbf29ce48422");
        assert_eq!(fnv1a(&[b""]), "af64724c8602");
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn cache_dir_prefers_override_then_home() {
        let over = cache_dir_from(|n| (n == CACHE_DIR_ENV).then(|| "/x/cache".into()));
        assert_eq!(over.unwrap(), PathBuf::from("/x/cache"));
        let home = cache_dir_from(|n| (n == "HOME").then(|| "/home/u".into()));
        assert_eq!(home.unwrap(), PathBuf::from("/home/u/.cache/mlx-cluster"));
        assert!(matches!(
            cache_dir_from(|_| None),
            Err(FixtureError::NoCacheDir)
        ));
    }
}
