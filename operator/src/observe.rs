//! Reads everything a reconcile looks at (the worker, its pod, its last heartbeat, the last
//! status) into one observation, computed once. Pure.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use rbee_api::conditions::reasons;
use rbee_api::heartbeat::{Health, WorkerState};
use rbee_api::names::WORKER_CONTAINER;
use rbee_api::{FailureStatus, RbeeWorker, RbeeWorkerStatus};

use crate::gate::{self, Gate};
use crate::pod::pod_template_hash;
use crate::record::HeartbeatRecord;

/// What a reconcile looked at.
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

/// What the last written status said, as far as decisions depend on it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Previous {
    /// The heartbeat verdict of the Heartbeating condition.
    pub beat: Option<Beat>,
    /// Degraded with `RestartLimitExceeded`: the operator had given up on the worker.
    pub restart_limit_reached: bool,
    /// Since when the worker has been Ready, if it was.
    pub ready_since: Option<Timestamp>,
}

/// One look at a worker, computed once per reconcile.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// The worker.
    pub worker: &'a RbeeWorker,
    /// Now.
    pub now: Timestamp,
    /// The status as last written (empty for a new worker).
    pub old: RbeeWorkerStatus,
    /// What the last status said.
    pub previous: Previous,
    /// The spec changed since the last status was written.
    pub spec_changed: bool,
    /// The current pod.
    pub pod: Option<PodView>,
    /// The last heartbeat of the current pod.
    pub record: Option<&'a HeartbeatRecord>,
    /// The current pod is the one the last recorded restart condemned.
    pub condemned: bool,
    /// The current pod was built from another spec.
    pub outdated: bool,
    /// Heartbeat freshness.
    pub beat: Beat,
    /// When freshness must be looked at again.
    pub beat_deadline: Option<Timestamp>,
    /// Model load state of the current pod.
    pub model: Option<ModelState>,
    /// An EndpointSlice still routes to the pod.
    pub endpoints_serving: bool,
}

/// Looks at a worker once.
pub fn observe<'a>(i: &Inputs<'a>, previous: Previous) -> Observation<'a> {
    let old = i.worker.status.clone().unwrap_or_default();
    let generation = i.worker.metadata.generation;
    let pod = i.pod.map(pod_view);
    let record = i.heartbeat.filter(|r| pod.as_ref().is_some_and(|v| v.uid == r.pod_uid));
    // The last restart recorded the pod it condemned.
    let last_restart = old.restarts.as_ref().and_then(|r| r.history.first());
    let condemned = pod
        .as_ref()
        .is_some_and(|v| last_restart.and_then(|h| h.pod_uid.as_deref()) == Some(v.uid.as_str()));
    let stale_after = SignedDuration::from_secs(i64::from(
        i.worker.spec.heartbeat.effective_stale_after_seconds().max(0),
    ));
    let (beat, beat_deadline) = match &pod {
        Some(v) => beat(
            v.running_since,
            record,
            stale_after,
            i.leader_since,
            previous.beat.as_ref(),
            i.now,
        ),
        None => (Beat::NotExpected, None),
    };
    Observation {
        worker: i.worker,
        now: i.now,
        spec_changed: old.observed_generation.is_some() && old.observed_generation != generation,
        old,
        previous,
        model: pod.as_ref().map(|v| model_state(v, record)),
        outdated: i.pod.is_some_and(|p| pod_template_hash(p) != Some(i.desired_hash)),
        pod,
        record,
        condemned,
        beat,
        beat_deadline,
        endpoints_serving: i.endpoints_serving,
    }
}

impl Observation<'_> {
    /// The observation as it will be once the pod this reconcile creates is seen: the status
    /// written with a new pod already describes it, so its first sighting costs no second write.
    pub fn with_created_pod(&self, name: String) -> Self {
        let pod = PodView::created(name);
        Self { model: Some(model_state(&pod, None)), pod: Some(pod), record: None, ..self.clone() }
    }

    /// Why the worker runs on another backend than asked for, if it does.
    pub fn backend_mismatch(&self) -> Option<String> {
        let asked = self.worker.spec.backend;
        self.record
            .filter(|r| r.beat.backend != asked)
            .map(|r| format!("asked for {asked} but the worker runs on {}", r.beat.backend))
    }

    /// Whether the worker reports itself degraded, and why.
    pub fn reported_degraded(&self) -> Option<String> {
        self.record.filter(|r| r.beat.health == Health::Degraded).map(|r| {
            r.beat
                .health_reason
                .clone()
                .unwrap_or_else(|| "the worker reports itself degraded".into())
        })
    }
}

/// Whether and where the pod is scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheduling {
    /// Bound to a node.
    Bound(String),
    /// The scheduler could not place it.
    Unschedulable {
        /// `InsufficientGPU` or `Unschedulable`.
        reason: &'static str,
        /// The scheduler's message.
        message: String,
    },
    /// Not yet considered.
    Pending,
}

/// The pod as the decisions see it.
#[derive(Clone, Debug)]
pub struct PodView {
    /// Pod UID.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Scheduling state.
    pub scheduling: Scheduling,
    /// `status.phase`.
    pub phase: String,
    /// When the worker container last started running, if it runs now.
    pub running_since: Option<Timestamp>,
    /// Why the container is not running (`ContainerCreating`, `CrashLoopBackOff`, ...).
    pub waiting_reason: Option<String>,
    /// The container's readiness probe (on /health) passes: `ContainersReady`.
    pub probe_ready: bool,
    /// The pod's `Ready` condition: the probe and the heartbeat readiness gate.
    pub ready: bool,
    /// The heartbeat readiness gate condition, as last set.
    pub gate: Option<Gate>,
    /// Pod IP.
    pub ip: Option<String>,
    /// How the container last ended, if it did.
    pub last_failure: Option<FailureStatus>,
    /// Being deleted.
    pub terminating: bool,
}

impl PodView {
    /// A pod being created now, as its first sighting will show it: waiting for a node.
    pub fn created(name: String) -> Self {
        Self {
            uid: String::new(),
            name,
            scheduling: Scheduling::Pending,
            phase: "Pending".into(),
            running_since: None,
            waiting_reason: None,
            probe_ready: false,
            ready: false,
            gate: None,
            ip: None,
            last_failure: None,
            terminating: false,
        }
    }
}

/// Reads a pod.
pub fn pod_view(pod: &Pod) -> PodView {
    let status = pod.status.clone().unwrap_or_default();
    let conditions = status.conditions.clone().unwrap_or_default();
    let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled");
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let scheduling = match (node, scheduled) {
        (Some(node), _) => Scheduling::Bound(node),
        (None, Some(c)) if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") => {
            let message = c.message.clone().unwrap_or_default();
            let reason = if message.contains("nvidia.com/gpu") {
                reasons::INSUFFICIENT_GPU
            } else {
                reasons::UNSCHEDULABLE
            };
            Scheduling::Unschedulable { reason, message }
        }
        _ => Scheduling::Pending,
    };
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == WORKER_CONTAINER));
    let state = container.and_then(|c| c.state.clone());
    let running_since = state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .map(|r| r.started_at.as_ref().map(|t| t.0).unwrap_or_default());
    let waiting_reason =
        state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone());
    let terminated = state.as_ref().and_then(|s| s.terminated.clone()).or_else(|| {
        container.and_then(|c| c.last_state.as_ref()).and_then(|s| s.terminated.clone())
    });
    PodView {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        scheduling,
        phase: status.phase.clone().unwrap_or_else(|| "Pending".into()),
        running_since: running_since.filter(|_| status.phase.as_deref() == Some("Running")),
        waiting_reason,
        probe_ready: conditions.iter().any(|c| c.type_ == "ContainersReady" && c.status == "True"),
        ready: conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
        gate: gate::of_pod(pod),
        ip: status.pod_ip.clone().filter(|ip| !ip.is_empty()),
        last_failure: terminated.filter(|t| t.exit_code != 0).map(failure_of),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}

fn failure_of(t: ContainerStateTerminated) -> FailureStatus {
    FailureStatus {
        time: t.finished_at.clone(),
        exit_code: Some(t.exit_code),
        oom_killed: t.reason.as_deref() == Some("OOMKilled"),
        reason: t.reason,
        message: t.message,
    }
}

/// Heartbeat freshness of the current pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Beat {
    /// The container is not running; heartbeats are not expected.
    NotExpected,
    /// Running, no heartbeat yet, still within the stale threshold.
    Awaiting,
    /// Fresh.
    Fresh,
    /// Nothing accepted for at least the stale threshold.
    Stale {
        /// How long the operator has heard nothing.
        silent_for: Duration,
        /// The last heartbeat (or container start, or leadership gain) it measures from;
        /// stable, so status messages built on it do not change on every look.
        since: Timestamp,
    },
}

/// Freshness and the instant it must be looked at again.
pub fn beat(
    running_since: Option<Timestamp>,
    record: Option<&HeartbeatRecord>,
    stale_after: SignedDuration,
    leader_since: Timestamp,
    was: Option<&Beat>,
    now: Timestamp,
) -> (Beat, Option<Timestamp>) {
    let was_stale = matches!(was, Some(Beat::Stale { .. }));
    let Some(started) = running_since else {
        return (Beat::NotExpected, None);
    };
    // A new leader has heard nothing yet: it gives every worker one full stale period.
    let reference = record.map_or(started, |r| r.received_at).max(started).max(leader_since);
    let silent = now.duration_since(reference);
    let deadline = reference.checked_add(stale_after).ok();
    if silent >= stale_after {
        let silent_for = Duration::try_from(silent).unwrap_or_default();
        return (Beat::Stale { silent_for, since: reference }, None);
    }
    match record {
        // A leader newer than the pod keeps the last leader's verdict until it has had a
        // stale period to hear from the worker itself.
        None if was == Some(&Beat::Fresh) && leader_since > started => (Beat::Fresh, deadline),
        None => (Beat::Awaiting, deadline),
        // Hysteresis: one beat after a stale spell is not yet recovery.
        Some(r) if was_stale && r.streak < 2 => {
            (Beat::Stale { silent_for: Duration::ZERO, since: reference }, deadline)
        }
        Some(_) => (Beat::Fresh, deadline),
    }
}

/// Model load state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelState {
    /// Loaded; the worker serves.
    Loaded,
    /// Loading, with percent done.
    Loading(u8),
    /// The worker reports it cannot load the model.
    Failed(String),
}

/// Model state from the heartbeat, else from the readiness probe.
pub fn model_state(pod: &PodView, record: Option<&HeartbeatRecord>) -> ModelState {
    match record {
        Some(r) if r.beat.state == WorkerState::Error => ModelState::Failed(
            r.beat.health_reason.clone().unwrap_or_else(|| "the worker reports an error".into()),
        ),
        Some(r) if r.beat.state.model_loaded() => ModelState::Loaded,
        Some(r) => ModelState::Loading(r.beat.load_progress_percent),
        None if pod.probe_ready => ModelState::Loaded,
        None => ModelState::Loading(0),
    }
}
