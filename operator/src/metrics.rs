//! Prometheus metrics of the operator and of the workers it watches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rbee_api::{RbeeWorkerStatus, WorkerPhase};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    worker_ready: Family<WorkerLabels, Gauge>,
    worker_stale: Family<WorkerLabels, Gauge>,
    worker_last_heartbeat: Family<WorkerLabels, FloatGauge>,
    worker_restarts: Family<RestartLabels, Counter>,
    worker_restart_limit_exceeded: Family<WorkerLabels, Gauge>,
    worker_backend_mismatch: Family<WorkerLabels, Gauge>,
    worker_vram_used: Family<WorkerLabels, Gauge>,
    worker_vram_total: Family<WorkerLabels, Gauge>,
    worker_vram_limit: Family<WorkerLabels, Gauge>,
    workers_by_phase: Family<PhaseLabels, Gauge>,
    reconcile_duration: Histogram,
    reconcile_errors: Family<CategoryLabels, Counter>,
    heartbeats: Family<ResultLabels, Counter>,
    heartbeat_duration: Histogram,
    heartbeat_clock_skew: Histogram,
    token_reviews: Counter,
    status_writes: Counter,
    leader: Gauge,
    phases: Mutex<HashMap<WorkerLabels, WorkerPhase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            worker_ready: Family::default(),
            worker_stale: Family::default(),
            worker_last_heartbeat: Family::default(),
            worker_restarts: Family::default(),
            worker_restart_limit_exceeded: Family::default(),
            worker_backend_mismatch: Family::default(),
            worker_vram_used: Family::default(),
            worker_vram_total: Family::default(),
            worker_vram_limit: Family::default(),
            workers_by_phase: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            reconcile_errors: Family::default(),
            heartbeats: Family::default(),
            heartbeat_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            heartbeat_clock_skew: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            token_reviews: Counter::default(),
            status_writes: Counter::default(),
            leader: Gauge::default(),
            phases: Mutex::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "rbee_worker_ready",
            "Whether the worker serves requests (1) or not (0)",
            m.worker_ready.clone(),
        );
        r.register(
            "rbee_worker_stale",
            "Whether the worker's heartbeat is stale",
            m.worker_stale.clone(),
        );
        r.register(
            "rbee_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the last accepted heartbeat",
            m.worker_last_heartbeat.clone(),
        );
        r.register(
            "rbee_worker_restarts",
            "Restarts made by the operator, by reason",
            m.worker_restarts.clone(),
        );
        r.register(
            "rbee_worker_restart_limit_exceeded",
            "Whether maxRestarts is reached and the operator stopped restarting",
            m.worker_restart_limit_exceeded.clone(),
        );
        r.register(
            "rbee_worker_backend_mismatch",
            "Whether the worker runs on another backend than requested",
            m.worker_backend_mismatch.clone(),
        );
        r.register(
            "rbee_worker_vram_used_bytes",
            "Accelerator memory used by the worker",
            m.worker_vram_used.clone(),
        );
        r.register(
            "rbee_worker_vram_total_bytes",
            "Accelerator memory of the worker's device",
            m.worker_vram_total.clone(),
        );
        r.register(
            "rbee_worker_vram_limit_bytes",
            "Accelerator memory budget of the worker (spec.limits.vramBytes)",
            m.worker_vram_limit.clone(),
        );
        r.register("rbee_operator_workers", "Workers by phase", m.workers_by_phase.clone());
        r.register(
            "rbee_operator_reconcile_duration_seconds",
            "Time to reconcile one RbeeWorker",
            m.reconcile_duration.clone(),
        );
        r.register(
            "rbee_operator_reconcile_errors",
            "Failed reconciliations by error category",
            m.reconcile_errors.clone(),
        );
        r.register(
            "rbee_operator_heartbeats",
            "Heartbeats received, by result",
            m.heartbeats.clone(),
        );
        r.register(
            "rbee_operator_heartbeat_duration_seconds",
            "Time to handle one heartbeat",
            m.heartbeat_duration.clone(),
        );
        r.register(
            "rbee_operator_heartbeat_clock_skew_seconds",
            "Absolute difference between a worker's sent-at time and the operator's receive time",
            m.heartbeat_clock_skew.clone(),
        );
        r.register(
            "rbee_operator_token_reviews",
            "TokenReview requests made to the API server (cache misses)",
            m.token_reviews.clone(),
        );
        r.register(
            "rbee_operator_status_writes",
            "RbeeWorker status writes",
            m.status_writes.clone(),
        );
        r.register(
            "rbee_operator_leader",
            "Whether this operator process is the leader",
            m.leader.clone(),
        );
        for phase in WorkerPhase::ALL {
            m.phase_gauge(phase);
        }
        Self { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The same metrics in the Prometheus text format 0.0.4, for scrapers that do not ask for
    /// OpenMetrics (promtool, curl): counter families carry their `_total` name there.
    pub fn encode_prometheus_text(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// Starts timing one reconciliation; the time is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer { start: Instant::now(), histogram: &self.reconcile_duration }
    }

    /// Counts a failed reconciliation.
    pub fn reconcile_failed(&self, category: &str) {
        self.reconcile_errors.get_or_create(&CategoryLabels { category: category.into() }).inc();
    }

    /// Counts a heartbeat by result and records how long it took.
    pub fn heartbeat_handled(&self, result: &str, seconds: f64) {
        self.heartbeats.get_or_create(&ResultLabels { result: result.into() }).inc();
        self.heartbeat_duration.observe(seconds);
    }

    /// Records a worker's clock skew.
    pub fn clock_skew(&self, seconds: f64) {
        self.heartbeat_clock_skew.observe(seconds.abs());
    }

    /// Counts a TokenReview request.
    pub fn token_review(&self) {
        self.token_reviews.inc();
    }

    /// Counts a status write.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts a restart.
    pub fn restarted(&self, worker: &WorkerLabels, reason: &str) {
        self.worker_restarts
            .get_or_create(&RestartLabels {
                namespace: worker.namespace.clone(),
                worker: worker.worker.clone(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Refreshes what an accepted heartbeat reports, between the reconciles that write it.
    pub fn heartbeat_accepted(
        &self,
        labels: &WorkerLabels,
        at: jiff::Timestamp,
        vram: Option<rbee_api::heartbeat::VramUsage>,
    ) {
        let bytes = |b: u64| Some(i64::try_from(b).unwrap_or(i64::MAX));
        self.set_heartbeat(
            labels,
            Some(at),
            vram.and_then(|v| bytes(v.used_bytes)),
            vram.and_then(|v| bytes(v.total_bytes)),
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
            self.worker_last_heartbeat
                .get_or_create(labels)
                .set(t.as_millisecond() as f64 / 1000.0);
        }
        if let Some(used) = vram_used {
            self.worker_vram_used.get_or_create(labels).set(used);
        }
        if let Some(total) = vram_total {
            self.worker_vram_total.get_or_create(labels).set(total);
        }
    }

    /// Publishes a worker's status as gauges.
    pub fn observe_worker(&self, labels: &WorkerLabels, status: &RbeeWorkerStatus) {
        let cond = |t: &str, reason: Option<&str>| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True" && reason.is_none_or(|r| c.reason == r))
        };
        use rbee_api::conditions::{reasons, types};
        self.worker_ready.get_or_create(labels).set(i64::from(cond(types::READY, None)));
        self.worker_stale
            .get_or_create(labels)
            .set(i64::from(status.phase == Some(WorkerPhase::Stale)));
        self.worker_restart_limit_exceeded
            .get_or_create(labels)
            .set(i64::from(cond(types::DEGRADED, Some(reasons::RESTART_LIMIT_EXCEEDED))));
        self.worker_backend_mismatch
            .get_or_create(labels)
            .set(i64::from(cond(types::DEGRADED, Some(reasons::BACKEND_MISMATCH))));
        let vram = status.vram.as_ref();
        self.set_heartbeat(
            labels,
            status.heartbeat.as_ref().and_then(|h| h.last_heartbeat_time.as_ref()).map(|t| t.0),
            vram.and_then(|v| v.used_bytes),
            vram.and_then(|v| v.total_bytes),
        );
        if let Some(limit) = vram.and_then(|v| v.limit_bytes) {
            self.worker_vram_limit.get_or_create(labels).set(limit);
        }
        if let Some(phase) = status.phase {
            let mut phases = self.phases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = phases.insert(labels.clone(), phase);
            if before != Some(phase) {
                if let Some(before) = before {
                    self.phase_gauge(before).dec();
                }
                self.phase_gauge(phase).inc();
            }
        }
    }

    /// Drops every series of a worker that no longer exists.
    pub fn forget_worker(&self, labels: &WorkerLabels) {
        for family in [
            &self.worker_ready,
            &self.worker_stale,
            &self.worker_restart_limit_exceeded,
            &self.worker_backend_mismatch,
            &self.worker_vram_used,
            &self.worker_vram_total,
            &self.worker_vram_limit,
        ] {
            family.remove(labels);
        }
        self.worker_last_heartbeat.remove(labels);
        let mut phases = self.phases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(before) = phases.remove(labels) {
            self.phase_gauge(before).dec();
        }
    }

    /// Workers with published series.
    pub fn known_workers(&self) -> Vec<WorkerLabels> {
        self.phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn phase_gauge(&self, phase: WorkerPhase) -> Gauge {
        self.workers_by_phase.get_or_create(&PhaseLabels { phase: phase.as_str().into() }).clone()
    }
}

fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Records the reconcile duration on drop.
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let m = Metrics::new();
        m.status_written();
        let text = m.encode_prometheus_text();
        assert!(text.contains("# TYPE rbee_operator_status_writes_total counter"), "{text}");
        assert!(text.contains("# HELP rbee_operator_status_writes_total "), "{text}");
        assert!(text.contains("rbee_operator_status_writes_total 1"), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(m.encode().ends_with("# EOF\n"));
    }

    /// Alerts and dashboards may only use what charts/rbee-operator/metrics.txt lists; the
    /// operator exports exactly its operator families.
    #[test]
    fn exports_exactly_the_documented_families() {
        let m = Metrics::new();
        let w = WorkerLabels { namespace: "ns".into(), worker: "w".into() };
        let status: RbeeWorkerStatus = serde_json::from_value(serde_json::json!({
            "phase": "Ready",
            "heartbeat": {"lastHeartbeatTime": "2026-11-27T10:00:00Z"},
            "vram": {"usedBytes": 1, "totalBytes": 2, "limitBytes": 2}
        }))
        .unwrap_or_default();
        m.observe_worker(&w, &status);
        m.restarted(&w, "HeartbeatStale");
        m.reconcile_failed("api");
        m.heartbeat_handled("accepted", 0.001);
        m.clock_skew(0.1);
        m.token_review();
        m.status_written();
        m.set_leader(true);
        drop(m.reconcile_timer());
        let text = m.encode_prometheus_text();
        let exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/rbee-operator/metrics.txt"
        ))
        .unwrap_or_default();
        let mut section = "";
        let documented: std::collections::BTreeSet<String> = doc
            .lines()
            .filter_map(|l| {
                if let Some(c) = l.strip_prefix('#') {
                    section = if c.trim().starts_with("operator") { "operator" } else { "" };
                    return None;
                }
                (section == "operator" && !l.trim().is_empty()).then(|| l.trim().to_string())
            })
            .collect();
        assert_eq!(exported, documented);
    }
}
