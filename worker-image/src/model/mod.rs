//! Loading Llama-family models from local files: GGUF (quantized) or safetensors.

mod gguf;
mod kernels;
mod llama_cpu;
mod progress;
mod safetensors;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, quantized_llama};
use rbee_api::worker::Backend;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::WorkerError;
pub use progress::ProgressReader;

/// What the model needs from its user, read-only and shared with the HTTP handlers.
#[derive(Debug)]
pub struct ModelInfo {
    /// Name served in `/v1/models` and responses.
    pub name: String,
    /// Where the weights came from.
    pub path: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Jinja chat template, if the model ships one.
    pub chat_template: Option<String>,
    /// Text of the BOS token, passed to the chat template.
    pub bos_token: String,
    /// Text of the EOS token, passed to the chat template.
    pub eos_token: String,
    /// Token prepended to every prompt, when the model wants one.
    pub add_bos_id: Option<u32>,
    /// Tokens that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Most tokens (prompt + generated) one sequence may hold.
    pub context_length: usize,
}

impl ModelInfo {
    /// Tokenizes `text`, matching special tokens, prepending BOS when the model wants it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, WorkerError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| WorkerError::InvalidRequest(format!("cannot tokenize prompt: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.add_bos_id);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A `.gguf` file or a directory with `*.safetensors`, `config.json`, `tokenizer.json`.
    pub model_path: PathBuf,
    /// tokenizer.json overriding the one next to / inside the model.
    pub tokenizer_path: Option<PathBuf>,
    /// Name to serve the model under; defaults to the file name without extension.
    pub model_name: Option<String>,
    /// Expected sha256 (hex) of the model file.
    pub sha256: Option<String>,
    /// Context length override.
    pub context_length: Option<usize>,
    /// Which kernels run GGUF models on the CPU.
    pub cpu_kernels: CpuKernels,
}

/// Which code runs quantized (GGUF) models on the CPU backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuKernels {
    /// The worker's own SIMD kernels, for the quant formats they cover (Q4_1, Q8_0); other
    /// files fall back to candle.
    #[default]
    Rbee,
    /// candle's quantized_llama for every file.
    Candle,
}

/// Weights of one of the supported architectures.
enum Weights {
    Gguf(Box<quantized_llama::ModelWeights>),
    GgufCpu(Box<llama_cpu::LlamaCpu>),
    Llama { model: Box<llama::Llama>, config: Box<llama::Config> },
}

/// A loaded model; lives on the engine thread.
pub struct LoadedModel {
    info: Arc<ModelInfo>,
    weights: Weights,
    device: Device,
}

/// The KV cache of one sequence; sequences never share one.
pub struct SequenceCache(CacheInner);

enum CacheInner {
    // quantized_llama keeps its cache inside the weights; a clone shares the weight
    // tensors (Arc) and starts with an empty cache.
    Gguf(Box<quantized_llama::ModelWeights>),
    GgufCpu(llama_cpu::KvCache),
    Llama(Box<llama::Cache>),
}

impl LoadedModel {
    /// The shareable description of the model.
    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
    }

    /// An empty KV cache for a new sequence.
    pub fn new_cache(&self) -> Result<SequenceCache, WorkerError> {
        Ok(SequenceCache(match &self.weights {
            Weights::Gguf(w) => {
                let mut w = w.clone();
                w.clear_kv_cache();
                CacheInner::Gguf(w)
            }
            Weights::GgufCpu(m) => CacheInner::GgufCpu(m.new_cache()),
            Weights::Llama { config, .. } => CacheInner::Llama(Box::new(llama::Cache::new(
                true,
                DType::F32,
                config,
                &self.device,
            )?)),
        }))
    }

    /// Runs `tokens` at positions `index_pos..` through the model; returns the f32 logits
    /// of the last position.
    pub fn forward(
        &self,
        cache: &mut SequenceCache,
        tokens: &[u32],
        index_pos: usize,
    ) -> Result<Tensor, WorkerError> {
        let input = || Tensor::new(tokens, &self.device)?.unsqueeze(0);
        let logits = match (&self.weights, &mut cache.0) {
            (Weights::GgufCpu(m), CacheInner::GgufCpu(c)) => {
                let logits = m.forward(c, tokens, index_pos).map_err(WorkerError::Inference)?;
                return Ok(Tensor::from_vec(logits, m.n_vocab(), &self.device)?);
            }
            (Weights::Gguf(_), CacheInner::Gguf(w)) => w.forward(&input()?, index_pos)?,
            (Weights::Llama { model, .. }, CacheInner::Llama(c)) => {
                model.forward(&input()?, index_pos, c)?
            }
            _ => return Err(WorkerError::Inference("KV cache of another model".into())),
        };
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }
}

/// The candle device for `backend` and ordinal `device`.
pub fn device_for(backend: Backend, device: u32) -> Result<Device, WorkerError> {
    match backend {
        Backend::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            crate::resources::check_cuda_device(device).map_err(WorkerError::Backend)?;
            Device::new_cuda(device as usize).map_err(|e| {
                WorkerError::Backend(format!(
                    "--backend cuda: cannot open CUDA device {device}: {e}"
                ))
            })
        }
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(WorkerError::Backend(format!(
            "--backend cuda (device {device}) was requested, but this llm-worker-rbee was built \
             without CUDA support: use --backend cpu, or the CUDA image (cargo feature `cuda`)"
        ))),
    }
}

/// Loads the model at `opts.model_path`, reporting progress (0..=100) through `progress`.
pub fn load(
    opts: &LoadOptions,
    device: &Device,
    progress: &dyn Fn(u8),
) -> Result<LoadedModel, WorkerError> {
    let path = &opts.model_path;
    let meta = std::fs::metadata(path).map_err(|e| {
        WorkerError::load(path, format!("{e}: set --model to a .gguf file or a model directory"))
    })?;
    let (info, weights) = if meta.is_dir() {
        safetensors::load(opts, device, progress)?
    } else {
        let hashed = match &opts.sha256 {
            Some(expected) => {
                verify_sha256(path, expected, &|p| progress(p / 2))?;
                true
            }
            None => false,
        };
        let base = if hashed { 50 } else { 0 };
        let span = 100 - base;
        gguf::load(opts, device, &|p| progress(base + (p as u16 * span as u16 / 100) as u8))?
    };
    Ok(LoadedModel { info: Arc::new(info), weights, device: device.clone() })
}

/// Checks that the file at `path` has sha256 `expected` (hex).
pub fn verify_sha256(
    path: &Path,
    expected: &str,
    progress: &dyn Fn(u8),
) -> Result<(), WorkerError> {
    let expected = expected.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WorkerError::load(
            path,
            format!("--model-sha256 '{expected}' is not 64 hex digits"),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| WorkerError::load(path, e))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = ProgressReader::new(file, total, progress);
    let mut hasher = Sha256::new();
    std::io::copy(&mut reader, &mut hasher).map_err(|e| WorkerError::load(path, e))?;
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != expected {
        return Err(WorkerError::load(
            path,
            format!("sha256 mismatch: file has {got}, --model-sha256 expects {expected}"),
        ));
    }
    Ok(())
}

/// Name of the model: the explicit one, or the file name without extension.
fn model_name(opts: &LoadOptions) -> String {
    opts.model_name.clone().unwrap_or_else(|| {
        opts.model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    })
}

/// Ids of the well-known end-of-turn tokens present in `tokenizer`, plus `extra`.
fn stop_ids(tokenizer: &Tokenizer, extra: &[u32]) -> Vec<u32> {
    let mut ids: Vec<u32> = extra.to_vec();
    for t in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>"] {
        if let Some(id) = tokenizer.token_to_id(t) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn load_tokenizer_json(path: &Path) -> Result<Tokenizer, WorkerError> {
    Tokenizer::from_file(path)
        .map_err(|e| WorkerError::load(path, format!("invalid tokenizer: {e}")))
}
