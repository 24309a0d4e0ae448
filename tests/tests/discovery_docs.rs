//! Every configuration in docs/discovery.md is valid, and the static and DNS
//! ones build their discovery source.
#![allow(clippy::unwrap_used)]

use cluster_types::{ClusterConfig, ConfigFormat, DiscoveryConfig};

const DOC: &str = include_str!("../../docs/discovery.md");

fn toml_blocks() -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in DOC.lines() {
        match &mut current {
            None if line.trim() == "```toml" => current = Some(String::new()),
            Some(block) if line.trim() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[tokio::test]
async fn every_documented_configuration_is_valid() {
    let blocks = toml_blocks();
    let mut modes = Vec::new();
    for block in &blocks {
        let config = ClusterConfig::parse(block, ConfigFormat::Toml)
            .unwrap_or_else(|e| panic!("docs/discovery.md config is invalid:\n{block}\n{e}"));
        modes.push(config.discovery.mode());
        match &config.discovery {
            DiscoveryConfig::Static(_) | DiscoveryConfig::Dns(_) => {
                let source = cluster_discovery::source_from_config(&config.discovery)
                    .await
                    .unwrap();
                assert!(!source.name().is_empty());
            }
            // Building a Kubernetes source needs a cluster or a kubeconfig.
            DiscoveryConfig::Kubernetes(k) => assert_eq!(k.namespace, "inference"),
            // Building an mDNS source would multicast on this machine's
            // interfaces: only the namespace tests (discovery_mdns.rs) do.
            DiscoveryConfig::Mdns(m) => assert_eq!(m.service_types.len(), 2),
        }
    }
    assert_eq!(modes, ["static", "dns", "kubernetes", "kubernetes", "mdns"]);
}

#[test]
fn the_rbac_grants_exactly_what_discovery_uses() {
    assert!(DOC.contains("apiGroups: [\"discovery.k8s.io\"]"));
    assert!(DOC.contains("resources: [\"endpointslices\"]"));
    assert!(DOC.contains("verbs: [\"get\", \"list\", \"watch\"]"));
    assert!(DOC.contains("kind: RoleBinding"));
}
