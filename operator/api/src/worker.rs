//! The `RbeeWorker` custom resource: one LLM inference worker pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::status::RbeeWorkerStatus;

/// Desired state of one LLM inference worker: which model it serves, on what hardware,
/// how often it must heartbeat, and how the operator restarts it when it dies or hangs.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rbee.dev",
    version = "v1alpha1",
    kind = "RbeeWorker",
    plural = "rbeeworkers",
    singular = "rbeeworker",
    shortname = "rbw",
    category = "rbee",
    namespaced,
    status = "RbeeWorkerStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"What the worker is doing"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".spec.backend","description":"Requested backend"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".status.model.name","description":"Served model"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Serving requests"}"#,
    printcolumn = r#"{"name":"VRAM","type":"string","jsonPath":".status.vram.summary","description":"Accelerator memory used/total"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","jsonPath":".status.restarts.count","description":"Restarts made by the operator"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.heartbeat.lastHeartbeatTime","description":"Time since the last accepted heartbeat"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.reason","description":"Why the worker is in its phase"}"#,
    printcolumn = r#"{"name":"Node","type":"string","priority":1,"jsonPath":".status.nodeName","description":"Node the worker pod runs on"}"#,
    printcolumn = r#"{"name":"Device","type":"string","priority":1,"jsonPath":".status.device","description":"Device the worker actually uses"}"#,
    validation = kube::core::Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be at most 63 lowercase letters, digits and '-', starting with a letter: it names the worker's Service and labels its pod")
)]
#[x_kube(validation = kube::core::Rule::new("self.backend != 'cuda' || !has(self.gpus) || self.gpus > 0").message("spec.gpus must be greater than 0 when spec.backend is cuda").field_path(".gpus"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RbeeWorkerSpec {
    /// The model to serve.
    pub model: ModelSpec,
    /// Inference backend: `cuda` (NVIDIA GPU) or `cpu`.
    #[serde(default)]
    pub backend: Backend,
    /// Number of `nvidia.com/gpu` to request (requests = limits). Defaults to 1 for the cuda
    /// backend and 0 for cpu; must be greater than 0 for cuda.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: Option<i32>,
    /// Worker container image; defaults to the operator's `--default-worker-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Compute threads for the cpu backend; defaults to the CPUs the worker may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub threads: Option<i32>,
    /// Node labels the worker pod must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the worker pod (GPU nodes are often tainted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// CPU and memory of the worker container; GPUs come from `gpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How often the worker reports to the operator, and when it counts as stale.
    #[serde(default)]
    pub heartbeat: HeartbeatSpec,
    /// What the operator does when the worker dies, hangs, or never loads its model.
    #[serde(default)]
    pub restart_policy: RestartPolicySpec,
    /// Resource budgets the operator watches.
    #[serde(default)]
    pub limits: LimitsSpec,
}

/// Inference backend.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// NVIDIA GPU through CUDA.
    #[default]
    Cuda,
    /// Host CPU.
    Cpu,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Self; 2] = [Self::Cuda, Self::Cpu];

    /// The spelling used in the API, flags and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name that is neither `cuda` nor `cpu`.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown backend {0:?}: use cuda or cpu")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|b| b.as_str() == s).ok_or_else(|| UnknownBackend(s.into()))
    }
}

/// Where the weights are and how to read them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.pvc) ? !self.path.startsWith('/') : self.path.startsWith('/')").message("spec.model.path must be absolute, or relative to the claim root when spec.model.pvc is set").field_path(".path"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// Path of the weights: a `.gguf` file, or a directory holding `*.safetensors`,
    /// `config.json` and `tokenizer.json`. Absolute inside the container, or relative to the
    /// root of `pvc` when that is set.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// PersistentVolumeClaim holding the weights, mounted read-only at `/models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pvc: Option<String>,
    /// File format of the weights.
    #[serde(default)]
    pub format: ModelFormat,
    /// Name the model is served under (`/v1/models`, the Model column); defaults to the file
    /// name of `path` without extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Expected SHA-256 of the weights file (64 lowercase hex digits); the worker refuses
    /// to serve a file that does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// tokenizer.json to use instead of the one in the model directory or GGUF metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub tokenizer: Option<String>,
    /// Context length in tokens; defaults to the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub context_length: Option<i32>,
}

impl ModelSpec {
    /// The served model name: `name`, else the file name of `path` without extension.
    pub fn served_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let file = self.path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        let stem = file.strip_suffix(".gguf").unwrap_or(file);
        if stem.is_empty() { "model".into() } else { stem.into() }
    }
}

/// File format of model weights.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// A single GGUF file (quantized).
    #[default]
    Gguf,
    /// A directory of safetensors with config.json and tokenizer.json.
    Safetensors,
}

/// Heartbeat cadence and staleness threshold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("!has(self.staleAfterSeconds) || self.staleAfterSeconds > self.intervalSeconds").message("spec.heartbeat.staleAfterSeconds must be greater than spec.heartbeat.intervalSeconds").field_path(".staleAfterSeconds"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatSpec {
    /// Seconds between two heartbeats of the worker.
    #[serde(default = "default_interval_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
    /// Seconds without an accepted heartbeat after which the worker is Stale. Defaults to
    /// twice `intervalSeconds`; must be greater than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 86400))]
    pub stale_after_seconds: Option<i32>,
}

fn default_interval_seconds() -> i32 {
    30
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        Self { interval_seconds: default_interval_seconds(), stale_after_seconds: None }
    }
}

impl HeartbeatSpec {
    /// The stale threshold in effect: `staleAfterSeconds`, else twice the interval.
    pub fn effective_stale_after_seconds(&self) -> i32 {
        self.stale_after_seconds.unwrap_or(self.interval_seconds.saturating_mul(2))
    }
}

/// Operator-level restart policy, for what kubelet cannot see (a hung process, a model
/// that never loads, a failed pod).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartPolicySpec {
    /// When the operator replaces the worker pod.
    #[serde(default)]
    pub mode: RestartMode,
    /// Delay before each restart.
    #[serde(default)]
    pub backoff: BackoffSpec,
    /// Restarts allowed before the worker is left Degraded with reason RestartLimitExceeded.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_restarts: i32,
    /// Seconds of continuous Ready after which the restart count and backoff start over.
    #[serde(default = "default_reset_after_stable_seconds")]
    #[schemars(range(min = 1))]
    pub reset_after_stable_seconds: i32,
    /// Seconds the model may take to load before the worker counts as failed.
    #[serde(default = "default_load_timeout_seconds")]
    #[schemars(range(min = 1))]
    pub load_timeout_seconds: i32,
    /// Seconds a serving pod may take to leave its Services' endpoints and finish its
    /// in-flight requests before a spec change replaces it; 0 replaces it at once.
    #[serde(default = "default_drain_timeout_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_seconds: i32,
}

fn default_max_restarts() -> i32 {
    5
}
fn default_reset_after_stable_seconds() -> i32 {
    600
}
fn default_load_timeout_seconds() -> i32 {
    900
}
fn default_drain_timeout_seconds() -> i32 {
    60
}

impl Default for RestartPolicySpec {
    fn default() -> Self {
        Self {
            mode: RestartMode::default(),
            backoff: BackoffSpec::default(),
            max_restarts: default_max_restarts(),
            reset_after_stable_seconds: default_reset_after_stable_seconds(),
            load_timeout_seconds: default_load_timeout_seconds(),
            drain_timeout_seconds: default_drain_timeout_seconds(),
        }
    }
}

/// When the operator replaces a worker pod.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum RestartMode {
    /// Never; failures are only reported.
    Never,
    /// When the worker failed: stale heartbeat, model load failure or timeout, failed pod.
    OnFailure,
    /// As OnFailure, and also when the worker exited successfully.
    #[default]
    Always,
}

/// Exponential backoff between restarts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("self.maxSeconds >= self.initialSeconds").message("spec.restartPolicy.backoff.maxSeconds must be at least initialSeconds").field_path(".maxSeconds"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    /// Delay before the first restart, doubled for each further one.
    #[serde(default = "default_backoff_initial_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub initial_seconds: i32,
    /// Upper bound of the delay.
    #[serde(default = "default_backoff_max_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_seconds: i32,
    /// Random spread added to each delay, in percent of it, so a fleet does not restart
    /// in lockstep.
    #[serde(default = "default_jitter_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub jitter_percent: i32,
}

fn default_backoff_initial_seconds() -> i32 {
    10
}
fn default_backoff_max_seconds() -> i32 {
    300
}
fn default_jitter_percent() -> i32 {
    20
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial_seconds: default_backoff_initial_seconds(),
            max_seconds: default_backoff_max_seconds(),
            jitter_percent: default_jitter_percent(),
        }
    }
}

/// Budgets the worker must stay within.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    /// Accelerator memory budget in bytes; VRAMPressure is raised above 90% of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub vram_bytes: Option<i64>,
    /// Free bytes the model's filesystem must keep; DiskPressure is raised below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_free_disk_bytes: Option<i64>,
}

#[cfg(test)]
mod backend_tests {
    use super::*;

    #[test]
    fn backends_parse_from_their_names_only() {
        for b in Backend::ALL {
            assert_eq!(b.as_str().parse::<Backend>(), Ok(b));
        }
        let err = "rocm".parse::<Backend>().err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "unknown backend \"rocm\": use cuda or cpu");
    }
}
