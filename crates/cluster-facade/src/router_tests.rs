//! Router-level tests: select → guard → finish, with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use cluster_metrics::{Clock, ManualClock};
use cluster_types::{
    NodeId, NodeSpec, NodeStatus, PrefixFingerprint, RoutingContext, RoutingReason, SegmentKind,
};
use parking_lot::Mutex;

use crate::guard::{FailureKind, RequestOutcome};
use crate::params::{RouterParams, StrategyKind};
use crate::router::{OutcomeObserver, Router};
use crate::snapshot::NodeEntry;

fn nodes(ids: &[&str]) -> Vec<NodeEntry> {
    ids.iter()
        .map(|id| {
            NodeEntry::new(
                NodeSpec::new(*id, format!("http://{id}:1")),
                NodeStatus::Healthy,
            )
        })
        .collect()
}

fn router(strategy: StrategyKind, ids: &[&str]) -> (ManualClock, Router) {
    let clock = ManualClock::new();
    let r = Router::new(
        RouterParams::default().with_strategy(strategy),
        clock.shared(),
    );
    r.publish(nodes(ids));
    (clock, r)
}

fn prompt(system: &str, user: &str) -> RoutingContext {
    let mut b = PrefixFingerprint::builder(256);
    b.push_segment(SegmentKind::System, system)
        .push_segment(SegmentKind::Message { role: "user" }, user);
    let fingerprint = b.finish();
    let tokens = u32::try_from(fingerprint.total_bytes() / 4).unwrap();
    RoutingContext {
        fingerprint,
        prompt_tokens_estimate: tokens,
        ..RoutingContext::default()
    }
}

#[test]
fn guard_counts_in_flight_and_drop_is_cancelled() {
    let (_clock, r) = router(StrategyKind::RoundRobin, &["a"]);
    let a = NodeId::from("a");
    let s = r.select(&RoutingContext::default()).unwrap();
    assert_eq!(s.decision.node_id, a);
    assert_eq!(s.target.base_url, "http://a:1");
    assert_eq!(s.guard.node_id(), &a);
    assert_eq!(r.in_flight(&a), 1);
    drop(s);
    assert_eq!(r.in_flight(&a), 0);
    let m = r.node_metrics(&a).unwrap();
    assert_eq!(
        (m.requests_total, m.cancelled_total, m.successes_total),
        (1, 1, 0)
    );
    let s = r.select(&RoutingContext::default()).unwrap();
    s.guard
        .finish(RequestOutcome::success_with_usage(100, 40, 5));
    let m = r.node_metrics(&a).unwrap();
    assert_eq!(
        (
            m.successes_total,
            m.prompt_tokens_total,
            m.cached_tokens_total
        ),
        (1, 100, 40)
    );
    assert_eq!(r.in_flight(&"zz".into()), 0);
    assert!(r.node_metrics(&"zz".into()).is_none());
}

#[test]
fn no_routable_node_lists_statuses() {
    let clock = ManualClock::new();
    let r = Router::new(RouterParams::default(), clock.shared());
    let err = r.select(&RoutingContext::default()).unwrap_err();
    assert_eq!(err.code(), "NO_ROUTABLE_NODE");
    r.publish(vec![NodeEntry::new(
        NodeSpec::new("a", "http://a:1"),
        NodeStatus::Unhealthy,
    )]);
    let ctx = RoutingContext {
        model: Some("qwen".into()),
        ..RoutingContext::default()
    };
    match r.select(&ctx).unwrap_err() {
        crate::FacadeError::NoRoutableNode { model, nodes } => {
            assert_eq!(model.as_deref(), Some("qwen"));
            assert_eq!(nodes, vec![(NodeId::from("a"), NodeStatus::Unhealthy)]);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn retries_skip_excluded_nodes() {
    for strategy in [
        StrategyKind::RoundRobin,
        StrategyKind::LeastLoaded,
        StrategyKind::PowerOfTwoChoices,
        StrategyKind::CacheScore,
        StrategyKind::CacheAware,
    ] {
        let (_c, r) = router(strategy, &["a", "b", "c"]);
        let mut ctx = prompt("sys", "q");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let s = r.select(&ctx).unwrap();
            assert!(!seen.contains(&s.decision.node_id), "{strategy:?}");
            seen.push(s.decision.node_id.clone());
            ctx.excluded.push(s.decision.node_id.clone());
            s.guard.finish(RequestOutcome::Failed {
                kind: FailureKind::Connect,
            });
        }
        assert!(r.select(&ctx).is_err(), "{strategy:?}");
    }
}

#[test]
fn overload_skips_node_until_retry_after() {
    let (clock, r) = router(StrategyKind::RoundRobin, &["a", "b"]);
    let s = r.select(&RoutingContext::default()).unwrap();
    let busy = s.decision.node_id.clone();
    s.guard.finish(RequestOutcome::Overloaded {
        retry_after: Some(Duration::from_secs(5)),
    });
    for _ in 0..4 {
        let s = r.select(&RoutingContext::default()).unwrap();
        assert_ne!(s.decision.node_id, busy);
    }
    // With the other node excluded, the saturated one is the fallback.
    let ctx = RoutingContext {
        excluded: vec![if busy.as_str() == "a" {
            "b".into()
        } else {
            "a".into()
        }],
        ..RoutingContext::default()
    };
    let s = r.select(&ctx).unwrap();
    assert_eq!(
        (s.decision.node_id.clone(), s.decision.reason),
        (busy.clone(), RoutingReason::Fallback)
    );
    drop(s);
    clock.advance(Duration::from_secs(6));
    let picks: Vec<_> = (0..2)
        .map(|_| {
            r.select(&RoutingContext::default())
                .unwrap()
                .decision
                .node_id
        })
        .collect();
    assert!(picks.contains(&busy));
    // Overload is not a health failure.
    assert!(r.node_metrics(&busy).unwrap().failures_total == 1);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(NodeId, RequestOutcome)>>);

impl OutcomeObserver for Recorder {
    fn observe(&self, node: &NodeId, outcome: &RequestOutcome, _latency: Duration) {
        self.0.lock().push((node.clone(), *outcome));
    }
}

#[test]
fn outcomes_reach_the_observer_and_the_success_window() {
    let (_c, r) = router(StrategyKind::RoundRobin, &["a"]);
    let rec = Arc::new(Recorder::default());
    r.set_observer(rec.clone());
    let s = r.select(&RoutingContext::default()).unwrap();
    s.guard.finish(RequestOutcome::Failed {
        kind: FailureKind::ServerError { status: 500 },
    });
    drop(r.select(&RoutingContext::default()).unwrap());
    let got = rec.0.lock().clone();
    assert_eq!(got.len(), 2);
    assert!(got[0].1.is_node_failure());
    assert_eq!(got[1].1, RequestOutcome::ClientCancelled);
    let snap = r.snapshot();
    let live = &snap.node(0).live;
    assert!(live.success_rate.load() < 0.01);
}

#[test]
fn sticky_sessions_for_classic_strategies() {
    let (clock, r) = router(StrategyKind::RoundRobin, &["a", "b", "c"]);
    let ctx = RoutingContext {
        session_id: Some("s1".into()),
        ..RoutingContext::default()
    };
    let first = r.select(&ctx).unwrap().decision.node_id;
    for _ in 0..5 {
        let s = r.select(&ctx).unwrap();
        assert_eq!(s.decision.node_id, first);
        assert_eq!(s.decision.reason, RoutingReason::SessionAffinity);
    }
    assert_eq!(r.session_count(), 1);
    // The node goes unhealthy: the session moves.
    r.update(|entries| {
        for e in entries.iter_mut().filter(|e| e.spec.id == first) {
            e.status = NodeStatus::Unhealthy;
        }
    });
    let moved = r.select(&ctx).unwrap().decision.node_id;
    assert_ne!(moved, first);
    assert_eq!(r.select(&ctx).unwrap().decision.node_id, moved);
    // Expiry.
    clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(r.expire(clock.now()).1, 1);
    assert_eq!(r.session_count(), 0);
    // A node that leaves takes its sessions with it.
    let on = r.select(&ctx).unwrap().decision.node_id;
    r.update(|entries| entries.retain(|e| e.spec.id != on));
    assert_eq!(r.session_count(), 0);
}

#[test]
fn cache_aware_follows_the_prefix_and_learns_from_feedback() {
    let (clock, r) = router(StrategyKind::CacheAware, &["a", "b", "c", "d"]);
    let sys = "You are a careful agent with many tools. ".repeat(500); // ~20 KB
    let t1 = prompt(&sys, "first question");
    let s1 = r.select(&t1).unwrap();
    let home = s1.decision.node_id.clone();
    assert_eq!(s1.decision.reason, RoutingReason::Rendezvous);
    let mut g = s1.guard;
    clock.advance(Duration::from_secs(3));
    g.first_byte();
    assert_eq!(g.time_to_first_byte(), Some(Duration::from_secs(3)));
    clock.advance(Duration::from_secs(1));
    g.finish(RequestOutcome::success_with_usage(5_000, 0, 20));
    // Nothing was cached: the whole reported prompt in 3 s.
    let rate = r.prefill_rate(&home).unwrap();
    let expected = 5_000.0 / 3.0;
    assert!((rate - expected).abs() < 1.0, "{rate} vs {expected}");
    assert!(r.believed_cached_blocks(&home, &t1) > 70);
    // Same system prompt, new question: cache hit on the same node.
    let t2 = prompt(&sys, "second question, longer");
    let s2 = r.select(&t2).unwrap();
    assert_eq!(s2.decision.node_id, home);
    assert_eq!(s2.decision.reason, RoutingReason::CacheHit);
    assert!(s2.decision.confidence > 0.9);
    // The node reports it had nothing cached (it restarted): the model drops
    // the system-prompt blocks it believed were there.
    s2.guard
        .finish(RequestOutcome::success_with_usage(5_000, 0, 20));
    let t3 = prompt(&sys, "third");
    let believed = r.believed_cached_blocks(&home, &t3);
    // Only t2's own entry remains (it was just cached whole).
    assert!(believed > 70, "{believed}");
    let state = r.cache_state(&home).unwrap();
    assert_eq!(state.cached_prefixes, 1);
    assert_eq!(state.last_reported_cached_tokens, 0);
}

#[test]
fn correction_drops_blocks_the_node_lost() {
    let (_clock, r) = router(StrategyKind::CacheAware, &["a"]);
    let sys = "S".repeat(20_000);
    let conv1 = prompt(&sys, &"first conversation ".repeat(100));
    r.select(&conv1)
        .unwrap()
        .guard
        .finish(RequestOutcome::success_with_usage(5_500, 0, 10));
    let a = NodeId::from("a");
    let full = r.believed_cached_blocks(&a, &conv1);
    // A sibling conversation: predicted ~the system prompt; node says 0.
    let conv2 = prompt(&sys, "another conversation");
    let s = r.select(&conv2).unwrap();
    assert_eq!(s.decision.reason, RoutingReason::CacheHit);
    s.guard
        .finish(RequestOutcome::success_with_usage(5_000, 0, 10));
    // conv1's entry lost everything it shared with conv2 (the system prompt).
    let after = r.believed_cached_blocks(&a, &conv1);
    assert!(after < full, "{after} < {full}");
    // conv2 itself is believed cached (just processed).
    assert!(r.believed_cached_blocks(&a, &conv2) > 70);
}

#[test]
fn failures_and_early_cancels_roll_back_the_optimistic_insert() {
    let (clock, r) = router(StrategyKind::CacheAware, &["a"]);
    let a = NodeId::from("a");
    let ctx = prompt(&"T".repeat(8_000), "q");
    r.select(&ctx)
        .unwrap()
        .guard
        .finish(RequestOutcome::Failed {
            kind: FailureKind::Timeout,
        });
    assert_eq!(r.believed_cached_blocks(&a, &ctx), 0);
    drop(r.select(&ctx).unwrap());
    assert_eq!(r.believed_cached_blocks(&a, &ctx), 0);
    // Cancelled after the first byte: the prefill happened, keep it.
    let mut g = r.select(&ctx).unwrap().guard;
    clock.advance(Duration::from_millis(500));
    g.first_byte();
    drop(g);
    assert!(r.believed_cached_blocks(&a, &ctx) > 0);
    // Outstanding prefill is released in every case.
    assert_eq!(
        r.snapshot()
            .node(0)
            .live
            .outstanding_prefill
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Expiry after the TTL.
    clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(r.expire(clock.now()).0, 1);
    assert_eq!(r.believed_cached_blocks(&a, &ctx), 0);
}

#[test]
fn half_open_probe_is_released_by_the_guard() {
    let clock = ManualClock::new();
    let r = Router::new(RouterParams::default(), clock.shared());
    let mut e = NodeEntry::new(NodeSpec::new("u", "http://u:1"), NodeStatus::Unhealthy);
    e.probe_ready = true;
    r.publish(vec![e]);
    let probe = r.select(&RoutingContext::default()).unwrap();
    assert_eq!(probe.decision.reason, RoutingReason::Fallback);
    assert!(r.select(&RoutingContext::default()).is_err());
    probe.guard.finish(RequestOutcome::success());
    assert!(r.select(&RoutingContext::default()).is_ok());
}

#[test]
fn publish_keeps_live_state_and_drain_removes_candidates() {
    let (_c, r) = router(StrategyKind::LeastLoaded, &["a", "b"]);
    let g = r.select(&RoutingContext::default()).unwrap();
    let busy = g.decision.node_id.clone();
    let gen1 = r.snapshot().generation();
    r.update(|entries| {
        entries.push(NodeEntry::new(
            NodeSpec::new("c", "http://c:1"),
            NodeStatus::Healthy,
        ))
    });
    assert!(r.snapshot().generation() > gen1);
    assert_eq!(r.in_flight(&busy), 1);
    r.update(|entries| {
        for e in entries.iter_mut() {
            e.drained = e.spec.id != busy;
        }
    });
    // Only the busy node is left undrained.
    assert_eq!(
        r.select(&RoutingContext::default())
            .unwrap()
            .decision
            .node_id,
        busy
    );
    drop(g);
    // Duplicate ids keep the first.
    r.publish(vec![
        NodeEntry::new(NodeSpec::new("x", "http://one:1"), NodeStatus::Healthy),
        NodeEntry::new(NodeSpec::new("x", "http://two:1"), NodeStatus::Healthy),
    ]);
    assert_eq!(r.snapshot().len(), 1);
    assert_eq!(
        r.select(&RoutingContext::default())
            .unwrap()
            .target
            .base_url,
        "http://one:1"
    );
}

#[test]
fn seeds_state_is_updated_on_routing() {
    let (_c, r) = router(StrategyKind::CacheScore, &["a", "b"]);
    let ctx = RoutingContext {
        system_prompt_hash: Some(7),
        tools_hash: Some(9),
        ..RoutingContext::default()
    };
    let first = r.select(&ctx).unwrap();
    let node = first.decision.node_id.clone();
    drop(first);
    let st = r.cache_state(&node).unwrap();
    assert_eq!((st.system_prompt_hash, st.tools_hash), (Some(7), Some(9)));
    assert!(st.last_updated_unix_ms.is_some());
    // The matching node now scores 50 + 20 + 25 + 15 + 10 = 120.
    let again = r.select(&ctx).unwrap();
    assert_eq!(again.decision.node_id, node);
    assert!((again.decision.confidence - 1.0).abs() < 1e-9);
}
