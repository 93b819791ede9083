//! The chat server, `pichat serve`: the WebSocket protocol of PROTOCOL.md
//! (wire format in [`crate::protocol`]) over the server's store
//! ([`crate::serverdb`]: SQLite, or PostgreSQL for several servers).
//!
//! How it is put together:
//!
//! - [`run`] accepts TCP connections until its shutdown token is cancelled,
//!   backing off when `accept` fails (out of file descriptors: the limits
//!   are fitted to `RLIMIT_NOFILE` first, `fdlimit.rs`). A new socket gets
//!   a handshake place (`handshakes.rs`: a small budget of its own, per
//!   client address too) and is served by hyper with an axum router
//!   (`http/`): `GET /health`, and `/ws`, whose token is checked (SHA-256
//!   digests compared in constant time: `auth.rs`) **before** the upgrade.
//!   Only then does it get a connection place (`registry.rs`:
//!   `max_connections`, `max_connections_per_user`), and the upgrade is
//!   answered (`http/upgrade.rs`).
//! - A connection is its socket (`socket/`): a reader task, which hands
//!   each text frame to the connection's session, and a writer task
//!   draining a queue bounded in bytes (`queue.rs`), behind the shared
//!   handle `conn.rs` (the send policy and the kill switch). The session
//!   (`session/`) decodes each request, routes it by its type to the
//!   handler of its group of actions, and runs the database actions in
//!   order. The connection's own replies wait for room up to
//!   `send_timeout`, and no further request is read while its unsent
//!   replies pass the limit; notifications from other connections never
//!   wait: a full queue means a slow reader, which is disconnected (1013)
//!   and never stalls anyone else. Frames being received share a global
//!   budget in bytes and have a deadline (`reading.rs`).
//! - Notifications go through the per-user hub (`hub.rs`) to the user's
//!   other connections that said `hello`. They are sent from the store
//!   thread right after the change commits, so they leave in `rev` order.
//! - AI replies, text-to-speech and speech-to-text run as jobs of their own
//!   (`session/chat.rs`, `session/speech.rs`), so the reader keeps serving `sync` and the rest while a
//!   reply streams. A reply is stored when its stream ends, whether or not
//!   the client is still there.
//! - Tokens are read again every `ping_interval` (`tokens.rs`): a revoked
//!   token's connections are closed (1008). Security events go to the
//!   audit trail (`audit.rs`), repeated ones as summaries.
//! - Shutdown: the token stops the accept loop and every reader; running
//!   AI streams get `shutdown_grace` to finish, then are cut and what they
//!   produced is stored; then each connection is closed with 1001. Every
//!   task is tracked, so [`run`] returns only when all is stored.
//!
//! The modules import one another one way (see ARCHITECTURE.md, "Rooms,
//! one way"): this file is the top and is imported by none; `State` is in
//! `state.rs`, `ServerOptions` in `options.rs`.
//!
//! The database is a [`ServerStore`] (SQLite or PostgreSQL, `serverdb/`):
//! replies leave only once a write is durable, and what it changed reaches
//! the user's other connections (here and on every server on the same
//! database) through the store's change feed, into the hub, in rev order.
//! Engines are injected ([`Engines`]), so tests can use fakes.

mod audit;
pub mod auth;
pub mod certs;
mod conn;
mod fdlimit;
mod handshakes;
mod http;
mod hub;
mod limiter;
mod metrics;
mod options;
mod queue;
mod reading;
mod registry;
mod session;
mod socket;
mod sockinfo;
mod state;
pub mod tls;
mod tokens;

#[doc(hidden)]
pub mod fuzzing;

pub use fdlimit::{open_files_limit, raise_open_files_limit};
pub use options::ServerOptions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engines::Engines;
use crate::serverdb::ServerStore;
use state::State;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {cause}; set server.listen (or --listen) to a free address")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// Binds the listening socket (separate from [`run`] so callers learn the
/// port of `127.0.0.1:0`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| ServerError::Bind { addr, cause })
}

/// `accept` failed: waits before trying again, longer each time in a row
/// (5 ms doubling to 1 s), and logs one line per second at most.
struct AcceptBackoff {
    delay: Duration,
    failures: u64,
    last_log: Option<tokio::time::Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        AcceptBackoff {
            delay: Self::FIRST,
            failures: 0,
            last_log: None,
        }
    }

    fn succeeded(&mut self) {
        self.delay = Self::FIRST;
    }

    /// How long to wait after this failure.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.failures += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_none_or(|t| now - t >= Duration::from_secs(1))
        {
            tracing::warn!(
                "accept failed ({} time(s) since the last report): {e}; retrying in {} ms",
                self.failures,
                self.delay.as_millis()
            );
            self.failures = 0;
            self.last_log = Some(now);
        }
        let wait = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        wait
    }
}

/// Out of file descriptors (ours or the system's).
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A new socket: served by hyper in a handshake place (`handshakes.rs`),
/// or closed when its address has all the places it may have.
fn accepted_socket(
    state: &Arc<State>,
    router: &axum::Router,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let admitted = match state.handshakes.admit(peer.ip()) {
        Ok(a) => a,
        Err(full) => {
            let reason = format!(
                "socket closed: server.max_handshakes_per_address ({}) unauthenticated sockets from this address",
                full.max
            );
            let who = audit::Who::addr(peer.ip());
            state
                .audit
                .repeated(audit::Event::LimitRefused, who, reason);
            return;
        }
    };
    if let Some(ip) = admitted.evicted {
        let reason = format!(
            "unauthenticated socket dropped to make room: all server.max_handshakes ({}) in use",
            state.opts.max_handshakes
        );
        let who = audit::Who::addr(ip);
        state
            .audit
            .repeated(audit::Event::LimitRefused, who, reason);
    }
    let serve = http::accept(state.clone(), router.clone(), tcp, peer, admitted.slot);
    state.tracker.spawn(serve);
}

/// Every `ping_interval`, reads the tokens again (`tokens.rs`); ends the
/// audit windows (`audit.rs`); every `maintenance_interval`, runs the
/// store's maintenance (`ServerStore::maintain`); until shutdown.
async fn housekeeping(state: Arc<State>) {
    let mut sweep = tokio::time::interval(state.opts.ping_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window = audit::WINDOW;
    let mut audit = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    let every = state.opts.maintenance_interval.max(Duration::from_secs(1));
    let mut maintenance = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = sweep.tick() => state.refresh_tokens().await,
            _ = audit.tick() => state.audit.flush(),
            _ = maintenance.tick() => match state.db.maintain().await {
                Ok(report) => tracing::info!("store maintenance: {report}"),
                Err(e) => tracing::warn!("store maintenance failed (tried again in {} min): {e}", every.as_secs() / 60),
            },
        }
    }
}

/// Serves the protocol on `listener` until `shutdown` is cancelled, then
/// stops cleanly (see the module docs) and returns.
pub async fn run(
    listener: TcpListener,
    db: Arc<dyn ServerStore>,
    engines: Engines,
    mut opts: ServerOptions,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    if let Some(limit) = fdlimit::open_files_limit()
        && let Some(warning) = fdlimit::fit(&mut opts, limit)
    {
        tracing::warn!("{warning}");
    }
    let state = State::new(db, engines, opts, shutdown.clone());
    state.refresh_tokens().await;
    state.tracker.spawn(housekeeping(state.clone()));
    let router = http::router(state.clone());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("listening on {addr}");
    }
    let mut backoff = AcceptBackoff::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    backoff.succeeded();
                    accepted_socket(&state, &router, tcp, peer);
                }
                Err(e) => {
                    if out_of_files(&e) {
                        // Make one free: the oldest socket still in its handshake.
                        state.handshakes.evict_oldest();
                    }
                    let wait = backoff.failed(&e);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    tracing::info!("stopping: {} connection(s) to close", state.registry.len());
    state.tracker.close();
    tokio::select! {
        _ = state.tracker.wait() => {}
        _ = tokio::time::sleep(state.opts.shutdown_grace) => {
            tracing::info!("cutting the AI replies still running (their text is stored)");
            state.cut_streams.cancel();
            state.tracker.wait().await;
        }
    }
    state.audit.flush();
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn accept_failures_back_off_up_to_a_second() {
        let mut b = AcceptBackoff::new();
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(out_of_files(&e));
        let waits: Vec<u128> = (0..10).map(|_| b.failed(&e).as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(&e).as_millis(), 5);
    }
}
