//! The breaker through the orchestrator: backoff, the half-open probe
//! (the task's or a real request's), overload as backpressure.

use super::*;

#[tokio::test(start_paused = true)]
async fn failing_node_backs_off_goes_offline_and_recovers_through_the_probe() {
    let script = Script::default();
    script.set("a", Outcome::Fail);
    let health = builder(&script).build().unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();

    let HealthEvent::StatusChanged(opened) =
        wait_for(&mut rx, is_change("a", NodeStatus::Unhealthy)).await
    else {
        unreachable!()
    };
    assert_eq!(opened.from, NodeStatus::Initializing);
    assert_eq!(opened.metrics.consecutive_failures, 3);
    assert_eq!(script.calls_of("a").len(), 3);
    let first_delay = health.node_health(&id("a")).unwrap().backoff_delay;
    assert!(
        first_delay >= Duration::from_millis(800) && first_delay <= Duration::from_millis(1200)
    );
    assert!(!health.routing_table().get(&id("a")).unwrap().routable);

    // Probes go out exactly when the backoff expires, one at a time.
    let mut probe_times = vec![opened.at];
    wait_for(&mut rx, is_probe("a")).await;
    probe_times.push(TokioClock.now());
    assert_eq!(health.status(&id("a")).unwrap(), NodeStatus::Offline);
    for _ in 0..3 {
        wait_for(&mut rx, is_probe("a")).await;
        probe_times.push(TokioClock.now());
    }
    let gaps: Vec<f64> = probe_times
        .windows(2)
        .map(|p| (p[1] - p[0]).as_secs_f64())
        .collect();
    for (gap, base) in gaps.iter().zip([1.0, 2.0, 4.0, 8.0]) {
        assert!(*gap >= base * 0.8 && *gap <= base * 1.2, "gaps {gaps:?}");
    }
    let report = health.node_health(&id("a")).unwrap();
    assert!(
        report.backoff_delay >= Duration::from_secs_f64(12.8),
        "{report:?}"
    );
    assert!(matches!(
        report.last_error.as_deref(),
        Some(HealthError::Network { .. })
    ));
    assert!(report.retry_at.is_some());

    // Back up: the next probe closes the breaker (degraded, on probation),
    // then 5 consecutive successes make it healthy.
    script.set("a", Outcome::Ok);
    let HealthEvent::StatusChanged(closed) =
        wait_for(&mut rx, is_change("a", NodeStatus::Degraded)).await
    else {
        unreachable!()
    };
    assert_eq!(closed.from, NodeStatus::Offline);
    wait_for(&mut rx, is_change("a", NodeStatus::Healthy)).await;
    let report = health.node_health(&id("a")).unwrap();
    assert_eq!(report.metrics.consecutive_successes, 5);
    assert_eq!(report.backoff_delay, Duration::ZERO);
    assert!(report.last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn passive_failures_open_the_breaker_and_the_task_probes_at_backoff_expiry() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    wait_for(&mut rx, is_change("a", NodeStatus::Healthy)).await;
    let checks_before = script.calls_of("a").len();
    script.set("a", Outcome::Fail);
    for _ in 0..3 {
        health.record_failure(
            &id("a"),
            HealthError::network(id("a"), std::io::Error::other("reset")),
        );
    }
    assert_eq!(health.status(&id("a")).unwrap(), NodeStatus::Unhealthy);
    let opened = tokio::time::Instant::now();
    let delay = health.node_health(&id("a")).unwrap().backoff_delay;
    wait_for(&mut rx, is_probe("a")).await;
    // Probed at backoff expiry (≈1 s), not at the next 5 s tick (the timer
    // wheel rounds up to the millisecond).
    let waited = tokio::time::Instant::now() - opened;
    assert!(
        waited >= delay && waited <= delay + Duration::from_millis(2),
        "{waited:?} vs {delay:?}"
    );
    assert_eq!(script.calls_of("a").len(), checks_before + 1);
    assert_eq!(health.status(&id("a")).unwrap(), NodeStatus::Offline);
}

#[tokio::test(start_paused = true)]
async fn one_real_request_is_the_half_open_probe() {
    let script = Script::default();
    let health = builder(&script).build().unwrap(); // not started: no active probes
    health.add_node(spec("a"));
    let a = id("a");
    assert!(
        health.try_acquire_probe(&a).unwrap().is_none(),
        "closed: no probe needed"
    );
    for _ in 0..3 {
        health.record_failure(
            &a,
            HealthError::network(a.clone(), std::io::Error::other("refused")),
        );
    }
    assert!(
        health.try_acquire_probe(&a).unwrap().is_none(),
        "backing off"
    );
    let view = health.routing_view(&a).unwrap();
    let now = TokioClock.now();
    assert!(matches!(view.probe_slot(now), ProbeSlot::Waiting { .. }));
    tokio::time::advance(health.node_health(&a).unwrap().backoff_delay).await;

    let guard = health.try_acquire_probe(&a).unwrap().expect("half-open");
    assert_eq!(guard.node(), &a);
    for _ in 0..10 {
        assert!(
            health.try_acquire_probe(&a).unwrap().is_none(),
            "only one probe"
        );
    }
    assert!(matches!(
        health
            .routing_table()
            .get(&a)
            .unwrap()
            .probe_slot(TokioClock.now()),
        ProbeSlot::InFlight { .. }
    ));
    drop(guard); // cancelled request: the slot is free again
    assert_eq!(
        health
            .routing_table()
            .get(&a)
            .unwrap()
            .probe_slot(TokioClock.now()),
        ProbeSlot::Free
    );

    let guard = health.try_acquire_probe(&a).unwrap().expect("free again");
    guard.failure(&HealthError::network(
        a.clone(),
        std::io::Error::other("refused"),
    ));
    assert_eq!(health.status(&a).unwrap(), NodeStatus::Offline);
    tokio::time::advance(health.node_health(&a).unwrap().backoff_delay).await;
    let guard = health
        .try_acquire_probe(&a)
        .unwrap()
        .expect("half-open again");
    guard.success(Duration::from_millis(900));
    assert_eq!(health.status(&a).unwrap(), NodeStatus::Degraded);
    assert!(health.routing_table().get(&a).unwrap().routable);
}

#[tokio::test(start_paused = true)]
async fn concurrent_probe_callers_get_one_permit() {
    let script = Script::default();
    let health = Arc::new(builder(&script).build().unwrap());
    health.add_node(spec("a"));
    let a = id("a");
    for _ in 0..3 {
        health.record_failure(
            &a,
            HealthError::network(a.clone(), std::io::Error::other("refused")),
        );
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    let winners = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Handle::current();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (health, winners, a) = (Arc::clone(&health), Arc::clone(&winners), a.clone());
            let runtime = runtime.clone();
            std::thread::spawn(move || {
                // The paused clock is the runtime's: read it from its context.
                let _context = runtime.enter();
                if let Some(guard) = health.try_acquire_probe(&a).unwrap() {
                    winners.fetch_add(1, Ordering::SeqCst);
                    std::mem::forget(guard); // hold the slot
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(winners.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn overload_saturates_pauses_checks_and_penalizes_without_tripping() {
    let script = Script::default();
    let health = builder(&script).build().unwrap();
    let mut rx = health.subscribe();
    health.start([spec("a")]).unwrap();
    wait_for(&mut rx, is_change("a", NodeStatus::Healthy)).await;
    let before = health.routing_table();
    script.set("a", Outcome::Overload(Some(30)));
    let HealthEvent::Saturated { until, .. } =
        wait_for(&mut rx, |e| matches!(e, HealthEvent::Saturated { .. })).await
    else {
        unreachable!()
    };
    let now = TokioClock.now();
    assert_eq!(until, now + Duration::from_secs(30));
    let table = health.routing_table();
    assert!(table.version() > before.version());
    let view = table.get(&id("a")).unwrap();
    assert!(view.routable && view.is_saturated(now));
    assert!(view.load_penalty(now) > 0.9);
    assert_eq!(health.status(&id("a")).unwrap(), NodeStatus::Healthy);
    // No checks while saturated.
    let calls = script.calls_of("a").len();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(script.calls_of("a").len(), calls);
    // Keeps answering 429 for minutes: that persists, and trips the breaker.
    wait_for(&mut rx, is_change("a", NodeStatus::Unhealthy)).await;
    let overloaded_for = TokioClock.now() - now;
    assert!(
        overloaded_for >= Duration::from_secs(30),
        "{overloaded_for:?}"
    );
}
