//! The reconciler's plan, in stages over one observation: `observe` (computed once), `decide`
//! (pod action, restart, drain, restart budget), `describe` (phase, conditions, gate, Events)
//! and the status. Pure: the clock and the jitter are inputs.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rbee_api::RbeeWorkerStatus;
use rbee_api::conditions::reasons;

use crate::decide::{self, Decision};
pub use crate::decide::{Notice, PodAction, RESTART_GRACE_SECONDS};
pub use crate::gate::GateCondition;
pub use crate::observe::Inputs;
use crate::observe::{self, Observation};
use crate::{conditions, phase, status};

/// The plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Pod action, applied before the status is written... except a restart, whose record
    /// is written first so a crash in between never loses it.
    pub action: PodAction,
    /// Status to write (if it differs from the current one in a visible way).
    pub status: RbeeWorkerStatus,
    /// Events to emit.
    pub notices: Vec<Notice>,
    /// Reason of a restart made by this plan, for metrics.
    pub restarted: Option<&'static str>,
    /// When to reconcile again at the latest.
    pub requeue_after: Duration,
    /// The heartbeat readiness gate the pod should carry; `None` when there is no pod to set
    /// it on.
    pub gate: Option<GateCondition>,
}

/// Observes, decides and describes.
pub fn plan(i: &Inputs) -> Plan {
    let old_conditions = i.worker.status.as_ref().map(|s| s.conditions.as_slice());
    let seen = observe::observe(i, conditions::previous(old_conditions.unwrap_or_default()));
    let decision = decide::decide(&seen, i.jitter);
    describe(&seen, decision)
}

/// Phase, conditions, gate, Events and status of the worker as the decision leaves it.
fn describe(seen: &Observation, d: Decision) -> Plan {
    // The status written with a new pod already describes it.
    let shown = match d.action {
        PodAction::Create => seen.with_created_pod(crate::pod::pod_name(seen.worker)),
        _ => seen.clone(),
    };
    let verdict = phase::of(&shown, &d);
    let gate = shown
        .pod
        .as_ref()
        .filter(|v| !v.terminating && d.action == PodAction::Keep)
        .map(|_| GateCondition::following(verdict.phase, verdict.reason, &verdict.message));
    let desired = conditions::desired(&shown, &d, &verdict);
    let generation = seen.worker.metadata.generation;
    let merged = conditions::merge(&seen.old.conditions, desired, generation, &Time(seen.now));
    let mut notices = d.notices.clone();
    notices.extend(conditions::transition_notices(&seen.old.conditions, &merged));
    if d.limit_exceeded && !seen.previous.restart_limit_reached {
        let note = format!("{}; the operator no longer restarts this worker", verdict.message);
        notices.push(Notice::warning(reasons::RESTART_LIMIT_EXCEEDED, note));
    }
    Plan {
        action: d.action.clone(),
        restarted: d.restarted.as_ref().map(|f| f.reason()),
        requeue_after: d.deadlines.after(),
        status: status::build(&shown, &d, verdict, merged),
        notices,
        gate,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
