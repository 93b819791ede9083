//! What every route shares: the JSON error answer (`{"error": code,
//! "message": ...}`, never cached, closing the HTTP connection), and what
//! `serve` gives each request (the client's address, its socket).

use std::net::SocketAddr;
use std::os::fd::RawFd;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};

use crate::protocol::{ErrorCode, HttpError};

/// The client's address, given to the handlers with each request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// The connection's socket, given to the handlers with each request (for
/// what the kernel knows about it: `sockinfo.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketFd(pub RawFd);

/// An answer with a JSON error body.
pub(crate) fn error_response(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
    mut headers: HeaderMap,
) -> Response {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let body = HttpError {
        error: code,
        message: message.to_string(),
    };
    (status, headers, Json(body)).into_response()
}

/// An error answer.
pub(crate) fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    error_response(status, code, message, HeaderMap::new())
}

/// An error answer with one header more (`Allow`, `Retry-After`...).
pub(crate) fn with_header(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
    name: header::HeaderName,
    value: &'static str,
) -> Response {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_static(value));
    error_response(status, code, message, h)
}
