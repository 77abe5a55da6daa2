//! The HTTP API: OpenAI-compatible completions, `/v1/models`, `/health` and `/metrics`.

mod health;
mod openai;
mod stream;
pub mod types;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rbee_api::error::ErrorResponse;
use serde::de::DeserializeOwned;

use crate::WorkerError;
use crate::engine::EngineHandle;
use crate::generate::SamplingParams;
use types::{SamplingFields, StopSpec};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most stop strings per request.
const MAX_STOP_STRINGS: usize = 16;

/// The worker's router.
pub fn router(engine: EngineHandle) -> Router {
    Router::new()
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(health::models))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(engine)
}

/// `{"error":{"message","type","code"}}` with the error's HTTP status.
pub struct ApiError(pub WorkerError);

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        Self(e)
    }
}

impl ApiError {
    fn body(&self) -> serde_json::Value {
        let body = ErrorResponse::new(self.0.to_string(), self.0.error_type(), self.0.code());
        serde_json::to_value(body).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

/// Parses a JSON body: 400 when it is not JSON, 422 when it has the wrong shape.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WorkerError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            WorkerError::UnprocessableRequest(format!("invalid request body: {e}"))
        }
        _ => WorkerError::MalformedRequest(format!("request body is not valid JSON: {e}")),
    })
}

/// Checks the sampling fields against the prompt and the context; returns what the engine
/// runs with.
fn sampling_params(
    f: &SamplingFields,
    max_tokens: Option<i64>,
    prompt_tokens: usize,
    context_length: usize,
) -> Result<SamplingParams, WorkerError> {
    let bad = |m: String| Err(WorkerError::InvalidRequest(m));
    if f.n.is_some_and(|n| n != 1) {
        return bad("n must be 1: one worker generates one choice per request".into());
    }
    if let Some(t) = f.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return bad(format!("temperature must be between 0 and 2, got {t}"));
    }
    if let Some(p) = f.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return bad(format!("top_p must be in (0, 1], got {p}"));
    }
    if let Some(k) = f.top_k
        && k < 1
    {
        return bad(format!("top_k must be at least 1, got {k}"));
    }
    if let Some(r) = f.repetition_penalty
        && !(r > 0.0 && r.is_finite())
    {
        return bad(format!("repetition_penalty must be positive, got {r}"));
    }
    for (name, v) in
        [("frequency_penalty", f.frequency_penalty), ("presence_penalty", f.presence_penalty)]
    {
        if v.is_some_and(|v| v != 0.0) {
            return bad(format!("{name} is not supported; use repetition_penalty"));
        }
    }
    let stop = match &f.stop {
        None => Vec::new(),
        Some(StopSpec::One(s)) => vec![s.clone()],
        Some(StopSpec::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return bad(format!(
            "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
            stop.len()
        ));
    }
    if let Some(m) = max_tokens
        && m < 1
    {
        return bad(format!("max_tokens must be at least 1, got {m}"));
    }
    let room = context_length.saturating_sub(prompt_tokens);
    let wanted = max_tokens.map(|m| m as usize);
    if room == 0 || wanted.is_some_and(|m| m > room) {
        return Err(WorkerError::ContextLengthExceeded {
            prompt_tokens,
            max_tokens: wanted.unwrap_or(1),
            context_length,
        });
    }
    Ok(SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_p: f.top_p.filter(|p| *p < 1.0),
        top_k: f.top_k.map(|k| k as usize),
        seed: f.seed.unwrap_or_else(rand::random),
        repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
        max_tokens: wanted.unwrap_or(room),
        stop,
    })
}
