//! Condition types and reasons of `RbeeWorker` status: stable CamelCase constants used in
//! status, Events and metric labels.

/// Condition types.
pub mod types {
    /// Aggregate: the worker serves requests (pod running, model loaded, heartbeat fresh).
    pub const READY: &str = "Ready";
    /// The pod is bound to a node.
    pub const SCHEDULED: &str = "Scheduled";
    /// The model weights are loaded.
    pub const MODEL_LOADED: &str = "ModelLoaded";
    /// Heartbeats arrive within `staleAfterSeconds`.
    pub const HEARTBEATING: &str = "Heartbeating";
    /// Accelerator memory above 90% of the limit or the device.
    pub const VRAM_PRESSURE: &str = "VRAMPressure";
    /// Free disk below `minFreeDiskBytes`.
    pub const DISK_PRESSURE: &str = "DiskPressure";
    /// The operator gave up on the worker or it reports itself degraded.
    pub const DEGRADED: &str = "Degraded";
    /// The pod is being created or replaced to match the spec.
    pub const PROGRESSING: &str = "Progressing";
}

/// Condition and phase reasons.
pub mod reasons {
    /// No pod exists yet.
    pub const POD_PENDING: &str = "PodPending";
    /// Pod created, waiting for scheduling.
    pub const POD_CREATED: &str = "PodCreated";
    /// The old pod is being replaced after a spec change.
    pub const POD_REPLACED: &str = "PodReplaced";
    /// The pod is out of its Services' endpoints, finishing in-flight requests before it is
    /// replaced.
    pub const DRAINING: &str = "Draining";
    /// The pod runs the current spec.
    pub const POD_UP_TO_DATE: &str = "PodUpToDate";
    /// The pod is bound to a node.
    pub const SCHEDULED: &str = "Scheduled";
    /// The scheduler found no node for the pod.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// No node has enough free `nvidia.com/gpu`.
    pub const INSUFFICIENT_GPU: &str = "InsufficientGPU";
    /// The worker loads its model.
    pub const LOADING: &str = "Loading";
    /// The model is loaded.
    pub const MODEL_LOADED: &str = "ModelLoaded";
    /// The model failed to load.
    pub const MODEL_LOAD_FAILED: &str = "ModelLoadFailed";
    /// The model did not load within `loadTimeoutSeconds`.
    pub const MODEL_LOAD_TIMEOUT: &str = "ModelLoadTimeout";
    /// The container is not running.
    pub const CONTAINER_NOT_RUNNING: &str = "ContainerNotRunning";
    /// The worker serves requests.
    pub const WORKER_READY: &str = "WorkerReady";
    /// The worker does not serve requests yet.
    pub const WORKER_NOT_READY: &str = "WorkerNotReady";
    /// No heartbeat received since the pod started.
    pub const AWAITING_FIRST_HEARTBEAT: &str = "AwaitingFirstHeartbeat";
    /// Heartbeats arrive on time.
    pub const HEARTBEAT_RECEIVED: &str = "HeartbeatReceived";
    /// No heartbeat within `staleAfterSeconds`.
    pub const HEARTBEAT_STALE: &str = "HeartbeatStale";
    /// Asked for cuda, running on cpu.
    pub const BACKEND_MISMATCH: &str = "BackendMismatch";
    /// Accelerator memory above the threshold.
    pub const VRAM_ABOVE_THRESHOLD: &str = "VRAMAboveThreshold";
    /// Accelerator memory below the threshold.
    pub const VRAM_OK: &str = "VRAMOk";
    /// Free disk below `minFreeDiskBytes`.
    pub const DISK_BELOW_MINIMUM: &str = "DiskBelowMinimum";
    /// Free disk sufficient.
    pub const DISK_OK: &str = "DiskOk";
    /// The pod failed (non-zero exit, eviction).
    pub const POD_FAILED: &str = "PodFailed";
    /// The worker process exited successfully.
    pub const POD_SUCCEEDED: &str = "PodSucceeded";
    /// The container was OOM-killed.
    pub const OOM_KILLED: &str = "OOMKilled";
    /// Waiting for the backoff before restarting.
    pub const BACKING_OFF: &str = "BackingOff";
    /// `maxRestarts` reached; the operator no longer restarts the worker.
    pub const RESTART_LIMIT_EXCEEDED: &str = "RestartLimitExceeded";
    /// The worker reports itself degraded.
    pub const WORKER_DEGRADED: &str = "WorkerDegraded";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
}
