//! mDNS / DNS-SD discovery (feature `mdns`), with mdns-sd 0.21: nodes on
//! the local network that announce themselves, and [`MdnsAnnouncer`] to
//! announce a node that does not (mlx_lm.server does not).
//!
//! - **What is browsed**: every configured service type
//!   ([`DEFAULT_SERVICE_TYPES`]: `_mlx-lm._tcp.local.` and
//!   `_openai._tcp.local.`). Each instance is resolved (SRV, TXT, A/AAAA)
//!   and is one node.
//! - **Id**: the instance name, unescaped (`mac-studio` for
//!   `mac-studio._mlx-lm._tcp.local.`). **URL**: `scheme://address:port` +
//!   TXT `path`; the address is IPv4 first, then global IPv6 (IPv6
//!   link-local addresses are never used: a URL would need a zone).
//! - **TXT keys**: `weight` (integer ≥ 1, default 1), `model` and `kind`
//!   (copied to the node tags `model` and `kind`), `tag.NAME=VALUE` (node
//!   tag `NAME`), `path` (API path prefix), `scheme` (`http` / `https`).
//!   Other keys are ignored. Every node also gets the tags `mdns.service`
//!   and `mdns.host`.
//! - **Changes**: an instance that appears, changes its records or leaves
//!   (goodbye packet, or its SRV record's TTL runs out without a refresh)
//!   pushes a new full snapshot through [`DiscoverySource::watch`];
//!   [`ClusterDiscovery`](crate::ClusterDiscovery) validates, dedupes
//!   (the first service type wins for one instance name) and announces it
//!   like any source.
//! - **Failures**: when a browse ends (the daemon thread died or fell
//!   behind), an error is pushed — the last snapshot stays — and the
//!   daemon is restarted with backoff (1 s doubling to 30 s). Instances
//!   not resolved again within 3 s of the restart are dropped.
//! - **Port 5353**: mdns-sd binds 5353 with `SO_REUSEADDR` and
//!   `SO_REUSEPORT`, so it shares the port with a system responder (macOS's
//!   mDNSResponder, Avahi): every socket on the port receives the
//!   multicast traffic, and mdns-sd only sends and answers multicast.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use cluster_discovery::{ClusterDiscovery, MdnsSource, MdnsSourceConfig};
//!
//! # async fn demo() -> Result<(), cluster_discovery::DiscoveryError> {
//! let source = MdnsSource::new(MdnsSourceConfig::default())?;
//! let discovery = ClusterDiscovery::builder(Arc::new(source)).build();
//! discovery.start().await?;
//! # Ok(())
//! # }
//! ```

mod announce;
mod daemon;
mod instance;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cluster_types::Scheme;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use announce::{
    AnnounceConfig, AnnouncerState, DEFAULT_ANNOUNCE_CHECK_INTERVAL, DEFAULT_ANNOUNCE_FAILURES,
    DEFAULT_ANNOUNCE_SERVICE_TYPE, MdnsAnnouncer, local_host_name,
};
use daemon::{Browser, DaemonBrowser, DaemonSettings};
use instance::{BrowseEvent, InstanceTable};
pub use instance::{
    TAG_HOST, TAG_SERVICE, TXT_KIND, TXT_MODEL, TXT_PATH, TXT_SCHEME, TXT_TAG_PREFIX, TXT_WEIGHT,
};

use crate::{DiscoveryError, DiscoverySnapshot, DiscoverySource, SnapshotStream};

/// The service types browsed by default.
pub const DEFAULT_SERVICE_TYPES: [&str; 2] = cluster_types::DEFAULT_MDNS_SERVICE_TYPES;
/// First pause before a failed browse is restarted: 1 s (doubling to 30 s).
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause before a failed browse is restarted: 30 s.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// How long after a restart instances must be resolved again to stay: 3 s.
pub const DEFAULT_RESYNC_WINDOW: Duration = Duration::from_secs(3);

/// Configuration of an [`MdnsSource`].
///
/// Defaults: the [`DEFAULT_SERVICE_TYPES`], every interface, port 5353,
/// scheme `http`, restart backoff 1 s, resync window 3 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnsSourceConfig {
    /// Service types to browse, e.g. `_mlx-lm._tcp.local.` (a missing final
    /// dot is added).
    pub service_types: Vec<String>,
    /// Interface names to browse on; empty = all.
    pub interfaces: Vec<String>,
    /// mDNS UDP port. Default 5353.
    pub port: u16,
    /// Scheme of node URLs when TXT has no `scheme`. Default `http`.
    pub scheme: Scheme,
    /// First pause before a failed browse is restarted (doubles up to
    /// 30 s). Default 1 s.
    pub restart_backoff: Duration,
    /// After a restart, instances not resolved again within this window are
    /// dropped. Default 3 s.
    pub resync_window: Duration,
}

impl Default for MdnsSourceConfig {
    fn default() -> Self {
        Self {
            service_types: DEFAULT_SERVICE_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            interfaces: Vec::new(),
            port: cluster_types::MDNS_PORT,
            scheme: Scheme::Http,
            restart_backoff: DEFAULT_RESTART_BACKOFF,
            resync_window: DEFAULT_RESYNC_WINDOW,
        }
    }
}

impl MdnsSourceConfig {
    /// The configuration a `mode = "mdns"` discovery section describes.
    #[must_use]
    pub fn from_discovery(config: &cluster_types::MdnsDiscovery) -> Self {
        Self {
            service_types: config.service_types.clone(),
            interfaces: config.interfaces.clone(),
            port: config.port,
            scheme: config.scheme,
            ..Self::default()
        }
    }
}

/// `_x._tcp.local` → `_x._tcp.local.`, lowercased.
fn normalize_service_type(ty: &str) -> String {
    let ty = ty.trim().to_ascii_lowercase();
    if ty.ends_with('.') {
        ty
    } else {
        format!("{ty}.")
    }
}

/// What the browsing task last published.
#[derive(Debug, Clone, Default)]
struct Published {
    /// The last snapshot (kept while the browse fails).
    snapshot: DiscoverySnapshot,
    /// The current failure, if the browse is failing.
    error: Option<(&'static str, String, String)>,
}

impl Published {
    fn item(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        match &self.error {
            Some((operation, service_type, message)) => Err(DiscoveryError::Mdns {
                operation,
                service_type: service_type.clone(),
                message: message.clone(),
            }),
            None => Ok(self.snapshot.clone()),
        }
    }
}

/// Nodes found by browsing DNS-SD service types over mDNS. See the
/// [module docs](self).
///
/// Creating it starts a background task (and mdns-sd's daemon thread);
/// dropping it stops both. Must be created inside a tokio runtime.
pub struct MdnsSource {
    name: String,
    published: watch::Receiver<Published>,
    task: JoinHandle<()>,
    browser: Arc<DaemonBrowser>,
}

impl std::fmt::Debug for MdnsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsSource")
            .field("name", &self.name)
            .field("nodes", &self.published.borrow().snapshot.nodes.len())
            .finish_non_exhaustive()
    }
}

impl MdnsSource {
    /// Starts browsing.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidConfig`] for no service type, a service type
    /// that is not `_name._tcp.local.` or port 0;
    /// [`DiscoveryError::Mdns`] when the daemon cannot start.
    pub fn new(config: MdnsSourceConfig) -> Result<Self, DiscoveryError> {
        let invalid = |path: &str, message: String| DiscoveryError::InvalidConfig {
            path: format!("discovery.{path}"),
            message,
        };
        if config.service_types.is_empty() {
            return Err(invalid("service_types", "no service type".to_owned()));
        }
        let service_types: Vec<String> = config
            .service_types
            .iter()
            .map(|t| normalize_service_type(t))
            .collect();
        for ty in &service_types {
            if !ty.starts_with('_') || !ty.ends_with("._tcp.local.") {
                return Err(invalid(
                    "service_types",
                    format!("{ty:?} is not a service type like \"_mlx-lm._tcp.local.\""),
                ));
            }
        }
        if config.port == 0 {
            return Err(invalid("port", "port 0 is not a port".to_owned()));
        }
        let browser = Arc::new(DaemonBrowser::new(DaemonSettings {
            port: config.port,
            interfaces: config.interfaces.clone(),
        }));
        // Start the daemon now so a failure to start is reported here.
        browser.start()?;
        let name = format!("mdns:{}", service_types.join(","));
        let (tx, published) = watch::channel(Published::default());
        let task = tokio::spawn(run(
            Arc::clone(&browser) as Arc<dyn Browser>,
            service_types,
            config,
            tx,
        ));
        Ok(Self {
            name,
            published,
            task,
            browser,
        })
    }
}

impl Drop for MdnsSource {
    fn drop(&mut self) {
        self.task.abort();
        self.browser.shutdown();
    }
}

#[async_trait]
impl DiscoverySource for MdnsSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// The instances resolved so far (the last snapshot while the browse
    /// fails). Right after start this is usually empty: instances arrive
    /// through [`watch`](DiscoverySource::watch) within a second or two.
    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        Ok(self.published.borrow().snapshot.clone())
    }

    fn watch(&self) -> Option<SnapshotStream> {
        let mut rx = self.published.clone();
        rx.mark_changed();
        Some(
            futures::stream::unfold(rx, |mut rx| async move {
                rx.changed().await.ok()?;
                let item = rx.borrow_and_update().item();
                Some((item, rx))
            })
            .boxed(),
        )
    }
}

/// One message of the merged browses.
enum Message {
    Event(BrowseEvent),
    /// The browse of this service type ended.
    Ended(String),
}

/// The browsing task: folds events into the table and publishes; restarts
/// failed browses with backoff.
async fn run(
    browser: Arc<dyn Browser>,
    service_types: Vec<String>,
    config: MdnsSourceConfig,
    published: watch::Sender<Published>,
) {
    let mut table = InstanceTable::new(service_types.clone());
    let mut backoff = config.restart_backoff.max(Duration::from_millis(10));
    let mut restarted = false;
    let publish_snapshot = |table: &InstanceTable| {
        let snapshot = table.snapshot(config.scheme);
        published.send_modify(|p| {
            p.snapshot = snapshot;
            p.error = None;
        });
    };
    let publish_error = |error: DiscoveryError| {
        tracing::warn!(%error, "mDNS browse failed; keeping the last snapshot and restarting");
        if let DiscoveryError::Mdns {
            operation,
            service_type,
            message,
        } = error
        {
            published.send_modify(|p| p.error = Some((operation, service_type, message)));
        }
    };
    loop {
        let mut streams = Vec::with_capacity(service_types.len());
        let mut failed = None;
        for ty in &service_types {
            match browser.browse(ty) {
                Ok(stream) => {
                    let ended = ty.clone();
                    streams.push(
                        stream
                            .map(Message::Event)
                            .chain(futures::stream::once(async move { Message::Ended(ended) }))
                            .boxed(),
                    );
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(error) = failed {
            publish_error(error);
        } else {
            let mut merged = futures::stream::select_all(streams);
            let mut resync_at = restarted.then(|| {
                table.mark_stale();
                Instant::now() + config.resync_window
            });
            if published.borrow().error.is_some() {
                publish_snapshot(&table);
            }
            backoff = config.restart_backoff.max(Duration::from_millis(10));
            loop {
                tokio::select! {
                    message = merged.next() => match message {
                        Some(Message::Event(event)) => {
                            if table.apply(event) {
                                publish_snapshot(&table);
                            }
                        }
                        Some(Message::Ended(ty)) => {
                            publish_error(DiscoveryError::Mdns {
                                operation: "browse",
                                service_type: ty,
                                message: "the browse ended (mDNS daemon stopped or fell behind)".to_owned(),
                            });
                            break;
                        }
                        None => break,
                    },
                    () = sleep_until(resync_at), if resync_at.is_some() => {
                        resync_at = None;
                        if table.drop_stale() {
                            publish_snapshot(&table);
                        }
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
        browser.restart();
        restarted = true;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
