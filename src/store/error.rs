//! Errors of the stores (the history, the chat server's SQLite and
//! PostgreSQL stores), one variant per thing a caller may want to branch
//! on: retry later on `Locked`, `DiskFull`, `CommitFailed` and
//! `Unreachable` (the write was not stored, and may be sent again as it
//! is); a bug or a dead store on `StoreGone`, `Sqlite` and `Postgres`; tell
//! the user on the rest. SQLite errors are classified in
//! [`StoreError::from_sqlite`], PostgreSQL's in `serverdb::postgres`.

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{}: not a pichat database (not SQLite, another program's, or damaged beyond reading); the file was not changed — move it away or point history.path / server.database / --db at another file",
        path.display()
    )]
    NotADatabase { path: PathBuf },

    /// A pichat database of the other kind (a server's store opened as a
    /// history, or the other way round).
    #[error(
        "{}: this is a pichat {found} database, not a {expected} one; the file was not changed — point {setting} at the right file",
        path.display()
    )]
    WrongKind {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
        setting: &'static str,
    },

    #[error(
        "{}: the database is corrupt ({detail}); restore a backup, or move it away to start a new history",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "{}: schema version {found} is newer than this pichat supports ({supported}); upgrade pichat — the file was not changed",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error(
        "{}: cannot open ({detail}); check that the directory exists and is writable by this user, or set history.path / --db",
        path.display()
    )]
    CantOpen { path: PathBuf, detail: String },

    #[error(
        "{}: read-only ({detail}); make the file and its directory writable by this user",
        path.display()
    )]
    ReadOnly { path: PathBuf, detail: String },

    #[error(
        "{}: locked by another process; stop the other pichat using it, or try again",
        path.display()
    )]
    Locked { path: PathBuf },

    #[error("no {what} with id \"{id}\" (see `pichat history list`)")]
    NotFound { what: &'static str, id: String },

    #[error("id prefix \"{0}\" matches several conversations; give more characters")]
    Ambiguous(String),

    #[error("{0}")]
    Invalid(String),

    /// The id is taken by a different record (the chat server's idempotent
    /// creates: same id, other content).
    #[error("{0}")]
    Conflict(String),

    #[error("{}:{}{message}", path.display(), at.map(|(l, c)| format!("{l}:{c}: ")).unwrap_or(" ".into()))]
    Import {
        path: PathBuf,
        /// Line and column in the file, when the problem has one.
        at: Option<(usize, usize)>,
        message: String,
    },

    /// The disk (or the user's quota) is full: nothing of the write was
    /// stored. Writes work again as soon as there is room; reads go on.
    #[error(
        "{}: the disk is full; nothing was written — free some space (writes resume by themselves)",
        path.display()
    )]
    DiskFull { path: PathBuf },

    /// A group of writes could not be committed (an I/O error at the
    /// commit): nothing of it was stored; the same write may be tried again.
    #[error(
        "{}: the write could not be committed ({detail}); nothing was stored — try again",
        path.display()
    )]
    CommitFailed { path: PathBuf, detail: String },

    /// The store thread no longer runs (it could not start, or it stopped):
    /// nothing can be read or written until pichat is restarted.
    #[error("the database store has stopped ({0}); restart pichat")]
    StoreGone(String),

    /// A call on the store thread panicked (a bug); the thread goes on.
    #[error("the database store failed on a bug ({0}); see the log")]
    Bug(String),

    /// A stored id that is not a UUID: the database was changed by hand, or
    /// is damaged.
    #[error("the database holds {what} id \"{id}\", which is not a UUID (damaged?)")]
    BadStoredId { what: &'static str, id: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),

    /// The PostgreSQL server cannot be reached, or dropped the connection
    /// (the write, if any, was not committed): try again.
    #[error(
        "PostgreSQL at {server}: {detail}; check that it runs and that server.database is right (nothing was changed)"
    )]
    Unreachable { server: String, detail: String },

    /// PostgreSQL refused or failed a statement (a bug, a damaged or
    /// foreign schema, a permission missing).
    #[error("PostgreSQL error: {0}")]
    Postgres(String),
}

impl StoreError {
    /// Classifies an SQLite error that happened on the database at `path`.
    pub fn from_sqlite(path: &Path, e: rusqlite::Error) -> StoreError {
        let path = path.to_path_buf();
        let detail = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => StoreError::NotADatabase { path },
            Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt { path, detail },
            Some(ErrorCode::CannotOpen) => StoreError::CantOpen { path, detail },
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { path, detail },
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
                StoreError::Locked { path }
            }
            Some(ErrorCode::DiskFull) => StoreError::DiskFull { path },
            _ => StoreError::Sqlite(e),
        }
    }

    /// Gives a plain SQLite error the database's path and its specific kind
    /// (locked, read-only, corrupt...). Other errors are returned as they are.
    pub fn with_path(self, path: &Path) -> StoreError {
        match self {
            StoreError::Sqlite(e) => StoreError::from_sqlite(path, e),
            other => other,
        }
    }

    /// True when trying again later may succeed (nothing was stored).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Locked { .. }
                | StoreError::DiskFull { .. }
                | StoreError::CommitFailed { .. }
                | StoreError::Unreachable { .. }
        )
    }

    /// How long to wait before trying again, for the retryable errors.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        use std::time::Duration;
        match self {
            StoreError::Locked { .. }
            | StoreError::CommitFailed { .. }
            | StoreError::Unreachable { .. } => Some(Duration::from_secs(1)),
            // Space comes back when someone frees it: not in a moment.
            StoreError::DiskFull { .. } => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}
