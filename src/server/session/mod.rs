//! A connection's session: every text frame the socket's reader gets is
//! decoded here, checked against the connection's request rate, routed to
//! the handler of its request's type, answered, and counted (metrics: by
//! action and result code).
//!
//! Routing is by type: [`Request`] has one variant per action, declared
//! once with its action name in `protocol/mod.rs`, and [`route`] matches
//! every variant, with no catch-all, into the function that takes that
//! variant's payload. An action added to the protocol does not compile
//! until it has a handler; a request cannot reach another's handler.
//!
//! The rooms of this one, each a group of actions (functions over a
//! [`Client`], the connection as the actions see it, `client.rs`):
//!
//! - `hello.rs`: `hello`, `ping`;
//! - `conversations.rs`: list, create, get, update, delete;
//! - `messages.rs`: `get_messages`, `search`, `append_messages`;
//! - `sync.rs`: `sync`;
//! - `settings.rs`: `get_settings`, `update_settings`;
//! - `chat.rs`: `send_message` (an LLM reply streamed, as a job);
//! - `speech.rs`: `text_to_speech`, `speech_to_text` (jobs);
//!
//! and what they share: `db.rs` (store errors on the wire, notifications
//! after the commit), `jobs.rs` (a connection's jobs and where their
//! replies go). Dependencies go one way: this file → the action groups →
//! `client.rs` → `jobs.rs`, `db.rs`; none of them imports this file.

mod chat;
mod client;
mod conversations;
mod db;
mod hello;
mod jobs;
mod messages;
mod settings;
mod speech;
mod sync;

use std::sync::Arc;

use client::Client;
use jobs::Jobs;

use super::conn::Conn;
use super::limiter::Bucket;
use super::state::State;
use crate::protocol::{
    Body, ClientFrame, ErrorCode, ErrorPayload, Frame, Reply, Request, ServerFrame,
};

/// The reader's side of a connection: what it knows about the client, and
/// the connection's own request rate.
pub(crate) struct Session {
    client: Client,
    limiter: Bucket,
}

/// How a handler answered.
#[allow(clippy::large_enum_variant)] // moved once, never stored
enum Answer {
    /// With this one reply (sent by [`Session::run`]).
    Reply(Reply),
    /// By itself: a job was started, or the replies were sent.
    Sent,
}

impl Session {
    pub fn new(state: Arc<State>, conn: Arc<Conn>) -> Session {
        Session {
            limiter: Bucket::new(
                state.opts.request_burst,
                f64::from(state.opts.requests_per_sec),
            ),
            client: Client::new(state, conn),
        }
    }

    pub fn conn(&self) -> &Arc<Conn> {
        &self.client.conn
    }

    /// This connection's jobs (waited for at shutdown).
    pub fn jobs(&self) -> &Jobs {
        &self.client.jobs
    }

    /// Handles one text frame; false when the connection must close.
    pub async fn handle_text(&mut self, text: &str) -> bool {
        let c = &mut self.client;
        match ClientFrame::decode(text) {
            Err(e) => {
                // Not decoded: counted under the action it named, if known.
                let named = e
                    .action
                    .as_deref()
                    .and_then(|a| Request::ACTIONS.iter().find(|k| **k == a))
                    .copied()
                    .unwrap_or("(undecoded)");
                c.state.metrics.action(named, &e.code.to_string());
                c.conn
                    .send(&ServerFrame::error(e.request_id.clone(), e.payload()))
                    .await;
                if let Some(code) = e.close {
                    c.conn.close_after_queue(code, &e.code.to_string()).await;
                    return false;
                }
            }
            Ok(frame) => {
                if let Err(wait) = self.limiter.take() {
                    let action = frame.body.action();
                    c.state.metrics.action(action, "rate_limited");
                    c.audit_rate_limited(action, "server's per-connection request rate");
                    let e = ErrorPayload {
                        retry_after_ms: Some(wait.as_millis().max(1) as u64),
                        ..ErrorPayload::new(
                            ErrorCode::RateLimited,
                            "too many requests on this connection; slow down",
                        )
                        .for_action(action)
                    };
                    c.conn.send(&ServerFrame::error(frame.request_id, e)).await;
                } else {
                    self.run(frame).await;
                }
            }
        }
        !self.client.conn.is_dead()
    }

    /// Runs one decoded request and sends its reply (or error).
    async fn run(&mut self, frame: ClientFrame) {
        let c = &mut self.client;
        let action = frame.body.action();
        let rid = frame.request_id;
        let result = match route(c, &rid, frame.body).await {
            Ok(Answer::Reply(reply)) => {
                c.conn.send(&Frame::new(rid.clone(), reply)).await;
                Ok(())
            }
            Ok(Answer::Sent) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => c.state.metrics.action(action, "ok"),
            Err(e) => {
                c.state.metrics.action(action, &e.code.to_string());
                c.conn
                    .send(&ServerFrame::error(rid, e.for_action(action)))
                    .await;
            }
        }
    }
}

/// The handler of each request, by its type (see the module docs).
async fn route(
    c: &mut Client,
    rid: &Option<String>,
    body: Request,
) -> Result<Answer, ErrorPayload> {
    use Answer::Reply as R;
    Ok(match body {
        Request::Hello(q) => R(hello::hello(c, q).await?),
        Request::Ping(_) => R(hello::pong()),
        Request::GetConversations(q) => R(conversations::list(c, q).await?),
        Request::CreateConversation(q) => R(conversations::create(c, q).await?),
        Request::GetConversation(q) => R(conversations::get(c, q).await?),
        Request::UpdateConversation(q) => R(conversations::update(c, q).await?),
        Request::DeleteConversation(q) => R(conversations::delete(c, q).await?),
        Request::GetMessages(q) => R(messages::page(c, q).await?),
        Request::Search(q) => R(messages::search(c, q).await?),
        Request::AppendMessages(q) => R(messages::append(c, q).await?),
        Request::Sync(q) => R(sync::changes(c, q).await?),
        Request::GetSettings(_) => R(settings::get(c).await?),
        Request::UpdateSettings(q) => R(settings::update(c, q).await?),
        // Jobs: they answer by themselves, from their own tasks.
        Request::SendMessage(q) => {
            chat::send_message(c, rid.clone(), q).await?;
            Answer::Sent
        }
        Request::TextToSpeech(q) => {
            speech::text_to_speech(c, rid.clone(), q).await?;
            Answer::Sent
        }
        Request::SpeechToText(q) => {
            speech::speech_to_text(c, rid.clone(), q).await?;
            Answer::Sent
        }
    })
}
