//! Changes without restarts: [`Cluster::reload`] applies a new
//! configuration to the running cluster, and [`Cluster::add_node`] /
//! [`Cluster::remove_node`] change static nodes at run time.
//!
//! What a reload changes, and when:
//! - **discovery** (the node list of `static`, or any setting or mode): the
//!   new source is built first (a failure rejects the reload), then the
//!   discovery loop restarts on it; nodes still present keep their health,
//!   cache model and in-flight requests, new ones are validated, missing
//!   ones are lost.
//! - **routing** (strategy) and **cache** (model capacity, TTL, warm-up,
//!   sync interval): the next request uses them.
//! - Needing a restart (reported in [`ReloadReport::restart_required`],
//!   the rest is still applied): `health`, `backoff`, `routing.session_ttl`
//!   and `routing.max_sessions`, the discovery timing
//!   (`refresh_interval`, `validation_timeout`), `gateway`, `node_tls` and
//!   `observability`.
//!
//! Runtime nodes live in memory only: a restart (or a reload) keeps what the
//! configuration says and forgets nothing else — except runtime nodes,
//! which survive reloads but not restarts.

use std::sync::Arc;

use cluster_discovery::{
    RefreshReport, normalize_base_url, options_from_config, source_from_config,
};
use cluster_types::{ClusterConfig, NodeId, NodeSpec};

use super::api::Cluster;
use crate::error::FacadeError;
use crate::params::RouterParams;

/// What [`Cluster::reload`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Sections whose changes are in force now (`discovery`, `routing`,
    /// `cache`), in that order.
    pub applied: Vec<&'static str>,
    /// Changed settings that take effect only after a restart.
    pub restart_required: Vec<&'static str>,
    /// Nodes announced by the discovery refresh that followed, sorted.
    pub discovered: Vec<NodeId>,
    /// Nodes lost by it, sorted.
    pub lost: Vec<NodeId>,
}

impl Cluster {
    /// Applies `config` to the running cluster. Requests in flight are not
    /// touched. Reloads and runtime node changes run one at a time.
    ///
    /// - **discovery** (the node list of `static`, or any setting or mode):
    ///   the new source is built first (a failure rejects the reload), then
    ///   the discovery loop restarts on it; nodes still present keep their
    ///   health, cache model and in-flight requests, new ones are
    ///   validated, missing ones are lost.
    /// - **routing** (strategy) and **cache** (model capacity, TTL,
    ///   warm-up, sync interval): the next request uses them.
    /// - Needing a restart (listed in [`ReloadReport::restart_required`];
    ///   the rest is still applied): `health`, `backoff`,
    ///   `routing.session_ttl` and `routing.max_sessions`, the discovery
    ///   timing (`refresh_interval`, `validation_timeout`) and `gateway`.
    ///
    /// # Errors
    /// [`FacadeError::InvalidConfig`] with every problem (the running
    /// configuration is kept); [`FacadeError::InitializationFailed`] (stage
    /// `discovery`) when the new discovery source cannot be built (nothing
    /// is changed); [`FacadeError::NotInitialized`] after shutdown.
    pub async fn reload(&self, config: ClusterConfig) -> Result<ReloadReport, FacadeError> {
        self.running("reload")?;
        config
            .validate()
            .map_err(|problems| FacadeError::InvalidConfig {
                path: None,
                problems,
            })?;
        let inner = &self.inner;
        let _one_at_a_time = inner.reload.lock().await;
        let old = inner.config.load_full();
        let mut report = ReloadReport::default();

        // Everything that can fail comes first: nothing is applied if it does.
        let new_source = if old.discovery == config.discovery {
            None
        } else {
            Some(source_from_config(&config.discovery).await.map_err(|e| {
                FacadeError::InitializationFailed {
                    stage: "discovery",
                    source: Box::new(e),
                }
            })?)
        };

        let restart = [
            ("health", old.health != config.health),
            ("backoff", old.backoff != config.backoff),
            (
                "routing.session_ttl",
                old.routing.session_ttl != config.routing.session_ttl,
            ),
            (
                "routing.max_sessions",
                old.routing.max_sessions != config.routing.max_sessions,
            ),
            (
                "discovery.refresh_interval / validation_timeout",
                options_from_config(&old.discovery) != options_from_config(&config.discovery),
            ),
            ("gateway", old.gateway != config.gateway),
            ("node_tls", old.node_tls != config.node_tls),
            ("observability", old.observability != config.observability),
        ];
        report.restart_required = restart
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| *key)
            .collect();

        let routing_changed = old.routing != config.routing;
        let cache_changed = old.cache != config.cache;
        if routing_changed || cache_changed {
            // Settings the configuration does not hold (cost model, seed)
            // stay as they are.
            let current = inner.router.params();
            let mut params = RouterParams::from_config(&config);
            params.seed = current.seed;
            params.cost = current.cost;
            inner.router.set_params(params);
        }
        inner.config.store(Arc::new(config));

        if let Some(source) = new_source {
            inner.layered.set_base(source);
            inner.discovery.stop().await;
            let first =
                inner
                    .discovery
                    .start()
                    .await
                    .map_err(|e| FacadeError::InitializationFailed {
                        stage: "discovery",
                        source: Box::new(e),
                    })?;
            self.apply_refresh(&first);
            report.discovered = first.discovered;
            report.lost = first.lost;
            report.applied.push("discovery");
        }
        if routing_changed {
            report.applied.push("routing");
        }
        if cache_changed {
            report.applied.push("cache");
        }
        tracing::info!(applied = ?report.applied, restart_required = ?report.restart_required, "configuration reloaded");
        Ok(report)
    }

    /// Adds a static node at run time (the admin API's `POST
    /// /admin/nodes`). It is validated like any discovered node (`GET
    /// /v1/models`) and announced when it passes; one that fails stays
    /// listed and is retried at each refresh, as a configured static node
    /// would be. Runtime nodes are kept in memory only: a restart forgets
    /// them (a reload keeps them). They carry the tag
    /// [`TAG_RUNTIME`](crate::TAG_RUNTIME) in status. Returns whether the
    /// node is routable-to-be (announced) now, and the validation error if
    /// not.
    ///
    /// # Errors
    /// [`FacadeError::InvalidNode`] (empty id or with whitespace, bad URL,
    /// weight 0); [`FacadeError::NodeExists`] when a node with this id is in
    /// the cluster; [`FacadeError::NotInitialized`] after shutdown.
    pub async fn add_node(&self, mut spec: NodeSpec) -> Result<Option<String>, FacadeError> {
        self.running("add_node")?;
        let invalid = |message: String| FacadeError::InvalidNode {
            node: spec.id.clone(),
            message,
        };
        if spec.id.as_str().is_empty() || spec.id.as_str().contains(char::is_whitespace) {
            return Err(invalid(
                "the id must be non-empty, without whitespace".to_owned(),
            ));
        }
        if spec.weight == 0 {
            return Err(invalid("the weight must be at least 1".to_owned()));
        }
        spec.url = normalize_base_url(&spec.id, &spec.url).map_err(|e| invalid(e.to_string()))?;
        let inner = &self.inner;
        let _one_at_a_time = inner.reload.lock().await;
        let id = spec.id.clone();
        if inner.router.snapshot().entry(&id).is_some() || !inner.layered.add(spec) {
            return Err(FacadeError::NodeExists { node: id });
        }
        let report = inner.discovery.refresh_now().await;
        self.apply_refresh(&report);
        tracing::info!(node = %id, announced = report.discovered.contains(&id), "runtime node added");
        if report.discovered.contains(&id) {
            return Ok(None);
        }
        Ok(Some(match &report.error {
            Some(e) => e.to_string(),
            None if report.rejected.contains(&id) => {
                "validation failed (GET /v1/models); retried at each refresh".to_owned()
            }
            None => "not announced (same URL as another node?)".to_owned(),
        }))
    }

    /// Removes a node added with [`add_node`](Self::add_node); requests in
    /// flight on it finish.
    ///
    /// # Errors
    /// [`FacadeError::NotRuntimeNode`] for a node that was not added at run
    /// time; [`FacadeError::NotInitialized`] after shutdown.
    pub async fn remove_node(&self, id: &NodeId) -> Result<(), FacadeError> {
        self.running("remove_node")?;
        let inner = &self.inner;
        let _one_at_a_time = inner.reload.lock().await;
        if !inner.layered.remove(id) {
            return Err(FacadeError::NotRuntimeNode { node: id.clone() });
        }
        let report = inner.discovery.refresh_now().await;
        self.apply_refresh(&report);
        tracing::info!(node = %id, "runtime node removed");
        Ok(())
    }

    /// The nodes added at run time (announced or not), in order of addition.
    #[must_use]
    pub fn runtime_nodes(&self) -> Vec<NodeSpec> {
        self.inner.layered.runtime_nodes()
    }

    /// Applies a refresh's changes now rather than when the event task runs
    /// (so the caller sees them on return).
    fn apply_refresh(&self, report: &RefreshReport) {
        let inner = &self.inner;
        for node in inner.discovery.nodes() {
            inner.track(node.spec().clone());
        }
        for id in &report.lost {
            inner.health.remove_node(id);
        }
        inner.rebuild();
    }
}
