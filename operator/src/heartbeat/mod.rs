//! `POST /v1/heartbeat`: workers report liveness, load progress and resource use.

pub mod auth;
pub mod server;
