//! The chat server's SQLite store: one file (`server.database`, default
//! `/var/lib/pichat/server.db`), one server. The same machinery as the
//! history (`store/`: header check, WAL + `synchronous = FULL`, the writer
//! thread with group commit, read-only connections beside it), its own
//! schema list (`SCHEMA`), and the methods on [`Conn`] split by concern:
//! users, tokens and sessions (`users.rs`), conversations, messages,
//! settings, the sync feed (`feed.rs`). [`SqliteStore`] is the
//! [`ServerStore`] over them: writes in group commits on the writer, whose
//! changes are delivered to the feed right after their commit (in commit
//! order, so each user's in rev order); reads on the read connections,
//! taken in turn by user.
//!
//! Every method on [`Conn`] takes the user's id and only ever reads or
//! changes that user's rows: a record of another user is "not found" (or a
//! `Conflict` when its id is reused for a create).

mod conversations;
mod feed;
mod messages;
mod settings;
mod users;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::feed::{Author, Committed, FeedSink};
use super::records::*;
use super::{Fits, ServerStore, StoreHealth};
use crate::history::export::ExportedConversation;
use crate::store::actor::{StoreHandle, StoreThread, Timing};
use crate::store::maintenance::Thresholds;
use crate::store::schema::{self, SERVER_APPLICATION_ID, Schema, Step, rows};
use crate::store::{
    Db, Kind, Message, NewConversation, NewMessage, OpenOptions, Origin, Result, Role, SearchHit,
    StoreError, id_at, key, opt_id_at,
};

/// The kind of the server's SQLite database.
pub struct Server;

impl Kind for Server {
    const SCHEMA: &'static Schema = &SCHEMA;
}

/// An open server database (one connection, one thread).
pub type Conn = Db<Server>;

/// The server database's store threads.
pub type ServerHandle = StoreHandle<Server>;

/// The server's migrations (see `store::schema`).
pub static SCHEMA: Schema = Schema {
    name: "server",
    application_id: SERVER_APPLICATION_ID,
    setting: "server.database (or --db)",
    steps: &[
        Step::Sql(schema::V1),
        Step::Sql(schema::V2),
        Step::Sql(schema::V3),
        Step::Sql(schema::V4),
        Step::Code(v5_drop_history_tables),
    ],
};

/// The device's tables, which a server's file carried empty before
/// version 5 (dropped with their triggers and indexes).
const HISTORY_TABLES: &str = r#"
DROP TABLE messages_fts;
DROP TABLE messages;
DROP TABLE conversations;
DROP TABLE tombstones;
DROP TABLE sync_state;
"#;

/// Version 5: the server's file keeps only the server's tables. A legacy
/// file whose history tables hold data is a device's history: refused,
/// unchanged (the transaction rolls back).
fn v5_drop_history_tables(conn: &Connection, path: &Path) -> Result<()> {
    let history_rows =
        rows(conn, "conversations")? + rows(conn, "tombstones")? + rows(conn, "sync_state")?;
    if history_rows > 0 {
        return Err(StoreError::WrongKind {
            path: path.to_path_buf(),
            found: if rows(conn, "srv_users")? > 0 {
                "history and server"
            } else {
                "history"
            },
            expected: SCHEMA.name,
            setting: SCHEMA.setting,
        });
    }
    Ok(conn.execute_batch(HISTORY_TABLES)?)
}

pub(super) const CONV_COLS: &str = "id, title, model_id, created_at, updated_at, last_message_at, \
     message_count, archived, deleted, rev, created_rev, voice_messages, web_messages, api_messages";

/// The column after [`CONV_COLS`].
pub(super) const AFTER_CONV_COLS: usize = 14;

pub(super) fn conv_from_row(r: &Row<'_>) -> rusqlite::Result<ServerConversation> {
    Ok(ServerConversation {
        id: id_at(r, 0)?,
        title: r.get(1)?,
        model_id: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        last_message_at: r.get(5)?,
        message_count: r.get(6)?,
        archived: r.get(7)?,
        deleted: r.get(8)?,
        rev: r.get(9)?,
        created_rev: r.get(10)?,
        origins: [Origin::Voice, Origin::Web, Origin::Api]
            .into_iter()
            .enumerate()
            .filter_map(|(i, o)| match r.get::<_, i64>(11 + i) {
                Ok(n) if n > 0 => Some(Ok(o)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<rusqlite::Result<_>>()?,
    })
}

/// Message columns in the order `msg_from_row` reads (no metadata on the server).
pub(super) const MSG_COLS: &str = "m.id, m.conversation_id, m.role, m.content, m.created_at, m.model_id, \
     m.tokens_used, m.response_time_ms, m.is_audio, m.origin, m.reply_to, NULL, m.rev";

pub(super) const SETTINGS_COLS: &str =
    "selected_model, voice_gender, voice_accent, voice_speed, assistant_personality, rev";

pub(super) fn settings_from_row(r: &Row<'_>) -> rusqlite::Result<ServerSettings> {
    Ok(ServerSettings {
        selected_model: r.get(0)?,
        voice_gender: r.get(1)?,
        voice_accent: r.get(2)?,
        voice_speed: r.get(3)?,
        assistant_personality: r.get(4)?,
        rev: r.get(5)?,
    })
}

/// Takes the user's next `n` revisions; returns the last one.
pub(super) fn bump(conn: &Connection, user: UserId, n: i64) -> Result<i64> {
    conn.prepare_cached("UPDATE srv_users SET rev = rev + ?2 WHERE id = ?1 RETURNING rev")?
        .query_row(params![user, n], |r| r.get(0))
        .optional()?
        .ok_or_else(|| not_found("user", &user.to_string()))
}

pub(super) fn get_conv_any(
    conn: &Connection,
    id: &str,
) -> Result<Option<(UserId, ServerConversation)>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {CONV_COLS}, user_id FROM srv_conversations WHERE id = ?1"
        ))?
        .query_row([key("conversation", id)?], |r| {
            Ok((r.get(AFTER_CONV_COLS)?, conv_from_row(r)?))
        })
        .optional()?)
}

/// The user's live conversation, or "not found".
pub(super) fn live_conv(conn: &Connection, user: UserId, id: &str) -> Result<ServerConversation> {
    match get_conv_any(conn, id)? {
        Some((u, c)) if u == user && !c.deleted => Ok(c),
        _ => Err(not_found("conversation", id)),
    }
}

pub(super) fn get_msg(conn: &Connection, id: &str) -> Result<Option<(UserId, Message)>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {MSG_COLS}, m.user_id FROM srv_messages m WHERE m.id = ?1"
        ))?
        .query_row([key("message", id)?], |r| {
            Ok((r.get(13)?, msg_from_row(r)?))
        })
        .optional()?)
}

/// A message from the columns of [`MSG_COLS`] (the server keeps no metadata).
pub(super) fn msg_from_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    let role: String = r.get(2)?;
    let origin: String = r.get(9)?;
    Ok(Message {
        id: id_at(r, 0)?,
        conversation_id: id_at(r, 1)?,
        role: Role::parse(&role).unwrap_or(Role::User),
        content: r.get(3)?,
        created_at: r.get(4)?,
        model_id: r.get(5)?,
        tokens_used: r.get(6)?,
        response_time_ms: r.get(7)?,
        is_audio: r.get(8)?,
        origin: Origin::parse(&origin).unwrap_or(Origin::Api),
        reply_to: opt_id_at(r, 10)?,
        metadata: serde_json::Value::Object(Default::default()),
        rev: r.get(12)?,
    })
}

/// The SQLite [`ServerStore`]: see the module docs.
pub struct SqliteStore {
    h: ServerHandle,
    location: String,
    sink: Sink,
    last_maintenance: Mutex<Option<i64>>,
}

/// Where committed changes go (set once the server subscribes).
type Sink = Arc<OnceLock<Arc<dyn FeedSink>>>;

/// Delivers `changes` of `user` to the feed once the current write is
/// committed (never if it is rolled back).
fn publish(db: &mut Conn, sink: &Sink, user: UserId, by: Author, changes: Vec<ServerChange>) {
    if changes.is_empty() {
        return;
    }
    let sink = sink.clone();
    db.after_commit(move || {
        if let Some(s) = sink.get() {
            s.deliver(Committed { user, by, changes });
        }
    });
}

impl SqliteStore {
    /// Opens (creating or migrating) the file on its store threads.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<(SqliteStore, StoreThread)> {
        let (h, thread) = ServerHandle::open(path, opts)?;
        Ok((
            SqliteStore {
                h,
                location: path.display().to_string(),
                sink: Arc::default(),
                last_maintenance: Mutex::new(None),
            },
            thread,
        ))
    }

    /// The store threads (for tools that run their own calls: the
    /// migration to PostgreSQL, benchmarks).
    pub fn handle(&self) -> &ServerHandle {
        &self.h
    }

    /// Runs a read on a read connection, in turn with `user`'s other reads.
    async fn read<T, F>(&self, user: UserId, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    {
        self.h.read(user as u64, f).await
    }

    /// Runs a write in a group commit; `f` publishes what it changed.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn, &Sink) -> Result<T> + Send + 'static,
    {
        let sink = self.sink.clone();
        self.h.call_batched(move |db| f(db, &sink)).await
    }
}

/// The key of reads that are no user's (tokens, health).
const NO_USER: u64 = u64::MAX;

#[async_trait]
impl ServerStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn add_token(
        &self,
        user: &str,
        device: Option<&str>,
        hash: [u8; 32],
    ) -> Result<TokenInfo> {
        let (user, device) = (user.to_string(), device.map(str::to_string));
        self.write(move |db, _| db.add_token(&user, device.as_deref(), &hash))
            .await
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.h.read(NO_USER, |db| db.tokens()).await
    }

    async fn revoke_token(&self, id: i64) -> Result<TokenInfo> {
        self.write(move |db, _| db.revoke_token(id)).await
    }

    async fn token_by_hash(&self, hash: [u8; 32]) -> Result<Option<TokenMatch>> {
        self.h.call(move |db| db.token_by_hash(&hash)).await
    }

    async fn user_rev(&self, user: UserId) -> Result<i64> {
        self.read(user, move |db| db.user_rev(user)).await
    }

    async fn user_id(&self, name: &str) -> Result<UserId> {
        let name = name.to_string();
        self.h.read(NO_USER, move |db| db.user_id(&name)).await
    }

    async fn create_session(
        &self,
        token_id: i64,
        digest: [u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        self.write(move |db, _| db.create_session(token_id, &digest, now, expires_at))
            .await
    }

    async fn session(&self, digest: [u8; 32], now: i64) -> Result<Option<(TokenMatch, i64)>> {
        self.h
            .read(NO_USER, move |db| db.session(&digest, now))
            .await
    }

    async fn delete_session(&self, digest: [u8; 32]) -> Result<()> {
        self.write(move |db, _| db.delete_session(&digest)).await
    }

    async fn create_conversation(
        &self,
        by: Author,
        user: UserId,
        new: NewConversation,
    ) -> Result<(ServerConversation, bool)> {
        self.write(move |db, sink| {
            let (c, dup) = db.create_conversation(user, &new)?;
            if !dup {
                publish(
                    db,
                    sink,
                    user,
                    by,
                    vec![ServerChange::Conversation(c.clone())],
                );
            }
            Ok((c, dup))
        })
        .await
    }

    async fn get_conversation(&self, user: UserId, id: &str) -> Result<ServerConversation> {
        let id = id.to_string();
        self.read(user, move |db| db.get_conversation(user, &id))
            .await
    }

    async fn update_conversation(
        &self,
        by: Author,
        user: UserId,
        id: &str,
        u: ConversationUpdate,
    ) -> Result<(ServerConversation, bool)> {
        let id = id.to_string();
        self.write(move |db, sink| {
            let (c, changed) = db.update_conversation(user, &id, &u)?;
            if changed {
                publish(
                    db,
                    sink,
                    user,
                    by,
                    vec![ServerChange::Conversation(c.clone())],
                );
            }
            Ok((c, changed))
        })
        .await
    }

    async fn delete_conversation(&self, by: Author, user: UserId, id: &str) -> Result<(i64, bool)> {
        let id = id.to_string();
        self.write(move |db, sink| {
            let (rev, already) = db.delete_conversation(user, &id)?;
            if !already {
                let tomb = db.conversation_any(user, &id)?;
                publish(db, sink, user, by, vec![ServerChange::Conversation(tomb)]);
            }
            Ok((rev, already))
        })
        .await
    }

    async fn list_conversations(
        &self,
        user: UserId,
        include_archived: bool,
        limit: usize,
        before: Option<String>,
    ) -> Result<(Vec<ServerConversation>, bool)> {
        self.read(user, move |db| {
            db.list_conversations(user, include_archived, limit, before.as_deref())
        })
        .await
    }

    async fn add_message(&self, by: Author, user: UserId, new: NewMessage) -> Result<Stored> {
        self.write(move |db, sink| {
            let stored = db.add_message(user, &new)?;
            if let Stored::New(m) = &stored {
                publish(db, sink, user, by, vec![ServerChange::Message(m.clone())]);
            }
            Ok(stored)
        })
        .await
    }

    async fn append_messages(
        &self,
        by: Author,
        user: UserId,
        msgs: Vec<NewMessage>,
    ) -> Result<AppendOutcome> {
        self.write(move |db, sink| {
            let out = db.append_messages(user, &msgs)?;
            let changes = out
                .stored
                .iter()
                .cloned()
                .map(ServerChange::Message)
                .collect();
            publish(db, sink, user, by, changes);
            Ok(out)
        })
        .await
    }

    async fn find_message(&self, user: UserId, id: &str) -> Result<Option<MessageWithReply>> {
        let id = id.to_string();
        self.read(user, move |db| db.find_message(user, &id)).await
    }

    async fn messages(
        &self,
        user: UserId,
        conversation_id: &str,
        limit: usize,
        before: Option<String>,
        mut fits: Fits<Message>,
    ) -> Result<(Vec<Message>, bool)> {
        let conv = conversation_id.to_string();
        self.read(user, move |db| {
            db.messages_within(user, &conv, limit, before.as_deref(), &mut *fits)
        })
        .await
    }

    async fn search(
        &self,
        user: UserId,
        query: &str,
        conversation_id: Option<String>,
        limit: usize,
        mut fits: Fits<SearchHit>,
    ) -> Result<Vec<SearchHit>> {
        let query = query.to_string();
        self.read(user, move |db| {
            db.search_within(user, &query, conversation_id.as_deref(), limit, &mut *fits)
        })
        .await
    }

    async fn reply_context(
        &self,
        user: UserId,
        conversation_id: &str,
        upto: &str,
        default_prompt: &str,
        budget_tokens: usize,
    ) -> Result<ReplyContext> {
        let (conv, upto, default_prompt) = (
            conversation_id.to_string(),
            upto.to_string(),
            default_prompt.to_string(),
        );
        self.read(user, move |db| {
            db.reply_context(user, &conv, &upto, &default_prompt, budget_tokens)
        })
        .await
    }

    async fn settings(&self, user: UserId) -> Result<ServerSettings> {
        self.read(user, move |db| db.settings(user)).await
    }

    async fn update_settings(
        &self,
        by: Author,
        user: UserId,
        u: SettingsUpdate,
    ) -> Result<(ServerSettings, bool)> {
        self.write(move |db, sink| {
            let (s, changed) = db.update_settings(user, &u)?;
            if changed {
                publish(db, sink, user, by, vec![ServerChange::Settings(s.clone())]);
            }
            Ok((s, changed))
        })
        .await
    }

    async fn changes(
        &self,
        user: UserId,
        since: i64,
        limit: usize,
        mut fits: Fits<ServerChange>,
    ) -> Result<ChangePage> {
        self.read(user, move |db| {
            db.changes_within(user, since, limit, &mut *fits)
        })
        .await
    }

    async fn export_ids(&self, user: UserId, conversation: Option<String>) -> Result<Vec<String>> {
        self.read(user, move |db| db.export_ids(user, conversation.as_deref()))
            .await
    }

    async fn export_conversation(
        &self,
        user: UserId,
        id: &str,
    ) -> Result<Option<ExportedConversation>> {
        let id = id.to_string();
        self.read(user, move |db| db.export_conversation(user, &id))
            .await
    }

    fn subscribe(&self, sink: Arc<dyn FeedSink>) {
        let _ = self.sink.set(sink);
    }

    async fn take_shared(
        &self,
        _user: UserId,
        _what: &'static str,
        _per_min: u32,
    ) -> Result<Option<std::result::Result<(), Duration>>> {
        // One server per file: its own buckets hold.
        Ok(None)
    }

    async fn health(&self) -> StoreHealth {
        let mut h = StoreHealth {
            kind: "sqlite",
            location: self.location.clone(),
            last_maintenance: *self
                .last_maintenance
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            ..Default::default()
        };
        match self.h.read(NO_USER, |db| db.file_state()).await {
            Ok(f) => {
                h.ok = true;
                h.bytes = (f.pages * f.page_size).max(0) as u64 + f.wal_bytes;
                h.reclaimable_bytes = (f.free_pages * f.page_size).max(0) as u64;
                h.wal_bytes = f.wal_bytes;
            }
            Err(e) => h.error = Some(e.to_string()),
        }
        h
    }

    async fn maintain(&self) -> Result<String> {
        let pass = self.h.call(|db| db.maintain(Thresholds::default())).await?;
        *self
            .last_maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(crate::time::now_ms());
        Ok(format!(
            "sqlite: optimized; {} free page(s) given back ({} left); WAL checkpointed ({} frames{}), {} bytes left",
            pass.vacuumed_pages,
            pass.after.free_pages,
            pass.checkpointed,
            if pass.checkpoint_busy {
                ", a reader held some back"
            } else {
                ""
            },
            pass.after.wal_bytes
        ))
    }

    fn observe(&self, f: Box<dyn Fn(Timing) + Send + Sync>) {
        self.h.observe(f);
    }
}
