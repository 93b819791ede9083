//! The records of the history: conversations and messages, as the store returns
//! them and as the JSON export writes them.

use serde::{Deserialize, Serialize};

use crate::time;

pub use crate::store::model::*;

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
