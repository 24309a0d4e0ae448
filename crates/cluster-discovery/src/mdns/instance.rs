//! From DNS-SD instances to nodes: the TXT keys, the instance name, the
//! address chosen, and the table of instances a browse has resolved.
//!
//! Pure data and functions: the browsing task feeds [`BrowseEvent`]s to an
//! [`InstanceTable`] and publishes its [`snapshot`](InstanceTable::snapshot)
//! when it changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use cluster_types::{NodeId, NodeSpec, Scheme};

use crate::{DiscoveredNode, DiscoverySnapshot, NodeOrigin};

/// TXT key: relative capacity of the node, an integer ≥ 1 (default 1).
pub const TXT_WEIGHT: &str = "weight";
/// TXT key: the model the node serves; copied to the node tag `model`
/// (the models a node is routed for still come from its `GET /v1/models`).
pub const TXT_MODEL: &str = "model";
/// TXT key: what server the node is (`mlx-lm`, `llama-cpp`, `vllm`,
/// `sglang`, `openai`); copied to the node tag `kind`.
pub const TXT_KIND: &str = "kind";
/// TXT key: path prefix of the OpenAI API on the node, e.g. `/api` for
/// `http://host:port/api/v1/...` (default none).
pub const TXT_PATH: &str = "path";
/// TXT key: `http` or `https` (default: the configured scheme).
pub const TXT_SCHEME: &str = "scheme";
/// TXT key prefix: `tag.rack=a` becomes the node tag `rack = "a"`.
pub const TXT_TAG_PREFIX: &str = "tag.";
/// Node tag holding the service type an instance was found under.
pub const TAG_SERVICE: &str = "mdns.service";
/// Node tag holding the host name of an instance's SRV record.
pub const TAG_HOST: &str = "mdns.host";

/// What a browse knows about one resolved instance (its SRV, TXT and
/// address records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    /// The service type browsed, e.g. `_mlx-lm._tcp.local.`.
    pub(crate) service_type: String,
    /// Full name, e.g. `mac-1._mlx-lm._tcp.local.` (instance label escaped).
    pub(crate) fullname: String,
    /// SRV target host, e.g. `mac-1.local.`.
    pub(crate) host: String,
    /// SRV port.
    pub(crate) port: u16,
    /// Every address of the host.
    pub(crate) addresses: Vec<IpAddr>,
    /// TXT key/value pairs, keys lowercased (a key without value maps to
    /// the empty string; the first of duplicate keys wins).
    pub(crate) txt: BTreeMap<String, String>,
}

/// What the browser reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BrowseEvent {
    /// An instance was resolved, or its records changed.
    Resolved(Instance),
    /// An instance left (goodbye packet or TTL expiry).
    Removed {
        /// The service type browsed.
        service_type: String,
        /// The instance's full name.
        fullname: String,
    },
}

/// The instance label of `fullname` under `service_type`, unescaped
/// (`Mac\.Studio._mlx-lm._tcp.local.` → `Mac.Studio`). `None` when
/// `fullname` is not an instance of `service_type`.
pub(crate) fn instance_name(fullname: &str, service_type: &str) -> Option<String> {
    let ty = service_type.trim_end_matches('.');
    let full = fullname.trim_end_matches('.');
    if full.len() <= ty.len() + 1 {
        return None;
    }
    let (label, suffix) = full.split_at(full.len() - ty.len());
    if !suffix.eq_ignore_ascii_case(ty) {
        return None;
    }
    let label = label.strip_suffix('.')?;
    let label = unescape(label);
    (!label.is_empty()).then_some(label)
}

/// Undoes DNS presentation escapes: `\.`, `\\` and `\DDD` (decimal byte).
fn unescape(label: &str) -> String {
    let mut bytes = Vec::with_capacity(label.len());
    let raw = label.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            let digits = &raw[i + 1..raw.len().min(i + 4)];
            if digits.len() == 3 && digits.iter().all(u8::is_ascii_digit) {
                let value = digits
                    .iter()
                    .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    bytes.push(byte);
                    i += 4;
                    continue;
                }
            }
            bytes.push(raw[i + 1]);
            i += 2;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The address a node URL uses: IPv4 first (routable, then link-local),
/// then global / unique-local IPv6, then loopback; IPv6 link-local
/// addresses are never used (a URL would need the interface's zone).
/// Among equals, the smallest address, so every gateway picks the same.
pub(crate) fn pick_address(addresses: &[IpAddr]) -> Option<IpAddr> {
    fn rank(ip: &IpAddr) -> Option<u8> {
        match ip {
            IpAddr::V4(v4) if v4.is_unspecified() || v4.is_multicast() => None,
            IpAddr::V4(v4) if v4.is_loopback() => Some(3),
            IpAddr::V4(v4) if v4.is_link_local() => Some(1),
            IpAddr::V4(_) => Some(0),
            IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => None,
            IpAddr::V6(v6) if v6.is_loopback() => Some(4),
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => None,
            IpAddr::V6(_) => Some(2),
        }
    }
    addresses
        .iter()
        .filter_map(|ip| rank(ip).map(|r| (r, *ip)))
        .min()
        .map(|(_, ip)| ip)
}

/// The node an instance stands for, or why it cannot be one.
pub(crate) fn instance_to_node(
    instance: &Instance,
    default_scheme: Scheme,
) -> Result<DiscoveredNode, String> {
    let name = instance_name(&instance.fullname, &instance.service_type).ok_or_else(|| {
        format!(
            "{} is not an instance of {}",
            instance.fullname, instance.service_type
        )
    })?;
    if instance.port == 0 {
        return Err("its SRV record has port 0".to_owned());
    }
    let ip = pick_address(&instance.addresses)
        .ok_or_else(|| format!("no usable address in {:?}", instance.addresses))?;
    let scheme = match instance.txt.get(TXT_SCHEME).map(String::as_str) {
        None | Some("") => default_scheme,
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => return Err(format!("TXT scheme={other:?} is not http or https")),
    };
    let path = instance
        .txt
        .get(TXT_PATH)
        .map(|p| p.trim().trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.starts_with('/') {
                p.to_owned()
            } else {
                format!("/{p}")
            }
        })
        .unwrap_or_default();
    let id = NodeId::from(name);
    let url = crate::normalize_base_url(
        &id,
        &format!(
            "{}://{}{path}",
            scheme.as_str(),
            SocketAddr::new(ip, instance.port)
        ),
    )
    .map_err(|e| e.to_string())?;

    let mut spec = NodeSpec::new(id, url);
    for (key, value) in &instance.txt {
        if let Some(tag) = key.strip_prefix(TXT_TAG_PREFIX)
            && !tag.is_empty()
        {
            spec.tags.insert(tag.to_owned(), value.clone());
        }
    }
    if let Some(weight) = instance.txt.get(TXT_WEIGHT) {
        match weight.trim().parse::<u32>() {
            Ok(w) if w >= 1 => spec.weight = w,
            _ => tracing::warn!(
                instance = %instance.fullname,
                weight = %weight,
                "TXT weight is not an integer >= 1; using 1"
            ),
        }
    }
    for key in [TXT_MODEL, TXT_KIND] {
        if let Some(value) = instance.txt.get(key).filter(|v| !v.is_empty()) {
            spec.tags.insert(key.to_owned(), value.clone());
        }
    }
    let host = instance.host.trim_end_matches('.').to_owned();
    spec.tags
        .insert(TAG_SERVICE.to_owned(), instance.service_type.clone());
    spec.tags.insert(TAG_HOST.to_owned(), host.clone());
    Ok(DiscoveredNode::new(
        spec,
        NodeOrigin::Mdns {
            service_type: instance.service_type.clone(),
            instance: instance.fullname.clone(),
            host,
            port: instance.port,
        },
    ))
}

/// The instances a browse has resolved, keyed by (position of the service
/// type in the configuration, lowercased full name): snapshots list the
/// first service type's instances first, so when one node is advertised
/// under two types the first type's record wins the dedupe by id.
#[derive(Debug, Default)]
pub(crate) struct InstanceTable {
    service_types: Vec<String>,
    instances: BTreeMap<(usize, String), Entry>,
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    instance: Instance,
    generation: u64,
}

impl InstanceTable {
    /// An empty table for the browsed `service_types` (normalized, with the
    /// final dot).
    pub(crate) fn new(service_types: Vec<String>) -> Self {
        Self {
            service_types,
            instances: BTreeMap::new(),
            generation: 0,
        }
    }

    fn key(&self, service_type: &str, fullname: &str) -> Option<(usize, String)> {
        let index = self
            .service_types
            .iter()
            .position(|t| t.eq_ignore_ascii_case(service_type))?;
        Some((index, fullname.to_ascii_lowercase()))
    }

    /// Applies one event; whether the set of instances (or one of them)
    /// changed.
    pub(crate) fn apply(&mut self, event: BrowseEvent) -> bool {
        match event {
            BrowseEvent::Resolved(instance) => {
                let Some(key) = self.key(&instance.service_type, &instance.fullname) else {
                    return false;
                };
                let generation = self.generation;
                match self.instances.get_mut(&key) {
                    Some(entry) if entry.instance == instance => {
                        entry.generation = generation;
                        false
                    }
                    _ => {
                        self.instances.insert(
                            key,
                            Entry {
                                instance,
                                generation,
                            },
                        );
                        true
                    }
                }
            }
            BrowseEvent::Removed {
                service_type,
                fullname,
            } => self
                .key(&service_type, &fullname)
                .is_some_and(|key| self.instances.remove(&key).is_some()),
        }
    }

    /// Starts a resync (after the browse was restarted): instances not
    /// resolved again before [`drop_stale`](Self::drop_stale) are dropped.
    pub(crate) fn mark_stale(&mut self) {
        self.generation += 1;
    }

    /// Drops the instances not seen since [`mark_stale`](Self::mark_stale);
    /// whether any was dropped.
    pub(crate) fn drop_stale(&mut self) -> bool {
        let before = self.instances.len();
        let current = self.generation;
        self.instances.retain(|_, e| e.generation == current);
        self.instances.len() != before
    }

    /// The nodes of every usable instance, in key order. Instances that
    /// cannot be nodes (no usable address, bad TXT scheme) are left out
    /// with a warning.
    pub(crate) fn snapshot(&self, default_scheme: Scheme) -> DiscoverySnapshot {
        let nodes = self
            .instances
            .values()
            .filter_map(
                |entry| match instance_to_node(&entry.instance, default_scheme) {
                    Ok(node) => Some(node),
                    Err(why) => {
                        tracing::warn!(instance = %entry.instance.fullname, %why, "mDNS instance left out");
                        None
                    }
                },
            )
            .collect();
        DiscoverySnapshot::new(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TY: &str = "_mlx-lm._tcp.local.";

    pub(crate) fn instance(name: &str, ip: &str, port: u16, txt: &[(&str, &str)]) -> Instance {
        Instance {
            service_type: TY.to_owned(),
            fullname: format!("{name}.{TY}"),
            host: format!("{name}.local."),
            port,
            addresses: vec![ip.parse().unwrap()],
            txt: txt
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn instance_names() {
        assert_eq!(
            instance_name("mac-1._mlx-lm._tcp.local.", TY).as_deref(),
            Some("mac-1")
        );
        assert_eq!(
            instance_name("Mac\\.Studio._MLX-LM._tcp.local", TY).as_deref(),
            Some("Mac.Studio")
        );
        assert_eq!(
            instance_name("Office\\032Mac._mlx-lm._tcp.local.", TY).as_deref(),
            Some("Office Mac")
        );
        assert_eq!(
            instance_name("a\\\\b._mlx-lm._tcp.local.", TY).as_deref(),
            Some("a\\b")
        );
        assert_eq!(instance_name("_mlx-lm._tcp.local.", TY), None);
        assert_eq!(instance_name("x._openai._tcp.local.", TY), None);
    }

    #[test]
    fn addresses_are_picked_deterministically() {
        let pick = |list: &[&str]| {
            pick_address(&list.iter().map(|a| a.parse().unwrap()).collect::<Vec<_>>())
                .map(|ip| ip.to_string())
        };
        assert_eq!(
            pick(&["fe80::1", "2001:db8::1", "192.0.2.9", "192.0.2.3"]).as_deref(),
            Some("192.0.2.3")
        );
        assert_eq!(
            pick(&["169.254.7.2", "2001:db8::1"]).as_deref(),
            Some("169.254.7.2")
        );
        assert_eq!(
            pick(&["127.0.0.1", "2001:db8::1"]).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(pick(&["fe80::1"]), None);
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn txt_keys_become_the_node() {
        let i = instance(
            "mac-1",
            "192.0.2.7",
            8080,
            &[
                ("weight", "3"),
                ("model", "qwen3-8b"),
                ("kind", "mlx-lm"),
                ("tag.rack", "desk"),
                ("path", "api/"),
                ("unknown", "x"),
            ],
        );
        let node = instance_to_node(&i, Scheme::Http).unwrap();
        assert_eq!(node.id().as_str(), "mac-1");
        assert_eq!(node.url(), "http://192.0.2.7:8080/api");
        assert_eq!(node.spec.weight, 3);
        let tags = &node.spec.tags;
        assert_eq!(tags["model"], "qwen3-8b");
        assert_eq!(tags["kind"], "mlx-lm");
        assert_eq!(tags["rack"], "desk");
        assert_eq!(tags[TAG_SERVICE], TY);
        assert_eq!(tags[TAG_HOST], "mac-1.local");
        assert!(!tags.contains_key("unknown"));
        assert_eq!(node.origin.backend(), "mdns");

        let https = instance(
            "b",
            "2001:db8::2",
            443,
            &[("scheme", "https"), ("weight", "0")],
        );
        let node = instance_to_node(&https, Scheme::Http).unwrap();
        assert_eq!(node.url(), "https://[2001:db8::2]:443");
        assert_eq!(node.spec.weight, 1, "a bad weight falls back to 1");

        let bad = instance("c", "192.0.2.1", 80, &[("scheme", "ftp")]);
        assert!(
            instance_to_node(&bad, Scheme::Http)
                .unwrap_err()
                .contains("ftp")
        );
        let no_addr = instance("d", "fe80::1", 80, &[]);
        assert!(instance_to_node(&no_addr, Scheme::Http).is_err());
        let no_port = instance("e", "192.0.2.1", 0, &[]);
        assert!(instance_to_node(&no_port, Scheme::Http).is_err());
    }

    #[test]
    fn table_follows_resolve_change_and_remove() {
        let mut table = InstanceTable::new(vec![TY.to_owned(), "_openai._tcp.local.".to_owned()]);
        let a = instance("a", "192.0.2.1", 8080, &[]);
        assert!(table.apply(BrowseEvent::Resolved(a.clone())));
        assert!(
            !table.apply(BrowseEvent::Resolved(a.clone())),
            "same records"
        );
        let mut a2 = a.clone();
        a2.txt.insert("weight".into(), "2".into());
        assert!(table.apply(BrowseEvent::Resolved(a2)));
        assert_eq!(table.snapshot(Scheme::Http).nodes[0].spec.weight, 2);

        // The same instance name under the second type sorts after the first.
        let mut openai = instance("a", "192.0.2.9", 9000, &[]);
        openai.service_type = "_openai._tcp.local.".into();
        openai.fullname = "a._openai._tcp.local.".into();
        assert!(table.apply(BrowseEvent::Resolved(openai)));
        let snap = table.snapshot(Scheme::Http);
        assert_eq!(snap.nodes.len(), 2);
        assert_eq!(snap.nodes[0].url(), "http://192.0.2.1:8080");

        // Another service type is ignored.
        let mut other = instance("z", "192.0.2.3", 1, &[]);
        other.service_type = "_http._tcp.local.".into();
        assert!(!table.apply(BrowseEvent::Resolved(other)));

        assert!(table.apply(BrowseEvent::Removed {
            service_type: TY.into(),
            fullname: "A._mlx-lm._tcp.local.".into(),
        }));
        assert!(!table.apply(BrowseEvent::Removed {
            service_type: TY.into(),
            fullname: "a._mlx-lm._tcp.local.".into(),
        }));
        assert_eq!(table.instances.len(), 1);
    }

    #[test]
    fn resync_drops_what_was_not_seen_again() {
        let mut table = InstanceTable::new(vec![TY.to_owned()]);
        let a = instance("a", "192.0.2.1", 1, &[]);
        let b = instance("b", "192.0.2.2", 1, &[]);
        table.apply(BrowseEvent::Resolved(a.clone()));
        table.apply(BrowseEvent::Resolved(b));
        table.mark_stale();
        assert!(!table.apply(BrowseEvent::Resolved(a)));
        assert!(table.drop_stale());
        let snap = table.snapshot(Scheme::Http);
        assert_eq!(snap.nodes.len(), 1);
        assert_eq!(snap.nodes[0].id().as_str(), "a");
        assert!(!table.drop_stale());
    }
}
