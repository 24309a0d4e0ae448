//! Discrete-event simulation of a trace against a fleet of [`NodeModel`]s,
//! in simulated time, without HTTP: the way to compare routing strategies
//! on hours of traffic in a fraction of a second.
//!
//! A [`SimRouter`] picks the node of every request; it sees the expanded
//! chat request (to fingerprint the prompt as a gateway would) and the nodes
//! themselves (to read loads, or — for an oracle — their caches). It is told
//! when each request completes, at that request's finish time, in time
//! order, so it can keep in-flight counts or learn from reported cached
//! tokens. Pacing works as in HTTP replay ([`Pacing`]).
//!
//! ```
//! use cluster_sim::model::NodeModelConfig;
//! use cluster_sim::simulation::{Simulation, StickySessionRouter};
//! use cluster_sim::workload::WorkloadConfig;
//!
//! let trace = WorkloadConfig { sessions: 10, ..WorkloadConfig::default() }
//!     .generate()
//!     .expect("valid workload");
//! let nodes = vec![NodeModelConfig::default(); 4];
//! let report = Simulation::new(&trace, nodes).run(&mut StickySessionRouter);
//! assert_eq!(report.summary.errors, 0);
//! assert!(report.summary.cache_hit_ratio > 0.5);
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use crate::api::ChatRequest;
use crate::model::{Admission, NodeModel, NodeModelConfig, NodeTotals, SimRequest};
use crate::replay::Pacing;
use crate::report::{ReplayReport, ReplaySummary, RequestRecord};
use crate::workload::{Expander, Trace, TraceRequest};

/// One routing decision's input.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    /// Simulated time of arrival.
    pub now: Duration,
    /// The trace line.
    pub trace: &'a TraceRequest,
    /// The expanded chat request, as a gateway would receive it.
    pub chat: &'a ChatRequest,
    /// The request as the cost model sees it (tokens, output length).
    pub sim: &'a SimRequest,
}

/// The outcome of one request, reported to [`SimRouter::on_complete`].
#[derive(Debug, Clone)]
pub struct Completion {
    /// The node it ran on.
    pub node: usize,
    /// Session number.
    pub session: u32,
    /// Turn number.
    pub turn: u32,
    /// Its timeline, or `None` when the node rejected it (queue full).
    pub admission: Option<Admission>,
    /// Simulated time of the event (finish, or arrival when rejected).
    pub at: Duration,
}

/// Chooses a node for each request of a simulation.
pub trait SimRouter {
    /// Returns the index of the node for `request` (taken modulo the node
    /// count).
    fn route(&mut self, request: &RouteRequest<'_>, nodes: &[NodeModel]) -> usize;

    /// Called when a request completes, in simulated-time order. Default:
    /// nothing.
    fn on_complete(&mut self, completion: &Completion) {
        let _ = completion;
    }
}

/// Round-robin over the nodes.
#[derive(Debug, Default, Clone)]
pub struct RoundRobinRouter {
    next: usize,
}

impl SimRouter for RoundRobinRouter {
    fn route(&mut self, _request: &RouteRequest<'_>, nodes: &[NodeModel]) -> usize {
        let n = self.next % nodes.len().max(1);
        self.next = self.next.wrapping_add(1);
        n
    }
}

/// Node `session % n`: every session sticks to one node.
#[derive(Debug, Default, Clone, Copy)]
pub struct StickySessionRouter;

impl SimRouter for StickySessionRouter {
    fn route(&mut self, request: &RouteRequest<'_>, nodes: &[NodeModel]) -> usize {
        request.trace.session as usize % nodes.len().max(1)
    }
}

/// The node with the fewest running plus queued requests (lowest index on
/// ties).
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoadedRouter;

impl SimRouter for LeastLoadedRouter {
    fn route(&mut self, request: &RouteRequest<'_>, nodes: &[NodeModel]) -> usize {
        nodes
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| {
                let load = n.load(request.now);
                load.running + load.queued
            })
            .map_or(0, |(i, _)| i)
    }
}

/// An oracle: the node whose model predicts the earliest first token (it
/// reads every node's cache, which no real router can). An upper bound to
/// compare real strategies with.
#[derive(Debug, Default, Clone, Copy)]
pub struct OracleRouter;

impl SimRouter for OracleRouter {
    fn route(&mut self, request: &RouteRequest<'_>, nodes: &[NodeModel]) -> usize {
        nodes
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| n.predict(request.now, request.sim).first_token)
            .map_or(0, |(i, _)| i)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    // Completions sort before arrivals at the same instant.
    Completion { record: usize },
    Arrival { request: usize },
}

/// Report of a simulation: the same records and summary as an HTTP replay,
/// plus each node's totals.
#[derive(Debug, Clone)]
pub struct SimulationReport {
    /// Records (target = node index) and summary (time scale 1).
    pub report: ReplayReport,
    /// Summary, same as `report.summary`.
    pub summary: ReplaySummary,
    /// Per-node counters at the end.
    pub nodes: Vec<NodeTotals>,
}

/// A discrete-event simulation of one trace on one fleet.
#[derive(Debug)]
pub struct Simulation<'t> {
    trace: &'t Trace,
    nodes: Vec<NodeModel>,
    pacing: Pacing,
    names: Vec<String>,
}

impl<'t> Simulation<'t> {
    /// A simulation of `trace` on nodes built from `nodes` (closed pacing).
    #[must_use]
    pub fn new(trace: &'t Trace, nodes: Vec<NodeModelConfig>) -> Self {
        let names = (0..nodes.len()).map(|i| format!("node-{i}")).collect();
        Self {
            trace,
            nodes: nodes.into_iter().map(NodeModel::new).collect(),
            pacing: Pacing::Closed,
            names,
        }
    }

    /// Sets the pacing (default closed).
    #[must_use]
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// The nodes (after [`Simulation::run`], their final state).
    #[must_use]
    pub fn nodes(&self) -> &[NodeModel] {
        &self.nodes
    }

    /// Runs the whole trace through `router` and reports.
    pub fn run(&mut self, router: &mut dyn SimRouter) -> SimulationReport {
        let started = std::time::Instant::now();
        let expander = Expander::new(&self.trace.header);
        let requests = &self.trace.requests;
        let n_nodes = self.nodes.len().max(1);
        if self.nodes.is_empty() {
            self.nodes.push(NodeModel::default());
        }
        // Successor of each request in its session.
        let mut next_turn: Vec<Option<usize>> = vec![None; requests.len()];
        let mut by_session: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, r) in requests.iter().enumerate() {
            by_session.entry(r.session).or_default().push(i);
        }
        let mut heap: BinaryHeap<Reverse<(Duration, EventKind)>> = BinaryHeap::new();
        let at = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
        for turns in by_session.values_mut() {
            turns.sort_by_key(|&i| requests[i].turn);
            for pair in turns.windows(2) {
                next_turn[pair[0]] = Some(pair[1]);
            }
            match self.pacing {
                Pacing::Closed => {
                    if let Some(&first) = turns.first() {
                        heap.push(Reverse((
                            at(requests[first].at),
                            EventKind::Arrival { request: first },
                        )));
                    }
                }
                Pacing::Open => {
                    for &i in turns.iter() {
                        heap.push(Reverse((
                            at(requests[i].at),
                            EventKind::Arrival { request: i },
                        )));
                    }
                }
            }
        }
        let mut records: Vec<RequestRecord> = Vec::with_capacity(requests.len());
        let mut completions: Vec<Completion> = Vec::with_capacity(requests.len());
        let mut request_of_record: Vec<usize> = Vec::with_capacity(requests.len());
        while let Some(Reverse((now, event))) = heap.pop() {
            match event {
                EventKind::Arrival { request } => {
                    let trace = &requests[request];
                    let chat = expander.chat_request(trace);
                    let sim =
                        SimRequest::from_chat(chat.prompt_tokens(), trace.max_tokens as usize);
                    let route = RouteRequest {
                        now,
                        trace,
                        chat: &chat,
                        sim: &sim,
                    };
                    let node = router.route(&route, &self.nodes) % n_nodes;
                    let admitted = self.nodes[node].admit(now, &sim).ok();
                    let record_index = records.len();
                    let secs = now.as_secs_f64();
                    let mut record = RequestRecord {
                        session: trace.session,
                        turn: trace.turn,
                        target: node,
                        scheduled_s: trace.at,
                        sent_s: secs,
                        status: Some(200),
                        error: None,
                        ttfb_s: None,
                        ttft_s: None,
                        latency_s: 0.0,
                        prompt_tokens: 0,
                        cached_tokens: 0,
                        completion_tokens: 0,
                    };
                    let end = match &admitted {
                        Some(a) => {
                            record.ttfb_s = Some(a.ttft().as_secs_f64());
                            record.ttft_s = Some(a.ttft().as_secs_f64());
                            record.latency_s = a.latency().as_secs_f64();
                            record.prompt_tokens = a.prompt_tokens as u64;
                            record.cached_tokens = a.cached_tokens as u64;
                            record.completion_tokens = a.output_tokens as u64;
                            a.finish
                        }
                        None => {
                            record.status = Some(503);
                            record.error = Some("http_503".to_owned());
                            now
                        }
                    };
                    records.push(record);
                    request_of_record.push(request);
                    completions.push(Completion {
                        node,
                        session: trace.session,
                        turn: trace.turn,
                        admission: admitted,
                        at: end,
                    });
                    heap.push(Reverse((
                        end,
                        EventKind::Completion {
                            record: record_index,
                        },
                    )));
                }
                EventKind::Completion { record } => {
                    router.on_complete(&completions[record]);
                    if self.pacing == Pacing::Closed
                        && let Some(next) = next_turn[request_of_record[record]]
                    {
                        let r = &requests[next];
                        let due = at(r.at).max(now + at(r.think));
                        heap.push(Reverse((due, EventKind::Arrival { request: next })));
                    }
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let summary = ReplaySummary::from_records(&records, &self.names, 1.0, wall);
        SimulationReport {
            report: ReplayReport {
                summary: summary.clone(),
                records,
            },
            summary,
            nodes: self.nodes.iter().map(NodeModel::totals).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadConfig;

    fn trace() -> Trace {
        WorkloadConfig {
            sessions: 40,
            turns_max: 10,
            ..WorkloadConfig::default()
        }
        .generate()
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sticky_beats_round_robin_on_cache_hits() {
        let trace = trace();
        let nodes = vec![NodeModelConfig::default(); 4];
        let sticky = Simulation::new(&trace, nodes.clone()).run(&mut StickySessionRouter);
        let rr = Simulation::new(&trace, nodes).run(&mut RoundRobinRouter::default());
        assert_eq!(sticky.summary.requests, trace.requests.len());
        assert_eq!(sticky.summary.errors, 0);
        assert!(sticky.summary.cache_hit_ratio > rr.summary.cache_hit_ratio);
        let p = |s: &ReplaySummary| s.ttft.map_or(0.0, |p| p.p50);
        assert!(p(&sticky.summary) < p(&rr.summary));
    }

    #[test]
    fn simulation_is_deterministic() {
        let trace = trace();
        let nodes = vec![NodeModelConfig::default(); 3];
        let a = Simulation::new(&trace, nodes.clone()).run(&mut OracleRouter);
        let b = Simulation::new(&trace, nodes).run(&mut OracleRouter);
        assert_eq!(a.report.records, b.report.records);
    }

    #[test]
    fn open_pacing_sends_every_request_at_its_offset() {
        let trace = trace();
        let report = Simulation::new(&trace, vec![NodeModelConfig::default(); 2])
            .pacing(Pacing::Open)
            .run(&mut LeastLoadedRouter);
        assert_eq!(report.summary.requests, trace.requests.len());
        assert!(
            report
                .report
                .records
                .iter()
                .all(|r| (r.sent_s - r.scheduled_s).abs() < 1e-3)
        );
    }
}
