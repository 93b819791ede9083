//! `sync`: the user's changes after a cursor, in `rev` order, a page at a
//! time (at most `limits::MAX_PAGE_BYTES` of encoded changes).

use super::client::Client;
use super::db::{db_error, wire};
use crate::protocol::{self as p, ErrorPayload, Reply};

pub(super) async fn changes(c: &Client, q: p::SyncRequest) -> Result<Reply, ErrorPayload> {
    let user = c.user();
    let limit = p::limits::page(
        q.limit,
        p::limits::SYNC_DEFAULT_LIMIT,
        p::limits::SYNC_MAX_LIMIT,
    ) as usize;
    let mut budget = p::limits::PageBudget::default();
    let page = c
        .store()
        .changes(
            user,
            q.since,
            limit,
            Box::new(move |c| p::Change::try_from(c).is_ok_and(|c| budget.fits(&c))),
        )
        .await
        .map_err(db_error)?;
    Ok(Reply::SyncBatch(p::SyncBatch {
        changes: page.changes.iter().map(wire).collect::<Result<_, _>>()?,
        rev: page.rev,
        has_more: page.has_more,
    }))
}
