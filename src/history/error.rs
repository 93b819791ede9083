//! Errors of the history store, one variant per thing a caller may want to
//! branch on (retry on `Locked`, tell the user on the rest).

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "{}: not a pichat history database (not SQLite, or damaged beyond reading); the file was not changed — move it away or point history.path / --db at another file",
        path.display()
    )]
    NotADatabase { path: PathBuf },

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

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("history database error: {0}")]
    Sqlite(rusqlite::Error),
}

impl HistoryError {
    /// Classifies an SQLite error that happened on the database at `path`.
    pub fn from_sqlite(path: &Path, e: rusqlite::Error) -> HistoryError {
        let path = path.to_path_buf();
        let detail = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => HistoryError::NotADatabase { path },
            Some(ErrorCode::DatabaseCorrupt) => HistoryError::Corrupt { path, detail },
            Some(ErrorCode::CannotOpen) => HistoryError::CantOpen { path, detail },
            Some(ErrorCode::ReadOnly) => HistoryError::ReadOnly { path, detail },
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
                HistoryError::Locked { path }
            }
            _ => HistoryError::Sqlite(e),
        }
    }

    /// Gives a plain SQLite error the database's path and its specific kind
    /// (locked, read-only, corrupt...). Other errors are returned as they are.
    pub fn with_path(self, path: &Path) -> HistoryError {
        match self {
            HistoryError::Sqlite(e) => HistoryError::from_sqlite(path, e),
            other => other,
        }
    }

    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, HistoryError::Locked { .. })
    }
}

pub type Result<T, E = HistoryError> = std::result::Result<T, E>;

impl From<rusqlite::Error> for HistoryError {
    fn from(e: rusqlite::Error) -> Self {
        HistoryError::Sqlite(e)
    }
}
