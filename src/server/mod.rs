//! The chat server, `pichat serve`: the WebSocket protocol of PROTOCOL.md
//! (wire format in [`crate::protocol`]) over the server tables of the
//! history store ([`crate::history::server`]).
//!
//! How it is put together:
//!
//! - [`run`] accepts TCP connections until its shutdown token is cancelled.
//!   Each socket is served by `http.rs`: it peeks at the request head and
//!   answers `GET /health` itself, refuses `/ws` without a valid token with
//!   HTTP 401 **before** the upgrade (tokens are compared as SHA-256
//!   digests, in constant time: `auth.rs`), then upgrades.
//! - A connection (`conn.rs`) is a reader task, which decodes frames and runs
//!   the database actions in order (`handlers.rs`), and a writer task fed by
//!   a bounded queue. The connection's own replies wait for room in the
//!   queue up to `send_timeout`; notifications from other connections never
//!   wait: a full queue means a slow reader, which is disconnected (1013)
//!   and never stalls anyone else.
//! - Notifications go through the per-user hub (`hub.rs`) to the user's
//!   other connections that said `hello`. They are sent from the store
//!   thread right after the change commits, so they leave in `rev` order.
//! - AI replies, text-to-speech and speech-to-text run as jobs of their own
//!   (`ai.rs`), so the reader keeps serving `sync` and the rest while a
//!   reply streams. A reply is stored when its stream ends, whether or not
//!   the client is still there.
//! - Shutdown: the token stops the accept loop and every reader; running
//!   AI streams get `shutdown_grace` to finish, then are cut and what they
//!   produced is stored; then each connection is closed with 1001. Every
//!   task is tracked, so [`run`] returns only when all is stored.
//!
//! SQLite runs only on the store thread ([`HistoryHandle`]). Writes use
//! `call_batched`: the writes queued together share one commit (one fsync),
//! and replies and notifications leave only once it is durable
//! (`Store::after_commit`). Engines are injected ([`Engines`]), so tests can
//! use fakes.

mod ai;
pub mod auth;
pub mod certs;
mod conn;
mod handlers;
mod http;
mod hub;
mod limiter;

#[doc(hidden)]
pub mod fuzzing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::engines::Engines;
use crate::history::actor::HistoryHandle;

/// How the server behaves; [`ServerOptions::from_config`] for production,
/// tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `send_message`, `speech_to_text`, `text_to_speech`: requests per user
    /// per minute, each action counted on its own.
    pub rate_limit_per_min: u32,
    /// Connections held at once; more are refused with HTTP 503.
    pub max_connections: usize,
    /// WebSocket ping period.
    pub ping_interval: Duration,
    /// A peer that sends nothing (not even a pong) for this long is dropped.
    pub idle_timeout: Duration,
    /// Frames queued for one connection's writer.
    pub send_queue: usize,
    /// How long a connection's own replies wait for room in its queue
    /// before it is dropped as too slow.
    pub send_timeout: Duration,
    /// An LLM silent for this long is cut (what it said is stored).
    pub stall_timeout: Duration,
    /// Longest a text-to-speech or speech-to-text request may take.
    pub engine_timeout: Duration,
    /// At shutdown, how long running AI streams may go on before being cut.
    pub shutdown_grace: Duration,
    /// Time to send the HTTP request head.
    pub header_timeout: Duration,
    /// The generous per-connection limit of all other actions: sustained
    /// requests per second, and burst.
    pub requests_per_sec: u32,
    pub request_burst: u32,
    /// AI/TTS/STT jobs running at once per connection.
    pub max_jobs_per_connection: usize,
    /// System prompt when the user has no `assistant_personality`.
    pub system_prompt: String,
    /// Token budget of the LLM context.
    pub context_tokens: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            rate_limit_per_min: 5,
            max_connections: 10_000,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            send_queue: 1024,
            send_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            engine_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            requests_per_sec: 100,
            request_burst: 1000,
            max_jobs_per_connection: 4,
            system_prompt: "You are a helpful assistant.".into(),
            context_tokens: 3000,
        }
    }
}

impl ServerOptions {
    pub fn from_config(cfg: &Config) -> Self {
        ServerOptions {
            rate_limit_per_min: cfg.server.rate_limit_per_min,
            max_connections: cfg.server.max_connections,
            system_prompt: cfg.llm.system_prompt.clone(),
            context_tokens: cfg.llm.context_tokens,
            ..ServerOptions::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {cause}; set server.listen (or --listen) to a free address")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// What every connection shares.
pub(crate) struct State {
    opts: ServerOptions,
    db: HistoryHandle,
    engines: Engines,
    hub: Arc<hub::Hub>,
    user_limits: limiter::UserLimits,
    /// User message id → "its reply is being generated" (true when done).
    in_flight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    started: std::time::Instant,
    /// The server is stopping: readers stop, new requests are refused.
    shutdown: CancellationToken,
    /// Running AI streams stop and store what they have.
    cut_streams: CancellationToken,
    tracker: TaskTracker,
    next_conn: AtomicU64,
    connections: AtomicUsize,
}

impl State {
    fn new(
        db: HistoryHandle,
        engines: Engines,
        opts: ServerOptions,
        shutdown: CancellationToken,
    ) -> Arc<State> {
        Arc::new(State {
            user_limits: limiter::UserLimits::new(opts.rate_limit_per_min),
            opts,
            db,
            engines,
            hub: Arc::new(hub::Hub::default()),
            in_flight: Mutex::new(HashMap::new()),
            started: std::time::Instant::now(),
            shutdown,
            cut_streams: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
        })
    }
}

/// Binds the listening socket (separate from [`run`] so callers learn the
/// port of `127.0.0.1:0`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| ServerError::Bind { addr, cause })
}

/// Serves the protocol on `listener` until `shutdown` is cancelled, then
/// stops cleanly (see the module docs) and returns.
pub async fn run(
    listener: TcpListener,
    db: HistoryHandle,
    engines: Engines,
    opts: ServerOptions,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let state = State::new(db, engines, opts, shutdown.clone());
    let permits = Arc::new(Semaphore::new(state.opts.max_connections));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("listening on {addr}");
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let permit = permits.clone().try_acquire_owned().ok();
                    state.tracker.spawn(http::serve(state.clone(), tcp, peer, permit));
                }
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to close.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(
        "stopping: {} connection(s) to close",
        state.connections.load(Ordering::Relaxed)
    );
    state.tracker.close();
    tokio::select! {
        _ = state.tracker.wait() => {}
        _ = tokio::time::sleep(state.opts.shutdown_grace) => {
            tracing::info!("cutting the AI replies still running (their text is stored)");
            state.cut_streams.cancel();
            state.tracker.wait().await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}
