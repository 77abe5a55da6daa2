//! rbee-operator: reconciles `RbeeWorker`s into worker pods, accepts worker heartbeats,
//! restarts dead or hung workers by policy and exports Prometheus metrics.

pub mod apply;
pub mod cli;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod decide;
pub mod error;
pub mod gate;
pub mod heartbeat;
pub mod http;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod observe;
pub mod phase;
pub mod plan;
pub mod pod;
pub mod record;
pub mod restart;
pub mod run;
pub mod service;
pub mod status;
pub mod term;
