//! GGUF files: quantized Llama-family weights, tokenizer and chat template in one file.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Value};
use candle_transformers::models::quantized_llama::{self, ModelWeights};

use super::llama_cpu::LlamaCpu;
use super::{
    CpuKernels, LoadOptions, ModelInfo, ProgressReader, Weights, kernels, load_tokenizer_json,
    model_name, stop_ids,
};
use crate::WorkerError;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Loads a GGUF file. Progress covers reading the tensor data.
pub(super) fn load(
    opts: &LoadOptions,
    device: &Device,
    progress: &dyn Fn(u8),
) -> Result<(ModelInfo, Weights), WorkerError> {
    let path = opts.model_path.as_path();
    let err = |reason: String| WorkerError::load(path, reason);
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
    check_magic(&mut file, path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|e| err(format!("invalid GGUF header (truncated or corrupt file?): {e}")))?;
    check_size(&content, len).map_err(err)?;
    let arch = content.metadata.get("general.architecture").and_then(|v| v.to_string().ok());
    if arch.is_some_and(|a| a != "llama") {
        return Err(err(format!(
            "architecture '{}' is not supported; only Llama-family GGUF models are",
            arch.map(String::as_str).unwrap_or_default()
        )));
    }
    let md = content.metadata.clone();
    let tokenizer = match &opts.tokenizer_path {
        Some(t) => load_tokenizer_json(t)?,
        None => crate::tokenizer::from_gguf_metadata(&md).map_err(&err)?,
    };
    let file = reader.into_inner();
    let mut reader = ProgressReader::new(BufReader::with_capacity(1 << 20, file), len, progress);
    let weights = match use_cpu_kernels(opts, device, &content) {
        true => Weights::GgufCpu(Box::new(
            LlamaCpu::load(&content, &mut reader)
                .map_err(|e| err(format!("cannot read tensors: {e}")))?,
        )),
        false => Weights::Gguf(Box::new(
            ModelWeights::from_gguf(content, &mut reader, device)
                .map_err(|e| err(format!("cannot read tensors: {e}")))?,
        )),
    };

    let token_text =
        |key: &str| md_u32(&md, key).and_then(|id| tokenizer.id_to_token(id)).unwrap_or_default();
    let bos_id = md_u32(&md, "tokenizer.ggml.bos_token_id");
    let add_bos = md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok());
    let eos: Vec<u32> = md_u32(&md, "tokenizer.ggml.eos_token_id").into_iter().collect();
    let max_ctx =
        md_u32(&md, "llama.context_length").map_or(quantized_llama::MAX_SEQ_LEN, |c| c as usize);
    // quantized_llama precomputes RoPE tables for MAX_SEQ_LEN positions only.
    let limit = max_ctx.min(quantized_llama::MAX_SEQ_LEN);
    let info = ModelInfo {
        name: model_name(opts),
        path: path.to_path_buf(),
        format: "gguf",
        chat_template: md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned(),
        bos_token: token_text("tokenizer.ggml.bos_token_id"),
        eos_token: token_text("tokenizer.ggml.eos_token_id"),
        add_bos_id: if add_bos == Some(true) { bos_id } else { None },
        stop_token_ids: stop_ids(&tokenizer, &eos),
        context_length: opts.context_length.map_or(limit, |c| c.min(limit)),
        tokenizer,
    };
    Ok((info, weights))
}

/// Whether the worker's own kernels run the model (else candle's quantized_llama).
fn use_cpu_kernels(opts: &LoadOptions, device: &Device, content: &gguf_file::Content) -> bool {
    if !device.is_cpu() || opts.cpu_kernels != CpuKernels::Rbee {
        return false;
    }
    match LlamaCpu::supports(content) {
        Ok(()) => {
            tracing::info!(simd = kernels::simd_name(), "running the model on rbee CPU kernels");
            true
        }
        Err(reason) => {
            tracing::info!(%reason, "no rbee CPU kernels for this model; using candle's");
            false
        }
    }
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| v.to_u32().ok())
}

fn check_magic(file: &mut File, path: &Path) -> Result<(), WorkerError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 4];
    let read = file.read_exact(&mut magic);
    file.seek(SeekFrom::Start(0)).map_err(|e| WorkerError::load(path, e))?;
    if read.is_err() || &magic != GGUF_MAGIC {
        return Err(WorkerError::load(
            path,
            format!(
                "not a GGUF file (starts with {magic:02x?}, expected 'GGUF'); --model takes a \
                 .gguf file or a directory with *.safetensors, config.json and tokenizer.json"
            ),
        ));
    }
    Ok(())
}

/// Fails when the tensor data extends past the end of the file.
fn check_size(content: &gguf_file::Content, len: u64) -> Result<(), String> {
    let end = content
        .tensor_infos
        .values()
        .map(|t| {
            let dtype = t.ggml_dtype;
            let bytes = t.shape.elem_count() / dtype.block_size() * dtype.type_size();
            t.offset + bytes as u64
        })
        .max()
        .unwrap_or(0);
    let needed = content.tensor_data_offset + end;
    if needed > len {
        return Err(format!(
            "file is truncated: tensor data needs {needed} bytes but the file has {len}; \
             download it again"
        ));
    }
    Ok(())
}
