//! The records both databases store — messages, what a caller gives to
//! create a conversation or a message, search hits, the LLM context — and
//! the checks and text helpers both apply. `Role` and `Origin` are the
//! protocol's (`protocol::records`): the stores keep their text form.

use serde::{Deserialize, Serialize};

pub use crate::protocol::records::{Origin, Role};
use crate::time;

use super::{Result, StoreError};

/// Longest conversation title, in characters (as in the protocol).
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest message, in characters (as in the protocol).
pub const MAX_CONTENT_CHARS: usize = 32_000;

fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_empty_meta(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
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

/// One full-text search result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub message: Message,
    pub conversation_title: String,
    pub snippet: String,
}

/// One message of the context sent to the LLM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Makes a new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Checks that `id` is a UUID and returns it in canonical (lowercase, hyphenated) form.
pub fn check_id(what: &str, id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| StoreError::Invalid(format!("{what} \"{id}\" is not a UUID")))
}

pub fn check_title(title: &str) -> Result<String> {
    let t = title.trim();
    let n = t.chars().count();
    if n == 0 || n > MAX_TITLE_CHARS {
        return Err(StoreError::Invalid(format!(
            "a title must have 1 to {MAX_TITLE_CHARS} characters (got {n})"
        )));
    }
    Ok(t.to_string())
}

pub fn check_content(content: &str) -> Result<()> {
    let n = content.chars().count();
    if content.trim().is_empty() || n > MAX_CONTENT_CHARS {
        return Err(StoreError::Invalid(format!(
            "a message must have 1 to {MAX_CONTENT_CHARS} characters (got {n})"
        )));
    }
    Ok(())
}

pub(crate) fn meta_to_sql(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(o)) if o.is_empty() => None,
        Some(v) => Some(v.to_string()),
    }
}

pub(crate) fn meta_from_sql(s: Option<String>) -> serde_json::Value {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Object(Default::default()))
}

/// A default title from the first words of a text.
pub fn title_from(text: &str) -> String {
    let mut t = String::new();
    for w in text.split_whitespace() {
        if t.chars().count() + w.chars().count() + 1 > 60 {
            t.push('…');
            break;
        }
        if !t.is_empty() {
            t.push(' ');
        }
        t.push_str(w);
    }
    if t.is_empty() {
        "New conversation".into()
    } else {
        t
    }
}

/// Highlight markers put around matched words in snippets.
pub const MARK_START: &str = "[";
pub const MARK_END: &str = "]";

/// Turns what a user typed into an FTS5 query: every word must match, in any
/// order; FTS5 operators and quotes are taken literally.
pub fn fts_query(input: &str) -> Result<String> {
    let words: Vec<String> = input
        .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '_')
        .filter(|w| !w.trim_matches('\'').is_empty())
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        return Err(StoreError::Invalid(
            "the search query is empty: give at least one word".into(),
        ));
    }
    Ok(words.join(" "))
}

/// Rough token count of a text for context budgeting: about 4 characters a
/// token, plus a few tokens of per-message overhead in chat formats.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4) + 4
}

/// An id a store gave out, as the protocol's UUID: it cannot fail unless
/// the database was damaged, and then it is an error
/// ([`StoreError::BadStoredId`], `internal` on the wire), never a made-up id.
pub fn store_id(what: &'static str, s: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(s).map_err(|_| StoreError::BadStoredId {
        what,
        id: s.to_string(),
    })
}
