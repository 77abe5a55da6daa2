//! The crate's one error type, with a stable category string for metrics and HTTP errors.

use std::path::PathBuf;

/// Everything that can go wrong in the worker, from loading a model to serving a request.
#[derive(thiserror::Error, Debug, Clone)]
pub enum WorkerError {
    /// The request body is not valid JSON.
    #[error("{0}")]
    MalformedRequest(String),
    /// The request is JSON but not of the expected shape (unknown field, wrong type).
    #[error("{0}")]
    UnprocessableRequest(String),
    /// A request field has a value the worker cannot serve.
    #[error("{0}")]
    InvalidRequest(String),
    /// The prompt does not fit the model's context.
    #[error(
        "the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}, but the model's \
         context length is {context_length} tokens: shorten the prompt or lower max_tokens"
    )]
    ContextLengthExceeded {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens the request asked to generate (at least 1).
        max_tokens: usize,
        /// Context length of the model.
        context_length: usize,
    },
    /// Too many requests are waiting.
    #[error("the request queue is full ({capacity} waiting): retry later")]
    QueueFull {
        /// Configured queue capacity.
        capacity: usize,
    },
    /// The model is not loaded yet.
    #[error("the model is still loading ({progress}%): retry when /health returns 200")]
    Loading {
        /// Load progress in percent.
        progress: u8,
    },
    /// The worker is shutting down and accepts no new requests.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The model could not be loaded.
    #[error("cannot load model {path}: {reason}")]
    ModelLoad {
        /// File or directory that failed.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The requested backend cannot be used.
    #[error("{0}")]
    Backend(String),
    /// Inference failed inside the model.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The model failed to load earlier; the worker cannot serve.
    #[error("the model failed to load: {0}")]
    NotServing(String),
}

impl WorkerError {
    /// Stable category, used as the error `code` in HTTP bodies and as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedRequest(_) => "malformed_request",
            Self::UnprocessableRequest(_) => "invalid_request_body",
            Self::InvalidRequest(_) => "invalid_request",
            Self::ContextLengthExceeded { .. } => "context_length_exceeded",
            Self::QueueFull { .. } => "queue_full",
            Self::Loading { .. } => "model_loading",
            Self::ShuttingDown => "shutting_down",
            Self::ModelLoad { .. } => "model_load_failed",
            Self::Backend(_) => "backend_unavailable",
            Self::Inference(_) => "inference_error",
            Self::NotServing(_) => "model_not_loaded",
        }
    }

    /// OpenAI-style error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::MalformedRequest(_)
            | Self::UnprocessableRequest(_)
            | Self::InvalidRequest(_)
            | Self::ContextLengthExceeded { .. } => "invalid_request_error",
            Self::QueueFull { .. } => "rate_limit_error",
            Self::Loading { .. } | Self::ShuttingDown | Self::NotServing(_) => "unavailable_error",
            Self::ModelLoad { .. } | Self::Backend(_) | Self::Inference(_) => "server_error",
        }
    }

    /// HTTP status code this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::MalformedRequest(_) | Self::InvalidRequest(_) => 400,
            Self::ContextLengthExceeded { .. } => 400,
            Self::UnprocessableRequest(_) => 422,
            Self::QueueFull { .. } => 429,
            Self::Loading { .. } | Self::ShuttingDown | Self::NotServing(_) => 503,
            Self::ModelLoad { .. } | Self::Backend(_) | Self::Inference(_) => 500,
        }
    }

    /// A model-load error naming `path`.
    pub fn load(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::ModelLoad { path: path.into(), reason: reason.to_string() }
    }
}

impl From<candle_core::Error> for WorkerError {
    fn from(e: candle_core::Error) -> Self {
        Self::Inference(e.to_string())
    }
}
