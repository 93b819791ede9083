//! The HTTP side of `pichat serve`: hyper's HTTP/1.1 under an axum router.
//!
//! - Each accepted socket is served by [`serve`] while it holds a handshake
//!   place (`handshakes.rs`): hyper reads the request head within
//!   `header_timeout` (else it closes the socket) and at most [`MAX_HEAD`]
//!   bytes of it (else `431`).
//! - [`router`] has the routes: `GET /health` here, `GET /ws` (`ws.rs`:
//!   the token checked **before** anything is upgraded, `upgrade.rs` the
//!   handshake), the web app's (`web.rs`: its files, sign-in, `/export`,
//!   `/metrics`). New endpoints are new routes.
//! - Errors have JSON bodies (`answer.rs`). Every answer but the `101`
//!   closes the HTTP connection (`Connection: close`): a socket is either
//!   upgraded or done after one request.
//!
//! Inside: this file → `ws.rs`, `web.rs` → `upgrade.rs`, `answer.rs`; no
//! part imports this file.

mod answer;
mod upgrade;
mod web;
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State as With;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::protocol::{ErrorCode, Health, StoreState};
use crate::server::handshakes::Slot;
use crate::server::state::State;
use answer::{Peer, SocketFd, error, with_header};

/// Longest request head (hyper's smallest read buffer): over it, `431`.
pub(crate) const MAX_HEAD: usize = 8192;

/// How long in-flight requests may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The routes.
pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/health", get(health).fallback(only_get))
        .route("/ws", get(ws::ws).fallback(only_get))
        .merge(web::routes())
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

/// How long `/health` and `/metrics` wait for the store's state.
const STORE_STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The store's state, or "not ok" when it does not answer in time (the
/// reason goes to the log, not to the open endpoints).
pub(super) async fn store_state(state: &State) -> crate::serverdb::StoreHealth {
    let h = match tokio::time::timeout(STORE_STATE_WAIT, state.db.health()).await {
        Ok(h) => h,
        Err(_) => crate::serverdb::StoreHealth {
            kind: state.db.kind(),
            error: Some(format!(
                "no answer within {} ms",
                STORE_STATE_WAIT.as_millis()
            )),
            ..Default::default()
        },
    };
    if let Some(e) = &h.error {
        tracing::warn!("the store is not healthy: {e}");
    }
    h
}

/// `GET /health`: 200 `ok`; 503 `stopping` during shutdown, 503
/// `store_unavailable` when the database does not answer.
async fn health(With(state): With<Arc<State>>) -> Response {
    let stopping = state.shutdown.is_cancelled();
    let store = store_state(&state).await;
    state.metrics.set_store(&store);
    let status = match (stopping, store.ok) {
        (true, _) => "stopping",
        (false, false) => "store_unavailable",
        (false, true) => "ok",
    };
    let body = Health {
        status: status.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: state.started.elapsed().as_secs(),
        connections: state.registry.len(),
        store: StoreState {
            kind: store.kind.into(),
            ok: store.ok,
            bytes: store.bytes,
            reclaimable_bytes: store.reclaimable_bytes,
            wal_bytes: store.wal_bytes,
            pool_size: store.pool_size,
            pool_idle: store.pool_idle,
            last_maintenance: store.last_maintenance,
        },
    };
    let status = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let headers = [
        (header::CACHE_CONTROL, "no-store"),
        (header::CONNECTION, "close"),
    ];
    (status, headers, Json(body)).into_response()
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
