//! The connection as the actions see it: the server's shared state, the
//! connection's handle (where replies go), what its `hello` said, its jobs;
//! and the ways an action reaches the store (reads on a read connection in
//! turn with the user's other reads, writes in a group commit).

use std::sync::Arc;
use std::time::Duration;

use super::db::db_error;
use super::jobs::{Jobs, Responder};
use crate::history::server::UserId;
use crate::history::{HistoryError, Origin, Store};
use crate::protocol::{ClientKind, ErrorCode, ErrorPayload};
use crate::server::audit::Event;
use crate::server::conn::Conn;
use crate::server::state::State;

pub(crate) struct Client {
    pub state: Arc<State>,
    pub conn: Arc<Conn>,
    /// What `hello` said (`None`: no hello yet).
    pub kind: Option<ClientKind>,
    /// This connection's AI/TTS/STT jobs.
    pub jobs: Jobs,
}

impl Client {
    pub fn new(state: Arc<State>, conn: Arc<Conn>) -> Client {
        Client {
            jobs: Jobs::new(state.opts.max_jobs_per_connection, state.tracker.clone()),
            state,
            conn,
            kind: None,
        }
    }

    /// Runs a read on a read connection, in turn with this user's other
    /// reads (another user's reads do not wait behind them).
    pub async fn db<T, F>(&self, f: F) -> Result<T, ErrorPayload>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, HistoryError> + Send + 'static,
    {
        self.state
            .db
            .read(self.user() as u64, f)
            .await
            .map_err(db_error)
    }

    /// Runs a write on the store thread, in a group commit with the writes
    /// queued with it; the result comes once it is durable.
    pub async fn db_write<T, F>(&self, f: F) -> Result<T, ErrorPayload>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, HistoryError> + Send + 'static,
    {
        self.state.db.call_batched(f).await.map_err(db_error)
    }

    pub fn user(&self) -> UserId {
        self.conn.user.id
    }

    /// The `origin` of messages this connection makes.
    pub fn origin(&self) -> Origin {
        match self.kind {
            Some(ClientKind::Voice) => Origin::Voice,
            Some(ClientKind::Web) => Origin::Web,
            Some(ClientKind::Api) | None => Origin::Api,
        }
    }

    /// Where the replies of a job answering `rid` go.
    pub fn responder(&self, rid: Option<String>, action: &'static str) -> Responder {
        Responder {
            conn: self.conn.clone(),
            rid,
            action,
        }
    }

    /// An audit line: `action` was over `limit`.
    pub fn audit_rate_limited(&self, action: &str, limit: &str) {
        let who = self.conn.who();
        let reason = format!("{action}: over the {limit}");
        self.state.audit.repeated(Event::RateLimited, who, reason);
    }

    /// A request over a per-user rate limit (`send_message`, speech):
    /// audited, and answered with when to try again.
    pub fn user_rate_limited(&self, action: &str, wait: Duration) -> ErrorPayload {
        self.audit_rate_limited(action, "user's limit (server.rate_limit_per_min)");
        ErrorPayload {
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
            ..ErrorPayload::new(
                ErrorCode::RateLimited,
                format!("too many {action} requests for this user; try again later"),
            )
        }
    }
}
