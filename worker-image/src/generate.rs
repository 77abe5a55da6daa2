//! One sequence's generation: sampling, stop conditions and text deltas.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;

use crate::WorkerError;
use crate::model::{LoadedModel, SequenceCache};
use crate::tokenizer::IncrementalDecoder;

/// Tokens the repetition penalty looks back over.
const REPEAT_LAST_N: usize = 64;

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (deterministic).
    pub temperature: f64,
    /// Nucleus sampling threshold, in (0, 1].
    pub top_p: Option<f64>,
    /// Sample only from the k most likely tokens.
    pub top_k: Option<usize>,
    /// RNG seed.
    pub seed: u64,
    /// 1.0 disables it.
    pub repetition_penalty: f32,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Strings that end generation (not included in the output).
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: 0,
            repetition_penalty: 1.0,
            max_tokens: 16,
            stop: Vec::new(),
        }
    }
}

/// Why a sequence finished, as OpenAI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

impl FinishReason {
    /// OpenAI's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What one step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Text that may be shown now (possibly empty).
    pub text: String,
    /// Set when the sequence is done.
    pub finished: Option<FinishReason>,
}

/// A sequence being generated: prompt, KV cache, sampler and output text.
pub struct Sequence {
    tokens: Vec<u32>,
    prompt_len: usize,
    cache: SequenceCache,
    sampler: LogitsProcessor,
    params: SamplingParams,
    decoder: IncrementalDecoder,
    text: String,
    emitted: usize,
    context_length: usize,
}

impl Sequence {
    /// A new sequence for `prompt` (token ids) with its own empty KV cache.
    pub fn new(
        model: &LoadedModel,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<Self, WorkerError> {
        let sampling = if params.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            let temperature = params.temperature;
            match (params.top_k, params.top_p) {
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
                (Some(k), None) => Sampling::TopK { k, temperature },
                (None, Some(p)) => Sampling::TopP { p, temperature },
                (None, None) => Sampling::All { temperature },
            }
        };
        Ok(Self {
            prompt_len: prompt.len(),
            tokens: prompt,
            cache: model.new_cache()?,
            sampler: LogitsProcessor::from_sampling(params.seed, sampling),
            params,
            decoder: IncrementalDecoder::default(),
            text: String::new(),
            emitted: 0,
            context_length: model.info().context_length,
        })
    }

    /// Tokens in the prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_len
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Runs the model once (the whole prompt on the first call, then one token) and samples
    /// the next token.
    pub fn step(&mut self, model: &LoadedModel) -> Result<Step, WorkerError> {
        let generated = self.generated_tokens();
        let (input, pos) = if generated == 0 {
            (&self.tokens[..], 0)
        } else {
            (&self.tokens[self.tokens.len() - 1..], self.tokens.len() - 1)
        };
        let logits = model.forward(&mut self.cache, input, pos)?;
        let logits = self.penalize(logits)?;
        let next = self.sampler.sample(&logits)?;
        self.tokens.push(next);
        let tokenizer = &model.info().tokenizer;
        if model.info().stop_token_ids.contains(&next) {
            // The end-of-turn token is not part of the completion (nor of its usage).
            self.tokens.pop();
            return self.finish(tokenizer, FinishReason::Stop);
        }
        if let Some(delta) = self.decoder.push(tokenizer, next).map_err(WorkerError::Inference)? {
            self.text.push_str(&delta);
        }
        if let Some(step) = self.check_stop_strings() {
            return Ok(step);
        }
        if self.generated_tokens() >= self.params.max_tokens
            || self.tokens.len() >= self.context_length
        {
            return self.finish(tokenizer, FinishReason::Length);
        }
        Ok(Step { text: self.take_safe_text(), finished: None })
    }

    fn penalize(&self, logits: Tensor) -> Result<Tensor, WorkerError> {
        if (self.params.repetition_penalty - 1.0).abs() < f32::EPSILON {
            return Ok(logits);
        }
        let start = self.tokens.len().saturating_sub(REPEAT_LAST_N);
        Ok(candle_transformers::utils::apply_repeat_penalty(
            &logits,
            self.params.repetition_penalty,
            &self.tokens[start..],
        )?)
    }

    fn finish(&mut self, tokenizer: &Tokenizer, reason: FinishReason) -> Result<Step, WorkerError> {
        let rest = self.decoder.flush(tokenizer).map_err(WorkerError::Inference)?;
        self.text.push_str(&rest);
        if let Some(step) = self.check_stop_strings() {
            return Ok(step);
        }
        let text = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        Ok(Step { text, finished: Some(reason) })
    }

    /// Ends the sequence at the first stop string, if the text contains one.
    fn check_stop_strings(&mut self) -> Option<Step> {
        let cut = self
            .params
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min()?;
        let text = self.text.get(self.emitted..cut).unwrap_or_default().to_string();
        self.emitted = self.text.len();
        Some(Step { text, finished: Some(FinishReason::Stop) })
    }

    /// New text, minus a tail that could be the start of a stop string.
    fn take_safe_text(&mut self) -> String {
        let unsent = &self.text[self.emitted..];
        let hold = self
            .params
            .stop
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(unsent.len() + 1))
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n) && unsent.ends_with(&stop[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let text = self.text[self.emitted..end].to_string();
        self.emitted = end;
        text
    }
}
