//! The health filter: which candidate list a request draws from.
//!
//! In order, the first pass that yields a node wins:
//!
//! 1. healthy nodes that are not saturated (no pending `Retry-After`);
//! 2. degraded nodes that are not saturated;
//! 3. healthy, then degraded nodes even if saturated (reason `fallback`):
//!    an overloaded node is better than none;
//! 4. the half-open probe: an unhealthy/offline node whose backoff expired
//!    (`probe_ready`) and whose single probe slot is free takes this one
//!    request (reason `fallback`), claimed with a compare-and-swap so only
//!    one request probes it at a time.
//!
//! Initializing nodes, drained nodes and unhealthy/offline nodes outside
//! their probe slot are never candidates; every pass skips nodes the request
//! already tried (`RoutingContext::excluded`) and, through the snapshot's
//! per-model lists, nodes that report models without the requested one.

use std::sync::atomic::Ordering;

use cluster_types::{NodeId, RoutingReason};

use super::{Candidates, Pick};
use crate::probe::{ProbeClaim, ProbeGate};
use crate::snapshot::{ClusterSnapshot, Tier};

/// Runs the passes of the [module docs](self), calling `choose` on each
/// candidate list. Returns the pick and, for a half-open probe, the claim on
/// the node's probe slot (released when the request ends). The slot is the
/// health orchestrator's permit when a `gate` is given (the only place
/// where `select` asks health for anything), else a flag on the node.
pub(crate) fn select_with(
    snap: &ClusterSnapshot,
    model: Option<&str>,
    excluded: &[NodeId],
    now_enc: u64,
    gate: Option<&dyn ProbeGate>,
    mut choose: impl FnMut(&Candidates<'_>) -> Option<Pick>,
) -> Option<(Pick, Option<ProbeClaim>)> {
    let lists = snap.lists_for(model);
    let passes = [
        (Tier::Healthy, true),
        (Tier::Degraded, true),
        (Tier::Healthy, false),
        (Tier::Degraded, false),
    ];
    for (tier, check_saturation) in passes {
        let ids = lists.get(tier);
        if ids.is_empty() {
            continue;
        }
        let c = Candidates {
            snap,
            ids,
            tier,
            model,
            excluded,
            now_enc,
            check_saturation,
        };
        if !check_saturation && c.allowed_positions().next().is_none() {
            continue;
        }
        if let Some(mut pick) = choose(&c) {
            if !check_saturation {
                pick.reason = RoutingReason::Fallback;
            }
            return Some((pick, None));
        }
    }
    let probe = Candidates {
        snap,
        ids: lists.get(Tier::Probe),
        tier: Tier::Probe,
        model,
        excluded,
        now_enc,
        check_saturation: false,
    };
    for k in probe.allowed_positions() {
        let node = probe.node(k);
        let claim = match gate {
            Some(gate) => gate
                .try_acquire(&node.entry.spec.id)
                .map(ProbeClaim::Ticket),
            None => node
                .live
                .probe_in_flight
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                .then_some(ProbeClaim::Flag),
        };
        if let Some(claim) = claim {
            return Some((
                Pick::new(probe.index(k), RoutingReason::Fallback, 0.0),
                Some(claim),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Epoch;
    use crate::snapshot::tests::snap_node;
    use cluster_metrics::{Clock, ManualClock};
    use cluster_types::NodeStatus;

    /// First allowed candidate.
    fn first(c: &Candidates<'_>) -> Option<Pick> {
        c.allowed_positions()
            .next()
            .map(|k| Pick::new(c.index(k), RoutingReason::RoundRobin, 1.0))
    }

    fn ids(
        snap: &ClusterSnapshot,
        got: Option<(Pick, Option<ProbeClaim>)>,
    ) -> Option<(String, RoutingReason, bool)> {
        got.map(|(p, probe)| {
            (
                snap.node(p.index).entry.spec.id.as_str().to_owned(),
                p.reason,
                probe.is_some(),
            )
        })
    }

    #[test]
    fn healthy_first_then_degraded_then_saturated_then_probe() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let now = epoch.encode(clock.now());
        let h = snap_node("h", NodeStatus::Healthy, 0, &clock);
        let d = snap_node("d", NodeStatus::Degraded, 1, &clock);
        let mut u = snap_node("u", NodeStatus::Unhealthy, 2, &clock);
        u.entry.probe_ready = true;
        let o = snap_node("o", NodeStatus::Offline, 3, &clock);
        let i = snap_node("i", NodeStatus::Initializing, 4, &clock);
        let snap = ClusterSnapshot::build(1, vec![h, d, u, o, i]);
        let sel = |ex: &[NodeId]| ids(&snap, select_with(&snap, None, ex, now, None, first));
        assert_eq!(
            sel(&[]),
            Some(("h".into(), RoutingReason::RoundRobin, false))
        );
        // Healthy excluded: degraded.
        assert_eq!(
            sel(&["h".into()]),
            Some(("d".into(), RoutingReason::RoundRobin, false))
        );
        // Healthy saturated: degraded still preferred over a saturated node.
        let sat = |name: &str, on: bool| {
            let i = snap.index_of(&name.into()).unwrap();
            let v = if on { now + 1_000_000_000 } else { 0 };
            snap.node(i)
                .live
                .saturated_until
                .store(v, Ordering::Relaxed);
        };
        sat("h", true);
        assert_eq!(
            sel(&[]),
            Some(("d".into(), RoutingReason::RoundRobin, false))
        );
        // Both saturated: fallback to the healthy one anyway.
        sat("d", true);
        assert_eq!(sel(&[]), Some(("h".into(), RoutingReason::Fallback, false)));
        sat("h", false);
        sat("d", false);
        // Everything routable tried: the half-open probe, once.
        let tried: Vec<NodeId> = vec!["h".into(), "d".into()];
        assert_eq!(
            sel(&tried),
            Some(("u".into(), RoutingReason::Fallback, true))
        );
        assert_eq!(sel(&tried), None);
        let ui = snap.index_of(&"u".into()).unwrap();
        snap.node(ui)
            .live
            .probe_in_flight
            .store(false, Ordering::Relaxed);
        assert_eq!(sel(&tried).map(|x| x.2), Some(true));
        // Offline without a probe slot and initializing nodes never.
        let all: Vec<NodeId> = vec!["h".into(), "d".into(), "u".into()];
        assert_eq!(sel(&all), None);
    }

    #[test]
    fn drained_and_model_filters() {
        let clock = ManualClock::new();
        let epoch = Epoch::new(clock.now());
        let now = epoch.encode(clock.now());
        let mut a = snap_node("a", NodeStatus::Healthy, 0, &clock);
        a.entry.drained = true;
        let mut b = snap_node("b", NodeStatus::Healthy, 1, &clock);
        b.entry.models = vec!["llama".into()];
        let mut c = snap_node("c", NodeStatus::Degraded, 2, &clock);
        c.entry.models = vec!["qwen".into()];
        let snap = ClusterSnapshot::build(1, vec![a, b, c]);
        let sel =
            |m: Option<&str>| ids(&snap, select_with(&snap, m, &[], now, None, first)).map(|x| x.0);
        assert_eq!(sel(None), Some("b".into()));
        assert_eq!(sel(Some("qwen")), Some("c".into()));
        assert_eq!(sel(Some("llama")), Some("b".into()));
        assert_eq!(sel(Some("mistral")), None);
    }
}
