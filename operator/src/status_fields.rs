//! Status fields fed by heartbeats (VRAM, memory, disk, device, model progress), the
//! pressure conditions, and the rule that decides whether a new status is worth a write.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rbee_api::conditions::{reasons, types};
use rbee_api::units::{binary_size, vram_summary};
use rbee_api::{
    DiskStatus, HeartbeatStatus, MemoryStatus, ModelStatus, RbeeWorker, RbeeWorkerStatus,
    VramStatus,
};

use crate::conditions::{Cond, Status};
use crate::heartbeat::record::HeartbeatRecord;
use crate::observe::Beat;

/// VRAMPressure above this share of the limit (or of the device when no limit is set).
const VRAM_PRESSURE_RATIO: f64 = 0.9;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The heartbeat-derived part of the status.
pub fn from_heartbeat(
    worker: &RbeeWorker,
    record: Option<&HeartbeatRecord>,
    old: &RbeeWorkerStatus,
    beat: &Beat,
    now: Timestamp,
) -> RbeeWorkerStatus {
    let spec = &worker.spec;
    let limit = spec.limits.vram_bytes;
    let beat_payload = record.map(|r| &r.beat);
    let vram = beat_payload.and_then(|b| b.vram).map(|v| VramStatus {
        used_bytes: Some(i64_of(v.used_bytes)),
        total_bytes: Some(i64_of(v.total_bytes)),
        limit_bytes: limit,
        summary: Some(vram_summary(v.used_bytes, v.total_bytes)),
    });
    let vram = vram
        .or_else(|| limit.map(|l| VramStatus { limit_bytes: Some(l), ..VramStatus::default() }));
    let last_time = record
        .map(|r| Time(r.received_at))
        .or_else(|| old.heartbeat.as_ref().and_then(|h| h.last_heartbeat_time.clone()));
    let interval = i64::from(spec.heartbeat.interval_seconds.max(1));
    let misses = match (beat, &last_time) {
        (Beat::Stale { .. }, Some(t)) => {
            i32::try_from(now.duration_since(t.0).as_secs() / interval).unwrap_or(i32::MAX)
        }
        _ => 0,
    };
    RbeeWorkerStatus {
        backend: beat_payload.map(|b| b.backend),
        device: beat_payload.map(|b| match &b.device {
            Some(d) => format!("{}:{} {}", b.backend, d.index, d.name.clone().unwrap_or_default())
                .trim_end()
                .to_string(),
            None => b.backend.to_string(),
        }),
        model: Some(ModelStatus {
            name: Some(spec.model.served_name()),
            loaded: beat_payload.is_some_and(|b| b.state.model_loaded()),
            load_progress_percent: beat_payload.map_or(0, |b| i32::from(b.load_progress_percent)),
        }),
        heartbeat: Some(HeartbeatStatus {
            last_heartbeat_time: last_time,
            consecutive_misses: misses,
            sequence: beat_payload.map(|b| i64_of(b.sequence)),
        }),
        vram,
        memory: beat_payload.map(|b| MemoryStatus { rss_bytes: Some(i64_of(b.memory_rss_bytes)) }),
        disk: beat_payload.and_then(|b| b.disk_free_bytes).map(|free| DiskStatus {
            free_bytes: Some(i64_of(free)),
            min_free_bytes: spec.limits.min_free_disk_bytes,
        }),
        ..RbeeWorkerStatus::default()
    }
}

/// VRAMPressure and DiskPressure.
pub fn pressure_conditions(worker: &RbeeWorker, record: Option<&HeartbeatRecord>) -> (Cond, Cond) {
    let unknown = |t| {
        Cond::new(
            t,
            Status::Unknown,
            reasons::AWAITING_FIRST_HEARTBEAT,
            "no report from the worker yet",
        )
    };
    let beat = record.map(|r| &r.beat);
    let vram = match beat.and_then(|b| b.vram) {
        Some(v) => {
            let budget =
                worker.spec.limits.vram_bytes.map_or(v.total_bytes, |l| {
                    u64::try_from(l).unwrap_or(0).min(v.total_bytes.max(1))
                });
            let threshold = (budget as f64 * VRAM_PRESSURE_RATIO) as u64;
            if v.used_bytes > threshold {
                Cond::new(
                    types::VRAM_PRESSURE,
                    Status::True,
                    reasons::VRAM_ABOVE_THRESHOLD,
                    format!(
                        "{} used of a {} budget (threshold 90%)",
                        binary_size(v.used_bytes),
                        binary_size(budget)
                    ),
                )
            } else {
                Cond::new(
                    types::VRAM_PRESSURE,
                    Status::False,
                    reasons::VRAM_OK,
                    format!("{} used of {}", binary_size(v.used_bytes), binary_size(budget)),
                )
            }
        }
        None if beat.is_some() => Cond::new(
            types::VRAM_PRESSURE,
            Status::False,
            reasons::VRAM_OK,
            "no accelerator memory in use",
        ),
        None => unknown(types::VRAM_PRESSURE),
    };
    let disk = match (beat.and_then(|b| b.disk_free_bytes), worker.spec.limits.min_free_disk_bytes)
    {
        (Some(free), Some(min)) if i64_of(free) < min => Cond::new(
            types::DISK_PRESSURE,
            Status::True,
            reasons::DISK_BELOW_MINIMUM,
            format!(
                "{} free, below the {} minimum",
                binary_size(free),
                binary_size(u64::try_from(min).unwrap_or(0))
            ),
        ),
        (Some(free), _) => Cond::new(
            types::DISK_PRESSURE,
            Status::False,
            reasons::DISK_OK,
            format!("{} free", binary_size(free)),
        ),
        (None, _) if beat.is_some() => Cond::new(
            types::DISK_PRESSURE,
            Status::False,
            reasons::DISK_OK,
            "free disk not reported",
        ),
        (None, _) => unknown(types::DISK_PRESSURE),
    };
    (vram, disk)
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
