//! `pichat server migrate --to postgres://…`: copies a SQLite server store
//! into PostgreSQL.
//!
//! - **Refuses a foreign target**: a database that holds anything but
//!   pichat's tables, or pichat data that did not come from this source
//!   (its `pichat_meta` `migration` mark names the source by a fingerprint
//!   of its first user), is left unchanged.
//! - **Resumable and idempotent**: rows are upserted in batches, each batch
//!   its own transaction; messages (append-only) resume after the highest
//!   `seq` already copied; running it again copies what changed since
//!   (stop the old server first for the final run). Ids, token ids, user
//!   ids and message `seq`s are kept, so tokens, sessions and every
//!   client's sync cursor go on as they were.
//! - **Verified**: at the end the row counts of every table and, per user,
//!   the revision and the count, sum and maximum of the revs of its
//!   conversations and messages are compared; only then is the mark set
//!   to `done`.
//!
//! The source is read in one SQLite read transaction (one snapshot, a
//! server may keep writing meanwhile) on a thread of its own; batches go
//! through a small queue to the PostgreSQL side.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::OptionalExtension;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use super::StoreOptions;
use super::postgres::{PgStore, schema};
use super::sqlite::Conn;
use crate::store::{OpenOptions, StoreError};

/// Rows per batch (one transaction each on the target).
pub const DEFAULT_BATCH: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{target}: not an empty database ({why}); nothing was changed — migrate into an empty database (or one that an earlier `pichat server migrate` from this file filled)"
    )]
    ForeignTarget { target: String, why: String },
    #[error(
        "the copy does not match its source ({0}); nothing was marked done — run the migration again (the server must not write meanwhile)"
    )]
    Mismatch(String),
}

/// Progress reports, for the CLI.
pub type Progress<'a> = &'a mut (dyn FnMut(&str) + Send);

/// What a migration copied.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub users: u64,
    pub tokens: u64,
    pub sessions: u64,
    pub settings: u64,
    pub conversations: u64,
    /// Messages copied by this run (earlier runs' are not counted again).
    pub messages_copied: u64,
    /// Messages in the target at the end.
    pub messages: u64,
    /// This run continued an earlier one.
    pub resumed: bool,
    pub seconds: f64,
    /// Messages copied per second by this run.
    pub messages_per_second: f64,
}

/// A batch of source rows, as the target's column arrays.
enum Batch {
    Users(Vec<(i64, String, i64, i64)>),
    Tokens(Vec<TokenRow>),
    Sessions(Vec<(Vec<u8>, i64, i64, i64)>),
    Settings(Vec<SettingsRow>),
    Conversations(Vec<ConvRow>),
    Messages(Vec<MsgRow>),
}

type TokenRow = (
    i64,
    i64,
    Option<String>,
    Vec<u8>,
    i64,
    Option<i64>,
    Option<i64>,
);

type SettingsRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<String>,
    i64,
);

struct ConvRow {
    id: uuid::Uuid,
    user_id: i64,
    title: String,
    model_id: Option<String>,
    times: [i64; 3],
    last_message_at: Option<i64>,
    counts: [i64; 4],
    archived: bool,
    deleted: bool,
    created_rev: i64,
    rev: i64,
}

struct MsgRow {
    seq: i64,
    id: uuid::Uuid,
    conversation_id: uuid::Uuid,
    user_id: i64,
    role: String,
    content: String,
    created_at: i64,
    model_id: Option<String>,
    tokens_used: Option<i64>,
    response_time_ms: Option<i64>,
    is_audio: bool,
    origin: String,
    reply_to: Option<uuid::Uuid>,
    rev: i64,
}

/// The source's fingerprint: its first user (stable while it lives).
fn fingerprint(db: &Conn) -> Result<String, StoreError> {
    let first: Option<(i64, String, i64)> = db
        .conn
        .query_row(
            "SELECT id, name, created_at FROM srv_users ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let mut h = Sha256::new();
    if let Some((id, name, at)) = first {
        h.update(format!("{id}\n{name}\n{at}\n").as_bytes());
    }
    Ok(h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// What the source held, in the snapshot it was read in.
type SourceFigures = (Vec<i64>, Figures);

/// Reads the source in batches (after `messages_after` for messages), and
/// its figures for the verification, all in one snapshot.
fn read_source(
    db: &mut Conn,
    batch: usize,
    messages_after: i64,
    tx: &mpsc::Sender<Batch>,
) -> Result<Option<SourceFigures>, StoreError> {
    let t = db.conn.transaction()?;
    let send = |b: Batch| tx.blocking_send(b).is_ok();
    macro_rules! table {
        ($sql:expr, $params:expr, $row:expr, $wrap:expr) => {{
            let mut stmt = t.prepare($sql)?;
            let mut rows = stmt.query($params)?;
            let mut buf = Vec::with_capacity(batch);
            while let Some(r) = rows.next()? {
                buf.push($row(r)?);
                if buf.len() == batch && !send($wrap(std::mem::take(&mut buf))) {
                    return Ok(None);
                }
            }
            if !buf.is_empty() && !send($wrap(buf)) {
                return Ok(None);
            }
        }};
    }
    table!(
        "SELECT id, name, created_at, rev FROM srv_users ORDER BY id",
        [],
        |r: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        },
        Batch::Users
    );
    table!(
        "SELECT id, user_id, device, hash, created_at, last_used_at, revoked_at FROM srv_tokens ORDER BY id",
        [],
        |r: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
        Batch::Tokens
    );
    table!(
        "SELECT id, token_id, created_at, expires_at FROM srv_sessions ORDER BY id",
        [],
        |r: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        },
        Batch::Sessions
    );
    table!(
        "SELECT user_id, selected_model, voice_gender, voice_accent, voice_speed, assistant_personality, rev
         FROM srv_settings ORDER BY user_id",
        [],
        |r: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
        Batch::Settings
    );
    table!(
        "SELECT id, user_id, title, model_id, created_at, updated_at, activity_at, last_message_at,
                message_count, voice_messages, web_messages, api_messages, archived, deleted,
                created_rev, rev
         FROM srv_conversations ORDER BY id",
        [],
        |r: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
            Ok(ConvRow {
                id: r.get(0)?,
                user_id: r.get(1)?,
                title: r.get(2)?,
                model_id: r.get(3)?,
                times: [r.get(4)?, r.get(5)?, r.get(6)?],
                last_message_at: r.get(7)?,
                counts: [r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?],
                archived: r.get(12)?,
                deleted: r.get(13)?,
                created_rev: r.get(14)?,
                rev: r.get(15)?,
            })
        },
        Batch::Conversations
    );
    table!(
        "SELECT seq, id, conversation_id, user_id, role, content, created_at, model_id, tokens_used,
                response_time_ms, is_audio, origin, reply_to, rev
         FROM srv_messages WHERE seq > ?1 ORDER BY seq",
        [messages_after],
        |r: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
            Ok(MsgRow {
                seq: r.get(0)?,
                id: r.get(1)?,
                conversation_id: r.get(2)?,
                user_id: r.get(3)?,
                role: r.get(4)?,
                content: r.get(5)?,
                created_at: r.get(6)?,
                model_id: r.get(7)?,
                tokens_used: r.get(8)?,
                response_time_ms: r.get(9)?,
                is_audio: r.get(10)?,
                origin: r.get(11)?,
                reply_to: r.get(12)?,
                rev: r.get(13)?,
            })
        },
        Batch::Messages
    );
    let counts: Vec<i64> = t
        .prepare(COUNTS_SQL)?
        .query_row([], |r| (0..6).map(|i| r.get(i)).collect())?;
    let figures: Figures = t
        .prepare(FIGURES_SQL)?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    drop(t);
    Ok(Some((counts, figures)))
}

/// What a database holds, for the refusal of a foreign target.
async fn check_target(
    c: &deadpool_postgres::Client,
    target: &str,
    fp: &str,
) -> Result<bool, MigrateError> {
    let foreign = |why: String| MigrateError::ForeignTarget {
        target: target.to_string(),
        why,
    };
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() ORDER BY 1",
            &[],
        )
        .await
        .map_err(IntoStore::into_store)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ours = |t: &str| t == "pichat_meta" || schema::TABLES.contains(&t);
    if let Some(other) = tables.iter().find(|t| !ours(t)) {
        return Err(foreign(format!(
            "it has a table {other} that is not pichat's"
        )));
    }
    if tables.is_empty() {
        return Ok(false);
    }
    if !tables.iter().any(|t| t == "pichat_meta") {
        return Err(foreign(
            "it has pichat's table names but no pichat_meta".into(),
        ));
    }
    let mark: Option<String> = c
        .query_opt("SELECT value FROM pichat_meta WHERE key = 'migration'", &[])
        .await
        .map_err(IntoStore::into_store)?
        .map(|r| r.get(0));
    match mark {
        Some(m) if m.split(' ').next() == Some(fp) => Ok(true),
        Some(_) => Err(foreign(
            "it holds a migration from another SQLite database".into(),
        )),
        None => {
            let users: i64 = c
                .query_one("SELECT count(*) FROM srv_users", &[])
                .await
                .map_err(IntoStore::into_store)?
                .get(0);
            if users > 0 {
                Err(foreign(format!(
                    "a pichat server database already in use ({users} user(s))"
                )))
            } else {
                Ok(false)
            }
        }
    }
}

trait IntoStore {
    fn into_store(self) -> StoreError;
}

impl IntoStore for tokio_postgres::Error {
    fn into_store(self) -> StoreError {
        super::postgres::pg_error(self)
    }
}

async fn exec(
    c: &impl deadpool_postgres::GenericClient,
    sql: &str,
    p: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    c.execute(sql, p).await.map_err(IntoStore::into_store)
}

/// Writes one batch in its own transaction; returns the rows in it.
async fn write(
    c: &mut deadpool_postgres::Client,
    b: Batch,
) -> Result<(&'static str, u64), StoreError> {
    let tx = c.transaction().await.map_err(IntoStore::into_store)?;
    let r = match b {
        Batch::Users(rows) => {
            let n = rows.len() as u64;
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let names: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
            let at: Vec<i64> = rows.iter().map(|r| r.2).collect();
            let revs: Vec<i64> = rows.iter().map(|r| r.3).collect();
            exec(
                &tx,
                "INSERT INTO srv_users (id, name, created_at, rev)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, rev = excluded.rev",
                &[&ids, &names, &at, &revs],
            )
            .await?;
            ("users", n)
        }
        Batch::Tokens(rows) => {
            let n = rows.len() as u64;
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let users: Vec<i64> = rows.iter().map(|r| r.1).collect();
            let devices: Vec<Option<&str>> = rows.iter().map(|r| r.2.as_deref()).collect();
            let hashes: Vec<&[u8]> = rows.iter().map(|r| r.3.as_slice()).collect();
            let created: Vec<i64> = rows.iter().map(|r| r.4).collect();
            let used: Vec<Option<i64>> = rows.iter().map(|r| r.5).collect();
            let revoked: Vec<Option<i64>> = rows.iter().map(|r| r.6).collect();
            exec(
                &tx,
                "INSERT INTO srv_tokens (id, user_id, device, hash, created_at, last_used_at, revoked_at)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[],
                                      $5::bigint[], $6::bigint[], $7::bigint[])
                 ON CONFLICT (id) DO UPDATE SET last_used_at = excluded.last_used_at,
                                                revoked_at = excluded.revoked_at",
                &[&ids, &users, &devices, &hashes, &created, &used, &revoked],
            )
            .await?;
            ("tokens", n)
        }
        Batch::Sessions(rows) => {
            let n = rows.len() as u64;
            let ids: Vec<&[u8]> = rows.iter().map(|r| r.0.as_slice()).collect();
            let tokens: Vec<i64> = rows.iter().map(|r| r.1).collect();
            let created: Vec<i64> = rows.iter().map(|r| r.2).collect();
            let expires: Vec<i64> = rows.iter().map(|r| r.3).collect();
            exec(
                &tx,
                "INSERT INTO srv_sessions (id, token_id, created_at, expires_at)
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::bigint[])
                 ON CONFLICT (id) DO NOTHING",
                &[&ids, &tokens, &created, &expires],
            )
            .await?;
            ("sessions", n)
        }
        Batch::Settings(rows) => {
            let n = rows.len() as u64;
            for r in &rows {
                exec(
                    &tx,
                    "INSERT INTO srv_settings (user_id, selected_model, voice_gender, voice_accent,
                         voice_speed, assistant_personality, rev)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (user_id) DO UPDATE SET
                         selected_model = excluded.selected_model, voice_gender = excluded.voice_gender,
                         voice_accent = excluded.voice_accent, voice_speed = excluded.voice_speed,
                         assistant_personality = excluded.assistant_personality, rev = excluded.rev",
                    &[&r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6],
                )
                .await?;
            }
            ("settings", n)
        }
        Batch::Conversations(rows) => {
            let n = rows.len() as u64;
            let col = |f: &dyn Fn(&ConvRow) -> i64| -> Vec<i64> { rows.iter().map(f).collect() };
            let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
            let titles: Vec<&str> = rows.iter().map(|r| r.title.as_str()).collect();
            let models: Vec<Option<&str>> = rows.iter().map(|r| r.model_id.as_deref()).collect();
            let last: Vec<Option<i64>> = rows.iter().map(|r| r.last_message_at).collect();
            let archived: Vec<bool> = rows.iter().map(|r| r.archived).collect();
            let deleted: Vec<bool> = rows.iter().map(|r| r.deleted).collect();
            exec(
                &tx,
                "INSERT INTO srv_conversations (id, user_id, title, model_id, created_at, updated_at,
                     activity_at, last_message_at, message_count, voice_messages, web_messages,
                     api_messages, archived, deleted, created_rev, rev)
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                     $11::bigint[], $12::bigint[], $13::bool[], $14::bool[], $15::bigint[], $16::bigint[])
                 ON CONFLICT (id) DO UPDATE SET title = excluded.title, model_id = excluded.model_id,
                     updated_at = excluded.updated_at, activity_at = excluded.activity_at,
                     last_message_at = excluded.last_message_at, message_count = excluded.message_count,
                     voice_messages = excluded.voice_messages, web_messages = excluded.web_messages,
                     api_messages = excluded.api_messages, archived = excluded.archived,
                     deleted = excluded.deleted, rev = excluded.rev",
                &[
                    &ids,
                    &col(&|r| r.user_id),
                    &titles,
                    &models,
                    &col(&|r| r.times[0]),
                    &col(&|r| r.times[1]),
                    &col(&|r| r.times[2]),
                    &last,
                    &col(&|r| r.counts[0]),
                    &col(&|r| r.counts[1]),
                    &col(&|r| r.counts[2]),
                    &col(&|r| r.counts[3]),
                    &archived,
                    &deleted,
                    &col(&|r| r.created_rev),
                    &col(&|r| r.rev),
                ],
            )
            .await?;
            ("conversations", n)
        }
        Batch::Messages(rows) => {
            let n = rows.len() as u64;
            let i64s = |f: &dyn Fn(&MsgRow) -> i64| -> Vec<i64> { rows.iter().map(f).collect() };
            let opt = |f: &dyn Fn(&MsgRow) -> Option<i64>| -> Vec<Option<i64>> {
                rows.iter().map(f).collect()
            };
            let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
            let convs: Vec<uuid::Uuid> = rows.iter().map(|r| r.conversation_id).collect();
            let roles: Vec<&str> = rows.iter().map(|r| r.role.as_str()).collect();
            let contents: Vec<&str> = rows.iter().map(|r| r.content.as_str()).collect();
            let models: Vec<Option<&str>> = rows.iter().map(|r| r.model_id.as_deref()).collect();
            let audio: Vec<bool> = rows.iter().map(|r| r.is_audio).collect();
            let origins: Vec<&str> = rows.iter().map(|r| r.origin.as_str()).collect();
            let replies: Vec<Option<uuid::Uuid>> = rows.iter().map(|r| r.reply_to).collect();
            exec(
                &tx,
                "INSERT INTO srv_messages (seq, id, conversation_id, user_id, role, content, created_at,
                     model_id, tokens_used, response_time_ms, is_audio, origin, reply_to, rev)
                 SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[],
                     $6::text[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::bool[],
                     $12::text[], $13::uuid[], $14::bigint[])
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &i64s(&|r| r.seq),
                    &ids,
                    &convs,
                    &i64s(&|r| r.user_id),
                    &roles,
                    &contents,
                    &i64s(&|r| r.created_at),
                    &models,
                    &opt(&|r| r.tokens_used),
                    &opt(&|r| r.response_time_ms),
                    &audio,
                    &origins,
                    &replies,
                    &i64s(&|r| r.rev),
                ],
            )
            .await?;
            ("messages", n)
        }
    };
    tx.commit().await.map_err(IntoStore::into_store)?;
    Ok(r)
}

/// Per-user figures compared by the verification: (user, rev,
/// conversations: count, sum of revs, max rev, messages: the same).
type Figures = Vec<(i64, i64, i64, i64, i64, i64, i64, i64)>;

const FIGURES_SQL: &str = "SELECT u.id, u.rev,
        (SELECT count(*) FROM srv_conversations c WHERE c.user_id = u.id),
        (SELECT CAST(coalesce(sum(c.rev), 0) AS BIGINT) FROM srv_conversations c WHERE c.user_id = u.id),
        (SELECT coalesce(max(c.rev), 0) FROM srv_conversations c WHERE c.user_id = u.id),
        (SELECT count(*) FROM srv_messages m WHERE m.user_id = u.id),
        (SELECT CAST(coalesce(sum(m.rev), 0) AS BIGINT) FROM srv_messages m WHERE m.user_id = u.id),
        (SELECT coalesce(max(m.rev), 0) FROM srv_messages m WHERE m.user_id = u.id)
     FROM srv_users u ORDER BY u.id";

const COUNTS_SQL: &str =
    "SELECT (SELECT count(*) FROM srv_users), (SELECT count(*) FROM srv_tokens),
        (SELECT count(*) FROM srv_sessions), (SELECT count(*) FROM srv_settings),
        (SELECT count(*) FROM srv_conversations), (SELECT count(*) FROM srv_messages)";

/// Copies the SQLite store at `from` into the PostgreSQL database at `to`
/// (see the module docs).
pub async fn migrate(
    from: &Path,
    to: &str,
    batch: usize,
    progress: Progress<'_>,
) -> Result<Report, MigrateError> {
    let started = Instant::now();
    let batch = batch.clamp(1, 100_000);
    let target = super::postgres::redact(to);
    if !from.exists() {
        return Err(StoreError::CantOpen {
            path: from.to_path_buf(),
            detail: "no such file".into(),
        }
        .into());
    }
    let from = from.to_path_buf();
    // The source is opened (and migrated to this binary's schema) first.
    let mut source = tokio::task::spawn_blocking({
        let from = from.clone();
        move || {
            Conn::open(
                &from,
                &OpenOptions {
                    create: false,
                    ..OpenOptions::default()
                },
            )
        }
    })
    .await
    .map_err(|e| StoreError::Bug(e.to_string()))??;
    let fp = fingerprint(&source)?;
    // The target is checked before anything is written to it.
    let probe = PgStore::probe(to).await?;
    let resumed = {
        let c = probe.get().await.map_err(|e| StoreError::Unreachable {
            server: target.clone(),
            detail: e.to_string(),
        })?;
        check_target(&c, &target, &fp).await?
    };
    drop(probe);
    let store = PgStore::open(to, &StoreOptions::default()).await?;
    let pool = store.pool().clone();
    let mut c = pool.get().await.map_err(|e| StoreError::Unreachable {
        server: target.clone(),
        detail: e.to_string(),
    })?;
    exec(
        &c,
        "INSERT INTO pichat_meta (key, value) VALUES ('migration', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&format!("{fp} copying")],
    )
    .await?;
    let after: i64 = c
        .query_one("SELECT coalesce(max(seq), 0) FROM srv_messages", &[])
        .await
        .map_err(IntoStore::into_store)?
        .get(0);
    if resumed {
        progress(&format!(
            "resuming an earlier run: messages after seq {after} are copied, the rest is brought up to date"
        ));
    }
    let (tx, mut rx) = mpsc::channel::<Batch>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let r = read_source(&mut source, batch, after, &tx);
        (source, r)
    });
    let mut report = Report {
        resumed,
        ..Default::default()
    };
    let mut last_note = Instant::now();
    while let Some(b) = rx.recv().await {
        let (what, n) = write(&mut c, b).await?;
        match what {
            "users" => report.users += n,
            "tokens" => report.tokens += n,
            "sessions" => report.sessions += n,
            "settings" => report.settings += n,
            "conversations" => report.conversations += n,
            _ => report.messages_copied += n,
        }
        if last_note.elapsed() >= Duration::from_secs(2) {
            last_note = Instant::now();
            progress(&format!(
                "… {} conversations, {} messages copied ({:.0} s)",
                report.conversations,
                report.messages_copied,
                started.elapsed().as_secs_f64()
            ));
        }
    }
    let (source, read) = reader.await.map_err(|e| StoreError::Bug(e.to_string()))?;
    drop(source);
    let (source_counts, source_figures) =
        read?.ok_or_else(|| StoreError::Bug("the copy stopped reading".into()))?;
    // What a delete in the source removed since an earlier run goes here too.
    exec(
        &c,
        "DELETE FROM srv_messages m USING srv_conversations c
         WHERE c.id = m.conversation_id AND c.deleted",
        &[],
    )
    .await?;
    for (table, col) in [
        ("srv_users", "id"),
        ("srv_tokens", "id"),
        ("srv_messages", "seq"),
    ] {
        exec(
            &c,
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{col}'),
                               greatest((SELECT max({col}) FROM {table}), 1))"
            ),
            &[],
        )
        .await?;
    }
    progress("verifying counts and revisions…");
    let target_counts: Vec<i64> = {
        let r = c
            .query_one(COUNTS_SQL, &[])
            .await
            .map_err(IntoStore::into_store)?;
        (0..6).map(|i| r.get(i)).collect()
    };
    let target_figures: Figures = c
        .query(FIGURES_SQL, &[])
        .await
        .map_err(IntoStore::into_store)?
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get::<_, i64>(3),
                r.get(4),
                r.get(5),
                r.get::<_, i64>(6),
                r.get(7),
            )
        })
        .collect();
    if source_counts != target_counts {
        return Err(MigrateError::Mismatch(format!(
            "rows of users, tokens, sessions, settings, conversations, messages: source {source_counts:?}, copy {target_counts:?}"
        )));
    }
    if source_figures != target_figures {
        let first = source_figures
            .iter()
            .zip(&target_figures)
            .find(|(a, b)| a != b)
            .map(|(a, _)| a.0);
        return Err(MigrateError::Mismatch(format!(
            "the revisions of user {} differ",
            first.map_or("?".into(), |u| u.to_string())
        )));
    }
    report.messages = target_counts[5] as u64;
    exec(
        &c,
        "UPDATE pichat_meta SET value = $1 WHERE key = 'migration'",
        &[&format!(
            "{fp} done {} {}",
            crate::time::format(crate::time::now_ms()),
            from.display()
        )],
    )
    .await?;
    report.seconds = started.elapsed().as_secs_f64();
    report.messages_per_second = report.messages_copied as f64 / report.seconds.max(1e-9);
    Ok(report)
}
