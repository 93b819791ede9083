//! `GET /ws`: the token (a device's Bearer header, else `?token=`; else a
//! browser's session cookie, only from this server's own `Origin`) is
//! checked **before** anything is upgraded; then the upgrade request
//! (`upgrade.rs`), then the connection's place (`registry.rs`); only then
//! is the `101` answered, and the upgraded socket is run as a connection
//! of its own (`socket/`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Request, State as With};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::answer::{Peer, SocketFd, error, with_header};
use super::upgrade::Upgrade;
use super::web;
use crate::protocol::{ErrorCode, limits};
use crate::server::audit::{Event, Who};
use crate::server::auth::{self, AuthUser};
use crate::server::reading::Metered;
use crate::server::registry::{Admission, Refusal};
use crate::server::socket;
use crate::server::state::State;

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
    let checked = match cred {
        Credential::Token(t) => auth::check(&*state.db, &t).await,
        Credential::Session(v) => auth::check_session(&*state.db, &v, now)
            .await
            .map(|o| o.map(|(u, _)| u)),
    };
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
pub(super) async fn ws(
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
        None => match web::session_cookie(&parts.headers) {
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
        && !web::same_origin(&parts.headers, state.opts.tls.is_some())
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
        socket::run(st, ws, marks, fd, user, peer, admission).await;
    });
    response
}
