//! How the gateway verifies the certificates of `https://` nodes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TLS settings toward `https://` nodes: globally (`node_tls`) and per node
/// (`discovery.nodes[].tls`, which wins over the global one field by
/// field). Certificates are always checked against the system roots; a
/// `ca_file` adds the CA certificates of a PEM file (a lab CA).
/// `insecure_skip_verify` accepts any certificate — for self-signed lab
/// setups only; the gateway logs a warning for every client built with it.
///
/// Defaults: no CA file, verification on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeTls {
    /// PEM file of CA certificates trusted on top of the system roots.
    /// Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate without verification. Default false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

impl NodeTls {
    /// Whether these are the defaults (nothing to configure).
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The settings for a node: its own `ca_file` if it has one, else
    /// `global`'s; verification off if either turns it off.
    #[must_use]
    pub fn over(&self, global: &Self) -> Self {
        Self {
            ca_file: self.ca_file.clone().or_else(|| global.ca_file.clone()),
            insecure_skip_verify: self.insecure_skip_verify || global.insecure_skip_verify,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_settings_win_over_global_ones() {
        let global = NodeTls {
            ca_file: Some("/etc/lab-ca.pem".into()),
            insecure_skip_verify: false,
        };
        let node = NodeTls::default();
        assert_eq!(node.over(&global), global);
        let own = NodeTls {
            ca_file: Some("/n.pem".into()),
            insecure_skip_verify: true,
        };
        assert_eq!(own.over(&global), own);
        assert!(NodeTls::default().is_default());
    }
}
