//! What `mlx-cluster check-config` says beyond the schema: settings that
//! parse and validate but cannot work with this binary or these nodes.
//!
//! - **Errors** (exit 1): a discovery mode whose cargo feature this binary
//!   was built without (`dns`, `k8s`) — `serve` would fail at start-up;
//!   a CA file that cannot be read.
//! - **Warnings** (exit 0): an explicit `health.probe_path` of the model
//!   list, which mlx_lm.server keeps answering 200 after its generation
//!   thread died (unset, each node is probed on its kind's path, `/health`);
//!   certificate verification turned off for a node; per-node cache tags
//!   that are not numbers.

use cluster_types::{ClusterConfig, DiscoveryConfig, NodeSpec};

/// Discovery backends this binary was built with (`dns`, `k8s`).
#[must_use]
pub(crate) fn compiled_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "dns") {
        features.push("dns");
    }
    if cfg!(feature = "k8s") {
        features.push("k8s");
    }
    features
}

/// One finding: the config path it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// Dotted path of the setting, e.g. `discovery.mode`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Errors and warnings of a valid `config`, for a binary built with
/// `features` (see [`compiled_features`]).
#[must_use]
pub(crate) fn check(config: &ClusterConfig, features: &[&str]) -> (Vec<Finding>, Vec<Finding>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let push = |list: &mut Vec<Finding>, path: String, message: String| {
        list.push(Finding { path, message });
    };
    let missing = match &config.discovery {
        DiscoveryConfig::Dns(_) if !features.contains(&"dns") => Some(("dns", "dns")),
        DiscoveryConfig::Kubernetes(_) if !features.contains(&"k8s") => Some(("kubernetes", "k8s")),
        _ => None,
    };
    if let Some((mode, feature)) = missing {
        push(
            &mut errors,
            "discovery.mode".to_owned(),
            format!(
                "{mode:?} discovery needs the `{feature}` cargo feature, which this binary was \
                 built without; install one with it: \
                 `cargo install --path crates/cluster-gateway --features {feature}`"
            ),
        );
    }
    if let Some(path) = &config.health.probe_path
        && path
            .split('?')
            .next()
            .unwrap_or(path)
            .trim_end_matches('/')
            .ends_with("/models")
    {
        push(
            &mut warnings,
            "health.probe_path".to_owned(),
            format!(
                "{path:?} cannot see an mlx_lm.server node whose generation thread died (its \
                 model list keeps answering 200 while every completion fails); leave \
                 health.probe_path unset to probe each node on its kind's path (/health)"
            ),
        );
    }
    if config.node_tls.insecure_skip_verify {
        push(
            &mut warnings,
            "node_tls.insecure_skip_verify".to_owned(),
            "certificates of https:// nodes are not verified: anyone on the path can read \
             and change the traffic"
                .to_owned(),
        );
    }
    if let Some(ca) = &config.node_tls.ca_file
        && let Err(e) = std::fs::read(ca)
    {
        push(
            &mut errors,
            "node_tls.ca_file".to_owned(),
            format!("cannot read {}: {e}", ca.display()),
        );
    }
    if let DiscoveryConfig::Static(s) = &config.discovery {
        for (i, node) in s.nodes.iter().enumerate() {
            node_findings(i, node, &mut errors, &mut warnings);
        }
    }
    (errors, warnings)
}

fn node_findings(
    i: usize,
    node: &NodeSpec,
    errors: &mut Vec<Finding>,
    warnings: &mut Vec<Finding>,
) {
    let at = |field: &str| format!("discovery.nodes[{i}].{field}");
    if node.tls.insecure_skip_verify {
        warnings.push(Finding {
            path: at("tls.insecure_skip_verify"),
            message: format!(
                "the certificate of {} is not verified: anyone on the path can read and \
                 change the traffic",
                node.url
            ),
        });
    }
    if let Some(ca) = &node.tls.ca_file
        && let Err(e) = std::fs::read(ca)
    {
        errors.push(Finding {
            path: at("tls.ca_file"),
            message: format!("cannot read {}: {e}", ca.display()),
        });
    }
    for tag in [
        cluster_facade::TAG_CACHE_ENTRIES,
        cluster_facade::TAG_CACHE_TOKENS,
    ] {
        if let Some(v) = node.tags.get(tag)
            && v.trim().parse::<u64>().is_err()
        {
            warnings.push(Finding {
                path: at(&format!("tags.{tag}")),
                message: format!("{v:?} is not a number: ignored"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_types::{ConfigFormat, DnsDiscovery, KubernetesDiscovery};

    fn paths(list: &[Finding]) -> Vec<&str> {
        list.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn a_backend_not_compiled_in_is_an_error() {
        let dns = ClusterConfig {
            discovery: DiscoveryConfig::Dns(DnsDiscovery {
                srv_name: "_mlx._tcp.lab.internal".to_owned(),
                ..DnsDiscovery::default()
            }),
            ..ClusterConfig::default()
        };
        let (errors, _) = check(&dns, &[]);
        assert_eq!(paths(&errors), ["discovery.mode"]);
        assert!(errors[0].message.contains("--features dns"), "{errors:?}");
        assert!(check(&dns, &["dns"]).0.is_empty());
        let k8s = ClusterConfig {
            discovery: DiscoveryConfig::Kubernetes(KubernetesDiscovery::default()),
            ..ClusterConfig::default()
        };
        assert!(check(&k8s, &["dns"]).0[0].message.contains("`k8s`"));
        assert!(check(&k8s, &["dns", "k8s"]).0.is_empty());
    }

    #[test]
    fn settings_that_cannot_work_are_warned_about() {
        let config = ClusterConfig::parse(
            r#"
            [discovery]
            nodes = [
              { id = "a", url = "https://10.0.0.1:8443", tls = { insecure_skip_verify = true }, tags = { prompt_cache_entries = "many" } },
              { id = "b", url = "https://10.0.0.2:8443", tls = { ca_file = "/nonexistent/ca.pem" } },
            ]
            [health]
            probe_path = "/v1/models"
            "#,
            ConfigFormat::Toml,
        )
        .expect("valid");
        let (errors, warnings) = check(&config, &compiled_features());
        assert_eq!(paths(&errors), ["discovery.nodes[1].tls.ca_file"]);
        assert_eq!(
            paths(&warnings),
            [
                "health.probe_path",
                "discovery.nodes[0].tls.insecure_skip_verify",
                "discovery.nodes[0].tags.prompt_cache_entries"
            ]
        );
        assert!(warnings[0].message.contains("generation thread"));
        let (errors, warnings) = check(&ClusterConfig::default(), &[]);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{errors:?} {warnings:?}"
        );
    }
}
