//! The chat server as the LLM (`kind = "server"`): the question goes to the
//! server with `send_message` (the conversation is created there first if
//! needed, both with this device's ids), and the server's streamed reply is
//! spoken. The reply's id is the server's, so the local copy of the turn
//! and the server's are the same records when the history is pushed.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::*;
use crate::config::SyncConfig;
use crate::protocol::{ClientFrame, Reply, Request, ServerFrame, requests as rq};

pub struct ServerLlm {
    name: String,
    sync: SyncConfig,
    timeout: Duration,
}

impl ServerLlm {
    pub fn new(e: &EngineConfig, sync: &SyncConfig) -> Self {
        ServerLlm {
            name: e.name.clone(),
            sync: sync.clone(),
            timeout: e.timeout,
        }
    }

    fn err(&self, message: impl Into<String>) -> EngineError {
        EngineError::Protocol {
            engine: self.name.clone(),
            message: message.into(),
        }
    }
}

fn parse(engine: &str, id: &Option<String>, what: &str) -> Result<uuid::Uuid> {
    id.as_deref()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| EngineError::Config {
            engine: engine.into(),
            message: format!("the server engine needs the {what} id (it answers voice turns only)"),
        })
}

#[async_trait]
impl Llm for ServerLlm {
    fn name(&self) -> &str {
        &self.name
    }

    fn model(&self) -> Option<String> {
        Some(format!("server:{}", self.name))
    }

    async fn chat(&self, req: &ChatRequest) -> Result<EventStream<LlmEvent>> {
        let conv = parse(&self.name, &req.conversation_id, "conversation")?;
        let question = parse(&self.name, &req.question_id, "question")?;
        let content = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == crate::history::Role::User)
            .map(|m| m.content.clone())
            .ok_or_else(|| self.err("no question to send"))?;
        let mut ws = crate::client::connect(&self.sync, self.timeout)
            .await
            .map_err(|e| {
                if e.is_retryable() {
                    EngineError::Connect {
                        engine: self.name.clone(),
                        addr: self
                            .sync
                            .url
                            .as_ref()
                            .map(|u| u.to_string())
                            .unwrap_or_default(),
                        cause: e.to_string(),
                    }
                } else {
                    EngineError::Config {
                        engine: self.name.clone(),
                        message: e.to_string(),
                    }
                }
            })?;
        let frames = [
            Request::Hello(rq::Hello {
                protocol: crate::protocol::PROTOCOL_VERSION,
                client_id: format!("pichat-llm-{}", self.name),
                client_kind: rq::ClientKind::Voice,
                last_rev: None,
            }),
            Request::CreateConversation(rq::CreateConversation {
                id: Some(conv),
                title: req.conversation_title.clone(),
                model_id: None,
            }),
            Request::SendMessage(rq::SendMessage {
                id: Some(question),
                conversation_id: conv,
                content,
                is_audio: req.question_is_audio,
            }),
        ];
        for (i, f) in frames.into_iter().enumerate() {
            let text = ClientFrame::new(Some(format!("l{i}")), f).encode();
            ws.send(WsMessage::text(text))
                .await
                .map_err(|e| self.err(format!("connection lost: {e}")))?;
        }
        let (name, timeout) = (self.name.clone(), self.timeout);
        Ok(EventStream::spawn(move |tx| async move {
            let fail = |m: String| EngineError::Protocol {
                engine: name.clone(),
                message: m,
            };
            loop {
                let next = match tokio::time::timeout(timeout, ws.next()).await {
                    Err(_) => Err(EngineError::Timeout {
                        engine: name.clone(),
                        after: timeout,
                    }),
                    Ok(None) => Err(fail("the server closed the connection".into())),
                    Ok(Some(Err(e))) => Err(fail(format!("connection lost: {e}"))),
                    Ok(Some(Ok(WsMessage::Text(t)))) => {
                        ServerFrame::decode(t.as_str()).map_err(|e| fail(e.to_string()))
                    }
                    Ok(Some(Ok(_))) => continue,
                };
                let f = match next {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                match f.body {
                    Reply::Error(e) => {
                        let err = match e.code.as_str() {
                            "ai_failed" | "unavailable" | "internal" | "rate_limited" => {
                                fail(format!("{}: {}", e.code.as_str(), e.message))
                            }
                            _ => EngineError::Failed {
                                engine: name.clone(),
                                message: format!("{}: {}", e.code.as_str(), e.message),
                            },
                        };
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                    Reply::MessageStream(s) => {
                        if !s.token.is_empty()
                            && tx.send(Ok(LlmEvent::Token(s.token.clone()))).await.is_err()
                        {
                            return;
                        }
                        if s.finished {
                            let _ = tx
                                .send(Ok(LlmEvent::ReplyId(s.message_id.to_string())))
                                .await;
                            if let Some(m) = s.message
                                && let Some(t) = m.tokens_used
                            {
                                let _ = tx
                                    .send(Ok(LlmEvent::Usage {
                                        prompt: 0,
                                        completion: t as u32,
                                    }))
                                    .await;
                            }
                            let _ = ws.close(None).await;
                            return;
                        }
                    }
                    _ => {}
                }
            }
        }))
    }
}
