//! Safetensors Llama-family models: a directory with `*.safetensors`, `config.json` and
//! `tokenizer.json` (and optionally `tokenizer_config.json` for the chat template).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{self, LlamaConfig};

use super::{
    LoadOptions, ModelInfo, ProgressReader, Weights, load_tokenizer_json, model_name, stop_ids,
};
use crate::WorkerError;

/// Loads a safetensors model directory as F32. Progress covers reading the weight files.
pub(super) fn load(
    opts: &LoadOptions,
    device: &Device,
    progress: &dyn Fn(u8),
) -> Result<(ModelInfo, Weights), WorkerError> {
    let dir = opts.model_path.as_path();
    let config_path = dir.join("config.json");
    let raw = read_json(&config_path)?;
    let llama_config: LlamaConfig = serde_json::from_value(raw.clone())
        .map_err(|e| WorkerError::load(&config_path, format!("not a Llama config: {e}")))?;
    let config = llama_config.into_config(false);
    let tokenizer_path = opts.tokenizer_path.clone().unwrap_or_else(|| dir.join("tokenizer.json"));
    let tokenizer = load_tokenizer_json(&tokenizer_path)?;

    let files = weight_files(dir)?;
    let total: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let mut done = 0u64;
    let mut tensors = HashMap::new();
    for path in &files {
        let file = File::open(path).map_err(|e| WorkerError::load(path, e))?;
        let len = file.metadata().map_err(|e| WorkerError::load(path, e))?.len();
        let base = done;
        let scaled =
            |p: u8| progress(((base + len * p as u64 / 100) * 100 / total.max(1)).min(99) as u8);
        let mut buf = Vec::with_capacity(len as usize);
        ProgressReader::new(file, len, &scaled)
            .read_to_end(&mut buf)
            .map_err(|e| WorkerError::load(path, e))?;
        let loaded = candle_core::safetensors::load_buffer(&buf, device).map_err(|e| {
            WorkerError::load(path, format!("not a valid safetensors file (truncated?): {e}"))
        })?;
        tensors.extend(loaded);
        done += len;
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let model = llama::Llama::load(vb, &config)
        .map_err(|e| WorkerError::load(dir, format!("weights do not match config.json: {e}")))?;

    let tok_config = read_json(&dir.join("tokenizer_config.json")).ok();
    let tok_str = |key: &str| {
        tok_config.as_ref().and_then(|c| c.get(key)).and_then(token_text).unwrap_or_default()
    };
    let eos_ids: Vec<u32> = match raw.get("eos_token_id") {
        Some(serde_json::Value::Array(a)) => {
            a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect()
        }
        Some(v) => v.as_u64().map(|v| v as u32).into_iter().collect(),
        None => Vec::new(),
    };
    let add_bos = tok_config
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let bos_token = tok_str("bos_token");
    let limit = config.max_position_embeddings;
    let info = ModelInfo {
        name: model_name(opts),
        path: dir.to_path_buf(),
        format: "safetensors",
        chat_template: tok_config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        add_bos_id: if add_bos { tokenizer.token_to_id(&bos_token) } else { None },
        eos_token: tok_str("eos_token"),
        bos_token,
        stop_token_ids: stop_ids(&tokenizer, &eos_ids),
        context_length: opts.context_length.map_or(limit, |c| c.min(limit)),
        tokenizer,
    };
    let weights = Weights::Llama { model: Box::new(model), config: Box::new(config) };
    Ok((info, weights))
}

/// `bos_token` in tokenizer_config.json is a string or `{"content": ...}`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str())).map(str::to_string)
}

fn read_json(path: &Path) -> Result<serde_json::Value, WorkerError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorkerError::load(path, e))?;
    serde_json::from_str(&text).map_err(|e| WorkerError::load(path, format!("invalid JSON: {e}")))
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, WorkerError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| WorkerError::load(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(WorkerError::load(dir, "no *.safetensors files in the model directory"));
    }
    Ok(files)
}
