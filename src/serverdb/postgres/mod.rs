//! The chat server's PostgreSQL store (`server.database = "postgres://…"`),
//! for several `pichat serve` processes on one database: the same
//! semantics as the SQLite store (see `serverdb/mod.rs`), through
//! tokio-postgres and a deadpool pool (`server.database_pool`
//! connections), TLS through rustls (`sslmode` in the URL: `prefer`, the
//! default, uses TLS when the server offers it; `require` insists).
//!
//! - Revisions: every write locks its user's `srv_users` row first
//!   (`SELECT … FOR UPDATE`), so one user's writes run one at a time on
//!   every server and commit in rev order, and its check-then-insert steps
//!   cannot race; the new rev is written back before the commit.
//! - Every write sends `NOTIFY pichat_feed` with its user and revs inside
//!   its transaction (delivered only if it commits, in commit order):
//!   `listen.rs` turns them into the change feed of every server.
//! - Reads of several queries run in one `REPEATABLE READ READ ONLY`
//!   transaction (one snapshot), and read long lists in chunks by keyset,
//!   so a page never holds more rows than it sends.
//! - Per-user rate limits are buckets in `srv_rate`, shared by every server.
//! - Errors are classified in [`pg_error`]: a server that cannot be reached
//!   is `Unreachable` (retryable: `unavailable` on the wire).
//!
//! Split by concern like the SQLite store: `users.rs`, `conversations.rs`,
//! `messages.rs`, `settings.rs`, `feed.rs` (the sync feed), `limits.rs`.

pub mod cluster;
mod conversations;
mod feed;
mod limits;
mod listen;
mod messages;
pub mod schema;
mod settings;
mod users;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::feed::{Author, FeedSink};
use super::records::*;
use super::{Fits, ServerStore, StoreHealth, StoreOptions};
use crate::history::export::ExportedConversation;
use crate::store::actor::Timing;
use crate::store::{
    Message, NewConversation, NewMessage, Origin, Result, Role, SearchHit, StoreError,
};

/// Connections in the pool at most, by default (`server.database_pool`).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// The channel of the change feed.
pub const CHANNEL: &str = "pichat_feed";

/// A URL without its password (for messages and logs).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "postgres://(unreadable URL)".into(),
    }
}

/// A PostgreSQL error in the store's terms (see the module docs).
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    };
    if e.is_closed() {
        return StoreError::Unreachable {
            server: String::new(),
            detail: "the connection was closed".into(),
        };
    }
    match e.code() {
        None => StoreError::Unreachable {
            server: String::new(),
            detail,
        },
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            StoreError::Conflict("that id is already taken; make a new UUID".into())
        }
        Some(c) if *c == SqlState::DISK_FULL => StoreError::DiskFull {
            path: PathBuf::from("PostgreSQL"),
        },
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            StoreError::CommitFailed {
                path: PathBuf::from("PostgreSQL"),
                detail,
            }
        }
        Some(c)
            if c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
        {
            StoreError::Unreachable {
                server: String::new(),
                detail,
            }
        }
        Some(_) => StoreError::Postgres(detail),
    }
}

/// An error about the database at `server` (its redacted URL).
pub(crate) fn server_error(server: &str, detail: String) -> StoreError {
    StoreError::Postgres(format!("{server}: {detail}"))
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

async fn stmt(c: &impl GenericClient, sql: &str) -> Result<Statement> {
    c.prepare_cached(sql).await.map_err(pg_error)
}

/// Rows of a (cached) statement.
pub(crate) async fn rows(c: &impl GenericClient, sql: &str, p: Params<'_>) -> Result<Vec<Row>> {
    let st = stmt(c, sql).await?;
    c.query(&st, p).await.map_err(pg_error)
}

/// At most one row.
pub(crate) async fn opt(c: &impl GenericClient, sql: &str, p: Params<'_>) -> Result<Option<Row>> {
    let st = stmt(c, sql).await?;
    c.query_opt(&st, p).await.map_err(pg_error)
}

/// Exactly one row.
pub(crate) async fn one(c: &impl GenericClient, sql: &str, p: Params<'_>) -> Result<Row> {
    let st = stmt(c, sql).await?;
    c.query_one(&st, p).await.map_err(pg_error)
}

/// Rows changed.
pub(crate) async fn exec(c: &impl GenericClient, sql: &str, p: Params<'_>) -> Result<u64> {
    let st = stmt(c, sql).await?;
    c.execute(&st, p).await.map_err(pg_error)
}

/// A connection from `pool`.
pub(crate) async fn get(pool: &Pool) -> Result<deadpool_postgres::Client> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        deadpool_postgres::PoolError::Timeout(_) => StoreError::Unreachable {
            server: String::new(),
            detail: "no connection could be had in time (all busy, or the server does not answer)"
                .into(),
        },
        deadpool_postgres::PoolError::Closed => {
            StoreError::StoreGone("the PostgreSQL pool is closed".into())
        }
        other => StoreError::Unreachable {
            server: String::new(),
            detail: other.to_string(),
        },
    })
}

/// The database key of an id (a string that is not a UUID names nothing).
pub(crate) fn key(what: &'static str, id: &str) -> Result<uuid::Uuid> {
    crate::store::key(what, id)
}

pub(crate) const CONV_COLS: &str = "id, title, model_id, created_at, updated_at, last_message_at, \
     message_count, archived, deleted, rev, created_rev, voice_messages, web_messages, api_messages";

pub(crate) fn conv_from_row(r: &Row) -> ServerConversation {
    let counts: [i64; 3] = [r.get(11), r.get(12), r.get(13)];
    ServerConversation {
        id: r.get::<_, uuid::Uuid>(0).to_string(),
        title: r.get(1),
        model_id: r.get(2),
        created_at: r.get(3),
        updated_at: r.get(4),
        last_message_at: r.get(5),
        message_count: r.get(6),
        archived: r.get(7),
        deleted: r.get(8),
        rev: r.get(9),
        created_rev: r.get(10),
        origins: [Origin::Voice, Origin::Web, Origin::Api]
            .into_iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(o, _)| o)
            .collect(),
    }
}

pub(crate) const MSG_COLS: &str = "m.id, m.conversation_id, m.role, m.content, m.created_at, \
     m.model_id, m.tokens_used, m.response_time_ms, m.is_audio, m.origin, m.reply_to, m.rev";

/// The column after [`MSG_COLS`].
pub(crate) const AFTER_MSG_COLS: usize = 12;

pub(crate) fn msg_from_row(r: &Row) -> Message {
    let role: &str = r.get(2);
    let origin: &str = r.get(9);
    Message {
        id: r.get::<_, uuid::Uuid>(0).to_string(),
        conversation_id: r.get::<_, uuid::Uuid>(1).to_string(),
        role: Role::parse(role).unwrap_or(Role::User),
        content: r.get(3),
        created_at: r.get(4),
        model_id: r.get(5),
        tokens_used: r.get(6),
        response_time_ms: r.get(7),
        is_audio: r.get(8),
        origin: Origin::parse(origin).unwrap_or(Origin::Api),
        reply_to: r.get::<_, Option<uuid::Uuid>>(10).map(|u| u.to_string()),
        metadata: serde_json::Value::Object(Default::default()),
        rev: r.get(11),
    }
}

/// Locks the user's row for this transaction and returns its rev: every
/// write of the user starts here (see the module docs).
pub(crate) async fn lock_user(c: &impl GenericClient, user: UserId) -> Result<i64> {
    opt(
        c,
        "SELECT rev FROM srv_users WHERE id = $1 FOR UPDATE",
        &[&user],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| not_found("user", &user.to_string()))
}

/// Writes the user's new rev back (after [`lock_user`]).
pub(crate) async fn set_rev(c: &impl GenericClient, user: UserId, rev: i64) -> Result<()> {
    exec(
        c,
        "UPDATE srv_users SET rev = $2 WHERE id = $1",
        &[&user, &rev],
    )
    .await?;
    Ok(())
}

/// The conversation and its owner, tombstones included.
pub(crate) async fn conv_any(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<(UserId, ServerConversation)>> {
    let k = key("conversation", id)?;
    Ok(opt(
        c,
        &format!("SELECT {CONV_COLS}, user_id FROM srv_conversations WHERE id = $1"),
        &[&k],
    )
    .await?
    .map(|r| (r.get(14), conv_from_row(&r))))
}

/// The user's live conversation, or "not found".
pub(crate) async fn live_conv(
    c: &impl GenericClient,
    user: UserId,
    id: &str,
) -> Result<ServerConversation> {
    match conv_any(c, id).await? {
        Some((u, conv)) if u == user && !conv.deleted => Ok(conv),
        _ => Err(not_found("conversation", id)),
    }
}

/// Who is told the store's timings.
type Observer = Box<dyn Fn(Timing) + Send + Sync>;

/// The PostgreSQL [`ServerStore`]: see the module docs.
pub struct PgStore {
    pool: Pool,
    location: String,
    feed: Arc<listen::Feed>,
    observer: Arc<OnceLock<Observer>>,
    last_maintenance: std::sync::Mutex<Option<i64>>,
}

/// TLS for PostgreSQL connections: rustls (ring) with the system's roots.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Postgres(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgStore {
    /// A pool on `url`, its config and TLS (nothing is connected yet).
    fn pool_for(
        url: &str,
        opts: &StoreOptions,
    ) -> Result<(
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
        Pool,
    )> {
        let location = redact(url);
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Invalid(format!(
                "server.database {location}: not a PostgreSQL URL ({e}); use postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("pichat");
        }
        let tls = tls()?;
        let mgr = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.connect_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| StoreError::Postgres(format!("{location}: {e}")))?;
        Ok((config, tls, pool))
    }

    /// A pool on `url` that creates nothing (to look at a database first).
    pub async fn probe(url: &str) -> Result<Pool> {
        Ok(Self::pool_for(url, &StoreOptions::default())?.2)
    }

    /// Connects (the pool and the feed's listener), creates or migrates
    /// the schema.
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<PgStore> {
        let location = redact(url);
        let (config, tls, pool) = Self::pool_for(url, opts)?;
        let store = PgStore {
            feed: listen::Feed::new(config, tls, pool.clone(), location.clone()),
            pool,
            location,
            observer: Arc::default(),
            last_maintenance: std::sync::Mutex::new(None),
        };
        {
            let mut c = store.client().await?;
            schema::ensure(&mut c, &store.location)
                .await
                .map_err(|e| store.locate(e))?;
        }
        store.feed.start().await.map_err(|e| store.locate(e))?;
        Ok(store)
    }

    /// The server's name in messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Names the server in an `Unreachable` error.
    fn locate(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Unreachable { server, detail } if server.is_empty() => {
                StoreError::Unreachable {
                    server: self.location.clone(),
                    detail,
                }
            }
            StoreError::DiskFull { .. } => StoreError::DiskFull {
                path: PathBuf::from(&self.location),
            },
            StoreError::CommitFailed { detail, .. } => StoreError::CommitFailed {
                path: PathBuf::from(&self.location),
                detail,
            },
            other => other,
        }
    }

    fn note(&self, t: Timing) {
        if let Some(f) = self.observer.get() {
            f(t);
        }
    }

    /// A connection from the pool (the wait is observed as the queue wait).
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client> {
        let asked = Instant::now();
        let got = get(&self.pool).await;
        self.note(Timing::QueueWait(asked.elapsed()));
        got.map_err(|e| self.locate(e))
    }

    /// Commits, observing the commit's time.
    pub(crate) async fn commit(&self, tx: deadpool_postgres::Transaction<'_>) -> Result<()> {
        let start = Instant::now();
        let r = tx.commit().await.map_err(pg_error);
        self.note(Timing::Commit(start.elapsed()));
        r
    }

    /// Announces a write's changes to the feed (inside its transaction)
    /// and commits it.
    pub(crate) async fn commit_feed(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        user: UserId,
        by: Author,
        changes: Vec<ServerChange>,
    ) -> Result<()> {
        let revs = changes.iter().map(ServerChange::rev);
        let (Some(first), Some(last)) = (revs.clone().min(), revs.max()) else {
            return self.commit(tx).await;
        };
        let c = super::feed::Committed { user, by, changes };
        if let Err(e) = self.feed.announce(&tx, c, first, last).await {
            self.feed.unstash(user, last);
            return Err(e);
        }
        if let Err(e) = self.commit(tx).await {
            self.feed.unstash(user, last);
            return Err(e);
        }
        Ok(())
    }

    /// The pool (for the migration, which streams rows in bulk).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.feed.stop();
        self.pool.close();
    }
}

/// Runs `$body` (an async block) and names the server in its error.
macro_rules! located {
    ($self:ident, $body:expr) => {
        $body.await.map_err(|e| $self.locate(e))
    };
}

#[async_trait]
impl ServerStore for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn add_token(
        &self,
        user: &str,
        device: Option<&str>,
        hash: [u8; 32],
    ) -> Result<TokenInfo> {
        located!(self, self.add_token_(user, device, &hash))
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        located!(self, self.tokens_())
    }

    async fn revoke_token(&self, id: i64) -> Result<TokenInfo> {
        located!(self, self.revoke_token_(id))
    }

    async fn token_by_hash(&self, hash: [u8; 32]) -> Result<Option<TokenMatch>> {
        located!(self, self.token_by_hash_(&hash))
    }

    async fn user_rev(&self, user: UserId) -> Result<i64> {
        located!(self, self.user_rev_(user))
    }

    async fn user_id(&self, name: &str) -> Result<UserId> {
        located!(self, self.user_id_(name))
    }

    async fn create_session(
        &self,
        token_id: i64,
        digest: [u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        located!(
            self,
            self.create_session_(token_id, &digest, now, expires_at)
        )
    }

    async fn session(&self, digest: [u8; 32], now: i64) -> Result<Option<(TokenMatch, i64)>> {
        located!(self, self.session_(&digest, now))
    }

    async fn delete_session(&self, digest: [u8; 32]) -> Result<()> {
        located!(self, self.delete_session_(&digest))
    }

    async fn create_conversation(
        &self,
        by: Author,
        user: UserId,
        new: NewConversation,
    ) -> Result<(ServerConversation, bool)> {
        located!(self, self.create_conversation_(by, user, &new))
    }

    async fn get_conversation(&self, user: UserId, id: &str) -> Result<ServerConversation> {
        located!(self, async {
            let c = self.client().await?;
            live_conv(&c, user, id).await
        })
    }

    async fn update_conversation(
        &self,
        by: Author,
        user: UserId,
        id: &str,
        u: ConversationUpdate,
    ) -> Result<(ServerConversation, bool)> {
        located!(self, self.update_conversation_(by, user, id, &u))
    }

    async fn delete_conversation(&self, by: Author, user: UserId, id: &str) -> Result<(i64, bool)> {
        located!(self, self.delete_conversation_(by, user, id))
    }

    async fn list_conversations(
        &self,
        user: UserId,
        include_archived: bool,
        limit: usize,
        before: Option<String>,
    ) -> Result<(Vec<ServerConversation>, bool)> {
        located!(
            self,
            self.list_conversations_(user, include_archived, limit, before.as_deref())
        )
    }

    async fn add_message(&self, by: Author, user: UserId, new: NewMessage) -> Result<Stored> {
        located!(self, async {
            let mut out = self.append_(by, user, std::slice::from_ref(&new)).await?;
            out.pop()
                .unwrap_or_else(|| Err(StoreError::Bug("no outcome for a message".into())))
        })
    }

    async fn append_messages(
        &self,
        by: Author,
        user: UserId,
        msgs: Vec<NewMessage>,
    ) -> Result<AppendOutcome> {
        located!(self, self.append_messages_(by, user, &msgs))
    }

    async fn find_message(&self, user: UserId, id: &str) -> Result<Option<MessageWithReply>> {
        located!(self, self.find_message_(user, id))
    }

    async fn messages(
        &self,
        user: UserId,
        conversation_id: &str,
        limit: usize,
        before: Option<String>,
        fits: Fits<Message>,
    ) -> Result<(Vec<Message>, bool)> {
        located!(
            self,
            self.messages_(user, conversation_id, limit, before.as_deref(), fits)
        )
    }

    async fn search(
        &self,
        user: UserId,
        query: &str,
        conversation_id: Option<String>,
        limit: usize,
        fits: Fits<SearchHit>,
    ) -> Result<Vec<SearchHit>> {
        located!(
            self,
            self.search_(user, query, conversation_id.as_deref(), limit, fits)
        )
    }

    async fn reply_context(
        &self,
        user: UserId,
        conversation_id: &str,
        upto: &str,
        default_prompt: &str,
        budget_tokens: usize,
    ) -> Result<ReplyContext> {
        located!(
            self,
            self.reply_context_(user, conversation_id, upto, default_prompt, budget_tokens)
        )
    }

    async fn settings(&self, user: UserId) -> Result<ServerSettings> {
        located!(self, async {
            let c = self.client().await?;
            settings::get(&c, user).await
        })
    }

    async fn update_settings(
        &self,
        by: Author,
        user: UserId,
        u: SettingsUpdate,
    ) -> Result<(ServerSettings, bool)> {
        located!(self, self.update_settings_(by, user, &u))
    }

    async fn changes(
        &self,
        user: UserId,
        since: i64,
        limit: usize,
        fits: Fits<ServerChange>,
    ) -> Result<ChangePage> {
        located!(self, self.changes_(user, since, limit, fits))
    }

    async fn export_ids(&self, user: UserId, conversation: Option<String>) -> Result<Vec<String>> {
        located!(self, self.export_ids_(user, conversation.as_deref()))
    }

    async fn export_conversation(
        &self,
        user: UserId,
        id: &str,
    ) -> Result<Option<ExportedConversation>> {
        located!(self, self.export_conversation_(user, id))
    }

    fn subscribe(&self, sink: Arc<dyn FeedSink>) {
        self.feed.subscribe(sink);
    }

    async fn take_shared(
        &self,
        user: UserId,
        what: &'static str,
        per_min: u32,
    ) -> Result<Option<std::result::Result<(), Duration>>> {
        located!(self, async {
            self.take_(user, what, per_min).await.map(Some)
        })
    }

    async fn health(&self) -> StoreHealth {
        let status = self.pool.status();
        let mut h = StoreHealth {
            kind: "postgres",
            location: self.location.clone(),
            pool_size: status.size,
            pool_idle: status.available,
            last_maintenance: *self
                .last_maintenance
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            ..Default::default()
        };
        match located!(self, self.sizes()) {
            Ok((bytes, dead)) => {
                h.ok = true;
                h.bytes = bytes;
                h.reclaimable_bytes = dead;
            }
            Err(e) => h.error = Some(e.to_string()),
        }
        h
    }

    async fn maintain(&self) -> Result<String> {
        let (bytes, dead) = located!(self, self.sizes())?;
        *self
            .last_maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(crate::time::now_ms());
        let share = if bytes > 0 {
            dead as f64 * 100.0 / bytes as f64
        } else {
            0.0
        };
        Ok(format!(
            "postgres: vacuum is autovacuum's; {bytes} bytes in pichat's tables, about {dead} ({share:.1}%) in dead rows"
        ))
    }

    fn observe(&self, f: Box<dyn Fn(Timing) + Send + Sync>) {
        let _ = self.observer.set(f);
    }
}

impl PgStore {
    /// Bytes of pichat's tables (with indexes and TOAST), and an estimate
    /// of the bytes in dead rows (bloat, left to autovacuum).
    async fn sizes(&self) -> Result<(u64, u64)> {
        let c = self.client().await?;
        let names: Vec<String> = schema::TABLES.iter().map(|t| t.to_string()).collect();
        let r = one(
            &c,
            "SELECT coalesce(sum(pg_total_relation_size(s.relid)), 0)::bigint,
                    coalesce(sum(CASE WHEN s.n_live_tup + s.n_dead_tup > 0
                        THEN pg_table_size(s.relid) * s.n_dead_tup / (s.n_live_tup + s.n_dead_tup)
                        ELSE 0 END), 0)::bigint
             FROM pg_stat_user_tables s WHERE s.relname = ANY($1)",
            &[&names],
        )
        .await?;
        let (bytes, dead): (i64, i64) = (r.get(0), r.get(1));
        Ok((bytes.max(0) as u64, dead.max(0) as u64))
    }
}
