//! A real DNS server for the discovery tests: Debian's `dnsmasq` on
//! 127.0.0.1, authoritative for the zones it is given, with SRV and address
//! records from a [`DnsZone`].
//!
//! dnsmasq reads its records at start-up, so changing them
//! ([`Dnsmasq::replace_zone`]) restarts it on the same port. It answers
//! `NXDOMAIN` for unknown names inside its zones (`local=/zone/`), `REFUSED`
//! outside them (it never forwards: `--no-resolv`), and puts the addresses of
//! SRV targets in the additional section. Every query is logged
//! ([`Dnsmasq::queries`]).
//!
//! `cargo xtask setup` installs `dnsmasq-base`; a missing binary is a test
//! failure that says so.
//!
//! ```no_run
//! use cluster_tests::dns::{DnsZone, Dnsmasq};
//!
//! # async fn demo() -> Result<(), cluster_tests::dns::DnsFixtureError> {
//! let zone = DnsZone::new("cluster.test")
//!     .srv("_mlx._tcp.cluster.test", "node-a.cluster.test", 8081, 10, 5)
//!     .host("node-a.cluster.test", "127.0.0.1".parse().unwrap());
//! let mut dns = Dnsmasq::start(zone).await?;
//! println!("ask {}", dns.addr());
//! dns.stop().await?; // queries now time out
//! dns.restart().await?; // same port, same records
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::process::{Child, Command};

/// Where Debian's `dnsmasq-base` puts the binary.
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// The name the fixture asks for to see that dnsmasq answers (left out of
/// [`Dnsmasq::queries`]).
const READY_PROBE: &str = "fixture-ready-probe.invalid";

/// How long [`Dnsmasq::start`] waits for the first answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the DNS fixture could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsFixtureError {
    /// dnsmasq is not installed.
    #[error("{program} not found: run `cargo xtask setup` (it installs dnsmasq-base)")]
    Missing {
        /// The binary looked for.
        program: PathBuf,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// dnsmasq exited during start-up.
    #[error("dnsmasq on port {port} exited during start-up ({status}); log:\n{log}")]
    Exited {
        /// Its port.
        port: u16,
        /// Its exit status.
        status: String,
        /// Its log.
        log: String,
    },
    /// dnsmasq did not answer in time.
    #[error("dnsmasq on port {port} did not answer within {timeout:?}; log:\n{log}")]
    NotReady {
        /// Its port.
        port: u16,
        /// The deadline.
        timeout: Duration,
        /// Its log.
        log: String,
    },
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// The service name, e.g. `_mlx._tcp.cluster.test`.
    pub name: String,
    /// The target host, e.g. `node-a.cluster.test`.
    pub target: String,
    /// The port.
    pub port: u16,
    /// The priority (lower first).
    pub priority: u16,
    /// The weight.
    pub weight: u16,
}

/// The records dnsmasq serves.
///
/// Defaults: TTL 30 s for every record, no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsZone {
    /// Domains dnsmasq is authoritative for (unknown names: NXDOMAIN).
    pub domains: Vec<String>,
    /// SRV records.
    pub srv: Vec<SrvRecord>,
    /// Address records (A or AAAA).
    pub hosts: Vec<(String, IpAddr)>,
    /// TTL of every record, in seconds (dnsmasq's `local-ttl`). Default 30.
    pub ttl: u32,
}

impl DnsZone {
    /// An empty zone for `domain` (e.g. `cluster.test`), TTL 30 s.
    #[must_use]
    pub fn new(domain: &str) -> Self {
        Self {
            domains: vec![domain.to_owned()],
            srv: Vec::new(),
            hosts: Vec::new(),
            ttl: 30,
        }
    }

    /// Adds an SRV record.
    #[must_use]
    pub fn srv(mut self, name: &str, target: &str, port: u16, priority: u16, weight: u16) -> Self {
        self.srv.push(SrvRecord {
            name: name.to_owned(),
            target: target.to_owned(),
            port,
            priority,
            weight,
        });
        self
    }

    /// Adds an address record.
    #[must_use]
    pub fn host(mut self, name: &str, ip: IpAddr) -> Self {
        self.hosts.push((name.to_owned(), ip));
        self
    }

    /// Sets the TTL of every record.
    #[must_use]
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    /// The dnsmasq configuration file for this zone.
    #[must_use]
    pub fn to_conf(&self) -> String {
        let mut conf = String::new();
        let _ = writeln!(conf, "local-ttl={}", self.ttl);
        for domain in &self.domains {
            let _ = writeln!(conf, "local=/{domain}/");
        }
        for r in &self.srv {
            let _ = writeln!(
                conf,
                "srv-host={},{},{},{},{}",
                r.name, r.target, r.port, r.priority, r.weight
            );
        }
        for (name, ip) in &self.hosts {
            let _ = writeln!(conf, "host-record={name},{ip}");
        }
        conf
    }
}

/// A dnsmasq process serving a [`DnsZone`] on `127.0.0.1:port` (UDP and
/// TCP). Killed on drop; its files live in a temporary directory removed on
/// drop.
#[derive(Debug)]
pub struct Dnsmasq {
    port: u16,
    dir: PathBuf,
    zone: DnsZone,
    child: Option<Child>,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

impl Dnsmasq {
    /// Starts dnsmasq for `zone` on a free port and waits until it answers.
    ///
    /// # Errors
    /// [`DnsFixtureError::Missing`] without dnsmasq; start-up failures with
    /// its log.
    pub async fn start(zone: DnsZone) -> Result<Self, DnsFixtureError> {
        if !Path::new(DNSMASQ).exists() {
            return Err(DnsFixtureError::Missing {
                program: PathBuf::from(DNSMASQ),
            });
        }
        let dir = std::env::temp_dir().join(format!(
            "mlx-cluster-dnsmasq-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|source| DnsFixtureError::Io {
            action: "create directory",
            path: dir.clone(),
            source,
        })?;
        let mut server = Self {
            port: 0,
            dir,
            zone,
            child: None,
        };
        // A free port can be taken between the probe and dnsmasq's bind:
        // try a few.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_udp_port().await?;
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(DnsFixtureError::NotReady {
            port: server.port,
            timeout: READY_TIMEOUT,
            log: String::new(),
        }))
    }

    /// The server's address, `127.0.0.1:port`.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    /// The server's port (kept across restarts).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The records served.
    #[must_use]
    pub fn zone(&self) -> &DnsZone {
        &self.zone
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Serves `zone` instead: dnsmasq is restarted on the same port (it
    /// reads records only at start-up).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn replace_zone(&mut self, zone: DnsZone) -> Result<(), DnsFixtureError> {
        self.stop().await?;
        self.zone = zone;
        self.spawn().await
    }

    /// Kills the server and waits for it to exit: queries then time out
    /// (or are refused).
    ///
    /// # Errors
    /// [`DnsFixtureError::Io`] if the process cannot be killed.
    pub async fn stop(&mut self) -> Result<(), DnsFixtureError> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.map_err(|source| DnsFixtureError::Io {
                action: "kill dnsmasq",
                path: PathBuf::from(DNSMASQ),
                source,
            })?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same records.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn restart(&mut self) -> Result<(), DnsFixtureError> {
        self.stop().await?;
        self.spawn().await
    }

    /// Everything dnsmasq logged (all its runs).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The queries it received, as dnsmasq logs them, e.g.
    /// `query[SRV] _mlx._tcp.cluster.test from 127.0.0.1` (without the
    /// fixture's own readiness probes).
    #[must_use]
    pub fn queries(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| !line.contains(READY_PROBE))
            .filter_map(|line| line.split_once("query[").map(|(_, q)| format!("query[{q}")))
            .collect()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }

    async fn spawn(&mut self) -> Result<(), DnsFixtureError> {
        let conf = self.dir.join("dnsmasq.conf");
        std::fs::write(&conf, self.zone.to_conf()).map_err(|source| DnsFixtureError::Io {
            action: "write",
            path: conf.clone(),
            source,
        })?;
        let log_path = self.log_path();
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|source| DnsFixtureError::Io {
                    action: "open",
                    path: log_path.clone(),
                    source,
                })
        };
        let (stdout, stderr) = (open_log()?, open_log()?);
        let child = Command::new(DNSMASQ)
            .arg("--no-daemon")
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--log-queries")
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DnsFixtureError::Io {
                action: "spawn",
                path: PathBuf::from(DNSMASQ),
                source,
            })?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Sends a query until an answer comes back (any answer: dnsmasq is up).
    async fn wait_ready(&mut self) -> Result<(), DnsFixtureError> {
        let socket =
            UdpSocket::bind("127.0.0.1:0")
                .await
                .map_err(|source| DnsFixtureError::Io {
                    action: "bind",
                    path: PathBuf::from("udp 127.0.0.1:0"),
                    source,
                })?;
        let query = dns_query(0x4d4c, READY_PROBE, 1);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 512];
        while tokio::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(DnsFixtureError::Exited {
                    port: self.port,
                    status: status.to_string(),
                    log: self.log(),
                });
            }
            // A send can fail while nothing listens (ICMP refusal): retry.
            let _ = socket.send_to(&query, self.addr()).await;
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
                && n >= 12
                && buf[..2] == query[..2]
            {
                return Ok(());
            }
        }
        Err(DnsFixtureError::NotReady {
            port: self.port,
            timeout: READY_TIMEOUT,
            log: self.log(),
        })
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A UDP port free on 127.0.0.1 right now.
async fn free_udp_port() -> Result<u16, DnsFixtureError> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|source| DnsFixtureError::Io {
            action: "bind",
            path: PathBuf::from("udp 127.0.0.1:0"),
            source,
        })?;
    socket
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| DnsFixtureError::Io {
            action: "read the address of",
            path: PathBuf::from("udp 127.0.0.1:0"),
            source,
        })
}

/// A minimal DNS query packet (RFC 1035 §4.1): one question, recursion
/// desired.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(32 + name.len());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        packet.push(u8::try_from(label.len()).unwrap_or(63).min(63));
        packet.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_renders_dnsmasq_lines() {
        let zone = DnsZone::new("cluster.test")
            .srv("_mlx._tcp.cluster.test", "a.cluster.test", 8081, 10, 5)
            .host("a.cluster.test", "127.0.0.1".parse().unwrap())
            .ttl(7);
        assert_eq!(
            zone.to_conf(),
            "local-ttl=7\nlocal=/cluster.test/\n\
             srv-host=_mlx._tcp.cluster.test,a.cluster.test,8081,10,5\n\
             host-record=a.cluster.test,127.0.0.1\n"
        );
    }

    #[test]
    fn query_packet_layout() {
        let q = dns_query(0x1234, "a.bc", 33);
        assert_eq!(
            q,
            [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 33, 0, 1
            ]
        );
    }
}
