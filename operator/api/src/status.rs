//! Observed state of an `RbeeWorker`, written only by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

use crate::worker::Backend;

/// What the operator last observed of a worker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RbeeWorkerStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word summary for display; conditions carry the detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkerPhase>,
    /// CamelCase reason of the phase, e.g. `HeartbeatStale`, `RestartLimitExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Name of the current worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Node the worker pod is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Base URL of the worker's OpenAI-compatible API, e.g. `http://10.0.0.7:8080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Backend the worker reports it actually uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Device the worker reports it actually uses, e.g. `cuda:0 NVIDIA H100 80GB HBM3` or `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Model load state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelStatus>,
    /// Heartbeat bookkeeping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatStatus>,
    /// Accelerator memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram: Option<VramStatus>,
    /// Host memory of the worker process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStatus>,
    /// Free disk where the model lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskStatus>,
    /// Restarts made by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<RestartStatus>,
    /// How the last worker container ended, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureStatus>,
    /// Ready, Scheduled, ModelLoaded, Heartbeating, VRAMPressure, DiskPressure, Degraded,
    /// Progressing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One-word display state of a worker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum WorkerPhase {
    /// Waiting for the pod to be created or scheduled.
    Pending,
    /// Pod running, model loading.
    Loading,
    /// Serving, heartbeats fresh.
    Ready,
    /// Restart limit reached or the worker reports itself degraded; left alone.
    Degraded,
    /// No heartbeat within `staleAfterSeconds`.
    Stale,
    /// Taken out of its Services' endpoints and finishing in-flight requests before its pod
    /// is replaced.
    Draining,
    /// Waiting out the backoff before the next restart.
    BackingOff,
    /// The pod failed and the restart policy does not replace it.
    Failed,
}

impl WorkerPhase {
    /// The spelling used in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Loading => "Loading",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
            Self::Stale => "Stale",
            Self::Draining => "Draining",
            Self::BackingOff => "BackingOff",
            Self::Failed => "Failed",
        }
    }

    /// Every phase, for metrics that report all of them.
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Loading,
        Self::Ready,
        Self::Degraded,
        Self::Stale,
        Self::Draining,
        Self::BackingOff,
        Self::Failed,
    ];
}

/// Model load state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// Served model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the weights are loaded and the worker can serve.
    #[serde(default)]
    pub loaded: bool,
    /// Load progress in percent, as last reported.
    #[serde(default)]
    pub load_progress_percent: i32,
}

/// Heartbeat bookkeeping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatStatus {
    /// When the operator last accepted a heartbeat (operator clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// Heartbeat intervals elapsed since the last accepted heartbeat.
    #[serde(default)]
    pub consecutive_misses: i32,
    /// Sequence number of the last accepted heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
}

/// Accelerator memory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VramStatus {
    /// Bytes in use on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<i64>,
    /// Total bytes of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Budget from `spec.limits.vramBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<i64>,
    /// `used/total` in binary units for display, e.g. `7.6Gi/22.5Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// Host memory of the worker process.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    /// Resident set size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<i64>,
}

/// Free disk where the model lives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    /// Free bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<i64>,
    /// Threshold from `spec.limits.minFreeDiskBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_bytes: Option<i64>,
}

/// Restarts made by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartStatus {
    /// Restarts since the worker was created or last stable for `resetAfterStableSeconds`.
    #[serde(default)]
    pub count: i32,
    /// When the last restart was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_time: Option<Time>,
    /// Why the last restart was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_reason: Option<String>,
    /// When the next restart is due, while backing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_time: Option<Time>,
    /// The last restarts, newest first (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub history: Vec<RestartRecord>,
}

/// One restart made by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartRecord {
    /// When the pod was deleted.
    pub time: Time,
    /// CamelCase reason, e.g. `HeartbeatStale`.
    pub reason: String,
    /// Detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The pod that was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// UID of the replaced pod; while a pod with this UID exists, the operator deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// How a worker container ended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureStatus {
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Container exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Reason from the container state, e.g. `Error`, `OOMKilled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Message from the container state or the worker's termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the kernel OOM killer ended it.
    #[serde(default)]
    pub oom_killed: bool,
}
