//! Names shared by the operator, the worker and the chart: labels, env vars, ports, paths.

/// API group of every rbee resource.
pub const GROUP: &str = "rbee.dev";
/// Full name of the RbeeWorker CRD.
pub const CRD_NAME: &str = "rbeeworkers.rbee.dev";
/// Field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "rbee-operator";

/// Label on a worker pod naming its RbeeWorker.
pub const LABEL_WORKER: &str = "rbee.dev/worker";
/// Label on a worker pod naming the model it serves (for pool Services).
pub const LABEL_MODEL: &str = "rbee.dev/model";
/// Label on a worker pod carrying the RbeeWorker generation it was built from.
pub const LABEL_GENERATION: &str = "rbee.dev/generation";
/// Annotation on a worker pod with a hash of the pod template, to detect spec changes.
pub const ANNOTATION_POD_TEMPLATE_HASH: &str = "rbee.dev/pod-template-hash";
/// Pod condition type of the worker pods' readiness gate: True while the worker heartbeats
/// with its model loaded, so Services route only to live workers.
pub const READINESS_GATE: &str = "rbee.dev/heartbeat";
/// `app.kubernetes.io/name` of worker pods.
pub const APP_NAME_WORKER: &str = "llm-worker-rbee";
/// `app.kubernetes.io/managed-by` of everything the operator creates.
pub const MANAGED_BY: &str = "rbee-operator";

/// Audience of the projected service-account token a worker authenticates its heartbeats with.
pub const TOKEN_AUDIENCE: &str = "rbee-operator";
/// Directory in the worker container where the projected heartbeat token is mounted.
pub const TOKEN_MOUNT_DIR: &str = "/var/run/secrets/rbee.dev/heartbeat";
/// File name of the token inside [`TOKEN_MOUNT_DIR`].
pub const TOKEN_FILE: &str = "token";
/// Where a model PersistentVolumeClaim is mounted (read-only) in the worker container.
pub const MODEL_MOUNT_DIR: &str = "/models";
/// Name of the worker container in the pod.
pub const WORKER_CONTAINER: &str = "worker";

/// Port the worker serves its OpenAI-compatible API, `/health` and `/metrics` on.
pub const WORKER_HTTP_PORT: u16 = 8080;
/// Port of the operator's `/metrics`, `/healthz` and `/readyz`.
pub const OPERATOR_METRICS_PORT: u16 = 8080;
/// Port of the operator's heartbeat endpoint `POST /v1/heartbeat`.
pub const OPERATOR_HEARTBEAT_PORT: u16 = 8443;
/// Path of the heartbeat endpoint on the operator.
pub const HEARTBEAT_PATH: &str = "/v1/heartbeat";

/// Environment variables the worker reads as defaults of its command-line flags; the
/// operator sets those the RbeeWorker spec decides.
pub mod env {
    /// Model file (.gguf) or directory (safetensors + config.json + tokenizer.json).
    pub const MODEL_PATH: &str = "RBEE_MODEL_PATH";
    /// Optional tokenizer.json overriding the one found next to (or inside) the model.
    pub const TOKENIZER_PATH: &str = "RBEE_TOKENIZER_PATH";
    /// Name the model is served under (`/v1/models`).
    pub const MODEL_NAME: &str = "RBEE_MODEL_NAME";
    /// Expected sha256 of the model file, checked before loading.
    pub const MODEL_SHA256: &str = "RBEE_MODEL_SHA256";
    /// Context length override.
    pub const CONTEXT_LENGTH: &str = "RBEE_CONTEXT_LENGTH";
    /// `cpu` or `cuda`.
    pub const BACKEND: &str = "RBEE_BACKEND";
    /// Device ordinal for the cuda backend.
    pub const DEVICE: &str = "RBEE_DEVICE";
    /// `HOST:PORT` the worker listens on.
    pub const BIND_ADDRESS: &str = "RBEE_BIND_ADDRESS";
    /// Compute threads for the cpu backend.
    pub const THREADS: &str = "RBEE_THREADS";
    /// Operator heartbeat URL, e.g. `http://rbee-operator-heartbeat.rbee-system.svc:8443/v1/heartbeat`.
    pub const HEARTBEAT_URL: &str = "RBEE_HEARTBEAT_URL";
    /// Heartbeat period in seconds.
    pub const HEARTBEAT_INTERVAL_SECONDS: &str = "RBEE_HEARTBEAT_INTERVAL_SECONDS";
    /// File holding the projected service-account token (re-read before every heartbeat).
    pub const HEARTBEAT_TOKEN_PATH: &str = "RBEE_HEARTBEAT_TOKEN_PATH";
    /// Namespace of the RbeeWorker.
    pub const WORKER_NAMESPACE: &str = "RBEE_WORKER_NAMESPACE";
    /// Name of the RbeeWorker.
    pub const WORKER_NAME: &str = "RBEE_WORKER_NAME";
    /// Name of the pod (downward API).
    pub const POD_NAME: &str = "RBEE_POD_NAME";
    /// UID of the pod (downward API).
    pub const POD_UID: &str = "RBEE_POD_UID";
    /// Kernels of GGUF models on the cpu backend (not set by the operator).
    pub const CPU_KERNELS: &str = "RBEE_CPU_KERNELS";
    /// Requests that may wait for a generation slot (not set by the operator).
    pub const MAX_QUEUE: &str = "RBEE_MAX_QUEUE";
    /// Requests generated concurrently (not set by the operator).
    pub const MAX_BATCH: &str = "RBEE_MAX_BATCH";
    /// Seconds in-flight requests may take after SIGTERM (not set by the operator).
    pub const SHUTDOWN_GRACE_SECONDS: &str = "RBEE_SHUTDOWN_GRACE_SECONDS";
}

/// Environment variables the operator reads as defaults of its own flags; the chart sets
/// `POD_NAME` and `POD_NAMESPACE` through the downward API.
pub mod operator_env {
    /// `--metrics-bind-address`.
    pub const METRICS_BIND_ADDRESS: &str = "RBEE_METRICS_BIND_ADDRESS";
    /// `--heartbeat-bind-address`.
    pub const HEARTBEAT_BIND_ADDRESS: &str = "RBEE_HEARTBEAT_BIND_ADDRESS";
    /// `--leader-elect`.
    pub const LEADER_ELECT: &str = "RBEE_LEADER_ELECT";
    /// `--leader-election-namespace`.
    pub const LEADER_ELECTION_NAMESPACE: &str = "RBEE_LEADER_ELECTION_NAMESPACE";
    /// `--leader-election-id`.
    pub const LEADER_ELECTION_ID: &str = "RBEE_LEADER_ELECTION_ID";
    /// `--lease-duration-seconds`.
    pub const LEASE_DURATION_SECONDS: &str = "RBEE_LEASE_DURATION_SECONDS";
    /// `--watch-namespace`.
    pub const WATCH_NAMESPACE: &str = "RBEE_WATCH_NAMESPACE";
    /// `--default-worker-image`.
    pub const DEFAULT_WORKER_IMAGE: &str = "RBEE_DEFAULT_WORKER_IMAGE";
    /// `--heartbeat-url`.
    pub const HEARTBEAT_URL: &str = "RBEE_HEARTBEAT_URL";
    /// `--concurrency`.
    pub const CONCURRENCY: &str = "RBEE_CONCURRENCY";
    /// `--status-report-period-seconds`.
    pub const STATUS_REPORT_PERIOD_SECONDS: &str = "RBEE_STATUS_REPORT_PERIOD_SECONDS";
    /// `--log-format`.
    pub const LOG_FORMAT: &str = "RBEE_LOG_FORMAT";
    /// Name of the operator's own pod (downward API).
    pub const POD_NAME: &str = "POD_NAME";
    /// Namespace of the operator's own pod (downward API).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
}
