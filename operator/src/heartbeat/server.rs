//! The heartbeat endpoint. Every refusal is a JSON error with a stable `type` and changes
//! nothing; only the leader accepts.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::{SignedDuration, Timestamp};
use kube::runtime::reflector::ObjectRef;
use rbee_api::RbeeWorker;
use rbee_api::error::ErrorResponse;
use rbee_api::heartbeat::{Heartbeat, MAX_HEARTBEAT_BYTES};
use rbee_api::names::HEARTBEAT_PATH;

use super::auth::{AuthError, PodIdentity, TokenReviewer};
use crate::leader::Leadership;
use crate::metrics::{Metrics, WorkerLabels};
use crate::pod::pod_name;
use crate::record::{Recorded, worker_key};
use crate::term::{CurrentTerm, TermState};

/// What the heartbeat endpoint works with.
pub struct HeartbeatState {
    /// Leadership: only the leader accepts.
    pub leadership: Leadership,
    /// The state of the running term, from the controller.
    pub term: CurrentTerm,
    /// TokenReview cache.
    pub reviewer: TokenReviewer,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Why a heartbeat was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// This process is not the leader.
    #[error("this operator replica is not the leader; retry shortly")]
    NotLeader,
    /// Leading, but the caches of the new term are still filling.
    #[error(
        "this operator became leader moments ago and is still loading its caches; retry shortly"
    )]
    Starting,
    /// Body above the limit.
    #[error("heartbeat body exceeds {MAX_HEARTBEAT_BYTES} bytes")]
    TooLarge,
    /// No bearer token.
    #[error(
        "missing bearer token: send the projected service-account token as `Authorization: Bearer <token>`"
    )]
    MissingToken,
    /// Token refused by the review.
    #[error("{0}")]
    Unauthenticated(AuthError),
    /// The API server could not review the token.
    #[error("{0}")]
    ReviewUnavailable(AuthError),
    /// Malformed or out-of-range payload.
    #[error("{0}")]
    Invalid(rbee_api::heartbeat::InvalidHeartbeat),
    /// The RbeeWorker does not exist.
    #[error("RbeeWorker {0} not found")]
    UnknownWorker(String),
    /// The token belongs to another pod.
    #[error("{0}")]
    Forbidden(String),
    /// Sooner than the interval allows.
    #[error("heartbeat sent too soon after the previous one (interval {0}s)")]
    Throttled(i32),
}

impl Refusal {
    /// Metric label and JSON `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotLeader => "not_leader",
            Self::TooLarge | Self::Invalid(_) => "invalid",
            Self::MissingToken | Self::Unauthenticated(_) => "unauthenticated",
            Self::ReviewUnavailable(_) | Self::Starting => "unavailable",
            Self::UnknownWorker(_) => "unknown",
            Self::Forbidden(_) => "forbidden",
            Self::Throttled(_) => "throttled",
        }
    }

    /// JSON `code`: finer than `type`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotLeader => "not_leader",
            Self::Starting => "starting",
            Self::TooLarge => "too_large",
            Self::MissingToken => "missing_token",
            Self::Unauthenticated(_) => "token_rejected",
            Self::ReviewUnavailable(_) => "token_review_unavailable",
            Self::Invalid(_) => "invalid_heartbeat",
            Self::UnknownWorker(_) => "unknown_worker",
            Self::Forbidden(_) => "wrong_pod",
            Self::Throttled(_) => "too_frequent",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::NotLeader | Self::Starting | Self::ReviewUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MissingToken | Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::UnknownWorker(_) => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ErrorResponse::new(self.to_string(), self.kind(), self.code());
        let mut resp = (self.status(), axum::Json(body)).into_response();
        let retry = match &self {
            Self::NotLeader | Self::Starting | Self::ReviewUnavailable(_) => Some(2),
            Self::Throttled(interval) => Some((*interval).max(1)),
            _ => None,
        };
        if let Some(secs) = retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The heartbeat router.
pub fn router(state: Arc<HeartbeatState>) -> Router {
    Router::new().route(HEARTBEAT_PATH, post(handle)).with_state(state)
}

async fn handle(State(s): State<Arc<HeartbeatState>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let result = accept(&s, &headers, body).await;
    let kind = match &result {
        Ok(_) => "accepted",
        Err(r) => r.kind(),
    };
    s.metrics.heartbeat_handled(kind, start.elapsed().as_secs_f64());
    match result {
        Ok(interval) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"accepted": true, "intervalSeconds": interval})),
        )
            .into_response(),
        Err(refusal) => {
            tracing::debug!(result = kind, error = %refusal, "heartbeat refused");
            refusal.into_response()
        }
    }
}

/// The state of the term this process leads in, once its caches are full.
fn leading_term(s: &HeartbeatState) -> Result<Arc<TermState>, Refusal> {
    let term = s.term.borrow().clone().ok_or(Refusal::NotLeader)?;
    if !s.leadership.holds(&term.term) {
        return Err(Refusal::NotLeader);
    }
    // Until its caches are full a new leader cannot tell an unknown worker from a known one.
    if !term.caches_ready() {
        return Err(Refusal::Starting);
    }
    Ok(term)
}

async fn accept(s: &HeartbeatState, headers: &HeaderMap, body: Body) -> Result<i32, Refusal> {
    let term = leading_term(s)?;
    let bytes = to_bytes(body, MAX_HEARTBEAT_BYTES).await.map_err(|_| Refusal::TooLarge)?;
    let token = bearer(headers).ok_or(Refusal::MissingToken)?;
    let beat = Heartbeat::parse(&bytes).map_err(Refusal::Invalid)?;
    let identity = s.reviewer.review(token, &s.metrics).await.map_err(|e| match e {
        AuthError::Unavailable(_) => Refusal::ReviewUnavailable(e),
        other => Refusal::Unauthenticated(other),
    })?;
    let worker = lookup(&term, &beat)?;
    check_binding(&worker, &beat, &identity)?;
    let draining = check_current_pod(&term, &identity)?;
    record(s, &term, &worker, beat, &identity, draining)
}

/// Records an authenticated heartbeat of the worker's current pod.
fn record(
    s: &HeartbeatState,
    term: &TermState,
    worker: &RbeeWorker,
    beat: Heartbeat,
    identity: &PodIdentity,
    draining: bool,
) -> Result<i32, Refusal> {
    let now = Timestamp::now();
    s.metrics.clock_skew(now.duration_since(beat.sent_at).as_secs_f64());
    let interval = worker.spec.heartbeat.interval_seconds;
    let stale_after =
        SignedDuration::from_secs(i64::from(worker.spec.heartbeat.effective_stale_after_seconds()));
    // Half an interval tolerates jitter and retries while stopping a runaway sender.
    let min_gap = SignedDuration::from_millis(i64::from(interval) * 500);
    let key = worker_key(&beat.worker.namespace, &beat.worker.name);
    let labels =
        WorkerLabels { namespace: beat.worker.namespace.clone(), worker: beat.worker.name.clone() };
    let vram = beat.vram;
    match term.heartbeats.record(&key, &identity.pod_uid, beat, now, min_gap, stale_after) {
        Recorded::TooFrequent => Err(Refusal::Throttled(interval)),
        Recorded::Accepted { visible_change } => {
            s.metrics.workers.heartbeat_accepted(&term.term, &labels, now, vram);
            // A draining pod waits for the in-flight count each heartbeat brings.
            if visible_change || draining {
                // Dropped when the queue is full: the periodic reconcile writes it soon after.
                let _ = term.trigger.try_send(ObjectRef::from(worker));
            }
            Ok(interval)
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then_some(token)
}

fn lookup(term: &TermState, beat: &Heartbeat) -> Result<Arc<RbeeWorker>, Refusal> {
    let id = &beat.worker;
    term.workers
        .get(&ObjectRef::new(&id.name).within(&id.namespace))
        .ok_or_else(|| Refusal::UnknownWorker(format!("{}/{}", id.namespace, id.name)))
}

/// The token must be bound to the worker's own current pod, and the payload must say so.
fn check_binding(worker: &RbeeWorker, beat: &Heartbeat, who: &PodIdentity) -> Result<(), Refusal> {
    let id = &beat.worker;
    let expected_pod = pod_name(worker);
    if who.namespace != id.namespace {
        return Err(Refusal::Forbidden(format!(
            "token of namespace {} cannot report for namespace {}",
            who.namespace, id.namespace
        )));
    }
    if who.pod_name != expected_pod {
        return Err(Refusal::Forbidden(format!(
            "token of pod {} cannot report for RbeeWorker {} (pod {expected_pod})",
            who.pod_name, id.name
        )));
    }
    if who.pod_name != id.pod_name || who.pod_uid != id.pod_uid {
        return Err(Refusal::Forbidden(format!(
            "payload names pod {} ({}) but the token is bound to pod {} ({})",
            id.pod_name, id.pod_uid, who.pod_name, who.pod_uid
        )));
    }
    Ok(())
}

/// A token of a replaced pod stays valid in the review cache for a while; its heartbeats
/// must not count for the pod that replaced it. Tells whether the current pod is draining.
fn check_current_pod(term: &TermState, who: &PodIdentity) -> Result<bool, Refusal> {
    let Some(current) = term.pods.get(&ObjectRef::new(&who.pod_name).within(&who.namespace)) else {
        return Ok(false);
    };
    match current.metadata.uid.as_deref() {
        Some(uid) if uid != who.pod_uid => Err(Refusal::Forbidden(format!(
            "pod {} ({}) has been replaced; this token belongs to the old pod",
            who.pod_name, who.pod_uid
        ))),
        _ => Ok(crate::gate::is_draining(&current)),
    }
}
