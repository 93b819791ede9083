//! What both SQLite databases share — the device's history (`history/`)
//! and the chat server's store (`serverdb/sqlite`): opening a file with its
//! header checked first, WAL with `synchronous = FULL`, migrations by
//! `PRAGMA user_version` (each kind with its own list, `schema.rs`), the
//! store threads with group commit and after-commit delivery (`actor.rs`),
//! maintenance (`maintenance.rs`), the records both store (`model.rs`) and
//! the error type (`error.rs`).
//!
//! A [`Db<K>`] owns one connection and is used from one thread. `K` is the
//! kind of database ([`Kind`]): it names the schema, and keeps the device's
//! methods off a server database and the other way round.
//!
//! Only `store/`, `history/` and `serverdb/` run SQL.

pub mod actor;
pub mod error;
pub mod maintenance;
pub mod model;
pub mod schema;
mod wire;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

pub use error::{Result, StoreError};
pub use model::*;
pub use schema::Schema;

/// Page size of new databases. Bigger than SQLite's 4096 default: fewer
/// B-tree splits on bulk loads and shallower indexes.
const PAGE_SIZE: i64 = 8192;

/// A kind of pichat database: its schema (and so its migrations and its
/// `application_id`).
pub trait Kind: 'static {
    const SCHEMA: &'static Schema;
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub busy_timeout: Duration,
    /// Create the file (and its directory) when missing.
    pub create: bool,
    /// Read-only connections [`actor::StoreHandle::read`] may open (on
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

/// An open database of kind `K`.
pub struct Db<K: Kind> {
    pub(crate) conn: Connection,
    path: PathBuf,
    /// Actions to run once the current write is committed (see
    /// [`Db::after_commit`]).
    deferred: Vec<Box<dyn FnOnce() + Send>>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> std::fmt::Debug for Db<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("kind", &K::SCHEMA.name)
            .field("path", &self.path)
            .finish()
    }
}

/// Creates a missing database file 0600 (and its directory 0700), so that
/// SQLite gives its `-wal` and `-shm` the same mode, whatever the umask.
fn create_private(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError::CantOpen {
                path: path.to_path_buf(),
                detail: format!("cannot create directory {}: {e}", dir.display()),
            })?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::CantOpen {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

impl<K: Kind> Db<K> {
    /// Opens (creating if asked) and migrates the database at `path`.
    ///
    /// The file is checked before anything is written to it: a file that is
    /// not SQLite, another program's database, pichat's other kind of
    /// database, or a schema newer than this binary's is refused unchanged.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Db<K>> {
        let fix = |e: rusqlite::Error| StoreError::from_sqlite(path, e);
        if !path.exists() {
            if !opts.create {
                return Err(StoreError::CantOpen {
                    path: path.to_path_buf(),
                    detail: "no such file".into(),
                });
            }
            create_private(path)?;
        } else if path.is_dir() {
            return Err(StoreError::CantOpen {
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
        let found = schema::Header::read(&conn).map_err(fix)?;
        K::SCHEMA.check(path, &found)?;
        let mut db = Db {
            conn,
            path: path.to_path_buf(),
            deferred: Vec::new(),
            kind: PhantomData,
        };
        db.configure(found.is_empty())
            .map_err(|e| e.with_path(path))?;
        db.migrate().map_err(|e| e.with_path(path))?;
        Ok(db)
    }

    /// A read-only connection to a database that [`Db::open`] has opened
    /// (and migrated): for reads beside the writer. It cannot write
    /// (`query_only`), and refuses a schema other than this binary's.
    pub fn open_reader(path: &Path, opts: &OpenOptions) -> Result<Db<K>> {
        let fix = |e: rusqlite::Error| StoreError::from_sqlite(path, e);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(fix)?;
        conn.busy_timeout(opts.busy_timeout).map_err(fix)?;
        let found = schema::Header::read(&conn).map_err(fix)?;
        K::SCHEMA.check(path, &found)?;
        if found.version != K::SCHEMA.version() {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: found.version,
                supported: K::SCHEMA.version(),
            });
        }
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA temp_store = MEMORY;")
            .map_err(fix)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Db {
            conn,
            path: path.to_path_buf(),
            deferred: Vec::new(),
            kind: PhantomData,
        })
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Db<K>> {
        let conn = Connection::open_in_memory()?;
        let mut db = Db {
            conn,
            path: PathBuf::from(":memory:"),
            deferred: Vec::new(),
            kind: PhantomData,
        };
        db.configure(true)?;
        db.migrate()?;
        Ok(db)
    }

    fn configure(&self, new_file: bool) -> Result<()> {
        if new_file {
            // Only take effect on a new, empty database: pages freed by
            // deletes can then be given back a few at a time (maintenance).
            self.conn.pragma_update(None, "page_size", PAGE_SIZE)?;
            self.conn
                .pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode != "wal" && self.path != Path::new(":memory:") {
            return Err(StoreError::CantOpen {
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

    /// Runs the migrations this file lacks, all in one `BEGIN IMMEDIATE`
    /// transaction (another process may have migrated while we waited for
    /// the lock: the version is read again inside it).
    fn migrate(&mut self) -> Result<()> {
        let schema = K::SCHEMA;
        let before = schema::Header::read(&self.conn)?;
        if before.version == schema.version() && before.application_id == schema.application_id {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = schema::Header::read(&tx)?;
        schema.check(&self.path, &now)?;
        for step in &schema.steps[now.version as usize..] {
            step.run(&tx, &self.path)?;
        }
        tx.pragma_update(None, "user_version", schema.version())?;
        tx.pragma_update(None, "application_id", schema.application_id)?;
        tx.commit()?;
        if before.version > 0 && before.version <= schema::LEGACY_VERSION {
            // A file from before the split: its other kind's tables are gone,
            // and incremental vacuum needs one full VACUUM to be switched on.
            self.convert_to_incremental_vacuum();
        }
        Ok(())
    }

    /// Switches a database made before incremental vacuum to it (a full
    /// VACUUM: the file is rewritten). A failure (no room for the copy) is
    /// logged: the database works as before, maintenance says so.
    fn convert_to_incremental_vacuum(&self) {
        let r = self
            .conn
            .execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;");
        if let Err(e) = r {
            tracing::warn!(
                "{}: could not switch to incremental vacuum ({e}); free pages stay until a VACUUM",
                self.path.display()
            );
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` once what the current call wrote is durable: right after
    /// the call through [`actor::StoreHandle`], or after the commit of its
    /// group of writes ([`actor::StoreHandle::call_batched`]); never if the
    /// call fails or its writes are rolled back. Used for what must not be
    /// said before it is stored (notifications). Direct users of a `Db` run
    /// them with [`Db::run_deferred`].
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.deferred.push(Box::new(f));
    }

    /// Takes the actions registered with [`Db::after_commit`].
    pub(crate) fn take_deferred(&mut self) -> Vec<Box<dyn FnOnce() + Send>> {
        std::mem::take(&mut self.deferred)
    }

    /// Runs (now) the actions registered with [`Db::after_commit`].
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

    /// The tables of the open database (for migration tests).
    pub fn tables(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Moves the WAL into the database file and truncates it.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// A write's transaction: its own (`BEGIN IMMEDIATE`), or a savepoint
    /// when it runs inside a group commit ([`actor::StoreHandle::call_batched`]).
    pub(crate) fn write_tx(&mut self) -> Result<WriteTx<'_>> {
        Ok(if self.conn.is_autocommit() {
            WriteTx::Own(
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?,
            )
        } else {
            WriteTx::Grouped(self.conn.savepoint()?)
        })
    }
}

/// See [`Db::write_tx`].
pub(crate) enum WriteTx<'c> {
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
    pub(crate) fn commit(self) -> Result<()> {
        match self {
            WriteTx::Own(t) => t.commit()?,
            WriteTx::Grouped(s) => s.commit()?,
        }
        Ok(())
    }
}

/// The SQLite key of an id: its 16 bytes as a BLOB (less than half the size
/// of the text form in the table and in every index). A string that is not
/// a UUID cannot name anything stored, so it is "not found".
pub(crate) fn key(what: &'static str, id: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| StoreError::NotFound {
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
