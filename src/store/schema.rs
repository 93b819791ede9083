//! Migrations by `PRAGMA user_version`, and the file's kind by `PRAGMA
//! application_id`.
//!
//! Each kind of database (the device's history, the chat server's store)
//! has its own list of steps ([`Schema::steps`]: `steps[i]` takes a file
//! from version `i` to `i + 1`). Versions 1 to 4 are the same for both:
//! before the split one schema served both, so every file of those versions
//! carries both kinds' tables, one set empty. Step 5 of each kind drops the
//! other kind's tables (refusing, unchanged, a file whose other tables hold
//! data and whose own are empty: it is the other kind) and stamps the
//! kind's `application_id`; from then on each list goes its own way.
//!
//! A file is checked before anything is written ([`Schema::check`]): not
//! SQLite, another program's database (tables but no pichat version), the
//! other kind, or a version newer than this binary's: refused unchanged.

use std::path::Path;

use rusqlite::Connection;

use super::{Result, StoreError};

/// The last version both kinds share (files made before the split).
pub const LEGACY_VERSION: i64 = 4;

/// What a file's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: i64,
    pub application_id: i32,
    /// Tables in the file (0: a new, empty file).
    pub tables: i64,
}

impl Header {
    /// Reads the header (fails on a file that is not SQLite, before any write).
    pub fn read(conn: &Connection) -> rusqlite::Result<Header> {
        Ok(Header {
            version: conn.query_row("PRAGMA user_version", [], |r| r.get(0))?,
            application_id: conn.query_row("PRAGMA application_id", [], |r| r.get(0))?,
            tables: conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.version == 0 && self.tables == 0
    }
}

/// One migration step.
pub enum Step {
    Sql(&'static str),
    /// Code, for a step that must look at the data first.
    Code(fn(&Connection, &Path) -> Result<()>),
}

impl Step {
    pub(super) fn run(&self, conn: &Connection, path: &Path) -> Result<()> {
        match self {
            Step::Sql(sql) => Ok(conn.execute_batch(sql)?),
            Step::Code(f) => f(conn, path),
        }
    }
}

/// A kind of database and its migrations.
pub struct Schema {
    /// "history" or "server", for messages.
    pub name: &'static str,
    /// `PRAGMA application_id` of this kind (set by its first own step).
    pub application_id: i32,
    /// Where the user points pichat at such a file, for messages.
    pub setting: &'static str,
    pub steps: &'static [Step],
}

/// The `application_id`s of pichat's kinds, and their names.
pub const KINDS: &[(i32, &str)] = &[
    (HISTORY_APPLICATION_ID, "history"),
    (SERVER_APPLICATION_ID, "server"),
];
/// "PCHH": a device's history.
pub const HISTORY_APPLICATION_ID: i32 = 0x5043_4848;
/// "PCHS": a chat server's store.
pub const SERVER_APPLICATION_ID: i32 = 0x5043_4853;

impl Schema {
    /// The version this binary writes.
    pub const fn version(&self) -> i64 {
        self.steps.len() as i64
    }

    /// Refuses, before anything is written, a file this kind must not touch.
    pub fn check(&self, path: &Path, h: &Header) -> Result<()> {
        let path_buf = || path.to_path_buf();
        if h.application_id != 0 && h.application_id != self.application_id {
            return Err(match KINDS.iter().find(|(id, _)| *id == h.application_id) {
                Some((_, found)) => StoreError::WrongKind {
                    path: path_buf(),
                    found,
                    expected: self.name,
                    setting: self.setting,
                },
                None => StoreError::NotADatabase { path: path_buf() },
            });
        }
        if h.version == 0 && h.tables > 0 {
            // Tables but no pichat version: another program's database.
            return Err(StoreError::NotADatabase { path: path_buf() });
        }
        if h.version > self.version() {
            return Err(StoreError::TooNew {
                path: path_buf(),
                found: h.version,
                supported: self.version(),
            });
        }
        Ok(())
    }
}

/// Rows in a table (for the kind steps, which look before they drop).
pub(crate) fn rows(conn: &Connection, table: &str) -> Result<i64> {
    Ok(conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
}

// The legacy steps, shared by both kinds (versions 1 to 4): each kind's
// list starts with them.

/// Version 1: conversations, messages, their full-text index, and the state
/// the sync needs (server revs, pending flags, tombstones, key/value state).
///
/// Times are INTEGER milliseconds since the Unix epoch, UTC. Ids are UUIDs
/// stored as 16-byte BLOBs.
/// `activity_at` is the conversation's last message time, or its creation
/// time when it has none: the order of the conversation list.
/// `pending` marks rows changed locally and not yet acknowledged by the server.
/// Messages are only ever appended, so the sync finds pending messages by a
/// `seq` high-water mark in `sync_state` (no index on `pending` to maintain
/// on every insert); conversations, few and mutable, have a partial index.
pub(crate) const V1: &str = r#"
CREATE TABLE conversations (
    id              BLOB PRIMARY KEY,
    title           TEXT NOT NULL,
    model_id        TEXT,
    user_id         TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_message_at INTEGER,
    activity_at     INTEGER NOT NULL,
    message_count   INTEGER NOT NULL DEFAULT 0,
    archived        INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1)),
    metadata        TEXT,
    rev             INTEGER NOT NULL DEFAULT 0,
    pending         INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX conversations_by_activity ON conversations (activity_at DESC, id DESC);
CREATE INDEX conversations_by_archived_activity ON conversations (archived, activity_at DESC, id DESC);
CREATE INDEX conversations_pending ON conversations (id) WHERE pending = 1;

CREATE TABLE messages (
    seq              INTEGER PRIMARY KEY,
    id               BLOB NOT NULL UNIQUE,
    conversation_id  BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role             TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    model_id         TEXT,
    tokens_used      INTEGER,
    response_time_ms INTEGER,
    is_audio         INTEGER NOT NULL DEFAULT 0 CHECK (is_audio IN (0, 1)),
    origin           TEXT NOT NULL CHECK (origin IN ('web', 'voice', 'api')),
    reply_to         BLOB,
    metadata         TEXT,
    rev              INTEGER NOT NULL DEFAULT 0,
    pending          INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at);

-- Counters and times of the conversation follow its messages.
CREATE TRIGGER messages_count_insert AFTER INSERT ON messages BEGIN
    UPDATE conversations SET
        message_count = message_count + 1,
        last_message_at = max(coalesce(last_message_at, new.created_at), new.created_at),
        activity_at = max(activity_at, new.created_at),
        updated_at = max(updated_at, new.created_at)
    WHERE id = new.conversation_id;
END;
CREATE TRIGGER messages_count_delete AFTER DELETE ON messages BEGIN
    UPDATE conversations SET
        message_count = message_count - 1,
        last_message_at = (SELECT max(created_at) FROM messages WHERE conversation_id = old.conversation_id),
        activity_at = coalesce((SELECT max(created_at) FROM messages WHERE conversation_id = old.conversation_id), created_at)
    WHERE id = old.conversation_id;
END;

-- Full-text index over message content, kept in step by triggers.
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    content,
    content = 'messages',
    content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 2'
);
-- Buffer up to 32 MiB of index data per transaction before writing a
-- segment: fewer, larger segments on bulk loads (small turns never get near).
INSERT INTO messages_fts (messages_fts, rank) VALUES ('hashsize', 33554432);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.seq, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.seq, new.content);
END;

-- Local deletes the server has not acknowledged yet, and server deletes seen
-- (so a late upsert from an old page cannot bring a row back).
CREATE TABLE tombstones (
    id         BLOB PRIMARY KEY,
    entity     TEXT NOT NULL CHECK (entity IN ('conversation', 'message')),
    deleted_at INTEGER NOT NULL,
    rev        INTEGER NOT NULL DEFAULT 0,
    pending    INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;

-- Sync cursor, last error, last success...
CREATE TABLE sync_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// Version 2: the chat server's tables (`pichat serve`; a device's history
/// database carries them empty). See `history/server.rs`.
///
/// - `srv_users` holds each user's revision counter (`rev`), the sync cursor
///   of the protocol: every change of that user takes the next value.
/// - `srv_tokens` keeps only the SHA-256 of each device token.
/// - `srv_conversations` keeps deleted conversations as tombstones
///   (`deleted = 1`, a new `rev`); their messages are removed.
///   `created_rev` lets a sync send a conversation ahead of its messages.
/// - Every row carries the `rev` of its last change, unique per user, so
///   `(user_id, rev)` indexes give the sync feed in order.
/// - `srv_messages_fts`: full-text index like V1's, searched per user.
pub(crate) const V2: &str = r#"
CREATE TABLE srv_users (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    rev        INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE srv_tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES srv_users (id),
    device       TEXT,
    hash         BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE srv_settings (
    user_id               INTEGER PRIMARY KEY REFERENCES srv_users (id),
    selected_model        TEXT,
    voice_gender          TEXT,
    voice_accent          TEXT,
    voice_speed           REAL,
    assistant_personality TEXT,
    rev                   INTEGER NOT NULL
);

CREATE TABLE srv_conversations (
    id              BLOB PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES srv_users (id),
    title           TEXT NOT NULL,
    model_id        TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_message_at INTEGER,
    activity_at     INTEGER NOT NULL,
    message_count   INTEGER NOT NULL DEFAULT 0,
    archived        INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1)),
    deleted         INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    created_rev     INTEGER NOT NULL,
    rev             INTEGER NOT NULL
);
CREATE INDEX srv_conversations_by_activity
    ON srv_conversations (user_id, deleted, activity_at DESC, id DESC);
CREATE INDEX srv_conversations_by_archived_activity
    ON srv_conversations (user_id, deleted, archived, activity_at DESC, id DESC);
CREATE UNIQUE INDEX srv_conversations_by_rev ON srv_conversations (user_id, rev);

CREATE TABLE srv_messages (
    seq              INTEGER PRIMARY KEY,
    id               BLOB NOT NULL UNIQUE,
    conversation_id  BLOB NOT NULL REFERENCES srv_conversations (id),
    user_id          INTEGER NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    model_id         TEXT,
    tokens_used      INTEGER,
    response_time_ms INTEGER,
    is_audio         INTEGER NOT NULL DEFAULT 0 CHECK (is_audio IN (0, 1)),
    origin           TEXT NOT NULL CHECK (origin IN ('web', 'voice', 'api')),
    reply_to         BLOB,
    rev              INTEGER NOT NULL
);
CREATE INDEX srv_messages_by_conversation ON srv_messages (conversation_id, created_at, seq);
CREATE UNIQUE INDEX srv_messages_by_rev ON srv_messages (user_id, rev);
CREATE INDEX srv_messages_by_reply ON srv_messages (reply_to) WHERE reply_to IS NOT NULL;

CREATE TRIGGER srv_messages_count_insert AFTER INSERT ON srv_messages BEGIN
    UPDATE srv_conversations SET
        message_count = message_count + 1,
        last_message_at = max(coalesce(last_message_at, new.created_at), new.created_at),
        activity_at = max(activity_at, new.created_at)
    WHERE id = new.conversation_id;
END;

CREATE VIRTUAL TABLE srv_messages_fts USING fts5 (
    content,
    content = 'srv_messages',
    content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER srv_messages_fts_insert AFTER INSERT ON srv_messages BEGIN
    INSERT INTO srv_messages_fts (rowid, content) VALUES (new.seq, new.content);
END;
CREATE TRIGGER srv_messages_fts_delete AFTER DELETE ON srv_messages BEGIN
    INSERT INTO srv_messages_fts (srv_messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
END;
"#;

/// Version 3: which fields of a conversation were changed here and not yet
/// pushed (bits: 1 title, 2 archived, 4 model), so that a sync merges field
/// by field: a rename on the web and an archive on the device both hold.
pub(crate) const V3: &str = r#"
ALTER TABLE conversations ADD COLUMN pending_fields INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET pending_fields = 7 WHERE pending = 1;
"#;

/// Version 4 (the chat server's web app): signed-in browser sessions
/// (`srv_sessions`: the SHA-256 of each session cookie, the token it was
/// made from, its expiry), and per-conversation message counts by origin
/// (`voice_messages`, `web_messages`, `api_messages`) for the list's marks,
/// kept by the same trigger that keeps `message_count`.
pub(crate) const V4: &str = r#"
CREATE TABLE srv_sessions (
    id           BLOB PRIMARY KEY CHECK (length(id) = 32),
    token_id     INTEGER NOT NULL REFERENCES srv_tokens (id),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX srv_sessions_by_token ON srv_sessions (token_id, created_at);
ALTER TABLE srv_conversations ADD COLUMN voice_messages INTEGER NOT NULL DEFAULT 0;
ALTER TABLE srv_conversations ADD COLUMN web_messages INTEGER NOT NULL DEFAULT 0;
ALTER TABLE srv_conversations ADD COLUMN api_messages INTEGER NOT NULL DEFAULT 0;
UPDATE srv_conversations SET
    voice_messages = (SELECT count(*) FROM srv_messages m WHERE m.conversation_id = srv_conversations.id AND m.origin = 'voice'),
    web_messages = (SELECT count(*) FROM srv_messages m WHERE m.conversation_id = srv_conversations.id AND m.origin = 'web'),
    api_messages = (SELECT count(*) FROM srv_messages m WHERE m.conversation_id = srv_conversations.id AND m.origin = 'api');
DROP TRIGGER srv_messages_count_insert;
CREATE TRIGGER srv_messages_count_insert AFTER INSERT ON srv_messages BEGIN
    UPDATE srv_conversations SET
        message_count = message_count + 1,
        voice_messages = voice_messages + (new.origin = 'voice'),
        web_messages = web_messages + (new.origin = 'web'),
        api_messages = api_messages + (new.origin = 'api'),
        last_message_at = max(coalesce(last_message_at, new.created_at), new.created_at),
        activity_at = max(activity_at, new.created_at)
    WHERE id = new.conversation_id;
END;
"#;
