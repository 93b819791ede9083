//! Offline-first sync of the local history with the chat server.
//!
//! A session: connect with the device token, `hello`, pull every change
//! since the stored cursor with `sync` (each page and its cursor applied in
//! one local transaction), push the outbox (conversations created, renamed,
//! archived or deleted here, and voice turns, with their client ids), then
//! stay connected: apply notifications (pulling again on a rev gap), push
//! whenever a turn is stored, keep the connection alive. Any failure ends
//! the session; [`run`] reconnects with capped exponential backoff and
//! jitter. The voice turn never waits on any of this: it only writes to
//! the local store and kicks the sync.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::config::SyncConfig;
use crate::history::HistoryHandle;
use crate::history::sync::{self as hsync, Remote};
use crate::history::{self, StoreError};
use crate::protocol::{self, ClientFrame, Reply, Request, ServerFrame, requests as rq};

use crate::client::{ClientError, Ws};

/// Messages read from the outbox per round (the protocol takes 500 per
/// `append_messages`; the round is cut into frames the server takes).
const PUSH_BATCH: usize = 500;
/// Content bytes read from the outbox per round: a few frames' worth.
const PUSH_BYTES: usize = 4 * protocol::limits::MAX_FRAME;
/// Changes asked per `sync` page (the server also stops a page at
/// `limits::MAX_PAGE_BYTES`).
const PAGE: u32 = 2000;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Reaching the server: off, no token, refused, unreachable, silent.
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("connection to the server lost: {0}")]
    Lost(String),
    #[error("the server answered {action}: {message}")]
    Refused { action: String, message: String },
    #[error("unexpected from the server: {0}")]
    Protocol(String),
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    History(#[from] StoreError),
}

impl SyncError {
    /// Retrying later may help (a network or server problem).
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Client(e) => e.is_retryable(),
            _ => true,
        }
    }
}

type Result<T, E = SyncError> = std::result::Result<T, E>;

/// What a session did, for `pichat sync` and the log.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub pulled: usize,
    pub pushed_messages: usize,
    pub pushed_conversations: usize,
    pub pushed_deletes: usize,
    pub dropped_unsent: usize,
    pub cursor: i64,
}

/// A connection to the server for the sync.
pub struct Session {
    ws: Ws,
    history: HistoryHandle,
    next_id: u64,
    timeout: Duration,
    pub report: Report,
    cursor: i64,
}

/// Opens a WebSocket to the server with the device token.
pub async fn connect(cfg: &SyncConfig, timeout: Duration) -> Result<Ws> {
    Ok(crate::client::connect(cfg, timeout).await?)
}

fn conv_to_remote(c: &protocol::records::Conversation) -> Remote {
    Remote::Conversation {
        c: history::Conversation {
            id: c.id.to_string(),
            title: c.title.clone(),
            model_id: c.model_id.clone(),
            user_id: None,
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_message_at: c.last_message_at,
            message_count: c.message_count,
            archived: c.archived,
            metadata: serde_json::Value::Null,
            rev: c.rev,
        },
        deleted: c.deleted,
    }
}

fn change_to_remote(ch: &protocol::records::Change) -> Remote {
    use protocol::records::{ChangeRecord, Op};
    match &ch.record {
        ChangeRecord::Conversation(c) => match conv_to_remote(c) {
            Remote::Conversation { c, deleted } => Remote::Conversation {
                c,
                deleted: deleted || ch.op == Op::Delete,
            },
            other => other,
        },
        ChangeRecord::Message(m) => Remote::Message(history::Message::from(m)),
        ChangeRecord::Settings(s) => Remote::Settings(serde_json::to_value(s).unwrap_or_default()),
    }
}

/// The rev a notification carries, and its change.
fn notification(body: &Reply) -> Option<(i64, Remote)> {
    match body {
        Reply::ConversationCreated(p) | Reply::ConversationUpdated(p) => {
            Some((p.conversation.rev, conv_to_remote(&p.conversation)))
        }
        Reply::NewMessage(p) => Some((
            p.message.rev,
            Remote::Message(history::Message::from(&p.message)),
        )),
        Reply::ConversationDeleted(d) => {
            let mut c = protocol::records::Conversation {
                id: d.id,
                title: "deleted".into(),
                created_at: 0,
                updated_at: 0,
                last_message_at: None,
                message_count: 0,
                archived: false,
                model_id: None,
                rev: d.rev,
                deleted: true,
                origins: Vec::new(),
            };
            c.deleted = true;
            Some((d.rev, conv_to_remote(&c)))
        }
        Reply::SettingsUpdated(p) => Some((
            p.settings.rev,
            Remote::Settings(serde_json::to_value(&p.settings).unwrap_or_default()),
        )),
        _ => None,
    }
}

impl Session {
    /// Connects and says hello.
    pub async fn open(cfg: &SyncConfig, history: HistoryHandle) -> Result<Session> {
        let timeout = Duration::from_secs(15).max(cfg.keepalive);
        let ws = connect(cfg, timeout).await?;
        let (client_id, cursor) = history
            .call(|s| Ok((s.client_id()?, s.sync_cursor()?)))
            .await?;
        let mut s = Session {
            ws,
            history,
            next_id: 0,
            timeout,
            report: Report::default(),
            cursor,
        };
        let hello = rq::Hello {
            protocol: protocol::PROTOCOL_VERSION,
            client_id,
            client_kind: rq::ClientKind::Voice,
            last_rev: Some(cursor),
        };
        match s.request(Request::Hello(hello)).await? {
            Reply::Welcome(_) => Ok(s),
            other => Err(SyncError::Protocol(format!(
                "expected welcome, got {}",
                other.action()
            ))),
        }
    }

    async fn send(&mut self, frame: ClientFrame) -> Result<()> {
        tokio::time::timeout(self.timeout, self.ws.send(WsMessage::text(frame.encode())))
            .await
            .map_err(|_| SyncError::Timeout(self.timeout))?
            .map_err(|e| SyncError::Lost(e.to_string()))
    }

    /// The next frame from the server (pings are answered by the library).
    async fn recv(&mut self, wait: Duration) -> Result<ServerFrame> {
        loop {
            let m = tokio::time::timeout(wait, self.ws.next())
                .await
                .map_err(|_| SyncError::Timeout(wait))?
                .ok_or_else(|| SyncError::Lost("closed by the server".into()))?
                .map_err(|e| SyncError::Lost(e.to_string()))?;
            match m {
                WsMessage::Text(t) => {
                    return ServerFrame::decode(t.as_str())
                        .map_err(|e| SyncError::Protocol(e.to_string()));
                }
                WsMessage::Close(c) => {
                    return Err(SyncError::Lost(format!("closed by the server ({c:?})")));
                }
                _ => {}
            }
        }
    }

    /// Sends a request and waits for its reply; notifications arriving
    /// meanwhile are applied. A `rate_limited` answer is waited out and the
    /// request sent again.
    async fn request(&mut self, body: Request) -> Result<Reply> {
        let action = body.action();
        for _ in 0..100 {
            self.next_id += 1;
            let id = format!("s{}", self.next_id);
            self.send(ClientFrame::new(Some(id.clone()), body.clone()))
                .await?;
            let reply = loop {
                let f = self.recv(self.timeout).await?;
                if f.request_id.as_deref() == Some(id.as_str()) {
                    break f.body;
                }
                self.on_notification(f).await?;
            };
            match reply {
                Reply::Error(e) if e.code == protocol::ErrorCode::RateLimited => {
                    let wait =
                        Duration::from_millis(e.retry_after_ms.unwrap_or(1000).clamp(10, 60_000));
                    tokio::time::sleep(wait).await;
                }
                Reply::Error(e) => {
                    return Err(SyncError::Refused {
                        action: action.into(),
                        message: format!("{}: {}", e.code.as_str(), e.message),
                    });
                }
                other => return Ok(other),
            }
        }
        Err(SyncError::Refused {
            action: action.into(),
            message: "rate_limited: the server keeps refusing; giving up for now".into(),
        })
    }

    async fn on_notification(&mut self, f: ServerFrame) -> Result<()> {
        let Some((rev, change)) = notification(&f.body) else {
            return Ok(());
        };
        if rev <= self.cursor {
            return Ok(());
        }
        if rev == self.cursor + 1 {
            self.apply(vec![change], rev).await
        } else {
            // A gap: something was missed; catch up from the cursor.
            Box::pin(self.pull()).await
        }
    }

    async fn apply(&mut self, changes: Vec<Remote>, cursor: i64) -> Result<()> {
        let n = changes.len();
        let a = self
            .history
            .call(move |s| s.apply_remote(&changes, cursor))
            .await?;
        if a.dropped_unsent > 0 {
            tracing::warn!(
                "sync: {} message(s) not yet sent were dropped with conversations deleted on the server",
                a.dropped_unsent
            );
        }
        self.report.pulled += n;
        self.report.dropped_unsent += a.dropped_unsent;
        self.cursor = self.cursor.max(cursor);
        self.report.cursor = self.cursor;
        Ok(())
    }

    /// Pulls every change since the cursor, page by page.
    pub async fn pull(&mut self) -> Result<()> {
        loop {
            let req = rq::SyncRequest {
                since: self.cursor,
                limit: Some(PAGE),
            };
            let batch = match self.request(Request::Sync(req)).await? {
                Reply::SyncBatch(b) => b,
                other => {
                    return Err(SyncError::Protocol(format!(
                        "expected sync_batch, got {}",
                        other.action()
                    )));
                }
            };
            let changes: Vec<Remote> = batch.changes.iter().map(change_to_remote).collect();
            let rev = batch.rev.max(self.cursor);
            self.apply(changes, rev).await?;
            if !batch.has_more {
                return Ok(());
            }
        }
    }

    /// Pushes everything waiting: conversations first (messages need them),
    /// then deletes, then messages in batches.
    pub async fn push(&mut self) -> Result<()> {
        loop {
            let out = self
                .history
                .call(|s| s.outbox(PUSH_BATCH, PUSH_BYTES))
                .await?;
            if out.is_empty() {
                return Ok(());
            }
            for (c, fields) in &out.conversations {
                let (c, fields) = (c, *fields);
                let id = parse_id(&c.id)?;
                let rev = if c.rev == 0 {
                    let body = rq::CreateConversation {
                        id: Some(id),
                        title: Some(c.title.clone()),
                        model_id: c.model_id.clone(),
                    };
                    let rev = match self.request(Request::CreateConversation(body)).await? {
                        Reply::ConversationCreated(p) => p.conversation.rev,
                        other => {
                            return Err(SyncError::Protocol(format!(
                                "expected conversation_created, got {}",
                                other.action()
                            )));
                        }
                    };
                    // Archived (or renamed) here before it was ever pushed.
                    if c.archived || fields != 0 {
                        self.update(c, id, fields | 2).await?.max(rev)
                    } else {
                        rev
                    }
                } else {
                    self.update(c, id, fields).await?
                };
                let (cid, at) = (c.id.clone(), c.updated_at);
                self.history
                    .call(move |s| s.ack_conversation(&cid, at, rev))
                    .await?;
                self.report.pushed_conversations += 1;
            }
            for d in &out.deleted {
                let body = rq::ById { id: parse_id(d)? };
                let rev = match self.request(Request::DeleteConversation(body)).await {
                    Ok(Reply::ConversationDeleted(p)) => p.rev,
                    Ok(other) => {
                        return Err(SyncError::Protocol(format!(
                            "expected conversation_deleted, got {}",
                            other.action()
                        )));
                    }
                    // Never on the server: nothing to delete there.
                    Err(SyncError::Refused { message, .. }) if message.starts_with("not_found") => {
                        0
                    }
                    Err(e) => return Err(e),
                };
                let did = d.clone();
                self.history.call(move |s| s.ack_deleted(&did, rev)).await?;
                self.report.pushed_deletes += 1;
            }
            self.push_messages(&out.messages).await?;
        }
    }

    /// Pushes messages in `append_messages` frames the server takes (cut by
    /// encoded size: a long outage's turns never make one frame too large
    /// to send, which would be refused on every retry).
    async fn push_messages(&mut self, messages: &[(i64, history::Message)]) -> Result<()> {
        let inputs: Vec<protocol::records::MessageInput> = messages
            .iter()
            .map(|(_, m)| protocol::records::MessageInput::try_from(m))
            .collect::<std::result::Result<_, _>>()?;
        for batch in rq::AppendMessages::batches(&inputs) {
            let range = match batch {
                rq::AppendBatch::Send(r) => r,
                rq::AppendBatch::TooLarge(i) => {
                    // Cannot be sent to any server: kept here, never pushed again.
                    tracing::warn!(
                        "sync: message {} is too large for any frame; kept here, not pushed",
                        inputs[i].id
                    );
                    let (done, through) = (vec![messages[i].1.id.clone()], messages[i].0);
                    self.history
                        .call(move |s| s.ack_messages(&done, through, 0))
                        .await?;
                    continue;
                }
            };
            let through = messages[range.end - 1].0;
            let r = match self
                .request(Request::AppendMessages(rq::AppendMessages {
                    messages: inputs[range].to_vec(),
                }))
                .await?
            {
                Reply::MessagesAppended(r) => r,
                other => {
                    return Err(SyncError::Protocol(format!(
                        "expected messages_appended, got {}",
                        other.action()
                    )));
                }
            };
            for rej in &r.rejected {
                tracing::warn!(
                    "sync: the server refused message {}: {}",
                    rej.id,
                    rej.message
                );
            }
            // Stored, already there, or refused for good: none is pushed again.
            let done: Vec<String> = r
                .stored
                .iter()
                .chain(&r.duplicates)
                .chain(r.rejected.iter().map(|x| &x.id))
                .map(|u| u.to_string())
                .collect();
            self.report.pushed_messages += r.stored.len();
            let rev = r.rev;
            self.history
                .call(move |s| s.ack_messages(&done, through, rev))
                .await?;
        }
        Ok(())
    }

    /// Sends the fields of a conversation changed here (bits: 1 title,
    /// 2 archived, 4 model); returns the server's rev.
    async fn update(
        &mut self,
        c: &history::Conversation,
        id: uuid::Uuid,
        fields: u8,
    ) -> Result<i64> {
        if fields == 0 {
            return Ok(c.rev);
        }
        let body = rq::UpdateConversation {
            id,
            title: (fields & 1 != 0).then(|| c.title.clone()),
            archived: (fields & 2 != 0).then_some(c.archived),
            model_id: (fields & 4 != 0).then(|| c.model_id.clone()),
        };
        match self.request(Request::UpdateConversation(body)).await? {
            Reply::ConversationUpdated(p) => Ok(p.conversation.rev),
            other => Err(SyncError::Protocol(format!(
                "expected conversation_updated, got {}",
                other.action()
            ))),
        }
    }

    /// Stays connected: applies notifications, pushes when kicked, pings.
    pub async fn live(
        &mut self,
        kick: &Notify,
        keepalive: Duration,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut ping = tokio::time::interval(keepalive);
        ping.tick().await;
        let mut silent = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.ws.close(None).await;
                    return Ok(());
                }
                _ = kick.notified() => {
                    self.push().await?;
                }
                _ = ping.tick() => {
                    silent += 1;
                    if silent > 2 {
                        return Err(SyncError::Timeout(keepalive * 2));
                    }
                    self.send(ClientFrame::new(None, Request::Ping(rq::Empty {}))).await?;
                }
                f = self.recv(Duration::from_secs(24 * 3600)) => {
                    silent = 0;
                    self.on_notification(f?).await?;
                }
            }
        }
    }
}

fn parse_id(s: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(s).map_err(|_| SyncError::Protocol(format!("bad local id {s}")))
}

fn now_string() -> String {
    crate::time::format(crate::time::now_ms())
}

async fn note(history: &HistoryHandle, r: &Result<()>) {
    let (k, v) = match r {
        Ok(()) => (hsync::LAST_SUCCESS, now_string()),
        Err(e) => (hsync::LAST_ERROR, format!("{} {e}", now_string())),
    };
    let _ = history.call(move |s| s.state_set(k, &v)).await;
}

/// Checks the server: the token is accepted and `hello` is answered
/// (`pichat doctor`). Returns the user's current rev.
pub async fn check(cfg: &SyncConfig) -> Result<i64> {
    let timeout = Duration::from_secs(10);
    let mut ws = connect(cfg, timeout).await?;
    let hello = rq::Hello {
        protocol: protocol::PROTOCOL_VERSION,
        client_id: "pichat-doctor".into(),
        client_kind: rq::ClientKind::Voice,
        last_rev: None,
    };
    ws.send(WsMessage::text(
        ClientFrame::new(Some("d".into()), Request::Hello(hello)).encode(),
    ))
    .await
    .map_err(|e| SyncError::Lost(e.to_string()))?;
    loop {
        let m = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| SyncError::Timeout(timeout))?
            .ok_or_else(|| SyncError::Lost("closed by the server".into()))?
            .map_err(|e| SyncError::Lost(e.to_string()))?;
        if let WsMessage::Text(t) = m {
            let f =
                ServerFrame::decode(t.as_str()).map_err(|e| SyncError::Protocol(e.to_string()))?;
            let _ = ws.close(None).await;
            return match f.body {
                Reply::Welcome(w) => Ok(w.rev),
                Reply::Error(e) => Err(SyncError::Refused {
                    action: "hello".into(),
                    message: format!("{}: {}", e.code.as_str(), e.message),
                }),
                other => Err(SyncError::Protocol(format!(
                    "expected welcome, got {}",
                    other.action()
                ))),
            };
        }
    }
}

/// One sync: connect, pull, push, close (`pichat sync`).
pub async fn once(cfg: &SyncConfig, history: &HistoryHandle) -> Result<Report> {
    let r: Result<Report> = async {
        let mut s = Session::open(cfg, history.clone()).await?;
        s.pull().await?;
        s.push().await?;
        // What was pushed comes back as changes: pull to the newest cursor.
        s.pull().await?;
        let _ = s.ws.close(None).await;
        Ok(s.report)
    }
    .await;
    let outcome: Result<()> = match &r {
        Ok(_) => Ok(()),
        Err(e) => Err(SyncError::Protocol(e.to_string())),
    };
    note(history, &outcome).await;
    r
}

/// Backoff before reconnect attempt `n` (0-based): 1 s doubling to 60 s,
/// with up to 50% random jitter so devices do not reconnect in step.
pub fn backoff(n: u32, jitter: f64) -> Duration {
    let base = 1u64 << n.min(6);
    let capped = base.min(60) as f64;
    Duration::from_secs_f64(capped * (1.0 + 0.5 * jitter.clamp(0.0, 1.0)))
}

/// The sync task of `pichat run`: sessions until `shutdown`, reconnecting
/// after failures. `kick` is notified when something is stored locally.
pub async fn run(
    cfg: SyncConfig,
    history: HistoryHandle,
    kick: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    let mut rng = fastrand::Rng::new();
    loop {
        let result = async {
            let mut s = Session::open(&cfg, history.clone()).await?;
            tracing::info!(
                "sync: connected to {}",
                cfg.url
                    .as_ref()
                    .map(crate::client::shown)
                    .unwrap_or_default()
            );
            failures = 0;
            s.pull().await?;
            s.push().await?;
            note(&history, &Ok(())).await;
            s.live(&kick, cfg.keepalive, &shutdown).await
        }
        .await;
        if shutdown.is_cancelled() {
            return;
        }
        let e = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        note(&history, &Err(SyncError::Protocol(e.to_string()))).await;
        if !e.is_retryable() {
            tracing::error!("sync: {e}; not retrying until the config changes");
            shutdown.cancelled().await;
            return;
        }
        let wait = backoff(failures, rng.f64());
        failures += 1;
        tracing::warn!("sync: {e}; retrying in {:.1} s", wait.as_secs_f64());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            // Something new to push: try at once.
            _ = kick.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(backoff(0, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(20, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(20, 1.0), Duration::from_secs(90));
        assert!(backoff(2, 0.5) > backoff(2, 0.0));
    }
}
