//! The WebSocket opening handshake (RFC 6455 §4.2) on hyper's upgrade: the
//! request is checked here, every fault answered with a status and a
//! reason; the `101` carries `Sec-WebSocket-Accept` (tungstenite derives
//! it), and the upgraded socket becomes a tokio-tungstenite stream.

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::answer::error_response;
use crate::protocol::ErrorCode;

/// A checked upgrade request, to be answered with `101`.
pub(crate) struct Upgrade {
    accept: String,
    on: OnUpgrade,
}

/// What is wrong with an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("/ws is a WebSocket endpoint: send an `Upgrade: websocket` request")]
    NotAnUpgrade,
    #[error("the WebSocket handshake needs HTTP/1.1 (this request is {0})")]
    Version(String),
    #[error("`Connection: Upgrade` is missing")]
    NoConnectionUpgrade,
    #[error("Sec-WebSocket-Version must be 13 (got {0})")]
    WsVersion(String),
    #[error("Sec-WebSocket-Key is missing")]
    NoKey,
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    BadKey,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        let status = match self {
            Rejection::NotAnUpgrade => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                StatusCode::UPGRADE_REQUIRED
            }
            Rejection::WsVersion(_) => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::BAD_REQUEST,
        };
        error_response(status, ErrorCode::BadRequest, &self.to_string(), headers)
    }
}

fn has_token(v: Option<&HeaderValue>, token: &str) -> bool {
    v.and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

impl Upgrade {
    /// Checks the request's upgrade headers.
    pub fn check(parts: &mut Parts) -> Result<Upgrade, Rejection> {
        let h = &parts.headers;
        if !has_token(h.get(header::UPGRADE), "websocket") {
            return Err(Rejection::NotAnUpgrade);
        }
        if parts.version != Version::HTTP_11 {
            return Err(Rejection::Version(format!("{:?}", parts.version)));
        }
        if !has_token(h.get(header::CONNECTION), "upgrade") {
            return Err(Rejection::NoConnectionUpgrade);
        }
        match h.get(header::SEC_WEBSOCKET_VERSION) {
            Some(v) if v == "13" => {}
            Some(v) => {
                let shown: String = String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(16)
                    .collect();
                return Err(Rejection::WsVersion(format!("{shown:?}")));
            }
            None => return Err(Rejection::WsVersion("none".into())),
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Rejection::NoKey)?
            .as_bytes();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| Rejection::BadKey)?;
        if decoded.len() != 16 {
            return Err(Rejection::BadKey);
        }
        let accept = derive_accept_key(key);
        let on = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Rejection::NotUpgradable)?;
        Ok(Upgrade { accept, on })
    }

    /// The `101` response; `then` gets the upgraded socket once hyper has
    /// sent it (run it as a task of its own).
    pub fn accept(self) -> (Response, UpgradeFuture) {
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept)
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        (resp, UpgradeFuture(self.on))
    }
}

/// The upgraded socket, once the `101` went out.
pub(crate) struct UpgradeFuture(OnUpgrade);

impl UpgradeFuture {
    pub async fn socket(self) -> Result<TokioIo<Upgraded>, hyper::Error> {
        self.0.await.map(TokioIo::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(version: Version, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri("/ws").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (mut p, ()) = b.body(()).unwrap().into_parts();
        // What hyper adds to an upgradable request (here one that never is).
        p.extensions.insert(hyper::upgrade::on(Request::new(())));
        p
    }

    const OK: [(&str, &str); 4] = [
        ("upgrade", "WebSocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        OK.iter().copied().filter(|(k, _)| *k != name).collect()
    }

    #[test]
    fn each_fault_has_its_reason() {
        let up = Upgrade::check(&mut parts(Version::HTTP_11, &OK)).unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let check = |v, h: &[(&str, &str)]| Upgrade::check(&mut parts(v, h)).err();
        assert_eq!(
            check(Version::HTTP_11, &without("upgrade")),
            Some(Rejection::NotAnUpgrade)
        );
        assert_eq!(
            check(Version::HTTP_10, &OK),
            Some(Rejection::Version("HTTP/1.0".into()))
        );
        assert_eq!(
            check(Version::HTTP_11, &without("connection")),
            Some(Rejection::NoConnectionUpgrade)
        );
        assert_eq!(
            check(Version::HTTP_11, &without("sec-websocket-version")),
            Some(Rejection::WsVersion("none".into()))
        );
        let mut v8 = without("sec-websocket-version");
        v8.push(("sec-websocket-version", "8"));
        assert_eq!(
            check(Version::HTTP_11, &v8),
            Some(Rejection::WsVersion("\"8\"".into()))
        );
        assert_eq!(
            check(Version::HTTP_11, &without("sec-websocket-key")),
            Some(Rejection::NoKey)
        );
        let mut short = without("sec-websocket-key");
        short.push(("sec-websocket-key", "c2hvcnQ="));
        assert_eq!(check(Version::HTTP_11, &short), Some(Rejection::BadKey));
        let resp = Rejection::WsVersion("8".into()).into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["sec-websocket-version"], "13");
        assert_eq!(
            Rejection::NotAnUpgrade.into_response().status(),
            StatusCode::UPGRADE_REQUIRED
        );
    }
}
