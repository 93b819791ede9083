//! The actions: each request is checked (by the protocol decoder), run
//! against the store (reads on the read connections, writes on the writer
//! thread), answered, and, when it changed something, notified to the
//! user's other connections. `send_message`, `text_to_speech` and
//! `speech_to_text` are in `ai.rs`.
//!
//! What the store's errors mean on the wire ([`db_error`]): a bad request
//! is `bad_request`; a write that was not stored but may be sent again
//! (disk full, commit failed, database busy) is `unavailable` with
//! `retry_after_ms`; anything else (a dead store, a bug, a damaged
//! database) is `internal`, logged.

use super::conn::Session;
use crate::protocol::{self as p, ErrorCode, ErrorPayload, Frame, Reply, Request, ServerFrame};
use crate::serverdb::{Author, ConversationUpdate, ServerStore, UserId};
use crate::store::{NewConversation, Origin, StoreError};
use crate::time;

/// What the store's errors mean on the wire (see the module docs).
pub(super) fn db_error(e: StoreError) -> ErrorPayload {
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
pub(super) fn wire<'a, S: ?Sized, T>(record: &'a S) -> Result<T, ErrorPayload>
where
    T: TryFrom<&'a S, Error = StoreError>,
{
    T::try_from(record).map_err(db_error)
}

impl Session {
    /// The store (reads are taken in turn by user; a write's result comes
    /// once it is durable, and its changes reach the user's other
    /// connections through the store's feed).
    pub(super) fn store(&self) -> &dyn ServerStore {
        &*self.state.db
    }

    /// This connection, as the author of its writes (left out of their
    /// notifications: it has the reply).
    pub(super) fn author(&self) -> Author {
        Author(self.conn.id)
    }

    pub(super) fn user(&self) -> UserId {
        self.conn.user.id
    }

    /// The `origin` of messages this connection makes.
    pub(super) fn origin(&self) -> Origin {
        match self.kind {
            Some(p::ClientKind::Voice) => Origin::Voice,
            Some(p::ClientKind::Web) => Origin::Web,
            Some(p::ClientKind::Api) | None => Origin::Api,
        }
    }
}

/// Runs one decoded request and sends its reply (or error).
pub(super) async fn dispatch(s: &mut Session, frame: p::ClientFrame) {
    let action = frame.body.action();
    let rid = frame.request_id;
    let result = match frame.body {
        Request::SendMessage(req) => super::ai::send_message(s, rid.clone(), req).await,
        Request::TextToSpeech(req) => super::ai::text_to_speech(s, rid.clone(), req).await,
        Request::SpeechToText(req) => super::ai::speech_to_text(s, rid.clone(), req).await,
        other => match run(s, other).await {
            Ok(reply) => {
                s.conn.send(&Frame::new(rid.clone(), reply)).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => s.state.metrics.action(action, "ok"),
        Err(e) => {
            s.state.metrics.action(action, &e.code.to_string());
            s.conn
                .send(&ServerFrame::error(rid, e.for_action(action)))
                .await;
        }
    }
}

async fn run(s: &mut Session, req: Request) -> Result<Reply, ErrorPayload> {
    let user = s.user();
    let by = s.author();
    let db = s.state.db.clone();
    match req {
        Request::Hello(h) => {
            let first = s.kind.is_none();
            s.kind = Some(h.client_kind);
            s.state.hub.join(&s.conn);
            let rev = db.user_rev(user).await.map_err(db_error)?;
            if first {
                tracing::info!(
                    "{}: {:?} client \"{}\" connected (cursor {}, server rev {rev})",
                    s.conn.user.name,
                    h.client_kind,
                    h.client_id,
                    h.last_rev.map_or("none".to_string(), |r| r.to_string())
                );
            }
            let e = &s.state.engines;
            let mut features = vec![
                p::features::SYNC,
                p::features::APPEND,
                p::features::SEARCH,
                p::features::SETTINGS,
            ];
            for (on, name) in [
                (!e.llm.is_empty(), p::features::AI_REPLIES),
                (!e.tts.is_empty(), p::features::TEXT_TO_SPEECH),
                (!e.stt.is_empty(), p::features::SPEECH_TO_TEXT),
            ] {
                if on {
                    features.push(name);
                }
            }
            Ok(Reply::Welcome(p::Welcome {
                protocol: p::PROTOCOL_VERSION,
                rev,
                server_time: time::now_ms(),
                features: features.into_iter().map(str::to_string).collect(),
                models: e
                    .llm
                    .iter()
                    .map(|l| p::ModelInfo {
                        engine: l.name().to_string(),
                        model: l.model(),
                    })
                    .collect(),
            }))
        }
        Request::Ping(_) => Ok(Reply::Pong(p::Pong {
            server_time: time::now_ms(),
        })),
        Request::GetConversations(q) => {
            let limit = p::limits::page(
                q.limit,
                p::limits::CONVERSATIONS_DEFAULT_LIMIT,
                p::limits::CONVERSATIONS_MAX_LIMIT,
            ) as usize;
            let before = q.before.map(|b| b.to_string());
            let (list, has_more) = db
                .list_conversations(user, q.include_archived, limit, before)
                .await
                .map_err(db_error)?;
            Ok(Reply::ConversationsList(p::ConversationsList {
                conversations: list.iter().map(wire).collect::<Result<_, _>>()?,
                has_more,
            }))
        }
        Request::CreateConversation(c) => {
            let new = NewConversation {
                id: c.id.map(|i| i.to_string()),
                title: c.title,
                model_id: c.model_id,
                metadata: None,
                created_at: None,
            };
            let (conv, duplicate) = db
                .create_conversation(by, user, new)
                .await
                .map_err(db_error)?;
            Ok(Reply::ConversationCreated(p::ConversationPayload {
                conversation: wire(&conv)?,
                duplicate,
            }))
        }
        Request::GetConversation(q) => {
            let id = q.id.to_string();
            let c = db.get_conversation(user, &id).await.map_err(db_error)?;
            Ok(Reply::Conversation(p::ConversationPayload {
                conversation: wire(&c)?,
                duplicate: false,
            }))
        }
        Request::UpdateConversation(u) => {
            let id = u.id.to_string();
            let upd = ConversationUpdate {
                title: u.title,
                archived: u.archived,
                model_id: u.model_id,
            };
            let (c, _changed) = db
                .update_conversation(by, user, &id, upd)
                .await
                .map_err(db_error)?;
            Ok(Reply::ConversationUpdated(p::ConversationPayload {
                conversation: wire(&c)?,
                duplicate: false,
            }))
        }
        Request::DeleteConversation(q) => {
            let id = q.id;
            let ids = id.to_string();
            let (rev, duplicate) = db
                .delete_conversation(by, user, &ids)
                .await
                .map_err(db_error)?;
            Ok(Reply::ConversationDeleted(p::ConversationDeleted {
                id,
                rev,
                duplicate,
            }))
        }
        Request::GetMessages(q) => {
            let limit = p::limits::page(
                q.limit,
                p::limits::MESSAGES_DEFAULT_LIMIT,
                p::limits::MESSAGES_MAX_LIMIT,
            ) as usize;
            let conv = q.conversation_id.to_string();
            let before = q.before.map(|b| b.to_string());
            let mut budget = p::limits::PageBudget::default();
            let (list, has_more) = db
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
        Request::Search(q) => {
            let limit = p::limits::page(
                q.limit,
                p::limits::SEARCH_DEFAULT_LIMIT,
                p::limits::SEARCH_MAX_LIMIT,
            ) as usize;
            let conv = q.conversation_id.map(|c| c.to_string());
            let mut budget = p::limits::PageBudget::default();
            let hits = db
                .search(
                    user,
                    &q.query,
                    conv,
                    limit,
                    Box::new(move |h| {
                        p::Message::try_from(&h.message).is_ok_and(|m| {
                            budget.fits(&m)
                                && budget.fits(&h.snippet)
                                && budget.fits(&h.conversation_title)
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
        Request::AppendMessages(a) => {
            let origin = s.origin();
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
            let out = db
                .append_messages(by, user, batch)
                .await
                .map_err(db_error)?;
            let id = |s: &str| crate::store::store_id("message", s).map_err(db_error);
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
        Request::Sync(q) => {
            let limit = p::limits::page(
                q.limit,
                p::limits::SYNC_DEFAULT_LIMIT,
                p::limits::SYNC_MAX_LIMIT,
            ) as usize;
            let mut budget = p::limits::PageBudget::default();
            let page = db
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
        Request::GetSettings(_) => {
            let st = db.settings(user).await.map_err(db_error)?;
            Ok(Reply::Settings(p::SettingsPayload {
                settings: (&st).into(),
            }))
        }
        Request::UpdateSettings(u) => {
            let upd = (&u).into();
            let (settings, _changed) = db.update_settings(by, user, upd).await.map_err(db_error)?;
            Ok(Reply::SettingsUpdated(p::SettingsPayload {
                settings: (&settings).into(),
            }))
        }
        Request::SendMessage(_) | Request::TextToSpeech(_) | Request::SpeechToText(_) => Err(
            ErrorPayload::new(ErrorCode::Internal, "dispatched to the wrong handler"),
        ),
    }
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
