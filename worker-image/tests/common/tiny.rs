//! A tiny random Llama in real file formats (safetensors, config.json, tokenizer.json).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

pub const HIDDEN: usize = 32;
pub const LAYERS: usize = 2;
pub const CONTEXT: usize = 96;
pub const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Writes the model into `dir` with weights drawn from `seed`.
pub fn write_tiny_llama(dir: &Path, seed: u64) {
    let alphabet: Vec<char> = {
        let mut a: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        a.sort_unstable();
        a
    };
    let mut vocab: Vocab =
        alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
    for (i, s) in SPECIAL.iter().enumerate() {
        vocab.insert(s.to_string(), (alphabet.len() + i) as u32);
    }
    let vocab_size = vocab.len();
    let bpe = BPE::builder().vocab_and_merges(vocab, vec![]).build().expect("bpe");
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = SPECIAL.iter().map(|s| AddedToken::from(*s, true)).collect();
    tok.add_special_tokens(specials).expect("special tokens");
    tok.save(dir.join("tokenizer.json"), false).expect("save tokenizer");

    let eos = (alphabet.len() + 2) as u32;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN, "intermediate_size": 64, "vocab_size": vocab_size,
        "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": CONTEXT,
        "bos_token_id": alphabet.len(), "eos_token_id": eos, "tie_word_embeddings": false,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    let tok_config = serde_json::json!({
        "chat_template": llm_worker_rbee::chat::CHATML_TEMPLATE,
        "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "add_bos_token": false,
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_config.to_string()).expect("tok config");

    let mut rng = StdRng::seed_from_u64(seed);
    let mut rand_t = |shape: (usize, usize)| {
        let data: Vec<f32> =
            (0..shape.0 * shape.1).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
    };
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).expect("ones");
    let head_dim = HIDDEN / 4;
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight".to_string(), rand_t((vocab_size, HIDDEN)));
    t.insert("lm_head.weight".to_string(), rand_t((vocab_size, HIDDEN)));
    t.insert("model.norm.weight".to_string(), ones(HIDDEN));
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", (HIDDEN, HIDDEN)),
            ("self_attn.k_proj", (2 * head_dim, HIDDEN)),
            ("self_attn.v_proj", (2 * head_dim, HIDDEN)),
            ("self_attn.o_proj", (HIDDEN, HIDDEN)),
            ("mlp.gate_proj", (64, HIDDEN)),
            ("mlp.up_proj", (64, HIDDEN)),
            ("mlp.down_proj", (HIDDEN, 64)),
        ] {
            t.insert(format!("{p}.{name}.weight"), rand_t(shape));
        }
        t.insert(format!("{p}.input_layernorm.weight"), ones(HIDDEN));
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(HIDDEN));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).expect("save weights");
}
