//! Error replies: the codes of the protocol and the `error` payload, plus
//! [`DecodeError`], what decoding a frame reports (with the code to answer).

use serde::{Deserialize, Serialize};

/// The `code` of an `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or its payload is malformed: wrong type, missing field,
    /// value out of range, text too long or empty.
    BadRequest,
    /// Reserved: authentication happens before the upgrade (HTTP 401).
    Unauthorized,
    /// No such record for this user (or it was deleted).
    NotFound,
    /// The id exists with other content, or belongs to a record that cannot
    /// be reused (another user's, a deleted conversation).
    Conflict,
    /// Too many requests; `retry_after_ms` says when to try again.
    RateLimited,
    /// The frame is over the size limit (the connection is then closed with 1009).
    TooLarge,
    /// The `action` is not one this server knows.
    UnknownAction,
    /// The LLM, speech-to-text or text-to-speech engines failed.
    AiFailed,
    /// Temporarily unable: no engine configured for this, database busy,
    /// server shutting down. Trying again later may work.
    Unavailable,
    /// A bug or an unexpected failure on the server; see its log.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::AiFailed => "ai_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of an `error` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub code: ErrorCode,
    /// What went wrong and, when it helps, how to fix it.
    pub message: String,
    /// The request's action (absent when the frame had none readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// With `rate_limited`: milliseconds until a retry can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorPayload {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorPayload {
            code,
            message: message.into(),
            action: None,
            retry_after_ms: None,
        }
    }

    pub fn for_action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }
}

/// A frame that could not be decoded. `request_id` and `action` are filled
/// when they could be read, so the error reply can echo them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
    pub action: Option<String>,
    pub request_id: Option<String>,
    /// Close the connection after the error reply, with this code: the
    /// frame is not JSON at all (1007) or over the size limit (1009).
    pub close: Option<u16>,
}

impl DecodeError {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        DecodeError {
            code: ErrorCode::BadRequest,
            message: message.into(),
            action: None,
            request_id: None,
            close: None,
        }
    }

    /// The error reply's payload.
    pub fn payload(&self) -> ErrorPayload {
        ErrorPayload {
            code: self.code,
            message: self.message.clone(),
            action: self.action.clone(),
            retry_after_ms: None,
        }
    }
}
