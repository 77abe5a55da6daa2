//! OpenAI-compatible request and response bodies.

use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;
use crate::engine::Usage;

/// `stop`: one string or a list of strings.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StopSpec {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints, as the client sent them.
#[derive(Debug, Clone, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<StopSpec>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub n: Option<u32>,
}

macro_rules! request_with_sampling {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Deserialize, Debug, Clone)]
        #[serde(deny_unknown_fields)]
        #[allow(missing_docs)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Model name; any value is accepted (one worker serves one model).
            #[serde(default)]
            pub model: Option<String>,
            /// Most tokens to generate (default: up to the context length).
            #[serde(default)]
            pub max_tokens: Option<i64>,
            /// 0 is greedy; up to 2.
            #[serde(default)]
            pub temperature: Option<f64>,
            #[serde(default)]
            pub top_p: Option<f64>,
            #[serde(default)]
            pub top_k: Option<i64>,
            #[serde(default)]
            pub seed: Option<u64>,
            #[serde(default)]
            pub stop: Option<StopSpec>,
            #[serde(default)]
            pub stream: Option<bool>,
            #[serde(default)]
            pub stream_options: Option<StreamOptions>,
            #[serde(default)]
            pub repetition_penalty: Option<f32>,
            #[serde(default)]
            pub frequency_penalty: Option<f32>,
            #[serde(default)]
            pub presence_penalty: Option<f32>,
            #[serde(default)]
            pub n: Option<u32>,
            #[serde(default)]
            pub user: Option<String>,
        }

        impl $name {
            /// The sampling fields.
            pub fn sampling(&self) -> SamplingFields {
                SamplingFields {
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    seed: self.seed,
                    stop: self.stop.clone(),
                    repetition_penalty: self.repetition_penalty,
                    frequency_penalty: self.frequency_penalty,
                    presence_penalty: self.presence_penalty,
                    n: self.n,
                }
            }

            /// Whether to stream, and whether to add a usage chunk.
            pub fn streaming(&self) -> (bool, bool) {
                let usage = self.stream_options.as_ref().is_some_and(|o| o.include_usage);
                (self.stream.unwrap_or(false), usage)
            }
        }
    };
}

request_with_sampling!(
    /// `POST /v1/chat/completions`.
    ChatCompletionRequest {
        /// The conversation.
        messages: Vec<ChatMessage>,
        /// Newer spelling of `max_tokens`.
        #[serde(default)]
        max_completion_tokens: Option<i64>,
    }
);

request_with_sampling!(
    /// `POST /v1/completions`.
    CompletionRequest {
        /// The prompt text.
        prompt: PromptSpec,
        /// Accepted for compatibility; must be false.
        #[serde(default)]
        echo: Option<bool>,
    }
);

/// `prompt`: a string or a list with exactly one string.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum PromptSpec {
    /// One prompt.
    One(String),
    /// A batch of prompts; only one is supported.
    Many(Vec<String>),
}

/// `usage` in responses.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct UsageBody {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}
