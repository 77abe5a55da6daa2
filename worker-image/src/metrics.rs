//! The worker's Prometheus metrics (OpenMetrics text at `/metrics`), labelled by backend and
//! device.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    backend: String,
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    backend: String,
    device: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    backend: String,
    device: String,
    code: String,
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// All worker metrics; cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    labels: Labels,
    registry: Arc<Registry>,
    ttft: HistogramFamily,
    tpot: HistogramFamily,
    request_duration: HistogramFamily,
    queue_wait: HistogramFamily,
    prompt_tokens: Family<Labels, Counter>,
    generated_tokens: Family<Labels, Counter>,
    requests: Family<OutcomeLabels, Counter>,
    errors: Family<CodeLabels, Counter>,
    load_duration: Family<Labels, Gauge<f64, AtomicU64>>,
    loaded: Family<Labels, Gauge>,
}

impl Metrics {
    /// Registers every metric for `backend` and `device`.
    pub fn new(backend: &str, device: &str) -> Self {
        let mut registry = Registry::default();
        let hist = |f: fn() -> Histogram| HistogramFamily::new_with_constructor(f);
        let m = Self {
            labels: Labels { backend: backend.into(), device: device.into() },
            registry: Arc::new(Registry::default()),
            ttft: hist(latency_histogram),
            tpot: hist(latency_histogram),
            request_duration: hist(duration_histogram),
            queue_wait: hist(latency_histogram),
            prompt_tokens: Family::default(),
            generated_tokens: Family::default(),
            requests: Family::default(),
            errors: Family::default(),
            load_duration: Family::default(),
            loaded: Family::default(),
        };
        // prometheus-client appends `_total` to counter names.
        let r = &mut registry;
        r.register(
            "rbee_worker_time_to_first_token_seconds",
            "Time from request arrival to the first generated token",
            m.ttft.clone(),
        );
        r.register(
            "rbee_worker_time_per_output_token_seconds",
            "Time between consecutive generated tokens of a request",
            m.tpot.clone(),
        );
        r.register(
            "rbee_worker_request_duration_seconds",
            "Time from request arrival to its last token",
            m.request_duration.clone(),
        );
        r.register(
            "rbee_worker_queue_wait_seconds",
            "Time a request waited before generation started",
            m.queue_wait.clone(),
        );
        r.register("rbee_worker_prompt_tokens", "Prompt tokens processed", m.prompt_tokens.clone());
        r.register("rbee_worker_generated_tokens", "Tokens generated", m.generated_tokens.clone());
        r.register(
            "rbee_worker_requests",
            "Generation requests by outcome (completed, cancelled, rejected, error)",
            m.requests.clone(),
        );
        r.register(
            "rbee_worker_inference_errors",
            "Failed requests by error code",
            m.errors.clone(),
        );
        r.register(
            "rbee_worker_model_load_duration_seconds",
            "How long loading the model took",
            m.load_duration.clone(),
        );
        r.register(
            "rbee_worker_model_loaded",
            "1 when the model is loaded and serving",
            m.loaded.clone(),
        );
        Self { registry: Arc::new(registry), ..m }
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn outcome(&self, outcome: &str) -> OutcomeLabels {
        OutcomeLabels {
            backend: self.labels.backend.clone(),
            device: self.labels.device.clone(),
            outcome: outcome.into(),
        }
    }

    /// A request ended with `outcome`.
    pub fn request_finished(&self, outcome: &str, duration: Duration) {
        self.requests.get_or_create(&self.outcome(outcome)).inc();
        self.request_duration.get_or_create(&self.labels).observe(duration.as_secs_f64());
    }

    /// A request was refused before it reached the engine.
    pub fn request_rejected(&self, code: &str) {
        self.requests.get_or_create(&self.outcome("rejected")).inc();
        self.error(code);
    }

    /// Counts one error by code.
    pub fn error(&self, code: &str) {
        let labels = CodeLabels {
            backend: self.labels.backend.clone(),
            device: self.labels.device.clone(),
            code: code.into(),
        };
        self.errors.get_or_create(&labels).inc();
    }

    /// A request left the queue after `wait` and its prompt has `prompt_tokens` tokens.
    pub fn started(&self, wait: Duration, prompt_tokens: usize) {
        self.queue_wait.get_or_create(&self.labels).observe(wait.as_secs_f64());
        self.prompt_tokens.get_or_create(&self.labels).inc_by(prompt_tokens as u64);
    }

    /// The first token of a request came `ttft` after it arrived.
    pub fn first_token(&self, ttft: Duration) {
        self.ttft.get_or_create(&self.labels).observe(ttft.as_secs_f64());
        self.generated_tokens.get_or_create(&self.labels).inc();
    }

    /// A later token came `gap` after the previous one.
    pub fn next_token(&self, gap: Duration) {
        self.tpot.get_or_create(&self.labels).observe(gap.as_secs_f64());
        self.generated_tokens.get_or_create(&self.labels).inc();
    }

    /// The model finished loading after `duration`.
    pub fn model_loaded(&self, duration: Duration) {
        self.load_duration.get_or_create(&self.labels).set(duration.as_secs_f64());
        self.loaded.get_or_create(&self.labels).set(1);
    }

    /// The model is not (or no longer) serving.
    pub fn model_unloaded(&self) {
        self.loaded.get_or_create(&self.labels).set(0);
    }
}
