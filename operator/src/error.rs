//! The operator's one error type. Every API failure names the call that failed; `category()`
//! and `call()` feed the reconcile-error metric, `event_reason()` the Warning Event.

use std::fmt;

/// An API call the operator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Create (server-side apply) a worker pod.
    CreatePod,
    /// Delete a worker pod.
    DeletePod,
    /// Set the heartbeat readiness gate condition of a worker pod.
    SetGate,
    /// Write an RbeeWorker's status.
    WriteStatus,
    /// Create or repair (server-side apply) a worker's Service.
    ApplyService,
    /// Read the leader Lease.
    GetLease,
    /// Create the leader Lease.
    CreateLease,
    /// Take, renew or release the leader Lease.
    UpdateLease,
}

impl Call {
    /// The call's name, as in logs and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreatePod => "CreatePod",
            Self::DeletePod => "DeletePod",
            Self::SetGate => "SetGate",
            Self::WriteStatus => "WriteStatus",
            Self::ApplyService => "ApplyService",
            Self::GetLease => "GetLease",
            Self::CreateLease => "CreateLease",
            Self::UpdateLease => "UpdateLease",
        }
    }

    /// Reason of the Warning Event a failure of this call raises.
    pub fn failed_reason(self) -> &'static str {
        match self {
            Self::CreatePod => "CreatePodFailed",
            Self::DeletePod => "DeletePodFailed",
            Self::SetGate => "SetGateFailed",
            Self::WriteStatus => "WriteStatusFailed",
            Self::ApplyService => "ApplyServiceFailed",
            Self::GetLease => "GetLeaseFailed",
            Self::CreateLease => "CreateLeaseFailed",
            Self::UpdateLease => "UpdateLeaseFailed",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong while reconciling or electing a leader.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{call} failed: {source}")]
    Api {
        /// Which call.
        call: Call,
        /// The client's error.
        source: kube::Error,
    },
    /// The object cannot be acted on until the user changes it.
    #[error("invalid RbeeWorker: {0}")]
    InvalidWorker(String),
    /// Building an object failed.
    #[error("serialising {what}: {source}")]
    Serialization {
        /// What was being serialised.
        what: &'static str,
        /// Why it failed.
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps a failure of `call`: `.map_err(Error::api(Call::CreatePod))`.
    pub fn api(call: Call) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Api { call, source }
    }

    /// The failed call, if an API call failed.
    pub fn call(&self) -> Option<Call> {
        match self {
            Self::Api { call, .. } => Some(*call),
            _ => None,
        }
    }

    /// HTTP status of a refused request.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Api { source: kube::Error::Api(s), .. } => Some(s.code),
            _ => None,
        }
    }

    /// Stable label for metrics.
    pub fn category(&self) -> &'static str {
        match (self, self.status_code()) {
            (_, Some(409)) => "conflict",
            (_, Some(403)) => "forbidden",
            (_, Some(404)) => "not_found",
            (_, Some(_)) => "api",
            (Self::Api { .. }, None) => "transport",
            (Self::InvalidWorker(_), _) => "invalid_worker",
            (Self::Serialization { .. }, _) => "serialization",
        }
    }

    /// Reason of the Warning Event this error raises on the RbeeWorker.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Self::Api { call, .. } => call.failed_reason(),
            Self::InvalidWorker(_) => "InvalidWorker",
            Self::Serialization { .. } => "SerializationFailed",
        }
    }

    /// Whether retrying without a change to the object can help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::InvalidWorker(_))
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_failure_names_its_call_everywhere() {
        let status = kube::core::Status::failure("pods \"w-worker\" is forbidden", "Forbidden");
        let refused = kube::Error::Api(status.with_code(403).boxed());
        let e = Error::api(Call::DeletePod)(refused);
        assert!(e.to_string().starts_with("DeletePod failed: "), "{e}");
        assert_eq!((e.category(), e.call()), ("forbidden", Some(Call::DeletePod)));
        assert_eq!(e.event_reason(), "DeletePodFailed");
        assert!(e.is_transient());
        let invalid = Error::InvalidWorker("no uid".into());
        assert_eq!((invalid.category(), invalid.call()), ("invalid_worker", None));
        assert!(!invalid.is_transient());
    }
}
