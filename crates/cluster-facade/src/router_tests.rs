//! Router-level tests: select → guard → finish, with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use cluster_metrics::{Clock, ManualClock};
use cluster_types::{
    LoadBalanceStrategy, NodeId, NodeSpec, NodeStatus, PrefixFingerprint, RoutingContext,
    RoutingReason, SegmentKind,
};
use parking_lot::Mutex;

use crate::outcome::{FailureKind, RequestOutcome};
use crate::params::RouterParams;
use crate::probe::OutcomeObserver;
use crate::router::Router;
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

fn router(strategy: LoadBalanceStrategy, ids: &[&str]) -> (ManualClock, Router) {
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
    let (_clock, r) = router(LoadBalanceStrategy::RoundRobin, &["a"]);
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
        LoadBalanceStrategy::RoundRobin,
        LoadBalanceStrategy::LeastLoaded,
        LoadBalanceStrategy::LatencyBased,
        LoadBalanceStrategy::CacheScore,
        LoadBalanceStrategy::CacheAware,
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
    let (clock, r) = router(LoadBalanceStrategy::RoundRobin, &["a", "b"]);
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
    // Only the strategy that reads the success window keeps it.
    let (_c, rr) = router(LoadBalanceStrategy::RoundRobin, &["a"]);
    rr.select(&RoutingContext::default())
        .unwrap()
        .guard
        .finish(RequestOutcome::Failed {
            kind: FailureKind::ServerError { status: 500 },
        });
    assert!((rr.snapshot().node(0).live.success_rate.load() - 1.0).abs() < 1e-12);

    let (_c, r) = router(LoadBalanceStrategy::CacheScore, &["a"]);
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
    let (clock, r) = router(LoadBalanceStrategy::RoundRobin, &["a", "b", "c"]);
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
    let (clock, r) = router(LoadBalanceStrategy::CacheAware, &["a", "b", "c", "d"]);
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
    let (_clock, r) = router(LoadBalanceStrategy::CacheAware, &["a"]);
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
    let (clock, r) = router(LoadBalanceStrategy::CacheAware, &["a"]);
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
    let (_c, r) = router(LoadBalanceStrategy::LeastLoaded, &["a", "b"]);
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
    let (_c, r) = router(LoadBalanceStrategy::CacheScore, &["a", "b"]);
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

#[tokio::test(start_paused = true)]
async fn one_prefill_per_node_until_the_first_byte() {
    let (_clock, r) = router(LoadBalanceStrategy::RoundRobin, &["a"]);
    let mut first = r.select(&prompt("s", "one")).unwrap().guard;
    first.admitted(true).await;
    assert_eq!(first.gate_wait(), Some(Duration::ZERO));
    let mut second = r.select(&prompt("s", "two")).unwrap().guard;
    // The second waits while the first prefills...
    let waiting = tokio::time::timeout(Duration::from_secs(5), second.admitted(true)).await;
    assert!(waiting.is_err(), "admitted during the first prefill");
    // ...and goes as soon as the first byte of the first answer arrives.
    first.first_byte();
    tokio::time::timeout(Duration::from_millis(1), second.admitted(true))
        .await
        .expect("admitted after the first byte");
    // A node tagged `prefill_concurrency = "0"` is not gated.
    r.publish(vec![NodeEntry::new(
        {
            let mut spec = NodeSpec::new("a", "http://a:1");
            spec.tags
                .insert(crate::TAG_PREFILL_CONCURRENCY.to_owned(), "0".to_owned());
            spec
        },
        NodeStatus::Healthy,
    )]);
    let mut third = r.select(&prompt("s", "three")).unwrap().guard;
    tokio::time::timeout(Duration::from_millis(1), third.admitted(true))
        .await
        .expect("ungated node");
    drop((first, second, third));
}

#[tokio::test(start_paused = true)]
async fn a_stuck_prefill_releases_the_gate_after_its_hold_limit() {
    let (_clock, r) = router(LoadBalanceStrategy::RoundRobin, &["a"]);
    let mut stuck = r.select(&prompt("s", "one")).unwrap().guard;
    stuck.admitted(true).await;
    let mut next = r.select(&prompt("s", "two")).unwrap().guard;
    // A streamed request holds the slot at least 10 s without a first byte.
    let early = tokio::time::timeout(Duration::from_secs(9), next.admitted(true)).await;
    assert!(early.is_err());
    tokio::time::timeout(Duration::from_secs(2), next.admitted(true))
        .await
        .expect("released by the hold limit");
    // A cancelled (dropped) request frees its slot at once.
    let mut later = r.select(&prompt("s", "three")).unwrap().guard;
    let mut after = r.select(&prompt("s", "four")).unwrap().guard;
    drop(next);
    later.admitted(false).await;
    drop(later);
    tokio::time::timeout(Duration::from_millis(1), after.admitted(true))
        .await
        .expect("freed by the drop");
    drop((stuck, after));
}

#[test]
fn reports_teach_rates_token_ratio_fidelity_and_capacity() {
    let (clock, r) = router(LoadBalanceStrategy::CacheAware, &["a"]);
    let a = NodeId::from("a");
    let sys = "You are a careful agent. ".repeat(400); // 10 KB
    let t1 = prompt(&sys, &"first task ".repeat(60));
    let mut g = r.select(&t1).unwrap().guard;
    clock.advance(Duration::from_secs(2));
    g.first_byte();
    // The node counts 2 tokens per 3 bytes, not 1 per 4.
    let bytes = t1.fingerprint.total_bytes();
    let p1 = u32::try_from(bytes * 2 / 3).unwrap();
    g.finish(RequestOutcome::success_with_usage(p1, 0, 30));
    let rate = r.prefill_rate(&a).unwrap();
    assert!((rate - f64::from(p1) / 2.0).abs() < 1.0, "{rate}");
    // The next turn extends the first: predicted = prompt + reply, and the
    // node confirms it exactly.
    let t2 = {
        let mut b = PrefixFingerprint::builder(256);
        b.push_segment(SegmentKind::System, &sys)
            .push_segment(
                SegmentKind::Message { role: "user" },
                &"first task ".repeat(60),
            )
            .push_segment(SegmentKind::Message { role: "assistant" }, "done")
            .push_segment(SegmentKind::Message { role: "user" }, &"more ".repeat(80));
        RoutingContext {
            fingerprint: b.finish(),
            ..RoutingContext::default()
        }
    };
    let s2 = r.select(&t2).unwrap();
    assert_eq!(s2.decision.reason, RoutingReason::CacheHit);
    let p2 = u32::try_from(t2.fingerprint.total_bytes() * 2 / 3).unwrap();
    s2.guard
        .finish(RequestOutcome::success_with_usage(p2, p1 + 30, 20));
    // Both predictions held (the first: nothing cached, as predicted).
    let m = r.node_metrics(&a).unwrap();
    assert_eq!(m.cache_predictions_total, 2);
    assert_eq!(m.cache_prediction_within_block, Some(1.0));
    assert_eq!(m.completion_tokens_total, 50);
    // A sibling conversation predicted to hit the system prompt, which the
    // node had evicted: a clear loss, so the learned entry limit shrinks.
    let limit = r.shared.cache.lock().entry_limit(0);
    let t3 = prompt(&sys, &"a different task ".repeat(60));
    let s3 = r.select(&t3).unwrap();
    let p3 = u32::try_from(t3.fingerprint.total_bytes() * 2 / 3).unwrap();
    s3.guard
        .finish(RequestOutcome::success_with_usage(p3, 0, 20));
    let m = r.node_metrics(&a).unwrap();
    assert_eq!(m.cache_predictions_total, 3);
    let fidelity = m.cache_prediction_within_block.unwrap();
    assert!((fidelity - 2.0 / 3.0).abs() < 1e-9, "{fidelity}");
    assert!(r.shared.cache.lock().entry_limit(0) < limit);
}

#[tokio::test]
async fn non_streamed_answers_do_not_teach_the_prefill_rate() {
    let (clock, r) = router(LoadBalanceStrategy::CacheAware, &["a"]);
    let a = NodeId::from("a");
    let mut g = r.select(&prompt(&"x".repeat(8_000), "q")).unwrap().guard;
    g.admitted(false).await;
    clock.advance(Duration::from_secs(30));
    // Its first byte is the whole answer, decode included.
    g.first_byte();
    g.finish(RequestOutcome::success_with_usage(5_000, 0, 500));
    assert_eq!(r.prefill_rate(&a), None);
}

#[test]
fn consistent_replicas_agree_whatever_they_saw_before() {
    let params = RouterParams {
        consistent_replicas: true,
        ..RouterParams::default()
    };
    let make = || {
        let clock = ManualClock::new();
        let r = Router::new(params.clone(), clock.shared());
        r.publish(nodes(&["a", "b", "c", "d"]));
        r
    };
    let (one, two) = (make(), make());
    // Replica one has already routed (and learned from) other traffic.
    for k in 0..20 {
        let ctx = prompt(&"shared system ".repeat(300), &format!("warm-up {k}"));
        one.select(&ctx)
            .unwrap()
            .guard
            .finish(RequestOutcome::success_with_usage(900, 0, 10));
    }
    let mut per_node = std::collections::HashMap::new();
    for k in 0..400u64 {
        let mut ctx = prompt(&"shared system ".repeat(300), &format!("task {k}"));
        ctx.conversation_key = Some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let a = one.select(&ctx).unwrap();
        let b = two.select(&ctx).unwrap();
        assert_eq!(a.decision.node_id, b.decision.node_id, "conversation {k}");
        *per_node.entry(a.decision.node_id.clone()).or_insert(0) += 1;
        // The next turn of the conversation goes to the same node.
        let again = two.select(&ctx).unwrap();
        assert_eq!(again.decision.node_id, a.decision.node_id);
    }
    // Spread over all four nodes (100 each on average).
    assert_eq!(per_node.len(), 4);
    assert!(
        per_node.values().all(|&n| (60..=140).contains(&n)),
        "{per_node:?}"
    );
    // A node that goes unhealthy is skipped by every replica alike, and only
    // its conversations move.
    for r in [&one, &two] {
        r.update(|entries| {
            for e in entries.iter_mut().filter(|e| e.spec.id.as_str() == "b") {
                e.status = NodeStatus::Unhealthy;
            }
        });
    }
    for k in 0..100u64 {
        let mut ctx = prompt("s", "t");
        ctx.conversation_key = Some(k);
        let a = one.select(&ctx).unwrap().decision.node_id;
        assert_ne!(a.as_str(), "b");
        assert_eq!(a, two.select(&ctx).unwrap().decision.node_id);
    }
}

#[test]
fn consistent_replicas_respect_weights() {
    let clock = ManualClock::new();
    let r = Router::new(
        RouterParams {
            consistent_replicas: true,
            ..RouterParams::default()
        },
        clock.shared(),
    );
    let mut entries = nodes(&["big", "small"]);
    entries[0].spec.weight = 3;
    r.publish(entries);
    let mut big = 0;
    for k in 0..2000u64 {
        let mut ctx = prompt("s", "t");
        ctx.conversation_key = Some(k.wrapping_mul(0x2545_f491_4f6c_dd1d));
        if r.select(&ctx).unwrap().decision.node_id.as_str() == "big" {
            big += 1;
        }
    }
    // 3 : 1 → about 1500 of 2000.
    assert!((1400..=1600).contains(&big), "{big}");
}

#[test]
fn consistent_replicas_skip_a_node_that_reports_a_long_queue() {
    let clock = ManualClock::new();
    let r = Router::new(
        RouterParams {
            consistent_replicas: true,
            ..RouterParams::default()
        },
        clock.shared(),
    );
    r.publish(nodes(&["a", "b", "c"]));
    let mut ctx = prompt("s", "t");
    ctx.conversation_key = Some(42);
    let home = r.select(&ctx).unwrap().decision.node_id;
    // Every node reports its queue; the home node's is far above the mean.
    for id in ["a", "b", "c"] {
        let queue = if id == home.as_str() { 30 } else { 2 };
        r.record_reported_queue(&NodeId::from(id), queue);
    }
    let moved = r.select(&ctx).unwrap().decision.node_id;
    assert_ne!(moved, home);
    // Reports within the slack keep the conversation home; a node that has
    // not reported lately makes every replica fall back to the plain order.
    r.record_reported_queue(&home, 4);
    assert_eq!(r.select(&ctx).unwrap().decision.node_id, home);
    r.record_reported_queue(&home, 30);
    clock.advance(Duration::from_secs(11));
    for id in ["a", "b", "c"].iter().filter(|id| **id != home.as_str()) {
        r.record_reported_queue(&NodeId::from(*id), 2);
    }
    assert_eq!(r.select(&ctx).unwrap().decision.node_id, home);
}
