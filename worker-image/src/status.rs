//! The engine's shared state: what `/health` and the heartbeat sender report.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rbee_api::heartbeat::WorkerState;
use rbee_api::worker::Backend;

use crate::model::ModelInfo;

/// State shared by the engine thread, the HTTP handlers and the heartbeat sender.
///
/// Cheap to read from any thread; the engine is its only writer (plus `begin_draining`).
#[derive(Debug)]
pub struct EngineStatus {
    backend: Backend,
    device: String,
    progress: AtomicU8,
    in_flight: AtomicU32,
    draining: AtomicBool,
    load_error: Mutex<Option<String>>,
    model: OnceLock<Arc<ModelInfo>>,
}

impl EngineStatus {
    /// A status in state `Loading` at 0 %.
    pub fn new(backend: Backend, device: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            backend,
            device: device.into(),
            progress: AtomicU8::new(0),
            in_flight: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            load_error: Mutex::new(None),
            model: OnceLock::new(),
        })
    }

    /// What the worker is doing now.
    pub fn state(&self) -> WorkerState {
        if self.load_error().is_some() {
            WorkerState::Error
        } else if self.model.get().is_none() {
            WorkerState::Loading
        } else if self.draining.load(Ordering::Acquire) {
            WorkerState::Draining
        } else if self.in_flight() > 0 {
            WorkerState::Busy
        } else {
            WorkerState::Ready
        }
    }

    /// Model load progress, 0..=100.
    pub fn load_progress_percent(&self) -> u8 {
        self.progress.load(Ordering::Acquire).min(100)
    }

    /// Requests queued or being generated.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Device label, `cpu` or `cuda:N`.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Why loading failed, if it did.
    pub fn load_error(&self) -> Option<String> {
        self.load_error.lock().map(|e| e.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The loaded model, once loading finished.
    pub fn model(&self) -> Option<&Arc<ModelInfo>> {
        self.model.get()
    }

    /// Whether the worker stopped accepting new requests.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops accepting new requests (SIGTERM).
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(crate) fn set_progress(&self, percent: u8) {
        self.progress.fetch_max(percent.min(100), Ordering::AcqRel);
    }

    pub(crate) fn set_loaded(&self, model: Arc<ModelInfo>) {
        self.set_progress(100);
        let _ = self.model.set(model);
    }

    pub(crate) fn set_load_error(&self, error: String) {
        match self.load_error.lock() {
            Ok(mut e) => *e = Some(error),
            Err(p) => *p.into_inner() = Some(error),
        }
    }

    pub(crate) fn add_in_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn remove_in_flight(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
    }
}
