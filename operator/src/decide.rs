//! What to do about one observation: the pod action, restarts and their backoff, draining a
//! serving pod before its replacement, and the restart budget. Pure: the clock is in the
//! observation and the jitter comes in.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rbee_api::conditions::reasons;
use rbee_api::{RestartRecord, RestartStatus};

use crate::gate::Gate;
use crate::observe::{Beat, ModelState, Observation, PodView};
use crate::pod::pod_name;
use crate::restart::{self, Failure, RestartDecision};

/// A failed worker has nothing left to drain, and a hung one would ignore SIGTERM for the
/// pod's whole grace period before the replacement could start.
pub const RESTART_GRACE_SECONDS: i64 = 1;
const RESTART_HISTORY: usize = 5;
const IDLE_REQUEUE: Duration = Duration::from_secs(300);

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
    /// A Normal Event.
    pub fn normal(reason: &'static str, note: String) -> Self {
        Self { warning: false, reason, note }
    }

    /// A Warning Event.
    pub fn warning(reason: &'static str, note: String) -> Self {
        Self { warning: true, reason, note }
    }
}

/// How far the pod is from running the current spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// It runs the current spec.
    UpToDate,
    /// The current pod (being created, or pending) has not started yet.
    Starting(String),
    /// The pod is being deleted.
    Terminating(String),
    /// The pod is deleted to restart the worker.
    Restarting(String),
    /// A serving pod waits, out of service, before a spec change replaces it.
    Draining {
        /// The pod.
        pod: String,
        /// The generation it will be replaced for.
        generation: i64,
        /// What it waits for.
        why: String,
    },
    /// The pod is deleted to apply a spec change.
    Replacing {
        /// The pod.
        pod: String,
        /// The generation it is replaced for.
        generation: i64,
    },
    /// No pod, and the restart limit is reached.
    Halted,
}

/// The earliest instant something must be looked at again.
#[derive(Clone, Debug)]
pub struct Deadlines {
    now: Timestamp,
    earliest: Option<Timestamp>,
}

impl Deadlines {
    /// Also look again at `t`.
    pub fn at(&mut self, t: Option<Timestamp>) {
        if let Some(t) = t {
            self.earliest = Some(self.earliest.map_or(t, |e| e.min(t)));
        }
    }

    /// How long until the earliest deadline (a little after it), at most [`IDLE_REQUEUE`].
    pub fn after(&self) -> Duration {
        self.earliest
            .map(|t| Duration::try_from(t.duration_since(self.now)).unwrap_or(Duration::ZERO))
            .map_or(IDLE_REQUEUE, |d| (d + Duration::from_millis(20)).min(IDLE_REQUEUE))
    }
}

/// The decision.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The pod action.
    pub action: PodAction,
    /// Where the pod stands against the spec.
    pub progress: Progress,
    /// The restart bookkeeping to write.
    pub restarts: RestartStatus,
    /// `maxRestarts` is reached: the operator leaves the worker alone.
    pub limit_exceeded: bool,
    /// What is wrong with the current pod.
    pub failure: Option<Failure>,
    /// The restart this decision makes.
    pub restarted: Option<Failure>,
    /// A restart is under way: made now, or made before and its pod not gone yet.
    pub restarting: bool,
    /// Events to emit.
    pub notices: Vec<Notice>,
    /// When to look again.
    pub deadlines: Deadlines,
}

impl Decision {
    /// When the next restart is due, if one waits for its backoff.
    pub fn pending_restart(&self) -> Option<Timestamp> {
        let due = self.restarts.next_restart_time.as_ref().map(|t| t.0);
        due.filter(|_| !self.limit_exceeded && !self.restarting)
    }
}

/// Decides what to do about the observed worker; `jitter` is uniform in `[0, 1)`.
pub fn decide(o: &Observation, jitter: f64) -> Decision {
    let mut d = start(o);
    match &o.pod {
        Some(v) if v.terminating => d.progress = Progress::Terminating(v.name.clone()),
        Some(v) if o.condemned => {
            d.action = delete(v, Some(RESTART_GRACE_SECONDS));
            d.progress = Progress::Restarting(v.name.clone());
        }
        Some(v) if o.outdated => replace(o, &mut d, v),
        Some(v) => keep(o, &mut d, v, jitter),
        None => create(o, &mut d),
    }
    reset_after_stable(o, &mut d);
    d.restarting = d.restarted.is_some() || o.condemned;
    d
}

/// A changed spec is a new attempt: the restart budget starts over.
fn start(o: &Observation) -> Decision {
    let mut restarts = o.old.restarts.clone().unwrap_or_default();
    if o.spec_changed {
        restarts.count = 0;
        restarts.next_restart_time = None;
    }
    let mut deadlines = Deadlines { now: o.now, earliest: None };
    deadlines.at(o.beat_deadline);
    Decision {
        action: PodAction::Keep,
        progress: Progress::UpToDate,
        restarts,
        limit_exceeded: o.previous.restart_limit_reached && !o.spec_changed,
        failure: None,
        restarted: None,
        restarting: false,
        notices: Vec::new(),
        deadlines,
    }
}

fn delete(v: &PodView, grace_seconds: Option<i64>) -> PodAction {
    PodAction::Delete { uid: v.uid.clone(), grace_seconds }
}

fn create(o: &Observation, d: &mut Decision) {
    if d.limit_exceeded {
        d.progress = Progress::Halted;
        return;
    }
    let name = pod_name(o.worker);
    d.action = PodAction::Create;
    d.restarts.next_restart_time = None;
    d.notices.push(Notice::normal(reasons::POD_CREATED, format!("Creating pod {name}")));
    d.progress = Progress::Starting(name);
}

/// A pod built from an older spec is replaced, a serving one after draining.
fn replace(o: &Observation, d: &mut Decision, v: &PodView) {
    let generation = o.worker.metadata.generation.unwrap_or_default();
    match drain(o, v) {
        Drain::Waiting(why, until) => {
            d.deadlines.at(until);
            d.progress = Progress::Draining { pod: v.name.clone(), generation, why };
        }
        Drain::Done => {
            d.action = delete(v, None);
            d.progress = Progress::Replacing { pod: v.name.clone(), generation };
            d.notices.push(Notice::normal(
                reasons::POD_REPLACED,
                format!("Deleting pod {} to apply the changed spec", v.name),
            ));
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
fn drain(o: &Observation, v: &PodView) -> Drain {
    let timeout_seconds = o.worker.spec.restart_policy.drain_timeout_seconds;
    let serving = v.running_since.is_some() && !matches!(o.beat, Beat::Stale { .. });
    if timeout_seconds <= 0 || !serving {
        return Drain::Done;
    }
    let Some(since) = v.gate.as_ref().and_then(Gate::draining_since) else {
        return if v.gate.as_ref().is_some_and(|g| g.open) {
            Drain::Waiting("closing its readiness gate".into(), None)
        } else {
            Drain::Done
        };
    };
    let deadline = since.checked_add(secs(timeout_seconds)).ok();
    if deadline.is_none_or(|d| d <= o.now) {
        return Drain::Done;
    }
    if v.ready || o.endpoints_serving {
        return Drain::Waiting("waiting until no endpoint routes to it".into(), deadline);
    }
    // Condition times have whole seconds: only a heartbeat a second later surely follows it.
    let after_close = since.checked_add(SignedDuration::from_secs(1)).unwrap_or(since);
    match o.record.filter(|r| r.received_at >= after_close).map(|r| r.beat.in_flight_requests) {
        Some(0) => Drain::Done,
        Some(n) => Drain::Waiting(format!("{n} requests in flight"), deadline),
        None => Drain::Waiting("waiting for a heartbeat with its in-flight count".into(), deadline),
    }
}

/// A pod of the current spec: restarted by policy when it failed, after its backoff.
fn keep(o: &Observation, d: &mut Decision, v: &PodView, jitter: f64) {
    if v.running_since.is_none() && v.phase == "Pending" {
        d.progress = Progress::Starting(v.name.clone());
    }
    d.failure = detect_failure(o, v, &mut d.deadlines);
    match d.failure.clone() {
        // Recovered before the backoff ran out: the pending restart is called off.
        None => d.restarts.next_restart_time = None,
        Some(_) if d.limit_exceeded => {}
        Some(f) => {
            match restart::decide(&o.worker.spec.restart_policy, d.restarts.count, &f, jitter) {
                RestartDecision::Restart { delay } => restart_when_due(o, d, v, f, delay),
                RestartDecision::LimitExceeded => d.limit_exceeded = true,
                RestartDecision::Leave => d.restarts.next_restart_time = None,
            }
        }
    }
}

fn detect_failure(o: &Observation, v: &PodView, deadlines: &mut Deadlines) -> Option<Failure> {
    match v.phase.as_str() {
        "Failed" => return Some(Failure::PodFailed),
        "Succeeded" => return Some(Failure::PodSucceeded),
        _ => {}
    }
    if let Some(ModelState::Failed(_)) = o.model {
        return Some(Failure::ModelLoadFailed);
    }
    if matches!(o.beat, Beat::Stale { silent_for, .. } if !silent_for.is_zero()) {
        return Some(Failure::HeartbeatStale);
    }
    if let (Some(started), Some(ModelState::Loading(_))) = (v.running_since, &o.model) {
        let timeout = o.worker.spec.restart_policy.load_timeout_seconds;
        let deadline = started.checked_add(secs(timeout)).ok();
        if deadline.is_some_and(|d| d <= o.now) {
            return Some(Failure::ModelLoadTimeout);
        }
        deadlines.at(deadline);
    }
    None
}

/// The due time is kept in status, so jitter is drawn once per failure. The restart is
/// recorded (with the condemned pod's UID) in the same status that goes out before the delete.
fn restart_when_due(o: &Observation, d: &mut Decision, v: &PodView, f: Failure, delay: Duration) {
    let due = d.restarts.next_restart_time.as_ref().map(|t| t.0);
    let due = due.unwrap_or_else(|| o.now.checked_add(delay).unwrap_or(o.now));
    if due > o.now {
        d.restarts.next_restart_time = Some(Time(due));
        d.deadlines.at(Some(due));
        return;
    }
    let note = failure_note(&f, &o.beat);
    record_restart(&mut d.restarts, &f, &note, v, o.now);
    d.action = delete(v, Some(RESTART_GRACE_SECONDS));
    d.notices.push(Notice::warning(
        "Restarting",
        format!(
            "Restart {} of {}: {note} (pod {})",
            d.restarts.count, o.worker.spec.restart_policy.max_restarts, v.name
        ),
    ));
    d.restarted = Some(f);
}

fn record_restart(r: &mut RestartStatus, f: &Failure, note: &str, v: &PodView, now: Timestamp) {
    r.count += 1;
    r.last_restart_time = Some(Time(now));
    r.last_restart_reason = Some(f.reason().into());
    r.next_restart_time = None;
    let record = RestartRecord {
        time: Time(now),
        reason: f.reason().into(),
        message: Some(note.into()),
        pod_name: Some(v.name.clone()),
        pod_uid: Some(v.uid.clone()),
    };
    r.history.insert(0, record);
    r.history.truncate(RESTART_HISTORY);
}

/// A worker Ready for `resetAfterStableSeconds` gets its restart budget back.
fn reset_after_stable(o: &Observation, d: &mut Decision) {
    let Some(ready_since) = o.previous.ready_since else { return };
    if d.restarts.count == 0 || d.limit_exceeded || d.action != PodAction::Keep {
        return;
    }
    let reset_after = o.worker.spec.restart_policy.reset_after_stable_seconds;
    match ready_since.checked_add(secs(reset_after)).ok() {
        Some(t) if t <= o.now => d.restarts.count = 0,
        t => d.deadlines.at(t),
    }
}

/// What went wrong, for status messages and Events.
pub fn failure_note(f: &Failure, beat: &Beat) -> String {
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

/// Whole seconds of a spec field; negative ones count as zero.
pub fn secs(n: i32) -> SignedDuration {
    SignedDuration::from_secs(i64::from(n.max(0)))
}
