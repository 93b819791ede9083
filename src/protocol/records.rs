//! The records the protocol carries: conversation, message, settings, and a
//! `sync_batch` change. Both directions: the server serializes them, a client
//! (the daemon's sync) deserializes them, and vice versa for the inputs.
//!
//! Times are `i64` milliseconds since the epoch in memory and RFC 3339 UTC
//! with milliseconds and `Z` on the wire ([`crate::time`]). Ids are UUIDs.
//! Unknown fields are ignored when reading.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "system" => Some(Role::System),
            _ => None,
        }
    }
}

/// Which kind of client made a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Web,
    Voice,
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Web => "web",
            Origin::Voice => "voice",
            Origin::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Origin> {
        match s {
            "web" => Some(Origin::Web),
            "voice" => Some(Origin::Voice),
            "api" => Some(Origin::Api),
            _ => None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A conversation as the server sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: Uuid,
    pub title: String,
    #[serde(with = "time::rfc3339")]
    pub created_at: i64,
    #[serde(with = "time::rfc3339")]
    pub updated_at: i64,
    #[serde(default, with = "time::rfc3339_opt")]
    pub last_message_at: Option<i64>,
    #[serde(default)]
    pub message_count: i64,
    #[serde(default)]
    pub archived: bool,
    /// The model for AI replies in this conversation (null: the user's
    /// `selected_model`, else the server's first engine).
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub rev: i64,
    /// A tombstone: only `true` in `sync_batch` deletes and
    /// `conversation_deleted` notifications.
    #[serde(default)]
    pub deleted: bool,
    /// Where its messages were made (`voice`, `web`, `api`; each once): the
    /// web app's marks. Absent when it has no messages (PROTOCOL-NOTES.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<Origin>,
}

/// A message as the server sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: Role,
    pub content: String,
    #[serde(with = "time::rfc3339")]
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_used: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time_ms: Option<i64>,
    #[serde(default)]
    pub is_audio: bool,
    pub origin: Origin,
    #[serde(default)]
    pub reply_to: Option<Uuid>,
    #[serde(default)]
    pub rev: i64,
}

/// A message a client uploads with `append_messages` (answered elsewhere,
/// e.g. by the device's own LLM). `rev` and unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageInput {
    /// Required: the client made the message, so it has its id.
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: Role,
    pub content: String,
    /// Absent: the time the server stores it.
    #[serde(
        default,
        with = "time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_used: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_audio: bool,
    /// Absent: the `client_kind` the connection said in `hello` (else `api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Uuid>,
}

/// The voice a client should speak with (stored per user; see
/// PROTOCOL-NOTES.md for what the server's own `text_to_speech` does with it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VoiceSettings {
    #[serde(default)]
    pub gender: Option<String>,
    #[serde(default)]
    pub accent: Option<String>,
    #[serde(default)]
    pub speed: Option<f64>,
}

/// A user's settings (one record per user; `rev` 0 until first changed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub selected_model: Option<String>,
    #[serde(default)]
    pub voice_settings: VoiceSettings,
    /// The system prompt of AI replies (null: the server's default).
    #[serde(default)]
    pub assistant_personality: Option<String>,
    #[serde(default)]
    pub rev: i64,
}

/// What a `sync_batch` change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Upsert,
    Delete,
}

/// The record of a change, tagged by `entity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entity", content = "record", rename_all = "snake_case")]
pub enum ChangeRecord {
    Conversation(Conversation),
    Message(Message),
    Settings(Settings),
}

/// One change of a `sync_batch`:
/// `{"rev":..,"entity":..,"op":"upsert"|"delete","record":{..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub rev: i64,
    pub op: Op,
    #[serde(flatten)]
    pub record: ChangeRecord,
}

/// One `search` hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub message: Message,
    /// The matching text, matched words between `[` and `]`, cut with `…`.
    pub snippet: String,
    #[serde(default)]
    pub conversation_title: String,
}

/// A message `append_messages` did not store, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub id: Uuid,
    pub code: super::ErrorCode,
    pub message: String,
}
