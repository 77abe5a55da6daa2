//! The reconciler's decision: from what was observed, the pod action, the new status, the
//! Events to emit and when to look again. Pure: the clock and randomness are inputs.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rbee_api::conditions::{reasons, types};
use rbee_api::{RbeeWorker, RbeeWorkerStatus, RestartRecord, RestartStatus, WorkerPhase};

use crate::conditions::{self, Cond, Status};
use crate::heartbeat::record::HeartbeatRecord;
use crate::observe::{self, Beat, ModelState, PodView, Scheduling};
use crate::pod::pod_template_hash;
use crate::restart::{self, Failure, RestartDecision};
use crate::status_fields;

const RESTART_HISTORY: usize = 5;
/// A failed worker has nothing left to drain, and a hung one would ignore SIGTERM for the
/// pod's whole grace period before the replacement could start.
pub const RESTART_GRACE_SECONDS: i64 = 1;
const IDLE_REQUEUE: Duration = Duration::from_secs(300);

/// Everything a decision depends on.
pub struct Inputs<'a> {
    /// The worker as last seen.
    pub worker: &'a RbeeWorker,
    /// Its pod, if any.
    pub pod: Option<&'a Pod>,
    /// Template hash of the pod the spec asks for.
    pub desired_hash: &'a str,
    /// Last accepted heartbeat of the worker.
    pub heartbeat: Option<&'a HeartbeatRecord>,
    /// When this operator became leader.
    pub leader_since: Timestamp,
    /// Now.
    pub now: Timestamp,
    /// Uniform random number in `[0, 1)` for backoff jitter.
    pub jitter: f64,
    /// An EndpointSlice of the worker's Service still lists the pod as ready.
    pub endpoints_serving: bool,
}

/// What to do with the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodAction {
    /// Nothing.
    Keep,
    /// Create (server-side apply) the desired pod.
    Create,
    /// Delete the pod with this UID (precondition), to replace or restart it.
    Delete {
        /// UID precondition, so a newer pod of the same name is never hit.
        uid: String,
        /// Grace period; `None` keeps the pod's own, so a healthy worker drains.
        grace_seconds: Option<i64>,
    },
}

/// An Event to emit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable note.
    pub note: String,
}

impl Notice {
    fn normal(reason: &'static str, note: String) -> Self {
        Self { warning: false, reason, note }
    }
    fn warning(reason: &'static str, note: String) -> Self {
        Self { warning: true, reason, note }
    }
}

/// The decision.
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

/// The pod condition behind the `rbee.dev/heartbeat` readiness gate.
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
    /// Whether the pod's current condition already says this. Messages never count, and a
    /// closed gate keeps the reason it closed with (a missing one is closed already): the
    /// worker's status carries the current reason, so each phase of a pod that is out of
    /// service would cost a write and tell nobody anything.
    pub fn matches(&self, current: Option<&observe::Gate>) -> bool {
        match current {
            Some(g) => g.open == self.open && (!self.open || g.reason == self.reason),
            None => !self.open,
        }
    }
}

/// Where draining a serving pod before its replacement stands.
#[derive(Clone, Debug, PartialEq)]
enum Drain {
    /// Nothing (more) to wait for: delete it.
    Done,
    /// Wait: why, and until when at the latest.
    Waiting(String, Option<Timestamp>),
}

/// A serving pod first closes its readiness gate, then waits until no EndpointSlice lists it
/// and a heartbeat sent after the gate closed reports no request in flight, or the timeout.
fn drain(
    v: &PodView,
    beat: &Beat,
    record: Option<&HeartbeatRecord>,
    endpoints_serving: bool,
    timeout_seconds: i32,
    now: Timestamp,
) -> Drain {
    let serving = v.running_since.is_some() && !matches!(beat, Beat::Stale { .. });
    if timeout_seconds <= 0 || !serving {
        return Drain::Done;
    }
    let Some(since) = v.gate.as_ref().and_then(observe::Gate::draining_since) else {
        return if v.gate.as_ref().is_some_and(|g| g.open) {
            Drain::Waiting("closing its readiness gate".into(), None)
        } else {
            Drain::Done
        };
    };
    let deadline = since.checked_add(secs(timeout_seconds)).ok();
    if deadline.is_none_or(|d| d <= now) {
        return Drain::Done;
    }
    if v.ready || endpoints_serving {
        return Drain::Waiting("waiting until no endpoint routes to it".into(), deadline);
    }
    // Condition times have whole seconds: only a heartbeat a second later surely follows it.
    let after_close = since.checked_add(SignedDuration::from_secs(1)).unwrap_or(since);
    match record.filter(|r| r.received_at >= after_close).map(|r| r.beat.in_flight_requests) {
        Some(0) => Drain::Done,
        Some(n) => Drain::Waiting(format!("{n} requests in flight"), deadline),
        None => Drain::Waiting("waiting for a heartbeat with its in-flight count".into(), deadline),
    }
}

/// Progressing while the current pod has not started yet.
fn starting(pod: &str) -> Cond {
    Cond::new(types::PROGRESSING, Status::True, reasons::POD_CREATED, format!("starting pod {pod}"))
}

/// The readiness gate follows the phase: open while the worker serves (a worker that reports
/// itself degraded still answers), closed with the phase's reason otherwise.
fn gate_of(phase: WorkerPhase, reason: &'static str, message: &str) -> GateCondition {
    let serving = phase == WorkerPhase::Ready
        || (phase == WorkerPhase::Degraded && reason == reasons::WORKER_DEGRADED);
    if serving {
        GateCondition {
            open: true,
            reason: reasons::HEARTBEAT_RECEIVED,
            message: "heartbeats arrive on time and the model is loaded".into(),
        }
    } else {
        GateCondition { open: false, reason, message: message.into() }
    }
}

struct Deadlines {
    now: Timestamp,
    earliest: Option<Timestamp>,
}

impl Deadlines {
    fn at(&mut self, t: Option<Timestamp>) {
        if let Some(t) = t {
            self.earliest = Some(self.earliest.map_or(t, |e| e.min(t)));
        }
    }
    fn after(&self) -> Duration {
        self.earliest
            .map(|t| Duration::try_from(t.duration_since(self.now)).unwrap_or(Duration::ZERO))
            .map_or(IDLE_REQUEUE, |d| (d + Duration::from_millis(20)).min(IDLE_REQUEUE))
    }
}

fn secs(n: i32) -> SignedDuration {
    SignedDuration::from_secs(i64::from(n.max(0)))
}

/// Decides.
pub fn plan(i: &Inputs) -> Plan {
    let spec = &i.worker.spec;
    let generation = i.worker.metadata.generation;
    let old = i.worker.status.clone().unwrap_or_default();
    let now_time = Time(i.now);
    let mut deadlines = Deadlines { now: i.now, earliest: None };
    let mut notices = Vec::new();
    let mut restarted = None;

    let mut restarts = old.restarts.clone().unwrap_or_default();
    let spec_changed = old.observed_generation.is_some() && old.observed_generation != generation;
    let degraded_before = conditions::find(&old.conditions, types::DEGRADED)
        .is_some_and(|c| c.status == "True" && c.reason == reasons::RESTART_LIMIT_EXCEEDED);
    let mut limit_exceeded = degraded_before && !spec_changed;
    if spec_changed {
        // A changed spec is a new attempt: the restart budget starts over.
        restarts.count = 0;
        restarts.next_restart_time = None;
    }

    let view = i.pod.map(observe::pod_view);
    let record = i.heartbeat.filter(|r| view.as_ref().is_some_and(|v| v.uid == r.pod_uid));
    let condemned = view.as_ref().is_some_and(|v| {
        restarts.history.first().and_then(|h| h.pod_uid.as_deref()) == Some(v.uid.as_str())
    });
    let outdated = i.pod.is_some_and(|p| pod_template_hash(p) != Some(i.desired_hash));

    let was = conditions::find(&old.conditions, types::HEARTBEATING).and_then(|c| {
        match (c.status.as_str(), c.reason.as_str()) {
            (_, reasons::HEARTBEAT_STALE) => {
                Some(Beat::Stale { silent_for: Duration::ZERO, since: Timestamp::default() })
            }
            ("True", _) => Some(Beat::Fresh),
            _ => None,
        }
    });
    let stale_after = secs(spec.heartbeat.effective_stale_after_seconds());
    let (beat, beat_deadline) = match &view {
        Some(v) => {
            observe::beat(v.running_since, record, stale_after, i.leader_since, was.as_ref(), i.now)
        }
        None => (Beat::NotExpected, None),
    };
    deadlines.at(beat_deadline);
    let model = view.as_ref().map(|v| observe::model_state(v, record));

    let mut action = PodAction::Keep;
    let mut progressing = Cond::new(
        types::PROGRESSING,
        Status::False,
        reasons::POD_UP_TO_DATE,
        "the pod runs the current spec",
    );
    let mut failure: Option<Failure> = None;
    let mut draining = None;
    match &view {
        Some(v) if v.terminating => {
            progressing = Cond::new(
                types::PROGRESSING,
                Status::True,
                reasons::POD_REPLACED,
                format!("waiting for pod {} to terminate", v.name),
            );
        }
        Some(v) if condemned => {
            action = PodAction::Delete {
                uid: v.uid.clone(),
                grace_seconds: Some(RESTART_GRACE_SECONDS),
            };
            progressing = Cond::new(
                types::PROGRESSING,
                Status::True,
                reasons::BACKING_OFF,
                format!("deleting pod {} to restart it", v.name),
            );
        }
        Some(v) if outdated => match drain(
            v,
            &beat,
            record,
            i.endpoints_serving,
            spec.restart_policy.drain_timeout_seconds,
            i.now,
        ) {
            Drain::Waiting(why, until) => {
                deadlines.at(until);
                progressing = Cond::new(
                    types::PROGRESSING,
                    Status::True,
                    reasons::DRAINING,
                    format!(
                        "draining pod {} before applying generation {}: {why}",
                        v.name,
                        generation.unwrap_or_default()
                    ),
                );
                draining = Some(why);
            }
            Drain::Done => {
                action = PodAction::Delete { uid: v.uid.clone(), grace_seconds: None };
                progressing = Cond::new(
                    types::PROGRESSING,
                    Status::True,
                    reasons::POD_REPLACED,
                    format!(
                        "replacing pod {} to apply generation {}",
                        v.name,
                        generation.unwrap_or_default()
                    ),
                );
                notices.push(Notice::normal(
                    reasons::POD_REPLACED,
                    format!("Deleting pod {} to apply the changed spec", v.name),
                ));
            }
        },
        None => {
            if limit_exceeded {
                progressing = Cond::new(
                    types::PROGRESSING,
                    Status::False,
                    reasons::RESTART_LIMIT_EXCEEDED,
                    "no pod: the restart limit is reached",
                );
            } else {
                action = PodAction::Create;
                restarts.next_restart_time = None;
                progressing = starting(&crate::pod::pod_name(i.worker));
                notices.push(Notice::normal(
                    reasons::POD_CREATED,
                    format!("Creating pod {}", crate::pod::pod_name(i.worker)),
                ));
            }
        }
        Some(v) => {
            if v.running_since.is_none() && v.phase == "Pending" {
                progressing = starting(&v.name);
            }
            failure = detect_failure(
                v,
                &beat,
                model.as_ref(),
                spec.restart_policy.load_timeout_seconds,
                i.now,
                &mut deadlines,
            );
            match (&failure, limit_exceeded) {
                (Some(f), false) => {
                    match restart::decide(&spec.restart_policy, restarts.count, f, i.jitter) {
                        RestartDecision::Restart { delay } => {
                            // The due time is kept in status, so jitter is drawn once per failure.
                            let due = restarts
                                .next_restart_time
                                .as_ref()
                                .map(|t| t.0)
                                .unwrap_or_else(|| i.now.checked_add(delay).unwrap_or(i.now));
                            if due <= i.now {
                                record_restart(&mut restarts, f, &beat, v, &now_time);
                                action = PodAction::Delete {
                                    uid: v.uid.clone(),
                                    grace_seconds: Some(RESTART_GRACE_SECONDS),
                                };
                                restarted = Some(f.reason());
                                notices.push(Notice::warning(
                                    "Restarting",
                                    format!(
                                        "Restart {} of {}: {} (pod {})",
                                        restarts.count,
                                        spec.restart_policy.max_restarts,
                                        failure_note(f, &beat),
                                        v.name
                                    ),
                                ));
                            } else {
                                restarts.next_restart_time = Some(Time(due));
                                deadlines.at(Some(due));
                            }
                        }
                        RestartDecision::LimitExceeded => limit_exceeded = true,
                        RestartDecision::Leave => restarts.next_restart_time = None,
                    }
                }
                // Recovered before the backoff ran out: the pending restart is called off.
                (None, _) => restarts.next_restart_time = None,
                (Some(_), true) => {}
            }
        }
    }

    // A worker Ready for resetAfterStableSeconds gets its restart budget back.
    if let Some(ready) =
        conditions::find(&old.conditions, types::READY).filter(|c| c.status == "True")
    {
        let stable_at = ready
            .last_transition_time
            .0
            .checked_add(secs(spec.restart_policy.reset_after_stable_seconds))
            .ok();
        if restarts.count > 0 && !limit_exceeded && action == PodAction::Keep {
            match stable_at {
                Some(t) if t <= i.now => restarts.count = 0,
                t => deadlines.at(t),
            }
        }
    }

    // The status written with a new pod already describes it, so its first sighting costs
    // no second write.
    let created =
        (action == PodAction::Create).then(|| PodView::created(crate::pod::pod_name(i.worker)));
    let view = view.or(created);
    let model = view.as_ref().map(|v| observe::model_state(v, record));
    let restarting = restarted.is_some() || condemned;
    let pending_restart =
        restarts.next_restart_time.as_ref().map(|t| t.0).filter(|_| !limit_exceeded && !restarting);
    let facts = Facts {
        view: view.as_ref(),
        beat: &beat,
        model: model.as_ref(),
        record,
        failure: failure.as_ref(),
        limit_exceeded,
        restarting,
        pending_restart,
        restarts: &restarts,
        draining: draining.as_deref(),
    };
    let (phase, reason, message) = phase_of(i.worker, &facts);
    let gate = view
        .as_ref()
        .filter(|v| !v.terminating && matches!(action, PodAction::Keep))
        .map(|_| gate_of(phase, reason, &message));
    let desired_conditions = condition_set(i.worker, &facts, phase, reason, &message, progressing);
    let conditions = conditions::merge(&old.conditions, desired_conditions, generation, &now_time);
    transition_notices(&old.conditions, &conditions, &mut notices);
    if limit_exceeded && !degraded_before {
        notices.push(Notice::warning(
            reasons::RESTART_LIMIT_EXCEEDED,
            format!("{message}; the operator no longer restarts this worker"),
        ));
    }

    let status = RbeeWorkerStatus {
        observed_generation: generation,
        phase: Some(phase),
        reason: Some(reason.into()),
        message: Some(message),
        pod_name: view.as_ref().map(|v| v.name.clone()),
        node_name: view.as_ref().and_then(|v| match &v.scheduling {
            Scheduling::Bound(n) => Some(n.clone()),
            _ => None,
        }),
        endpoint: crate::service::endpoint(i.worker),
        restarts: (restarts != RestartStatus::default()).then_some(restarts),
        last_failure: view
            .as_ref()
            .and_then(|v| v.last_failure.clone())
            .or(old.last_failure.clone()),
        conditions,
        ..status_fields::from_heartbeat(i.worker, record, &old, &beat, i.now)
    };
    Plan { action, status, notices, restarted, requeue_after: deadlines.after(), gate }
}

fn record_restart(restarts: &mut RestartStatus, f: &Failure, beat: &Beat, v: &PodView, now: &Time) {
    restarts.count += 1;
    restarts.last_restart_time = Some(now.clone());
    restarts.last_restart_reason = Some(f.reason().into());
    restarts.next_restart_time = None;
    restarts.history.insert(
        0,
        RestartRecord {
            time: now.clone(),
            reason: f.reason().into(),
            message: Some(failure_note(f, beat)),
            pod_name: Some(v.name.clone()),
            pod_uid: Some(v.uid.clone()),
        },
    );
    restarts.history.truncate(RESTART_HISTORY);
}

fn failure_note(f: &Failure, beat: &Beat) -> String {
    match (f, beat) {
        (Failure::HeartbeatStale, Beat::Stale { silent_for, .. }) => {
            format!("no heartbeat for {:.1}s", silent_for.as_secs_f64())
        }
        (Failure::HeartbeatStale, _) => "heartbeat stale".into(),
        (Failure::ModelLoadFailed, _) => "the model failed to load".into(),
        (Failure::ModelLoadTimeout, _) => "the model did not load in time".into(),
        (Failure::PodFailed, _) => "the pod failed".into(),
        (Failure::PodSucceeded, _) => "the worker exited".into(),
    }
}

fn detect_failure(
    v: &PodView,
    beat: &Beat,
    model: Option<&ModelState>,
    load_timeout: i32,
    now: Timestamp,
    deadlines: &mut Deadlines,
) -> Option<Failure> {
    match v.phase.as_str() {
        "Failed" => return Some(Failure::PodFailed),
        "Succeeded" => return Some(Failure::PodSucceeded),
        _ => {}
    }
    if let Some(ModelState::Failed(_)) = model {
        return Some(Failure::ModelLoadFailed);
    }
    if matches!(beat, Beat::Stale { silent_for, .. } if !silent_for.is_zero()) {
        return Some(Failure::HeartbeatStale);
    }
    if let (Some(started), Some(ModelState::Loading(_))) = (v.running_since, model) {
        let deadline = started.checked_add(secs(load_timeout)).ok();
        if deadline.is_some_and(|d| d <= now) {
            return Some(Failure::ModelLoadTimeout);
        }
        deadlines.at(deadline);
    }
    None
}

struct Facts<'a> {
    view: Option<&'a PodView>,
    beat: &'a Beat,
    model: Option<&'a ModelState>,
    record: Option<&'a HeartbeatRecord>,
    failure: Option<&'a Failure>,
    limit_exceeded: bool,
    restarting: bool,
    pending_restart: Option<Timestamp>,
    restarts: &'a RestartStatus,
    draining: Option<&'a str>,
}

fn backend_mismatch(worker: &RbeeWorker, record: Option<&HeartbeatRecord>) -> Option<String> {
    record.filter(|r| r.beat.backend != worker.spec.backend).map(|r| {
        format!("asked for {} but the worker runs on {}", worker.spec.backend, r.beat.backend)
    })
}

fn phase_of(worker: &RbeeWorker, f: &Facts) -> (WorkerPhase, &'static str, String) {
    use WorkerPhase as P;
    let last_reason = f.restarts.last_restart_reason.clone().unwrap_or_default();
    if f.limit_exceeded {
        return (
            P::Degraded,
            reasons::RESTART_LIMIT_EXCEEDED,
            format!(
                "restarted {} times (maxRestarts {}); last reason {}",
                f.restarts.count, worker.spec.restart_policy.max_restarts, last_reason
            ),
        );
    }
    if f.restarting {
        return (
            P::BackingOff,
            reasons::BACKING_OFF,
            format!("restart {} after {last_reason}: replacing the pod", f.restarts.count),
        );
    }
    if let (Some(why), Some(v)) = (f.draining, f.view) {
        return (P::Draining, reasons::DRAINING, format!("draining pod {}: {why}", v.name));
    }
    let pending = f
        .pending_restart
        .map(|t| {
            format!(
                "; restart {} of {} at {t}",
                f.restarts.count + 1,
                worker.spec.restart_policy.max_restarts
            )
        })
        .unwrap_or_default();
    if let (Some(_), Beat::Stale { since, .. }) = (f.pending_restart, f.beat) {
        return (
            P::Stale,
            reasons::HEARTBEAT_STALE,
            format!(
                "no heartbeat since {since} (staleAfterSeconds {}){pending}",
                worker.spec.heartbeat.effective_stale_after_seconds()
            ),
        );
    }
    if let (Some(_), Some(fail)) = (f.pending_restart, f.failure) {
        return (P::BackingOff, fail.reason(), format!("{}{pending}", failure_note(fail, f.beat)));
    }
    let Some(v) = f.view else {
        return (P::Pending, reasons::POD_PENDING, "no worker pod yet".into());
    };
    if v.terminating {
        return (P::Pending, reasons::POD_REPLACED, format!("pod {} is terminating", v.name));
    }
    if let Some(fail) =
        f.failure.filter(|x| matches!(x, Failure::PodFailed | Failure::PodSucceeded))
    {
        let detail = v
            .last_failure
            .as_ref()
            .map(|l| {
                format!(
                    " (exit code {}, {})",
                    l.exit_code.unwrap_or_default(),
                    l.reason.clone().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        return (P::Failed, fail.reason(), format!("pod {} ended{detail}", v.name));
    }
    match &v.scheduling {
        Scheduling::Unschedulable { reason, message } => {
            return (P::Pending, reason, message.clone());
        }
        Scheduling::Pending => {
            return (P::Pending, reasons::POD_CREATED, format!("pod {} waits for a node", v.name));
        }
        Scheduling::Bound(_) => {}
    }
    if v.running_since.is_none() {
        let why = v.waiting_reason.clone().unwrap_or_else(|| "starting".into());
        return (P::Pending, reasons::CONTAINER_NOT_RUNNING, format!("container {why}"));
    }
    if let Beat::Stale { since, .. } = f.beat {
        return (
            P::Stale,
            reasons::HEARTBEAT_STALE,
            format!(
                "no heartbeat since {since} (staleAfterSeconds {})",
                worker.spec.heartbeat.effective_stale_after_seconds()
            ),
        );
    }
    match f.model {
        Some(ModelState::Failed(why)) => {
            return (P::Failed, reasons::MODEL_LOAD_FAILED, why.clone());
        }
        Some(ModelState::Loading(p)) => {
            return (P::Loading, reasons::LOADING, format!("loading the model: {p}%"));
        }
        _ => {}
    }
    if let Some(why) = backend_mismatch(worker, f.record) {
        return (P::Degraded, reasons::BACKEND_MISMATCH, why);
    }
    if let Some(why) = observe::reported_degraded(f.record) {
        return (P::Degraded, reasons::WORKER_DEGRADED, why);
    }
    if *f.beat == Beat::Awaiting {
        return (
            P::Loading,
            reasons::AWAITING_FIRST_HEARTBEAT,
            "model loaded; waiting for the first heartbeat".into(),
        );
    }
    (P::Ready, reasons::WORKER_READY, "serving".into())
}

fn condition_set(
    worker: &RbeeWorker,
    f: &Facts,
    phase: WorkerPhase,
    reason: &'static str,
    message: &str,
    progressing: Cond,
) -> Vec<Cond> {
    let ready = if phase == WorkerPhase::Ready {
        Cond::new(types::READY, Status::True, reasons::WORKER_READY, "serving requests")
    } else {
        Cond::new(types::READY, Status::False, reason, message)
    };
    let scheduled = match f.view.map(|v| &v.scheduling) {
        Some(Scheduling::Bound(node)) => Cond::new(
            types::SCHEDULED,
            Status::True,
            reasons::SCHEDULED,
            format!("bound to node {node}"),
        ),
        Some(Scheduling::Unschedulable { reason, message }) => {
            Cond::new(types::SCHEDULED, Status::False, reason, message.clone())
        }
        Some(Scheduling::Pending) => Cond::new(
            types::SCHEDULED,
            Status::Unknown,
            reasons::POD_CREATED,
            "waiting for the scheduler",
        ),
        None => Cond::new(types::SCHEDULED, Status::False, reasons::POD_PENDING, "no pod"),
    };
    let model_loaded = match f.model {
        Some(ModelState::Loaded) => Cond::new(
            types::MODEL_LOADED,
            Status::True,
            reasons::MODEL_LOADED,
            "the model is loaded",
        ),
        Some(ModelState::Loading(p)) => {
            Cond::new(types::MODEL_LOADED, Status::False, reasons::LOADING, format!("{p}% loaded"))
        }
        Some(ModelState::Failed(why)) => {
            Cond::new(types::MODEL_LOADED, Status::False, reasons::MODEL_LOAD_FAILED, why.clone())
        }
        None => Cond::new(types::MODEL_LOADED, Status::False, reasons::POD_PENDING, "no pod"),
    };
    let heartbeating = match f.beat {
        Beat::Fresh => Cond::new(
            types::HEARTBEATING,
            Status::True,
            reasons::HEARTBEAT_RECEIVED,
            "heartbeats arrive on time",
        ),
        Beat::Stale { since, .. } => Cond::new(
            types::HEARTBEATING,
            Status::False,
            reasons::HEARTBEAT_STALE,
            format!("no heartbeat since {since}"),
        ),
        Beat::Awaiting | Beat::NotExpected => Cond::new(
            types::HEARTBEATING,
            Status::Unknown,
            reasons::AWAITING_FIRST_HEARTBEAT,
            "no heartbeat from this pod yet",
        ),
    };
    let (vram_pressure, disk_pressure) = status_fields::pressure_conditions(worker, f.record);
    let degraded = if f.limit_exceeded {
        Cond::new(types::DEGRADED, Status::True, reasons::RESTART_LIMIT_EXCEEDED, message)
    } else if let Some(why) = backend_mismatch(worker, f.record) {
        Cond::new(types::DEGRADED, Status::True, reasons::BACKEND_MISMATCH, why)
    } else if let Some(why) = observe::reported_degraded(f.record) {
        Cond::new(types::DEGRADED, Status::True, reasons::WORKER_DEGRADED, why)
    } else {
        Cond::new(types::DEGRADED, Status::False, reasons::AS_EXPECTED, "")
    };
    vec![
        ready,
        scheduled,
        model_loaded,
        heartbeating,
        vram_pressure,
        disk_pressure,
        degraded,
        progressing,
    ]
}

/// Events for conditions that changed in a way an operator of the fleet wants to hear about.
fn transition_notices(
    old: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    new: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    out: &mut Vec<Notice>,
) {
    for c in new {
        let before = conditions::find(old, &c.type_);
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
            continue;
        }
        let note = c.message.clone();
        let notice = match (c.type_.as_str(), c.status.as_str()) {
            (types::SCHEDULED, "True") => Notice::normal(reasons::SCHEDULED, note),
            (types::SCHEDULED, "False") if c.reason != reasons::POD_PENDING => {
                Notice::warning(static_reason(&c.reason), note)
            }
            (types::READY, "True") => {
                Notice::normal(reasons::WORKER_READY, "Worker is serving requests".into())
            }
            (types::MODEL_LOADED, "True") => Notice::normal(reasons::MODEL_LOADED, note),
            (types::MODEL_LOADED, "False") if c.reason == reasons::MODEL_LOAD_FAILED => {
                Notice::warning(reasons::MODEL_LOAD_FAILED, note)
            }
            (types::HEARTBEATING, "False") => Notice::warning(reasons::HEARTBEAT_STALE, note),
            (types::PROGRESSING, "True") if c.reason == reasons::DRAINING => {
                Notice::normal(reasons::DRAINING, note)
            }
            (types::DEGRADED, "True") if c.reason != reasons::RESTART_LIMIT_EXCEEDED => {
                Notice::warning(static_reason(&c.reason), note)
            }
            (types::VRAM_PRESSURE, "True") => Notice::warning(reasons::VRAM_ABOVE_THRESHOLD, note),
            (types::DISK_PRESSURE, "True") => Notice::warning(reasons::DISK_BELOW_MINIMUM, note),
            _ => continue,
        };
        out.push(notice);
    }
}

fn static_reason(reason: &str) -> &'static str {
    [
        reasons::UNSCHEDULABLE,
        reasons::INSUFFICIENT_GPU,
        reasons::BACKEND_MISMATCH,
        reasons::WORKER_DEGRADED,
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or(reasons::WORKER_NOT_READY)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
