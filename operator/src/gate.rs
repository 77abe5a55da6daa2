//! The `rbee.dev/heartbeat` readiness gate of worker pods: what a pod's condition says, what
//! it should say, and the patch that sets it. Pure.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rbee_api::WorkerPhase;
use rbee_api::conditions::reasons;
use rbee_api::names::READINESS_GATE;

/// The pod's `rbee.dev/heartbeat` condition, as last set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    /// True: Services may route to the pod.
    pub open: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Last change of `open`.
    pub since: Timestamp,
}

impl Gate {
    /// Whether the gate is closed for draining, and since when.
    pub fn draining_since(&self) -> Option<Timestamp> {
        (!self.open && self.reason == reasons::DRAINING).then_some(self.since)
    }
}

/// Reads the heartbeat readiness gate condition of a pod.
pub fn of_pod(pod: &Pod) -> Option<Gate> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == READINESS_GATE)?;
    Some(Gate {
        open: c.status == "True",
        reason: c.reason.clone().unwrap_or_default(),
        since: c.last_transition_time.as_ref().map(|t| t.0).unwrap_or_default(),
    })
}

/// Whether a pod's gate is closed for draining.
pub fn is_draining(pod: &Pod) -> bool {
    of_pod(pod).is_some_and(|g| g.draining_since().is_some())
}

/// The condition behind the gate that a pod should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateCondition {
    /// True: Services may route to the pod.
    pub open: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Why, for `kubectl describe pod`.
    pub message: String,
}

impl GateCondition {
    /// The gate follows the phase: open while the worker serves (a worker that reports itself
    /// degraded still answers), closed with the phase's reason otherwise.
    pub fn following(phase: WorkerPhase, reason: &'static str, message: &str) -> Self {
        let serving = phase == WorkerPhase::Ready
            || (phase == WorkerPhase::Degraded && reason == reasons::WORKER_DEGRADED);
        if serving {
            Self {
                open: true,
                reason: reasons::HEARTBEAT_RECEIVED,
                message: "heartbeats arrive on time and the model is loaded".into(),
            }
        } else {
            Self { open: false, reason, message: message.into() }
        }
    }

    /// Whether the pod's current condition already says this. Messages never count, and a
    /// closed gate keeps the reason it closed with (a missing one is closed already): the
    /// worker's status carries the current reason, so each phase of a pod that is out of
    /// service would cost a write and tell nobody anything.
    pub fn matches(&self, current: Option<&Gate>) -> bool {
        match current {
            Some(g) => g.open == self.open && (!self.open || g.reason == self.reason),
            None => !self.open,
        }
    }

    /// The strategic-merge patch of the pod's status that sets this condition, or `None` when
    /// the pod already carries it. The UID makes the patch fail on a newer pod of the same name.
    pub fn patch(&self, pod: &Pod, now: Timestamp) -> Option<serde_json::Value> {
        let current = of_pod(pod);
        if self.matches(current.as_ref()) {
            return None;
        }
        let since = match &current {
            Some(c) if c.open == self.open => c.since,
            _ => now,
        };
        Some(serde_json::json!({
            "metadata": {"uid": pod.metadata.uid},
            "status": {"conditions": [{
                "type": READINESS_GATE,
                "status": if self.open { "True" } else { "False" },
                "reason": self.reason,
                "message": self.message,
                "lastTransitionTime": Time(since),
            }]},
        }))
    }
}
