//! The status a reconcile writes: what it decided, the fields heartbeats feed (VRAM, memory,
//! disk, device, model progress), and the rule that decides whether a new status is worth a
//! write.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use rbee_api::heartbeat::Heartbeat;
use rbee_api::units::vram_summary;
use rbee_api::{
    DiskStatus, HeartbeatStatus, MemoryStatus, ModelStatus, RbeeWorker, RbeeWorkerStatus,
    RestartStatus, VramStatus,
};

use crate::decide::Decision;
use crate::observe::{Beat, Observation, Scheduling};
use crate::phase::Verdict;
use crate::record::HeartbeatRecord;

/// The status of the worker as `o` shows it after `d`.
pub fn build(
    o: &Observation,
    d: &Decision,
    phase: Verdict,
    conditions: Vec<Condition>,
) -> RbeeWorkerStatus {
    let pod = o.pod.as_ref();
    let restarts = Some(d.restarts.clone()).filter(|r| *r != RestartStatus::default());
    RbeeWorkerStatus {
        observed_generation: o.worker.metadata.generation,
        phase: Some(phase.phase),
        reason: Some(phase.reason.into()),
        message: Some(phase.message),
        pod_name: pod.map(|v| v.name.clone()),
        node_name: pod.and_then(|v| match &v.scheduling {
            Scheduling::Bound(n) => Some(n.clone()),
            _ => None,
        }),
        endpoint: crate::service::endpoint(o.worker),
        restarts,
        last_failure: pod.and_then(|v| v.last_failure.clone()).or(o.old.last_failure.clone()),
        conditions,
        ..from_heartbeat(o.worker, o.record, &o.old, &o.beat, o.now)
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The heartbeat-derived part of the status.
fn from_heartbeat(
    worker: &RbeeWorker,
    record: Option<&HeartbeatRecord>,
    old: &RbeeWorkerStatus,
    beat: &Beat,
    now: Timestamp,
) -> RbeeWorkerStatus {
    let spec = &worker.spec;
    let payload = record.map(|r| &r.beat);
    RbeeWorkerStatus {
        backend: payload.map(|b| b.backend),
        device: payload.map(device),
        model: Some(ModelStatus {
            name: Some(spec.model.served_name()),
            loaded: payload.is_some_and(|b| b.state.model_loaded()),
            load_progress_percent: payload.map_or(0, |b| i32::from(b.load_progress_percent)),
        }),
        heartbeat: Some(heartbeat(worker, record, old, beat, now)),
        vram: vram(worker, payload),
        memory: payload.map(|b| MemoryStatus { rss_bytes: Some(i64_of(b.memory_rss_bytes)) }),
        disk: payload.and_then(|b| b.disk_free_bytes).map(|free| DiskStatus {
            free_bytes: Some(i64_of(free)),
            min_free_bytes: spec.limits.min_free_disk_bytes,
        }),
        ..RbeeWorkerStatus::default()
    }
}

/// `cuda:0 NVIDIA H100 80GB HBM3`, or the backend alone.
fn device(b: &Heartbeat) -> String {
    match &b.device {
        Some(d) => format!("{}:{} {}", b.backend, d.index, d.name.clone().unwrap_or_default())
            .trim_end()
            .to_string(),
        None => b.backend.to_string(),
    }
}

fn vram(worker: &RbeeWorker, payload: Option<&Heartbeat>) -> Option<VramStatus> {
    let limit = worker.spec.limits.vram_bytes;
    let reported = payload.and_then(|b| b.vram).map(|v| VramStatus {
        used_bytes: Some(i64_of(v.used_bytes)),
        total_bytes: Some(i64_of(v.total_bytes)),
        limit_bytes: limit,
        summary: Some(vram_summary(v.used_bytes, v.total_bytes)),
    });
    reported.or_else(|| limit.map(|l| VramStatus { limit_bytes: Some(l), ..VramStatus::default() }))
}

/// The last accepted heartbeat (kept from the last status by a new leader that has heard
/// none yet), and the intervals missed since while stale.
fn heartbeat(
    worker: &RbeeWorker,
    record: Option<&HeartbeatRecord>,
    old: &RbeeWorkerStatus,
    beat: &Beat,
    now: Timestamp,
) -> HeartbeatStatus {
    let last_time = record
        .map(|r| Time(r.received_at))
        .or_else(|| old.heartbeat.as_ref().and_then(|h| h.last_heartbeat_time.clone()));
    let interval = i64::from(worker.spec.heartbeat.interval_seconds.max(1));
    let consecutive_misses = match (beat, &last_time) {
        (Beat::Stale { .. }, Some(t)) => {
            i32::try_from(now.duration_since(t.0).as_secs() / interval).unwrap_or(i32::MAX)
        }
        _ => 0,
    };
    HeartbeatStatus {
        last_heartbeat_time: last_time,
        consecutive_misses,
        sequence: record.map(|r| i64_of(r.beat.sequence)),
    }
}

/// What of a status a user can see change; the rest (heartbeat time and sequence, byte
/// counts behind the summaries, exact load percent) is refreshed once per report period.
fn visible(status: &RbeeWorkerStatus) -> RbeeWorkerStatus {
    let mut s = status.clone();
    if let Some(h) = s.heartbeat.as_mut() {
        h.last_heartbeat_time = None;
        h.sequence = None;
    }
    if let Some(v) = s.vram.as_mut() {
        v.used_bytes = None;
        v.total_bytes = None;
    }
    s.memory = None;
    s.disk = None;
    if let Some(m) = s.model.as_mut() {
        m.load_progress_percent /= 10;
    }
    s
}

/// Whether `new` should be written over `old`: a visible change, or anything changed and the
/// last heartbeat written is older than the report period.
pub fn needs_write(
    old: Option<&RbeeWorkerStatus>,
    new: &RbeeWorkerStatus,
    report_period: SignedDuration,
) -> bool {
    let Some(old) = old else { return true };
    if old == new {
        return false;
    }
    if visible(old) != visible(new) {
        return true;
    }
    let written = old.heartbeat.as_ref().and_then(|h| h.last_heartbeat_time.as_ref()).map(|t| t.0);
    let latest = new.heartbeat.as_ref().and_then(|h| h.last_heartbeat_time.as_ref()).map(|t| t.0);
    match (written, latest) {
        (Some(w), Some(l)) => l.duration_since(w) >= report_period,
        _ => true,
    }
}
