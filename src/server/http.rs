//! The HTTP side of `pichat serve`: hyper's HTTP/1.1 under an axum router.
//!
//! - Each accepted socket is served by [`serve`] while it holds a handshake
//!   place (`handshakes.rs`): hyper reads the request head within
//!   `header_timeout` (else it closes the socket) and at most [`MAX_HEAD`]
//!   bytes of it (else `431`).
//! - [`router`] has the routes: `GET /health`, and `GET /ws`, where the
//!   token (Bearer header, else `?token=`) is checked **before** anything is
//!   upgraded, then the connection is given its place (`registry.rs`), and
//!   only then is the upgrade answered (`upgrade.rs`) and the connection
//!   run (`socket/`). New endpoints are new routes here.
//! - Errors have JSON bodies (`{"error": code, "message": ...}`). Every
//!   answer but the `101` closes the HTTP connection (`Connection: close`):
//!   a socket is either upgraded or done after one request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State as With};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::audit::{Event, Who};
use super::auth::{self, AuthUser};
use super::handshakes::Slot;
use super::reading::Metered;
use super::registry::{Admission, Refusal};
use super::state::State;
use super::upgrade::Upgrade;
use crate::protocol::{ErrorCode, Health, HttpError, limits};

/// Longest request head (hyper's smallest read buffer): over it, `431`.
pub(crate) const MAX_HEAD: usize = 8192;

/// How long in-flight requests may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The client's address, given to the handlers with each request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// The connection's socket, given to the handlers with each request (for
/// what the kernel knows about it: `sockinfo.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketFd(pub RawFd);

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

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    error_response(status, code, message, HeaderMap::new())
}

fn with_header(
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

/// The routes.
pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/health", get(health).fallback(only_get))
        .route("/ws", get(ws).fallback(only_get))
        .merge(super::web::routes())
        .fallback(not_found)
        .with_state(state)
}

async fn only_get() -> Response {
    with_header(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest,
        "only GET is allowed here",
        header::ALLOW,
        "GET",
    )
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such path: the app is at /, the protocol at /ws, the status at /health",
    )
}

async fn health(With(state): With<Arc<State>>) -> Response {
    let stopping = state.shutdown.is_cancelled();
    let body = Health {
        status: if stopping { "stopping" } else { "ok" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: state.started.elapsed().as_secs(),
        connections: state.registry.len(),
    };
    let status = if stopping {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let headers = [
        (header::CACHE_CONTROL, "no-store"),
        (header::CONNECTION, "close"),
    ];
    (status, headers, Json(body)).into_response()
}

/// The token of a request: the Bearer header, else `?token=`.
fn token_of(parts: &Parts) -> Option<String> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    if bearer.is_some() {
        return bearer;
    }
    let q = parts.uri.query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn unauthorized(message: &str, challenge: &'static str) -> Response {
    with_header(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        message,
        header::WWW_AUTHENTICATE,
        challenge,
    )
}

/// The device name of the token (from the token book, read again when the
/// token is newer than the book).
async fn with_device(state: &Arc<State>, mut user: AuthUser) -> AuthUser {
    if state.tokens.device(user.token_id).is_none() {
        state.refresh_tokens().await;
    }
    user.device = state.tokens.device(user.token_id).flatten();
    user
}

/// The user of a present token, or the answer refusing it.
/// What a `/ws` request authenticates with.
enum Credential {
    Token(String),
    /// The value of the session cookie.
    Session(String),
}

async fn authenticate(
    state: &Arc<State>,
    cred: Credential,
    peer: SocketAddr,
) -> Result<AuthUser, Response> {
    let now = crate::time::now_ms();
    let checked = state
        .db
        .call(move |s| match cred {
            Credential::Token(t) => auth::check(s, &t),
            Credential::Session(v) => Ok(auth::check_session(s, &v, now)?.map(|(u, _)| u)),
        })
        .await;
    match checked {
        Ok(Some(u)) => Ok(with_device(state, u).await),
        Ok(None) => {
            let who = Who::addr(peer.ip());
            let reason = "unknown or revoked token";
            state.audit.repeated(Event::AuthRefused, who, reason);
            Err(unauthorized(reason, "Bearer error=\"invalid_token\""))
        }
        Err(e) => {
            tracing::error!("cannot check a token: {e}");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "cannot check the token now",
            ))
        }
    }
}

/// A connection place for `user`, or the answer refusing it.
#[allow(clippy::result_large_err)] // the error is the answer, made once per refusal
fn admit(state: &Arc<State>, user: &AuthUser, peer: SocketAddr) -> Result<Admission, Response> {
    let busy = |message: &str| {
        with_header(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
            header::RETRY_AFTER,
            "5",
        )
    };
    if state.shutdown.is_cancelled() {
        return Err(busy("the server is shutting down"));
    }
    let refusal = match state.registry.admit(user.id) {
        Ok(a) => return Ok(a),
        Err(r) => r,
    };
    let who = Who::of(user, peer.ip());
    Err(match refusal {
        Refusal::Full { max } => {
            let reason = format!("server.max_connections ({max}) are open");
            state.audit.repeated(Event::LimitRefused, who, reason);
            busy("too many connections; try again later")
        }
        Refusal::UserFull { max } => {
            let reason = format!("server.max_connections_per_user ({max}) are open");
            state.audit.repeated(Event::LimitRefused, who, reason);
            let message = format!(
                "{} has {max} connections open, the most allowed (server.max_connections_per_user); close one first",
                user.name
            );
            with_header(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                &message,
                header::RETRY_AFTER,
                "5",
            )
        }
    })
}

/// `GET /ws`: a token, a well-formed upgrade, a user, a place; then `101`,
/// and the connection runs as a task of its own.
async fn ws(
    With(state): With<Arc<State>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(SocketFd(fd)): Extension<SocketFd>,
    req: Request,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    // A device's token (Bearer, else `?token=`), else a browser's session
    // cookie, which counts only from this server's own page (`web.rs`).
    let cred = match token_of(&parts) {
        Some(t) => Credential::Token(t),
        None => match super::web::session_cookie(&parts.headers) {
            Some(v) => Credential::Session(v),
            None => {
                state
                    .audit
                    .repeated(Event::AuthRefused, Who::addr(peer.ip()), "no token");
                return unauthorized(
                    "no token: send `Authorization: Bearer <token>` or `?token=<token>` (make one with `pichat token add USER`), or sign in at /signin",
                    "Bearer",
                );
            }
        },
    };
    if matches!(cred, Credential::Session(_))
        && !super::web::same_origin(&parts.headers, state.opts.tls.is_some())
    {
        state.audit.repeated(
            Event::AuthRefused,
            Who::addr(peer.ip()),
            "session cookie from a foreign Origin",
        );
        return error(
            StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized,
            "a session cookie is accepted only from this server's own page (its Origin); devices send a token",
        );
    }
    let upgrade = match Upgrade::check(&mut parts) {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let user = match authenticate(&state, cred, peer).await {
        Ok(u) => u,
        Err(refused) => return refused,
    };
    if state.tokens.first_use_from(user.token_id, peer.ip()) {
        let reason = format!("first use of token {} from this address", user.token_id);
        let who = Who::of(&user, peer.ip());
        state.audit.once(Event::NewAddress, &who, &reason);
    }
    let admission = match admit(&state, &user, peer) {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let (response, upgraded) = upgrade.accept();
    let st = state.clone();
    state.tracker.spawn(async move {
        let io = match tokio::time::timeout(st.opts.header_timeout, upgraded.socket()).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                tracing::debug!("the upgrade of {peer} failed: {e}");
                return;
            }
            Err(_) => return,
        };
        let (io, marks) = Metered::new(io, &st.read_budget, st.opts.frame_timeout);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
        super::socket::run(st, ws, marks, fd, user, peer, admission).await;
    });
    response
}

/// Serves one accepted socket: through TLS first when the server has a
/// certificate (the handshake within `header_timeout`), then HTTP/1.1.
pub(crate) async fn accept(
    state: Arc<State>,
    router: Router,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let _ = tcp.set_nodelay(true);
    let fd = SocketFd(tcp.as_raw_fd());
    let Some(tls) = state.opts.tls.clone() else {
        return serve(state, router, tcp, fd, peer, slot).await;
    };
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
    let stream = tokio::select! {
        r = tokio::time::timeout(state.opts.header_timeout, handshake) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => return,
        },
        _ = slot.evicted() => return,
        _ = state.shutdown.cancelled() => return,
    };
    serve(state, router, stream, fd, peer, slot).await;
}

/// Serves one socket over HTTP/1.1 until it is done, upgraded, evicted
/// from its handshake place, or the server stops. `fd` is the TCP socket
/// under it (under TLS too).
async fn serve<I>(
    state: Arc<State>,
    router: Router,
    io: I,
    fd: SocketFd,
    peer: SocketAddr,
    slot: Slot,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        req.extensions_mut().insert(fd);
        let mut router = router.clone();
        async move {
            let resp = tower_service::Service::call(&mut router, req).await;
            Ok::<_, Infallible>(resp.unwrap_or_else(|never| match never {}))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.opts.header_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("HTTP connection from {peer}: {e}");
            }
        }
        // Taken for a newer socket (handshakes.rs): just close.
        _ = slot.evicted() => {}
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}
