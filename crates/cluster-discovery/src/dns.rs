//! DNS SRV discovery (feature `dns`), with hickory-resolver 0.26.
//!
//! One SRV name (e.g. `_mlx._tcp.cluster.example`) lists the nodes: each
//! record's target host and port is one node. Targets are resolved to
//! addresses from the answer's additional section when the server sends
//! them there (dnsmasq and most authoritative servers do), else with an
//! A/AAAA lookup. The node's URL uses the address (the HTTP client then
//! needs no DNS of its own), IPv4 first.
//!
//! - **Id**: `target:port` without the final dot, e.g.
//!   `mac-1.cluster.example:8080`: stable while the record stays.
//! - **Priority**: by default only the records of the lowest priority are
//!   used (RFC 2782: higher priorities are backups); with
//!   [`SrvPriorities::All`] every record is used.
//! - **Weight**: the SRV weight, with 0 mapped to 1 (node weights are
//!   relative capacities and must be positive).
//! - **Freshness**: the snapshot is valid for the smallest TTL of the SRV and
//!   address records used, clamped to `[min_refresh, max_refresh]`;
//!   [`ClusterDiscovery`](crate::ClusterDiscovery) refreshes when it runs
//!   out.
//! - **Errors**: NXDOMAIN → [`DiscoveryError::DnsNameNotFound`]; an empty
//!   answer → [`DiscoveryError::DnsNoRecords`]; timeouts and refused
//!   connections → [`DiscoveryError::DnsLookup`] (the last good snapshot is
//!   kept). A target whose name does not resolve (NXDOMAIN / no address) is
//!   left out with a warning; any other failure to resolve a target fails
//!   the whole snapshot.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use cluster_types::{NodeId, NodeSpec, Scheme};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record};
use hickory_resolver::{Resolver, TokioResolver};

use crate::{DiscoveredNode, DiscoveryError, DiscoverySnapshot, DiscoverySource, NodeOrigin};

/// Which SRV records of the answer become nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SrvPriorities {
    /// Only the records with the lowest priority value (the default): the
    /// others are backups in RFC 2782's sense.
    #[default]
    LowestOnly,
    /// Every record, whatever its priority (the priority is still in the
    /// node's origin and tags).
    All,
}

/// Default [`DnsSourceConfig::min_refresh`]: 5 s.
pub const DEFAULT_DNS_MIN_REFRESH: Duration = Duration::from_secs(5);
/// Default [`DnsSourceConfig::max_refresh`]: 5 min.
pub const DEFAULT_DNS_MAX_REFRESH: Duration = Duration::from_secs(300);
/// Default [`DnsSourceConfig::query_timeout`]: 2 s.
pub const DEFAULT_DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Configuration of a [`DnsSource`].
///
/// Defaults (from [`DnsSourceConfig::new`]): system nameservers, scheme
/// `http`, refresh between 5 s and 5 min following the TTLs, 2 s query
/// timeout, 2 attempts, no resolver cache, no hosts file, lowest priority
/// only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSourceConfig {
    /// The SRV name, e.g. `_mlx._tcp.cluster.example`. Always queried as an
    /// absolute name (no search domains).
    pub srv_name: String,
    /// Nameservers to ask (`ip:port`, UDP with TCP fallback). Empty (the
    /// default): the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Port used instead of the records' ports. Default none.
    pub port_override: Option<u16>,
    /// Scheme of the node URLs. Default `http`.
    pub scheme: Scheme,
    /// Shortest time a snapshot is used, whatever the TTL. Default 5 s.
    pub min_refresh: Duration,
    /// Longest time a snapshot is used, whatever the TTL. Default 5 min.
    pub max_refresh: Duration,
    /// Timeout of one DNS query. Default 2 s.
    pub query_timeout: Duration,
    /// Tries per query (hickory's `attempts`). Default 2.
    pub attempts: usize,
    /// Responses hickory keeps in its cache. Default 0: the refresh loop
    /// already follows the TTLs, a cache would only serve stale answers.
    pub cache_size: u64,
    /// Whether target names are looked up in `/etc/hosts` first. Default
    /// false.
    pub use_hosts_file: bool,
    /// Which priorities become nodes. Default [`SrvPriorities::LowestOnly`].
    pub priorities: SrvPriorities,
}

impl DnsSourceConfig {
    /// The defaults for `srv_name`.
    #[must_use]
    pub fn new(srv_name: impl Into<String>) -> Self {
        Self {
            srv_name: srv_name.into(),
            nameservers: Vec::new(),
            port_override: None,
            scheme: Scheme::Http,
            min_refresh: DEFAULT_DNS_MIN_REFRESH,
            max_refresh: DEFAULT_DNS_MAX_REFRESH,
            query_timeout: DEFAULT_DNS_QUERY_TIMEOUT,
            attempts: 2,
            cache_size: 0,
            use_hosts_file: false,
            priorities: SrvPriorities::LowestOnly,
        }
    }

    /// Asks `nameserver` (e.g. `127.0.0.1:5353`) instead of the system's.
    #[must_use]
    pub fn nameserver(mut self, nameserver: SocketAddr) -> Self {
        self.nameservers.push(nameserver);
        self
    }
}

/// Nodes from the SRV records of one DNS name. See the [module docs](self).
pub struct DnsSource {
    config: DnsSourceConfig,
    name: Name,
    resolver: TokioResolver,
}

impl std::fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DnsSource {
    /// Builds the resolver for `config`.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidConfig`] for an empty or malformed SRV name,
    /// port override 0 or `min_refresh > max_refresh`;
    /// [`DiscoveryError::DnsResolver`] when the system configuration cannot
    /// be read (no nameservers given).
    pub fn new(config: DnsSourceConfig) -> Result<Self, DiscoveryError> {
        let invalid = |path: &str, message: String| DiscoveryError::InvalidConfig {
            path: format!("discovery.{path}"),
            message,
        };
        if config.srv_name.trim().is_empty() {
            return Err(invalid("srv_name", "the SRV name is empty".to_owned()));
        }
        let mut name = Name::from_ascii(config.srv_name.trim())
            .map_err(|e| invalid("srv_name", format!("not a DNS name: {e}")))?;
        name.set_fqdn(true);
        if config.port_override == Some(0) {
            return Err(invalid("port_override", "port 0 is not a port".to_owned()));
        }
        if config.min_refresh > config.max_refresh {
            return Err(invalid(
                "min_refresh",
                format!(
                    "{:?} is longer than max_refresh {:?}",
                    config.min_refresh, config.max_refresh
                ),
            ));
        }

        let mut options = ResolverOpts::default();
        options.timeout = config.query_timeout;
        options.attempts = config.attempts.max(1);
        options.cache_size = config.cache_size;
        options.use_hosts_file = if config.use_hosts_file {
            ResolveHosts::Always
        } else {
            ResolveHosts::Never
        };
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;

        let builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DiscoveryError::DnsResolver {
                source: Box::new(e),
            })?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver =
            builder
                .with_options(options)
                .build()
                .map_err(|e| DiscoveryError::DnsResolver {
                    source: Box::new(e),
                })?;
        Ok(Self {
            config,
            name,
            resolver,
        })
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &DnsSourceConfig {
        &self.config
    }

    /// The addresses of `target`: from the additional section of the SRV
    /// answer when it has them, else from an A/AAAA lookup. IPv4 first.
    /// `Ok(None)` when the name definitely has no address.
    async fn addresses(
        &self,
        target: &Name,
        additionals: &[Record],
    ) -> Result<Option<(Vec<IpAddr>, u32)>, DiscoveryError> {
        let from_additionals = addresses_in(additionals, target);
        let found = if from_additionals.is_empty() {
            match self.resolver.lookup_ip(target.clone()).await {
                Ok(ips) => {
                    let lookup: hickory_resolver::lookup::Lookup = ips.into();
                    lookup
                        .answers()
                        .iter()
                        .filter_map(|r| r.data.ip_addr().map(|ip| (ip, r.ttl)))
                        .collect()
                }
                Err(e) if e.is_no_records_found() => Vec::new(),
                Err(e) => {
                    return Err(DiscoveryError::DnsLookup {
                        name: target.to_ascii(),
                        record_type: "A/AAAA",
                        source: Box::new(e),
                    });
                }
            }
        } else {
            from_additionals
        };
        if found.is_empty() {
            return Ok(None);
        }
        let ttl = found.iter().map(|(_, ttl)| *ttl).min().unwrap_or(u32::MAX);
        let mut ips: Vec<IpAddr> = found.into_iter().map(|(ip, _)| ip).collect();
        ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
        ips.dedup();
        Ok(Some((ips, ttl)))
    }

    fn lookup_error(&self, error: NetError) -> DiscoveryError {
        let name = self.name.to_ascii();
        if let NetError::Dns(DnsError::NoRecordsFound(no_records)) = &error {
            let code = response_code_name(no_records.response_code);
            return if error.is_nx_domain() {
                DiscoveryError::DnsNameNotFound { name, code }
            } else {
                DiscoveryError::DnsNoRecords {
                    name,
                    record_type: "SRV",
                    code,
                }
            };
        }
        DiscoveryError::DnsLookup {
            name,
            record_type: "SRV",
            source: Box::new(error),
        }
    }
}

/// The usable SRV records of an answer (a target of "." means "decidedly
/// not available here"), only those of the lowest priority when asked,
/// sorted by priority, target and port.
pub(crate) fn usable_srv_records(answers: &[Record], priorities: SrvPriorities) -> Vec<Srv> {
    let mut records: Vec<Srv> = answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if !srv.target.is_root() => Some(Srv {
                target: srv.target.clone(),
                port: srv.port,
                priority: srv.priority,
                weight: srv.weight,
                ttl: r.ttl,
            }),
            _ => None,
        })
        .collect();
    if priorities == SrvPriorities::LowestOnly {
        let lowest = records.iter().map(|r| r.priority).min().unwrap_or(0);
        records.retain(|r| r.priority == lowest);
    }
    records.sort_by(|a, b| {
        (a.priority, a.target.to_ascii(), a.port).cmp(&(b.priority, b.target.to_ascii(), b.port))
    });
    records
}

/// The addresses of `target` (with their TTLs) in an answer's additional
/// section.
pub(crate) fn addresses_in(additionals: &[Record], target: &Name) -> Vec<(IpAddr, u32)> {
    additionals
        .iter()
        .filter(|r| r.name.eq_ignore_root_case(target))
        .filter_map(|r| r.data.ip_addr().map(|ip| (ip, r.ttl)))
        .collect()
}

/// The node of an SRV record whose target has address `ip`.
pub(crate) fn srv_node(
    record: &Srv,
    ip: IpAddr,
    config: &DnsSourceConfig,
    service: &str,
) -> DiscoveredNode {
    let target = record.target.to_ascii();
    let host = target.trim_end_matches('.');
    let port = config.port_override.unwrap_or(record.port);
    let url = format!("{}://{}", config.scheme.as_str(), SocketAddr::new(ip, port));
    let mut spec = NodeSpec::new(NodeId::from(format!("{host}:{port}")), url);
    spec.weight = u32::from(record.weight.max(1));
    spec.tags.insert("srv.target".to_owned(), host.to_owned());
    spec.tags
        .insert("srv.priority".to_owned(), record.priority.to_string());
    spec.tags
        .insert("srv.weight".to_owned(), record.weight.to_string());
    DiscoveredNode::new(
        spec,
        NodeOrigin::Dns {
            service: service.to_owned(),
            target: target.clone(),
            port,
            priority: record.priority,
            weight: record.weight,
        },
    )
}

/// The RFC mnemonic of a response code (`NXDOMAIN`, `NOERROR`,
/// `SERVFAIL`, ...).
fn response_code_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        other => format!("{other:?}").to_ascii_uppercase(),
    }
}

/// One usable SRV record.
pub(crate) struct Srv {
    pub(crate) target: Name,
    pub(crate) port: u16,
    pub(crate) priority: u16,
    pub(crate) weight: u16,
    pub(crate) ttl: u32,
}

#[async_trait]
impl DiscoverySource for DnsSource {
    fn name(&self) -> String {
        format!("dns:{}", self.name)
    }

    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        let lookup = self
            .resolver
            .srv_lookup(self.name.clone())
            .await
            .map_err(|e| self.lookup_error(e))?;

        let records = usable_srv_records(lookup.answers(), self.config.priorities);
        if records.is_empty() {
            return Err(DiscoveryError::DnsNoRecords {
                name: self.name.to_ascii(),
                record_type: "SRV",
                code: "NOERROR (no usable target)".to_owned(),
            });
        }

        let mut min_ttl = records.iter().map(|r| r.ttl).min().unwrap_or(u32::MAX);
        let mut nodes = Vec::with_capacity(records.len());
        let service = self.name.to_ascii();
        for record in records {
            let Some((ips, ttl)) = self.addresses(&record.target, lookup.additionals()).await?
            else {
                tracing::warn!(
                    target_host = %record.target,
                    service = %service,
                    "SRV target has no address; leaving it out"
                );
                continue;
            };
            min_ttl = min_ttl.min(ttl);
            let Some(ip) = ips.first() else { continue };
            nodes.push(srv_node(&record, *ip, &self.config, &service));
        }
        let ttl = Duration::from_secs(u64::from(min_ttl));
        Ok(DiscoverySnapshot {
            nodes,
            valid_for: Some(ttl.clamp(self.config.min_refresh, self.config.max_refresh)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let c = DnsSourceConfig::new("_mlx._tcp.example");
        assert_eq!(c.scheme, Scheme::Http);
        assert_eq!(c.port_override, None);
        assert_eq!(c.min_refresh, Duration::from_secs(5));
        assert_eq!(c.max_refresh, Duration::from_secs(300));
        assert_eq!(c.cache_size, 0);
        assert!(!c.use_hosts_file);
        assert_eq!(c.priorities, SrvPriorities::LowestOnly);
        assert!(c.nameservers.is_empty());
    }

    #[tokio::test]
    async fn refuses_bad_configs() {
        let ns: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let err = DnsSource::new(DnsSourceConfig::new(" ").nameserver(ns)).unwrap_err();
        assert_eq!(err.code(), "invalid_config");
        let mut c = DnsSourceConfig::new("_mlx._tcp.example").nameserver(ns);
        c.port_override = Some(0);
        assert!(
            DnsSource::new(c)
                .unwrap_err()
                .to_string()
                .contains("port_override")
        );
        let mut c = DnsSourceConfig::new("_mlx._tcp.example").nameserver(ns);
        c.min_refresh = Duration::from_secs(10);
        c.max_refresh = Duration::from_secs(1);
        assert!(
            DnsSource::new(c)
                .unwrap_err()
                .to_string()
                .contains("min_refresh")
        );
    }

    #[test]
    fn response_code_names() {
        assert_eq!(response_code_name(ResponseCode::NXDomain), "NXDOMAIN");
        assert_eq!(response_code_name(ResponseCode::NoError), "NOERROR");
        assert_eq!(response_code_name(ResponseCode::Refused), "REFUSED");
    }

    #[tokio::test]
    async fn names_are_absolute() {
        let ns: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let source =
            DnsSource::new(DnsSourceConfig::new("_mlx._tcp.example").nameserver(ns)).unwrap();
        assert_eq!(source.name(), "dns:_mlx._tcp.example.");
    }
}
