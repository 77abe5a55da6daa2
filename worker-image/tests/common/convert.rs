//! GGUF (llama) → F32 safetensors + config.json + tokenizer.json, for testing the
//! safetensors path on the real model.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

fn md_u32(md: &HashMap<String, Value>, key: &str) -> u32 {
    md.get(key).and_then(|v| v.to_u32().ok()).unwrap_or_else(|| panic!("GGUF has no {key}"))
}

fn md_f32(md: &HashMap<String, Value>, key: &str, default: f32) -> f32 {
    md.get(key).and_then(|v| v.to_f32().ok()).unwrap_or(default)
}

/// GGUF stores q/k rows permuted for interleaved RoPE; this restores the HF layout.
fn unpermute(t: &Tensor, n_head: usize) -> Tensor {
    let (out, inp) = t.dims2().expect("2d");
    t.reshape((n_head, out / n_head / 2, 2, inp))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((out, inp)))
        .expect("unpermute")
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let hf = match name {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Writes `dir/{model.safetensors, config.json, tokenizer.json, tokenizer_config.json}`.
pub fn gguf_to_safetensors(gguf: &Path, dir: &Path) {
    let mut reader = BufReader::new(File::open(gguf).expect("open gguf"));
    let ct = Content::read(&mut reader).expect("read gguf");
    let md = ct.metadata.clone();
    let n_head = md_u32(&md, "llama.attention.head_count") as usize;
    let n_kv = md_u32(&md, "llama.attention.head_count_kv") as usize;
    let mut tensors = HashMap::new();
    for name in ct.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else { continue };
        let q = ct.tensor(&mut reader, name, &Device::Cpu).expect("tensor");
        let mut t = q.dequantize(&Device::Cpu).expect("dequantize");
        if name.ends_with("attn_q.weight") {
            t = unpermute(&t, n_head);
        } else if name.ends_with("attn_k.weight") {
            t = unpermute(&t, n_kv);
        }
        tensors.insert(hf, t);
    }
    let tied = !tensors.contains_key("lm_head.weight");
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save");
    let tokenizer = llm_worker_rbee::tokenizer::from_gguf_metadata(&md).expect("tokenizer");
    tokenizer.save(dir.join("tokenizer.json"), false).expect("save tokenizer");
    let tokens = match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(v)) => v.len(),
        _ => panic!("no tokens"),
    };
    let tok = |key: &str| tokenizer.id_to_token(md_u32(&md, key)).unwrap_or_default();
    let config = serde_json::json!({
        "hidden_size": md_u32(&md, "llama.embedding_length"),
        "intermediate_size": md_u32(&md, "llama.feed_forward_length"),
        "vocab_size": tokens,
        "num_hidden_layers": md_u32(&md, "llama.block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "rms_norm_eps": md_f32(&md, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": md_f32(&md, "llama.rope.freq_base", 10000.0),
        "max_position_embeddings": md_u32(&md, "llama.context_length"),
        "bos_token_id": md_u32(&md, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": md_u32(&md, "tokenizer.ggml.eos_token_id"),
        "tie_word_embeddings": tied,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    let template = md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
    let tok_config = serde_json::json!({
        "chat_template": template,
        "bos_token": tok("tokenizer.ggml.bos_token_id"),
        "eos_token": tok("tokenizer.ggml.eos_token_id"),
        "add_bos_token": md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false),
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_config.to_string()).expect("tok config");
}
