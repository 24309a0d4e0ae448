//! A Kubernetes API server for the discovery tests, on 127.0.0.1 (plain
//! HTTP), serving `discovery.k8s.io/v1` EndpointSlices the way a real one
//! does, so the real kube client (and `kubectl --server=…`) can drive it.
//!
//! What it speaks:
//! - API discovery documents: `/version`, `/api`, `/api/v1`, `/apis`,
//!   `/apis/discovery.k8s.io`, `/apis/discovery.k8s.io/v1`;
//! - `GET …/namespaces/NS/endpointslices`: a LIST filtered by
//!   `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`), paged by `limit` /
//!   `continue`, with `metadata.resourceVersion`;
//! - the same with `watch=true`: a chunked stream of one JSON watch event per
//!   line (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`), starting
//!   after the `resourceVersion` asked for, ended after `timeoutSeconds`;
//! - `GET …/endpointslices/NAME`, and `404`/`403`-style `Status` objects.
//!
//! What the test controls: objects ([`FakeApiServer::apply_slice`],
//! [`FakeApiServer::delete_slice`]), bookmarks, ending every open watch
//! ([`FakeApiServer::end_watches`]: the client watches again from its last
//! resourceVersion), expiring history ([`FakeApiServer::expire_history`]:
//! open watches get an `ERROR` event with a `Status` of code 410 Gone and
//! later watches from an old version too, so the client must relist),
//! failing requests with a status ([`FakeApiServer::fail_requests`]), and it
//! can read every request received ([`FakeApiServer::requests`]).
//!
//! ```no_run
//! use cluster_tests::k8s::{FakeApiServer, endpoint_slice, Endpoint};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let api = FakeApiServer::start().await?;
//! api.apply_slice(
//!     "inference",
//!     endpoint_slice("mlx-a", "mlx", &[("http", 8080)], &[Endpoint::ready("10.0.0.1", "mlx-0")]),
//! );
//! println!("kube client: Config::new({:?})", api.url());
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const GROUP: &str = "discovery.k8s.io";
const VERSION: &str = "v1";
const API_VERSION: &str = "discovery.k8s.io/v1";

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// The path, e.g. `/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices`.
    pub path: String,
    /// The query parameters.
    pub query: BTreeMap<String, String>,
}

impl ApiRequest {
    /// Whether this was a watch (`watch=true` or `watch=1`).
    #[must_use]
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }

    /// Whether this was a LIST of EndpointSlices.
    #[must_use]
    pub fn is_list(&self) -> bool {
        self.path.ends_with("/endpointslices") && !self.is_watch()
    }

    /// The `resourceVersion` parameter, if any.
    #[must_use]
    pub fn resource_version(&self) -> Option<&str> {
        self.query.get("resourceVersion").map(String::as_str)
    }
}

/// One endpoint of an EndpointSlice, for [`endpoint_slice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its address.
    pub address: String,
    /// The pod it belongs to (`targetRef`), if any.
    pub pod: Option<String>,
    /// `conditions.ready`; `None` leaves the condition out.
    pub ready: Option<bool>,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl Endpoint {
    /// A ready endpoint of `pod` at `address`.
    #[must_use]
    pub fn ready(address: &str, pod: &str) -> Self {
        Self {
            address: address.to_owned(),
            pod: Some(pod.to_owned()),
            ready: Some(true),
            terminating: false,
        }
    }

    /// A not-ready endpoint of `pod` at `address`.
    #[must_use]
    pub fn not_ready(address: &str, pod: &str) -> Self {
        Self {
            ready: Some(false),
            ..Self::ready(address, pod)
        }
    }

    fn to_json(&self, namespace_hint: &str) -> Value {
        let mut endpoint = json!({
            "addresses": [self.address],
            "conditions": {
                "serving": self.ready.unwrap_or(true),
                "terminating": self.terminating,
            },
            "nodeName": "worker-1",
            "zone": "zone-a",
        });
        if let Some(ready) = self.ready {
            endpoint["conditions"]["ready"] = json!(ready);
        }
        if let Some(pod) = &self.pod {
            endpoint["targetRef"] = json!({
                "kind": "Pod",
                "name": pod,
                "namespace": namespace_hint,
                "uid": format!("uid-{pod}"),
            });
        }
        endpoint
    }
}

/// An EndpointSlice of Service `service` (label
/// `kubernetes.io/service-name`), IPv4, with `ports` as `(name, port)`
/// (an empty name leaves the name out) and `endpoints`.
#[must_use]
pub fn endpoint_slice(
    name: &str,
    service: &str,
    ports: &[(&str, u16)],
    endpoints: &[Endpoint],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port)| {
            let mut p = json!({"port": port, "protocol": "TCP"});
            if !port_name.is_empty() {
                p["name"] = json!(port_name);
            }
            p
        })
        .collect();
    json!({
        "apiVersion": API_VERSION,
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints.iter().map(|e| e.to_json("")).collect::<Vec<_>>(),
    })
}

struct Watcher {
    namespace: String,
    selector: Selector,
    events: mpsc::UnboundedSender<String>,
}

struct HistoryEvent {
    version: u64,
    namespace: String,
    labels: BTreeMap<String, String>,
    line: String,
}

#[derive(Default)]
struct ApiState {
    version: u64,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<(String, String), Value>,
    history: Vec<HistoryEvent>,
    watchers: Vec<Watcher>,
    fail_with: Option<u16>,
    requests: Vec<ApiRequest>,
    /// Watch streams opened so far (all time), for [`FakeApiServer::watches_opened`].
    watches_opened: Option<tokio::sync::watch::Sender<usize>>,
}

type Shared = Arc<Mutex<ApiState>>;

fn lock(state: &Shared) -> MutexGuard<'_, ApiState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fake API server. Stops when dropped.
#[derive(Debug)]
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("version", &self.version)
            .field("objects", &self.objects.len())
            .field("watchers", &self.watchers.len())
            .finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Starts the server on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (opened, _) = tokio::sync::watch::channel(0);
        let state: Shared = Arc::new(Mutex::new(ApiState {
            version: 1,
            compacted: 1,
            watches_opened: Some(opened),
            ..ApiState::default()
        }));
        let ns_path = format!("/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/endpointslices");
        let app = Router::new()
            .route("/version", get(version))
            .route("/api", get(core_versions))
            .route("/api/v1", get(core_resources))
            .route("/apis", get(groups))
            .route(&format!("/apis/{GROUP}"), get(group))
            .route(&format!("/apis/{GROUP}/{VERSION}"), get(group_resources))
            .route(&ns_path, get(list_or_watch))
            .route(&format!("{ns_path}/{{name}}"), get(get_slice))
            .fallback(not_found)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces an EndpointSlice in `namespace` (its
    /// `metadata.name` names it), with a new resourceVersion, and sends
    /// `ADDED` or `MODIFIED` to the matching watches. Returns the version.
    pub fn apply_slice(&self, namespace: &str, mut slice: Value) -> u64 {
        let mut state = lock(&self.state);
        state.version += 1;
        let version = state.version;
        let name = slice["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (namespace.to_owned(), name.clone());
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        slice["apiVersion"] = json!(API_VERSION);
        slice["kind"] = json!("EndpointSlice");
        let meta = &mut slice["metadata"];
        meta["namespace"] = json!(namespace);
        meta["resourceVersion"] = json!(version.to_string());
        meta["uid"] = json!(format!("uid-{namespace}-{name}"));
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        if let Some(endpoints) = slice["endpoints"].as_array_mut() {
            for endpoint in endpoints {
                if endpoint.get("targetRef").is_some() {
                    endpoint["targetRef"]["namespace"] = json!(namespace);
                }
            }
        }
        state.objects.insert(key, slice.clone());
        state.publish(namespace, kind, &slice, version);
        version
    }

    /// Deletes an EndpointSlice and sends `DELETED` to the matching watches.
    /// Returns the new version, or `None` if there was no such slice.
    pub fn delete_slice(&self, namespace: &str, name: &str) -> Option<u64> {
        let mut state = lock(&self.state);
        let mut slice = state
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        state.version += 1;
        let version = state.version;
        slice["metadata"]["resourceVersion"] = json!(version.to_string());
        state.publish(namespace, "DELETED", &slice, version);
        Some(version)
    }

    /// Sends a `BOOKMARK` with the current version to every open watch.
    pub fn bookmark(&self) {
        let mut state = lock(&self.state);
        let line = json!({
            "type": "BOOKMARK",
            "object": {
                "kind": "EndpointSlice",
                "apiVersion": API_VERSION,
                "metadata": {"resourceVersion": state.version.to_string()},
            },
        })
        .to_string();
        state
            .watchers
            .retain(|w| w.events.send(line.clone()).is_ok());
    }

    /// Ends every open watch stream (as the API server does at
    /// `timeoutSeconds` or on restart); clients watch again.
    pub fn end_watches(&self) {
        lock(&self.state).watchers.clear();
    }

    /// Compacts history: every version seen so far expires. Open watches
    /// get an `ERROR` event whose object is a `Status` with code 410 (Gone)
    /// and end; a later watch from an old version gets the same. A LIST
    /// returns a fresh version to watch from.
    pub fn expire_history(&self) {
        let mut state = lock(&self.state);
        state.version += 1;
        state.compacted = state.version;
        state.history.clear();
        let line = gone_event(state.compacted);
        for watcher in state.watchers.drain(..) {
            let _ = watcher.events.send(line.clone());
        }
    }

    /// Answers every LIST and watch with HTTP `code` and a `Status` body
    /// (e.g. 403 for missing RBAC, 500), until called with `None`.
    pub fn fail_requests(&self, code: Option<u16>) {
        lock(&self.state).fail_with = code;
    }

    /// Every request received so far, in order.
    #[must_use]
    pub fn requests(&self) -> Vec<ApiRequest> {
        lock(&self.state).requests.clone()
    }

    /// Open watch streams.
    #[must_use]
    pub fn open_watches(&self) -> usize {
        let mut state = lock(&self.state);
        state.watchers.retain(|w| !w.events.is_closed());
        state.watchers.len()
    }

    /// Waits until `count` watch streams have been opened since the start
    /// (a stream answered with 410 counts too).
    pub async fn watches_opened(&self, count: usize) {
        let receiver = lock(&self.state)
            .watches_opened
            .as_ref()
            .map(tokio::sync::watch::Sender::subscribe);
        if let Some(mut receiver) = receiver {
            let _ = receiver.wait_for(|opened| *opened >= count).await;
        }
    }

    /// The current resourceVersion.
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        lock(&self.state).version
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiState {
    fn publish(&mut self, namespace: &str, kind: &str, object: &Value, version: u64) {
        let labels = labels_of(object);
        let line = json!({"type": kind, "object": object}).to_string();
        self.watchers.retain(|w| {
            if w.namespace == namespace && w.selector.matches(&labels) {
                w.events.send(line.clone()).is_ok()
            } else {
                !w.events.is_closed()
            }
        });
        self.history.push(HistoryEvent {
            version,
            namespace: namespace.to_owned(),
            labels,
            line,
        });
    }

    fn record(&mut self, path: String, query: &HashMap<String, String>) {
        self.requests.push(ApiRequest {
            path,
            query: query.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        });
    }
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn gone_event(compacted: u64) -> String {
    json!({
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: requested version is older than {compacted}"),
            "reason": "Expired",
            "code": 410,
        },
    })
    .to_string()
}

/// A label selector: `k=v`, `k==v`, `k!=v` and `k` (exists), comma-joined.
#[derive(Debug, Clone, Default)]
struct Selector(Vec<(String, Option<(bool, String)>)>);

impl Selector {
    fn parse(text: &str) -> Self {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some((k, v)) = term.split_once("!=") {
                terms.push((k.trim().to_owned(), Some((false, v.trim().to_owned()))));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                terms.push((k.trim().to_owned(), Some((true, v.trim().to_owned()))));
            } else {
                terms.push((term.to_owned(), None));
            }
        }
        Self(terms)
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(key, test)| match test {
            None => labels.contains_key(key),
            Some((true, value)) => labels.get(key) == Some(value),
            Some((false, value)) => labels.get(key) != Some(value),
        })
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        status,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }),
    )
}

async fn version(State(state): State<Shared>) -> Response {
    lock(&state).record("/version".into(), &HashMap::new());
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
            "gitCommit": "0000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
            "compiler": "gc", "platform": "linux/amd64",
        }),
    )
}

async fn core_versions(State(state): State<Shared>) -> Response {
    lock(&state).record("/api".into(), &HashMap::new());
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }),
    )
}

async fn core_resources(State(state): State<Shared>) -> Response {
    lock(&state).record("/api/v1".into(), &HashMap::new());
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": []}),
    )
}

fn group_json() -> Value {
    let version = json!({"groupVersion": API_VERSION, "version": VERSION});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

async fn groups(State(state): State<Shared>) -> Response {
    lock(&state).record("/apis".into(), &HashMap::new());
    let mut group = group_json();
    if let Some(g) = group.as_object_mut() {
        g.remove("kind");
        g.remove("apiVersion");
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}),
    )
}

async fn group(State(state): State<Shared>) -> Response {
    lock(&state).record(format!("/apis/{GROUP}"), &HashMap::new());
    json_response(StatusCode::OK, &group_json())
}

async fn group_resources(State(state): State<Shared>) -> Response {
    lock(&state).record(format!("/apis/{GROUP}/{VERSION}"), &HashMap::new());
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": API_VERSION,
            "resources": [{
                "name": "endpointslices",
                "singularName": "endpointslice",
                "namespaced": true,
                "kind": "EndpointSlice",
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "storageVersionHash": "fake",
            }],
        }),
    )
}

async fn not_found(uri: axum::http::Uri, State(state): State<Shared>) -> Response {
    lock(&state).record(uri.path().to_owned(), &HashMap::new());
    status_response(
        404,
        "NotFound",
        &format!("the server could not find {}", uri.path()),
    )
}

async fn get_slice(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let mut state = lock(&state);
    state.record(
        format!("/apis/{API_VERSION}/namespaces/{namespace}/endpointslices/{name}"),
        &HashMap::new(),
    );
    match state.objects.get(&(namespace, name.clone())) {
        Some(object) => json_response(StatusCode::OK, object),
        None => status_response(
            404,
            "NotFound",
            &format!("endpointslices.discovery.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn list_or_watch(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = lock(&shared);
    state.record(
        format!("/apis/{API_VERSION}/namespaces/{namespace}/endpointslices"),
        &query,
    );
    if let Some(code) = state.fail_with {
        return status_response(code, "Forbidden", "the fake API server was told to fail");
    }
    let selector = Selector::parse(query.get("labelSelector").map_or("", String::as_str));
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watch {
        return list(&state, &namespace, &selector, &query);
    }

    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(opened) = &state.watches_opened {
        opened.send_modify(|n| *n += 1);
    }
    let from = query.get("resourceVersion").map_or("", String::as_str);
    match from.parse::<u64>() {
        Ok(version) if version != 0 && version < state.compacted => {
            let _ = tx.send(gone_event(state.compacted));
            drop(tx);
        }
        Ok(version) if version != 0 => {
            for event in state.history.iter().filter(|e| {
                e.version > version && e.namespace == namespace && selector.matches(&e.labels)
            }) {
                let _ = tx.send(event.line.clone());
            }
            state.watchers.push(Watcher {
                namespace,
                selector,
                events: tx,
            });
        }
        // No version (or "0"): start with the current objects.
        _ => {
            for ((ns, _), object) in &state.objects {
                if *ns == namespace && selector.matches(&labels_of(object)) {
                    let _ = tx.send(json!({"type": "ADDED", "object": object}).to_string());
                }
            }
            state.watchers.push(Watcher {
                namespace,
                selector,
                events: tx,
            });
        }
    }
    drop(state);

    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(format!("{line}\n")), rx))
    })
    .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| status_response(500, "InternalError", "cannot build the watch"))
}

fn list(
    state: &ApiState,
    namespace: &str,
    selector: &Selector,
    query: &HashMap<String, String>,
) -> Response {
    let matching: Vec<Value> = state
        .objects
        .iter()
        .filter(|((ns, _), object)| ns == namespace && selector.matches(&labels_of(object)))
        .map(|(_, object)| {
            // Items of a LIST carry no kind/apiVersion, as on a real server.
            let mut item = object.clone();
            if let Some(item) = item.as_object_mut() {
                item.remove("kind");
                item.remove("apiVersion");
            }
            item
        })
        .collect();
    let offset = query
        .get("continue")
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = offset.saturating_add(limit).min(matching.len());
    let page = matching
        .get(offset.min(end)..end)
        .unwrap_or_default()
        .to_vec();
    let cont = if end < matching.len() {
        end.to_string()
    } else {
        String::new()
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "EndpointSliceList",
            "apiVersion": API_VERSION,
            "metadata": {"resourceVersion": state.version.to_string(), "continue": cont},
            "items": page,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "mlx".to_owned()),
            ("tier".to_owned(), "a".to_owned()),
        ]
        .into_iter()
        .collect();
        assert!(Selector::parse("").matches(&labels));
        assert!(Selector::parse("app=mlx").matches(&labels));
        assert!(Selector::parse("app==mlx, tier").matches(&labels));
        assert!(Selector::parse("app!=vllm").matches(&labels));
        assert!(!Selector::parse("app=vllm").matches(&labels));
        assert!(!Selector::parse("zone").matches(&labels));
    }

    #[test]
    fn slices_look_like_kubernetes_json() {
        let slice = endpoint_slice(
            "s",
            "mlx",
            &[("http", 8080), ("", 9090)],
            &[
                Endpoint::ready("10.0.0.1", "p"),
                Endpoint::not_ready("10.0.0.2", "q"),
            ],
        );
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "mlx"
        );
        assert_eq!(slice["ports"][0]["name"], "http");
        assert!(slice["ports"][1].get("name").is_none());
        assert_eq!(slice["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(slice["endpoints"][0]["targetRef"]["kind"], "Pod");
    }
}
