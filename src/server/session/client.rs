//! The connection as the actions see it: the server's shared state, the
//! connection's handle (where replies go), what its `hello` said, its jobs;
//! and the store, with this connection as the author of its writes.

use std::sync::Arc;
use std::time::Duration;

use super::jobs::{Jobs, Responder};
use crate::protocol::{ClientKind, ErrorCode, ErrorPayload};
use crate::server::audit::Event;
use crate::server::conn::Conn;
use crate::server::state::State;
use crate::serverdb::{Author, ServerStore, UserId};
use crate::store::Origin;

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

    /// The store (reads are taken in turn by user; a write's result comes
    /// once it is durable, and its changes reach the user's other
    /// connections through the store's feed).
    pub fn store(&self) -> &dyn ServerStore {
        &*self.state.db
    }

    /// This connection, as the author of its writes (left out of their
    /// notifications: it has the reply).
    pub fn author(&self) -> Author {
        Author(self.conn.id)
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
