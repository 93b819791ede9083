//! Keeping an SQLite database healthy, on a schedule: `PRAGMA optimize`
//! (fresh query-planner statistics), an incremental vacuum when the free
//! list passes a threshold (pages freed by deletes go back to the file
//! system a few at a time, never a long full VACUUM), and a WAL checkpoint
//! (the `-wal` file truncated, so it does not grow without bound). Each
//! pass runs on the writer thread between writes; what it finds is the
//! store's state in `/health` and `/metrics`.

use serde::Serialize;

use super::{Db, Kind, Result};

/// When and how much to vacuum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Free pages above which a pass vacuums.
    pub free_pages: i64,
    /// Pages given back at most per pass (bounds the pass's time).
    pub vacuum_pages: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        // 8 KiB pages: vacuum past 8 MiB free, 32 MiB at most per pass.
        Thresholds {
            free_pages: 1024,
            vacuum_pages: 4096,
        }
    }
}

/// The state of an SQLite file, as last measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileState {
    pub page_size: i64,
    pub pages: i64,
    pub free_pages: i64,
    /// Bytes in the `-wal` file.
    pub wal_bytes: u64,
    /// `auto_vacuum` is INCREMENTAL (files from before the split may not be,
    /// if the one VACUUM that switches it could not run).
    pub incremental_vacuum: bool,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pass {
    pub before: FileState,
    pub after: FileState,
    pub vacuumed_pages: i64,
    /// WAL frames moved into the database by the checkpoint.
    pub checkpointed: i64,
    /// The checkpoint could not finish (a reader held an old snapshot).
    pub checkpoint_busy: bool,
}

impl<K: Kind> Db<K> {
    /// The file's state now.
    pub fn file_state(&self) -> Result<FileState> {
        let get = |pragma: &str| -> Result<i64> {
            Ok(self
                .conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))?)
        };
        let wal = {
            let mut p = self.path().as_os_str().to_owned();
            p.push("-wal");
            std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
        };
        Ok(FileState {
            page_size: get("page_size")?,
            pages: get("page_count")?,
            free_pages: get("freelist_count")?,
            wal_bytes: wal,
            incremental_vacuum: get("auto_vacuum")? == 2,
        })
    }

    /// One maintenance pass (see the module docs). Runs outside any
    /// transaction (on the writer, between writes).
    pub fn maintain(&mut self, t: Thresholds) -> Result<Pass> {
        let before = self.file_state()?;
        self.conn.execute_batch("PRAGMA optimize;")?;
        let mut vacuumed = 0;
        if before.incremental_vacuum && before.free_pages > t.free_pages {
            let n = before.free_pages.min(t.vacuum_pages.max(1));
            self.conn
                .execute_batch(&format!("PRAGMA incremental_vacuum({n});"))?;
            vacuumed = before.free_pages - self.file_state()?.free_pages;
        }
        let (busy, _log, moved): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        Ok(Pass {
            before,
            after: self.file_state()?,
            vacuumed_pages: vacuumed,
            checkpointed: moved.max(0),
            checkpoint_busy: busy != 0,
        })
    }
}
