//! The store as the actions see it: what its errors mean on the wire
//! ([`db_error`]), records in their wire form, and notifications sent once
//! a change is committed.
//!
//! A bad request is `bad_request`; a write that was not stored but may be
//! sent again (disk full, commit failed, database busy) is `unavailable`
//! with `retry_after_ms`; anything else (a dead store, a bug, a damaged
//! database) is `internal`, logged.

use std::sync::Arc;

use uuid::Uuid;

use crate::history::server::UserId;
use crate::history::{HistoryError, Store};
use crate::protocol::{self as p, ErrorCode, ErrorPayload, Frame, Reply};
use crate::server::hub::Hub;

/// What the store's errors mean on the wire (see the module docs).
pub(crate) fn db_error(e: HistoryError) -> ErrorPayload {
    let retry = e.retry_after().map(|d| d.as_millis() as u64);
    let unavailable = |message: &str| ErrorPayload {
        retry_after_ms: retry,
        ..ErrorPayload::new(ErrorCode::Unavailable, message)
    };
    match e {
        HistoryError::NotFound { what, id } => {
            ErrorPayload::new(ErrorCode::NotFound, format!("no {what} with id {id}"))
        }
        HistoryError::Conflict(m) => ErrorPayload::new(ErrorCode::Conflict, m),
        HistoryError::Invalid(m) => ErrorPayload::new(ErrorCode::BadRequest, m),
        HistoryError::Ambiguous(_) => ErrorPayload::new(ErrorCode::BadRequest, e.to_string()),
        HistoryError::Locked { .. } => {
            unavailable("the database is busy; nothing was changed; try again in a moment")
        }
        HistoryError::DiskFull { .. } => {
            tracing::error!("database: {e}");
            unavailable("the server's disk is full; nothing was stored; send it again later")
        }
        HistoryError::CommitFailed { .. } => {
            tracing::error!("database: {e}");
            unavailable("the write could not be committed; nothing was stored; send it again")
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
    T: TryFrom<&'a S, Error = HistoryError>,
{
    T::try_from(record).map_err(db_error)
}

/// The protocol id of an id the store gave out (`internal` if it is not a UUID).
pub(crate) fn id(what: &'static str, s: &str) -> Result<Uuid, ErrorPayload> {
    p::convert::store_id(what, s).map_err(db_error)
}

/// Sends a notification (no request id) to the user's other connections
/// (all but `except`), once the change is committed.
pub(crate) fn notify(st: &mut Store, hub: &Arc<Hub>, user: UserId, except: u64, body: Reply) {
    let hub = hub.clone();
    st.after_commit(move || {
        hub.notify(user, except, &Frame::new(None, body));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn store_errors_get_the_wire_code_a_client_can_act_on() {
        let path = PathBuf::from("/x/server.db");
        let e = db_error(HistoryError::DiskFull { path: path.clone() });
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::Unavailable, Some(5000))
        );
        let e = db_error(HistoryError::CommitFailed {
            path: path.clone(),
            detail: "disk I/O error".into(),
        });
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::Unavailable, Some(1000))
        );
        let e = db_error(HistoryError::Locked { path });
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::Unavailable, Some(1000))
        );
        for internal in [
            HistoryError::StoreGone("the store thread stopped".into()),
            HistoryError::Bug("boom".into()),
            HistoryError::BadStoredId {
                what: "message",
                id: "x".into(),
            },
        ] {
            let e = db_error(internal);
            assert_eq!((e.code, e.retry_after_ms), (ErrorCode::Internal, None));
        }
        let e = db_error(HistoryError::Invalid("a title must have...".into()));
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
