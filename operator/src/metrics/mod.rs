//! Prometheus metrics of the operator and of the workers it watches.

mod workers;

use std::collections::HashSet;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use workers::{WorkerLabels, WorkerSeries};

use crate::leader::Leadership;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    category: String,
    call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Per-worker series, kept for the term they were written in.
    pub workers: WorkerSeries,
    leadership: Leadership,
    reconcile_duration: Histogram,
    reconcile_errors: Family<ErrorLabels, Counter>,
    heartbeats: Family<ResultLabels, Counter>,
    heartbeat_duration: Histogram,
    heartbeat_clock_skew: Histogram,
    token_reviews: Counter,
    status_writes: Counter,
    leader: Gauge,
}

impl Metrics {
    /// Registers every metric; per-worker series follow `leadership`.
    pub fn new(leadership: Leadership) -> Self {
        let mut registry = Registry::default();
        let m = Self {
            workers: WorkerSeries::new(leadership.clone(), &mut registry),
            leadership,
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            reconcile_errors: Family::default(),
            heartbeats: Family::default(),
            heartbeat_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            heartbeat_clock_skew: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            token_reviews: Counter::default(),
            status_writes: Counter::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        m.register(&mut registry);
        Self { registry, ..m }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "rbee_operator_reconcile_duration_seconds",
            "Time to reconcile one RbeeWorker",
            self.reconcile_duration.clone(),
        );
        r.register(
            "rbee_operator_reconcile_errors",
            "Failed reconciliations by error category and failed call",
            self.reconcile_errors.clone(),
        );
        r.register(
            "rbee_operator_heartbeats",
            "Heartbeats received, by result",
            self.heartbeats.clone(),
        );
        r.register(
            "rbee_operator_heartbeat_duration_seconds",
            "Time to handle one heartbeat",
            self.heartbeat_duration.clone(),
        );
        r.register(
            "rbee_operator_heartbeat_clock_skew_seconds",
            "Absolute difference between a worker's sent-at time and the operator's receive time",
            self.heartbeat_clock_skew.clone(),
        );
        r.register(
            "rbee_operator_token_reviews",
            "TokenReview requests made to the API server (cache misses)",
            self.token_reviews.clone(),
        );
        r.register(
            "rbee_operator_status_writes",
            "RbeeWorker status writes",
            self.status_writes.clone(),
        );
        r.register(
            "rbee_operator_leader",
            "Whether this operator process is the leader",
            self.leader.clone(),
        );
    }

    /// Follows leadership until the process ends: the leader gauge, and per-worker series
    /// dropped as soon as a term ends.
    pub async fn follow_leadership(&self) {
        let mut leadership = self.leadership.clone();
        loop {
            self.leader.set(i64::from(leadership.current().is_some()));
            self.workers.follow_leadership();
            if !leadership.changed().await {
                return;
            }
        }
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

    /// Counts a failed reconciliation by error category and the call that failed.
    pub fn reconcile_failed(&self, category: &str, call: &str) {
        let labels = ErrorLabels { category: category.into(), call: call.into() };
        self.reconcile_errors.get_or_create(&labels).inc();
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
}

fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
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
    use rbee_api::RbeeWorkerStatus;

    use super::*;
    use crate::leader::Term;

    fn term(number: i32) -> Term {
        Term { number, since: jiff::Timestamp::UNIX_EPOCH }
    }

    fn ready() -> RbeeWorkerStatus {
        serde_json::from_value(serde_json::json!({
            "phase": "Ready",
            "heartbeat": {"lastHeartbeatTime": "2026-11-27T10:00:00Z"},
            "vram": {"usedBytes": 1, "totalBytes": 2, "limitBytes": 2}
        }))
        .unwrap_or_default()
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let m = Metrics::new(Leadership::fixed(None));
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
        let m = Metrics::new(Leadership::fixed(Some(term(1))));
        let w = WorkerLabels { namespace: "ns".into(), worker: "w".into() };
        m.workers.observe(&term(1), &w, &ready());
        m.workers.restarted(&term(1), &w, "HeartbeatStale");
        m.reconcile_failed("api", "CreatePod");
        m.heartbeat_handled("accepted", 0.001);
        m.clock_skew(0.1);
        m.token_review();
        m.status_written();
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

    /// A replica that stops leading drops every per-worker series at once, and writes of the
    /// ended term that finish later are not published.
    #[test]
    fn a_follower_exports_no_per_worker_series() {
        let (publisher, leadership) = Leadership::channel();
        let m = Metrics::new(leadership);
        publisher.send_replace(Some(term(7)));
        let w = WorkerLabels { namespace: "ns".into(), worker: "w".into() };
        m.workers.observe(&term(7), &w, &ready());
        m.workers.restarted(&term(7), &w, "HeartbeatStale");
        let leading = m.encode();
        assert!(leading.contains("rbee_worker_ready{"), "{leading}");
        assert!(leading.contains("rbee_operator_workers{phase=\"Ready\"} 1"), "{leading}");

        publisher.send_replace(None);
        m.workers.follow_leadership();
        m.workers.observe(&term(7), &w, &ready());
        m.workers.heartbeat_accepted(&term(7), &w, jiff::Timestamp::UNIX_EPOCH, None);
        let following = m.encode();
        let samples = following.lines().filter(|l| l.starts_with("rbee_worker_"));
        assert_eq!(samples.count(), 0, "{following}");
        assert!(following.contains("rbee_operator_workers{phase=\"Ready\"} 0"), "{following}");
        assert!(m.workers.known().is_empty());
    }
}
