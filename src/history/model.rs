//! The records of the history: conversations and messages, as the store returns
//! them and as the JSON export writes them.

use serde::{Deserialize, Serialize};

use crate::time;

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

fn is_empty_meta(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
}

/// A conversation (a "session" in the original design).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
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
    #[serde(default, skip_serializing_if = "is_empty_meta")]
    pub metadata: serde_json::Value,
    /// Server revision of the last change (0: never synced).
    #[serde(default)]
    pub rev: i64,
}

/// A message in a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
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
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_audio: bool,
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_meta")]
    pub metadata: serde_json::Value,
    #[serde(default)]
    pub rev: i64,
}

/// What a caller gives to create a conversation.
#[derive(Debug, Clone, Default)]
pub struct NewConversation {
    /// Client-made id; a UUIDv7 is made when `None`.
    pub id: Option<String>,
    pub title: Option<String>,
    pub model_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// Creation time in ms since the epoch; now when `None`.
    pub created_at: Option<i64>,
}

/// What a caller gives to append a message.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Option<String>,
    pub conversation_id: String,
    pub role: Role,
    pub content: String,
    pub created_at: Option<i64>,
    pub model_id: Option<String>,
    pub tokens_used: Option<i64>,
    pub response_time_ms: Option<i64>,
    pub is_audio: bool,
    pub origin: Origin,
    pub reply_to: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl NewMessage {
    pub fn new(conversation_id: &str, role: Role, content: impl Into<String>) -> Self {
        NewMessage {
            id: None,
            conversation_id: conversation_id.to_string(),
            role,
            content: content.into(),
            created_at: None,
            model_id: None,
            tokens_used: None,
            response_time_ms: None,
            is_audio: false,
            origin: Origin::Voice,
            reply_to: None,
            metadata: None,
        }
    }
}

/// A change to an existing message; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct MessageUpdate {
    pub content: Option<String>,
    pub model_id: Option<String>,
    pub tokens_used: Option<i64>,
    pub response_time_ms: Option<i64>,
    pub metadata: Option<serde_json::Value>,
}

/// Which conversations a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchivedFilter {
    #[default]
    Active,
    Archived,
    All,
}

/// A page of the conversation list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub filter: ArchivedFilter,
    pub limit: usize,
    pub offset: usize,
    /// Keyset cursor: only conversations whose activity is older than this
    /// (as returned in [`ConversationPage::next`]).
    pub before: Option<Cursor>,
}

/// Position in the conversation list (last activity, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub activity_at: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}_{}", self.activity_at, self.id)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (a, id) = s.split_once('_')?;
        Some(Cursor {
            activity_at: a.parse().ok()?,
            id: id.to_string(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationPage {
    pub conversations: Vec<Conversation>,
    /// Cursor for the next page, when there may be one.
    pub next: Option<String>,
}

/// One full-text search result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub message: Message,
    pub conversation_title: String,
    pub snippet: String,
}

/// Figures for one conversation or the whole history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    pub conversations: i64,
    pub archived_conversations: i64,
    pub messages: i64,
    pub user_messages: i64,
    pub assistant_messages: i64,
    pub tokens_used: i64,
    pub avg_response_time_ms: Option<f64>,
    #[serde(with = "time::rfc3339_opt")]
    pub first_message_at: Option<i64>,
    #[serde(with = "time::rfc3339_opt")]
    pub last_message_at: Option<i64>,
}

/// What `cleanup` does with idle conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupAction {
    Archive,
    Delete,
}

/// One message of the context sent to the LLM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}
