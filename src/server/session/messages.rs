//! The message actions: `get_messages` (a page, back in time), `search`,
//! and `append_messages` (a device's upload: one transaction per batch,
//! each bad message rejected on its own). Pages stop at
//! `limits::MAX_PAGE_BYTES` of encoded records (`has_more`).

use super::client::Client;
use super::db::{db_error, wire};
use crate::protocol::{self as p, ErrorCode, ErrorPayload, Reply};

pub(super) async fn page(c: &Client, q: p::GetMessages) -> Result<Reply, ErrorPayload> {
    let user = c.user();
    let limit = p::limits::page(
        q.limit,
        p::limits::MESSAGES_DEFAULT_LIMIT,
        p::limits::MESSAGES_MAX_LIMIT,
    ) as usize;
    let conv = q.conversation_id.to_string();
    let before = q.before.map(|b| b.to_string());
    let mut budget = p::limits::PageBudget::default();
    let (list, has_more) = c
        .store()
        .messages(
            user,
            &conv,
            limit,
            before,
            Box::new(move |m| p::Message::try_from(m).is_ok_and(|m| budget.fits(&m))),
        )
        .await
        .map_err(db_error)?;
    Ok(Reply::MessagesList(p::MessagesList {
        conversation_id: q.conversation_id,
        messages: list.iter().map(wire).collect::<Result<_, _>>()?,
        has_more,
    }))
}

pub(super) async fn search(c: &Client, q: p::Search) -> Result<Reply, ErrorPayload> {
    let user = c.user();
    let limit = p::limits::page(
        q.limit,
        p::limits::SEARCH_DEFAULT_LIMIT,
        p::limits::SEARCH_MAX_LIMIT,
    ) as usize;
    let conv = q.conversation_id.map(|c| c.to_string());
    let mut budget = p::limits::PageBudget::default();
    let hits = c
        .store()
        .search(
            user,
            &q.query,
            conv,
            limit,
            Box::new(move |h| {
                p::Message::try_from(&h.message).is_ok_and(|m| {
                    budget.fits(&m) && budget.fits(&h.snippet) && budget.fits(&h.conversation_title)
                })
            }),
        )
        .await
        .map_err(db_error)?;
    Ok(Reply::SearchResults(p::SearchResults {
        hits: hits
            .iter()
            .map(|h| {
                Ok(p::SearchHit {
                    message: wire(&h.message)?,
                    snippet: h.snippet.clone(),
                    conversation_title: h.conversation_title.clone(),
                })
            })
            .collect::<Result<_, ErrorPayload>>()?,
    }))
}

pub(super) async fn append(c: &Client, a: p::AppendMessages) -> Result<Reply, ErrorPayload> {
    let origin = c.origin();
    let mut rejected = Vec::new();
    let mut batch = Vec::with_capacity(a.messages.len());
    for m in &a.messages {
        match p::check_message_input(m) {
            Ok(()) => batch.push(m.to_new_message(origin)),
            Err(message) => rejected.push(p::Rejected {
                id: m.id,
                code: ErrorCode::BadRequest,
                message,
            }),
        }
    }
    let out = c
        .store()
        .append_messages(c.author(), c.user(), batch)
        .await
        .map_err(db_error)?;
    let id = |s: &str| super::db::id("message", s);
    for (rid, e) in out.rejected {
        let e = db_error(e);
        rejected.push(p::Rejected {
            id: id(&rid)?,
            code: e.code,
            message: e.message,
        });
    }
    Ok(Reply::MessagesAppended(p::MessagesAppended {
        stored: out
            .stored
            .iter()
            .map(|m| id(&m.id))
            .collect::<Result<_, _>>()?,
        duplicates: out
            .duplicates
            .iter()
            .map(|d| id(d))
            .collect::<Result<_, _>>()?,
        rejected,
        rev: out.rev,
    }))
}
