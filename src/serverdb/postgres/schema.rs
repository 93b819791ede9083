//! The PostgreSQL schema: the same tables as the SQLite store's (version 5
//! there), in PostgreSQL's types (`uuid`, `bytea`, `boolean`, `bigint`
//! milliseconds), with full-text search on a generated `tsvector` and a GIN
//! index. Versioned in `pichat_meta` (`schema_version`); created or
//! migrated under an advisory lock, so servers starting together do it once.
//!
//! A database that has tables of ours but no `pichat_meta`, or a newer
//! version, is refused unchanged.

use deadpool_postgres::GenericClient;

use super::{pg_error, server_error};
use crate::store::{Result, StoreError};

/// The schema version this binary writes.
pub const VERSION: i64 = 1;

/// The advisory lock key of schema changes and of the migration (`'pcsv'`).
pub const SCHEMA_LOCK: i64 = 0x7063_7376;

/// Every table of ours, in the order a fresh copy fills them.
pub const TABLES: &[&str] = &[
    "srv_users",
    "srv_tokens",
    "srv_sessions",
    "srv_settings",
    "srv_conversations",
    "srv_messages",
    "srv_rate",
];

/// Version 1.
///
/// - `srv_users.rev` is the user's revision counter; every change takes
///   the next value in its transaction (the row stays locked to the
///   commit, so one user's changes commit in rev order).
/// - Conversation counters (`message_count`, by origin, times) are kept by
///   the code that adds a message, in the same transaction (SQLite: a
///   trigger).
/// - `srv_rate`: the per-user rate-limit buckets every server shares
///   (UNLOGGED: losing them in a crash only refills them).
const V1: &str = r#"
CREATE TABLE srv_users (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    rev        bigint NOT NULL DEFAULT 0
);

CREATE TABLE srv_tokens (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES srv_users (id),
    device       text,
    hash         bytea NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at   bigint NOT NULL,
    last_used_at bigint,
    revoked_at   bigint
);

CREATE TABLE srv_sessions (
    id         bytea PRIMARY KEY CHECK (length(id) = 32),
    token_id   bigint NOT NULL REFERENCES srv_tokens (id),
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX srv_sessions_by_token ON srv_sessions (token_id, created_at);

CREATE TABLE srv_settings (
    user_id               bigint PRIMARY KEY REFERENCES srv_users (id),
    selected_model        text,
    voice_gender          text,
    voice_accent          text,
    voice_speed           double precision,
    assistant_personality text,
    rev                   bigint NOT NULL
);

CREATE TABLE srv_conversations (
    id              uuid PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES srv_users (id),
    title           text NOT NULL,
    model_id        text,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    last_message_at bigint,
    activity_at     bigint NOT NULL,
    message_count   bigint NOT NULL DEFAULT 0,
    archived        boolean NOT NULL DEFAULT false,
    deleted         boolean NOT NULL DEFAULT false,
    created_rev     bigint NOT NULL,
    rev             bigint NOT NULL,
    voice_messages  bigint NOT NULL DEFAULT 0,
    web_messages    bigint NOT NULL DEFAULT 0,
    api_messages    bigint NOT NULL DEFAULT 0
);
CREATE INDEX srv_conversations_by_activity
    ON srv_conversations (user_id, deleted, activity_at DESC, id DESC);
CREATE INDEX srv_conversations_by_archived_activity
    ON srv_conversations (user_id, deleted, archived, activity_at DESC, id DESC);
CREATE UNIQUE INDEX srv_conversations_by_rev ON srv_conversations (user_id, rev);

CREATE TABLE srv_messages (
    seq              bigserial PRIMARY KEY,
    id               uuid NOT NULL UNIQUE,
    conversation_id  uuid NOT NULL REFERENCES srv_conversations (id),
    user_id          bigint NOT NULL,
    role             text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content          text NOT NULL,
    created_at       bigint NOT NULL,
    model_id         text,
    tokens_used      bigint,
    response_time_ms bigint,
    is_audio         boolean NOT NULL DEFAULT false,
    origin           text NOT NULL CHECK (origin IN ('web', 'voice', 'api')),
    reply_to         uuid,
    rev              bigint NOT NULL,
    tsv              tsvector GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED
);
CREATE INDEX srv_messages_by_conversation ON srv_messages (conversation_id, created_at, seq);
CREATE UNIQUE INDEX srv_messages_by_rev ON srv_messages (user_id, rev);
CREATE INDEX srv_messages_by_reply ON srv_messages (reply_to) WHERE reply_to IS NOT NULL;
CREATE INDEX srv_messages_fts ON srv_messages USING gin (tsv);

CREATE UNLOGGED TABLE srv_rate (
    user_id bigint NOT NULL,
    what    text NOT NULL,
    tokens  double precision NOT NULL,
    at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, what)
);
"#;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version of the database, `None` when it has no pichat schema.
pub async fn version(client: &impl GenericClient) -> Result<Option<i64>> {
    let has_meta: bool = client
        .query_one("SELECT to_regclass('pichat_meta') IS NOT NULL", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if !has_meta {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT value FROM pichat_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(pg_error)?;
    match row {
        None => Ok(Some(0)),
        Some(r) => {
            let v: String = r.get(0);
            v.parse()
                .map(Some)
                .map_err(|_| StoreError::Postgres(format!("pichat_meta: schema_version {v:?}")))
        }
    }
}

/// Creates or migrates the schema (see the module docs).
pub async fn ensure(client: &mut deadpool_postgres::Client, server: &str) -> Result<()> {
    if version(client).await? == Some(VERSION) {
        return Ok(());
    }
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(pg_error)?;
    let found = version(&tx).await?;
    let from = match found {
        Some(v) if v > VERSION => {
            return Err(server_error(
                server,
                format!(
                    "its pichat schema is version {v}, newer than this pichat supports ({VERSION}); upgrade pichat — nothing was changed"
                ),
            ));
        }
        Some(v) => v,
        None => {
            // No pichat_meta: a database of ours must not already have our tables.
            for t in TABLES {
                let exists: bool = tx
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[t])
                    .await
                    .map_err(pg_error)?
                    .get(0);
                if exists {
                    return Err(server_error(
                        server,
                        format!(
                            "it has a table {t} but no pichat_meta: not pichat's; nothing was changed — use an empty database"
                        ),
                    ));
                }
            }
            tx.batch_execute(
                "CREATE TABLE pichat_meta (key text PRIMARY KEY, value text NOT NULL);
                 INSERT INTO pichat_meta VALUES ('kind', 'server'), ('schema_version', '0');",
            )
            .await
            .map_err(pg_error)?;
            0
        }
    };
    for sql in &MIGRATIONS[from as usize..] {
        tx.batch_execute(sql).await.map_err(pg_error)?;
    }
    tx.execute(
        "UPDATE pichat_meta SET value = $1 WHERE key = 'schema_version'",
        &[&VERSION.to_string()],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}
