//! [`ClusterDiscovery`]: the refresh loop around one [`DiscoverySource`].
//!
//! Each refresh takes a full snapshot from the source (or the last one it
//! pushed), deduplicates it by id and by URL, diffs it against the nodes
//! already announced, validates the new ones, publishes the new set as one
//! immutable map and then announces the changes: as callbacks (the seeds'
//! `onNodeDiscovered` / `onNodeLost` / `onDiscoveryError`, plus
//! `on_node_updated`) and on a broadcast channel.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use cluster_types::{NodeId, NodeProfile};
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::diff::{Duplicate, dedupe, diff};
use crate::{
    DiscoveredNode, DiscoveryError, DiscoverySnapshot, DiscoverySource, NodeValidator,
    SnapshotStream, ValidatedNode,
};

/// Default [`DiscoveryOptions::refresh_interval`]: 30 s.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default [`DiscoveryOptions::validation_timeout`]: 5 s.
pub const DEFAULT_VALIDATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`DiscoveryOptions::event_capacity`]: 1024 events.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// How the refresh loop runs.
///
/// Defaults: `refresh_interval` 30 s, `validation_timeout` 5 s,
/// `event_capacity` 1024.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Pause between the end of one refresh and the start of the next, when
    /// the snapshot carries no freshness hint of its own (DNS snapshots carry
    /// their TTL) and after a source error. Default 30 s.
    pub refresh_interval: Duration,
    /// Longest wait for one node's validation. Default 5 s.
    pub validation_timeout: Duration,
    /// Events kept for slow subscribers before they lag. Default 1024.
    pub event_capacity: usize,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            validation_timeout: DEFAULT_VALIDATION_TIMEOUT,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }
}

/// A change in the set of announced nodes, or a failure.
// `Updated` carries two nodes; events are rare and cloned per subscriber,
// so the size is not worth a box in every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DiscoveryEvent {
    /// A new node passed validation and is now announced.
    Discovered(ValidatedNode),
    /// An announced node left the source's snapshot (or changed URL: it is
    /// then lost, validated again and discovered again).
    Lost(ValidatedNode),
    /// An announced node's weight, tags, API key or origin changed.
    Updated {
        /// As it was.
        previous: ValidatedNode,
        /// As it is now (same id and URL, models kept).
        current: ValidatedNode,
    },
    /// The source failed (the announced nodes are kept as they were) or a
    /// new node failed validation (it is not announced; it is tried again at
    /// the next refresh).
    Error(Arc<DiscoveryError>),
}

impl DiscoveryEvent {
    /// The node the event is about, if any.
    #[must_use]
    pub fn node_id(&self) -> Option<&NodeId> {
        match self {
            Self::Discovered(node) | Self::Lost(node) => Some(node.id()),
            Self::Updated { current, .. } => Some(current.id()),
            Self::Error(error) => error.node(),
        }
    }
}

/// What one refresh did.
#[derive(Debug, Clone, Default)]
pub struct RefreshReport {
    /// Nodes announced by this refresh, sorted.
    pub discovered: Vec<NodeId>,
    /// Nodes no longer announced, sorted.
    pub lost: Vec<NodeId>,
    /// Announced nodes whose spec changed, sorted.
    pub updated: Vec<NodeId>,
    /// New nodes that failed validation (not announced), sorted.
    pub rejected: Vec<NodeId>,
    /// Ids of snapshot entries dropped as duplicates (same id or same URL as
    /// an earlier entry), in snapshot order.
    pub duplicates: Vec<NodeId>,
    /// The source's error, when the source failed (then nothing changed).
    pub error: Option<Arc<DiscoveryError>>,
    /// Pause before the next periodic refresh.
    pub next_refresh: Duration,
}

impl RefreshReport {
    /// Whether the refresh changed the announced set.
    #[must_use]
    pub fn changed(&self) -> bool {
        !(self.discovered.is_empty() && self.lost.is_empty() && self.updated.is_empty())
    }
}

type NodeCallback = Arc<dyn Fn(&ValidatedNode) + Send + Sync>;
type UpdateCallback = Arc<dyn Fn(&ValidatedNode, &ValidatedNode) + Send + Sync>;
type ErrorCallback = Arc<dyn Fn(&DiscoveryError) + Send + Sync>;

/// The seeds' lifecycle callbacks. All optional (default: none).
///
/// Callbacks run on the refresh task, after the new node set is published;
/// keep them short. A callback that panics is caught and logged: it never
/// stops the refresh loop nor the other callbacks.
#[derive(Clone, Default)]
pub struct DiscoveryCallbacks {
    on_node_discovered: Option<NodeCallback>,
    on_node_lost: Option<NodeCallback>,
    on_node_updated: Option<UpdateCallback>,
    on_discovery_error: Option<ErrorCallback>,
}

impl DiscoveryCallbacks {
    /// No callbacks.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Called with each newly announced node (`onNodeDiscovered`).
    #[must_use]
    pub fn on_node_discovered(
        mut self,
        f: impl Fn(&ValidatedNode) + Send + Sync + 'static,
    ) -> Self {
        self.on_node_discovered = Some(Arc::new(f));
        self
    }

    /// Called with each node no longer announced (`onNodeLost`).
    #[must_use]
    pub fn on_node_lost(mut self, f: impl Fn(&ValidatedNode) + Send + Sync + 'static) -> Self {
        self.on_node_lost = Some(Arc::new(f));
        self
    }

    /// Called with `(previous, current)` when an announced node's spec
    /// changes.
    #[must_use]
    pub fn on_node_updated(
        mut self,
        f: impl Fn(&ValidatedNode, &ValidatedNode) + Send + Sync + 'static,
    ) -> Self {
        self.on_node_updated = Some(Arc::new(f));
        self
    }

    /// Called with each source or validation error (`onDiscoveryError`).
    #[must_use]
    pub fn on_discovery_error(
        mut self,
        f: impl Fn(&DiscoveryError) + Send + Sync + 'static,
    ) -> Self {
        self.on_discovery_error = Some(Arc::new(f));
        self
    }

    fn invoke(&self, event: &DiscoveryEvent) {
        let (name, outcome) = match event {
            DiscoveryEvent::Discovered(node) => match &self.on_node_discovered {
                Some(f) => (
                    "on_node_discovered",
                    catch_unwind(AssertUnwindSafe(|| f(node))),
                ),
                None => return,
            },
            DiscoveryEvent::Lost(node) => match &self.on_node_lost {
                Some(f) => ("on_node_lost", catch_unwind(AssertUnwindSafe(|| f(node)))),
                None => return,
            },
            DiscoveryEvent::Updated { previous, current } => match &self.on_node_updated {
                Some(f) => (
                    "on_node_updated",
                    catch_unwind(AssertUnwindSafe(|| f(previous, current))),
                ),
                None => return,
            },
            DiscoveryEvent::Error(error) => match &self.on_discovery_error {
                Some(f) => (
                    "on_discovery_error",
                    catch_unwind(AssertUnwindSafe(|| f(error))),
                ),
                None => return,
            },
        };
        if outcome.is_err() {
            tracing::error!(callback = name, "discovery callback panicked; continuing");
        }
    }
}

impl fmt::Debug for DiscoveryCallbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryCallbacks")
            .field("on_node_discovered", &self.on_node_discovered.is_some())
            .field("on_node_lost", &self.on_node_lost.is_some())
            .field("on_node_updated", &self.on_node_updated.is_some())
            .field("on_discovery_error", &self.on_discovery_error.is_some())
            .finish()
    }
}

/// Builds a [`ClusterDiscovery`]; see [`ClusterDiscovery::builder`].
pub struct ClusterDiscoveryBuilder {
    source: Arc<dyn DiscoverySource>,
    validator: Option<Arc<dyn NodeValidator>>,
    options: DiscoveryOptions,
    callbacks: DiscoveryCallbacks,
}

impl ClusterDiscoveryBuilder {
    /// Validates new nodes with `validator` (default:
    /// [`crate::HttpNodeValidator`] with the validation timeout).
    #[must_use]
    pub fn validator(mut self, validator: impl NodeValidator + 'static) -> Self {
        self.validator = Some(Arc::new(validator));
        self
    }

    /// Same as [`validator`](Self::validator), for a shared validator.
    #[must_use]
    pub fn shared_validator(mut self, validator: Arc<dyn NodeValidator>) -> Self {
        self.validator = Some(validator);
        self
    }

    /// Replaces all options (default: [`DiscoveryOptions::default`]).
    #[must_use]
    pub fn options(mut self, options: DiscoveryOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets [`DiscoveryOptions::refresh_interval`] (default 30 s).
    #[must_use]
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.options.refresh_interval = interval;
        self
    }

    /// Sets [`DiscoveryOptions::validation_timeout`] (default 5 s).
    #[must_use]
    pub fn validation_timeout(mut self, timeout: Duration) -> Self {
        self.options.validation_timeout = timeout;
        self
    }

    /// Sets the lifecycle callbacks (default: none).
    #[must_use]
    pub fn callbacks(mut self, callbacks: DiscoveryCallbacks) -> Self {
        self.callbacks = callbacks;
        self
    }

    /// The discovery, not started yet.
    #[must_use]
    pub fn build(self) -> ClusterDiscovery {
        let (events, _) = broadcast::channel(self.options.event_capacity.max(1));
        let validator = self
            .validator
            .unwrap_or_else(|| crate::validate::default_validator(self.options.validation_timeout));
        ClusterDiscovery {
            shared: Arc::new(Shared {
                source: self.source,
                validator,
                options: self.options,
                callbacks: self.callbacks,
                events,
                announced: ArcSwap::from_pointee(BTreeMap::new()),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
            }),
            running: Mutex::new(None),
        }
    }
}

impl fmt::Debug for ClusterDiscoveryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterDiscoveryBuilder")
            .field("source", &self.source.name())
            .field("options", &self.options)
            .field("callbacks", &self.callbacks)
            .finish_non_exhaustive()
    }
}

/// Finds nodes with one [`DiscoverySource`], validates them and announces
/// the changes (the seeds' `ClusterDiscovery`).
///
/// - [`start`](Self::start) runs a first refresh, then refreshes
///   periodically in a background task: the next refresh is scheduled when
///   the previous one has finished, so refreshes never overlap (a manual
///   [`refresh_now`](Self::refresh_now) waits for a running one).
/// - A source that pushes ([`DiscoverySource::watch`]) is followed as it
///   pushes; the periodic refresh then only retries validation of nodes
///   that failed it.
/// - New nodes are validated (default: `GET {url}/v1/models`, 5 s timeout)
///   before they are announced.
/// - A source error keeps the announced nodes as they were and sends
///   [`DiscoveryEvent::Error`]: DNS or the API server blinking never empties
///   the cluster.
/// - [`stop`](Self::stop) (or dropping it) ends the task, also in the middle
///   of a refresh.
pub struct ClusterDiscovery {
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

struct Shared {
    source: Arc<dyn DiscoverySource>,
    validator: Arc<dyn NodeValidator>,
    options: DiscoveryOptions,
    callbacks: DiscoveryCallbacks,
    events: broadcast::Sender<DiscoveryEvent>,
    /// The announced nodes: one immutable map, swapped whole.
    announced: ArcSwap<BTreeMap<NodeId, ValidatedNode>>,
    /// Held for the whole of a refresh: refreshes never overlap.
    refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Default)]
struct RefreshState {
    /// The last snapshot the source gave successfully.
    last_good: Option<DiscoverySnapshot>,
}

/// Where a refresh takes its snapshot from.
enum Input {
    /// Ask the source.
    Poll,
    /// Re-apply the last good snapshot (push mode: retries validation of
    /// rejected nodes); polls when there is none.
    Reapply,
    /// A snapshot (or error) the source pushed.
    Pushed(Result<DiscoverySnapshot, DiscoveryError>),
}

impl ClusterDiscovery {
    /// A builder for discovery over `source`, with the default validator
    /// ([`crate::HttpNodeValidator`] with a 5 s timeout), default
    /// [`DiscoveryOptions`] and no callbacks.
    #[must_use]
    pub fn builder(source: Arc<dyn DiscoverySource>) -> ClusterDiscoveryBuilder {
        ClusterDiscoveryBuilder {
            source,
            validator: None,
            options: DiscoveryOptions::default(),
            callbacks: DiscoveryCallbacks::default(),
        }
    }

    /// The source's name.
    #[must_use]
    pub fn source_name(&self) -> String {
        self.shared.source.name()
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> &DiscoveryOptions {
        &self.shared.options
    }

    /// Starts discovery: runs a first refresh (its outcome is returned and
    /// also announced as events), then keeps refreshing in a background task
    /// until [`stop`](Self::stop). Must be called inside a tokio runtime.
    ///
    /// A failing first refresh does not fail `start`: the loop keeps trying,
    /// and the error is in the report and in a [`DiscoveryEvent::Error`].
    ///
    /// # Errors
    /// [`DiscoveryError::AlreadyRunning`] when the loop is running.
    pub async fn start(&self) -> Result<RefreshReport, DiscoveryError> {
        let (first_tx, first_rx) = oneshot::channel();
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
                return Err(DiscoveryError::AlreadyRunning);
            }
            let cancel = CancellationToken::new();
            let task = tokio::spawn(run(Arc::clone(&self.shared), cancel.clone(), first_tx));
            *running = Some(Running { cancel, task });
        }
        Ok(first_rx.await.unwrap_or_default())
    }

    /// Stops the background task and waits for it to end (an in-flight
    /// refresh is abandoned; the announced nodes stay as they were). Does
    /// nothing when not running.
    pub async fn stop(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            running.cancel.cancel();
            if let Err(error) = running.task.await {
                tracing::error!(%error, "discovery task ended abnormally");
            }
        }
    }

    /// Whether the background task is running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|r| !r.task.is_finished())
    }

    /// Refreshes now from the source, whether or not the loop runs; waits
    /// for a refresh in progress first (refreshes never overlap).
    pub async fn refresh_now(&self) -> RefreshReport {
        self.shared.refresh(Input::Poll).await
    }

    /// The announced nodes, sorted by id.
    #[must_use]
    pub fn nodes(&self) -> Vec<ValidatedNode> {
        self.shared.announced.load().values().cloned().collect()
    }

    /// The announced nodes as the one immutable map last published (keyed
    /// and sorted by id): a lock-free read, cheap to call on a hot path.
    #[must_use]
    pub fn snapshot(&self) -> Arc<BTreeMap<NodeId, ValidatedNode>> {
        self.shared.announced.load_full()
    }

    /// One announced node.
    #[must_use]
    pub fn node(&self, id: &str) -> Option<ValidatedNode> {
        self.shared.announced.load().get(id).cloned()
    }

    /// A receiver of every event sent from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<DiscoveryEvent> {
        self.shared.events.subscribe()
    }

    /// The events sent from now on, as a stream. A subscriber that falls
    /// more than [`DiscoveryOptions::event_capacity`] events behind skips the
    /// oldest (logged as a warning).
    pub fn events(&self) -> impl Stream<Item = DiscoveryEvent> + Send + 'static {
        futures::stream::unfold(self.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "discovery event subscriber lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

impl Drop for ClusterDiscovery {
    fn drop(&mut self) {
        if let Some(running) = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            running.cancel.cancel();
        }
    }
}

impl fmt::Debug for ClusterDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterDiscovery")
            .field("source", &self.shared.source.name())
            .field("options", &self.shared.options)
            .field("nodes", &self.shared.announced.load().len())
            .field("running", &self.is_running())
            .finish()
    }
}

/// The background task.
async fn run(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    first: oneshot::Sender<RefreshReport>,
) {
    let mut pushed = shared.source.watch();
    let report = tokio::select! {
        () = cancel.cancelled() => return,
        report = shared.refresh(Input::Poll) => report,
    };
    let mut next_at = Instant::now() + report.next_refresh;
    // Nobody waiting for the first report is fine.
    let _ = first.send(report);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(next_at) => {
                let input = if pushed.is_some() { Input::Reapply } else { Input::Poll };
                let report = tokio::select! {
                    () = cancel.cancelled() => return,
                    report = shared.refresh(input) => report,
                };
                next_at = Instant::now() + report.next_refresh;
            }
            item = next_pushed(&mut pushed) => match item {
                Some(result) => {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        _ = shared.refresh(Input::Pushed(result)) => {}
                    }
                }
                None => {
                    tracing::warn!(source = %shared.source.name(), "discovery watch stream ended; polling instead");
                    pushed = None;
                }
            },
        }
    }
}

async fn next_pushed(
    stream: &mut Option<SnapshotStream>,
) -> Option<Result<DiscoverySnapshot, DiscoveryError>> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

impl Shared {
    async fn refresh(&self, input: Input) -> RefreshReport {
        let mut state = self.refresh.lock().await;
        let result = match input {
            Input::Poll => self.source.discover().await,
            Input::Reapply => match state.last_good.clone() {
                Some(snapshot) => Ok(snapshot),
                None => self.source.discover().await,
            },
            Input::Pushed(result) => result,
        };
        match result {
            Ok(snapshot) => {
                state.last_good = Some(snapshot.clone());
                self.apply(snapshot).await
            }
            Err(error) => {
                tracing::warn!(source = %self.source.name(), %error, code = error.code(), "discovery source failed; keeping the last good snapshot");
                let error = Arc::new(error);
                self.emit(DiscoveryEvent::Error(Arc::clone(&error)));
                RefreshReport {
                    error: Some(error),
                    next_refresh: self.options.refresh_interval,
                    ..RefreshReport::default()
                }
            }
        }
    }

    async fn apply(&self, snapshot: DiscoverySnapshot) -> RefreshReport {
        let mut report = RefreshReport {
            next_refresh: snapshot.valid_for.unwrap_or(self.options.refresh_interval),
            ..RefreshReport::default()
        };
        let (nodes, dropped) = dedupe(snapshot.nodes);
        for (node, why) in dropped {
            let why = match why {
                Duplicate::Id => "id",
                Duplicate::Url => "url",
            };
            tracing::warn!(node = %node.id(), url = node.url(), duplicate_of = why, "dropping duplicate discovered node");
            report.duplicates.push(node.id().clone());
        }

        let announced = self.announced.load_full();
        let changes = diff(&announced, &nodes);
        let outcomes =
            futures::future::join_all(changes.new.iter().map(|node| self.validate(node))).await;

        let mut next = (*announced).clone();
        for node in &changes.lost {
            next.remove(node.id());
        }
        for (_, current) in &changes.updated {
            next.insert(current.id().clone(), current.clone());
        }
        let mut discovered = Vec::new();
        let mut rejected = Vec::new();
        for (node, outcome) in changes.new.into_iter().zip(outcomes) {
            match outcome {
                Ok(profile) => {
                    let node = ValidatedNode::new(node, profile);
                    next.insert(node.id().clone(), node.clone());
                    discovered.push(node);
                }
                Err(error) => {
                    tracing::warn!(node = %node.id(), url = node.url(), %error, "discovered node failed validation");
                    rejected.push(error);
                }
            }
        }
        self.announced.store(Arc::new(next));

        for node in changes.lost {
            report.lost.push(node.id().clone());
            self.emit(DiscoveryEvent::Lost(node));
        }
        for (previous, current) in changes.updated {
            report.updated.push(current.id().clone());
            self.emit(DiscoveryEvent::Updated { previous, current });
        }
        for node in discovered {
            report.discovered.push(node.id().clone());
            self.emit(DiscoveryEvent::Discovered(node));
        }
        for error in rejected {
            if let Some(id) = error.node() {
                report.rejected.push(id.clone());
            }
            self.emit(DiscoveryEvent::Error(Arc::new(error)));
        }
        report
    }

    async fn validate(&self, node: &DiscoveredNode) -> Result<NodeProfile, DiscoveryError> {
        let timeout = self.options.validation_timeout;
        match tokio::time::timeout(timeout, self.validator.validate(&node.spec)).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(DiscoveryError::ValidationTimeout {
                node: node.id().clone(),
                url: node.url().to_owned(),
                timeout,
            }),
        }
    }

    fn emit(&self, event: DiscoveryEvent) {
        self.callbacks.invoke(&event);
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}
