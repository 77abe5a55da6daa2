use proptest::prelude::*;

use super::*;

fn policy(
    mode: RestartMode,
    max_restarts: i32,
    initial: i32,
    max: i32,
    jitter: i32,
) -> RestartPolicySpec {
    RestartPolicySpec {
        mode,
        max_restarts,
        backoff: BackoffSpec { initial_seconds: initial, max_seconds: max, jitter_percent: jitter },
        ..RestartPolicySpec::default()
    }
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let b = BackoffSpec { initial_seconds: 10, max_seconds: 300, jitter_percent: 0 };
    let secs: Vec<u64> = (0..7).map(|n| backoff_delay(&b, n, 0.0).as_secs()).collect();
    assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
}

#[test]
fn never_mode_never_restarts() {
    let p = policy(RestartMode::Never, 5, 10, 300, 20);
    assert_eq!(decide(&p, 0, &Failure::HeartbeatStale, 0.5), RestartDecision::Leave);
}

#[test]
fn on_failure_leaves_a_clean_exit_alone() {
    let p = policy(RestartMode::OnFailure, 5, 10, 300, 0);
    assert_eq!(decide(&p, 0, &Failure::PodSucceeded, 0.0), RestartDecision::Leave);
    assert!(matches!(decide(&p, 0, &Failure::PodFailed, 0.0), RestartDecision::Restart { .. }));
}

#[test]
fn limit_is_reached_after_max_restarts() {
    let p = policy(RestartMode::Always, 2, 1, 1, 0);
    assert!(matches!(
        decide(&p, 1, &Failure::HeartbeatStale, 0.0),
        RestartDecision::Restart { .. }
    ));
    assert_eq!(decide(&p, 2, &Failure::HeartbeatStale, 0.0), RestartDecision::LimitExceeded);
}

/// A model of the reconciler's restart loop over random event sequences: the pod is deleted
/// before the next is created, so at most one pod ever lives; delays stay within bounds; the
/// count never goes down except by the stable reset.
#[derive(Debug, Clone)]
enum Event {
    Fail(u8),
    Tick(u16),
    StableFor(u16),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u8..5).prop_map(Event::Fail),
        (0u16..400).prop_map(Event::Tick),
        (0u16..900).prop_map(Event::StableFor),
    ]
}

proptest! {
    #[test]
    fn restart_loop_invariants(
        events in proptest::collection::vec(event(), 1..60),
        initial in 1i32..60,
        extra in 0i32..600,
        jitter in 0i32..=100,
        max_restarts in 0i32..8,
        units in proptest::collection::vec(0.0f64..1.0, 60),
    ) {
        let p = policy(RestartMode::Always, max_restarts, initial, initial + extra, jitter);
        let mut live_pods = 1u32;
        let mut count = 0i32;
        let mut next_create: Option<u64> = None;
        let mut now = 0u64;
        let mut degraded = false;
        for (i, ev) in events.iter().enumerate() {
            match ev {
                Event::Fail(kind) if live_pods == 1 && !degraded => {
                    let failure = [Failure::HeartbeatStale, Failure::ModelLoadFailed, Failure::ModelLoadTimeout, Failure::PodFailed, Failure::PodSucceeded][usize::from(*kind)].clone();
                    match decide(&p, count, &failure, units[i % units.len()]) {
                        RestartDecision::Restart { delay } => {
                            prop_assert!(delay.as_secs_f64() >= f64::from(initial) - 1e-9);
                            prop_assert!(delay.as_secs_f64() <= f64::from(initial + extra) + 1e-9);
                            live_pods -= 1; // deleted before anything else happens
                            let before = count;
                            count += 1;
                            prop_assert!(count > before);
                            next_create = Some(now + delay.as_secs());
                        }
                        RestartDecision::LimitExceeded => {
                            prop_assert!(count >= max_restarts);
                            degraded = true;
                        }
                        RestartDecision::Leave => {}
                    }
                }
                Event::Fail(_) => {}
                Event::Tick(secs) => {
                    now += u64::from(*secs);
                    if next_create.is_some_and(|t| now >= t) && live_pods == 0 {
                        live_pods += 1;
                        next_create = None;
                    }
                }
                Event::StableFor(secs) => {
                    if live_pods == 1 && i64::from(*secs) >= i64::from(p.reset_after_stable_seconds) {
                        count = 0;
                    }
                }
            }
            prop_assert!(live_pods <= 1, "two pods alive");
        }
    }
}
