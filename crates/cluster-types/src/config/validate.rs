//! Semantic validation of a decoded [`ClusterConfig`]: every problem, with
//! its path.

use std::collections::HashMap;
use std::time::Duration;

use super::{
    BackoffConfig, CacheConfig, ClusterConfig, ConfigErrors, ConfigProblem, DiscoveryConfig,
    DnsDiscovery, GatewayConfig, HealthConfig, KubernetesDiscovery, MdnsDiscovery, RoutingConfig,
    StaticDiscovery,
};
use crate::duration;

/// Smallest fingerprint block size accepted by validation.
const MIN_BLOCK_BYTES: u32 = 16;
/// Largest fingerprint block size accepted by validation (1 MiB).
const MAX_BLOCK_BYTES: u32 = 1 << 20;
/// Smallest request body limit accepted by validation.
const MIN_BODY_BYTES: u64 = 1024;

struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem::new(path, message));
    }

    fn positive(&mut self, path: &str, d: Duration) {
        if d.is_zero() {
            self.push(path, "must be greater than 0s");
        }
    }

    fn at_least<T: PartialOrd + std::fmt::Display>(&mut self, path: &str, v: T, min: T) {
        if v < min {
            self.push(path, format!("must be at least {min} (got {v})"));
        }
    }

    fn unit_interval(&mut self, path: &str, v: f64) {
        if !(0.0..=1.0).contains(&v) {
            self.push(path, format!("must be between 0 and 1 (got {v})"));
        }
    }
}

impl ClusterConfig {
    /// Every semantic problem of this configuration (empty when valid).
    #[must_use]
    pub fn problems(&self) -> Vec<ConfigProblem> {
        self.problems_with_node_indices(None)
    }

    /// Like [`problems`](Self::problems), for a static node list from which
    /// undecodable nodes were dropped: `indices[k]` is the position in the
    /// file of `nodes[k]`, used in paths. "At least one node" is not checked
    /// then (the dropped nodes were already reported).
    pub(crate) fn problems_with_node_indices(
        &self,
        indices: Option<&[usize]>,
    ) -> Vec<ConfigProblem> {
        let mut p = Problems(Vec::new());
        discovery(&mut p, &self.discovery, indices);
        health(&mut p, &self.health);
        backoff(&mut p, &self.backoff);
        cache(&mut p, &self.cache);
        routing(&mut p, &self.routing);
        gateway(&mut p, &self.gateway);
        p.0.extend(self.observability.problems());
        p.0
    }

    /// Checks the configuration's semantics (ranges, orderings, URLs,
    /// uniqueness). [`parse`](Self::parse) calls this already; call it
    /// after building or changing a config in code.
    ///
    /// # Errors
    /// [`ConfigErrors`] with every problem found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

fn discovery(p: &mut Problems, d: &DiscoveryConfig, indices: Option<&[usize]>) {
    match d {
        DiscoveryConfig::Static(s) => static_discovery(p, s, indices),
        DiscoveryConfig::Dns(d) => dns(p, d),
        DiscoveryConfig::Kubernetes(k) => kubernetes(p, k),
        DiscoveryConfig::Mdns(m) => mdns(p, m),
    }
}

fn static_discovery(p: &mut Problems, s: &StaticDiscovery, indices: Option<&[usize]>) {
    if s.nodes.is_empty() && indices.is_none() {
        p.push("discovery.nodes", "must list at least one node");
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut urls: HashMap<String, usize> = HashMap::new();
    for (k, node) in s.nodes.iter().enumerate() {
        let i = indices.and_then(|m| m.get(k).copied()).unwrap_or(k);
        let at = |field: &str| format!("discovery.nodes[{i}].{field}");
        let id = node.id.as_str();
        if id.is_empty() {
            p.push(at("id"), "must not be empty");
        } else if let Some(bad) = id.chars().find(|c| c.is_whitespace() || c.is_control()) {
            p.push(
                at("id"),
                format!("must not contain whitespace or control characters (found {bad:?})"),
            );
        } else if let Some(first) = ids.insert(id, i) {
            p.push(
                at("id"),
                format!("duplicate node id {id:?} (also discovery.nodes[{first}].id)"),
            );
        }
        match check_base_url(&node.url) {
            Err(msg) => p.push(at("url"), msg),
            Ok(normalized) => {
                if let Some(first) = urls.insert(normalized, i) {
                    p.push(
                        at("url"),
                        format!(
                            "duplicate node url {:?} (also discovery.nodes[{first}].url)",
                            node.url
                        ),
                    );
                }
            }
        }
        if node.weight == 0 {
            p.push(at("weight"), "must be at least 1");
        }
        if let Some(kind) = node.tags.get(crate::KIND_TAG)
            && let Err(e) = kind.parse::<crate::NodeKind>()
        {
            p.push(at("tags.kind"), e.to_string());
        }
        if node
            .api_key
            .as_ref()
            .is_some_and(crate::node::ApiKey::is_empty)
        {
            p.push(at("api_key"), "must not be empty (omit it instead)");
        }
        node_tags(p, node, at);
    }
    p.positive("discovery.refresh_interval", s.refresh_interval);
    p.positive("discovery.validation_timeout", s.validation_timeout);
}

fn dns(p: &mut Problems, d: &DnsDiscovery) {
    let name = d.srv_name.trim_end_matches('.');
    if name.is_empty() {
        p.push(
            "discovery.srv_name",
            "must not be empty (e.g. \"_mlx._tcp.example.internal\")",
        );
    } else if let Err(msg) = check_dns_name(name) {
        p.push("discovery.srv_name", msg);
    }
    if d.port_override == Some(0) {
        p.push(
            "discovery.port_override",
            "must be a port between 1 and 65535",
        );
    }
    if d.nameserver.is_some_and(|ns| ns.port() == 0) {
        p.push("discovery.nameserver", "port must be between 1 and 65535");
    }
    p.positive("discovery.min_refresh", d.min_refresh);
    if d.max_refresh < d.min_refresh {
        p.push(
            "discovery.max_refresh",
            format!(
                "must be at least discovery.min_refresh ({})",
                duration::format(d.min_refresh)
            ),
        );
    }
    p.positive("discovery.validation_timeout", d.validation_timeout);
}

fn kubernetes(p: &mut Problems, k: &KubernetesDiscovery) {
    if let Err(msg) = check_dns_label(&k.namespace) {
        p.push("discovery.namespace", msg);
    }
    match (&k.service_name, &k.label_selector) {
        (Some(_), Some(_)) => p.push(
            "discovery.service_name",
            "set either service_name or label_selector, not both",
        ),
        (None, None) => p.push(
            "discovery.service_name",
            "set one of service_name or label_selector",
        ),
        (Some(name), None) => {
            if let Err(msg) = check_dns_label(name) {
                p.push("discovery.service_name", msg);
            }
        }
        (None, Some(sel)) => {
            if sel.trim().is_empty() {
                p.push("discovery.label_selector", "must not be empty");
            }
        }
    }
    if k.port_name.is_empty() {
        p.push("discovery.port_name", "must not be empty");
    }
    p.positive("discovery.validation_timeout", k.validation_timeout);
}

fn mdns(p: &mut Problems, m: &MdnsDiscovery) {
    if m.service_types.is_empty() {
        p.push(
            "discovery.service_types",
            "must list at least one service type (e.g. \"_mlx-lm._tcp.local.\")",
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, ty) in m.service_types.iter().enumerate() {
        let at = format!("discovery.service_types[{i}]");
        if let Err(msg) = check_service_type(ty) {
            p.push(at, msg);
        } else if let Some(first) = seen.insert(ty.trim_end_matches('.').to_ascii_lowercase(), i) {
            p.push(
                at,
                format!("duplicate service type (also discovery.service_types[{first}])"),
            );
        }
    }
    for (i, name) in m.interfaces.iter().enumerate() {
        if name.trim().is_empty() || name.contains(char::is_whitespace) {
            p.push(
                format!("discovery.interfaces[{i}]"),
                format!("must be an interface name such as \"en0\" (got {name:?})"),
            );
        }
    }
    if m.port == 0 {
        p.push("discovery.port", "must be a port between 1 and 65535");
    }
    p.positive("discovery.validation_timeout", m.validation_timeout);
}

/// A DNS-SD service type: `_service._tcp.local` with an optional final dot;
/// the service label is 1-15 characters (RFC 6763 §7.2).
fn check_service_type(ty: &str) -> Result<(), String> {
    let example = "(e.g. \"_mlx-lm._tcp.local.\")";
    let Some(service) = ty.trim_end_matches('.').strip_suffix("._tcp.local") else {
        return Err(format!(
            "must end with \"._tcp.local.\" {example}, got {ty:?}"
        ));
    };
    let Some(name) = service.strip_prefix('_') else {
        return Err(format!("must start with '_' {example}, got {ty:?}"));
    };
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the service name must be 1-15 letters, digits or '-' {example}, got {ty:?}"
        ))
    }
}

fn health(p: &mut Problems, h: &HealthConfig) {
    p.positive("health.check_interval", h.check_interval);
    p.positive("health.timeout", h.timeout);
    if !h.check_interval.is_zero() && h.timeout >= h.check_interval {
        p.push(
            "health.timeout",
            format!(
                "must be shorter than health.check_interval ({})",
                duration::format(h.check_interval)
            ),
        );
    }
    p.at_least(
        "health.max_consecutive_failures",
        h.max_consecutive_failures,
        1,
    );
    p.unit_interval("health.unhealthy_threshold", h.unhealthy_threshold);
    p.unit_interval("health.degraded_threshold", h.degraded_threshold);
    if h.unhealthy_threshold > h.degraded_threshold {
        p.push(
            "health.unhealthy_threshold",
            format!(
                "must not be greater than health.degraded_threshold ({})",
                h.degraded_threshold
            ),
        );
    }
    p.at_least("health.recovery_successes", h.recovery_successes, 1);
    if let Some(path) = &h.probe_path {
        if !path.starts_with('/') {
            p.push("health.probe_path", "must start with '/'");
        } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.push("health.probe_path", "must not contain whitespace");
        }
    }
    p.positive("health.window", h.window);
    p.at_least("health.max_samples", h.max_samples, 1);
}

fn backoff(p: &mut Problems, b: &BackoffConfig) {
    p.positive("backoff.initial", b.initial);
    if b.max < b.initial {
        p.push(
            "backoff.max",
            format!(
                "must be at least backoff.initial ({})",
                duration::format(b.initial)
            ),
        );
    }
    if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
        p.push(
            "backoff.multiplier",
            format!("must be at least 1 (got {})", b.multiplier),
        );
    }
    p.unit_interval("backoff.jitter", b.jitter);
}

fn cache(p: &mut Problems, c: &CacheConfig) {
    p.at_least("cache.max_prefixes_per_node", c.max_prefixes_per_node, 1);
    p.at_least("cache.max_tokens_per_node", c.max_tokens_per_node, 1);
    p.positive("cache.entry_ttl", c.entry_ttl);
    if !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&c.fingerprint_block_bytes) {
        p.push(
            "cache.fingerprint_block_bytes",
            format!(
                "must be between {MIN_BLOCK_BYTES} and {MAX_BLOCK_BYTES} (got {})",
                c.fingerprint_block_bytes
            ),
        );
    }
    p.positive("cache.sync_interval", c.sync_interval);
    for (i, prompt) in c.warmup_prompts.iter().enumerate() {
        if prompt.trim().is_empty() {
            p.push(format!("cache.warmup_prompts[{i}]"), "must not be empty");
        }
    }
    p.at_least("cache.warmup_concurrency", c.warmup_concurrency, 1);
    p.positive("cache.warmup_timeout", c.warmup_timeout);
}

fn routing(p: &mut Problems, r: &RoutingConfig) {
    if r.max_retries > 10 {
        p.push(
            "routing.max_retries",
            format!("must be at most 10 (got {})", r.max_retries),
        );
    }
    p.positive("routing.session_ttl", r.session_ttl);
    if r.session_header.is_empty() {
        p.push("routing.session_header", "must not be empty");
    } else if !r
        .session_header
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        p.push(
            "routing.session_header",
            format!(
                "must be a lowercase HTTP header name (got {:?})",
                r.session_header
            ),
        );
    }
    p.at_least("routing.max_sessions", r.max_sessions, 1);
}

fn gateway(p: &mut Problems, g: &GatewayConfig) {
    if g.admin_token
        .as_ref()
        .is_some_and(crate::node::ApiKey::is_empty)
    {
        p.push("gateway.admin_token", "must not be empty (omit it instead)");
    }
    p.positive("gateway.connect_timeout", g.connect_timeout);
    p.positive("gateway.first_byte_timeout", g.first_byte_timeout);
    p.positive("gateway.idle_timeout", g.idle_timeout);
    if let Some(t) = g.request_timeout {
        p.positive("gateway.request_timeout", t);
        if !t.is_zero() && t < g.first_byte_timeout {
            p.push(
                "gateway.request_timeout",
                format!(
                    "must be at least gateway.first_byte_timeout ({})",
                    duration::format(g.first_byte_timeout)
                ),
            );
        }
    }
    p.at_least("gateway.max_body_bytes", g.max_body_bytes, MIN_BODY_BYTES);
    p.0.extend(super::access::client_key_problems(&g.api_keys, &|i| {
        format!("gateway.api_keys[{i}]")
    }));
    if let Some(tls) = &g.tls {
        if tls.cert.as_os_str().is_empty() {
            p.push("gateway.tls.cert", "must not be empty");
        }
        if tls.key.as_os_str().is_empty() {
            p.push("gateway.tls.key", "must not be empty");
        }
    }
    p.positive("gateway.header_read_timeout", g.header_read_timeout);
    p.positive("gateway.body_read_timeout", g.body_read_timeout);
    p.at_least("gateway.max_connections", g.max_connections, 1);
    p.at_least("gateway.max_header_bytes", g.max_header_bytes, 8192);
    if g.default_model.trim().is_empty() {
        p.push("gateway.default_model", "must not be empty");
    }
    for (name, target) in &g.model_aliases {
        let at = format!("gateway.model_aliases.{name:?}");
        let pattern = name.strip_suffix('*').unwrap_or(name);
        if pattern.contains('*') {
            p.push(&at, "`*` may only end a name (a prefix pattern)");
        }
        if target.trim().is_empty() {
            p.push(&at, "must name a model");
        }
    }
}

/// The tags the gateway reads (see `crate::node_tags`).
fn node_tags(p: &mut Problems, node: &crate::node::NodeSpec, at: impl Fn(&str) -> String) {
    if let Err(e) = node.api() {
        p.push(
            at(&format!("tags.{}", crate::node_tags::API_TAG)),
            e.to_string(),
        );
    }
    if let Err(e) = node.max_output_tokens() {
        p.push(
            at(&format!("tags.{}", crate::node_tags::MAX_OUTPUT_TOKENS_TAG)),
            e,
        );
    }
}

/// Checks a node base URL and returns a normalized form for duplicate
/// detection (lowercase scheme and host, default port made explicit).
pub(crate) fn check_base_url(url: &str) -> Result<String, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        let lower = url.to_ascii_lowercase();
        if let Some(rest) = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
        {
            let _ = rest;
            return Err("not an http(s) URL (scheme must be lowercase)".to_owned());
        }
        return Err("not an http(s) URL".to_owned());
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not an http(s) URL (contains whitespace)".to_owned());
    }
    if url.contains(['?', '#']) {
        return Err("must not contain a query or fragment".to_owned());
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.contains('@') {
        return Err("must not contain credentials (use api_key)".to_owned());
    }
    let (host, port) = split_host_port(authority)?;
    if host.is_empty() {
        return Err("not an http(s) URL (missing host)".to_owned());
    }
    if path.ends_with('/') {
        return Err("must not end with '/'".to_owned());
    }
    if path.ends_with("/v1") {
        return Err("must be the base URL without /v1".to_owned());
    }
    let port = port.unwrap_or(if scheme == "http" { 80 } else { 443 });
    Ok(format!(
        "{scheme}://{}:{port}{path}",
        host.to_ascii_lowercase()
    ))
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        let Some((h, after)) = rest.split_once(']') else {
            return Err("not an http(s) URL (unclosed '[' in host)".to_owned());
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("not an http(s) URL (bad IPv6 address {h:?})"));
        }
        match after {
            "" => (h, None),
            p if p.starts_with(':') => (h, Some(&p[1..])),
            _ => return Err("not an http(s) URL (junk after ']')".to_owned()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        return Err(format!(
            "not an http(s) URL (invalid character {bad:?} in host)"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("not an http(s) URL (bad port {p:?})")),
            Ok(n) => Some(n),
        },
    };
    Ok((host, port))
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("must be a DNS name of at most 253 characters".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("must be a DNS name (bad label {label:?})"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("must be a DNS name (bad label {label:?})"));
        }
    }
    Ok(())
}

fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a lowercase DNS label (a-z, 0-9, '-', at most 63 characters), got {name:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        for ok in [
            "http://127.0.0.1:8080",
            "https://mac.local",
            "http://[::1]:8080",
            "http://host/prefix",
            "http://my_host:1",
        ] {
            assert!(check_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://x",
            "127.0.0.1:8080",
            "HTTP://x",
            "http://",
            "http://:80",
            "http://x:0",
            "http://x:99999",
            "http://x:port",
            "http://x/",
            "http://x/v1",
            "http://x?a=1",
            "http://u:p@x",
            "http://a b",
            "http://[::1",
            "http://[zz]:1",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_base_url("http://X:80").unwrap(),
            check_base_url("http://x").unwrap()
        );
    }

    #[test]
    fn service_types() {
        assert!(check_service_type("_mlx-lm._tcp.local.").is_ok());
        assert!(check_service_type("_openai._tcp.local").is_ok());
        assert!(check_service_type("_mlx-lm._udp.local.").is_err());
        assert!(check_service_type("mlx-lm._tcp.local.").is_err());
        assert!(check_service_type("_._tcp.local.").is_err());
        assert!(check_service_type("_a-very-long-service-name._tcp.local.").is_err());
    }

    #[test]
    fn dns_names() {
        assert!(check_dns_name("_mlx._tcp.example.com").is_ok());
        assert!(check_dns_name("a..b").is_err());
        assert!(check_dns_name("a b").is_err());
        assert!(check_dns_label("mlx-nodes").is_ok());
        assert!(check_dns_label("Mlx").is_err());
        assert!(check_dns_label("-a").is_err());
    }
}
