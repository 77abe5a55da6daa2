//! The rbee API: the `RbeeWorker` custom resource, the heartbeat wire contract, and the
//! names shared by the operator, the worker and the chart. No IO.

pub mod conditions;
pub mod error;
pub mod heartbeat;
pub mod names;
pub mod status;
pub mod units;
pub mod worker;

pub use status::*;
pub use worker::*;
