//! The JSON error body of every HTTP server of rbee: the operator's heartbeat endpoint and
//! the worker's OpenAI-compatible API answer `{"error": {"message", "type", "code"}}`, the
//! shape OpenAI clients already read.

use serde::{Deserialize, Serialize};

/// An error answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

/// What went wrong, for people and for programs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What is wrong and what to do about it.
    pub message: String,
    /// Stable category, e.g. `invalid_request_error` or `unauthenticated`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Stable code, finer than the category, e.g. `queue_full` or `not_leader`.
    pub code: String,
}

impl ErrorResponse {
    /// An error answer with a message, a category and a code.
    pub fn new(message: impl Into<String>, kind: &str, code: &str) -> Self {
        Self { error: ErrorBody { message: message.into(), kind: kind.into(), code: code.into() } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_openai_error_shape() {
        let body =
            ErrorResponse::new("the request queue is full", "rate_limit_error", "queue_full");
        let json = serde_json::to_value(&body).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"error": {
                "message": "the request queue is full", "type": "rate_limit_error", "code": "queue_full"
            }})
        );
        assert_eq!(serde_json::from_value::<ErrorResponse>(json).ok(), Some(body));
    }
}
