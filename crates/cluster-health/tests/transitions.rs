//! The breaker's transitions as a table over every (state, event) pair, in
//! manual time. No test sleeps.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_health::{Backoff, NodeHealthTracker, Observation, ProbeSlot};
use cluster_metrics::{Clock, ManualClock};
use cluster_types::{BackoffConfig, HealthConfig, NodeStatus};

use NodeStatus::{Degraded, Healthy, Initializing, Offline, Unhealthy};

const MS: Duration = Duration::from_millis(1);

fn tracker(clock: &ManualClock) -> NodeHealthTracker {
    NodeHealthTracker::new(
        "node".into(),
        &HealthConfig::default(),
        Backoff::from_seed(BackoffConfig::default(), 11),
        clock.now(),
    )
}

fn success() -> Observation {
    Observation::Success {
        latency: Some(10 * MS),
    }
}

/// Starting points: each is a state reached through the public API, with
/// the window contents named.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Fresh node.
    Initializing,
    /// Fresh node with 2 failures (one short of the limit).
    InitializingTwoFailures,
    /// 9 successes: a failure keeps it healthy (rate 0.9).
    Healthy,
    /// 3 successes: a failure makes it degraded (rate 0.75).
    HealthyThin,
    /// 20 successes, 2 failures: a third consecutive failure trips it.
    HealthyTwoFailures,
    /// 3 successes, 1 failure (rate 0.75): a success heals it (rate 0.8).
    Degraded,
    /// 3 successes, 2 failures (rate 0.6, cf 2): a success keeps it
    /// degraded, a failure trips it.
    DegradedLow,
    /// 3 failures, still backing off.
    Unhealthy,
    /// As `Unhealthy`, with the backoff expired (half-open).
    UnhealthyHalfOpen,
    /// As `UnhealthyHalfOpen` with 4 passive successes already recorded.
    UnhealthyHalfOpenFourSuccesses,
    /// 3 failures, then a failed probe; still backing off.
    Offline,
    /// As `Offline`, with the backoff expired (half-open).
    OfflineHalfOpen,
}

impl Start {
    const ALL: [Start; 12] = [
        Start::Initializing,
        Start::InitializingTwoFailures,
        Start::Healthy,
        Start::HealthyThin,
        Start::HealthyTwoFailures,
        Start::Degraded,
        Start::DegradedLow,
        Start::Unhealthy,
        Start::UnhealthyHalfOpen,
        Start::UnhealthyHalfOpenFourSuccesses,
        Start::Offline,
        Start::OfflineHalfOpen,
    ];

    fn build(self, clock: &ManualClock) -> NodeHealthTracker {
        let mut t = tracker(clock);
        let now = clock.now();
        let s = |t: &mut NodeHealthTracker, n: usize| {
            for _ in 0..n {
                t.record_success(Some(10 * MS), now);
            }
        };
        let f = |t: &mut NodeHealthTracker, n: usize| {
            for _ in 0..n {
                t.record_failure(now);
            }
        };
        match self {
            Start::Initializing => {}
            Start::InitializingTwoFailures => f(&mut t, 2),
            Start::Healthy => s(&mut t, 9),
            Start::HealthyThin => s(&mut t, 3),
            Start::HealthyTwoFailures => {
                s(&mut t, 20);
                f(&mut t, 2);
            }
            Start::Degraded => {
                s(&mut t, 3);
                f(&mut t, 1);
            }
            Start::DegradedLow => {
                s(&mut t, 3);
                f(&mut t, 2);
            }
            Start::Unhealthy => f(&mut t, 3),
            Start::UnhealthyHalfOpen => {
                f(&mut t, 3);
                clock.advance(t.backoff_delay());
            }
            Start::UnhealthyHalfOpenFourSuccesses => {
                f(&mut t, 3);
                s(&mut t, 4);
                clock.advance(t.backoff_delay());
            }
            Start::Offline => {
                f(&mut t, 3);
                clock.advance(t.backoff_delay());
                let permit = t.try_acquire_probe(clock.now()).unwrap();
                t.complete_probe(permit, Observation::Failure, clock.now());
            }
            Start::OfflineHalfOpen => {
                f(&mut t, 3);
                clock.advance(t.backoff_delay());
                let permit = t.try_acquire_probe(clock.now()).unwrap();
                t.complete_probe(permit, Observation::Failure, clock.now());
                clock.advance(t.backoff_delay());
            }
        }
        t
    }

    fn status(self) -> NodeStatus {
        match self {
            Start::Initializing | Start::InitializingTwoFailures => Initializing,
            Start::Healthy | Start::HealthyThin | Start::HealthyTwoFailures => Healthy,
            Start::Degraded | Start::DegradedLow => Degraded,
            Start::Unhealthy | Start::UnhealthyHalfOpen | Start::UnhealthyHalfOpenFourSuccesses => {
                Unhealthy
            }
            Start::Offline | Start::OfflineHalfOpen => Offline,
        }
    }
}

/// Events: passive observations, and the same outcomes as the half-open
/// probe (which needs a permit first).
#[derive(Debug, Clone, Copy)]
enum Event {
    Success,
    Failure,
    Overload,
    Loading,
    ProbeSuccess,
    ProbeFailure,
    ProbeOverload,
    ProbeLoading,
}

impl Event {
    const ALL: [Event; 8] = [
        Event::Success,
        Event::Failure,
        Event::Overload,
        Event::Loading,
        Event::ProbeSuccess,
        Event::ProbeFailure,
        Event::ProbeOverload,
        Event::ProbeLoading,
    ];

    fn observation(self) -> Observation {
        match self {
            Event::Success | Event::ProbeSuccess => success(),
            Event::Failure | Event::ProbeFailure => Observation::Failure,
            Event::Overload | Event::ProbeOverload => Observation::Overloaded {
                retry_after: Some(Duration::from_secs(5)),
            },
            Event::Loading | Event::ProbeLoading => Observation::Loading,
        }
    }

    fn is_probe(self) -> bool {
        matches!(
            self,
            Event::ProbeSuccess | Event::ProbeFailure | Event::ProbeOverload | Event::ProbeLoading
        )
    }
}

/// The expected result of one (start, event) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A probe event where no permit is handed out (breaker closed or still
    /// backing off): nothing changes.
    NoPermit,
    /// The resulting status, and whether the backoff grew.
    Status(NodeStatus, Backoff_),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backoff_ {
    /// Breaker closed afterwards (no backoff delay).
    Closed,
    /// Open with the same retry instant.
    Same,
    /// Open with a new, longer delay.
    Grew,
    /// Open, the retry instant pushed to the end of the saturation.
    Pushed,
}

use Backoff_::{Closed, Grew, Pushed, Same};
use Expect::{NoPermit, Status as S};

fn expected(start: Start, event: Event) -> Expect {
    use Event as E;
    use Start as St;
    match (start, event) {
        // Closed breakers never hand out a probe permit.
        (
            St::Initializing
            | St::InitializingTwoFailures
            | St::Healthy
            | St::HealthyThin
            | St::HealthyTwoFailures
            | St::Degraded
            | St::DegradedLow,
            E::ProbeSuccess | E::ProbeFailure | E::ProbeOverload | E::ProbeLoading,
        ) => NoPermit,
        // Open and still backing off: no permit either.
        (
            St::Unhealthy | St::Offline,
            E::ProbeSuccess | E::ProbeFailure | E::ProbeOverload | E::ProbeLoading,
        ) => NoPermit,

        (St::Initializing, E::Success) => S(Healthy, Closed),
        (St::Initializing, E::Failure) => S(Initializing, Closed),
        (St::Initializing, E::Overload) => S(Initializing, Closed),
        (St::Initializing, E::Loading) => S(Initializing, Closed),

        (St::InitializingTwoFailures, E::Success) => S(Healthy, Closed),
        (St::InitializingTwoFailures, E::Failure) => S(Unhealthy, Grew),
        (St::InitializingTwoFailures, E::Overload) => S(Initializing, Closed),
        (St::InitializingTwoFailures, E::Loading) => S(Initializing, Closed),

        (St::Healthy, E::Success) => S(Healthy, Closed),
        (St::Healthy, E::Failure) => S(Healthy, Closed),
        (St::Healthy, E::Overload) => S(Healthy, Closed),
        (St::Healthy, E::Loading) => S(Initializing, Closed),

        (St::HealthyThin, E::Success) => S(Healthy, Closed),
        (St::HealthyThin, E::Failure) => S(Degraded, Closed),
        (St::HealthyThin, E::Overload) => S(Healthy, Closed),
        (St::HealthyThin, E::Loading) => S(Initializing, Closed),

        (St::HealthyTwoFailures, E::Success) => S(Healthy, Closed),
        (St::HealthyTwoFailures, E::Failure) => S(Unhealthy, Grew),
        (St::HealthyTwoFailures, E::Overload) => S(Healthy, Closed),
        (St::HealthyTwoFailures, E::Loading) => S(Initializing, Closed),

        (St::Degraded, E::Success) => S(Healthy, Closed),
        (St::Degraded, E::Failure) => S(Degraded, Closed),
        (St::Degraded, E::Overload) => S(Degraded, Closed),
        (St::Degraded, E::Loading) => S(Initializing, Closed),

        (St::DegradedLow, E::Success) => S(Degraded, Closed),
        (St::DegradedLow, E::Failure) => S(Unhealthy, Grew),
        (St::DegradedLow, E::Overload) => S(Degraded, Closed),
        (St::DegradedLow, E::Loading) => S(Initializing, Closed),

        // Open: passive outcomes are recorded but do not move the breaker,
        // except enough consecutive successes and loading.
        (St::Unhealthy | St::UnhealthyHalfOpen, E::Success) => S(Unhealthy, Same),
        (St::Unhealthy | St::UnhealthyHalfOpen, E::Failure) => S(Unhealthy, Same),
        (St::Unhealthy | St::UnhealthyHalfOpen, E::Overload) => S(Unhealthy, Pushed),
        (St::Unhealthy | St::UnhealthyHalfOpen, E::Loading) => S(Initializing, Closed),

        (St::UnhealthyHalfOpen, E::ProbeSuccess) => S(Degraded, Closed),
        (St::UnhealthyHalfOpen, E::ProbeFailure) => S(Offline, Grew),
        (St::UnhealthyHalfOpen, E::ProbeOverload) => S(Unhealthy, Pushed),
        (St::UnhealthyHalfOpen, E::ProbeLoading) => S(Initializing, Closed),

        (St::UnhealthyHalfOpenFourSuccesses, E::Success) => S(Healthy, Closed),
        (St::UnhealthyHalfOpenFourSuccesses, E::Failure) => S(Unhealthy, Same),
        (St::UnhealthyHalfOpenFourSuccesses, E::Overload) => S(Unhealthy, Pushed),
        (St::UnhealthyHalfOpenFourSuccesses, E::Loading) => S(Initializing, Closed),
        (St::UnhealthyHalfOpenFourSuccesses, E::ProbeSuccess) => S(Healthy, Closed),
        (St::UnhealthyHalfOpenFourSuccesses, E::ProbeFailure) => S(Offline, Grew),
        (St::UnhealthyHalfOpenFourSuccesses, E::ProbeOverload) => S(Unhealthy, Pushed),
        (St::UnhealthyHalfOpenFourSuccesses, E::ProbeLoading) => S(Initializing, Closed),

        (St::Offline | St::OfflineHalfOpen, E::Success) => S(Offline, Same),
        (St::Offline | St::OfflineHalfOpen, E::Failure) => S(Offline, Same),
        (St::Offline | St::OfflineHalfOpen, E::Overload) => S(Offline, Pushed),
        (St::Offline | St::OfflineHalfOpen, E::Loading) => S(Initializing, Closed),

        (St::OfflineHalfOpen, E::ProbeSuccess) => S(Degraded, Closed),
        (St::OfflineHalfOpen, E::ProbeFailure) => S(Offline, Grew),
        (St::OfflineHalfOpen, E::ProbeOverload) => S(Offline, Pushed),
        (St::OfflineHalfOpen, E::ProbeLoading) => S(Initializing, Closed),
    }
}

#[test]
fn every_state_event_pair() {
    let mut checked = 0;
    for start in Start::ALL {
        for event in Event::ALL {
            let clock = ManualClock::new();
            let mut t = start.build(&clock);
            assert_eq!(t.status(), start.status(), "setup of {start:?}");
            let before_retry = t.retry_at();
            let before_attempt = t.backoff_attempt();
            let before_delay = t.backoff_delay();
            let now = clock.now();

            let transition = if event.is_probe() {
                match t.try_acquire_probe(now) {
                    None => {
                        assert_eq!(
                            expected(start, event),
                            NoPermit,
                            "{start:?} + {event:?}: no permit"
                        );
                        assert_eq!(t.status(), start.status());
                        assert_eq!(t.retry_at(), before_retry);
                        checked += 1;
                        continue;
                    }
                    Some(permit) => {
                        // Exactly one probe: a concurrent caller is refused.
                        assert!(
                            t.try_acquire_probe(now).is_none(),
                            "{start:?}: second permit"
                        );
                        assert!(!t.is_eligible_for_retry(now));
                        t.complete_probe(permit, event.observation(), now)
                    }
                }
            } else {
                t.observe(event.observation(), now)
            };

            let Expect::Status(status, backoff) = expected(start, event) else {
                panic!("{start:?} + {event:?}: expected no permit, but got one");
            };
            assert_eq!(t.status(), status, "{start:?} + {event:?}: status");
            match transition {
                Some(tr) => {
                    assert_eq!(
                        (tr.from, tr.to),
                        (start.status(), status),
                        "{start:?} + {event:?}"
                    );
                    assert_eq!(tr.at, now);
                }
                None => assert_eq!(
                    start.status(),
                    status,
                    "{start:?} + {event:?}: silent change"
                ),
            }
            match backoff {
                Closed => {
                    assert_eq!(t.retry_at(), None, "{start:?} + {event:?}: closed");
                    assert_eq!(t.backoff_delay(), Duration::ZERO);
                    assert_eq!(t.probe_slot(now), ProbeSlot::Closed);
                }
                Same => {
                    assert_eq!(
                        t.retry_at(),
                        before_retry,
                        "{start:?} + {event:?}: same retry"
                    );
                    assert_eq!(t.backoff_attempt(), before_attempt);
                }
                Grew => {
                    assert_eq!(
                        t.backoff_attempt(),
                        before_attempt + 1,
                        "{start:?} + {event:?}: grew"
                    );
                    assert!(t.backoff_delay() > before_delay);
                    assert_eq!(t.retry_at(), Some(now + t.backoff_delay()));
                    assert!(matches!(t.probe_slot(now), ProbeSlot::Waiting { .. }));
                }
                Pushed => {
                    assert_eq!(
                        t.backoff_attempt(),
                        before_attempt,
                        "{start:?} + {event:?}: pushed"
                    );
                    assert_eq!(t.retry_at(), Some(now + Duration::from_secs(5)));
                }
            }
            if matches!(event, Event::Overload | Event::ProbeOverload) {
                assert!(t.is_saturated(now), "{start:?} + {event:?}: saturated");
                assert!(!t.is_saturated(now + Duration::from_secs(5)));
                assert!(t.load_penalty(now) > 0.99);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, Start::ALL.len() * Event::ALL.len());
}

#[test]
fn backoff_grows_while_offline_and_resets_when_healthy() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    for _ in 0..3 {
        t.record_failure(clock.now());
    }
    let mut delays = vec![t.backoff_delay()];
    for _ in 0..7 {
        assert!(!t.is_eligible_for_retry(clock.now()));
        clock.advance(t.backoff_delay());
        assert!(t.is_eligible_for_retry(clock.now()));
        let permit = t.try_acquire_probe(clock.now()).unwrap();
        t.complete_probe(permit, Observation::Failure, clock.now());
        assert_eq!(t.status(), Offline);
        delays.push(t.backoff_delay());
    }
    // 1, 2, 4, 8, 16, 32, 60, 60 s, each ±20 %.
    let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0];
    for (delay, base) in delays.iter().zip(bases) {
        let s = delay.as_secs_f64();
        assert!(s >= base * 0.8 && s <= base * 1.2, "{s} vs {base}");
    }
    // Recovery: the probe closes to degraded, 5 consecutive successes heal.
    clock.advance(t.backoff_delay());
    let permit = t.try_acquire_probe(clock.now()).unwrap();
    t.complete_probe(permit, success(), clock.now());
    assert_eq!(t.status(), Degraded);
    assert_eq!(t.backoff_attempt(), 8, "backoff kept until healthy");
    for _ in 0..3 {
        t.observe(success(), clock.now());
        assert_eq!(t.status(), Degraded);
    }
    t.observe(success(), clock.now());
    assert_eq!(t.status(), Healthy);
    assert_eq!(t.backoff_attempt(), 0);
}

#[test]
fn flapping_after_recovery_keeps_backing_off() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    for _ in 0..3 {
        t.record_failure(clock.now());
    }
    clock.advance(t.backoff_delay());
    let permit = t.try_acquire_probe(clock.now()).unwrap();
    t.complete_probe(permit, success(), clock.now());
    assert_eq!(t.status(), Degraded);
    // One more failure: rate 1/5 < 0.5, open again with the next delay.
    t.record_failure(clock.now());
    assert_eq!(t.status(), Unhealthy);
    assert_eq!(t.backoff_attempt(), 2);
    let d = t.backoff_delay().as_secs_f64();
    assert!((1.6..=2.4).contains(&d), "{d}");
}

#[test]
fn lost_probe_lease_expires() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    for _ in 0..3 {
        t.record_failure(clock.now());
    }
    clock.advance(t.backoff_delay());
    let lost = t.try_acquire_probe(clock.now()).unwrap();
    assert!(matches!(
        t.probe_slot(clock.now()),
        ProbeSlot::InFlight { .. }
    ));
    clock.advance(Duration::from_secs(29));
    assert!(t.try_acquire_probe(clock.now()).is_none());
    clock.advance(Duration::from_secs(1));
    let fresh = t.try_acquire_probe(clock.now()).unwrap();
    // The stale permit's outcome counts as a passive observation only.
    t.complete_probe(lost, Observation::Failure, clock.now());
    assert_eq!(t.status(), Unhealthy);
    assert!(matches!(
        t.probe_slot(clock.now()),
        ProbeSlot::InFlight { .. }
    ));
    t.complete_probe(fresh, Observation::Failure, clock.now());
    assert_eq!(t.status(), Offline);
}

#[test]
fn released_probe_frees_the_slot() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    for _ in 0..3 {
        t.record_failure(clock.now());
    }
    clock.advance(t.backoff_delay());
    let permit = t.try_acquire_probe(clock.now()).unwrap();
    t.release_probe(permit);
    assert_eq!(t.probe_slot(clock.now()), ProbeSlot::Free);
    let permit = t.try_acquire_probe(clock.now()).unwrap();
    t.complete_probe(permit, success(), clock.now());
    assert_eq!(t.status(), Degraded);
}

#[test]
fn overload_counts_only_when_it_persists() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    t.record_success(None, clock.now());
    // Ten 429s over 9 s: saturated, penalized, still healthy.
    for _ in 0..10 {
        t.record_overload(Some(Duration::from_secs(1)), clock.now());
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(t.status(), Healthy);
    assert_eq!(t.health(clock.now()).consecutive_failures, 0);
    assert!(t.load_penalty(clock.now()) > 5.0);
    // A success ends the streak.
    t.record_success(None, clock.now());
    let start = clock.now();
    for _ in 0..3 {
        t.record_overload(None, clock.now());
        clock.advance(Duration::from_secs(10));
    }
    assert_eq!(
        t.status(),
        Healthy,
        "30 s is the threshold, 3rd answer came at 20 s"
    );
    // At 30 s and after: each overload answer is a failure.
    t.record_overload(None, clock.now());
    assert_eq!(clock.now() - start, Duration::from_secs(30));
    assert_eq!(t.health(clock.now()).consecutive_failures, 1);
    t.record_overload(None, clock.now());
    t.record_overload(None, clock.now());
    assert_eq!(t.status(), Unhealthy);
}

#[test]
fn overload_streak_forgotten_after_a_quiet_window() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    t.record_success(None, clock.now());
    for _ in 0..5 {
        t.record_overload(None, clock.now());
        clock.advance(Duration::from_secs(31));
    }
    assert_eq!(t.health(clock.now()).consecutive_failures, 0);
    assert_eq!(t.status(), Healthy);
}

#[test]
fn retry_after_is_capped_and_defaulted() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    let now = clock.now();
    t.record_overload(None, now);
    assert_eq!(t.saturated_until(), Some(now + Duration::from_secs(1)));
    t.record_overload(Some(Duration::from_secs(86_400)), now);
    assert_eq!(t.saturated_until(), Some(now + Duration::from_secs(300)));
    // A shorter Retry-After never shortens an existing saturation.
    t.record_overload(Some(Duration::from_secs(2)), now);
    assert_eq!(t.saturated_until(), Some(now + Duration::from_secs(300)));
}

#[test]
fn load_penalty_decays_by_half_life() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    assert_eq!(t.load_penalty(clock.now()), 0.0);
    t.record_overload(None, clock.now());
    t.record_overload(None, clock.now());
    assert!((t.load_penalty(clock.now()) - 2.0).abs() < 1e-9);
    clock.advance(Duration::from_secs(10));
    assert!((t.load_penalty(clock.now()) - 1.0).abs() < 1e-9);
}

#[test]
fn loading_resets_window_and_backoff() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    for _ in 0..3 {
        t.record_failure(clock.now());
    }
    clock.advance(t.backoff_delay());
    let permit = t.try_acquire_probe(clock.now()).unwrap();
    t.complete_probe(permit, Observation::Failure, clock.now());
    assert_eq!(t.backoff_attempt(), 2);
    t.observe(Observation::Loading, clock.now());
    assert_eq!(t.status(), Initializing);
    assert_eq!(t.backoff_attempt(), 0);
    assert_eq!(t.health(clock.now()).total_samples, 0);
    t.record_success(None, clock.now());
    assert_eq!(t.status(), Healthy);
}

#[test]
fn samples_age_out_of_the_window() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    t.record_success(None, clock.now());
    t.record_failure(clock.now());
    t.record_failure(clock.now());
    assert_eq!(t.status(), Unhealthy, "rate 1/3 < 0.5");
    clock.advance(Duration::from_secs(31));
    assert_eq!(t.health(clock.now()).total_samples, 0);
}

#[test]
fn reset_goes_back_to_initializing() {
    let clock = ManualClock::new();
    let mut t = tracker(&clock);
    for _ in 0..3 {
        t.record_failure(clock.now());
    }
    let tr = t.reset(clock.now()).unwrap();
    assert_eq!((tr.from, tr.to), (Unhealthy, Initializing));
    assert_eq!(t.retry_at(), None);
    assert!(t.is_eligible_for_retry(clock.now()));
}
