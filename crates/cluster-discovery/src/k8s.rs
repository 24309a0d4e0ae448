//! Kubernetes discovery (feature `k8s`): the ready endpoints of one
//! Service's `discovery.k8s.io/v1` EndpointSlices, followed with
//! kube-runtime's watcher.
//!
//! - **Which slices**: those labelled `kubernetes.io/service-name=SERVICE`
//!   in one namespace, or any label selector you give.
//! - **Which endpoints**: ready ones only. Kubernetes says a missing
//!   `conditions.ready` means "unknown, treat as ready", so only an explicit
//!   `ready: false` (or a terminating endpoint) is left out.
//! - **Which port**: the port named [`KubernetesSourceConfig::port_name`];
//!   without a name, the slice's only port, or else its port named `http`.
//!   A slice with no such port is skipped with a warning.
//! - **Id**: the endpoint's target name (the pod name), else its hostname,
//!   else `address:port`. **URL**: `scheme://address:port` of the first
//!   address. **Weight** 1. **Tags**: `k8s.namespace`, `k8s.slice`,
//!   `k8s.pod`, `k8s.node`, `k8s.zone` when known.
//! - **Watching**: [`DiscoverySource::watch`] runs kube's `watcher` (list,
//!   then watch from the list's resourceVersion, bookmarks on) with its
//!   default backoff. Slices listed during a (re)list are buffered and the
//!   node set is swapped at `InitDone` — never half-built; after that every
//!   `Apply`/`Delete` pushes a new full snapshot. A 410 Gone (expired
//!   resourceVersion) makes the watcher relist; errors are pushed as `Err`
//!   items and the last snapshot stays.
//! - **Client**: in-cluster config or kubeconfig (`Client::try_default`), or
//!   an explicit API server URL ([`KubernetesSourceConfig::api_url`]).
//!
//! The library enables no `k8s-openapi` version feature: the binary (or test
//! package) that links it picks exactly one (`k8s-openapi/latest`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use cluster_types::{NodeId, NodeSpec, Scheme};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};

use crate::{
    DiscoveredNode, DiscoveryError, DiscoverySnapshot, DiscoverySource, NodeOrigin, SnapshotStream,
};

/// The label EndpointSlice controllers put on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Configuration of a [`KubernetesSource`].
///
/// Defaults (from [`KubernetesSourceConfig::new`]): the client's default
/// namespace, no explicit selector, no port name, scheme `http`, client from
/// the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSourceConfig {
    /// Namespace of the Service. `None` (default): the client's default
    /// namespace (the pod's own namespace in a cluster, the kubeconfig
    /// context's otherwise).
    pub namespace: Option<String>,
    /// The Service whose slices to watch (selector
    /// `kubernetes.io/service-name=SERVICE`).
    pub service_name: Option<String>,
    /// A label selector used instead of the Service's (e.g.
    /// `app=mlx,tier=inference`). Default none.
    pub label_selector: Option<String>,
    /// Name of the port to use (`EndpointPort.name`). A slice without a port
    /// of that name but with exactly one unnamed port uses that one. Default
    /// none: the slice's only port, or its port named `http`.
    pub port_name: Option<String>,
    /// Scheme of the node URLs. Default `http`.
    pub scheme: Scheme,
    /// API server URL, e.g. `http://127.0.0.1:8001` (a `kubectl proxy`, or a
    /// test fixture). Default none: in-cluster config, else kubeconfig.
    pub api_url: Option<String>,
}

impl KubernetesSourceConfig {
    /// The defaults, watching the slices of Service `service_name`.
    #[must_use]
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            namespace: None,
            service_name: Some(service_name.into()),
            label_selector: None,
            port_name: None,
            scheme: Scheme::Http,
            api_url: None,
        }
    }

    /// The label selector in force: the explicit one, else the Service's.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidConfig`] when neither is set.
    pub fn selector(&self) -> Result<String, DiscoveryError> {
        match (&self.label_selector, &self.service_name) {
            (Some(selector), _) if !selector.trim().is_empty() => Ok(selector.trim().to_owned()),
            (_, Some(service)) if !service.trim().is_empty() => {
                Ok(format!("{SERVICE_NAME_LABEL}={}", service.trim()))
            }
            _ => Err(DiscoveryError::InvalidConfig {
                path: "discovery.service_name".to_owned(),
                message: "set a service name or a label selector".to_owned(),
            }),
        }
    }
}

/// Nodes from the ready endpoints of a Service's EndpointSlices. See the
/// [module docs](self).
#[derive(Clone)]
pub struct KubernetesSource {
    api: Api<EndpointSlice>,
    config: KubernetesSourceConfig,
    namespace: String,
    selector: String,
}

impl std::fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSource")
            .field("namespace", &self.namespace)
            .field("selector", &self.selector)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KubernetesSource {
    /// Builds the client (explicit [`api_url`](KubernetesSourceConfig::api_url),
    /// else in-cluster config or kubeconfig) and the source.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidConfig`] for a config without service or
    /// selector, or a bad API URL;
    /// [`DiscoveryError::KubernetesClient`] when no client configuration can
    /// be found.
    pub async fn new(config: KubernetesSourceConfig) -> Result<Self, DiscoveryError> {
        let client_error = |e: kube::Error| DiscoveryError::KubernetesClient {
            source: Box::new(e),
        };
        let client = match &config.api_url {
            Some(url) => {
                let uri: http::Uri = url.parse().map_err(|e| DiscoveryError::InvalidConfig {
                    path: "discovery.api_url".to_owned(),
                    message: format!("{url:?} is not a URL: {e}"),
                })?;
                let mut kube_config = Config::new(uri);
                if let Some(namespace) = &config.namespace {
                    kube_config.default_namespace.clone_from(namespace);
                }
                Client::try_from(kube_config).map_err(client_error)?
            }
            None => Client::try_default().await.map_err(client_error)?,
        };
        Self::with_client(client, config)
    }

    /// The source over an existing client.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidConfig`] for a config without service or
    /// selector.
    pub fn with_client(
        client: Client,
        config: KubernetesSourceConfig,
    ) -> Result<Self, DiscoveryError> {
        let selector = config.selector()?;
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        Ok(Self {
            api: Api::namespaced(client, &namespace),
            config,
            namespace,
            selector,
        })
    }

    /// The namespace watched.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The label selector used.
    #[must_use]
    pub fn selector(&self) -> &str {
        &self.selector
    }

    fn error(
        &self,
        operation: &'static str,
        code: Option<u16>,
        source: crate::BoxError,
    ) -> DiscoveryError {
        DiscoveryError::Kubernetes {
            operation,
            namespace: self.namespace.clone(),
            selector: self.selector.clone(),
            code,
            source,
        }
    }

    fn snapshot<'a>(
        &self,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> DiscoverySnapshot {
        DiscoverySnapshot::new(nodes_from_slices(slices, &self.config, &self.namespace))
    }
}

fn kube_error_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[async_trait]
impl DiscoverySource for KubernetesSource {
    fn name(&self) -> String {
        format!("kubernetes:{}/{}", self.namespace, self.selector)
    }

    async fn discover(&self) -> Result<DiscoverySnapshot, DiscoveryError> {
        let mut slices = Vec::new();
        let mut params = ListParams::default().labels(&self.selector);
        loop {
            let page = self.api.list(&params).await.map_err(|e| {
                let code = kube_error_code(&e);
                self.error("list", code, Box::new(e))
            })?;
            slices.extend(page.items);
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => break,
            }
        }
        Ok(self.snapshot(&slices))
    }

    fn watch(&self) -> Option<SnapshotStream> {
        let source = self.clone();
        let config = watcher::Config::default().labels(&self.selector);
        let events = watcher(self.api.clone(), config).default_backoff();
        let snapshots = events
            .scan(SliceSet::default(), move |set, event| {
                let item = match event {
                    Ok(event) => set
                        .apply(event)
                        .map(|slices| Ok(source.snapshot(slices.values()))),
                    Err(error) => {
                        let code = match &error {
                            watcher::Error::InitialListFailed(e)
                            | watcher::Error::WatchStartFailed(e)
                            | watcher::Error::WatchFailed(e) => kube_error_code(e),
                            watcher::Error::WatchError(status) => Some(status.code),
                            watcher::Error::NoResourceVersion => None,
                        };
                        let operation = if matches!(error, watcher::Error::InitialListFailed(_)) {
                            "list"
                        } else {
                            "watch"
                        };
                        Some(Err(source.error(operation, code, Box::new(error))))
                    }
                };
                futures::future::ready(Some(item))
            })
            .filter_map(futures::future::ready);
        Some(snapshots.boxed())
    }
}

/// The slices known to a watch: the published set, and the one being built
/// during a (re)list.
#[derive(Default)]
struct SliceSet {
    current: BTreeMap<String, EndpointSlice>,
    building: Option<BTreeMap<String, EndpointSlice>>,
}

impl SliceSet {
    /// Applies one watcher event; returns the set to publish, if the event
    /// completes one.
    fn apply(
        &mut self,
        event: watcher::Event<EndpointSlice>,
    ) -> Option<&BTreeMap<String, EndpointSlice>> {
        match event {
            watcher::Event::Init => {
                self.building = Some(BTreeMap::new());
                None
            }
            watcher::Event::InitApply(slice) => {
                self.building
                    .get_or_insert_with(BTreeMap::new)
                    .insert(slice_key(&slice), slice);
                None
            }
            watcher::Event::InitDone => {
                self.current = self.building.take().unwrap_or_default();
                Some(&self.current)
            }
            watcher::Event::Apply(slice) => {
                self.current.insert(slice_key(&slice), slice);
                Some(&self.current)
            }
            watcher::Event::Delete(slice) => {
                self.current.remove(&slice_key(&slice));
                Some(&self.current)
            }
        }
    }
}

fn slice_key(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// `EndpointSlice.endpoints` is a `Vec` in some Kubernetes API versions and
/// an `Option<Vec>` in others; the library compiles against whichever
/// version the final binary picks.
trait EndpointList {
    fn as_endpoints(&self) -> &[Endpoint];
}

impl EndpointList for Vec<Endpoint> {
    fn as_endpoints(&self) -> &[Endpoint] {
        self
    }
}

impl EndpointList for Option<Vec<Endpoint>> {
    fn as_endpoints(&self) -> &[Endpoint] {
        self.as_deref().unwrap_or_default()
    }
}

fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .is_none_or(|c| c.ready != Some(false) && c.terminating != Some(true))
}

/// The port of `slice` to use, per the config.
fn slice_port(slice: &EndpointSlice, port_name: Option<&str>) -> Option<u16> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let unnamed = |p: &&k8s_openapi::api::discovery::v1::EndpointPort| {
        p.name.as_deref().is_none_or(str::is_empty)
    };
    let chosen = match port_name {
        Some(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .or_else(|| ports.first().filter(|p| ports.len() == 1 && unnamed(p))),
        None if ports.len() == 1 => ports.first(),
        None => ports.iter().find(|p| p.name.as_deref() == Some("http")),
    };
    chosen
        .and_then(|p| p.port)
        .and_then(|port| u16::try_from(port).ok())
        .filter(|port| *port != 0)
}

fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// The nodes of a set of slices: ready endpoints only, IPv4 slices first,
/// then by slice name and endpoint order.
pub(crate) fn nodes_from_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    config: &KubernetesSourceConfig,
    namespace: &str,
) -> Vec<DiscoveredNode> {
    let mut slices: Vec<&EndpointSlice> = slices.into_iter().collect();
    slices.sort_by_key(|s| (s.address_type != "IPv4", s.metadata.name.clone()));
    let mut nodes = Vec::new();
    for slice in slices {
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        let Some(port) = slice_port(slice, config.port_name.as_deref()) else {
            tracing::warn!(
                slice = %slice_name,
                port_name = ?config.port_name,
                "EndpointSlice has no usable port; skipping it"
            );
            continue;
        };
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL).cloned());
        for endpoint in slice.endpoints.as_endpoints() {
            if !is_ready(endpoint) {
                continue;
            }
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let pod = endpoint.target_ref.as_ref().and_then(|r| r.name.clone());
            let id = pod
                .clone()
                .or_else(|| endpoint.hostname.clone())
                .unwrap_or_else(|| host_port(address, port));
            let mut spec = NodeSpec::new(
                NodeId::from(id),
                format!("{}://{}", config.scheme.as_str(), host_port(address, port)),
            );
            spec.tags
                .insert("k8s.namespace".to_owned(), namespace.to_owned());
            spec.tags.insert("k8s.slice".to_owned(), slice_name.clone());
            if let Some(pod) = &pod {
                spec.tags.insert("k8s.pod".to_owned(), pod.clone());
            }
            if let Some(node) = &endpoint.node_name {
                spec.tags.insert("k8s.node".to_owned(), node.clone());
            }
            if let Some(zone) = &endpoint.zone {
                spec.tags.insert("k8s.zone".to_owned(), zone.clone());
            }
            let target = endpoint.target_ref.as_ref().and_then(|r| {
                r.name
                    .as_ref()
                    .map(|name| format!("{}/{name}", r.kind.as_deref().unwrap_or("Pod")))
            });
            nodes.push(DiscoveredNode::new(
                spec,
                NodeOrigin::Kubernetes {
                    namespace: namespace.to_owned(),
                    service: service.clone(),
                    slice: slice_name.clone(),
                    target,
                },
            ));
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": "ns",
                "resourceVersion": "1",
                "labels": {"kubernetes.io/service-name": "mlx"}
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn ep(ip: &str, pod: &str, ready: Option<bool>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "addresses": [ip],
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "ns"},
            "nodeName": "worker-1"
        });
        if let Some(ready) = ready {
            v["conditions"] = serde_json::json!({"ready": ready});
        }
        v
    }

    fn ids(nodes: &[DiscoveredNode]) -> Vec<&str> {
        nodes.iter().map(|n| n.id().as_str()).collect()
    }

    #[test]
    fn selector_from_service_or_labels() {
        let c = KubernetesSourceConfig::new("mlx");
        assert_eq!(c.selector().unwrap(), "kubernetes.io/service-name=mlx");
        let mut c = KubernetesSourceConfig::new("mlx");
        c.label_selector = Some("app=mlx".into());
        assert_eq!(c.selector().unwrap(), "app=mlx");
        c.label_selector = None;
        c.service_name = None;
        assert_eq!(c.selector().unwrap_err().code(), "invalid_config");
    }

    #[test]
    fn ready_endpoints_only_with_named_port() {
        let s = slice(
            "mlx-abc",
            serde_json::json!([{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]),
            serde_json::json!([
                ep("10.0.0.1", "mlx-0", Some(true)),
                ep("10.0.0.2", "mlx-1", Some(false)),
                ep("10.0.0.3", "mlx-2", None),
            ]),
        );
        let config = KubernetesSourceConfig::new("mlx");
        let nodes = nodes_from_slices([&s], &config, "ns");
        assert_eq!(ids(&nodes), ["mlx-0", "mlx-2"]);
        assert_eq!(nodes[0].url(), "http://10.0.0.1:8080");
        assert_eq!(nodes[0].spec.tags["k8s.pod"], "mlx-0");
        assert_eq!(nodes[0].spec.tags["k8s.node"], "worker-1");
        assert_eq!(
            nodes[0].origin,
            NodeOrigin::Kubernetes {
                namespace: "ns".into(),
                service: Some("mlx".into()),
                slice: "mlx-abc".into(),
                target: Some("Pod/mlx-0".into()),
            }
        );

        let mut config = KubernetesSourceConfig::new("mlx");
        config.port_name = Some("metrics".into());
        let nodes = nodes_from_slices([&s], &config, "ns");
        assert_eq!(nodes[0].url(), "http://10.0.0.1:9090");

        config.port_name = Some("grpc".into());
        assert!(nodes_from_slices([&s], &config, "ns").is_empty());
    }

    #[test]
    fn single_unnamed_port_terminating_and_ipv6() {
        let s = slice(
            "b",
            serde_json::json!([{"port": 8080}]),
            serde_json::json!([
                {"addresses": ["10.0.0.9"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.0.0.8"]},
            ]),
        );
        let mut v6: EndpointSlice = slice(
            "a",
            serde_json::json!([{"port": 8080}]),
            serde_json::json!([{"addresses": ["fd00::1"], "conditions": {"ready": true}}]),
        );
        v6.address_type = "IPv6".into();
        let nodes = nodes_from_slices([&v6, &s], &KubernetesSourceConfig::new("mlx"), "ns");
        assert_eq!(ids(&nodes), ["10.0.0.8:8080", "[fd00::1]:8080"]);
        assert_eq!(nodes[1].url(), "http://[fd00::1]:8080");
        // A port name that is not there falls back to the single unnamed port.
        let mut config = KubernetesSourceConfig::new("mlx");
        config.port_name = Some("http".into());
        config.scheme = Scheme::Https;
        let nodes = nodes_from_slices([&s], &config, "ns");
        assert_eq!(nodes[0].url(), "https://10.0.0.8:8080");
    }

    #[test]
    fn slice_set_swaps_at_init_done() {
        let a = slice(
            "a",
            serde_json::json!([{"port": 1}]),
            serde_json::json!([ep("10.0.0.1", "p", Some(true))]),
        );
        let b = slice("b", serde_json::json!([{"port": 1}]), serde_json::json!([]));
        let mut set = SliceSet::default();
        assert!(set.apply(watcher::Event::Init).is_none());
        assert!(set.apply(watcher::Event::InitApply(a.clone())).is_none());
        let published = set.apply(watcher::Event::InitDone).unwrap();
        assert_eq!(published.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            set.apply(watcher::Event::Apply(b.clone())).unwrap().len(),
            2
        );
        // A relist: the old set stays published until InitDone.
        assert!(set.apply(watcher::Event::Init).is_none());
        assert!(set.apply(watcher::Event::InitApply(b.clone())).is_none());
        assert_eq!(set.current.len(), 2);
        let published = set.apply(watcher::Event::InitDone).unwrap();
        assert_eq!(published.keys().collect::<Vec<_>>(), ["b"]);
        assert!(set.apply(watcher::Event::Delete(b)).unwrap().is_empty());
    }
}
