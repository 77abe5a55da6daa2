//! Command-line flags; every flag defaults to the environment variable the operator sets.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use rbee_api::names::env;
use rbee_api::worker::Backend;

use crate::model::{CpuKernels, LoadOptions};

/// `--backend`: the names of [`Backend`], listed in `--help`.
fn backend_parser() -> impl TypedValueParser<Value = Backend> {
    PossibleValuesParser::new(Backend::ALL.map(Backend::as_str)).try_map(|s| s.parse::<Backend>())
}

/// Candle-based LLM inference server with an OpenAI-compatible API
/// (/v1/completions, /v1/chat/completions, /v1/models), /health and /metrics.
#[derive(Parser, Debug, Clone)]
#[command(name = "llm-worker-rbee", version, about, long_about = None)]
pub struct Args {
    /// Model to serve: a .gguf file (quantized Llama-family; its tokenizer and chat template
    /// are read from the GGUF metadata), or a directory holding *.safetensors, config.json
    /// and tokenizer.json (plus tokenizer_config.json for the chat template).
    #[arg(long, env = env::MODEL_PATH, value_name = "PATH")]
    pub model: PathBuf,

    /// tokenizer.json to use instead of the one in the GGUF metadata or model directory.
    #[arg(long, env = env::TOKENIZER_PATH, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,

    /// Name the model is served under in /v1/models and responses (default: the file or
    /// directory name without extension).
    #[arg(long, env = env::MODEL_NAME)]
    pub model_name: Option<String>,

    /// Expected sha256 (64 hex digits) of the .gguf file; loading fails on a mismatch.
    #[arg(long, env = env::MODEL_SHA256, value_name = "HEX")]
    pub model_sha256: Option<String>,

    /// Most tokens (prompt + completion) per request; at most the model's own context length.
    #[arg(long, env = env::CONTEXT_LENGTH, value_name = "TOKENS")]
    pub context_length: Option<usize>,

    /// Compute backend. `cuda` needs a build with the `cuda` cargo feature.
    #[arg(long, env = env::BACKEND, value_parser = backend_parser(), default_value_t = Backend::Cpu)]
    pub backend: Backend,

    /// CUDA device ordinal (ignored by the cpu backend).
    #[arg(long, env = env::DEVICE, default_value_t = 0)]
    pub device: u32,

    /// Address the HTTP server listens on.
    #[arg(long, env = env::BIND_ADDRESS, default_value = "0.0.0.0:8080", value_name = "HOST:PORT")]
    pub bind_address: String,

    /// Compute threads of the cpu backend (default: one per physical core). Sets
    /// CANDLE_NUM_THREADS and RAYON_NUM_THREADS (the worker re-executes itself once to apply them).
    #[arg(long, env = env::THREADS)]
    pub threads: Option<usize>,

    /// Kernels that run GGUF models on the cpu backend: `rbee` (the worker's own SIMD kernels
    /// for Q4_1/Q8_0 files; other files use candle's) or `candle` (candle's for every file).
    #[arg(long, env = env::CPU_KERNELS, value_enum, default_value_t = CpuKernels::Rbee)]
    pub cpu_kernels: CpuKernels,
    /// Requests that may wait for a generation slot; more are answered 429.
    #[arg(long, env = env::MAX_QUEUE, default_value_t = 64)]
    pub max_queue: usize,

    /// Requests generated concurrently, interleaved one token each per turn.
    #[arg(long, env = env::MAX_BATCH, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,

    /// Seconds in-flight requests may take to finish after SIGTERM before they are cancelled.
    #[arg(long, env = env::SHUTDOWN_GRACE_SECONDS, default_value_t = 20)]
    pub shutdown_grace_seconds: u64,

    /// Operator URL to send heartbeats to (POST); none are sent when unset.
    #[arg(long, env = env::HEARTBEAT_URL, value_name = "URL")]
    pub heartbeat_url: Option<String>,

    /// Seconds between heartbeats (each spread by up to ±10%).
    #[arg(long, env = env::HEARTBEAT_INTERVAL_SECONDS, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_interval_seconds: u64,

    /// Projected service-account token (audience rbee-operator), re-read before each heartbeat.
    #[arg(long, env = env::HEARTBEAT_TOKEN_PATH, default_value = "/var/run/secrets/rbee.dev/heartbeat/token", value_name = "PATH")]
    pub heartbeat_token_path: PathBuf,

    /// Namespace of this worker's RbeeWorker (needed with --heartbeat-url).
    #[arg(long, env = env::WORKER_NAMESPACE)]
    pub worker_namespace: Option<String>,

    /// Name of this worker's RbeeWorker (needed with --heartbeat-url).
    #[arg(long, env = env::WORKER_NAME)]
    pub worker_name: Option<String>,

    /// Name of this pod (downward API; needed with --heartbeat-url).
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,

    /// UID of this pod (downward API; needed with --heartbeat-url).
    #[arg(long, env = env::POD_UID)]
    pub pod_uid: Option<String>,

    /// Instead of serving: run STEPS greedy steps of --model on --backend and on the CPU,
    /// print how their tokens and logits differ as JSON, and exit.
    #[arg(long, value_name = "STEPS")]
    pub verify_against_cpu: Option<usize>,
}

impl Args {
    /// Heartbeat settings, if heartbeats are asked for; an error names what is missing.
    pub fn heartbeat_config(&self) -> anyhow::Result<Option<crate::heartbeat::HeartbeatConfig>> {
        let Some(url) = &self.heartbeat_url else { return Ok(None) };
        let need = |v: &Option<String>, flag: &str, var: &str| {
            v.clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| anyhow::anyhow!("--heartbeat-url needs --{flag} (or {var})"))
        };
        let identity = rbee_api::heartbeat::WorkerIdentity {
            namespace: need(&self.worker_namespace, "worker-namespace", env::WORKER_NAMESPACE)?,
            name: need(&self.worker_name, "worker-name", env::WORKER_NAME)?,
            pod_name: need(&self.pod_name, "pod-name", env::POD_NAME)?,
            pod_uid: need(&self.pod_uid, "pod-uid", env::POD_UID)?,
        };
        let model_dir = if self.model.is_dir() {
            self.model.clone()
        } else {
            self.model.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
        };
        Ok(Some(crate::heartbeat::HeartbeatConfig {
            url: url.clone(),
            interval: std::time::Duration::from_secs(self.heartbeat_interval_seconds),
            token_path: self.heartbeat_token_path.clone(),
            identity,
            model_dir,
        }))
    }

    /// Device label for logs, metrics and /health: `cpu` or `cuda:N`.
    pub fn device_label(&self) -> String {
        match self.backend {
            Backend::Cpu => "cpu".into(),
            Backend::Cuda => format!("cuda:{}", self.device),
        }
    }

    /// How to load the model the flags name.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            model_path: self.model.clone(),
            tokenizer_path: self.tokenizer.clone(),
            model_name: self.model_name.clone(),
            sha256: self.model_sha256.clone(),
            context_length: self.context_length,
            cpu_kernels: self.cpu_kernels,
        }
    }
}
