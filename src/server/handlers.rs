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

use std::sync::Arc;

use super::conn::Session;
use super::hub::Hub;
use crate::history::server::{ConversationUpdate, UserId};
use crate::history::{HistoryError, NewConversation, Origin, Store};
use crate::protocol::{self as p, ErrorCode, ErrorPayload, Frame, Reply, Request, ServerFrame};
use crate::time;

/// What the store's errors mean on the wire (see the module docs).
pub(super) fn db_error(e: HistoryError) -> ErrorPayload {
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
pub(super) fn wire<'a, S: ?Sized, T>(record: &'a S) -> Result<T, ErrorPayload>
where
    T: TryFrom<&'a S, Error = HistoryError>,
{
    T::try_from(record).map_err(db_error)
}

/// Sends a notification (no request id) to the user's other connections,
/// once the change is committed.
pub(super) fn notify(st: &mut Store, hub: &Arc<Hub>, user: UserId, except: u64, body: Reply) {
    let hub = hub.clone();
    st.after_commit(move || {
        hub.notify(user, except, &Frame::new(None, body));
    });
}

impl Session {
    /// Runs a read on a read connection, in turn with this user's other
    /// reads (another user's reads do not wait behind them).
    pub(super) async fn db<T, F>(&self, f: F) -> Result<T, ErrorPayload>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, HistoryError> + Send + 'static,
    {
        self.state
            .db
            .read(self.user() as u64, f)
            .await
            .map_err(db_error)
    }

    /// Runs a write on the store thread, in a group commit with the writes
    /// queued with it; the result comes once it is durable.
    pub(super) async fn db_write<T, F>(&self, f: F) -> Result<T, ErrorPayload>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, HistoryError> + Send + 'static,
    {
        self.state.db.call_batched(f).await.map_err(db_error)
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
        Request::TextToSpeech(req) => super::ai::text_to_speech(s, rid.clone(), req),
        Request::SpeechToText(req) => super::ai::speech_to_text(s, rid.clone(), req),
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
    let me = s.conn.id;
    let hub = s.state.hub.clone();
    match req {
        Request::Hello(h) => {
            let first = s.kind.is_none();
            s.kind = Some(h.client_kind);
            s.state.hub.join(&s.conn);
            let rev = s.db(move |st| st.server().user_rev(user)).await?;
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
            let (list, has_more) = s
                .db(move |st| {
                    st.server().list_conversations(
                        user,
                        q.include_archived,
                        limit,
                        before.as_deref(),
                    )
                })
                .await?;
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
            let (conv, duplicate) = s
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
        Request::GetConversation(q) => {
            let id = q.id.to_string();
            let c = s
                .db(move |st| st.server().get_conversation(user, &id))
                .await?;
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
            let c = s
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
                conversation: wire(&c)?,
                duplicate: false,
            }))
        }
        Request::DeleteConversation(q) => {
            let id = q.id;
            let ids = id.to_string();
            let (rev, duplicate) = s
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
        Request::GetMessages(q) => {
            let limit = p::limits::page(
                q.limit,
                p::limits::MESSAGES_DEFAULT_LIMIT,
                p::limits::MESSAGES_MAX_LIMIT,
            ) as usize;
            let conv = q.conversation_id.to_string();
            let before = q.before.map(|b| b.to_string());
            let mut budget = p::limits::PageBudget::default();
            let (list, has_more) = s
                .db(move |st| {
                    st.server()
                        .messages_within(user, &conv, limit, before.as_deref(), &mut |m| {
                            p::Message::try_from(m).is_ok_and(|m| budget.fits(&m))
                        })
                })
                .await?;
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
            let hits = s
                .db(move |st| {
                    st.server()
                        .search_within(user, &q.query, conv.as_deref(), limit, &mut |h| {
                            p::Message::try_from(&h.message).is_ok_and(|m| {
                                budget.fits(&m)
                                    && budget.fits(&h.snippet)
                                    && budget.fits(&h.conversation_title)
                            })
                        })
                })
                .await?;
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
            let out = s
                .db_write(move |st| {
                    let out = st.server().append_messages(user, &batch)?;
                    for m in &out.stored {
                        notify(
                            st,
                            &hub,
                            user,
                            me,
                            Reply::NewMessage(p::MessagePayload {
                                message: m.try_into()?,
                                duplicate: false,
                            }),
                        );
                    }
                    Ok(out)
                })
                .await?;
            let id = |s: &str| p::convert::store_id("message", s).map_err(db_error);
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
            let page = s
                .db(move |st| {
                    st.server().changes_within(user, q.since, limit, &mut |c| {
                        p::Change::try_from(c).is_ok_and(|c| budget.fits(&c))
                    })
                })
                .await?;
            Ok(Reply::SyncBatch(p::SyncBatch {
                changes: page.changes.iter().map(wire).collect::<Result<_, _>>()?,
                rev: page.rev,
                has_more: page.has_more,
            }))
        }
        Request::GetSettings(_) => {
            let st = s.db(move |st| st.server().settings(user)).await?;
            Ok(Reply::Settings(p::SettingsPayload {
                settings: (&st).into(),
            }))
        }
        Request::UpdateSettings(u) => {
            let upd = (&u).into();
            let settings = s
                .db_write(move |st| {
                    let (set, changed) = st.server().update_settings(user, &upd)?;
                    if changed {
                        notify(
                            st,
                            &hub,
                            user,
                            me,
                            Reply::SettingsUpdated(p::SettingsPayload {
                                settings: (&set).into(),
                            }),
                        );
                    }
                    Ok(set)
                })
                .await?;
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
