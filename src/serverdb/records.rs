//! The chat server's records, the same for every store: users and their
//! tokens, conversations (tombstones included), settings, the sync feed's
//! changes, and what the writes report.

use crate::store::{Message, Origin, Result, StoreError};
use crate::time;

/// Longest user name.
pub const MAX_USER_CHARS: usize = 64;
/// Longest device name of a token.
pub const MAX_DEVICE_CHARS: usize = 64;
/// `last_used_at` of a token is written at most this often (ms): every
/// connection authenticates, and a write per connection is needless.
pub const LAST_USED_EVERY_MS: i64 = 60_000;

/// Live sessions kept per token; signing in again past this ends the oldest.
pub const MAX_SESSIONS_PER_TOKEN: i64 = 20;

/// A user's id in the server database.
pub type UserId = i64;

/// A device token, as listed (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub user: String,
    pub device: Option<String>,
    #[serde(with = "time::rfc3339")]
    pub created_at: i64,
    #[serde(with = "time::rfc3339_opt")]
    pub last_used_at: Option<i64>,
    #[serde(with = "time::rfc3339_opt")]
    pub revoked_at: Option<i64>,
}

/// The stored token whose hash matched, for the server to compare in
/// constant time and to know who connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMatch {
    pub token_id: i64,
    pub user_id: UserId,
    pub user: String,
    pub hash: Vec<u8>,
}

/// A conversation of the server, tombstones included.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConversation {
    pub id: String,
    pub title: String,
    pub model_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_message_at: Option<i64>,
    pub message_count: i64,
    pub archived: bool,
    pub deleted: bool,
    pub rev: i64,
    /// The rev of its creation.
    pub created_rev: i64,
    /// Where its messages were made (voice, web, api), in that order; each
    /// origin once.
    pub origins: Vec<Origin>,
}

/// A user's settings (all empty and rev 0 until first changed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerSettings {
    pub selected_model: Option<String>,
    pub voice_gender: Option<String>,
    pub voice_accent: Option<String>,
    pub voice_speed: Option<f64>,
    pub assistant_personality: Option<String>,
    pub rev: i64,
}

/// A partial settings change: `None` leaves a field, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsUpdate {
    pub selected_model: Option<Option<String>>,
    pub voice_gender: Option<Option<String>>,
    pub voice_accent: Option<Option<String>>,
    pub voice_speed: Option<Option<f64>>,
    pub assistant_personality: Option<Option<String>>,
}

/// A conversation change: `None` leaves a field, `model_id: Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationUpdate {
    pub title: Option<String>,
    pub archived: Option<bool>,
    pub model_id: Option<Option<String>>,
}

/// A row of the sync feed, at its latest state.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerChange {
    /// An upsert, or a delete when `deleted`.
    Conversation(ServerConversation),
    Message(Message),
    Settings(ServerSettings),
}

impl ServerChange {
    pub fn rev(&self) -> i64 {
        match self {
            ServerChange::Conversation(c) => c.rev,
            ServerChange::Message(m) => m.rev,
            ServerChange::Settings(s) => s.rev,
        }
    }
}

/// A page of the sync feed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangePage {
    pub changes: Vec<ServerChange>,
    /// The cursor after this page: the last rev of the feed in it.
    pub rev: i64,
    pub has_more: bool,
}

/// What storing one message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    New(Message),
    /// The same message was there already (nothing changed).
    Duplicate(Message),
}

impl Stored {
    pub fn message(&self) -> &Message {
        match self {
            Stored::New(m) | Stored::Duplicate(m) => m,
        }
    }
}

/// What `append_messages` did with each message.
#[derive(Debug, Default)]
pub struct AppendOutcome {
    pub stored: Vec<Message>,
    pub duplicates: Vec<String>,
    /// The id as given, and why it was not stored.
    pub rejected: Vec<(String, StoreError)>,
    /// The user's revision after the batch.
    pub rev: i64,
}

/// A user message and the assistant reply to it, if there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageWithReply {
    pub message: Message,
    pub reply: Option<Message>,
}

/// What a reply of the server's LLM is made from: the context (system
/// prompt first, then the conversation up to the question) and the model
/// the conversation or the user's settings prefer.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyContext {
    pub messages: Vec<crate::store::ChatMessage>,
    pub model: Option<String>,
}

/// Checks a user name: 1 to 64 letters, digits, `.`, `_`, `-`, `@`.
pub fn check_user_name(name: &str) -> Result<()> {
    let n = name.chars().count();
    if n == 0
        || n > MAX_USER_CHARS
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(StoreError::Invalid(format!(
            "user name \"{name}\": use 1 to {MAX_USER_CHARS} letters, digits, '.', '_', '-' or '@'"
        )));
    }
    Ok(())
}

/// Checks a token's device name: 1 to 64 characters.
pub fn check_device_name(device: Option<&str>) -> Result<()> {
    if let Some(d) = device
        && (d.trim().is_empty() || d.chars().count() > MAX_DEVICE_CHARS)
    {
        return Err(StoreError::Invalid(format!(
            "device name: use 1 to {MAX_DEVICE_CHARS} characters"
        )));
    }
    Ok(())
}

pub(crate) fn not_found(what: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

/// The id `id` is another user's (or was deleted): a `Conflict`.
pub(crate) fn taken(what: &str, id: &str) -> StoreError {
    StoreError::Conflict(format!("{what} id {id} is already taken; make a new UUID"))
}

/// A conversation and its messages (oldest first) in the history's export
/// form (the web app's downloads; importable with `pichat history import`).
pub(crate) fn exported(
    c: ServerConversation,
    messages: Vec<Message>,
) -> crate::history::export::ExportedConversation {
    crate::history::export::ExportedConversation {
        conversation: crate::history::Conversation {
            id: c.id,
            title: c.title,
            model_id: c.model_id,
            user_id: None,
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_message_at: c.last_message_at,
            message_count: c.message_count,
            archived: c.archived,
            metadata: serde_json::Value::Object(Default::default()),
            rev: c.rev,
        },
        messages,
    }
}
