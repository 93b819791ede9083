//! The HTTP side of a new socket: the request head is peeked (left in the
//! socket for the WebSocket handshake), then `GET /health` is answered here,
//! `/ws` is authenticated (Bearer header, else `?token=`) and refused with
//! 401 **before** any upgrade, and everything else gets 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::State;
use super::auth::{self, AuthUser};
use crate::protocol::{ErrorCode, Health, HttpError, limits};

/// Longest request head read.
const MAX_HEAD: usize = 8192;

/// What the request head says.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    query: Option<String>,
    bearer: Option<String>,
    upgrade: bool,
    /// Bytes of the head (request line, headers, blank line).
    len: usize,
}

#[derive(Debug)]
enum HeadError {
    /// Closed, or too slow: nothing to answer.
    Gone,
    Bad(&'static str),
    TooLarge,
}

/// Peeks until the head is complete, without consuming it.
async fn peek_head(tcp: &TcpStream, timeout: Duration) -> Result<Head, HeadError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_HEAD];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| HeadError::Gone)?
            .map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone);
        }
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_string(), Some(q.to_string())),
                    None => (target.to_string(), None),
                };
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let bearer = header("authorization").and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| token.trim().to_string())
                });
                let upgrade =
                    header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
                return Ok(Head {
                    method: req.method.unwrap_or("").to_string(),
                    path,
                    query,
                    bearer,
                    upgrade,
                    len,
                });
            }
            Ok(httparse::Status::Partial) if n == buf.len() => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => {
                // More is coming; peek returns at once while data is pending.
                if tokio::time::Instant::now() >= deadline {
                    return Err(HeadError::Gone);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => return Err(HeadError::Bad("not an HTTP request")),
        }
    }
}

/// Writes a whole HTTP response with a JSON body and closes. The request is
/// read first, and what the client still sends is drained after, so that
/// closing does not reset the connection before the client has read it.
async fn respond(tcp: &mut TcpStream, head_len: usize, status: &str, extra: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut head = vec![0u8; head_len];
        let _ = tcp.read_exact(&mut head).await;
        let _ = tcp.write_all(text.as_bytes()).await;
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

fn error_body(code: ErrorCode, message: &str) -> String {
    serde_json::to_string(&HttpError {
        error: code,
        message: message.to_string(),
    })
    .unwrap_or_default()
}

/// The token of a request: the Bearer header, else `?token=`.
fn token_of(head: &Head) -> Option<String> {
    if let Some(t) = &head.bearer {
        return Some(t.clone());
    }
    let q = head.query.as_deref()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// The largest frame the WebSocket layer reads: 1 MiB over the largest
/// limit of the protocol, so a frame a little too large is read whole and
/// answered (`too_large`, then 1009) while the client can still read the
/// answer. The protocol's limits per action are checked after reading.
const WS_LIMIT: usize = limits::MAX_STT_FRAME + limits::MAX_FRAME;

/// The WebSocket settings: the limits above; a small read buffer, as most
/// connections idle.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(WS_LIMIT))
        .max_frame_size(Some(WS_LIMIT))
}

/// Serves one accepted socket. `permit` is `None` when the server is full.
pub(crate) async fn serve(
    state: Arc<State>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    let _ = tcp.set_nodelay(true);
    let head = match peek_head(&tcp, state.opts.header_timeout).await {
        Ok(h) => h,
        Err(HeadError::Gone) => return,
        Err(HeadError::TooLarge) => {
            let body = error_body(ErrorCode::TooLarge, "the request head is too large");
            return respond(
                &mut tcp,
                0,
                "431 Request Header Fields Too Large",
                "",
                &body,
            )
            .await;
        }
        Err(HeadError::Bad(m)) => {
            let body = error_body(ErrorCode::BadRequest, m);
            return respond(&mut tcp, 0, "400 Bad Request", "", &body).await;
        }
    };
    let stopping = state.shutdown.is_cancelled();
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/health") => {
            let health = Health {
                status: if stopping { "stopping" } else { "ok" }.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_s: state.started.elapsed().as_secs(),
                connections: state.connections.load(Ordering::Relaxed),
            };
            let body = serde_json::to_string(&health).unwrap_or_default();
            let status = if stopping {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            respond(&mut tcp, head.len, status, "", &body).await;
        }
        ("GET", "/ws") => {
            let Some(token) = token_of(&head) else {
                let body = error_body(
                    ErrorCode::Unauthorized,
                    "no token: send `Authorization: Bearer <token>` or `?token=<token>` (make one with `pichat token add USER`)",
                );
                return respond(
                    &mut tcp,
                    head.len,
                    "401 Unauthorized",
                    "WWW-Authenticate: Bearer\r\n",
                    &body,
                )
                .await;
            };
            let user = match state.db.call(move |s| auth::check(s, &token)).await {
                Ok(Some(u)) => u,
                Ok(None) => {
                    tracing::info!("refused a connection from {peer}: unknown or revoked token");
                    let body = error_body(ErrorCode::Unauthorized, "unknown or revoked token");
                    return respond(
                        &mut tcp,
                        head.len,
                        "401 Unauthorized",
                        "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n",
                        &body,
                    )
                    .await;
                }
                Err(e) => {
                    tracing::error!("cannot check a token: {e}");
                    let body = error_body(ErrorCode::Unavailable, "cannot check the token now");
                    return respond(&mut tcp, head.len, "503 Service Unavailable", "", &body).await;
                }
            };
            if stopping || permit.is_none() {
                let body = error_body(
                    ErrorCode::Unavailable,
                    if stopping {
                        "the server is shutting down"
                    } else {
                        "too many connections; try again later"
                    },
                );
                return respond(
                    &mut tcp,
                    head.len,
                    "503 Service Unavailable",
                    "Retry-After: 5\r\n",
                    &body,
                )
                .await;
            }
            if !head.upgrade {
                let body = error_body(
                    ErrorCode::BadRequest,
                    "/ws is a WebSocket endpoint: send an Upgrade: websocket request",
                );
                return respond(
                    &mut tcp,
                    head.len,
                    "426 Upgrade Required",
                    "Upgrade: websocket\r\n",
                    &body,
                )
                .await;
            }
            upgrade(state, tcp, peer, user, permit).await;
        }
        (_, "/health" | "/ws") => {
            let body = error_body(ErrorCode::BadRequest, "only GET is allowed here");
            respond(
                &mut tcp,
                head.len,
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                &body,
            )
            .await;
        }
        _ => {
            let body = error_body(ErrorCode::NotFound, "no such path: use /ws or /health");
            respond(&mut tcp, head.len, "404 Not Found", "", &body).await;
        }
    }
}

async fn upgrade(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    user: AuthUser,
    permit: Option<OwnedSemaphorePermit>,
) {
    let handshake = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config()));
    let ws = match tokio::time::timeout(state.opts.header_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!("WebSocket handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => return,
    };
    super::conn::run(state, ws, user, peer).await;
    drop(permit);
}
