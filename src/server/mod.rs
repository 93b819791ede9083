//! The chat server, `pichat serve`: the WebSocket protocol of PROTOCOL.md
//! (wire format in [`crate::protocol`]) over the server tables of the
//! history store ([`crate::history::server`]).
//!
//! How it is put together:
//!
//! - [`run`] accepts TCP connections until its shutdown token is cancelled,
//!   backing off when `accept` fails (out of file descriptors: the limits
//!   are fitted to `RLIMIT_NOFILE` first, `fdlimit.rs`). A new socket gets
//!   a handshake place (`handshakes.rs`: a small budget of its own, per
//!   client address too) and is served by hyper with an axum router
//!   (`http.rs`): `GET /health`, and `/ws`, whose token is checked (SHA-256
//!   digests compared in constant time: `auth.rs`) **before** the upgrade.
//!   Only then does it get a connection place (`registry.rs`:
//!   `max_connections`, `max_connections_per_user`), and the upgrade is
//!   answered (`upgrade.rs`).
//! - A connection (`conn.rs`) is a reader task, which decodes frames and runs
//!   the database actions in order (`handlers.rs`), and a writer task fed by
//!   a queue bounded in bytes (`queue.rs`). The connection's own replies
//!   wait for room up to `send_timeout`, and no further request is read
//!   while its unsent replies pass the limit; notifications from other
//!   connections never wait: a full queue means a slow reader, which is
//!   disconnected (1013) and never stalls anyone else. Frames being
//!   received share a global budget in bytes and have a deadline
//!   (`reading.rs`).
//! - Notifications go through the per-user hub (`hub.rs`) to the user's
//!   other connections that said `hello`. They are sent from the store
//!   thread right after the change commits, so they leave in `rev` order.
//! - AI replies, text-to-speech and speech-to-text run as jobs of their own
//!   (`ai.rs`), so the reader keeps serving `sync` and the rest while a
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
//! The database is a [`ServerStore`] (SQLite or PostgreSQL, `serverdb/`):
//! replies leave only once a write is durable, and what it changed reaches
//! the user's other connections (here and on every server on the same
//! database) through the store's change feed, into the hub, in rev order.
//! Engines are injected ([`Engines`]), so tests can use fakes.

mod ai;
mod audit;
pub mod auth;
pub mod certs;
mod conn;
mod fdlimit;
mod handlers;
mod handshakes;
mod http;
mod hub;
mod limiter;
mod metrics;
mod queue;
mod reading;
mod registry;
mod sockinfo;
pub mod tls;
mod tokens;
mod upgrade;
mod web;

#[doc(hidden)]
pub mod fuzzing;

pub use fdlimit::{open_files_limit, raise_open_files_limit};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::engines::Engines;
use crate::serverdb::ServerStore;
use crate::store::actor::Timing;

/// How the server behaves; [`ServerOptions::from_config`] for production,
/// tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `send_message`, `speech_to_text`, `text_to_speech`: requests per user
    /// per minute, each action counted on its own.
    pub rate_limit_per_min: u32,
    /// Connections held at once; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Connections of one user held at once; more are refused with HTTP 429.
    pub max_connections_per_user: usize,
    /// Sockets not yet authenticated, in all (the oldest makes room for a
    /// new one) and per client address (more are closed).
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    /// WebSocket ping period; also how often revoked tokens are looked for.
    pub ping_interval: Duration,
    /// A peer that sends nothing (not even a pong) for this long is dropped.
    pub idle_timeout: Duration,
    /// Bytes queued for one connection's writer (see `queue.rs`).
    pub send_queue_bytes: usize,
    /// How long a connection's own replies wait for room in its queue
    /// before it is dropped as too slow.
    pub send_timeout: Duration,
    /// Bytes of frames being received, all connections together.
    pub read_budget_bytes: usize,
    /// A frame must be received whole within this time of its first byte.
    pub frame_timeout: Duration,
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
    /// Longest `speech_to_text` audio (`stt.max_seconds`).
    pub stt_max: Duration,
    /// How long a browser stays signed in (the session cookie's life).
    pub session_ttl: Duration,
    /// Served over TLS (`server.tls_cert`, loaded by [`tls::load`]):
    /// session cookies are `Secure` and the app's own origin is `https://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            rate_limit_per_min: 5,
            max_connections: 10_000,
            max_connections_per_user: 64,
            max_handshakes: 512,
            max_handshakes_per_address: 64,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            send_queue_bytes: 1 << 20,
            send_timeout: Duration::from_secs(10),
            read_budget_bytes: 64 << 20,
            frame_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(60),
            engine_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            requests_per_sec: 100,
            request_burst: 1000,
            max_jobs_per_connection: 4,
            system_prompt: "You are a helpful assistant.".into(),
            context_tokens: 3000,
            stt_max: Duration::from_secs(60),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            tls: None,
        }
    }
}

impl ServerOptions {
    pub fn from_config(cfg: &Config) -> Self {
        let s = &cfg.server;
        ServerOptions {
            rate_limit_per_min: s.rate_limit_per_min,
            max_connections: s.max_connections,
            max_connections_per_user: s.max_connections_per_user,
            max_handshakes: s.max_handshakes,
            max_handshakes_per_address: s.max_handshakes_per_address,
            header_timeout: s.header_timeout,
            send_queue_bytes: s.send_queue_bytes,
            read_budget_bytes: s.read_budget_bytes,
            frame_timeout: s.frame_timeout,
            session_ttl: s.session_ttl,
            tls: None,
            system_prompt: cfg.llm.system_prompt.clone(),
            context_tokens: cfg.llm.context_tokens,
            stt_max: cfg.stt.max_duration,
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
    db: Arc<dyn ServerStore>,
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
    /// Places of unauthenticated sockets.
    handshakes: Arc<handshakes::Handshakes>,
    /// Places and handles of the connections.
    registry: Arc<registry::Registry>,
    read_budget: reading::ReadBudget,
    tokens: tokens::TokenBook,
    audit: Arc<audit::Audit>,
    /// What `GET /metrics` shows.
    metrics: Arc<metrics::Metrics>,
}

impl State {
    fn new(
        db: Arc<dyn ServerStore>,
        engines: Engines,
        opts: ServerOptions,
        shutdown: CancellationToken,
    ) -> Arc<State> {
        Arc::new(State {
            user_limits: limiter::UserLimits::new(opts.rate_limit_per_min),
            handshakes: handshakes::Handshakes::new(
                opts.max_handshakes,
                opts.max_handshakes_per_address,
            ),
            registry: registry::Registry::new(opts.max_connections, opts.max_connections_per_user),
            read_budget: reading::ReadBudget::new(opts.read_budget_bytes),
            tokens: tokens::TokenBook::default(),
            audit: Arc::new(audit::Audit::default()),
            metrics: {
                let m = metrics::Metrics::new();
                let seen = m.clone();
                db.observe(Box::new(move |t| match t {
                    Timing::QueueWait(d) => seen.store_wait(d),
                    Timing::Commit(d) => seen.store_commit(d),
                }));
                m
            },
            hub: {
                let hub = Arc::new(hub::Hub::default());
                db.subscribe(hub.clone());
                hub
            },
            opts,
            db,
            engines,
            in_flight: Mutex::new(HashMap::new()),
            started: std::time::Instant::now(),
            shutdown,
            cut_streams: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
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
    tokens::refresh(&state).await;
    state.tracker.spawn(tokens::watch(state.clone()));
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

    #[test]
    fn options_come_from_the_config() {
        let text = "[server]\nmax_connections = 7\nmax_connections_per_user = 3\nmax_handshakes = 9\n\
                    max_handshakes_per_address = 2\nheader_timeout_s = 4\nsend_queue_kib = 32\n\
                    read_budget_mib = 5\nframe_timeout_s = 6\n";
        let (_, cfg) = crate::config::parse_str(text, std::path::Path::new("t.toml")).unwrap();
        let o = ServerOptions::from_config(&cfg);
        assert_eq!(
            (
                o.max_connections,
                o.max_connections_per_user,
                o.max_handshakes,
                o.max_handshakes_per_address
            ),
            (7, 3, 9, 2)
        );
        assert_eq!(o.header_timeout, Duration::from_secs(4));
        assert_eq!(
            (o.send_queue_bytes, o.read_budget_bytes),
            (32 << 10, 5 << 20)
        );
        assert_eq!(o.frame_timeout, Duration::from_secs(6));
        // The defaults are the shipped config's.
        let (_, cfg) = crate::config::parse_str("", std::path::Path::new("t.toml")).unwrap();
        let (o, d) = (ServerOptions::from_config(&cfg), ServerOptions::default());
        assert_eq!(
            (
                o.max_connections_per_user,
                o.max_handshakes,
                o.max_handshakes_per_address
            ),
            (
                d.max_connections_per_user,
                d.max_handshakes,
                d.max_handshakes_per_address
            )
        );
        assert_eq!(
            (
                o.send_queue_bytes,
                o.read_budget_bytes,
                o.frame_timeout,
                o.header_timeout
            ),
            (
                d.send_queue_bytes,
                d.read_budget_bytes,
                d.frame_timeout,
                d.header_timeout
            )
        );
    }

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
