//! The history schema and its migrations, versioned by `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] takes the schema from version N to N+1. They
//! run at open, all in one transaction; a database newer than the last entry
//! is refused without being touched.

/// `MIGRATIONS[i]` takes the database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// Version 3: which fields of a conversation were changed here and not yet
/// pushed (bits: 1 title, 2 archived, 4 model), so that a sync merges field
/// by field: a rename on the web and an archive on the device both hold.
const V3: &str = r#"
ALTER TABLE conversations ADD COLUMN pending_fields INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET pending_fields = 7 WHERE pending = 1;
"#;

/// Version 4 (the chat server's web app): signed-in browser sessions
/// (`srv_sessions`: the SHA-256 of each session cookie, the token it was
/// made from, its expiry), and per-conversation message counts by origin
/// (`voice_messages`, `web_messages`, `api_messages`) for the list's marks,
/// kept by the same trigger that keeps `message_count`.
const V4: &str = r#"
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

/// The schema version this binary writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

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
const V1: &str = r#"
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
const V2: &str = r#"
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
