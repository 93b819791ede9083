//! The conversation actions: `get_conversations` (a page, newest activity
//! first), `create_conversation`, `get_conversation`,
//! `update_conversation`, `delete_conversation`. Each change reaches the
//! user's other connections through the store's change feed once
//! committed (a duplicate or a change that changed nothing is not one).

use super::client::Client;
use super::db::{db_error, wire};
use crate::protocol::{self as p, ErrorPayload, Reply};
use crate::serverdb::ConversationUpdate;
use crate::store::NewConversation;

pub(super) async fn list(c: &Client, q: p::GetConversations) -> Result<Reply, ErrorPayload> {
    let limit = p::limits::page(
        q.limit,
        p::limits::CONVERSATIONS_DEFAULT_LIMIT,
        p::limits::CONVERSATIONS_MAX_LIMIT,
    ) as usize;
    let before = q.before.map(|b| b.to_string());
    let (list, has_more) = c
        .store()
        .list_conversations(c.user(), q.include_archived, limit, before)
        .await
        .map_err(db_error)?;
    Ok(Reply::ConversationsList(p::ConversationsList {
        conversations: list.iter().map(wire).collect::<Result<_, _>>()?,
        has_more,
    }))
}

pub(super) async fn create(c: &Client, q: p::CreateConversation) -> Result<Reply, ErrorPayload> {
    let new = NewConversation {
        id: q.id.map(|i| i.to_string()),
        title: q.title,
        model_id: q.model_id,
        metadata: None,
        created_at: None,
    };
    let (conv, duplicate) = c
        .store()
        .create_conversation(c.author(), c.user(), new)
        .await
        .map_err(db_error)?;
    Ok(Reply::ConversationCreated(p::ConversationPayload {
        conversation: wire(&conv)?,
        duplicate,
    }))
}

pub(super) async fn get(c: &Client, q: p::ById) -> Result<Reply, ErrorPayload> {
    let conv = c
        .store()
        .get_conversation(c.user(), &q.id.to_string())
        .await
        .map_err(db_error)?;
    Ok(Reply::Conversation(p::ConversationPayload {
        conversation: wire(&conv)?,
        duplicate: false,
    }))
}

pub(super) async fn update(c: &Client, u: p::UpdateConversation) -> Result<Reply, ErrorPayload> {
    let upd = ConversationUpdate {
        title: u.title,
        archived: u.archived,
        model_id: u.model_id,
    };
    let (conv, _changed) = c
        .store()
        .update_conversation(c.author(), c.user(), &u.id.to_string(), upd)
        .await
        .map_err(db_error)?;
    Ok(Reply::ConversationUpdated(p::ConversationPayload {
        conversation: wire(&conv)?,
        duplicate: false,
    }))
}

pub(super) async fn delete(c: &Client, q: p::ById) -> Result<Reply, ErrorPayload> {
    let (rev, duplicate) = c
        .store()
        .delete_conversation(c.author(), c.user(), &q.id.to_string())
        .await
        .map_err(db_error)?;
    Ok(Reply::ConversationDeleted(p::ConversationDeleted {
        id: q.id,
        rev,
        duplicate,
    }))
}
