//! The device's history: conversations and messages in SQLite, with
//! full-text search, statistics, export/import, cleanup, the LLM context
//! builder and the sync's local side. Schema: `schema.rs` (its own list of
//! migrations since version 5; the shared machinery is `store/`).
//!
//! A [`Store`] owns one connection and is used from one thread: the CLI's
//! main thread, or the dedicated threads behind [`HistoryHandle`] in the
//! daemon (one writer, and read-only connections beside it; never an async
//! worker thread).
//!
//! Durability: WAL with `synchronous = FULL`, so a turn whose write returned
//! survives a power cut (see ARCHITECTURE.md).

mod conversations;
pub mod daily;
pub mod export;
mod messages;
pub mod model;
pub mod schema;
mod search;
pub mod sync;

pub use crate::store::{OpenOptions, Result, StoreError};
pub use model::*;

pub(crate) use crate::store::{id_at, key, opt_id_at};

/// The kind of the device's database.
pub struct History;

impl crate::store::Kind for History {
    const SCHEMA: &'static crate::store::Schema = &schema::SCHEMA;
}

/// An open history database.
pub type Store = crate::store::Db<History>;

/// The history's store threads, for async code.
pub type HistoryHandle = crate::store::actor::StoreHandle<History>;

/// The history's state table and other device-only parts of a [`Store`].
impl Store {
    /// Reads a value of the sync state table.
    pub fn state_get(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row("SELECT value FROM sync_state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Writes a value of the sync state table.
    pub fn state_set(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sync_state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hot query is answered from an index, never by a full scan or a
    /// temporary sort.
    #[test]
    fn hot_queries_use_indexes() {
        let s = Store::open_in_memory().unwrap();
        let plans = [
            (
                "SELECT id FROM conversations WHERE archived = 0 AND (activity_at, id) < (1, x'00') ORDER BY activity_at DESC, id DESC LIMIT 20",
                "conversations_by_archived_activity",
            ),
            (
                "SELECT id FROM conversations WHERE (activity_at, id) < (1, x'00') ORDER BY activity_at DESC, id DESC LIMIT 20",
                "conversations_by_activity",
            ),
            (
                "SELECT role, content FROM messages WHERE conversation_id = x'00' ORDER BY created_at DESC, seq DESC LIMIT 500",
                "messages_by_conversation",
            ),
            (
                "SELECT * FROM messages WHERE id = x'00'",
                "sqlite_autoindex_messages_1",
            ),
            (
                "SELECT seq FROM messages WHERE seq > 10 AND pending = 1",
                "INTEGER PRIMARY KEY",
            ),
            (
                "SELECT id FROM conversations WHERE pending = 1",
                "conversations_pending",
            ),
        ];
        for (sql, index) in plans {
            let plan = s.explain(sql).unwrap().join(" | ");
            assert!(plan.contains(index), "{sql}\n  plan: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n  sorts: {plan}");
        }
        let plan = s
            .explain("SELECT m.id FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid WHERE messages_fts MATCH 'a' ORDER BY rank LIMIT 20")
            .unwrap()
            .join(" | ");
        assert!(plan.contains("VIRTUAL TABLE INDEX"), "{plan}");
        assert!(plan.contains("INTEGER PRIMARY KEY"), "{plan}");
    }

    #[test]
    fn reopening_keeps_data_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/h.db");
        let id = {
            let mut s = Store::open(&p, &OpenOptions::default()).unwrap();
            s.create_conversation(NewConversation::default())
                .unwrap()
                .id
        };
        let s = Store::open(&p, &OpenOptions::default()).unwrap();
        assert_eq!(s.schema_version().unwrap(), schema::VERSION);
        assert!(s.get_conversation(&id).is_ok());
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn title_from_text() {
        assert_eq!(
            title_from("What is the capital of France?"),
            "What is the capital of France?"
        );
        assert!(title_from(&"word ".repeat(40)).ends_with('…'));
        assert_eq!(title_from("  "), "New conversation");
    }
}
