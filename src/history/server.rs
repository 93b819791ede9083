//! The chat server's storage (`pichat serve`): users and their device
//! tokens (SHA-256 hashes only), per-user settings, conversations and
//! messages owned by a user, tombstones, the per-user revision counter and
//! the sync change feed built on it. Schema: migration V2 in `schema.rs`.
//!
//! Reached through [`Store::server`]. Every method takes the user's id and
//! only ever reads or changes that user's rows: a record of another user is
//! "not found" (or a `Conflict` when its id is reused for a create).
//!
//! Revisions: `srv_users.rev` is the user's counter. Each change (create,
//! update, delete, message added, settings changed) takes the next value
//! in the same transaction and stamps it on the changed row, so a row's
//! `rev` is its last change and the rows with `rev > N` are exactly what a
//! client at cursor N lacks. A message added does not change its
//! conversation's `rev` (clients keep counters from their messages).

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::messages::msg_from_row;
use super::search::{MARK_END, MARK_START, estimate_tokens, fts_query};
use super::*;
use crate::time;

/// Longest user name.
pub const MAX_USER_CHARS: usize = 64;
/// Longest device name of a token.
pub const MAX_DEVICE_CHARS: usize = 64;
/// `last_used_at` of a token is written at most this often (ms): every
/// connection authenticates, and a write per connection is needless.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// A user's id in the server database.
pub type UserId = i64;

/// A device token, as listed (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub user: String,
    pub device: Option<String>,
    #[serde(with = "time::rfc3339")]
    pub created_at: i64,
    #[serde(with = "time::rfc3339_opt")]
    pub last_used_at: Option<i64>,
    #[serde(with = "time::rfc3339_opt")]
    pub revoked_at: Option<i64>,
}

/// The stored token whose hash matched, for the server to compare in
/// constant time and to know who connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMatch {
    pub token_id: i64,
    pub user_id: UserId,
    pub user: String,
    pub hash: Vec<u8>,
}

/// A conversation of the server, tombstones included.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConversation {
    pub id: String,
    pub title: String,
    pub model_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_message_at: Option<i64>,
    pub message_count: i64,
    pub archived: bool,
    pub deleted: bool,
    pub rev: i64,
    /// The rev of its creation.
    pub created_rev: i64,
    /// Where its messages were made (voice, web, api), in that order; each
    /// origin once.
    pub origins: Vec<Origin>,
}

/// A user's settings (all empty and rev 0 until first changed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerSettings {
    pub selected_model: Option<String>,
    pub voice_gender: Option<String>,
    pub voice_accent: Option<String>,
    pub voice_speed: Option<f64>,
    pub assistant_personality: Option<String>,
    pub rev: i64,
}

/// A partial settings change: `None` leaves a field, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsUpdate {
    pub selected_model: Option<Option<String>>,
    pub voice_gender: Option<Option<String>>,
    pub voice_accent: Option<Option<String>>,
    pub voice_speed: Option<Option<f64>>,
    pub assistant_personality: Option<Option<String>>,
}

/// A conversation change: `None` leaves a field, `model_id: Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationUpdate {
    pub title: Option<String>,
    pub archived: Option<bool>,
    pub model_id: Option<Option<String>>,
}

/// A row of the sync feed, at its latest state.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerChange {
    /// An upsert, or a delete when `deleted`.
    Conversation(ServerConversation),
    Message(Message),
    Settings(ServerSettings),
}

impl ServerChange {
    pub fn rev(&self) -> i64 {
        match self {
            ServerChange::Conversation(c) => c.rev,
            ServerChange::Message(m) => m.rev,
            ServerChange::Settings(s) => s.rev,
        }
    }
}

/// A page of the sync feed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangePage {
    pub changes: Vec<ServerChange>,
    /// The cursor after this page: the last rev of the feed in it.
    pub rev: i64,
    pub has_more: bool,
}

/// What storing one message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    New(Message),
    /// The same message was there already (nothing changed).
    Duplicate(Message),
}

impl Stored {
    pub fn message(&self) -> &Message {
        match self {
            Stored::New(m) | Stored::Duplicate(m) => m,
        }
    }
}

/// What `append_messages` did with each message.
#[derive(Debug, Default)]
pub struct AppendOutcome {
    pub stored: Vec<Message>,
    pub duplicates: Vec<String>,
    /// The id as given, and why it was not stored.
    pub rejected: Vec<(String, HistoryError)>,
    /// The user's revision after the batch.
    pub rev: i64,
}

/// A user message and the assistant reply to it, if there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageWithReply {
    pub message: Message,
    pub reply: Option<Message>,
}

const CONV_COLS: &str = "id, title, model_id, created_at, updated_at, last_message_at, \
     message_count, archived, deleted, rev, created_rev, voice_messages, web_messages, api_messages";

/// The column after [`CONV_COLS`].
const AFTER_CONV_COLS: usize = 14;

fn conv_from_row(r: &Row<'_>) -> rusqlite::Result<ServerConversation> {
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
const MSG_COLS: &str = "m.id, m.conversation_id, m.role, m.content, m.created_at, m.model_id, \
     m.tokens_used, m.response_time_ms, m.is_audio, m.origin, m.reply_to, NULL, m.rev";

const SETTINGS_COLS: &str =
    "selected_model, voice_gender, voice_accent, voice_speed, assistant_personality, rev";

fn settings_from_row(r: &Row<'_>) -> rusqlite::Result<ServerSettings> {
    Ok(ServerSettings {
        selected_model: r.get(0)?,
        voice_gender: r.get(1)?,
        voice_accent: r.get(2)?,
        voice_speed: r.get(3)?,
        assistant_personality: r.get(4)?,
        rev: r.get(5)?,
    })
}

fn not_found(what: &'static str, id: &str) -> HistoryError {
    HistoryError::NotFound {
        what,
        id: id.to_string(),
    }
}

/// Checks a user name: 1 to 64 letters, digits, `.`, `_`, `-`, `@`.
pub fn check_user_name(name: &str) -> Result<()> {
    let n = name.chars().count();
    if n == 0
        || n > MAX_USER_CHARS
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(HistoryError::Invalid(format!(
            "user name \"{name}\": use 1 to {MAX_USER_CHARS} letters, digits, '.', '_', '-' or '@'"
        )));
    }
    Ok(())
}

/// Takes the user's next `n` revisions; returns the last one.
fn bump(conn: &Connection, user: UserId, n: i64) -> Result<i64> {
    conn.prepare_cached("UPDATE srv_users SET rev = rev + ?2 WHERE id = ?1 RETURNING rev")?
        .query_row(params![user, n], |r| r.get(0))
        .optional()?
        .ok_or_else(|| not_found("user", &user.to_string()))
}

fn get_conv_any(conn: &Connection, id: &str) -> Result<Option<(UserId, ServerConversation)>> {
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
fn live_conv(conn: &Connection, user: UserId, id: &str) -> Result<ServerConversation> {
    match get_conv_any(conn, id)? {
        Some((u, c)) if u == user && !c.deleted => Ok(c),
        _ => Err(not_found("conversation", id)),
    }
}

fn get_msg(conn: &Connection, id: &str) -> Result<Option<(UserId, Message)>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {MSG_COLS}, m.user_id FROM srv_messages m WHERE m.id = ?1"
        ))?
        .query_row([key("message", id)?], |r| {
            Ok((r.get(13)?, msg_from_row(r)?))
        })
        .optional()?)
}

/// Stores one message in an open transaction (idempotent by id).
fn insert_message(conn: &Connection, user: UserId, new: &NewMessage) -> Result<Stored> {
    check_content(&new.content)?;
    let id = match &new.id {
        Some(id) => check_id("message id", id)?,
        None => new_id(),
    };
    let conversation_id = check_id("conversation id", &new.conversation_id)?;
    let reply_to = new
        .reply_to
        .as_deref()
        .map(|r| check_id("reply_to", r))
        .transpose()?;
    if let Some((owner, stored)) = get_msg(conn, &id)? {
        if owner != user {
            return Err(HistoryError::Conflict(format!(
                "message id {id} is already taken; make a new UUID"
            )));
        }
        if stored.content != new.content
            || stored.conversation_id != conversation_id
            || stored.role != new.role
        {
            return Err(HistoryError::Conflict(format!(
                "message {id} already exists with different content"
            )));
        }
        return Ok(Stored::Duplicate(stored));
    }
    live_conv(conn, user, &conversation_id)?;
    let rev = bump(conn, user, 1)?;
    let created_at = new.created_at.unwrap_or_else(time::now_ms);
    conn.prepare_cached(
        "INSERT INTO srv_messages (id, conversation_id, user_id, role, content, created_at, model_id,
             tokens_used, response_time_ms, is_audio, origin, reply_to, rev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        key("message", &id)?,
        key("conversation", &conversation_id)?,
        user,
        new.role.as_str(),
        new.content,
        created_at,
        new.model_id,
        new.tokens_used,
        new.response_time_ms,
        new.is_audio,
        new.origin.as_str(),
        reply_to.as_deref().map(|r| key("message", r)).transpose()?,
        rev,
    ])?;
    Ok(Stored::New(Message {
        id,
        conversation_id,
        role: new.role,
        content: new.content.clone(),
        created_at,
        model_id: new.model_id.clone(),
        tokens_used: new.tokens_used,
        response_time_ms: new.response_time_ms,
        is_audio: new.is_audio,
        origin: new.origin,
        reply_to,
        metadata: serde_json::Value::Object(Default::default()),
        rev,
    }))
}

impl Store {
    /// The chat server's tables of this database.
    pub fn server(&mut self) -> ServerDb<'_> {
        ServerDb {
            conn: &mut self.conn,
        }
    }
}

/// The chat server's view of a [`Store`]; see the module docs.
pub struct ServerDb<'a> {
    pub(super) conn: &'a mut Connection,
}

/// A write's transaction: its own (`BEGIN IMMEDIATE`), or a savepoint when
/// it runs inside a group commit (`HistoryHandle::call_batched`).
pub(super) enum WriteTx<'c> {
    Own(rusqlite::Transaction<'c>),
    Grouped(rusqlite::Savepoint<'c>),
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            WriteTx::Own(t) => t,
            WriteTx::Grouped(s) => s,
        }
    }
}

impl WriteTx<'_> {
    pub(super) fn commit(self) -> Result<()> {
        match self {
            WriteTx::Own(t) => t.commit()?,
            WriteTx::Grouped(s) => s.commit()?,
        }
        Ok(())
    }
}

impl ServerDb<'_> {
    pub(super) fn write_tx(&mut self) -> Result<WriteTx<'_>> {
        Ok(if self.conn.is_autocommit() {
            WriteTx::Own(
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?,
            )
        } else {
            WriteTx::Grouped(self.conn.savepoint()?)
        })
    }

    // ---- users and tokens ----

    /// Adds a device token (its SHA-256) for `user`, creating the user.
    pub fn add_token(
        &mut self,
        user: &str,
        device: Option<&str>,
        hash: &[u8; 32],
    ) -> Result<TokenInfo> {
        check_user_name(user)?;
        if let Some(d) = device
            && (d.trim().is_empty() || d.chars().count() > MAX_DEVICE_CHARS)
        {
            return Err(HistoryError::Invalid(format!(
                "device name: use 1 to {MAX_DEVICE_CHARS} characters"
            )));
        }
        let now = time::now_ms();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO srv_users (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![user, now],
        )?;
        let uid: i64 = tx.query_row("SELECT id FROM srv_users WHERE name = ?1", [user], |r| {
            r.get(0)
        })?;
        tx.execute(
            "INSERT INTO srv_tokens (user_id, device, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![uid, device.map(str::trim), &hash[..], now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        self.token(id)
    }

    fn token(&self, id: i64) -> Result<TokenInfo> {
        self.conn
            .query_row(
                "SELECT t.id, u.name, t.device, t.created_at, t.last_used_at, t.revoked_at
                 FROM srv_tokens t JOIN srv_users u ON u.id = t.user_id WHERE t.id = ?1",
                [id],
                token_from_row,
            )
            .optional()?
            .ok_or_else(|| not_found("token", &id.to_string()))
    }

    /// Every token, by user then id.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut stmt = self.conn.prepare(
            "SELECT t.id, u.name, t.device, t.created_at, t.last_used_at, t.revoked_at
             FROM srv_tokens t JOIN srv_users u ON u.id = t.user_id ORDER BY u.name, t.id",
        )?;
        let rows = stmt
            .query_map([], token_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Revokes a token (it stays listed, marked revoked). Revoking twice is
    /// not an error.
    pub fn revoke_token(&mut self, id: i64) -> Result<TokenInfo> {
        self.conn.execute(
            "UPDATE srv_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, time::now_ms()],
        )?;
        self.token(id)
    }

    /// The live token with this hash, if any (noting its use).
    pub fn token_by_hash(&mut self, hash: &[u8; 32]) -> Result<Option<TokenMatch>> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT t.id, t.user_id, u.name, t.hash FROM srv_tokens t
                 JOIN srv_users u ON u.id = t.user_id
                 WHERE t.hash = ?1 AND t.revoked_at IS NULL",
            )?
            .query_row([&hash[..]], |r| {
                Ok(TokenMatch {
                    token_id: r.get(0)?,
                    user_id: r.get(1)?,
                    user: r.get(2)?,
                    hash: r.get(3)?,
                })
            })
            .optional()?;
        if let Some(t) = &found {
            let now = time::now_ms();
            self.conn
                .prepare_cached(
                    "UPDATE srv_tokens SET last_used_at = ?2
                     WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3)",
                )?
                .execute(params![t.token_id, now, now - LAST_USED_EVERY_MS])?;
        }
        Ok(found)
    }

    /// The user's current revision.
    pub fn user_rev(&self, user: UserId) -> Result<i64> {
        self.conn
            .prepare_cached("SELECT rev FROM srv_users WHERE id = ?1")?
            .query_row([user], |r| r.get(0))
            .optional()?
            .ok_or_else(|| not_found("user", &user.to_string()))
    }

    /// The id of a user by name (for tools and tests).
    pub fn user_id(&self, name: &str) -> Result<UserId> {
        self.conn
            .query_row("SELECT id FROM srv_users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| not_found("user", name))
    }

    // ---- conversations ----

    /// Creates a conversation. An id that exists for this user returns the
    /// stored conversation and `true` (nothing changes); an id taken by
    /// another user, or by a deleted conversation, is a `Conflict`.
    pub fn create_conversation(
        &mut self,
        user: UserId,
        new: &NewConversation,
    ) -> Result<(ServerConversation, bool)> {
        let id = match &new.id {
            Some(id) => check_id("conversation id", id)?,
            None => new_id(),
        };
        let title = check_title(new.title.as_deref().unwrap_or("New conversation"))?;
        let tx = self.write_tx()?;
        if let Some((owner, c)) = get_conv_any(&tx, &id)? {
            if owner != user {
                return Err(HistoryError::Conflict(format!(
                    "conversation id {id} is already taken; make a new UUID"
                )));
            }
            if c.deleted {
                return Err(HistoryError::Conflict(format!(
                    "conversation {id} was deleted; ids are not reused, make a new UUID"
                )));
            }
            return Ok((c, true));
        }
        let rev = bump(&tx, user, 1)?;
        let now = new.created_at.unwrap_or_else(time::now_ms);
        tx.prepare_cached(
            "INSERT INTO srv_conversations (id, user_id, title, model_id, created_at, updated_at,
                 activity_at, created_rev, rev)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5, ?6, ?6)",
        )?
        .execute(params![
            key("conversation", &id)?,
            user,
            title,
            new.model_id,
            now,
            rev
        ])?;
        let c = live_conv(&tx, user, &id)?;
        tx.commit()?;
        Ok((c, false))
    }

    /// The user's conversation (not deleted).
    pub fn get_conversation(&self, user: UserId, id: &str) -> Result<ServerConversation> {
        live_conv(self.conn, user, id)
    }

    /// Changes title, archived flag or model. Returns the conversation and
    /// whether anything changed (no change: no new rev).
    pub fn update_conversation(
        &mut self,
        user: UserId,
        id: &str,
        u: &ConversationUpdate,
    ) -> Result<(ServerConversation, bool)> {
        let title = u.title.as_deref().map(check_title).transpose()?;
        let tx = self.write_tx()?;
        let c = live_conv(&tx, user, id)?;
        let new_title = title.unwrap_or_else(|| c.title.clone());
        let new_archived = u.archived.unwrap_or(c.archived);
        let new_model = u.model_id.clone().unwrap_or_else(|| c.model_id.clone());
        if new_title == c.title && new_archived == c.archived && new_model == c.model_id {
            return Ok((c, false));
        }
        let rev = bump(&tx, user, 1)?;
        tx.execute(
            "UPDATE srv_conversations SET title = ?2, archived = ?3, model_id = ?4,
                 updated_at = max(updated_at, ?5), rev = ?6
             WHERE id = ?1",
            params![
                key("conversation", id)?,
                new_title,
                new_archived,
                new_model,
                time::now_ms(),
                rev
            ],
        )?;
        let c = live_conv(&tx, user, id)?;
        tx.commit()?;
        Ok((c, true))
    }

    /// Deletes a conversation: its messages go, the row stays as a tombstone
    /// with a new rev. Returns the tombstone's rev and whether it was
    /// deleted already (then nothing changes).
    pub fn delete_conversation(&mut self, user: UserId, id: &str) -> Result<(i64, bool)> {
        let tx = self.write_tx()?;
        let c = match get_conv_any(&tx, id)? {
            Some((owner, c)) if owner == user => c,
            _ => return Err(not_found("conversation", id)),
        };
        if c.deleted {
            return Ok((c.rev, true));
        }
        let rev = bump(&tx, user, 1)?;
        let k = key("conversation", id)?;
        tx.execute("DELETE FROM srv_messages WHERE conversation_id = ?1", [k])?;
        tx.execute(
            "UPDATE srv_conversations SET deleted = 1, message_count = 0, archived = 0,
                 voice_messages = 0, web_messages = 0, api_messages = 0,
                 updated_at = max(updated_at, ?2), rev = ?3
             WHERE id = ?1",
            params![k, time::now_ms(), rev],
        )?;
        tx.commit()?;
        Ok((rev, false))
    }

    /// The tombstone or live record of a conversation of this user (for
    /// notifications after a delete).
    pub fn conversation_any(&self, user: UserId, id: &str) -> Result<ServerConversation> {
        match get_conv_any(self.conn, id)? {
            Some((owner, c)) if owner == user => Ok(c),
            _ => Err(not_found("conversation", id)),
        }
    }

    /// A page of the user's conversations, newest activity first, after the
    /// conversation `before` when given. Returns the page and whether more follow.
    pub fn list_conversations(
        &self,
        user: UserId,
        include_archived: bool,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<ServerConversation>, bool)> {
        let limit = limit.clamp(1, 10_000);
        let (at, bid) = match before {
            Some(b) => match get_conv_any(self.conn, b)? {
                Some((owner, _)) if owner == user => (
                    Some(activity_of(self.conn, b)?),
                    Some(key("conversation", b)?),
                ),
                _ => return Err(not_found("conversation", b)),
            },
            None => (None, None),
        };
        let archived = if include_archived {
            ""
        } else {
            "AND archived = 0"
        };
        let cursor = if at.is_some() {
            "AND (activity_at, id) < (?2, ?3)"
        } else {
            "AND ?2 IS NULL AND ?3 IS NULL"
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONV_COLS} FROM srv_conversations
             WHERE user_id = ?1 AND deleted = 0 {archived} {cursor}
             ORDER BY activity_at DESC, id DESC LIMIT ?4"
        ))?;
        let mut rows: Vec<ServerConversation> = stmt
            .query_map(params![user, at, bid, limit as i64 + 1], conv_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    // ---- messages ----

    /// Stores one message (idempotent by id: the same message again is a
    /// `Duplicate`; the same id with other content is a `Conflict`). The
    /// conversation must be the user's and not deleted.
    pub fn add_message(&mut self, user: UserId, new: &NewMessage) -> Result<Stored> {
        let tx = self.write_tx()?;
        let stored = insert_message(&tx, user, new)?;
        tx.commit()?;
        Ok(stored)
    }

    /// Stores many messages in one transaction; each is stored, a duplicate,
    /// or rejected with its reason (the others are stored all the same).
    pub fn append_messages(&mut self, user: UserId, msgs: &[NewMessage]) -> Result<AppendOutcome> {
        let tx = self.write_tx()?;
        let mut out = AppendOutcome::default();
        for m in msgs {
            match insert_message(&tx, user, m) {
                Ok(Stored::New(m)) => out.stored.push(m),
                Ok(Stored::Duplicate(m)) => out.duplicates.push(m.id),
                Err(e @ HistoryError::Sqlite(_)) => return Err(e),
                Err(e) => out.rejected.push((m.id.clone().unwrap_or_default(), e)),
            }
        }
        out.rev = tx
            .prepare_cached("SELECT rev FROM srv_users WHERE id = ?1")?
            .query_row([user], |r| r.get(0))?;
        tx.commit()?;
        Ok(out)
    }

    /// A message of the user and the assistant reply to it (the first one
    /// stored), or `None`. Another user's id is a `Conflict`.
    pub fn find_message(&self, user: UserId, id: &str) -> Result<Option<MessageWithReply>> {
        let Some((owner, message)) = get_msg(self.conn, id)? else {
            return Ok(None);
        };
        if owner != user {
            return Err(HistoryError::Conflict(format!(
                "message id {id} is already taken; make a new UUID"
            )));
        }
        let reply = self
            .conn
            .prepare_cached(&format!(
                "SELECT {MSG_COLS} FROM srv_messages m
                 WHERE m.reply_to = ?1 AND m.role = 'assistant' AND m.user_id = ?2
                 ORDER BY m.seq LIMIT 1"
            ))?
            .query_row(params![key("message", id)?, user], msg_from_row)
            .optional()?;
        Ok(Some(MessageWithReply { message, reply }))
    }

    /// Up to `limit` messages of a conversation, oldest first: the newest
    /// ones, or those before the message `before`. Also says whether older
    /// ones exist.
    pub fn messages(
        &self,
        user: UserId,
        conversation_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<Message>, bool)> {
        self.messages_within(user, conversation_id, limit, before, &mut |_| true)
    }

    /// [`ServerDb::messages`], also ending the page (at its oldest end) where
    /// `fits` says no; the newest message goes in whatever it says.
    pub fn messages_within(
        &self,
        user: UserId,
        conversation_id: &str,
        limit: usize,
        before: Option<&str>,
        fits: &mut dyn FnMut(&Message) -> bool,
    ) -> Result<(Vec<Message>, bool)> {
        live_conv(self.conn, user, conversation_id)?;
        let ck = key("conversation", conversation_id)?;
        let limit = limit.clamp(1, 100_000);
        let (at, seq) = match before {
            None => (i64::MAX, i64::MAX),
            Some(b) => self
                .conn
                .prepare_cached(
                    "SELECT created_at, seq FROM srv_messages WHERE id = ?1 AND conversation_id = ?2",
                )?
                .query_row([key("message", b)?, ck], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| not_found("message", b))?,
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MSG_COLS} FROM srv_messages m WHERE m.conversation_id = ?1
             AND (m.created_at, m.seq) < (?2, ?3)
             ORDER BY m.created_at DESC, m.seq DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![ck, at, seq, limit as i64 + 1], msg_from_row)?;
        let mut out: Vec<Message> = Vec::new();
        let mut more = false;
        for m in rows {
            let m = m?;
            if out.len() == limit || (!fits(&m) && !out.is_empty()) {
                more = true;
                break;
            }
            out.push(m);
        }
        out.reverse();
        Ok((out, more))
    }

    /// Full-text search in the user's messages, best first; snippets mark
    /// matched words with `[` and `]`.
    pub fn search(
        &self,
        user: UserId,
        query: &str,
        conversation_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        self.search_within(user, query, conversation_id, limit, &mut |_| true)
    }

    /// [`ServerDb::search`], also stopping before the first hit `fits` says
    /// no to (the best hit goes in whatever it says).
    pub fn search_within(
        &self,
        user: UserId,
        query: &str,
        conversation_id: Option<&str>,
        limit: usize,
        fits: &mut dyn FnMut(&SearchHit) -> bool,
    ) -> Result<Vec<SearchHit>> {
        let q = fts_query(query)?;
        if let Some(c) = conversation_id {
            live_conv(self.conn, user, c)?;
        }
        let ck = conversation_id
            .map(|c| key("conversation", c))
            .transpose()?;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MSG_COLS}, c.title, snippet(srv_messages_fts, 0, ?4, ?5, '…', 12)
             FROM srv_messages_fts
             JOIN srv_messages m ON m.seq = srv_messages_fts.rowid
             JOIN srv_conversations c ON c.id = m.conversation_id
             WHERE srv_messages_fts MATCH ?1 AND m.user_id = ?2
               AND (?3 IS NULL OR m.conversation_id = ?3)
             ORDER BY rank LIMIT ?6"
        ))?;
        let rows = stmt.query_map(
            params![
                q,
                user,
                ck,
                MARK_START,
                MARK_END,
                limit.clamp(1, 1000) as i64
            ],
            |r| {
                Ok(SearchHit {
                    message: msg_from_row(r)?,
                    conversation_title: r.get(13)?,
                    snippet: r.get(14)?,
                })
            },
        )?;
        let mut hits = Vec::new();
        for h in rows {
            let h = h?;
            if !fits(&h) && !hits.is_empty() {
                break;
            }
            hits.push(h);
        }
        Ok(hits)
    }

    /// The LLM context of a reply to `upto` (a message of the conversation):
    /// the system prompt, then the most recent messages up to and including
    /// `upto` that fit in `budget_tokens` (oldest dropped first), oldest first.
    pub fn context(
        &self,
        user: UserId,
        conversation_id: &str,
        upto: &str,
        system_prompt: &str,
        budget_tokens: usize,
    ) -> Result<Vec<ChatMessage>> {
        live_conv(self.conn, user, conversation_id)?;
        let ck = key("conversation", conversation_id)?;
        let (at, seq): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT created_at, seq FROM srv_messages WHERE id = ?1 AND conversation_id = ?2",
            )?
            .query_row([key("message", upto)?, ck], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| not_found("message", upto))?;
        let mut out = Vec::new();
        let mut used = 0;
        if !system_prompt.trim().is_empty() {
            used += estimate_tokens(system_prompt);
            out.push(ChatMessage {
                role: Role::System,
                content: system_prompt.to_string(),
            });
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT role, content FROM srv_messages WHERE conversation_id = ?1
             AND (created_at, seq) <= (?2, ?3)
             ORDER BY created_at DESC, seq DESC LIMIT 500",
        )?;
        let mut rows = stmt.query(params![ck, at, seq])?;
        let mut recent = Vec::new();
        while let Some(r) = rows.next()? {
            let content: String = r.get(1)?;
            let cost = estimate_tokens(&content);
            // The question itself always goes, even over budget.
            if used + cost > budget_tokens && !recent.is_empty() {
                break;
            }
            used += cost;
            let role: String = r.get(0)?;
            recent.push(ChatMessage {
                role: Role::parse(&role).unwrap_or(Role::User),
                content,
            });
        }
        out.extend(recent.into_iter().rev());
        Ok(out)
    }

    // ---- settings ----

    pub fn settings(&self, user: UserId) -> Result<ServerSettings> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {SETTINGS_COLS} FROM srv_settings WHERE user_id = ?1"
            ))?
            .query_row([user], settings_from_row)
            .optional()?
            .unwrap_or_default())
    }

    /// Applies a partial change. Returns the settings and whether anything
    /// changed (no change: no new rev).
    pub fn update_settings(
        &mut self,
        user: UserId,
        u: &SettingsUpdate,
    ) -> Result<(ServerSettings, bool)> {
        let tx = self.write_tx()?;
        let cur = tx
            .prepare_cached(&format!(
                "SELECT {SETTINGS_COLS} FROM srv_settings WHERE user_id = ?1"
            ))?
            .query_row([user], settings_from_row)
            .optional()?
            .unwrap_or_default();
        let pick = |new: &Option<Option<String>>, old: &Option<String>| {
            new.clone().unwrap_or_else(|| old.clone())
        };
        let mut next = ServerSettings {
            selected_model: pick(&u.selected_model, &cur.selected_model),
            voice_gender: pick(&u.voice_gender, &cur.voice_gender),
            voice_accent: pick(&u.voice_accent, &cur.voice_accent),
            voice_speed: u.voice_speed.unwrap_or(cur.voice_speed),
            assistant_personality: pick(&u.assistant_personality, &cur.assistant_personality),
            rev: cur.rev,
        };
        if next == cur {
            return Ok((cur, false));
        }
        next.rev = bump(&tx, user, 1)?;
        tx.execute(
            "INSERT INTO srv_settings (user_id, selected_model, voice_gender, voice_accent,
                 voice_speed, assistant_personality, rev)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (user_id) DO UPDATE SET
                 selected_model = excluded.selected_model, voice_gender = excluded.voice_gender,
                 voice_accent = excluded.voice_accent, voice_speed = excluded.voice_speed,
                 assistant_personality = excluded.assistant_personality, rev = excluded.rev",
            params![
                user,
                next.selected_model,
                next.voice_gender,
                next.voice_accent,
                next.voice_speed,
                next.assistant_personality,
                next.rev
            ],
        )?;
        tx.commit()?;
        Ok((next, true))
    }

    // ---- sync ----

    /// The user's changes with `rev > since`, ascending, each row once at its
    /// latest state, about `limit` of them.
    ///
    /// A message never comes before its conversation: when a message's
    /// conversation was created after `since` and has not come yet in this
    /// page, its current record is put just before the message (it comes
    /// again at its own rev later; applying it twice is harmless). Such
    /// records can make a page a little longer than `limit`.
    pub fn changes(&self, user: UserId, since: i64, limit: usize) -> Result<ChangePage> {
        self.changes_within(user, since, limit, &mut |_| true)
    }

    /// [`ServerDb::changes`], also ending the page where `fits` says no: it
    /// is asked about each record before it goes in (its caller counts the
    /// bytes); the page's first change goes in whatever it says. The rows
    /// are read as the page fills, so a page never holds more than it sends.
    pub fn changes_within(
        &self,
        user: UserId,
        since: i64,
        limit: usize,
        fits: &mut dyn FnMut(&ServerChange) -> bool,
    ) -> Result<ChangePage> {
        let limit = limit.clamp(1, 100_000);
        let fetch = limit as i64 + 1;
        let settings = Some(self.settings(user)?).filter(|s| s.rev > since);
        let mut conv_stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONV_COLS} FROM srv_conversations
             WHERE user_id = ?1 AND rev > ?2 ORDER BY rev LIMIT ?3"
        ))?;
        let mut convs = conv_stmt.query_map(params![user, since, fetch], conv_from_row)?;
        let mut msg_stmt = self.conn.prepare_cached(&format!(
            "SELECT {MSG_COLS} FROM srv_messages m
             WHERE m.user_id = ?1 AND m.rev > ?2 ORDER BY m.rev LIMIT ?3"
        ))?;
        let mut msgs = msg_stmt.query_map(params![user, since, fetch], msg_from_row)?;
        let mut next_conv = convs.next().transpose()?;
        let mut next_msg = msgs.next().transpose()?;
        let mut settings = settings;

        let mut sent: HashSet<String> = HashSet::new();
        let mut looked_up: HashMap<String, Option<ServerConversation>> = HashMap::new();
        let mut changes = Vec::new();
        let (mut taken, mut rev, mut has_more) = (0usize, since, false);
        loop {
            // The feed's next change: the lowest rev of the three sources.
            let revs = [
                next_conv.as_ref().map(|c| c.rev),
                next_msg.as_ref().map(|m| m.rev),
                settings.as_ref().map(|s| s.rev),
            ];
            let Some(lowest) = revs.iter().flatten().min().copied() else {
                break;
            };
            if taken == limit {
                has_more = true;
                break;
            }
            let ch = if revs[0] == Some(lowest) {
                ServerChange::Conversation(next_conv.take().expect("peeked"))
            } else if revs[1] == Some(lowest) {
                ServerChange::Message(next_msg.take().expect("peeked"))
            } else {
                ServerChange::Settings(settings.take().expect("peeked"))
            };
            let mut add = Vec::with_capacity(2);
            match &ch {
                ServerChange::Conversation(c) if sent.contains(&c.id) => {}
                ServerChange::Message(m) if !sent.contains(&m.conversation_id) => {
                    let conv = match looked_up.get(&m.conversation_id) {
                        Some(c) => c.clone(),
                        None => {
                            let c = get_conv_any(self.conn, &m.conversation_id)?
                                .map(|(_, c)| c)
                                .filter(|c| c.created_rev > since);
                            looked_up.insert(m.conversation_id.clone(), c.clone());
                            c
                        }
                    };
                    if let Some(c) = conv {
                        add.push(ServerChange::Conversation(c));
                    }
                    add.push(ch.clone());
                }
                _ => add.push(ch.clone()),
            }
            // Each record is put to `fits`, so that it counts them all.
            let mut all_fit = true;
            for c in &add {
                all_fit &= fits(c);
            }
            if taken > 0 && !all_fit {
                has_more = true;
                break;
            }
            for c in add {
                if let ServerChange::Conversation(c) = &c {
                    sent.insert(c.id.clone());
                }
                changes.push(c);
            }
            taken += 1;
            rev = lowest;
            match ch {
                ServerChange::Conversation(_) => next_conv = convs.next().transpose()?,
                ServerChange::Message(_) => next_msg = msgs.next().transpose()?,
                ServerChange::Settings(_) => {}
            }
        }
        Ok(ChangePage {
            changes,
            rev,
            has_more,
        })
    }
}

fn token_from_row(r: &Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(0)?,
        user: r.get(1)?,
        device: r.get(2)?,
        created_at: r.get(3)?,
        last_used_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

fn activity_of(conn: &Connection, id: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT activity_at FROM srv_conversations WHERE id = ?1")?
        .query_row([key("conversation", id)?], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Store, UserId, UserId) {
        let mut s = Store::open_in_memory().unwrap();
        s.server().add_token("alice", Some("pi"), &[1; 32]).unwrap();
        s.server().add_token("bob", None, &[2; 32]).unwrap();
        let a = s.server().user_id("alice").unwrap();
        let b = s.server().user_id("bob").unwrap();
        (s, a, b)
    }

    fn conv(s: &mut Store, u: UserId, title: &str) -> ServerConversation {
        s.server()
            .create_conversation(
                u,
                &NewConversation {
                    title: Some(title.into()),
                    ..Default::default()
                },
            )
            .unwrap()
            .0
    }

    fn msg(conv: &str, text: &str) -> NewMessage {
        let mut m = NewMessage::new(conv, Role::User, text);
        m.id = Some(new_id());
        m
    }

    #[test]
    fn hot_queries_use_indexes() {
        let s = Store::open_in_memory().unwrap();
        let plans = [
            (
                "SELECT id FROM srv_conversations WHERE user_id = 1 AND rev > 5 ORDER BY rev LIMIT 10",
                "srv_conversations_by_rev",
            ),
            (
                "SELECT id FROM srv_messages m WHERE m.user_id = 1 AND m.rev > 5 ORDER BY m.rev LIMIT 10",
                "srv_messages_by_rev",
            ),
            (
                "SELECT id FROM srv_conversations WHERE user_id = 1 AND deleted = 0 AND archived = 0 ORDER BY activity_at DESC, id DESC LIMIT 10",
                "srv_conversations_by_archived_activity",
            ),
            (
                "SELECT id FROM srv_conversations WHERE user_id = 1 AND deleted = 0 AND (activity_at, id) < (5, x'00') ORDER BY activity_at DESC, id DESC LIMIT 10",
                "srv_conversations_by_activity",
            ),
            (
                "SELECT id FROM srv_messages m WHERE m.conversation_id = x'00' AND (m.created_at, m.seq) < (1, 2) ORDER BY m.created_at DESC, m.seq DESC LIMIT 10",
                "srv_messages_by_conversation",
            ),
            (
                "SELECT id FROM srv_messages m WHERE m.reply_to = x'00' AND m.role = 'assistant' AND m.user_id = 1 ORDER BY m.seq LIMIT 1",
                "srv_messages_by_reply",
            ),
            (
                "SELECT t.id FROM srv_tokens t WHERE t.hash = x'00' AND t.revoked_at IS NULL",
                "sqlite_autoindex_srv_tokens_1",
            ),
        ];
        for (sql, index) in plans {
            let plan = s.explain(sql).unwrap().join(" | ");
            assert!(plan.contains(index), "{sql}\n  plan: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n  sorts: {plan}");
        }
    }

    #[test]
    fn tokens_add_find_revoke() {
        let (mut s, a, _) = setup();
        let t = s.server().token_by_hash(&[1; 32]).unwrap().unwrap();
        assert_eq!((t.user_id, t.user.as_str()), (a, "alice"));
        assert!(s.server().token_by_hash(&[3; 32]).unwrap().is_none());
        let list = s.server().tokens().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].last_used_at.is_some(), "use is noted");
        let r = s.server().revoke_token(t.token_id).unwrap();
        assert!(r.revoked_at.is_some());
        assert!(s.server().token_by_hash(&[1; 32]).unwrap().is_none());
        assert!(matches!(
            s.server().revoke_token(99),
            Err(HistoryError::NotFound { .. })
        ));
        assert!(s.server().add_token("bad name", None, &[4; 32]).is_err());
        assert!(
            s.server().add_token("carol", None, &[2; 32]).is_err(),
            "same hash"
        );
    }

    #[test]
    fn revs_count_every_change_and_creates_are_idempotent() {
        let (mut s, a, b) = setup();
        let c = conv(&mut s, a, "One");
        assert_eq!((c.rev, c.created_rev), (1, 1));
        let again = s
            .server()
            .create_conversation(
                a,
                &NewConversation {
                    id: Some(c.id.clone()),
                    title: Some("Other".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(again, (c.clone(), true));
        // Another user cannot take the id, nor see the conversation.
        let e = s
            .server()
            .create_conversation(
                b,
                &NewConversation {
                    id: Some(c.id.clone()),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(matches!(e, HistoryError::Conflict(_)), "{e}");
        assert!(s.server().get_conversation(b, &c.id).is_err());
        let m = msg(&c.id, "hello");
        let stored = s.server().add_message(a, &m).unwrap();
        assert_eq!(stored.message().rev, 2);
        assert!(matches!(
            s.server().add_message(a, &m).unwrap(),
            Stored::Duplicate(_)
        ));
        let mut changed = m.clone();
        changed.content = "other".into();
        assert!(matches!(
            s.server().add_message(a, &changed),
            Err(HistoryError::Conflict(_))
        ));
        assert!(matches!(
            s.server().add_message(b, &msg(&c.id, "intruder")),
            Err(HistoryError::NotFound { .. })
        ));
        let (u, changed) = s
            .server()
            .update_conversation(
                a,
                &c.id,
                &ConversationUpdate {
                    title: Some("Renamed".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(changed);
        assert_eq!((u.rev, u.message_count), (3, 1));
        let (_, changed) = s
            .server()
            .update_conversation(
                a,
                &c.id,
                &ConversationUpdate {
                    title: Some("Renamed".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(!changed, "no change, no rev");
        assert_eq!(s.server().user_rev(a).unwrap(), 3);
        assert_eq!(s.server().user_rev(b).unwrap(), 0);
    }

    #[test]
    fn delete_leaves_a_tombstone_and_removes_messages() {
        let (mut s, a, _) = setup();
        let c = conv(&mut s, a, "Doomed");
        s.server()
            .add_message(a, &msg(&c.id, "secret words"))
            .unwrap();
        assert_eq!(s.server().search(a, "secret", None, 10).unwrap().len(), 1);
        let (rev, again) = s.server().delete_conversation(a, &c.id).unwrap();
        assert_eq!((rev, again), (3, false));
        assert_eq!(s.server().delete_conversation(a, &c.id).unwrap(), (3, true));
        assert!(s.server().get_conversation(a, &c.id).is_err());
        assert!(s.server().search(a, "secret", None, 10).unwrap().is_empty());
        assert!(matches!(
            s.server().add_message(a, &msg(&c.id, "late")),
            Err(HistoryError::NotFound { .. })
        ));
        let e = s
            .server()
            .create_conversation(
                a,
                &NewConversation {
                    id: Some(c.id.clone()),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(matches!(e, HistoryError::Conflict(_)));
        let page = s.server().changes(a, 0, 100).unwrap();
        assert_eq!(page.changes.len(), 1);
        assert!(
            matches!(&page.changes[0], ServerChange::Conversation(c) if c.deleted && c.rev == 3)
        );
    }

    #[test]
    fn sync_feed_pages_in_rev_order_with_conversations_first() {
        let (mut s, a, b) = setup();
        let c1 = conv(&mut s, a, "c1"); // rev 1
        for i in 0..5 {
            s.server()
                .add_message(a, &msg(&c1.id, &format!("m{i}")))
                .unwrap(); // revs 2..=6
        }
        // Renaming moves c1 to rev 7, after its messages.
        s.server()
            .update_conversation(
                a,
                &c1.id,
                &ConversationUpdate {
                    title: Some("renamed".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        s.server()
            .update_settings(
                a,
                &SettingsUpdate {
                    selected_model: Some(Some("m".into())),
                    ..Default::default()
                },
            )
            .unwrap(); // rev 8
        conv(&mut s, b, "bob's");

        let p1 = s.server().changes(a, 0, 3).unwrap();
        assert!(p1.has_more);
        assert_eq!(p1.rev, 4);
        // c1 comes first (at its latest state), then m0, m1, m2.
        let kinds: Vec<(i64, &str)> = p1
            .changes
            .iter()
            .map(|c| {
                (
                    c.rev(),
                    match c {
                        ServerChange::Conversation(_) => "c",
                        ServerChange::Message(_) => "m",
                        ServerChange::Settings(_) => "s",
                    },
                )
            })
            .collect();
        assert_eq!(kinds, vec![(7, "c"), (2, "m"), (3, "m"), (4, "m")]);
        let p2 = s.server().changes(a, p1.rev, 3).unwrap();
        // c1 again ahead of its messages: created after `since`? No: created
        // at rev 1 <= 4, so the client has it already.
        let revs: Vec<i64> = p2.changes.iter().map(ServerChange::rev).collect();
        assert_eq!(revs, vec![5, 6, 7]);
        let p3 = s.server().changes(a, p2.rev, 3).unwrap();
        assert_eq!(
            p3.changes.iter().map(ServerChange::rev).collect::<Vec<_>>(),
            vec![8]
        );
        assert!(!p3.has_more);
        let p4 = s.server().changes(a, p3.rev, 3).unwrap();
        assert!(p4.changes.is_empty() && !p4.has_more);
        assert_eq!(p4.rev, 8);
        // Bob sees only his own.
        let pb = s.server().changes(b, 0, 100).unwrap();
        assert_eq!(pb.changes.len(), 1);
    }

    #[test]
    fn append_reports_each_message() {
        let (mut s, a, b) = setup();
        let c = conv(&mut s, a, "c");
        let cb = conv(&mut s, b, "cb");
        let first = msg(&c.id, "one");
        s.server().add_message(a, &first).unwrap();
        let mut bad = msg(&c.id, "x");
        bad.content = " ".into();
        let batch = vec![
            first.clone(),
            msg(&c.id, "two"),
            msg(&cb.id, "not yours"),
            bad,
            msg(&c.id, "three"),
        ];
        let out = s.server().append_messages(a, &batch).unwrap();
        assert_eq!(out.stored.len(), 2);
        assert_eq!(out.duplicates, vec![first.id.clone().unwrap()]);
        assert_eq!(out.rejected.len(), 2);
        assert_eq!(out.rev, 4);
        let (list, more) = s.server().messages(a, &c.id, 10, None).unwrap();
        assert_eq!(
            list.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            vec!["one", "two", "three"]
        );
        assert!(!more);
        let (older, more) = s.server().messages(a, &c.id, 1, Some(&list[2].id)).unwrap();
        assert_eq!(older[0].content, "two");
        assert!(more);
    }

    #[test]
    fn replies_context_and_settings() {
        let (mut s, a, _) = setup();
        let c = conv(&mut s, a, "c");
        let q = s.server().add_message(a, &msg(&c.id, "question")).unwrap();
        let q = q.message().clone();
        assert!(
            s.server()
                .find_message(a, &q.id)
                .unwrap()
                .unwrap()
                .reply
                .is_none()
        );
        let mut r = NewMessage::new(&c.id, Role::Assistant, "answer");
        r.reply_to = Some(q.id.clone());
        // Another user's message claiming to answer it is not its reply.
        s.server().add_token("mallory", None, &[9; 32]).unwrap();
        let m = s.server().user_id("mallory").unwrap();
        let mc = conv(&mut s, m, "m");
        let mut fake = NewMessage::new(&mc.id, Role::Assistant, "injected");
        fake.reply_to = Some(q.id.clone());
        s.server().add_message(m, &fake).unwrap();
        assert!(
            s.server()
                .find_message(a, &q.id)
                .unwrap()
                .unwrap()
                .reply
                .is_none()
        );
        s.server().add_message(a, &r).unwrap();
        let found = s.server().find_message(a, &q.id).unwrap().unwrap();
        assert_eq!(found.reply.unwrap().content, "answer");
        let ctx = s
            .server()
            .context(a, &c.id, &q.id, "Be brief.", 1000)
            .unwrap();
        assert_eq!(
            ctx.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            vec!["Be brief.", "question"],
            "the context stops at the question"
        );
        let (st, changed) = s
            .server()
            .update_settings(
                a,
                &SettingsUpdate {
                    assistant_personality: Some(Some("pirate".into())),
                    voice_speed: Some(Some(1.5)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(changed);
        assert_eq!(st.assistant_personality.as_deref(), Some("pirate"));
        let (st2, changed) = s
            .server()
            .update_settings(
                a,
                &SettingsUpdate {
                    voice_speed: Some(None),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(changed);
        assert_eq!(st2.voice_speed, None);
        assert_eq!(st2.assistant_personality.as_deref(), Some("pirate"));
        assert_eq!(s.server().settings(a).unwrap(), st2);
    }
}
