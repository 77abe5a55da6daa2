//! `--verify-against-cpu`: runs greedy steps of the model on the chosen backend and on the CPU
//! and reports where they differ, so a GPU node can be checked against the reference path.

use candle_core::Device;
use serde::Serialize;

use crate::WorkerError;
use crate::cli::Args;
use crate::model::{self, LoadOptions, LoadedModel, device_for};

/// How the backend's logits compare with the CPU's on the same tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParityReport {
    /// The model file or directory.
    pub model: String,
    /// Device label of the backend checked, e.g. `cuda:0`.
    pub device: String,
    /// Tokens of the prompt, processed in one forward pass.
    pub prompt_tokens: usize,
    /// Greedy tokens of the CPU.
    pub cpu_tokens: Vec<u32>,
    /// The backend's most likely token at each step, fed the CPU's tokens: equal to its own
    /// greedy tokens up to the first mismatch.
    pub backend_tokens: Vec<u32>,
    /// Whether the backend's greedy tokens equal the CPU's for every step.
    pub tokens_equal: bool,
    /// Step of the first different token.
    pub first_mismatch: Option<usize>,
    /// Largest |backend logit − CPU logit| over all steps and the whole vocabulary.
    pub max_abs_logit_diff: f32,
    /// Largest |CPU logit| over all steps: the scale the difference is judged against.
    pub logit_scale: f32,
    /// `max_abs_logit_diff / logit_scale`.
    pub relative_logit_diff: f32,
}

/// Tokens of the prompt: more than 8, so that prefill takes the batched matmul kernels.
const PROMPT_TOKENS: u32 = 24;

/// `--verify-against-cpu STEPS`: compares the backend with the CPU on --model and prints the
/// report as JSON.
pub fn run(args: &Args, steps: usize) -> anyhow::Result<()> {
    let device = device_for(args.backend, args.device)?;
    let report = compare(&args.load_options(), &device, &args.device_label(), steps)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Loads the model on `device` and on the CPU and compares `steps` greedy steps after a
/// prompt of the ids 0, 1, 2, ...
pub fn compare(
    opts: &LoadOptions,
    device: &Device,
    label: &str,
    steps: usize,
) -> Result<ParityReport, WorkerError> {
    let cpu = model::load(opts, &Device::Cpu, &|_| {})?;
    let backend = model::load(opts, device, &|_| {})?;
    let prompt: Vec<u32> = (0..PROMPT_TOKENS).collect();
    let mut cpu_cache = cpu.new_cache()?;
    let mut backend_cache = backend.new_cache()?;
    let mut input = prompt.clone();
    let mut pos = 0;
    let (mut cpu_tokens, mut backend_tokens) = (Vec::new(), Vec::new());
    let (mut max_diff, mut scale) = (0f32, 0f32);
    for _ in 0..steps {
        let want = logits(&cpu, &mut cpu_cache, &input, pos)?;
        let got = logits(&backend, &mut backend_cache, &input, pos)?;
        if want.len() != got.len() {
            return Err(WorkerError::Inference(format!(
                "the backend returned {} logits, the CPU {}",
                got.len(),
                want.len()
            )));
        }
        max_diff = want.iter().zip(&got).fold(max_diff, |m, (w, g)| m.max((w - g).abs()));
        scale = want.iter().fold(scale, |m, w| m.max(w.abs()));
        let next = argmax(&want);
        cpu_tokens.push(next);
        backend_tokens.push(argmax(&got));
        pos += input.len();
        input = vec![next];
    }
    let first_mismatch = cpu_tokens.iter().zip(&backend_tokens).position(|(c, b)| c != b);
    Ok(ParityReport {
        model: opts.model_path.display().to_string(),
        device: label.to_string(),
        prompt_tokens: prompt.len(),
        tokens_equal: first_mismatch.is_none(),
        first_mismatch,
        cpu_tokens,
        backend_tokens,
        max_abs_logit_diff: max_diff,
        logit_scale: scale,
        relative_logit_diff: if scale > 0.0 { max_diff / scale } else { max_diff },
    })
}

fn logits(
    model: &LoadedModel,
    cache: &mut model::SequenceCache,
    tokens: &[u32],
    pos: usize,
) -> Result<Vec<f32>, WorkerError> {
    Ok(model.forward(cache, tokens, pos)?.to_vec1::<f32>()?)
}

/// Index of the largest value (the first one on ties).
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_values() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
    }
}
