//! Per-worker series. They belong to the term they were written in: a process that stops
//! leading drops them at once and exports none while it follows, so dashboards that take the
//! `max` over replicas see the leader's values only.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rbee_api::conditions::{reasons, types};
use rbee_api::heartbeat::VramUsage;
use rbee_api::{RbeeWorkerStatus, WorkerPhase};

use crate::leader::{Leadership, Term};

/// Labels of per-worker series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// Namespace of the RbeeWorker.
    pub namespace: String,
    /// Name of the RbeeWorker.
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    namespace: String,
    worker: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The series' term and the phase of each worker that has series.
#[derive(Default)]
struct Published {
    term: Option<Term>,
    phases: HashMap<WorkerLabels, WorkerPhase>,
}

/// Every per-worker series, and the worker count by phase.
pub struct WorkerSeries {
    leadership: Leadership,
    ready: Family<WorkerLabels, Gauge>,
    stale: Family<WorkerLabels, Gauge>,
    last_heartbeat: Family<WorkerLabels, FloatGauge>,
    restarts: Family<RestartLabels, Counter>,
    restart_limit_exceeded: Family<WorkerLabels, Gauge>,
    backend_mismatch: Family<WorkerLabels, Gauge>,
    vram_used: Family<WorkerLabels, Gauge>,
    vram_total: Family<WorkerLabels, Gauge>,
    vram_limit: Family<WorkerLabels, Gauge>,
    by_phase: Family<PhaseLabels, Gauge>,
    published: Mutex<Published>,
}

impl WorkerSeries {
    /// Series that follow `leadership`, registered in `r`.
    pub fn new(leadership: Leadership, r: &mut Registry) -> Self {
        let s = Self {
            leadership,
            ready: Family::default(),
            stale: Family::default(),
            last_heartbeat: Family::default(),
            restarts: Family::default(),
            restart_limit_exceeded: Family::default(),
            backend_mismatch: Family::default(),
            vram_used: Family::default(),
            vram_total: Family::default(),
            vram_limit: Family::default(),
            by_phase: Family::default(),
            published: Mutex::default(),
        };
        s.register(r);
        for phase in WorkerPhase::ALL {
            s.phase_gauge(phase).set(0);
        }
        s
    }

    fn register(&self, r: &mut Registry) {
        let gauges = [
            ("rbee_worker_ready", "Whether the worker serves requests (1) or not (0)", &self.ready),
            ("rbee_worker_stale", "Whether the worker's heartbeat is stale", &self.stale),
            (
                "rbee_worker_restart_limit_exceeded",
                "Whether maxRestarts is reached and the operator stopped restarting",
                &self.restart_limit_exceeded,
            ),
            (
                "rbee_worker_backend_mismatch",
                "Whether the worker runs on another backend than requested",
                &self.backend_mismatch,
            ),
            (
                "rbee_worker_vram_used_bytes",
                "Accelerator memory used by the worker",
                &self.vram_used,
            ),
            (
                "rbee_worker_vram_total_bytes",
                "Accelerator memory of the worker's device",
                &self.vram_total,
            ),
            (
                "rbee_worker_vram_limit_bytes",
                "Accelerator memory budget of the worker (spec.limits.vramBytes)",
                &self.vram_limit,
            ),
        ];
        for (name, help, family) in gauges {
            r.register(name, help, family.clone());
        }
        r.register(
            "rbee_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the last accepted heartbeat",
            self.last_heartbeat.clone(),
        );
        r.register(
            "rbee_worker_restarts",
            "Restarts made by the operator, by reason",
            self.restarts.clone(),
        );
        r.register("rbee_operator_workers", "Workers by phase", self.by_phase.clone());
    }

    fn lock(&self) -> MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The series, reset when the term changed; `None` when `term` is not (or no longer) current.
    fn in_term(&self, term: &Term) -> Option<MutexGuard<'_, Published>> {
        let mut published = self.lock();
        self.follow(&mut published);
        (published.term.as_ref() == Some(term)).then_some(published)
    }

    /// Drops every series when the term they were written in has ended.
    pub fn follow_leadership(&self) {
        let mut published = self.lock();
        self.follow(&mut published);
    }

    fn follow(&self, published: &mut Published) {
        let current = self.leadership.current();
        if published.term == current {
            return;
        }
        published.term = current;
        published.phases.clear();
        for family in self.gauges() {
            family.clear();
        }
        self.last_heartbeat.clear();
        self.restarts.clear();
        for phase in WorkerPhase::ALL {
            self.phase_gauge(phase).set(0);
        }
    }

    fn gauges(&self) -> [&Family<WorkerLabels, Gauge>; 7] {
        [
            &self.ready,
            &self.stale,
            &self.restart_limit_exceeded,
            &self.backend_mismatch,
            &self.vram_used,
            &self.vram_total,
            &self.vram_limit,
        ]
    }

    fn remove(&self, labels: &WorkerLabels) {
        for family in self.gauges() {
            family.remove(labels);
        }
        self.last_heartbeat.remove(labels);
    }

    /// Counts a restart made in `term`.
    pub fn restarted(&self, term: &Term, worker: &WorkerLabels, reason: &str) {
        let Some(_published) = self.in_term(term) else { return };
        let labels = RestartLabels {
            namespace: worker.namespace.clone(),
            worker: worker.worker.clone(),
            reason: reason.into(),
        };
        self.restarts.get_or_create(&labels).inc();
    }

    /// Refreshes what a heartbeat accepted in `term` reports, between the reconciles that
    /// write it.
    pub fn heartbeat_accepted(
        &self,
        term: &Term,
        labels: &WorkerLabels,
        at: jiff::Timestamp,
        vram: Option<VramUsage>,
    ) {
        let Some(_published) = self.in_term(term) else { return };
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        self.set_heartbeat(
            labels,
            Some(at),
            vram.map(|v| bytes(v.used_bytes)),
            vram.map(|v| bytes(v.total_bytes)),
        );
    }

    /// The gauges both an accepted heartbeat and a reconciled status refresh.
    fn set_heartbeat(
        &self,
        labels: &WorkerLabels,
        at: Option<jiff::Timestamp>,
        vram_used: Option<i64>,
        vram_total: Option<i64>,
    ) {
        if let Some(t) = at {
            self.last_heartbeat.get_or_create(labels).set(t.as_millisecond() as f64 / 1000.0);
        }
        if let Some(used) = vram_used {
            self.vram_used.get_or_create(labels).set(used);
        }
        if let Some(total) = vram_total {
            self.vram_total.get_or_create(labels).set(total);
        }
    }

    /// Publishes a status reconciled in `term` as gauges.
    pub fn observe(&self, term: &Term, labels: &WorkerLabels, status: &RbeeWorkerStatus) {
        let Some(mut published) = self.in_term(term) else { return };
        let holds = |t: &str, reason: Option<&str>| {
            i64::from(status.conditions.iter().any(|c| {
                c.type_ == t && c.status == "True" && reason.is_none_or(|r| c.reason == r)
            }))
        };
        self.ready.get_or_create(labels).set(holds(types::READY, None));
        let stale = status.phase == Some(WorkerPhase::Stale);
        self.stale.get_or_create(labels).set(i64::from(stale));
        let limit = holds(types::DEGRADED, Some(reasons::RESTART_LIMIT_EXCEEDED));
        self.restart_limit_exceeded.get_or_create(labels).set(limit);
        let mismatch = holds(types::DEGRADED, Some(reasons::BACKEND_MISMATCH));
        self.backend_mismatch.get_or_create(labels).set(mismatch);
        let vram = status.vram.as_ref();
        let last = status.heartbeat.as_ref().and_then(|h| h.last_heartbeat_time.as_ref());
        let (used, total) = (vram.and_then(|v| v.used_bytes), vram.and_then(|v| v.total_bytes));
        self.set_heartbeat(labels, last.map(|t| t.0), used, total);
        if let Some(limit) = vram.and_then(|v| v.limit_bytes) {
            self.vram_limit.get_or_create(labels).set(limit);
        }
        if let Some(phase) = status.phase {
            let before = published.phases.insert(labels.clone(), phase);
            if before != Some(phase) {
                if let Some(before) = before {
                    self.phase_gauge(before).dec();
                }
                self.phase_gauge(phase).inc();
            }
        }
    }

    /// Drops every series of a worker that no longer exists.
    pub fn forget(&self, labels: &WorkerLabels) {
        let mut published = self.lock();
        self.remove(labels);
        if let Some(before) = published.phases.remove(labels) {
            self.phase_gauge(before).dec();
        }
    }

    /// Workers with published series.
    pub fn known(&self) -> Vec<WorkerLabels> {
        self.lock().phases.keys().cloned().collect()
    }

    fn phase_gauge(&self, phase: WorkerPhase) -> Gauge {
        self.by_phase.get_or_create(&PhaseLabels { phase: phase.as_str().into() }).clone()
    }
}
