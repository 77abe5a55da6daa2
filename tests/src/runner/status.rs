//! The pod status a kubelet would report, as a strategic-merge patch of the status
//! subresource (conditions merge by `type`, so readiness-gate conditions set by others stay).

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// Kubelet's view of the pod's one container.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    /// Not started: a reason (`CreateContainerConfigError`, `CrashLoopBackOff`) and message.
    Waiting { reason: String, message: String },
    /// Running since `started_at` (RFC 3339).
    Running { started_at: String },
    /// Exited.
    Terminated(Termination),
}

/// How a container run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    /// Exit code (128 + signal when killed by one).
    pub exit_code: i32,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// The end of the run's log on failure (terminationMessagePolicy FallbackToLogsOnError).
    pub message: Option<String>,
}

impl Termination {
    fn to_json(&self) -> Value {
        json!({"terminated": {
            "exitCode": self.exit_code,
            "reason": if self.exit_code == 0 { "Completed" } else { "Error" },
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "containerID": "",
            "message": self.message,
        }})
    }
}

/// Everything the runner reports about one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodReport {
    /// Pod IP (loopback).
    pub pod_ip: Ipv4Addr,
    /// When the runner took the pod (RFC 3339).
    pub start_time: String,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: &'static str,
    /// The container.
    pub state: ContainerState,
    /// Whether the readiness probe passes.
    pub container_ready: bool,
    /// Restarts of the container by the runner.
    pub restart_count: i32,
    /// The previous run's end, after a restart.
    pub last_terminated: Option<Termination>,
    /// When readiness last changed (RFC 3339).
    pub ready_since: String,
    /// Container name.
    pub container: String,
    /// Container image, echoed.
    pub image: String,
}

/// Whether every `spec.readinessGates` condition is True in the pod's status.
pub fn readiness_gates_pass(pod: &Pod) -> bool {
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_ref());
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    gates.into_iter().flatten().all(|gate| {
        conditions
            .into_iter()
            .flatten()
            .any(|c| c.type_ == gate.condition_type && c.status == "True")
    })
}

/// The status patch for `report`; `gates` is [`readiness_gates_pass`] of the current pod.
pub fn status_patch(report: &PodReport, gates: bool) -> Value {
    let cond = |type_: &str, ok: bool, since: &str| json!({"type": type_, "status": if ok { "True" } else { "False" }, "lastTransitionTime": since});
    let state = match &report.state {
        ContainerState::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        ContainerState::Terminated(t) => t.to_json(),
    };
    let running = matches!(report.state, ContainerState::Running { .. });
    let ready = running && report.container_ready;
    let last_state = report.last_terminated.as_ref().map(Termination::to_json).unwrap_or(json!({}));
    json!({"status": {
        "phase": report.phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": report.pod_ip.to_string(),
        "podIPs": [{"ip": report.pod_ip.to_string()}],
        "startTime": report.start_time,
        "conditions": [
            cond("PodReadyToStartContainers", true, &report.start_time),
            cond("Initialized", true, &report.start_time),
            cond("ContainersReady", ready, &report.ready_since),
            cond("Ready", ready && gates, &report.ready_since),
        ],
        "containerStatuses": [{
            "name": report.container,
            "image": report.image,
            "imageID": "",
            "containerID": format!("local://{}", report.pod_ip),
            "ready": ready,
            "started": running,
            "restartCount": report.restart_count,
            "state": state,
            "lastState": last_state,
        }],
    }})
}

/// Now as RFC 3339 with whole seconds, as the API server stores times.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
