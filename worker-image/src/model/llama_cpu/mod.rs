//! Llama-family GGUF models on the CPU through our own kernels ([`super::kernels`]): weights
//! repacked once at load, one thread-pool job per matmul, buffers reused across tokens and a
//! KV cache that grows in fixed chunks. Files with a quant format we have no kernel for go
//! through candle's `quantized_llama` instead (see [`LlamaCpu::supports`]).

mod forward;
mod kv_cache;

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::Mutex;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};

use super::kernels::{QFormat, QMatrix};
pub use kv_cache::KvCache;

/// Shapes and constants of the model.
#[derive(Debug, Clone, Copy)]
struct Config {
    dim: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    ffn_dim: usize,
    n_layer: usize,
    eps: f32,
}

impl Config {
    fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Rows of attn_q, attn_k and attn_v stacked: one matmul for all three.
    qkv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// Rows of ffn_gate and ffn_up stacked.
    gate_up: QMatrix,
    down: QMatrix,
}

/// A loaded model; immutable except for the scratch buffers reused by every forward pass.
pub struct LlamaCpu {
    cfg: Config,
    embed: QMatrix,
    /// `None` when the output projection is tied to the embedding.
    output: Option<QMatrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    inv_freq: Vec<f32>,
    scratch: Mutex<forward::Scratch>,
}

const LAYER_MATRICES: [&str; 7] =
    ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

impl LlamaCpu {
    /// Whether every matrix of the file has a kernel here and the architecture is plain
    /// Llama (no experts, full-width RoPE); `Err` says why not.
    pub fn supports(ct: &Content) -> Result<(), String> {
        let cfg = config(&ct.metadata)?;
        if md_u32(&ct.metadata, "llama.expert_count").is_some_and(|n| n > 1) {
            return Err("mixture-of-experts model".into());
        }
        let mut names: Vec<String> = vec!["token_embd.weight".into()];
        if ct.tensor_infos.contains_key("output.weight") {
            names.push("output.weight".into());
        }
        for l in 0..cfg.n_layer {
            names.extend(LAYER_MATRICES.iter().map(|m| format!("blk.{l}.{m}.weight")));
        }
        for name in names {
            let info = ct.tensor_infos.get(&name).ok_or(format!("no tensor {name}"))?;
            if QFormat::of(info.ggml_dtype).is_none() {
                return Err(format!("{name} is {:?}", info.ggml_dtype));
            }
        }
        Ok(())
    }

    /// Reads and repacks the tensors of `ct` from `reader`.
    pub fn load<R: Read + Seek>(ct: &Content, reader: &mut R) -> Result<Self, String> {
        let cfg = config(&ct.metadata)?;
        let mut read = |name: &str| -> Result<QMatrix, String> {
            let t = ct.tensor(reader, name, &Device::Cpu).map_err(|e| format!("{name}: {e}"))?;
            let format = QFormat::of(t.dtype()).ok_or(format!("{name}: no kernel"))?;
            let (rows, cols) = t.shape().dims2().map_err(|e| format!("{name}: {e}"))?;
            let data = t.data().map_err(|e| format!("{name}: {e}"))?;
            QMatrix::from_gguf(format, rows, cols, &data).map_err(|e| format!("{name}: {e}"))
        };
        let embed = read("token_embd.weight")?;
        let output = match ct.tensor_infos.contains_key("output.weight") {
            true => Some(read("output.weight")?),
            false => None,
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let mut m = |name: &str| read(&format!("blk.{l}.{name}.weight"));
            let (q, k, v, wo) = (m("attn_q")?, m("attn_k")?, m("attn_v")?, m("attn_output")?);
            let (gate, up, down) = (m("ffn_gate")?, m("ffn_up")?, m("ffn_down")?);
            layers.push(Layer {
                qkv: QMatrix::concat_rows(&[&q, &k, &v])?,
                wo,
                gate_up: QMatrix::concat_rows(&[&gate, &up])?,
                down,
                attn_norm: Vec::new(),
                ffn_norm: Vec::new(),
            });
        }
        let mut vector = |name: &str| -> Result<Vec<f32>, String> {
            ct.tensor(reader, name, &Device::Cpu)
                .and_then(|t| t.dequantize(&Device::Cpu))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| format!("{name}: {e}"))
        };
        for (l, layer) in layers.iter_mut().enumerate() {
            layer.attn_norm = vector(&format!("blk.{l}.attn_norm.weight"))?;
            layer.ffn_norm = vector(&format!("blk.{l}.ffn_norm.weight"))?;
        }
        let norm = vector("output_norm.weight")?;
        let model = Self {
            inv_freq: inv_freq(&ct.metadata, cfg.head_dim),
            scratch: Mutex::default(),
            cfg,
            embed,
            output,
            norm,
            layers,
        };
        model.check_shapes()?;
        Ok(model)
    }

    fn check_shapes(&self) -> Result<(), String> {
        let c = &self.cfg;
        let want = |m: &QMatrix, rows: usize, cols: usize, what: &str| {
            if m.rows() == rows && m.cols() == cols {
                Ok(())
            } else {
                Err(format!("{what} is {}×{}, expected {rows}×{cols}", m.rows(), m.cols()))
            }
        };
        want(self.output_matrix(), self.n_vocab(), c.dim, "output")?;
        want(&self.embed, self.n_vocab(), c.dim, "token_embd")?;
        for l in &self.layers {
            want(&l.qkv, c.q_dim() + 2 * c.kv_dim(), c.dim, "attn_q/k/v")?;
            want(&l.wo, c.dim, c.q_dim(), "attn_output")?;
            want(&l.gate_up, 2 * c.ffn_dim, c.dim, "ffn_gate/up")?;
            want(&l.down, c.dim, c.ffn_dim, "ffn_down")?;
            if l.attn_norm.len() != c.dim || l.ffn_norm.len() != c.dim {
                return Err("norm weights of the wrong size".into());
            }
        }
        if self.norm.len() != c.dim {
            return Err("output_norm of the wrong size".into());
        }
        Ok(())
    }

    fn output_matrix(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// Vocabulary size (length of the logits).
    pub fn n_vocab(&self) -> usize {
        self.output_matrix().rows()
    }

    /// An empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layer, self.cfg.kv_dim())
    }
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| v.to_u32().ok())
}

fn config(md: &HashMap<String, Value>) -> Result<Config, String> {
    let get = |key: &str| md_u32(md, key).map(|v| v as usize).ok_or(format!("no {key}"));
    let (dim, n_head) = (get("llama.embedding_length")?, get("llama.attention.head_count")?);
    let n_kv_head = get("llama.attention.head_count_kv")?;
    if n_head == 0
        || n_kv_head == 0
        || !dim.is_multiple_of(n_head)
        || !n_head.is_multiple_of(n_kv_head)
    {
        return Err(format!("{n_head} heads, {n_kv_head} KV heads, width {dim}"));
    }
    let head_dim = dim / n_head;
    if get("llama.rope.dimension_count")? != head_dim || !head_dim.is_multiple_of(2) {
        return Err("partial RoPE".into());
    }
    let eps = md
        .get("llama.attention.layer_norm_rms_epsilon")
        .and_then(|v| v.to_f32().ok())
        .ok_or("no llama.attention.layer_norm_rms_epsilon")?;
    Ok(Config {
        dim,
        n_head,
        n_kv_head,
        head_dim,
        ffn_dim: get("llama.feed_forward_length")?,
        n_layer: get("llama.block_count")?,
        eps,
    })
}

/// RoPE frequencies as candle's quantized_llama computes them.
fn inv_freq(md: &HashMap<String, Value>, head_dim: usize) -> Vec<f32> {
    let base = md.get("llama.rope.freq_base").and_then(|v| v.to_f32().ok()).unwrap_or(10000.0);
    (0..head_dim).step_by(2).map(|i| 1f32 / base.powf(i as f32 / head_dim as f32)).collect()
}
