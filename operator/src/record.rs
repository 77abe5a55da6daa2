//! What the operator remembers of each worker's heartbeats: in memory, for one leadership
//! term (a new leader starts with none).

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use rbee_api::heartbeat::{Health, Heartbeat, VramUsage};
use rbee_api::units::vram_summary;

/// The last accepted heartbeat of one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatRecord {
    /// Pod the heartbeat came from.
    pub pod_uid: String,
    /// The payload.
    pub beat: Heartbeat,
    /// Operator clock at receipt; staleness is measured on this clock only.
    pub received_at: Timestamp,
    /// Consecutive heartbeats each within the stale threshold of the one before.
    pub streak: u32,
}

/// What of a heartbeat a user can see in `kubectl get`/`describe`; a change triggers a
/// status write, anything else waits for the report period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Visible {
    state: rbee_api::heartbeat::WorkerState,
    health: Health,
    health_reason: Option<String>,
    backend: rbee_api::Backend,
    device: Option<(u32, Option<String>)>,
    progress_decile: u8,
    vram: Option<String>,
}

impl Visible {
    /// The visible part of a heartbeat.
    pub fn of(beat: &Heartbeat) -> Self {
        Self {
            state: beat.state,
            health: beat.health,
            health_reason: beat.health_reason.clone(),
            backend: beat.backend,
            device: beat.device.as_ref().map(|d| (d.index, d.name.clone())),
            progress_decile: beat.load_progress_percent / 10,
            vram: beat
                .vram
                .map(|VramUsage { used_bytes, total_bytes }| vram_summary(used_bytes, total_bytes)),
        }
    }
}

/// Heartbeat records by worker (`namespace/name`).
#[derive(Default)]
pub struct HeartbeatStore {
    records: Mutex<HashMap<String, HeartbeatRecord>>,
}

/// Result of recording a heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored; `visible_change` says whether the status should be rewritten now.
    Accepted {
        /// Something a user sees changed (or this is the pod's first heartbeat).
        visible_change: bool,
    },
    /// Arrived sooner than the interval allows after the previous one.
    TooFrequent,
}

/// `namespace/name`.
pub fn worker_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl HeartbeatStore {
    /// The last record of a worker.
    pub fn get(&self, key: &str) -> Option<HeartbeatRecord> {
        self.lock().get(key).cloned()
    }

    /// Records a heartbeat received at `now`, unless it came less than `min_gap` after the
    /// previous one of the same pod.
    pub fn record(
        &self,
        key: &str,
        pod_uid: &str,
        beat: Heartbeat,
        now: Timestamp,
        min_gap: jiff::SignedDuration,
        stale_after: jiff::SignedDuration,
    ) -> Recorded {
        let mut records = self.lock();
        let previous = records.get(key).filter(|r| r.pod_uid == pod_uid);
        if previous.is_some_and(|prev| now.duration_since(prev.received_at) < min_gap) {
            return Recorded::TooFrequent;
        }
        let visible_change = previous.is_none_or(|p| Visible::of(&p.beat) != Visible::of(&beat));
        let streak = match previous {
            Some(p) if now.duration_since(p.received_at) < stale_after => {
                p.streak.saturating_add(1)
            }
            _ => 1,
        };
        records.insert(
            key.to_string(),
            HeartbeatRecord { pod_uid: pod_uid.to_string(), beat, received_at: now, streak },
        );
        Recorded::Accepted { visible_change }
    }

    /// Forgets a worker (deleted).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeartbeatRecord>> {
        // A panic while holding the lock cannot leave a record half-written: inserts are whole.
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
