//! The phase rules: the one word (with its reason and message) `kubectl get rbeeworkers`
//! shows. The first rule that applies wins: what the operator is doing to the worker, then a
//! pending restart, then the pod, then what the worker reports. Pure.

use rbee_api::WorkerPhase as P;
use rbee_api::conditions::reasons;

use crate::decide::{Decision, Progress, failure_note};
use crate::observe::{Beat, ModelState, Observation, PodView, Scheduling};
use crate::restart::Failure;

/// The phase, its CamelCase reason and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The phase.
    pub phase: P,
    /// Why.
    pub reason: &'static str,
    /// Detail.
    pub message: String,
}

fn verdict(phase: P, reason: &'static str, message: impl Into<String>) -> Option<Verdict> {
    Some(Verdict { phase, reason, message: message.into() })
}

/// The phase of the worker as `o` shows it after `d`.
pub fn of(o: &Observation, d: &Decision) -> Verdict {
    operator_action(o, d)
        .or_else(|| pending_restart(o, d))
        .or_else(|| o.pod.as_ref().map_or_else(no_pod, |v| pod_state(d, v)))
        .unwrap_or_else(|| worker_state(o))
}

fn last_restart_reason(d: &Decision) -> String {
    d.restarts.last_restart_reason.clone().unwrap_or_default()
}

/// Given up, restarting or draining: what the operator does overrides what it sees.
fn operator_action(o: &Observation, d: &Decision) -> Option<Verdict> {
    let max = o.worker.spec.restart_policy.max_restarts;
    if d.limit_exceeded {
        let (count, last) = (d.restarts.count, last_restart_reason(d));
        let message = format!("restarted {count} times (maxRestarts {max}); last reason {last}");
        return verdict(P::Degraded, reasons::RESTART_LIMIT_EXCEEDED, message);
    }
    if d.restarting {
        let message = format!(
            "restart {} after {}: replacing the pod",
            d.restarts.count,
            last_restart_reason(d)
        );
        return verdict(P::BackingOff, reasons::BACKING_OFF, message);
    }
    match (&d.progress, &o.pod) {
        (Progress::Draining { why, .. }, Some(v)) => {
            verdict(P::Draining, reasons::DRAINING, format!("draining pod {}: {why}", v.name))
        }
        _ => None,
    }
}

/// A failure whose restart waits for its backoff, with the time it is due.
fn pending_restart(o: &Observation, d: &Decision) -> Option<Verdict> {
    let due = d.pending_restart()?;
    let max = o.worker.spec.restart_policy.max_restarts;
    let pending = format!("; restart {} of {max} at {due}", d.restarts.count + 1);
    if let Beat::Stale { since, .. } = o.beat {
        return verdict(P::Stale, reasons::HEARTBEAT_STALE, stale_message(o, since) + &pending);
    }
    let failure = d.failure.as_ref()?;
    verdict(P::BackingOff, failure.reason(), failure_note(failure, &o.beat) + &pending)
}

fn stale_message(o: &Observation, since: jiff::Timestamp) -> String {
    let threshold = o.worker.spec.heartbeat.effective_stale_after_seconds();
    format!("no heartbeat since {since} (staleAfterSeconds {threshold})")
}

fn no_pod() -> Option<Verdict> {
    verdict(P::Pending, reasons::POD_PENDING, "no worker pod yet")
}

/// A pod that is going, ended, unscheduled or not running yet.
fn pod_state(d: &Decision, v: &PodView) -> Option<Verdict> {
    if v.terminating {
        return verdict(
            P::Pending,
            reasons::POD_REPLACED,
            format!("pod {} is terminating", v.name),
        );
    }
    if let Some(f) =
        d.failure.as_ref().filter(|f| matches!(f, Failure::PodFailed | Failure::PodSucceeded))
    {
        let detail = v.last_failure.as_ref().map(|l| {
            let exit = l.exit_code.unwrap_or_default();
            format!(" (exit code {exit}, {})", l.reason.clone().unwrap_or_default())
        });
        let message = format!("pod {} ended{}", v.name, detail.unwrap_or_default());
        return verdict(P::Failed, f.reason(), message);
    }
    match &v.scheduling {
        Scheduling::Unschedulable { reason, message } => {
            verdict(P::Pending, reason, message.clone())
        }
        Scheduling::Pending => {
            verdict(P::Pending, reasons::POD_CREATED, format!("pod {} waits for a node", v.name))
        }
        Scheduling::Bound(_) if v.running_since.is_none() => {
            let why = v.waiting_reason.as_deref().unwrap_or("starting");
            verdict(P::Pending, reasons::CONTAINER_NOT_RUNNING, format!("container {why}"))
        }
        Scheduling::Bound(_) => None,
    }
}

/// A running pod: its heartbeat, its model and what the worker says of itself.
fn worker_state(o: &Observation) -> Verdict {
    let found = match (&o.beat, &o.model) {
        (Beat::Stale { since, .. }, _) => {
            verdict(P::Stale, reasons::HEARTBEAT_STALE, stale_message(o, *since))
        }
        (_, Some(ModelState::Failed(why))) => {
            verdict(P::Failed, reasons::MODEL_LOAD_FAILED, why.clone())
        }
        (_, Some(ModelState::Loading(p))) => {
            verdict(P::Loading, reasons::LOADING, format!("loading the model: {p}%"))
        }
        _ => None,
    };
    found
        .or_else(|| {
            o.backend_mismatch()
                .and_then(|why| verdict(P::Degraded, reasons::BACKEND_MISMATCH, why))
        })
        .or_else(|| {
            o.reported_degraded()
                .and_then(|why| verdict(P::Degraded, reasons::WORKER_DEGRADED, why))
        })
        .or_else(|| match o.beat {
            Beat::Awaiting => verdict(
                P::Loading,
                reasons::AWAITING_FIRST_HEARTBEAT,
                "model loaded; waiting for the first heartbeat",
            ),
            _ => None,
        })
        .unwrap_or(Verdict {
            phase: P::Ready,
            reason: reasons::WORKER_READY,
            message: "serving".into(),
        })
}
