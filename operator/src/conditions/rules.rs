//! Which condition each type is in, from one observation and its decision.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use rbee_api::WorkerPhase;
use rbee_api::conditions::{reasons, types};

use super::{Cond, Status, find, pressure};
use crate::decide::{Decision, Progress};
use crate::observe::{Beat, ModelState, Observation, Previous, Scheduling};
use crate::phase::Verdict;

/// What the last written conditions said, as far as decisions depend on it.
pub fn previous(conditions: &[Condition]) -> Previous {
    let holds = |type_: &str| find(conditions, type_).filter(|c| c.status == "True");
    let beat = find(conditions, types::HEARTBEATING).and_then(|c| {
        match (c.status.as_str(), c.reason.as_str()) {
            (_, reasons::HEARTBEAT_STALE) => Some(Beat::Stale {
                silent_for: std::time::Duration::ZERO,
                since: jiff::Timestamp::default(),
            }),
            ("True", _) => Some(Beat::Fresh),
            _ => None,
        }
    });
    Previous {
        beat,
        restart_limit_reached: holds(types::DEGRADED)
            .is_some_and(|c| c.reason == reasons::RESTART_LIMIT_EXCEEDED),
        ready_since: holds(types::READY).map(|c| c.last_transition_time.0),
    }
}

/// Every condition of the worker as `o` shows it after `d`, its phase being `phase`.
pub fn desired(o: &Observation, d: &Decision, phase: &Verdict) -> Vec<Cond> {
    let (vram_pressure, disk_pressure) = pressure::conditions(o.worker, o.record);
    vec![
        ready(phase),
        scheduled(o),
        model_loaded(o),
        heartbeating(&o.beat),
        vram_pressure,
        disk_pressure,
        degraded(o, d, phase),
        progressing(&d.progress),
    ]
}

fn ready(phase: &Verdict) -> Cond {
    if phase.phase == WorkerPhase::Ready {
        Cond::new(types::READY, Status::True, reasons::WORKER_READY, "serving requests")
    } else {
        Cond::new(types::READY, Status::False, phase.reason, phase.message.clone())
    }
}

fn scheduled(o: &Observation) -> Cond {
    let t = types::SCHEDULED;
    match o.pod.as_ref().map(|v| &v.scheduling) {
        Some(Scheduling::Bound(node)) => {
            Cond::new(t, Status::True, reasons::SCHEDULED, format!("bound to node {node}"))
        }
        Some(Scheduling::Unschedulable { reason, message }) => {
            Cond::new(t, Status::False, reason, message.clone())
        }
        Some(Scheduling::Pending) => {
            Cond::new(t, Status::Unknown, reasons::POD_CREATED, "waiting for the scheduler")
        }
        None => Cond::new(t, Status::False, reasons::POD_PENDING, "no pod"),
    }
}

fn model_loaded(o: &Observation) -> Cond {
    let t = types::MODEL_LOADED;
    match &o.model {
        Some(ModelState::Loaded) => {
            Cond::new(t, Status::True, reasons::MODEL_LOADED, "the model is loaded")
        }
        Some(ModelState::Loading(p)) => {
            Cond::new(t, Status::False, reasons::LOADING, format!("{p}% loaded"))
        }
        Some(ModelState::Failed(why)) => {
            Cond::new(t, Status::False, reasons::MODEL_LOAD_FAILED, why.clone())
        }
        None => Cond::new(t, Status::False, reasons::POD_PENDING, "no pod"),
    }
}

fn heartbeating(beat: &Beat) -> Cond {
    let t = types::HEARTBEATING;
    match beat {
        Beat::Fresh => {
            Cond::new(t, Status::True, reasons::HEARTBEAT_RECEIVED, "heartbeats arrive on time")
        }
        Beat::Stale { since, .. } => Cond::new(
            t,
            Status::False,
            reasons::HEARTBEAT_STALE,
            format!("no heartbeat since {since}"),
        ),
        Beat::Awaiting | Beat::NotExpected => Cond::new(
            t,
            Status::Unknown,
            reasons::AWAITING_FIRST_HEARTBEAT,
            "no heartbeat from this pod yet",
        ),
    }
}

fn degraded(o: &Observation, d: &Decision, phase: &Verdict) -> Cond {
    let t = types::DEGRADED;
    if d.limit_exceeded {
        return Cond::new(t, Status::True, reasons::RESTART_LIMIT_EXCEEDED, phase.message.clone());
    }
    if let Some(why) = o.backend_mismatch() {
        return Cond::new(t, Status::True, reasons::BACKEND_MISMATCH, why);
    }
    match o.reported_degraded() {
        Some(why) => Cond::new(t, Status::True, reasons::WORKER_DEGRADED, why),
        None => Cond::new(t, Status::False, reasons::AS_EXPECTED, ""),
    }
}

fn progressing(progress: &Progress) -> Cond {
    let t = types::PROGRESSING;
    match progress {
        Progress::UpToDate => {
            Cond::new(t, Status::False, reasons::POD_UP_TO_DATE, "the pod runs the current spec")
        }
        Progress::Starting(pod) => {
            Cond::new(t, Status::True, reasons::POD_CREATED, format!("starting pod {pod}"))
        }
        Progress::Terminating(pod) => Cond::new(
            t,
            Status::True,
            reasons::POD_REPLACED,
            format!("waiting for pod {pod} to terminate"),
        ),
        Progress::Restarting(pod) => Cond::new(
            t,
            Status::True,
            reasons::BACKING_OFF,
            format!("deleting pod {pod} to restart it"),
        ),
        Progress::Draining { pod, generation, why } => Cond::new(
            t,
            Status::True,
            reasons::DRAINING,
            format!("draining pod {pod} before applying generation {generation}: {why}"),
        ),
        Progress::Replacing { pod, generation } => Cond::new(
            t,
            Status::True,
            reasons::POD_REPLACED,
            format!("replacing pod {pod} to apply generation {generation}"),
        ),
        Progress::Halted => Cond::new(
            t,
            Status::False,
            reasons::RESTART_LIMIT_EXCEEDED,
            "no pod: the restart limit is reached",
        ),
    }
}
