//! What every connection shares: the options, the store, the engines,
//! the places (handshakes, connections), the hub, the limits, the token
//! book, the audit trail, the metrics, the server's tasks and its shutdown
//! signals. Built once by `run`; handed to each task as an `Arc<State>`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::AuthUser;
use super::conn::{Conn, SendLimits};
use super::options::ServerOptions;
use super::{audit, handshakes, hub, limiter, metrics, reading, registry, tokens};
use crate::engines::Engines;
use crate::serverdb::ServerStore;
use crate::store::actor::Timing;

/// What every connection shares.
pub(crate) struct State {
    pub(super) opts: ServerOptions,
    pub(super) db: Arc<dyn ServerStore>,
    pub(super) engines: Engines,
    pub(super) hub: Arc<hub::Hub>,
    pub(super) user_limits: limiter::UserLimits,
    /// User message id → "its reply is being generated" (true when done).
    pub(super) in_flight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    pub(super) started: std::time::Instant,
    /// The server is stopping: readers stop, new requests are refused.
    pub(super) shutdown: CancellationToken,
    /// Running AI streams stop and store what they have.
    pub(super) cut_streams: CancellationToken,
    pub(super) tracker: TaskTracker,
    next_conn: AtomicU64,
    /// Places of unauthenticated sockets.
    pub(super) handshakes: Arc<handshakes::Handshakes>,
    /// Places and handles of the connections.
    pub(super) registry: Arc<registry::Registry>,
    pub(super) read_budget: reading::ReadBudget,
    pub(super) tokens: tokens::TokenBook,
    pub(super) audit: Arc<audit::Audit>,
    /// What `GET /metrics` shows.
    pub(super) metrics: Arc<metrics::Metrics>,
}

impl State {
    pub(super) fn new(
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

    /// A new connection of `user` (its handle; `socket::run` serves it).
    pub(super) fn new_conn(&self, user: AuthUser, peer: SocketAddr) -> Arc<Conn> {
        let limits = SendLimits {
            queue_bytes: self.opts.send_queue_bytes,
            send_timeout: self.opts.send_timeout,
        };
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Conn::new(id, user, peer, limits, self.audit.clone())
    }

    /// Reads the tokens again; closes the connections of revoked ones.
    pub(super) async fn refresh_tokens(&self) {
        self.tokens
            .refresh(&*self.db, &self.registry, &self.audit)
            .await;
    }
}
