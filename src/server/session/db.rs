//! The store as the actions see it: what its errors mean on the wire
//! ([`db_error`]) and records in their wire form. (What a write changed
//! reaches the user's other connections through the store's change feed,
//! into the hub: no action sends notifications itself.)
//!
//! A bad request is `bad_request`; a write that was not stored but may be
//! sent again (disk full, commit failed, database busy) is `unavailable`
//! with `retry_after_ms`; anything else (a dead store, a bug, a damaged
//! database) is `internal`, logged.

use uuid::Uuid;

use crate::protocol::{ErrorCode, ErrorPayload};
use crate::store::StoreError;

/// What the store's errors mean on the wire (see the module docs).
pub(crate) fn db_error(e: StoreError) -> ErrorPayload {
    let retry = e.retry_after().map(|d| d.as_millis() as u64);
    let unavailable = |message: &str| ErrorPayload {
        retry_after_ms: retry,
        ..ErrorPayload::new(ErrorCode::Unavailable, message)
    };
    match e {
        StoreError::NotFound { what, id } => {
            ErrorPayload::new(ErrorCode::NotFound, format!("no {what} with id {id}"))
        }
        StoreError::Conflict(m) => ErrorPayload::new(ErrorCode::Conflict, m),
        StoreError::Invalid(m) => ErrorPayload::new(ErrorCode::BadRequest, m),
        StoreError::Ambiguous(_) => ErrorPayload::new(ErrorCode::BadRequest, e.to_string()),
        StoreError::Locked { .. } => {
            unavailable("the database is busy; nothing was changed; try again in a moment")
        }
        StoreError::DiskFull { .. } => {
            tracing::error!("database: {e}");
            unavailable("the server's disk is full; nothing was stored; send it again later")
        }
        StoreError::CommitFailed { .. } => {
            tracing::error!("database: {e}");
            unavailable("the write could not be committed; nothing was stored; send it again")
        }
        StoreError::Unreachable { .. } => {
            tracing::error!("database: {e}");
            unavailable("the server cannot reach its database; nothing was changed; try again")
        }
        other => {
            tracing::error!("database: {other}");
            ErrorPayload::new(
                ErrorCode::Internal,
                "the server could not read or write its database (see its log)",
            )
        }
    }
}

/// A store record in its wire form; an id that is not a UUID is `internal`.
pub(crate) fn wire<'a, S: ?Sized, T>(record: &'a S) -> Result<T, ErrorPayload>
where
    T: TryFrom<&'a S, Error = StoreError>,
{
    T::try_from(record).map_err(db_error)
}

/// The protocol id of an id the store gave out (`internal` if it is not a UUID).
pub(crate) fn id(what: &'static str, s: &str) -> Result<Uuid, ErrorPayload> {
    crate::store::store_id(what, s).map_err(db_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn store_errors_get_the_wire_code_a_client_can_act_on() {
        let path = PathBuf::from("/x/server.db");
        let e = db_error(StoreError::DiskFull { path: path.clone() });
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::Unavailable, Some(5000))
        );
        let e = db_error(StoreError::CommitFailed {
            path: path.clone(),
            detail: "disk I/O error".into(),
        });
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::Unavailable, Some(1000))
        );
        let e = db_error(StoreError::Locked { path });
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::Unavailable, Some(1000))
        );
        let e = db_error(StoreError::Unreachable {
            server: "postgres://db/pichat".into(),
            detail: "connection refused".into(),
        });
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::Unavailable, Some(1000))
        );
        for internal in [
            StoreError::StoreGone("the store thread stopped".into()),
            StoreError::Bug("boom".into()),
            StoreError::BadStoredId {
                what: "message",
                id: "x".into(),
            },
        ] {
            let e = db_error(internal);
            assert_eq!((e.code, e.retry_after_ms), (ErrorCode::Internal, None));
        }
        let e = db_error(StoreError::Invalid("a title must have...".into()));
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
