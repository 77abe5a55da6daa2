//! One forward pass: the same arithmetic as candle's quantized_llama, over buffers reused
//! across tokens, with every matmul of a layer input done as one parallel job.

use std::cell::RefCell;
use std::ops::Range;

use super::kv_cache::LayerCache;
use super::{Config, KvCache, Layer, LlamaCpu};
use crate::model::kernels::{QActivations, matmul, num_threads, par_rows};

/// Prompt tokens run through the model at once; bounds the scratch buffers.
const PREFILL_CHUNK: usize = 256;

/// Buffers of one forward pass, `tokens × width` each, kept between calls.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    hidden: Vec<f32>,
    act: QActivations,
    rope: Vec<(f32, f32)>,
}

impl Scratch {
    fn resize(&mut self, c: &Config, m: usize) {
        let qkv = c.q_dim() + 2 * c.kv_dim();
        for (buf, width) in [
            (&mut self.x, c.dim),
            (&mut self.xn, c.dim),
            (&mut self.qkv, qkv),
            (&mut self.att, c.q_dim()),
            (&mut self.proj, c.dim),
            (&mut self.gate_up, 2 * c.ffn_dim),
            (&mut self.hidden, c.ffn_dim),
        ] {
            buf.resize(m * width, 0.0);
        }
    }
}

thread_local! {
    /// Attention scores of the head a thread is working on.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl LlamaCpu {
    /// Runs `tokens` at positions `index_pos..` and returns the logits of the last one.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        index_pos: usize,
    ) -> Result<Vec<f32>, String> {
        if index_pos > cache.len {
            return Err(format!("position {index_pos} after a cache of {}", cache.len));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.embed.rows()) {
            return Err(format!("token {t} is outside the vocabulary"));
        }
        if tokens.is_empty() {
            return Err("no tokens to run".into());
        }
        cache.len = index_pos;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            self.forward_chunk(&mut scratch, cache, chunk);
        }
        Ok(self.logits(&mut scratch, (tokens.len() - 1) % PREFILL_CHUNK + 1))
    }

    fn forward_chunk(&self, s: &mut Scratch, cache: &mut KvCache, tokens: &[u32]) {
        let (c, m, pos0) = (&self.cfg, tokens.len(), cache.len);
        s.resize(c, m);
        for (&t, x) in tokens.iter().zip(s.x.chunks_exact_mut(c.dim)) {
            self.embed.dequantize_row(t as usize, x);
        }
        s.rope.clear();
        for p in pos0..pos0 + m {
            s.rope.extend(self.inv_freq.iter().map(|f| {
                let angle = p as f32 * f;
                (angle.cos(), angle.sin())
            }));
        }
        for (layer, lc) in self.layers.iter().zip(&mut cache.layers) {
            self.attention_block(s, layer, lc, pos0);
            mlp_block(c, s, layer);
        }
        cache.len = pos0 + m;
    }

    fn attention_block(&self, s: &mut Scratch, layer: &Layer, lc: &mut LayerCache, pos0: usize) {
        let c = &self.cfg;
        rms_norm(&s.x, &layer.attn_norm, c.eps, &mut s.xn);
        s.act.quantize(&s.xn, c.dim);
        matmul(&layer.qkv, &s.act, &mut s.qkv);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let half = c.head_dim / 2;
        for (t, row) in s.qkv.chunks_exact_mut(q_dim + 2 * kv_dim).enumerate() {
            let rope = &s.rope[t * half..(t + 1) * half];
            let (qk, v) = row.split_at_mut(q_dim + kv_dim);
            for head in qk.chunks_exact_mut(c.head_dim) {
                rope_interleaved(head, rope);
            }
            lc.k.row_mut(pos0 + t).copy_from_slice(&qk[q_dim..]);
            lc.v.row_mut(pos0 + t).copy_from_slice(v);
        }
        attention(c, &s.qkv, lc, pos0, &mut s.att);
        s.act.quantize(&s.att, q_dim);
        matmul(&layer.wo, &s.act, &mut s.proj);
        add_assign(&mut s.x, &s.proj);
    }

    fn logits(&self, s: &mut Scratch, m: usize) -> Vec<f32> {
        let c = &self.cfg;
        let last = &s.x[(m - 1) * c.dim..m * c.dim];
        let xn = &mut s.xn[..c.dim];
        rms_norm(last, &self.norm, c.eps, xn);
        s.act.quantize(xn, c.dim);
        let mut logits = vec![0f32; self.n_vocab()];
        matmul(self.output_matrix(), &s.act, &mut logits);
        logits
    }
}

fn mlp_block(c: &Config, s: &mut Scratch, layer: &Layer) {
    rms_norm(&s.x, &layer.ffn_norm, c.eps, &mut s.xn);
    s.act.quantize(&s.xn, c.dim);
    matmul(&layer.gate_up, &s.act, &mut s.gate_up);
    for (gu, h) in s.gate_up.chunks_exact(2 * c.ffn_dim).zip(s.hidden.chunks_exact_mut(c.ffn_dim)) {
        let (gate, up) = gu.split_at(c.ffn_dim);
        for ((h, &g), &u) in h.iter_mut().zip(gate).zip(up) {
            *h = g / (1.0 + (-g).exp()) * u;
        }
    }
    s.act.quantize(&s.hidden, c.ffn_dim);
    matmul(&layer.down, &s.act, &mut s.proj);
    add_assign(&mut s.x, &s.proj);
}

/// Causal attention of each token's query heads over the cached positions up to its own;
/// one work item per (token, head).
fn attention(c: &Config, qkv: &[f32], lc: &LayerCache, pos0: usize, out: &mut [f32]) {
    let (hd, group) = (c.head_dim, c.n_head / c.n_kv_head);
    let qkv_dim = c.q_dim() + 2 * c.kv_dim();
    let scale = (hd as f32).sqrt();
    let items = out.len() / hd;
    // One token's heads over a short context take less time than waking the other threads.
    let work = items * (pos0 + items / c.n_head);
    let grain = if work < 1 << 15 { items } else { items.div_ceil(num_threads() * 2) };
    par_rows(out, hd, grain, |items: Range<usize>, out: &mut [f32]| {
        SCORES.with_borrow_mut(|scores| {
            for (item, out) in items.zip(out.chunks_exact_mut(hd)) {
                let (t, h) = (item / c.n_head, item % c.n_head);
                let q = &qkv[t * qkv_dim + h * hd..][..hd];
                let kv = (h / group) * hd..(h / group + 1) * hd;
                let n = pos0 + t + 1;
                scores.clear();
                scores.extend((0..n).map(|p| dot(q, &lc.k.row(p)[kv.clone()]) / scale));
                softmax(scores);
                out.fill(0.0);
                for (p, &w) in scores.iter().enumerate() {
                    axpy(w, &lc.v.row(p)[kv.clone()], out);
                }
            }
        });
    });
}

/// candle_nn's rms_norm, row by row.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (x, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let sum2: f32 = x.iter().map(|v| v * v).sum();
        let norm = (sum2 / dim as f32 + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
            *o = v / norm * w;
        }
    }
}

/// RoPE on adjacent pairs (GGUF Llama weights are permuted for it), as candle's rope_i.
fn rope_interleaved(head: &mut [f32], rope: &[(f32, f32)]) {
    for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(rope) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cos - b * sin;
        pair[1] = a * sin + b * cos;
    }
}

fn softmax(xs: &mut [f32]) {
    let max = xs.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let mut sum = 0f32;
    for v in xs.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in xs.iter_mut() {
        *v /= sum;
    }
}

/// Eight running sums so that the compiler vectorizes the loop.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (x, &y) in x.iter_mut().zip(y) {
        *x += y;
    }
}
