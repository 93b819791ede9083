//! Server → client payloads: direct replies and notifications.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::records::{Change, Conversation, Message, Rejected, SearchHit, Settings};
use super::requests::Payload;
use crate::time;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Reply to `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    /// The user's current revision: a client whose cursor is lower should `sync`.
    pub rev: i64,
    #[serde(with = "time::rfc3339")]
    pub server_time: i64,
    /// What this server offers: see [`super::features`].
    pub features: Vec<String>,
    /// The LLM engines AI replies can use, in the server's fallback order:
    /// what `settings.selected_model` or a conversation's `model_id` may
    /// name (PROTOCOL-NOTES.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelInfo>,
}

/// One LLM engine of the server, as `welcome.models` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The engine's name in the server's config.
    pub engine: String,
    /// The model it asks for, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationsList {
    pub conversations: Vec<Conversation>,
    /// More conversations follow: ask again with `before` = the last id.
    #[serde(default)]
    pub has_more: bool,
}

/// `conversation_created`, `conversation`, `conversation_updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationPayload {
    pub conversation: Conversation,
    /// The id existed already: nothing was created (idempotent retry).
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationDeleted {
    pub id: Uuid,
    pub rev: i64,
    /// It was deleted already (idempotent retry); `rev` is the tombstone's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesList {
    pub conversation_id: Uuid,
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Older messages exist: ask again with `before` = the first id.
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    /// Best matches first.
    pub hits: Vec<SearchHit>,
}

/// `message_sent` (reply) and `new_message` (notification).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagePayload {
    pub message: Message,
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypingIndicator {
    pub conversation_id: Uuid,
    pub is_typing: bool,
}

/// One piece of a streamed AI reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageStream {
    pub conversation_id: Uuid,
    /// The id the assistant message is stored under.
    pub message_id: Uuid,
    /// The user message answered.
    pub reply_to: Uuid,
    /// 0, 1, 2… in order.
    pub seq: u64,
    /// The text since the previous frame. On the last frame: what was not
    /// sent yet (empty after a live stream; the whole reply when a stored
    /// reply is re-sent).
    pub token: String,
    pub finished: bool,
    /// On the last frame: the stored assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// On the last frame: the reply was cut (engine failed or stalled
    /// mid-reply, server shutting down, length limit); what came is stored.
    #[serde(default, skip_serializing_if = "is_false")]
    pub interrupted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesAppended {
    pub stored: Vec<Uuid>,
    pub duplicates: Vec<Uuid>,
    /// Messages not stored (unknown conversation, conflicting id, bad content).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejected>,
    /// The user's revision after the batch.
    pub rev: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncBatch {
    /// Ascending by `rev`, each row once at its latest state (see
    /// PROTOCOL-NOTES.md for conversations sent ahead of their messages).
    pub changes: Vec<Change>,
    /// The new cursor: the last rev in this page (`since` when empty).
    pub rev: i64,
    pub has_more: bool,
}

/// `settings` (reply) and `settings_updated` (reply and notification).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsPayload {
    pub settings: Settings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextToSpeechResult {
    /// A mono 16-bit PCM WAV file, base64 (standard alphabet).
    pub audio_data: String,
    pub sample_rate: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechToTextResult {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    #[serde(with = "time::rfc3339")]
    pub server_time: i64,
}

macro_rules! payloads {
    ($($t:ty),* $(,)?) => { $(impl Payload for $t {})* };
}

payloads!(
    Welcome,
    ConversationsList,
    ConversationPayload,
    ConversationDeleted,
    MessagesList,
    SearchResults,
    MessagePayload,
    TypingIndicator,
    MessageStream,
    MessagesAppended,
    SyncBatch,
    SettingsPayload,
    TextToSpeechResult,
    SpeechToTextResult,
    Pong,
    super::ErrorPayload,
);
