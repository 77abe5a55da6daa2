//! The heartbeat wire contract: what a worker `POST`s to the operator's `/v1/heartbeat`.
//!
//! Version 1. Unknown fields are rejected so a typo on either side fails loudly rather than
//! silently dropping data; a future version bumps [`HEARTBEAT_VERSION`].

use serde::{Deserialize, Serialize};

use crate::worker::Backend;

/// Version of the heartbeat payload this crate speaks.
pub const HEARTBEAT_VERSION: u32 = 1;
/// Largest heartbeat body the operator accepts, in bytes.
pub const MAX_HEARTBEAT_BYTES: usize = 16 * 1024;

/// One heartbeat from a worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    /// Payload version; must equal [`HEARTBEAT_VERSION`].
    pub version: u32,
    /// Which worker and pod is speaking.
    pub worker: WorkerIdentity,
    /// Monotonic per-process sequence number, starting at 1.
    pub sequence: u64,
    /// Worker's wall clock when the heartbeat was sent (only feeds a clock-skew metric).
    pub sent_at: jiff::Timestamp,
    /// Self-assessed health.
    pub health: Health,
    /// Why the worker is degraded, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    /// What the worker is doing.
    pub state: WorkerState,
    /// Model load progress, 0..=100.
    pub load_progress_percent: u8,
    /// Backend actually in use (may differ from the requested one).
    pub backend: Backend,
    /// Accelerator in use; absent on the cpu backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceInfo>,
    /// Accelerator memory; absent on the cpu backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram: Option<VramUsage>,
    /// Resident set size of the worker process, in bytes.
    pub memory_rss_bytes: u64,
    /// Free bytes on the filesystem holding the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// Requests being generated or queued right now.
    pub in_flight_requests: u32,
}

/// Identity of the sending worker; checked against the bearer token's bound pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerIdentity {
    /// Namespace of the RbeeWorker.
    pub namespace: String,
    /// Name of the RbeeWorker.
    pub name: String,
    /// Name of the worker pod.
    pub pod_name: String,
    /// UID of the worker pod.
    pub pod_uid: String,
}

/// Self-assessed health of a worker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving normally.
    Healthy,
    /// Serving, but something is wrong (see `healthReason`).
    Degraded,
}

/// What a worker is doing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Reading weights.
    Loading,
    /// Model loaded, idle.
    Ready,
    /// Model loaded, generating.
    Busy,
    /// Finishing in-flight requests before exit; accepts no new ones.
    Draining,
    /// The model cannot serve (load failed, device lost).
    Error,
}

impl WorkerState {
    /// Whether the model is loaded and can serve requests in this state.
    pub fn model_loaded(self) -> bool {
        matches!(self, Self::Ready | Self::Busy | Self::Draining)
    }
}

/// The accelerator a worker runs on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceInfo {
    /// Ordinal of the device in the container.
    pub index: u32,
    /// Stable device UUID, e.g. `GPU-5d1c…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Accelerator memory as the worker sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VramUsage {
    /// Bytes in use on the device.
    pub used_bytes: u64,
    /// Total bytes of the device.
    pub total_bytes: u64,
}

/// Why a heartbeat payload was refused.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum InvalidHeartbeat {
    /// Body is not JSON of the expected shape.
    #[error("malformed heartbeat: {0}")]
    Malformed(String),
    /// A field is outside its allowed range.
    #[error("invalid heartbeat field {field}: {problem}")]
    OutOfRange {
        /// JSON name of the field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl Heartbeat {
    /// Parses and validates a heartbeat body. Never panics, whatever the input.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidHeartbeat> {
        let hb: Self =
            serde_json::from_slice(body).map_err(|e| InvalidHeartbeat::Malformed(e.to_string()))?;
        hb.validate()?;
        Ok(hb)
    }

    /// Checks the ranges serde cannot express.
    pub fn validate(&self) -> Result<(), InvalidHeartbeat> {
        let bad = |field, problem: String| Err(InvalidHeartbeat::OutOfRange { field, problem });
        if self.version != HEARTBEAT_VERSION {
            return bad(
                "version",
                format!("unsupported version {}, expected {HEARTBEAT_VERSION}", self.version),
            );
        }
        if self.sequence == 0 {
            return bad("sequence", "must start at 1".into());
        }
        if self.load_progress_percent > 100 {
            return bad(
                "loadProgressPercent",
                format!("{} is above 100", self.load_progress_percent),
            );
        }
        if let Some(v) = self.vram
            && v.used_bytes > v.total_bytes
        {
            return bad(
                "vram.usedBytes",
                format!("{} exceeds vram.totalBytes {}", v.used_bytes, v.total_bytes),
            );
        }
        let id = &self.worker;
        for (field, value) in [
            ("worker.namespace", &id.namespace),
            ("worker.name", &id.name),
            ("worker.podName", &id.pod_name),
            ("worker.podUid", &id.pod_uid),
        ] {
            if value.is_empty() || value.len() > 253 {
                return bad(field, "must be 1 to 253 characters".into());
            }
        }
        if self.health_reason.as_ref().is_some_and(|r| r.len() > 1024) {
            return bad("healthReason", "longer than 1024 characters".into());
        }
        Ok(())
    }
}
