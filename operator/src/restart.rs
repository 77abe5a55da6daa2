//! The operator-level restart policy: whether and when a failed worker is replaced.
//! Pure: time and randomness come in as arguments.

use std::time::Duration;

use rbee_api::conditions::reasons;
use rbee_api::{BackoffSpec, RestartMode, RestartPolicySpec};

/// What went wrong with the current pod, as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No heartbeat within `staleAfterSeconds` (the process may be alive but hung).
    HeartbeatStale,
    /// The worker reports it cannot load its model.
    ModelLoadFailed,
    /// The model did not load within `loadTimeoutSeconds`.
    ModelLoadTimeout,
    /// The pod ended in phase Failed.
    PodFailed,
    /// The pod ended in phase Succeeded (the worker exited 0).
    PodSucceeded,
}

impl Failure {
    /// CamelCase reason for status, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::HeartbeatStale => reasons::HEARTBEAT_STALE,
            Self::ModelLoadFailed => reasons::MODEL_LOAD_FAILED,
            Self::ModelLoadTimeout => reasons::MODEL_LOAD_TIMEOUT,
            Self::PodFailed => reasons::POD_FAILED,
            Self::PodSucceeded => reasons::POD_SUCCEEDED,
        }
    }
}

/// The restart policy's answer to a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Delete the pod now; create the next one after `delay`.
    Restart {
        /// Backoff before the replacement pod is created.
        delay: Duration,
    },
    /// `maxRestarts` reached: leave the worker alone, Degraded.
    LimitExceeded,
    /// The policy does not restart for this failure.
    Leave,
}

/// Decides what to do about `failure` after `restarts_so_far` restarts.
/// `unit` is a uniform random number in `[0, 1)` that spreads the jitter.
pub fn decide(
    policy: &RestartPolicySpec,
    restarts_so_far: i32,
    failure: &Failure,
    unit: f64,
) -> RestartDecision {
    let restarts = match policy.mode {
        RestartMode::Never => false,
        RestartMode::OnFailure => *failure != Failure::PodSucceeded,
        RestartMode::Always => true,
    };
    if !restarts {
        return RestartDecision::Leave;
    }
    if restarts_so_far >= policy.max_restarts {
        return RestartDecision::LimitExceeded;
    }
    RestartDecision::Restart { delay: backoff_delay(&policy.backoff, restarts_so_far, unit) }
}

/// `initial × 2^n` capped at `max`, plus up to `jitterPercent` of it, never outside
/// `[initial, max]`.
pub fn backoff_delay(backoff: &BackoffSpec, restarts_so_far: i32, unit: f64) -> Duration {
    let initial = f64::from(backoff.initial_seconds.max(1));
    let max = f64::from(backoff.max_seconds.max(backoff.initial_seconds).max(1));
    let exponent = restarts_so_far.clamp(0, 30);
    let base = (initial * 2f64.powi(exponent)).min(max);
    let jitter =
        base * f64::from(backoff.jitter_percent.clamp(0, 100)) / 100.0 * unit.clamp(0.0, 1.0);
    Duration::from_secs_f64((base + jitter).clamp(initial, max))
}

#[cfg(test)]
#[path = "restart_tests.rs"]
mod tests;
