//! `/health`, `/metrics` and `/v1/models`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rbee_api::heartbeat::WorkerState;
use serde_json::json;

use super::ApiError;
use crate::engine::EngineHandle;

/// 200 with state and progress once the model serves; 503 with a reason before that,
/// after a failed load, and while draining.
pub(super) async fn health(State(engine): State<EngineHandle>) -> Response {
    let status = engine.status();
    let state = status.state();
    let progress = status.load_progress_percent();
    let state_name = serde_json::to_value(state).unwrap_or_default();
    let mut body = json!({
        "state": state_name,
        "loadProgressPercent": progress,
        "backend": status.backend().as_str(),
        "device": status.device(),
        "inFlightRequests": status.in_flight(),
    });
    if let Some(info) = status.model() {
        body["model"] = json!(info.name);
        body["contextLength"] = json!(info.context_length);
    }
    let reason = match state {
        WorkerState::Ready | WorkerState::Busy => None,
        WorkerState::Loading => Some(format!("model is loading ({progress}%)")),
        WorkerState::Draining => Some("worker is shutting down".to_string()),
        WorkerState::Error => {
            Some(status.load_error().unwrap_or_else(|| "model cannot serve".into()))
        }
    };
    match reason {
        None => {
            body["status"] = json!("ok");
            (StatusCode::OK, Json(body)).into_response()
        }
        Some(reason) => {
            body["status"] = json!("unavailable");
            body["reason"] = json!(reason);
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// OpenMetrics text.
pub(super) async fn metrics(State(engine): State<EngineHandle>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        engine.metrics().encode(),
    )
        .into_response()
}

/// The one model this worker serves.
pub(super) async fn models(State(engine): State<EngineHandle>) -> Response {
    if let Err(e) = engine.check_serving() {
        return ApiError(e).into_response();
    }
    let Some(info) = engine.status().model() else {
        return ApiError(crate::WorkerError::Loading { progress: 0 }).into_response();
    };
    Json(json!({
        "object": "list",
        "data": [{
            "id": info.name,
            "object": "model",
            "created": 0,
            "owned_by": "rbee",
            "context_length": info.context_length,
        }],
    }))
    .into_response()
}
