//! The local history: conversations and messages in SQLite, with full-text
//! search, statistics, export/import and the LLM context builder.
//!
//! This is the only module that runs SQL. A [`Store`] owns one connection
//! and is used from one thread: the CLI's main thread, or the dedicated
//! threads behind [`actor::HistoryHandle`] in the daemon and the server (one
//! writer, and read-only connections opened by [`Store::open_reader`];
//! never an async worker thread).
//!
//! Durability: WAL with `synchronous = FULL`, so a turn whose write returned
//! survives a power cut (see ARCHITECTURE.md).

pub mod actor;
mod conversations;
pub mod error;
pub mod export;
mod messages;
pub mod model;
pub mod schema;
mod search;
pub mod server;
pub mod sync;
pub mod web;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use error::{HistoryError, Result};
pub use model::*;
pub use search::estimate_tokens;

/// Longest conversation title, in characters (as in the protocol).
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest message, in characters (as in the protocol).
pub const MAX_CONTENT_CHARS: usize = 32_000;

/// Page size of new databases. Bigger than SQLite's 4096 default: fewer
/// B-tree splits on bulk loads and shallower indexes.
const PAGE_SIZE: i64 = 8192;

/// How to open the database.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub busy_timeout: Duration,
    /// Create the file (and its directory) when missing.
    pub create: bool,
    /// Read-only connections [`actor::HistoryHandle::read`] may open (on
    /// demand); 0 sends reads to the writer.
    pub readers: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            busy_timeout: Duration::from_secs(5),
            create: true,
            readers: DEFAULT_READERS,
        }
    }
}

/// Read-only connections opened at most, by default (`server.read_connections`).
pub const DEFAULT_READERS: usize = 4;

/// An open history database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Actions to run once the current write is committed (see
    /// [`Store::after_commit`]).
    deferred: Vec<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if asked) and migrates the database at `path`.
    ///
    /// The file is checked before anything is written to it: a file that is
    /// not SQLite, or whose schema is newer than this binary's, is refused
    /// unchanged.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Store> {
        let fix = |e: rusqlite::Error| HistoryError::from_sqlite(path, e);
        if !path.exists() {
            if !opts.create {
                return Err(HistoryError::CantOpen {
                    path: path.to_path_buf(),
                    detail: "no such file".into(),
                });
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| HistoryError::CantOpen {
                        path: path.to_path_buf(),
                        detail: format!("cannot create directory {}: {e}", dir.display()),
                    })?;
            }
            // Only this user reads the history (SQLite gives its -wal and
            // -shm files the database's mode), whatever the umask says.
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(HistoryError::CantOpen {
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    });
                }
            }
        } else if path.is_dir() {
            return Err(HistoryError::CantOpen {
                path: path.to_path_buf(),
                detail: "it is a directory".into(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(fix)?;
        conn.busy_timeout(opts.busy_timeout).map_err(fix)?;
        // Reading the header first: fails on a non-SQLite file before any write.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(fix)?;
        if version > schema::VERSION {
            return Err(HistoryError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: schema::VERSION,
            });
        }
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            deferred: Vec::new(),
        };
        store.configure().map_err(|e| e.with_path(path))?;
        store.migrate(version).map_err(|e| e.with_path(path))?;
        Ok(store)
    }

    /// A read-only connection to a database that [`Store::open`] has
    /// opened (and migrated): for reads beside the writer. It cannot write
    /// (`query_only`), and refuses a schema other than this binary's.
    pub fn open_reader(path: &Path, opts: &OpenOptions) -> Result<Store> {
        let fix = |e: rusqlite::Error| HistoryError::from_sqlite(path, e);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(fix)?;
        conn.busy_timeout(opts.busy_timeout).map_err(fix)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(fix)?;
        if version != schema::VERSION {
            return Err(HistoryError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: schema::VERSION,
            });
        }
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA temp_store = MEMORY;")
            .map_err(fix)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            deferred: Vec::new(),
        })
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        let mut store = Store {
            conn,
            path: PathBuf::from(":memory:"),
            deferred: Vec::new(),
        };
        store.configure()?;
        store.migrate(0)?;
        Ok(store)
    }

    fn configure(&self) -> Result<()> {
        // Only takes effect on a new, empty database.
        self.conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode != "wal" && self.path != Path::new(":memory:") {
            return Err(HistoryError::CantOpen {
                path: self.path.clone(),
                detail: format!("cannot switch to WAL journal (got {mode})"),
            });
        }
        self.conn.execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA temp_store = MEMORY;",
        )?;
        self.conn.set_prepared_statement_cache_capacity(64);
        Ok(())
    }

    fn migrate(&mut self, from: i64) -> Result<()> {
        if from == schema::VERSION {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for sql in &schema::MIGRATIONS[now as usize..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", schema::VERSION)?;
        tx.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` once what the current call wrote is durable: right after
    /// the call through [`actor::HistoryHandle`], or after the commit of its
    /// group of writes ([`actor::HistoryHandle::call_batched`]); never if the
    /// call fails or its writes are rolled back. Used for what must not be
    /// said before it is stored (notifications). Direct users of a `Store`
    /// run them with [`Store::run_deferred`].
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.deferred.push(Box::new(f));
    }

    /// Takes the actions registered with [`Store::after_commit`].
    pub(crate) fn take_deferred(&mut self) -> Vec<Box<dyn FnOnce() + Send>> {
        std::mem::take(&mut self.deferred)
    }

    /// Runs (now) the actions registered with [`Store::after_commit`].
    pub fn run_deferred(&mut self) {
        for f in self.take_deferred() {
            f();
        }
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// `PRAGMA quick_check`: "ok" or the first problems found.
    pub fn integrity_check(&self) -> Result<String> {
        let mut stmt = self.conn.prepare("PRAGMA quick_check")?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows.join("; "))
    }

    /// The query plan of a statement, one line per step (for index tests).
    pub fn explain(&self, sql: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(3))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Moves the WAL into the database file and truncates it.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

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

/// The SQLite key of an id: its 16 bytes as a BLOB (less than half the size
/// of the text form in the table and in every index). A string that is not
/// a UUID cannot name anything stored, so it is "not found".
pub(crate) fn key(what: &'static str, id: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| HistoryError::NotFound {
        what,
        id: id.to_string(),
    })
}

/// Reads an id column back into its text form.
pub(crate) fn id_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    Ok(r.get::<_, uuid::Uuid>(i)?.to_string())
}

/// Reads a nullable id column.
pub(crate) fn opt_id_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    Ok(r.get::<_, Option<uuid::Uuid>>(i)?.map(|u| u.to_string()))
}

/// Makes a new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Checks that `id` is a UUID and returns it in canonical (lowercase, hyphenated) form.
pub fn check_id(what: &str, id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| HistoryError::Invalid(format!("{what} \"{id}\" is not a UUID")))
}

fn check_title(title: &str) -> Result<String> {
    let t = title.trim();
    let n = t.chars().count();
    if n == 0 || n > MAX_TITLE_CHARS {
        return Err(HistoryError::Invalid(format!(
            "a title must have 1 to {MAX_TITLE_CHARS} characters (got {n})"
        )));
    }
    Ok(t.to_string())
}

fn check_content(content: &str) -> Result<()> {
    let n = content.chars().count();
    if content.trim().is_empty() || n > MAX_CONTENT_CHARS {
        return Err(HistoryError::Invalid(format!(
            "a message must have 1 to {MAX_CONTENT_CHARS} characters (got {n})"
        )));
    }
    Ok(())
}

fn meta_to_sql(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(o)) if o.is_empty() => None,
        Some(v) => Some(v.to_string()),
    }
}

fn meta_from_sql(s: Option<String>) -> serde_json::Value {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Object(Default::default()))
}

/// A default title from the first words of a text.
pub fn title_from(text: &str) -> String {
    let mut t = String::new();
    for w in text.split_whitespace() {
        if t.chars().count() + w.chars().count() + 1 > 60 {
            t.push('…');
            break;
        }
        if !t.is_empty() {
            t.push(' ');
        }
        t.push_str(w);
    }
    if t.is_empty() {
        "New conversation".into()
    } else {
        t
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
