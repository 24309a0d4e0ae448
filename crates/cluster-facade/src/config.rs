//! Loading a [`ClusterConfig`] from a file plus `MLX_CLUSTER_…` environment
//! overrides.

use std::path::Path;

use cluster_types::{ClusterConfig, ConfigFormat};

use crate::error::FacadeError;

/// Reads the configuration at `path` — TOML, JSON or YAML by its extension
/// (`.toml`, `.json`, `.yaml`/`.yml`) — and applies the process's
/// `MLX_CLUSTER_…` environment variables (see
/// [`cluster_types::apply_env_overrides`]) before validating.
///
/// # Errors
/// [`FacadeError::UnknownConfigFormat`], [`FacadeError::ConfigRead`], or
/// [`FacadeError::InvalidConfig`] listing every problem.
pub fn load_config(path: &Path) -> Result<ClusterConfig, FacadeError> {
    load_config_with_env(path, std::env::vars())
}

/// Like [`load_config`] with explicit environment variables (tests, or a
/// binary that filters them).
///
/// # Errors
/// As [`load_config`].
pub fn load_config_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<ClusterConfig, FacadeError> {
    let format = ConfigFormat::from_path(path).ok_or_else(|| FacadeError::UnknownConfigFormat {
        path: path.to_owned(),
    })?;
    let text = std::fs::read_to_string(path).map_err(|source| FacadeError::ConfigRead {
        path: path.to_owned(),
        source,
    })?;
    ClusterConfig::parse_with_env(&text, format, env).map_err(|problems| {
        FacadeError::InvalidConfig {
            path: Some(path.to_owned()),
            problems,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cluster_types::LoadBalanceStrategy;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("facade-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn formats_by_extension_and_env_overrides() {
        let d = tmpdir("ext");
        let toml = write(&d, "c.toml", "[routing]\nstrategy = \"round-robin\"\n");
        let json = write(&d, "c.json", r#"{"routing": {"strategy": "least-loaded"}}"#);
        let yaml = write(&d, "c.yml", "routing:\n  strategy: cache-score\n");
        let none: Vec<(String, String)> = vec![];
        assert_eq!(
            load_config_with_env(&toml, none.clone())
                .unwrap()
                .routing
                .strategy,
            LoadBalanceStrategy::RoundRobin
        );
        assert_eq!(
            load_config_with_env(&json, none.clone())
                .unwrap()
                .routing
                .strategy,
            LoadBalanceStrategy::LeastLoaded
        );
        assert_eq!(
            load_config_with_env(&yaml, none).unwrap().routing.strategy,
            LoadBalanceStrategy::CacheScore
        );
        let env = vec![
            (
                "MLX_CLUSTER_HEALTH__CHECK_INTERVAL".to_owned(),
                "10s".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = load_config_with_env(&toml, env).unwrap();
        assert_eq!(c.health.check_interval, Duration::from_secs(10));
        assert!(load_config(&toml).is_ok());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn errors_are_typed() {
        let d = tmpdir("err");
        let ini = write(&d, "c.ini", "");
        let e = load_config_with_env(&ini, vec![]).unwrap_err();
        assert!(matches!(e, FacadeError::UnknownConfigFormat { .. }), "{e}");
        let missing = d.join("missing.toml");
        let e = load_config_with_env(&missing, vec![]).unwrap_err();
        assert!(matches!(e, FacadeError::ConfigRead { .. }), "{e}");
        let bad = write(
            &d,
            "bad.toml",
            "[health]\ntimeout = \"10s\"\n[backoff]\njitter = 2.0\n",
        );
        let e = load_config_with_env(&bad, vec![]).unwrap_err();
        assert_eq!(e.code(), "INVALID_CONFIG");
        match &e {
            FacadeError::InvalidConfig { problems, path } => {
                assert!(problems.len() >= 2);
                assert_eq!(path.as_deref(), Some(bad.as_path()));
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("bad.toml"));
        std::fs::remove_dir_all(d).unwrap();
    }

    /// An unknown strategy name is a config problem with its path, from the
    /// file and from the environment alike — never a silent default.
    #[test]
    fn unknown_strategy_is_an_error() {
        let d = tmpdir("strategy");
        let file = write(&d, "s.toml", "[routing]\nstrategy = \"p2c\"\n");
        let ok = write(&d, "ok.toml", "");
        let env = vec![(
            "MLX_CLUSTER_ROUTING__STRATEGY".to_owned(),
            "fastest".to_owned(),
        )];
        for (path, env, name) in [(&file, vec![], "p2c"), (&ok, env, "fastest")] {
            match load_config_with_env(path, env).unwrap_err() {
                FacadeError::InvalidConfig { problems, .. } => {
                    let text = problems.to_string();
                    assert!(text.contains("routing.strategy"), "{text}");
                    assert!(text.contains(name), "{text}");
                    assert!(text.contains("latency-based"), "{text}");
                }
                other => panic!("{other}"),
            }
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
