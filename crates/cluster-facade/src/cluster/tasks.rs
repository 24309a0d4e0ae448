//! The cluster's background tasks: discovery and health events applied to
//! the snapshot, periodic housekeeping (expiry, cache sync), node warm-up.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster_discovery::DiscoveryEvent;
use cluster_health::HealthEvent;
use cluster_types::{NodeKind, NodeSpec};
use tokio::sync::broadcast;

use super::state::{Inner, Unreachable};
use crate::coordinator;
use crate::events::ClusterEvent;

impl Inner {
    pub(super) fn on_discovery(self: &Arc<Self>, event: DiscoveryEvent) {
        match event {
            DiscoveryEvent::Discovered(node) => {
                self.unreachable.lock().remove(node.id());
                self.coordinator.sync.forget(node.id());
                self.track(self.effective_spec(&node));
                self.rebuild();
                self.emit(ClusterEvent::NodeDiscovered {
                    node: node.id().clone(),
                    url: node.url().to_owned(),
                    models: node.models.clone(),
                });
                Self::spawn_warmup(self, node.spec().clone(), node.models.first().cloned());
            }
            DiscoveryEvent::Lost(node) => {
                // A drained node stays drained if it comes back (same id).
                self.health.remove_node(node.id());
                self.rebuild();
                self.emit(ClusterEvent::NodeLost {
                    node: node.id().clone(),
                });
            }
            DiscoveryEvent::Updated { current, .. } => {
                self.health.add_node(self.effective_spec(&current));
                self.rebuild();
                self.emit(ClusterEvent::NodeUpdated {
                    node: current.id().clone(),
                });
            }
            DiscoveryEvent::Error(error) => {
                if let Some(node) = error.node()
                    && let Some(url) = error.url()
                {
                    self.unreachable.lock().insert(
                        node.clone(),
                        Unreachable {
                            url: url.to_owned(),
                            reason: error.to_string(),
                            at: self.clock.now(),
                        },
                    );
                }
                self.emit(ClusterEvent::DiscoveryFailed {
                    message: error.to_string(),
                });
            }
            _ => {}
        }
    }

    pub(super) fn on_health(&self, event: HealthEvent) {
        match event {
            HealthEvent::StatusChanged(change) => {
                self.rebuild();
                self.emit(ClusterEvent::NodeStatusChanged {
                    node: change.node,
                    from: change.from,
                    to: change.to,
                });
            }
            HealthEvent::Saturated { node, until } => {
                self.router.mark_saturated(&node, until);
                let now = self.clock.now();
                let ms = u64::try_from(until.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX);
                self.emit(ClusterEvent::NodeSaturated {
                    node,
                    retry_after_ms: ms,
                });
            }
            _ => {}
        }
    }

    pub(super) fn spawn_tasks(
        this: &Arc<Self>,
        mut discovery_events: broadcast::Receiver<DiscoveryEvent>,
        mut health_events: broadcast::Receiver<HealthEvent>,
    ) {
        let mut tasks = this.tasks.lock();
        let weak: Weak<Self> = Arc::downgrade(this);
        tasks.push(tokio::spawn(async move {
            loop {
                let event = discovery_events.recv().await;
                let Some(inner) = weak.upgrade() else { break };
                match event {
                    Ok(e) => inner.on_discovery(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for node in inner.discovery.nodes() {
                            inner.track(inner.effective_spec(&node));
                        }
                        inner.rebuild();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
        let weak: Weak<Self> = Arc::downgrade(this);
        tasks.push(tokio::spawn(async move {
            loop {
                let event = health_events.recv().await;
                let Some(inner) = weak.upgrade() else { break };
                match event {
                    Ok(e) => inner.on_health(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => inner.rebuild(),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
        let weak: Weak<Self> = Arc::downgrade(this);
        tasks.push(tokio::spawn(async move {
            loop {
                // Read each round: a reload may change it.
                let interval = match weak.upgrade() {
                    Some(inner) => inner
                        .config
                        .load()
                        .cache
                        .sync_interval
                        .max(Duration::from_millis(100)),
                    None => break,
                };
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { break };
                inner.housekeeping().await;
            }
        }));
    }

    /// Expiry of cache entries and sessions, then cache sync.
    pub(super) async fn housekeeping(&self) {
        let now = self.clock.now();
        self.router.expire(now);
        let snap = self.router.snapshot();
        let timeout = self.config.load().health.timeout;
        let mut capacity_changed = false;
        for entry in snap.entries() {
            if !entry.status.is_routable() {
                continue;
            }
            let kind = NodeKind::from_tags(&entry.spec.tags).unwrap_or_default();
            let Some(report) = coordinator::sync_node(
                &self.coordinator.http,
                &self.coordinator.sync,
                &entry.spec,
                kind,
                timeout,
            )
            .await
            else {
                continue;
            };
            let id = &entry.spec.id;
            capacity_changed |=
                coordinator::apply_report(&self.router, &self.coordinator.sync, id, &report);
            if let Some(entries) = report.entries {
                self.emit(ClusterEvent::CacheSynced {
                    node: id.clone(),
                    entries,
                });
            }
        }
        if capacity_changed {
            self.rebuild();
        }
    }

    pub(super) fn spawn_warmup(this: &Arc<Self>, spec: NodeSpec, model: Option<String>) {
        if this.config.load().cache.warmup_prompts.is_empty()
            || this.stopped.load(Ordering::Acquire)
        {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(this);
        let task = tokio::spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            let limit = Arc::clone(&inner.coordinator.warmup_limit);
            let result = coordinator::warm_up(
                &inner.coordinator.http,
                &inner.router,
                &limit,
                &inner.config.load().cache,
                &spec,
                model.as_deref(),
            )
            .await;
            inner.emit(ClusterEvent::WarmupFinished {
                node: spec.id.clone(),
                warmed: result.warmed,
                failed: result.failed,
            });
        });
        let mut tasks = this.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}
