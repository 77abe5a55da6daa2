//! `POST /v1/completions` and `POST /v1/chat/completions`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::stream::{Kind, sse_response};
use super::types::{ChatCompletionRequest, CompletionRequest, PromptSpec, UsageBody};
use super::{ApiError, parse_body, sampling_params};
use crate::WorkerError;
use crate::engine::{EngineHandle, Event};
use crate::generate::FinishReason;

/// What every response names: id, creation time and model.
pub(super) struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    fn new(prefix: &str, model: &str) -> Self {
        let created =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self {
            id: format!("{prefix}-{:016x}", rand::random::<u64>()),
            created,
            model: model.into(),
        }
    }
}

pub(super) async fn chat_completions(State(engine): State<EngineHandle>, body: Bytes) -> Response {
    let result = async {
        engine.check_serving()?;
        let req: ChatCompletionRequest = parse_body(&body)?;
        let info = engine.status().model().cloned().ok_or(WorkerError::Loading { progress: 0 })?;
        if req.messages.is_empty() {
            return Err(WorkerError::InvalidRequest("messages must not be empty".into()));
        }
        let prompt = crate::chat::render(
            info.chat_template.as_deref(),
            &req.messages,
            &info.bos_token,
            &info.eos_token,
        )?;
        let tokens = info.encode(&prompt)?;
        let max_tokens = req.max_completion_tokens.or(req.max_tokens);
        let params =
            sampling_params(&req.sampling(), max_tokens, tokens.len(), info.context_length)?;
        let rx = engine.submit(tokens, params)?;
        Ok::<_, WorkerError>((req.streaming(), ResponseMeta::new("chatcmpl", &info.name), rx))
    }
    .await;
    match result {
        Ok(((true, usage), meta, rx)) => sse_response(Kind::Chat, meta, rx, usage),
        Ok(((false, _), meta, rx)) => match collect(rx).await {
            Ok((text, reason, usage)) => Json(json!({
                "id": meta.id,
                "object": "chat.completion",
                "created": meta.created,
                "model": meta.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": reason.as_str(),
                }],
                "usage": usage,
            }))
            .into_response(),
            Err(e) => ApiError(e).into_response(),
        },
        Err(e) => reject(&engine, e),
    }
}

pub(super) async fn completions(State(engine): State<EngineHandle>, body: Bytes) -> Response {
    let result = async {
        engine.check_serving()?;
        let req: CompletionRequest = parse_body(&body)?;
        let info = engine.status().model().cloned().ok_or(WorkerError::Loading { progress: 0 })?;
        if req.echo == Some(true) {
            return Err(WorkerError::InvalidRequest("echo is not supported".into()));
        }
        let prompt = match &req.prompt {
            PromptSpec::One(p) => p.clone(),
            PromptSpec::Many(v) if v.len() == 1 => v[0].clone(),
            PromptSpec::Many(v) => {
                return Err(WorkerError::InvalidRequest(format!(
                    "prompt must be one string; {} prompts were sent",
                    v.len()
                )));
            }
        };
        let tokens = info.encode(&prompt)?;
        let params =
            sampling_params(&req.sampling(), req.max_tokens, tokens.len(), info.context_length)?;
        let rx = engine.submit(tokens, params)?;
        Ok::<_, WorkerError>((req.streaming(), ResponseMeta::new("cmpl", &info.name), rx))
    }
    .await;
    match result {
        Ok(((true, usage), meta, rx)) => sse_response(Kind::Text, meta, rx, usage),
        Ok(((false, _), meta, rx)) => match collect(rx).await {
            Ok((text, reason, usage)) => Json(json!({
                "id": meta.id,
                "object": "text_completion",
                "created": meta.created,
                "model": meta.model,
                "choices": [{
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": reason.as_str(),
                }],
                "usage": usage,
            }))
            .into_response(),
            Err(e) => ApiError(e).into_response(),
        },
        Err(e) => reject(&engine, e),
    }
}

fn reject(engine: &EngineHandle, e: WorkerError) -> Response {
    engine.metrics().request_rejected(e.code());
    ApiError(e).into_response()
}

/// Waits for the whole generation.
async fn collect(
    mut rx: UnboundedReceiver<Event>,
) -> Result<(String, FinishReason, UsageBody), WorkerError> {
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Delta(d) => text.push_str(&d),
            Event::Finished { reason, usage } => return Ok((text, reason, usage.into())),
            Event::Failed(e) => return Err(e),
        }
    }
    Err(WorkerError::Inference("the engine stopped before the generation finished".into()))
}
