//! llm-worker-rbee: the candle-based inference server of rbee worker pods.
//!
//! The crate is a library with a thin `main`, so tests and the heartbeat sender can drive the
//! same pieces: [`model`] loads weights and tokenizers, [`generate`] turns logits into text,
//! [`engine`] owns the model on one thread, [`api`] is the OpenAI-compatible HTTP surface,
//! [`status::EngineStatus`] is the shared state (`state()`, `load_progress_percent()`,
//! `in_flight()`) a heartbeat reports.

pub mod api;
pub mod chat;
pub mod cli;
pub mod engine;
pub mod error;
pub mod generate;
pub mod heartbeat;
pub mod metrics;
pub mod model;
pub mod parity;
pub mod resources;
pub mod server;
pub mod status;
pub mod tokenizer;

pub use error::WorkerError;
pub use status::EngineStatus;
