//! The chat server's database (`pichat serve`): one trait, [`ServerStore`],
//! and two stores with the same semantics — SQLite (`sqlite/`, the
//! default: one file, one server) and PostgreSQL (`postgres/`: several
//! servers on one database). Chosen by `server.database`: a path, or a
//! `postgres://` URL ([`Location`], [`open`]).
//!
//! What every store guarantees (tested on both by the same suite):
//! - **Per-user revisions.** Each change of a user (a conversation
//!   created, changed or deleted, a message added, settings changed) takes
//!   the user's next `rev` inside the writing transaction and stamps it on
//!   the row, so the rows with `rev > N` are what a client at cursor N
//!   lacks, and each user's revs are strictly increasing in commit order.
//! - **Idempotent creates** by client-made UUIDs (`duplicate`), `Conflict`
//!   for the same id with other content or of another user, tombstones for
//!   deleted conversations (ids are never reused).
//! - **Per-user isolation**: every method takes the user's id and reads or
//!   changes only that user's rows.
//! - **Byte-capped pages**: the paged reads ask `fits` about each record
//!   before it goes in (the first always goes).
//! - **The change feed** ([`FeedSink`]): what a write changed is delivered
//!   after its commit, for each user in `rev` order, to every server on the
//!   database (`feed.rs`; PostgreSQL: LISTEN/NOTIFY).
//!
//! Records: `records.rs`; their wire form: `wire.rs`; copying a SQLite
//! store into PostgreSQL: `migrate.rs`.

pub mod feed;
pub mod migrate;
pub mod postgres;
pub mod records;
pub mod sqlite;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

pub use feed::{Author, Committed, FeedSink};
pub use records::*;
pub use wire::notification;

use crate::history::export::ExportedConversation;
use crate::store::actor::Timing;
use crate::store::{Message, NewConversation, NewMessage, OpenOptions, Result, SearchHit};

/// Asked about each record of a page before it goes in (the caller counts
/// its bytes); the first record goes in whatever it says.
pub type Fits<T> = Box<dyn FnMut(&T) -> bool + Send>;

/// A page of a conversation's messages as both stores assemble it from
/// rows read newest first: at most `limit`, ended at its oldest end where
/// `fits` says no (the newest goes in whatever it says), oldest first.
pub(crate) struct MessagePage<F> {
    limit: usize,
    fits: F,
    out: Vec<Message>,
    more: bool,
}

impl<F: FnMut(&Message) -> bool> MessagePage<F> {
    pub fn new(limit: usize, fits: F) -> Self {
        MessagePage {
            limit,
            fits,
            out: Vec::new(),
            more: false,
        }
    }

    /// Takes the next older message; false when it does not go in: the
    /// page is done and has more.
    pub fn offer(&mut self, m: Message) -> bool {
        if self.out.len() == self.limit || (!(self.fits)(&m) && !self.out.is_empty()) {
            self.more = true;
            return false;
        }
        self.out.push(m);
        true
    }

    /// The messages, oldest first, and whether older ones remain.
    pub fn finish(self) -> (Vec<Message>, bool) {
        let mut out = self.out;
        out.reverse();
        (out, self.more)
    }
}

/// A `fits` that takes everything (for callers with their own limit).
pub fn everything<T>() -> Fits<T> {
    Box::new(|_| true)
}

/// Where the server's database is: `server.database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Location {
    /// A URL with a `postgres` scheme is PostgreSQL; anything else a path.
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::Sqlite(s.into())
        }
    }

    /// Checks a PostgreSQL URL (a path is checked when opened).
    pub fn check(&self) -> std::result::Result<(), String> {
        match self {
            Location::Sqlite(_) => Ok(()),
            Location::Postgres(url) => {
                use std::str::FromStr;
                tokio_postgres::Config::from_str(url).map(|_| ()).map_err(|e| {
                    format!(
                        "{}: not a PostgreSQL URL ({e}); use postgres://USER:PASSWORD@HOST:PORT/DATABASE",
                        postgres::redact(url)
                    )
                })
            }
        }
    }

    /// For messages and logs: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => postgres::redact(url),
        }
    }
}

/// The state of a store, for `/health` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreHealth {
    /// "sqlite" or "postgres".
    pub kind: &'static str,
    /// The path, or the URL without its password.
    pub location: String,
    /// The store answered a trivial query just now.
    pub ok: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes on disk (the SQLite file and its WAL; the PostgreSQL tables and indexes).
    pub bytes: u64,
    /// Bytes that could be given back: SQLite's free pages; PostgreSQL's
    /// dead tuples, estimated (bloat, left to autovacuum).
    pub reclaimable_bytes: u64,
    /// SQLite: the `-wal` file.
    pub wal_bytes: u64,
    /// PostgreSQL: pool connections open and idle.
    pub pool_size: usize,
    pub pool_idle: usize,
    /// The last maintenance pass (ms since the epoch), if any.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub last_maintenance: Option<i64>,
}

/// The chat server's store; see the module docs. Every method that takes
/// an [`Author`] is a write whose changes go to the feed, leaving out that
/// connection (it has the reply).
#[async_trait]
pub trait ServerStore: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn kind(&self) -> &'static str;

    // ---- users and tokens ----

    /// Adds a device token (its SHA-256) for `user`, creating the user.
    async fn add_token(
        &self,
        user: &str,
        device: Option<&str>,
        hash: [u8; 32],
    ) -> Result<TokenInfo>;
    /// Every token, by user then id.
    async fn tokens(&self) -> Result<Vec<TokenInfo>>;
    /// Revokes a token (it stays listed); revoking twice is no error.
    async fn revoke_token(&self, id: i64) -> Result<TokenInfo>;
    /// The live token with this hash, if any (noting its use).
    async fn token_by_hash(&self, hash: [u8; 32]) -> Result<Option<TokenMatch>>;
    /// The user's current revision.
    async fn user_rev(&self, user: UserId) -> Result<i64>;
    /// The id of a user by name.
    async fn user_id(&self, name: &str) -> Result<UserId>;

    // ---- browser sessions (the web app) ----

    /// Stores a session (the digest of its cookie) of `token_id`, valid
    /// until `expires_at`; expired ones go, and the token's oldest beyond
    /// `records::MAX_SESSIONS_PER_TOKEN`.
    async fn create_session(
        &self,
        token_id: i64,
        digest: [u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<()>;
    /// The user of a live session (not expired at `now`, its token not
    /// revoked) and its expiry.
    async fn session(&self, digest: [u8; 32], now: i64) -> Result<Option<(TokenMatch, i64)>>;
    /// Ends a session; one that is gone is no error.
    async fn delete_session(&self, digest: [u8; 32]) -> Result<()>;

    // ---- conversations ----

    /// Creates a conversation; an id of this user's returns it and `true`,
    /// another user's or a deleted one is a `Conflict`.
    async fn create_conversation(
        &self,
        by: Author,
        user: UserId,
        new: NewConversation,
    ) -> Result<(ServerConversation, bool)>;
    /// The user's conversation (not deleted).
    async fn get_conversation(&self, user: UserId, id: &str) -> Result<ServerConversation>;
    /// Changes title, archived flag or model; says whether anything changed.
    async fn update_conversation(
        &self,
        by: Author,
        user: UserId,
        id: &str,
        u: ConversationUpdate,
    ) -> Result<(ServerConversation, bool)>;
    /// Deletes a conversation (its messages go, a tombstone stays): its
    /// rev and whether it was deleted already.
    async fn delete_conversation(&self, by: Author, user: UserId, id: &str) -> Result<(i64, bool)>;
    /// A page of the user's conversations, newest activity first, after
    /// `before`; and whether more follow.
    async fn list_conversations(
        &self,
        user: UserId,
        include_archived: bool,
        limit: usize,
        before: Option<String>,
    ) -> Result<(Vec<ServerConversation>, bool)>;

    // ---- messages ----

    /// Stores one message (idempotent by id).
    async fn add_message(&self, by: Author, user: UserId, new: NewMessage) -> Result<Stored>;
    /// Stores many in one transaction; each stored, a duplicate, or rejected.
    async fn append_messages(
        &self,
        by: Author,
        user: UserId,
        msgs: Vec<NewMessage>,
    ) -> Result<AppendOutcome>;
    /// A message of the user and the first assistant reply to it.
    async fn find_message(&self, user: UserId, id: &str) -> Result<Option<MessageWithReply>>;
    /// Up to `limit` messages of a conversation, oldest first: the newest,
    /// or those before `before`; and whether older ones exist.
    async fn messages(
        &self,
        user: UserId,
        conversation_id: &str,
        limit: usize,
        before: Option<String>,
        fits: Fits<Message>,
    ) -> Result<(Vec<Message>, bool)>;
    /// Full-text search in the user's messages, best first; snippets mark
    /// matched words with `[` and `]`.
    async fn search(
        &self,
        user: UserId,
        query: &str,
        conversation_id: Option<String>,
        limit: usize,
        fits: Fits<SearchHit>,
    ) -> Result<Vec<SearchHit>>;
    /// What the LLM reply to `upto` is made from (one snapshot).
    async fn reply_context(
        &self,
        user: UserId,
        conversation_id: &str,
        upto: &str,
        default_prompt: &str,
        budget_tokens: usize,
    ) -> Result<ReplyContext>;

    // ---- settings ----

    async fn settings(&self, user: UserId) -> Result<ServerSettings>;
    /// Applies a partial change; says whether anything changed.
    async fn update_settings(
        &self,
        by: Author,
        user: UserId,
        u: SettingsUpdate,
    ) -> Result<(ServerSettings, bool)>;

    // ---- sync ----

    /// The user's changes with `rev > since`, ascending, each row once at
    /// its latest state, about `limit` of them (see `sqlite/feed.rs`).
    async fn changes(
        &self,
        user: UserId,
        since: i64,
        limit: usize,
        fits: Fits<ServerChange>,
    ) -> Result<ChangePage>;

    // ---- exports (the web app's downloads) ----

    /// The conversations to export, newest activity first: one or all.
    async fn export_ids(&self, user: UserId, conversation: Option<String>) -> Result<Vec<String>>;
    /// One conversation with all its messages, oldest first; `None` when
    /// it was deleted meanwhile.
    async fn export_conversation(
        &self,
        user: UserId,
        id: &str,
    ) -> Result<Option<ExportedConversation>>;

    // ---- the feed, limits, health ----

    /// Where committed changes go from now on (set once, at start).
    fn subscribe(&self, sink: Arc<dyn FeedSink>);
    /// Takes a token of `user`'s bucket `what` (`per_min` a minute, burst
    /// `per_min`) in a bucket every server on this store shares; `None`
    /// when this store serves one server only (the caller's own buckets
    /// then hold).
    async fn take_shared(
        &self,
        user: UserId,
        what: &'static str,
        per_min: u32,
    ) -> Result<Option<std::result::Result<(), Duration>>>;
    /// The store's state now.
    async fn health(&self) -> StoreHealth;
    /// One maintenance pass; a line saying what it did.
    async fn maintain(&self) -> Result<String>;
    /// Calls `f` with each timing of the store (queue waits, commits).
    fn observe(&self, f: Box<dyn Fn(Timing) + Send + Sync>);
}

/// Options of the stores.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// SQLite: busy timeout, read connections, create.
    pub sqlite: OpenOptions,
    /// PostgreSQL: connections in the pool at most.
    pub pool_size: usize,
    /// PostgreSQL: how long to wait for a connection (from the pool or new).
    pub connect_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sqlite: OpenOptions::default(),
            pool_size: postgres::DEFAULT_POOL_SIZE,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// An open store, and what must be waited for at shutdown.
pub struct Opened {
    pub store: Arc<dyn ServerStore>,
    /// SQLite: the store thread, joined once every handle is dropped.
    pub thread: Option<crate::store::actor::StoreThread>,
}

/// Opens (creating or migrating as needed) the store at `at`.
pub async fn open(at: &Location, opts: &StoreOptions) -> Result<Opened> {
    match at {
        Location::Sqlite(path) => {
            let (store, thread) = sqlite::SqliteStore::open(path, &opts.sqlite)?;
            Ok(Opened {
                store: Arc::new(store),
                thread: Some(thread),
            })
        }
        Location::Postgres(url) => {
            let store = postgres::PgStore::open(url, opts).await?;
            Ok(Opened {
                store: Arc::new(store),
                thread: None,
            })
        }
    }
}
