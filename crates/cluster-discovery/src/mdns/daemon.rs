//! The mdns-sd daemon behind [`Browser`]: one daemon thread per source,
//! created lazily, restarted after a failure.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use futures::StreamExt;
use futures::stream::BoxStream;
use mdns_sd::{DaemonEvent, IfKind, ResolvedService, ServiceDaemon, ServiceEvent};

use super::instance::{BrowseEvent, Instance};
use crate::DiscoveryError;

/// Opens browses; the source's task owns one. A trait so the task's state
/// machine is unit-tested with scripted events.
pub(crate) trait Browser: Send + Sync + 'static {
    /// Starts browsing `service_type`: the stream ends when the browse
    /// does (the daemon died, or its channel overflowed).
    fn browse(&self, service_type: &str)
    -> Result<BoxStream<'static, BrowseEvent>, DiscoveryError>;

    /// Throws the current daemon away; the next [`browse`](Self::browse)
    /// starts a new one.
    fn restart(&self);
}

/// Where and how the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DaemonSettings {
    /// UDP port (5353).
    pub(crate) port: u16,
    /// Interface names to use; empty = all.
    pub(crate) interfaces: Vec<String>,
}

/// Starts an mdns-sd daemon on `settings`' port and interfaces, logging
/// its error events. Must run inside a tokio runtime (for the logger).
pub(crate) fn start_daemon(settings: &DaemonSettings) -> Result<ServiceDaemon, DiscoveryError> {
    let error = |message: String| DiscoveryError::Mdns {
        operation: "daemon",
        service_type: format!("port {}", settings.port),
        message,
    };
    let daemon = ServiceDaemon::new_with_port(settings.port).map_err(|e| error(e.to_string()))?;
    if !settings.interfaces.is_empty() {
        daemon
            .disable_interface(IfKind::All)
            .map_err(|e| error(e.to_string()))?;
        let names: Vec<IfKind> = settings
            .interfaces
            .iter()
            .map(|name| IfKind::Name(name.clone()))
            .collect();
        daemon
            .enable_interface(names)
            .map_err(|e| error(e.to_string()))?;
    }
    match daemon.monitor() {
        Ok(events) => {
            tokio::spawn(async move {
                while let Ok(event) = events.recv_async().await {
                    match event {
                        DaemonEvent::Error(e) => tracing::warn!(error = %e, "mDNS daemon error"),
                        DaemonEvent::NameChange(change) => tracing::warn!(
                            original = %change.original,
                            new_name = %change.new_name,
                            "mDNS name conflict resolved by renaming"
                        ),
                        other => tracing::debug!(event = ?other, "mDNS daemon event"),
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot monitor the mDNS daemon"),
    }
    Ok(daemon)
}

/// Stops `daemon`'s thread (its sockets close); errors mean it is already
/// gone.
pub(crate) fn stop_daemon(daemon: &ServiceDaemon) {
    if let Err(e) = daemon.shutdown() {
        tracing::debug!(error = %e, "mDNS daemon already stopped");
    }
}

/// The real [`Browser`] over mdns-sd.
pub(crate) struct DaemonBrowser {
    settings: DaemonSettings,
    daemon: Mutex<Option<ServiceDaemon>>,
}

impl DaemonBrowser {
    pub(crate) fn new(settings: DaemonSettings) -> Self {
        Self {
            settings,
            daemon: Mutex::new(None),
        }
    }

    fn daemon(&self) -> Result<ServiceDaemon, DiscoveryError> {
        let mut slot = self.daemon.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(daemon) = slot.as_ref() {
            return Ok(daemon.clone());
        }
        let daemon = start_daemon(&self.settings)?;
        *slot = Some(daemon.clone());
        Ok(daemon)
    }

    /// Starts the daemon now (if it is not running).
    pub(crate) fn start(&self) -> Result<(), DiscoveryError> {
        self.daemon().map(|_| ())
    }

    /// Stops the daemon for good (the source is dropped).
    pub(crate) fn shutdown(&self) {
        if let Some(daemon) = self
            .daemon
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            stop_daemon(&daemon);
        }
    }
}

impl Browser for DaemonBrowser {
    fn browse(
        &self,
        service_type: &str,
    ) -> Result<BoxStream<'static, BrowseEvent>, DiscoveryError> {
        let daemon = self.daemon()?;
        let receiver = daemon
            .browse(service_type)
            .map_err(|e| DiscoveryError::Mdns {
                operation: "browse",
                service_type: service_type.to_owned(),
                message: e.to_string(),
            })?;
        Ok(receiver
            .into_stream()
            .filter_map(|event| async move { browse_event(event) })
            .boxed())
    }

    fn restart(&self) {
        self.shutdown();
    }
}

/// mdns-sd's event as ours (`None` for search started/stopped and
/// instances found but not resolved yet).
fn browse_event(event: ServiceEvent) -> Option<BrowseEvent> {
    match event {
        ServiceEvent::ServiceResolved(service) => Some(BrowseEvent::Resolved(instance(&service))),
        ServiceEvent::ServiceRemoved(service_type, fullname) => Some(BrowseEvent::Removed {
            service_type,
            fullname,
        }),
        _ => None,
    }
}

fn instance(service: &ResolvedService) -> Instance {
    let mut addresses: Vec<IpAddr> = service
        .get_addresses()
        .iter()
        .map(mdns_sd::ScopedIp::to_ip_addr)
        .collect();
    addresses.sort();
    addresses.dedup();
    let mut txt = std::collections::BTreeMap::new();
    for property in service.get_properties().iter() {
        txt.entry(property.key().to_ascii_lowercase())
            .or_insert_with(|| property.val_str().to_owned());
    }
    Instance {
        service_type: service.ty_domain.clone(),
        fullname: service.get_fullname().to_owned(),
        host: service.get_hostname().to_owned(),
        port: service.get_port(),
        addresses,
        txt,
    }
}

#[cfg(test)]
mod tests {
    use mdns_sd::ServiceInfo;

    use super::*;

    #[test]
    fn resolved_services_become_instances() {
        let info = ServiceInfo::new(
            "_mlx-lm._tcp.local.",
            "Mac.Studio",
            "mac-studio.local.",
            "192.0.2.5,2001:db8::5",
            8080,
            &[("Weight", "2"), ("model", "m"), ("weight", "9")][..],
        )
        .unwrap();
        let Some(BrowseEvent::Resolved(i)) = browse_event(ServiceEvent::ServiceResolved(Box::new(
            info.as_resolved_service(),
        ))) else {
            panic!("resolved expected")
        };
        assert_eq!(i.fullname, "Mac\\.Studio._mlx-lm._tcp.local.");
        assert_eq!(i.host, "mac-studio.local.");
        assert_eq!(i.port, 8080);
        assert_eq!(i.addresses.len(), 2);
        assert_eq!(i.txt["model"], "m");
        assert_eq!(i.txt.len(), 2);
        let node =
            super::super::instance::instance_to_node(&i, cluster_types::Scheme::Http).unwrap();
        assert_eq!(node.id().as_str(), "Mac.Studio");
        assert_eq!(node.url(), "http://192.0.2.5:8080");

        assert_eq!(
            browse_event(ServiceEvent::ServiceRemoved("t".into(), "f".into())),
            Some(BrowseEvent::Removed {
                service_type: "t".into(),
                fullname: "f".into()
            })
        );
        assert_eq!(browse_event(ServiceEvent::SearchStarted("t".into())), None);
    }
}
