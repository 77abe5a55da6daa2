//! /metrics, /healthz and /readyz.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// State of the probe endpoints.
pub struct Probes {
    /// Set once the operator has checked its CRD and started.
    pub ready: AtomicBool,
}

/// The metrics and probes router.
pub fn router(metrics: Arc<Metrics>, probes: Arc<Probes>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz).with_state(probes))
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the classic text format.
async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            metrics.encode(),
        )
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            metrics.encode_prometheus_text(),
        )
    }
}

async fn readyz(State(probes): State<Arc<Probes>>) -> impl IntoResponse {
    if probes.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
