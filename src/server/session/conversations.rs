//! The conversation actions: `get_conversations` (a page, newest activity
//! first), `create_conversation`, `get_conversation`,
//! `update_conversation`, `delete_conversation`. Each change is notified to
//! the user's other connections once committed (a duplicate or a change
//! that changed nothing is not).

use super::client::Client;
use super::db::{notify, wire};
use crate::history::NewConversation;
use crate::history::server::ConversationUpdate;
use crate::protocol::{self as p, ErrorPayload, Reply};

pub(super) async fn list(c: &Client, q: p::GetConversations) -> Result<Reply, ErrorPayload> {
    let user = c.user();
    let limit = p::limits::page(
        q.limit,
        p::limits::CONVERSATIONS_DEFAULT_LIMIT,
        p::limits::CONVERSATIONS_MAX_LIMIT,
    ) as usize;
    let before = q.before.map(|b| b.to_string());
    let (list, has_more) = c
        .db(move |st| {
            st.server()
                .list_conversations(user, q.include_archived, limit, before.as_deref())
        })
        .await?;
    Ok(Reply::ConversationsList(p::ConversationsList {
        conversations: list.iter().map(wire).collect::<Result<_, _>>()?,
        has_more,
    }))
}

pub(super) async fn create(c: &Client, q: p::CreateConversation) -> Result<Reply, ErrorPayload> {
    let (user, me, hub) = (c.user(), c.conn.id, c.state.hub.clone());
    let new = NewConversation {
        id: q.id.map(|i| i.to_string()),
        title: q.title,
        model_id: q.model_id,
        metadata: None,
        created_at: None,
    };
    let (conv, duplicate) = c
        .db_write(move |st| {
            let (c, dup) = st.server().create_conversation(user, &new)?;
            if !dup {
                notify(
                    st,
                    &hub,
                    user,
                    me,
                    Reply::ConversationCreated(p::ConversationPayload {
                        conversation: (&c).try_into()?,
                        duplicate: false,
                    }),
                );
            }
            Ok((c, dup))
        })
        .await?;
    Ok(Reply::ConversationCreated(p::ConversationPayload {
        conversation: wire(&conv)?,
        duplicate,
    }))
}

pub(super) async fn get(c: &Client, q: p::ById) -> Result<Reply, ErrorPayload> {
    let user = c.user();
    let id = q.id.to_string();
    let conv = c
        .db(move |st| st.server().get_conversation(user, &id))
        .await?;
    Ok(Reply::Conversation(p::ConversationPayload {
        conversation: wire(&conv)?,
        duplicate: false,
    }))
}

pub(super) async fn update(c: &Client, u: p::UpdateConversation) -> Result<Reply, ErrorPayload> {
    let (user, me, hub) = (c.user(), c.conn.id, c.state.hub.clone());
    let id = u.id.to_string();
    let upd = ConversationUpdate {
        title: u.title,
        archived: u.archived,
        model_id: u.model_id,
    };
    let conv = c
        .db_write(move |st| {
            let (c, changed) = st.server().update_conversation(user, &id, &upd)?;
            if changed {
                notify(
                    st,
                    &hub,
                    user,
                    me,
                    Reply::ConversationUpdated(p::ConversationPayload {
                        conversation: (&c).try_into()?,
                        duplicate: false,
                    }),
                );
            }
            Ok(c)
        })
        .await?;
    Ok(Reply::ConversationUpdated(p::ConversationPayload {
        conversation: wire(&conv)?,
        duplicate: false,
    }))
}

pub(super) async fn delete(c: &Client, q: p::ById) -> Result<Reply, ErrorPayload> {
    let (user, me, hub) = (c.user(), c.conn.id, c.state.hub.clone());
    let id = q.id;
    let ids = id.to_string();
    let (rev, duplicate) = c
        .db_write(move |st| {
            let (rev, already) = st.server().delete_conversation(user, &ids)?;
            if !already {
                notify(
                    st,
                    &hub,
                    user,
                    me,
                    Reply::ConversationDeleted(p::ConversationDeleted {
                        id,
                        rev,
                        duplicate: false,
                    }),
                );
            }
            Ok((rev, already))
        })
        .await?;
    Ok(Reply::ConversationDeleted(p::ConversationDeleted {
        id,
        rev,
        duplicate,
    }))
}
