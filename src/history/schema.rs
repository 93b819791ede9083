//! The history's schema: the device's conversations, messages, their
//! full-text index and the sync's state. Versions 1 to 4 are the legacy
//! steps both kinds share (`store::schema`); from 5 on, the history's own.

use std::path::Path;

use rusqlite::Connection;

use crate::store::schema::{self, HISTORY_APPLICATION_ID, Schema, Step, rows};
use crate::store::{Result, StoreError};

/// The history's migrations (see `store::schema`).
pub static SCHEMA: Schema = Schema {
    name: "history",
    application_id: HISTORY_APPLICATION_ID,
    setting: "history.path (or --db)",
    steps: &[
        Step::Sql(schema::V1),
        Step::Sql(schema::V2),
        Step::Sql(schema::V3),
        Step::Sql(schema::V4),
        Step::Code(v5_drop_server_tables),
    ],
};

/// The schema version this binary writes.
pub const VERSION: i64 = SCHEMA.version();

/// The chat server's tables, which a device's file carried empty before
/// version 5 (dropped with their triggers and indexes).
const SERVER_TABLES: &str = r#"
DROP TABLE srv_messages_fts;
DROP TABLE srv_sessions;
DROP TABLE srv_messages;
DROP TABLE srv_conversations;
DROP TABLE srv_settings;
DROP TABLE srv_tokens;
DROP TABLE srv_users;
"#;

/// Version 5: the device's file keeps only the history. A legacy file
/// whose server tables hold data and whose history is empty is a chat
/// server's database: refused, unchanged (the transaction rolls back).
fn v5_drop_server_tables(conn: &Connection, path: &Path) -> Result<()> {
    let server_rows = rows(conn, "srv_users")?;
    let history_rows = rows(conn, "conversations")? + rows(conn, "tombstones")?;
    if server_rows > 0 {
        return Err(StoreError::WrongKind {
            path: path.to_path_buf(),
            found: if history_rows > 0 {
                "history and server"
            } else {
                "server"
            },
            expected: SCHEMA.name,
            setting: SCHEMA.setting,
        });
    }
    Ok(conn.execute_batch(SERVER_TABLES)?)
}
