//! [`MdnsAnnouncer`]: advertises a node that runs on this machine (what
//! `mlx-cluster announce` runs), for servers that do not advertise
//! themselves — mlx_lm.server, llama-server, vLLM.
//!
//! The node is checked first (`GET /v1/models` on `check_url`, by default
//! `http://127.0.0.1:PORT`) and announced only once it answers; the check
//! goes on every `check_interval`, and after `failures_to_withdraw`
//! consecutive failures the announcement is withdrawn with goodbye packets
//! (TTL 0), to be made again when the node answers. Stopping the announcer
//! withdraws it too. The TXT record gets `model` = the first model the node
//! lists, unless one is given.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cluster_types::NodeSpec;
use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo, UnregisterStatus};
use tokio::sync::watch;

use super::daemon::{DaemonSettings, start_daemon, stop_daemon};
use super::instance::TXT_MODEL;
use crate::{DiscoveryError, NodeValidator};

/// Service type announced by default: `_mlx-lm._tcp.local.`.
pub const DEFAULT_ANNOUNCE_SERVICE_TYPE: &str = "_mlx-lm._tcp.local.";
/// Default pause between two checks of the node: 5 s.
pub const DEFAULT_ANNOUNCE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Default consecutive failed checks before the announcement is withdrawn:
/// 2.
pub const DEFAULT_ANNOUNCE_FAILURES: u32 = 2;
/// How long a withdrawal waits for the daemon to confirm it sent the
/// goodbye: 3 s.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

/// What to announce and how to watch the node.
///
/// Defaults (from [`AnnounceConfig::new`]): instance name and host name
/// from this machine's name, service type `_mlx-lm._tcp.local.`, no TXT
/// keys, check URL `http://127.0.0.1:PORT`, checks every 5 s, withdrawn
/// after 2 failed checks, every interface, mDNS port 5353.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// TCP port of the node, as announced in the SRV record.
    pub port: u16,
    /// Instance name: the node's id at the gateway. Default: this
    /// machine's name.
    pub instance_name: String,
    /// Service type. Default `_mlx-lm._tcp.local.`.
    pub service_type: String,
    /// TXT keys (see [`MdnsSource`](crate::MdnsSource) for the ones the
    /// gateway reads). Default none.
    pub txt: BTreeMap<String, String>,
    /// Host name of the SRV record, e.g. `mac-studio.local.`; its A/AAAA
    /// records carry the addresses of the announcing interfaces. Default:
    /// [`local_host_name`].
    pub host_name: String,
    /// Base URL checked with `GET /v1/models`. Default
    /// `http://127.0.0.1:PORT`.
    pub check_url: String,
    /// Pause between checks. Default 5 s.
    pub check_interval: Duration,
    /// Consecutive failed checks that withdraw the announcement. Default 2.
    pub failures_to_withdraw: u32,
    /// Interfaces to announce on, by name; empty = all. Default empty.
    pub interfaces: Vec<String>,
    /// mDNS UDP port. Default 5353.
    pub mdns_port: u16,
}

impl AnnounceConfig {
    /// The defaults for a node on `port`.
    #[must_use]
    pub fn new(port: u16) -> Self {
        let host = local_host_name();
        Self {
            port,
            instance_name: host.clone(),
            service_type: DEFAULT_ANNOUNCE_SERVICE_TYPE.to_owned(),
            txt: BTreeMap::new(),
            host_name: format!("{host}.local."),
            check_url: format!("http://127.0.0.1:{port}"),
            check_interval: DEFAULT_ANNOUNCE_CHECK_INTERVAL,
            failures_to_withdraw: DEFAULT_ANNOUNCE_FAILURES,
            interfaces: Vec::new(),
            mdns_port: cluster_types::MDNS_PORT,
        }
    }

    fn check(&self) -> Result<(), DiscoveryError> {
        let invalid = |path: &str, message: String| DiscoveryError::InvalidConfig {
            path: path.to_owned(),
            message,
        };
        if self.port == 0 {
            return Err(invalid("port", "port 0 is not a port".to_owned()));
        }
        if self.instance_name.trim().is_empty() || self.instance_name.len() > 63 {
            return Err(invalid(
                "name",
                format!(
                    "the instance name must be 1-63 bytes, got {:?}",
                    self.instance_name
                ),
            ));
        }
        if !self.service_type.starts_with('_')
            || !self
                .service_type
                .trim_end_matches('.')
                .ends_with("._tcp.local")
        {
            return Err(invalid(
                "service_type",
                format!(
                    "{:?} is not a service type like \"_mlx-lm._tcp.local.\"",
                    self.service_type
                ),
            ));
        }
        for (key, value) in &self.txt {
            if key.is_empty() || !key.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=') {
                return Err(invalid(
                    "txt",
                    format!("TXT key {key:?} must be printable ASCII without '='"),
                ));
            }
            if key.len() + value.len() + 1 > 255 {
                return Err(invalid(
                    "txt",
                    format!("TXT entry {key}=... is longer than 255 bytes"),
                ));
            }
        }
        if self.check_interval.is_zero() || self.failures_to_withdraw == 0 {
            return Err(invalid(
                "check_interval",
                "the check interval and the failures before withdrawing must be positive"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// This machine's name as a DNS label: the host name up to its first dot,
/// lowercased, with characters other than letters, digits and `-` replaced
/// by `-` (`mlx-node` when the name cannot be read).
#[must_use]
pub fn local_host_name() -> String {
    let uname = rustix::system::uname();
    let raw = uname.nodename().to_string_lossy();
    let label: String = raw
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "mlx-node".to_owned()
    } else {
        label.to_owned()
    }
}

/// Where the announcer is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnnouncerState {
    /// The node has not answered yet (or no longer answers): nothing is
    /// announced.
    WaitingForNode {
        /// The last check's failure.
        reason: String,
    },
    /// The node answers and is announced.
    Announced {
        /// The instance's full name, e.g. `mac-1._mlx-lm._tcp.local.`.
        fullname: String,
        /// The models the node listed.
        models: Vec<String>,
    },
    /// The node stopped answering: the announcement was withdrawn.
    Withdrawn {
        /// The last check's failure.
        reason: String,
    },
    /// The announcer stopped (and withdrew what it announced).
    Stopped,
}

/// Announces one node over mDNS while it answers (what `mlx-cluster
/// announce` runs).
///
/// The node is checked first (`GET /v1/models` on
/// [`AnnounceConfig::check_url`], by default `http://127.0.0.1:PORT`) and
/// announced only once it answers; the check goes on every
/// `check_interval`, and after `failures_to_withdraw` consecutive failures
/// the announcement is withdrawn with goodbye packets (TTL 0), to be made
/// again when the node answers. Stopping the announcer withdraws it too.
/// The TXT record gets `model` = the first model the node lists, unless
/// one is given.
pub struct MdnsAnnouncer {
    config: AnnounceConfig,
    validator: Arc<dyn NodeValidator>,
    state: watch::Sender<AnnouncerState>,
}

impl std::fmt::Debug for MdnsAnnouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsAnnouncer")
            .field("config", &self.config)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl MdnsAnnouncer {
    /// An announcer for `config` that checks the node with `validator`
    /// (e.g. [`HttpNodeValidator`](crate::HttpNodeValidator)).
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidConfig`] for port 0, an empty or too long
    /// instance name, a bad service type, a TXT key with `=` or non-ASCII,
    /// a TXT entry over 255 bytes, or a zero check interval.
    pub fn new(
        config: AnnounceConfig,
        validator: Arc<dyn NodeValidator>,
    ) -> Result<Self, DiscoveryError> {
        config.check()?;
        let (state, _) = watch::channel(AnnouncerState::WaitingForNode {
            reason: "not checked yet".to_owned(),
        });
        Ok(Self {
            config,
            validator,
            state,
        })
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &AnnounceConfig {
        &self.config
    }

    /// The announcer's state, now and as it changes.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<AnnouncerState> {
        self.state.subscribe()
    }

    /// Checks and announces until `shutdown` completes, then withdraws the
    /// announcement (goodbye packets) and stops the mDNS daemon.
    ///
    /// # Errors
    /// [`DiscoveryError::Mdns`] when the daemon cannot start or refuses the
    /// registration.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), DiscoveryError> {
        let daemon = start_daemon(&DaemonSettings {
            port: self.config.mdns_port,
            interfaces: self.config.interfaces.clone(),
        })?;
        let mut announced = None;
        let result = self.announce(&daemon, &mut announced, shutdown).await;
        if let Some(fullname) = announced {
            withdraw(&daemon, &fullname).await;
        }
        stop_daemon(&daemon);
        self.state.send_replace(AnnouncerState::Stopped);
        result
    }

    async fn announce(
        &self,
        daemon: &ServiceDaemon,
        announced: &mut Option<String>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DiscoveryError> {
        let spec = NodeSpec::new(
            self.config.instance_name.clone(),
            self.config.check_url.clone(),
        );
        let mut failures = 0u32;
        tokio::pin!(shutdown);
        loop {
            let checked = tokio::select! {
                () = &mut shutdown => return Ok(()),
                checked = self.validator.validate(&spec) => checked,
            };
            match checked {
                Ok(profile) => {
                    failures = 0;
                    let models = profile.models;
                    if announced.is_none() {
                        let info = self.service_info(&models)?;
                        let fullname = info.get_fullname().to_owned();
                        daemon.register(info).map_err(|e| DiscoveryError::Mdns {
                            operation: "register",
                            service_type: fullname.clone(),
                            message: e.to_string(),
                        })?;
                        tracing::info!(instance = %fullname, port = self.config.port, ?models, "node answers; announced");
                        self.state.send_replace(AnnouncerState::Announced {
                            fullname: fullname.clone(),
                            models,
                        });
                        *announced = Some(fullname);
                    }
                }
                Err(error) => {
                    failures += 1;
                    let reason = error.to_string();
                    match announced.take() {
                        Some(fullname) if failures >= self.config.failures_to_withdraw => {
                            tracing::warn!(instance = %fullname, %reason, "node stopped answering; withdrawing the announcement");
                            withdraw(daemon, &fullname).await;
                            self.state
                                .send_replace(AnnouncerState::Withdrawn { reason });
                        }
                        Some(fullname) => *announced = Some(fullname),
                        None => {
                            if failures == 1 {
                                tracing::info!(url = %self.config.check_url, %reason, "waiting for the node to answer");
                            }
                            self.state.send_if_modified(|state| {
                                if matches!(state, AnnouncerState::Withdrawn { .. }) {
                                    false
                                } else {
                                    *state = AnnouncerState::WaitingForNode { reason };
                                    true
                                }
                            });
                        }
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(self.config.check_interval) => {}
            }
        }
    }

    fn service_info(&self, models: &[String]) -> Result<ServiceInfo, DiscoveryError> {
        let c = &self.config;
        let mut txt = c.txt.clone();
        if let Some(model) = models.first() {
            txt.entry(TXT_MODEL.to_owned())
                .or_insert_with(|| model.clone());
        }
        let service_type = if c.service_type.ends_with('.') {
            c.service_type.clone()
        } else {
            format!("{}.", c.service_type)
        };
        let properties: Vec<(&str, &str)> =
            txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut info = ServiceInfo::new(
            &service_type,
            &c.instance_name,
            &c.host_name,
            "",
            c.port,
            &properties[..],
        )
        .map_err(|e| DiscoveryError::Mdns {
            operation: "register",
            service_type: service_type.clone(),
            message: e.to_string(),
        })?
        .enable_addr_auto();
        if !c.interfaces.is_empty() {
            info.set_interfaces(c.interfaces.iter().cloned().map(IfKind::Name).collect());
        }
        Ok(info)
    }
}

/// Unregisters `fullname` (the daemon multicasts goodbye packets) and waits
/// a little for the daemon to confirm.
async fn withdraw(daemon: &ServiceDaemon, fullname: &str) {
    match daemon.unregister(fullname) {
        Ok(status) => match tokio::time::timeout(GOODBYE_WAIT, status.recv_async()).await {
            Ok(Ok(UnregisterStatus::OK)) => {
                tracing::info!(instance = %fullname, "announcement withdrawn (goodbye sent)");
            }
            Ok(Ok(other)) => {
                tracing::warn!(instance = %fullname, status = ?other, "withdrawal not confirmed")
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(instance = %fullname, "no confirmation of the withdrawal")
            }
        },
        Err(e) => {
            tracing::warn!(instance = %fullname, error = %e, "cannot withdraw the announcement")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AcceptAll;

    #[test]
    fn defaults_and_checks() {
        let c = AnnounceConfig::new(8080);
        assert_eq!(c.check_url, "http://127.0.0.1:8080");
        assert_eq!(c.service_type, "_mlx-lm._tcp.local.");
        assert_eq!(c.host_name, format!("{}.local.", c.instance_name));
        assert!(!c.instance_name.is_empty());
        assert!(
            c.instance_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        assert!(c.check().is_ok());

        let bad = |f: &dyn Fn(&mut AnnounceConfig)| {
            let mut c = AnnounceConfig::new(8080);
            f(&mut c);
            MdnsAnnouncer::new(c, Arc::new(AcceptAll))
                .unwrap_err()
                .code()
        };
        assert_eq!(bad(&|c| c.port = 0), "invalid_config");
        assert_eq!(bad(&|c| c.instance_name = " ".into()), "invalid_config");
        assert_eq!(
            bad(&|c| c.service_type = "_x._udp.local.".into()),
            "invalid_config"
        );
        assert_eq!(
            bad(&|c| {
                c.txt.insert("a=b".into(), "c".into());
            }),
            "invalid_config"
        );
        assert_eq!(
            bad(&|c| {
                c.txt.insert("k".into(), "v".repeat(300));
            }),
            "invalid_config"
        );
        assert_eq!(
            bad(&|c| c.check_interval = Duration::ZERO),
            "invalid_config"
        );
    }

    #[test]
    fn service_info_carries_txt_and_the_first_model() {
        let mut c = AnnounceConfig::new(8080);
        c.instance_name = "mac-1".into();
        c.host_name = "mac-1.local.".into();
        c.txt.insert("weight".into(), "2".into());
        let announcer = MdnsAnnouncer::new(c, Arc::new(AcceptAll)).unwrap();
        let info = announcer
            .service_info(&["qwen".to_owned(), "other".to_owned()])
            .unwrap();
        assert_eq!(info.get_fullname(), "mac-1._mlx-lm._tcp.local.");
        assert_eq!(info.get_port(), 8080);
        assert_eq!(info.get_property_val_str("weight"), Some("2"));
        assert_eq!(info.get_property_val_str("model"), Some("qwen"));
        assert!(info.is_addr_auto());
    }
}
