//! Tokenizers: built from GGUF metadata when no tokenizer.json is given, and incremental
//! detokenization that never splits a UTF-8 character.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp's `LLAMA_TOKEN_TYPE_USER_DEFINED`.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizer regex of Llama 3 (`tokenizer.ggml.pre = llama-bpe`), as in llama.cpp.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds a byte-level BPE tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file.
///
/// candle's own conversion adds a prefix space, which makes token ids differ from llama.cpp
/// (e.g. for SmolLM2); this one reproduces the model's pre-tokenizer instead: digits split one
/// by one, then the GPT-2 byte-level split without a prefix space.
pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Tokenizer, String> {
    let model = md_str(md, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model is '{model}'; only 'gpt2' (byte-level BPE) tokenizers can be \
             built from GGUF metadata: pass --tokenizer with the model's tokenizer.json"
        ));
    }
    let tokens = md_str_array(md, "tokenizer.ggml.tokens")?;
    let merges = md_str_array(md, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(Value::Array(v)) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("invalid BPE vocabulary in GGUF metadata: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned();
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre.as_deref().unwrap_or("default"))?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (token, ty) in tokens.iter().zip(types.iter().chain(std::iter::repeat(&1))) {
        match *ty {
            TOKEN_TYPE_CONTROL => special.push(AddedToken::from(token.clone(), true)),
            TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(token.clone(), false)),
            _ => {}
        }
    }
    let added = |e: tokenizers::Error| format!("invalid special tokens in GGUF metadata: {e}");
    tokenizer.add_special_tokens(special).map_err(added)?;
    tokenizer.add_tokens(user).map_err(added)?;
    Ok(tokenizer)
}

fn pre_tokenizer(pre: &str) -> Result<Sequence, String> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let steps: Vec<PreTokenizerWrapper> = match pre {
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("invalid pre-tokenizer regex: {e}"))?;
            vec![split.into(), byte_level(false).into()]
        }
        "gpt2" => vec![byte_level(true).into()],
        // SmolLM ("smollm"), StarCoder and the llama.cpp default split digits one by one.
        _ => vec![Digits::new(true).into(), byte_level(true).into()],
    };
    Ok(Sequence::new(steps))
}

fn md_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a str, String> {
    match md.get(key) {
        Some(v) => v.to_string().map(String::as_str).map_err(|e| format!("{key}: {e}")),
        None => Err(format!("GGUF metadata has no {key}")),
    }
}

fn md_str_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match md.get(key) {
        Some(Value::Array(v)) => {
            v.iter().map(|s| s.to_string().cloned().map_err(|e| format!("{key}: {e}"))).collect()
        }
        Some(_) => Err(format!("GGUF metadata {key} is not an array")),
        None => Err(format!("GGUF metadata has no {key}")),
    }
}

/// Turns generated token ids into text deltas, holding back bytes of an incomplete UTF-8
/// character until the token that completes it arrives.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Adds one token; returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<Option<String>, String> {
        self.tokens.push(token);
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).map_err(|e| e.to_string());
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let text = decode(&self.tokens[self.prefix_offset..])?;
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let delta = match text.strip_prefix(prefix.as_str()) {
            Some(d) => d.to_string(),
            None => text.chars().skip(prefix.chars().count()).collect(),
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        Ok(Some(delta))
    }

    /// Text still held back (an incomplete character at the end of generation).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String, String> {
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).map_err(|e| e.to_string());
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let text = decode(&self.tokens[self.prefix_offset..])?;
        self.prefix_offset = self.tokens.len();
        self.read_offset = self.tokens.len();
        Ok(text.strip_prefix(prefix.as_str()).unwrap_or_default().to_string())
    }
}
