//! Events for conditions that changed in a way an operator of the fleet wants to hear about.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use rbee_api::conditions::{reasons, types};

use super::find;
use crate::decide::Notice;

/// The Events that the change from `old` to `new` conditions raises.
pub fn transition_notices(old: &[Condition], new: &[Condition]) -> Vec<Notice> {
    new.iter()
        .filter(|c| {
            !find(old, &c.type_).is_some_and(|b| b.status == c.status && b.reason == c.reason)
        })
        .filter_map(notice)
        .collect()
}

fn notice(c: &Condition) -> Option<Notice> {
    let note = c.message.clone();
    let notice = match (c.type_.as_str(), c.status.as_str()) {
        (types::SCHEDULED, "True") => Notice::normal(reasons::SCHEDULED, note),
        (types::SCHEDULED, "False") if c.reason != reasons::POD_PENDING => {
            Notice::warning(static_reason(&c.reason), note)
        }
        (types::READY, "True") => {
            Notice::normal(reasons::WORKER_READY, "Worker is serving requests".into())
        }
        (types::MODEL_LOADED, "True") => Notice::normal(reasons::MODEL_LOADED, note),
        (types::MODEL_LOADED, "False") if c.reason == reasons::MODEL_LOAD_FAILED => {
            Notice::warning(reasons::MODEL_LOAD_FAILED, note)
        }
        (types::HEARTBEATING, "False") => Notice::warning(reasons::HEARTBEAT_STALE, note),
        (types::PROGRESSING, "True") if c.reason == reasons::DRAINING => {
            Notice::normal(reasons::DRAINING, note)
        }
        (types::DEGRADED, "True") if c.reason != reasons::RESTART_LIMIT_EXCEEDED => {
            Notice::warning(static_reason(&c.reason), note)
        }
        (types::VRAM_PRESSURE, "True") => Notice::warning(reasons::VRAM_ABOVE_THRESHOLD, note),
        (types::DISK_PRESSURE, "True") => Notice::warning(reasons::DISK_BELOW_MINIMUM, note),
        _ => return None,
    };
    Some(notice)
}

fn static_reason(reason: &str) -> &'static str {
    [
        reasons::UNSCHEDULABLE,
        reasons::INSUFFICIENT_GPU,
        reasons::BACKEND_MISMATCH,
        reasons::WORKER_DEGRADED,
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or(reasons::WORKER_NOT_READY)
}
