//! The operator's one error type; `category()` feeds metric labels and Event reasons.

/// Everything that can go wrong while reconciling or serving.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
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
    /// Stable label for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Self::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "transport",
            Self::InvalidWorker(_) => "invalid_worker",
            Self::Serialization { .. } => "serialization",
        }
    }

    /// Whether retrying without a change to the object can help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::InvalidWorker(_))
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
