//! rbee-gen-model: writes a Llama GGUF with weights drawn from a seed, for checks that cannot
//! bring a real model along (scripts/gpu-check). Prints a JSON summary on stdout.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Writes a Llama-architecture GGUF (weights from --seed, byte-level tokenizer in the
/// metadata, no end-of-text token) and prints {path, format, shape, params, file_bytes,
/// weight_bytes_per_token} as JSON.
#[derive(Parser, Debug)]
#[command(name = "rbee-gen-model", version, about)]
struct Args {
    /// GGUF file to write.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Quantization of every matrix.
    #[arg(long, value_enum)]
    format: Format,
    /// `check`: 4 layers, hidden 256, vocab 512; embeddings and output head form a cycle
    /// (token t continues with t+1) so greedy decoding is robust to rounding while attention
    /// and MLP shift every logit. `small`: 17M parameters. `tinyllama`: TinyLlama-1.1B's shape
    /// (22 layers, hidden 2048, vocab 32000).
    #[arg(long, value_enum, default_value_t = Shape::Check)]
    shape: Shape,
    /// Seed of the weights.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl Format {
    fn dtype(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shape {
    Check,
    Small,
    Tinyllama,
}

/// Sizes of the model; every matrix width is a multiple of 256 (the Q4_K block).
#[derive(Debug, Clone, Copy)]
struct Dims {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    vocab: usize,
    /// Output head rows are the embeddings of the preceding token.
    cycle: bool,
}

impl Shape {
    fn dims(self) -> Dims {
        let (hidden, layers, heads, kv_heads, ffn, vocab, cycle) = match self {
            Self::Check => (256, 4, 8, 4, 768, 512, true),
            Self::Small => (512, 4, 8, 4, 1536, 4096, false),
            Self::Tinyllama => (2048, 22, 32, 4, 5632, 32000, false),
        };
        Dims { hidden, layers, heads, kv_heads, ffn, vocab, cycle }
    }
}

/// Scale of attention and MLP weights relative to 1/sqrt(fan-in): each block adds about a
/// third of the residual's size.
const BLOCK_GAIN: f32 = 0.7;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dims = args.shape.dims();
    let dtype = args.format.dtype();
    let tensors = weights(&dims, dtype, args.seed)?;
    let metadata = metadata(&dims, args.seed);
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let file = File::create(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    gguf_file::write(&mut w, &md, &ts).context("write GGUF")?;
    drop(w);
    let file_bytes = std::fs::metadata(&args.out)?.len();
    let params: usize = tensors.iter().map(|(_, t)| t.shape().elem_count()).sum();
    let bytes = |t: &QTensor| t.storage_size_in_bytes();
    let per_token: usize = tensors
        .iter()
        .map(|(n, t)| if n == "token_embd.weight" { bytes(t) / dims.vocab } else { bytes(t) })
        .sum();
    let name = |v: Option<clap::builder::PossibleValue>| v.map(|v| v.get_name().to_string());
    let summary = serde_json::json!({
        "path": args.out, "format": name(args.format.to_possible_value()),
        "shape": name(args.shape.to_possible_value()), "seed": args.seed,
        "params": params, "file_bytes": file_bytes, "weight_bytes_per_token": per_token,
    });
    println!("{summary}");
    Ok(())
}

/// Every tensor of the model, generated in parallel (each from its own seed, so the result
/// does not depend on the thread count).
fn weights(d: &Dims, dtype: GgmlDType, seed: u64) -> anyhow::Result<Vec<(String, QTensor)>> {
    let head_dim = d.hidden / d.heads;
    let kv = d.kv_heads * head_dim;
    let mut specs: Vec<(String, usize, usize, f32)> = Vec::new();
    for l in 0..d.layers {
        for (name, rows, cols) in [
            ("attn_q", d.hidden, d.hidden),
            ("attn_k", kv, d.hidden),
            ("attn_v", kv, d.hidden),
            ("attn_output", d.hidden, d.hidden),
            ("ffn_gate", d.ffn, d.hidden),
            ("ffn_up", d.ffn, d.hidden),
            ("ffn_down", d.hidden, d.ffn),
        ] {
            specs.push((format!("blk.{l}.{name}.weight"), rows, cols, BLOCK_GAIN));
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(String, QTensor)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<(String, QTensor)>> {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((name, rows, cols, gain)) = specs.get(i) else { break };
                        let std = gain / (*cols as f32).sqrt();
                        let data = uniform(seed, i as u64 + 1, rows * cols, std);
                        done.push((name.clone(), quantize(data, *rows, *cols, dtype)?));
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let embed = uniform(seed, 0, d.vocab * d.hidden, 1.0);
    let head = match d.cycle {
        // Row t+1 is token t's embedding: the head favours the successor of the current token.
        true => {
            let scale = 1.0 / (d.hidden as f32).sqrt();
            let mut h = vec![0f32; embed.len()];
            for t in 0..d.vocab {
                let dst = (t + 1) % d.vocab * d.hidden;
                let src = &embed[t * d.hidden..(t + 1) * d.hidden];
                h[dst..dst + d.hidden].iter_mut().zip(src).for_each(|(o, e)| *o = e * scale);
            }
            h
        }
        false => uniform(seed, u64::MAX, d.vocab * d.hidden, 1.0 / (d.hidden as f32).sqrt()),
    };
    out.push(("token_embd.weight".into(), quantize(embed, d.vocab, d.hidden, dtype)?));
    out.push(("output.weight".into(), quantize(head, d.vocab, d.hidden, dtype)?));
    let ones = |n: usize| vec![1f32; n];
    out.push(("output_norm.weight".into(), quantize(ones(d.hidden), 1, d.hidden, GgmlDType::F32)?));
    for l in 0..d.layers {
        for norm in ["attn_norm", "ffn_norm"] {
            let t = quantize(ones(d.hidden), 1, d.hidden, GgmlDType::F32)?;
            out.push((format!("blk.{l}.{norm}.weight"), t));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `n` values uniform in ±std·√3 (standard deviation `std`), from `seed` and `stream`.
fn uniform(seed: u64, stream: u64, n: usize, std: f32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream);
    let a = std * 3f32.sqrt();
    (0..n).map(|_| rng.random_range(-a..a)).collect()
}

fn quantize(data: Vec<f32>, rows: usize, cols: usize, dtype: GgmlDType) -> anyhow::Result<QTensor> {
    let shape: &[usize] = if rows == 1 { &[cols] } else { &[rows, cols] };
    let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
    Ok(QTensor::quantize(&t, dtype)?)
}

/// Llama hyper-parameters and a byte-level BPE vocabulary: the 256 byte tokens, then random
/// lowercase words (never produced by encoding, so a prompt of n ASCII bytes is n tokens).
fn metadata(d: &Dims, seed: u64) -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = byte_alphabet();
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x746f_6b65_6e73);
    while tokens.len() < d.vocab {
        let len = rng.random_range(2..9);
        let word: String = (0..len).map(|_| rng.random_range(b'a'..=b'z') as char).collect();
        if seen.insert(word.clone()) {
            tokens.push(word);
        }
    }
    let u32v = |v: usize| Value::U32(v as u32);
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(format!("rbee-gen-model seed {seed}"))),
        ("llama.block_count".into(), u32v(d.layers)),
        ("llama.context_length".into(), u32v(4096)),
        ("llama.embedding_length".into(), u32v(d.hidden)),
        ("llama.feed_forward_length".into(), u32v(d.ffn)),
        ("llama.attention.head_count".into(), u32v(d.heads)),
        ("llama.attention.head_count_kv".into(), u32v(d.kv_heads)),
        ("llama.rope.dimension_count".into(), u32v(d.hidden / d.heads)),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(Vec::new())),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ]
}

/// GPT-2's byte-to-character map, in byte order.
fn byte_alphabet() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).map(String::from).unwrap_or_default()
        })
        .collect()
}
