//! VRAMPressure and DiskPressure, from what the last heartbeat reports.

use rbee_api::RbeeWorker;
use rbee_api::conditions::{reasons, types};
use rbee_api::units::binary_size;

use super::{Cond, Status};
use crate::record::HeartbeatRecord;

/// VRAMPressure above this share of the limit (or of the device when no limit is set).
const VRAM_PRESSURE_RATIO: f64 = 0.9;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// VRAMPressure and DiskPressure.
pub fn conditions(worker: &RbeeWorker, record: Option<&HeartbeatRecord>) -> (Cond, Cond) {
    (vram(worker, record), disk(worker, record))
}

fn unknown(type_: &'static str) -> Cond {
    Cond::new(
        type_,
        Status::Unknown,
        reasons::AWAITING_FIRST_HEARTBEAT,
        "no report from the worker yet",
    )
}

fn vram(worker: &RbeeWorker, record: Option<&HeartbeatRecord>) -> Cond {
    let t = types::VRAM_PRESSURE;
    let Some(beat) = record.map(|r| &r.beat) else { return unknown(t) };
    let Some(v) = beat.vram else {
        return Cond::new(t, Status::False, reasons::VRAM_OK, "no accelerator memory in use");
    };
    let budget = worker
        .spec
        .limits
        .vram_bytes
        .map_or(v.total_bytes, |l| u64::try_from(l).unwrap_or(0).min(v.total_bytes.max(1)));
    let threshold = (budget as f64 * VRAM_PRESSURE_RATIO) as u64;
    let (used, budget) = (binary_size(v.used_bytes), binary_size(budget));
    if v.used_bytes > threshold {
        let message = format!("{used} used of a {budget} budget (threshold 90%)");
        Cond::new(t, Status::True, reasons::VRAM_ABOVE_THRESHOLD, message)
    } else {
        Cond::new(t, Status::False, reasons::VRAM_OK, format!("{used} used of {budget}"))
    }
}

fn disk(worker: &RbeeWorker, record: Option<&HeartbeatRecord>) -> Cond {
    let t = types::DISK_PRESSURE;
    let Some(beat) = record.map(|r| &r.beat) else { return unknown(t) };
    match (beat.disk_free_bytes, worker.spec.limits.min_free_disk_bytes) {
        (Some(free), Some(min)) if i64_of(free) < min => {
            let min = binary_size(u64::try_from(min).unwrap_or(0));
            let message = format!("{} free, below the {min} minimum", binary_size(free));
            Cond::new(t, Status::True, reasons::DISK_BELOW_MINIMUM, message)
        }
        (Some(free), _) => {
            Cond::new(t, Status::False, reasons::DISK_OK, format!("{} free", binary_size(free)))
        }
        (None, _) => Cond::new(t, Status::False, reasons::DISK_OK, "free disk not reported"),
    }
}
