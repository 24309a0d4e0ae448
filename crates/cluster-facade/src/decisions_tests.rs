//! Decision records through the router: select → guard → finish, with a
//! manual clock.

use std::time::Duration;

use cluster_metrics::ManualClock;
use cluster_types::{
    DecisionOutcome, NodeId, NodeSpec, NodeStatus, PrefixFingerprint, RoutingContext,
    RoutingReason, SegmentKind,
};

use crate::decisions::DecisionQuery;
use crate::outcome::{FailureKind, RequestOutcome};
use crate::params::RouterParams;
use crate::router::Router;
use crate::snapshot::NodeEntry;

fn router(params: RouterParams, ids: &[&str]) -> (ManualClock, Router) {
    let clock = ManualClock::new();
    let r = Router::new(params, clock.shared());
    r.publish(
        ids.iter()
            .map(|id| {
                NodeEntry::new(
                    NodeSpec::new(*id, format!("http://{id}:1")),
                    NodeStatus::Healthy,
                )
            })
            .collect(),
    );
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

fn newest(r: &Router) -> cluster_types::DecisionRecord {
    r.decisions()
        .recent(&DecisionQuery::default())
        .into_iter()
        .next()
        .expect("a record")
}

#[tokio::test(start_paused = true)]
async fn a_cache_hit_is_explained_by_its_prediction_cost_and_runner_up() {
    let (clock, r) = router(RouterParams::default(), &["a", "b", "c"]);
    let sys = "You are a coding agent with many tools. ".repeat(250); // 10 KB
    let first = prompt(&sys, "fix the bug");
    let s = r.select(&first).unwrap();
    let node = s.decision.node_id.clone();
    let mut g = s.guard;
    assert_eq!(g.reason(), RoutingReason::Rendezvous);
    g.admitted(true).await;
    clock.advance(Duration::from_millis(1500));
    g.first_byte();
    clock.advance(Duration::from_millis(500));
    let tokens = first.prompt_tokens_estimate;
    g.finish(RequestOutcome::success_with_usage(tokens, 0, 40));

    let cold = newest(&r);
    assert_eq!(cold.seq, 1);
    assert_eq!(cold.node, node);
    assert_eq!(
        (cold.reason, cold.strategy_reason),
        (RoutingReason::Rendezvous, RoutingReason::Rendezvous)
    );
    assert_eq!((cold.attempt, cold.candidates), (1, 3));
    assert_eq!(cold.predicted_cached_tokens, Some(0));
    assert_eq!(cold.reported_cached_tokens, Some(0));
    assert_eq!(cold.reported_prompt_tokens, Some(u64::from(tokens)));
    assert_eq!(cold.completion_tokens, Some(40));
    assert_eq!(cold.matched_blocks, 0);
    assert!(cold.prompt_blocks >= 39, "{}", cold.prompt_blocks);
    assert_eq!(cold.gate_wait_ms, Some(0.0));
    assert_eq!(cold.ttft_ms, Some(1500.0));
    assert_eq!(cold.total_ms, 2000.0);
    assert_eq!(cold.outcome, DecisionOutcome::Success);
    assert_eq!(cold.prediction_error_blocks, Some(0.0));
    // Every node was equally cold: the runner-up cost the same.
    let ru = cold.runner_up.expect("runner-up");
    assert_ne!(ru.node, node);
    let cost = cold.cost.expect("cost terms");
    assert!((ru.cost_seconds - cost.seconds).abs() < 1e-9);
    assert_eq!(cost.uncached_tokens, cold.prompt_tokens_estimate);
    assert!((cost.rate_tokens_per_second - 1500.0).abs() < 1e-9);

    // The same system prompt again: a cache hit on the same node, and the
    // runner-up (cold) is far more expensive.
    let second = prompt(&sys, "and now add a test");
    let s = r.select(&second).unwrap();
    assert_eq!(s.decision.node_id, node);
    assert_eq!(s.guard.reason(), RoutingReason::CacheHit);
    let predicted_blocks = r.believed_cached_blocks(&node, &second);
    s.guard.finish(RequestOutcome::success_with_usage(
        second.prompt_tokens_estimate,
        tokens - 20,
        10,
    ));
    let hit = newest(&r);
    assert_eq!(hit.seq, 2);
    assert_eq!(hit.reason, RoutingReason::CacheHit);
    assert!(hit.matched_blocks > 0 && hit.matched_blocks <= hit.prompt_blocks);
    assert!(predicted_blocks >= hit.matched_blocks as usize);
    assert!(
        hit.prefix_match_ratio() > 0.9,
        "{}",
        hit.prefix_match_ratio()
    );
    let predicted = hit.predicted_cached_tokens.unwrap();
    assert!(predicted > 2000, "{predicted}");
    assert_eq!(hit.reported_cached_tokens, Some(u64::from(tokens - 20)));
    assert!(hit.prediction_error_blocks.unwrap() < 2.0);
    let cost = hit.cost.unwrap();
    let ru = hit.runner_up.unwrap();
    assert!(ru.cost_seconds > 5.0 * cost.seconds, "{ru:?} vs {cost:?}");
    assert_eq!(ru.predicted_cached_tokens, 0);
    assert_eq!(
        cost.uncached_tokens,
        hit.prompt_tokens_estimate - predicted,
        "{cost:?}"
    );

    // The per-node counters saw both decisions.
    let snap = r.snapshot();
    let live = &snap.node(snap.index_of(&node).unwrap()).live;
    let routing = live.counters.snapshot().routing;
    assert_eq!(routing.decisions(RoutingReason::Rendezvous), 1);
    assert_eq!(routing.decisions(RoutingReason::CacheHit), 1);
    assert_eq!(routing.prefix_match_count, 2);
    assert_eq!(routing.prefix_match_buckets[0], 1, "the cold prompt");

    // Filters.
    let only_hits = r.decisions().recent(&DecisionQuery {
        reason: Some(RoutingReason::CacheHit),
        ..DecisionQuery::default()
    });
    assert_eq!(only_hits.len(), 1);
    let other = NodeId::from(if node.as_str() == "a" { "b" } else { "a" });
    assert!(
        r.decisions()
            .recent(&DecisionQuery {
                node: Some(other),
                ..DecisionQuery::default()
            })
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn gate_waits_retries_failures_and_cancellations_are_recorded() {
    let (clock, r) = router(
        RouterParams::default().with_strategy(cluster_types::LoadBalanceStrategy::RoundRobin),
        &["a", "b"],
    );
    let mut ctx = prompt("s", "one");
    let mut first = r.select(&ctx).unwrap().guard;
    first.admitted(true).await;
    // A retry of the same request skips `a` and says so.
    ctx.excluded.push(first.node_id().clone());
    let mut retry = r.select(&ctx).unwrap().guard;
    assert_eq!(retry.reason(), RoutingReason::Retry);
    retry.set_trace_id("4bf92f3577b34da6a3ce929d0e0e4736");
    retry.finish(RequestOutcome::Failed {
        kind: FailureKind::Connect,
    });
    let rec = newest(&r);
    assert_eq!(
        (rec.reason, rec.strategy_reason, rec.attempt),
        (RoutingReason::Retry, RoutingReason::RoundRobin, 2)
    );
    assert_eq!(rec.outcome, DecisionOutcome::ConnectError);
    assert_eq!(
        rec.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    // No prediction from a classic strategy.
    assert_eq!(
        (rec.predicted_cached_tokens, rec.cost, rec.runner_up),
        (None, None, None)
    );

    // The other node answers 429 to a first attempt.
    let mut elsewhere = prompt("s", "elsewhere");
    elsewhere.excluded.push(first.node_id().clone());
    let busy = r.select(&elsewhere).unwrap().guard;
    busy.finish(RequestOutcome::Overloaded { retry_after: None });
    assert_eq!(newest(&r).outcome, DecisionOutcome::Overloaded);
    // Now saturated, it is skipped: a second request goes to the first's
    // node and waits at its prefill gate.
    let mut waiting = r.select(&prompt("s", "two")).unwrap().guard;
    assert_eq!(waiting.node_id(), first.node_id());
    let blocked = tokio::time::timeout(Duration::from_secs(1), waiting.admitted(true)).await;
    assert!(blocked.is_err());
    clock.advance(Duration::from_millis(250));
    first.first_byte();
    waiting.admitted(true).await;
    drop(waiting);
    let cancelled = newest(&r);
    assert_eq!(cancelled.outcome, DecisionOutcome::Cancelled);
    assert_eq!(cancelled.gate_wait_ms, Some(250.0));
    assert_eq!(cancelled.ttft_ms, None);
    first.finish(RequestOutcome::Failed {
        kind: FailureKind::ServerError { status: 500 },
    });
    assert_eq!(newest(&r).outcome, DecisionOutcome::ServerError);
    assert_eq!(r.decisions().total(), 4);
}

#[test]
fn a_log_of_size_zero_keeps_nothing_but_counters_still_count() {
    let params = RouterParams {
        decision_log_size: 0,
        ..RouterParams::default()
    };
    let (_clock, r) = router(params, &["a"]);
    let s = r.select(&prompt("s", "q")).unwrap();
    assert_eq!(s.guard.reason(), RoutingReason::LeastLoaded);
    s.guard.finish(RequestOutcome::success());
    assert!(r.decisions().is_empty());
    let snap = r.snapshot();
    let routing = snap.node(0).live.counters.snapshot().routing;
    assert_eq!(routing.total(), 1);
}
