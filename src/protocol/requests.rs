//! Client → server payloads, one struct per action, with the checks that do
//! not need the database (lengths, ranges). Decoding runs the checks; a
//! failed check is `bad_request`.

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use super::limits::*;
use super::records::{MessageInput, VoiceSettings};

/// A payload: JSON both ways, plus the checks decoding runs.
pub trait Payload: Serialize + serde::de::DeserializeOwned {
    /// Checks what the types cannot say (lengths, ranges). The error names
    /// the field, as in `payload.title: ...`.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// serde: tells an absent field (`None`, left as it is) from `null`
/// (`Some(None)`, cleared). Use with `#[serde(default)]`.
pub mod nullable {
    use super::*;

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Some(Option::<T>::deserialize(d)?))
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An empty payload (`{}`; also what an absent or `null` payload means).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}
impl Payload for Empty {}

/// Which kind of client a connection is (the default `origin` of its messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    Voice,
    Web,
    Api,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must be [`super::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// A stable id of the client install (for logs).
    pub client_id: String,
    pub client_kind: ClientKind,
    /// The client's sync cursor, for the server's log (the reply's `rev`
    /// tells the client whether to `sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rev: Option<i64>,
}

impl Payload for Hello {
    fn validate(&self) -> Result<(), String> {
        if self.protocol != super::PROTOCOL_VERSION {
            return Err(format!(
                "payload.protocol: version {} is not supported (this server speaks {})",
                self.protocol,
                super::PROTOCOL_VERSION
            ));
        }
        check_len("payload.client_id", &self.client_id, 1, MAX_CLIENT_ID_CHARS)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetConversations {
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_archived: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Continue after this conversation (the last id of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Uuid>,
}
impl Payload for GetConversations {}

fn check_title(t: &str) -> Result<(), String> {
    check_len("payload.title", t.trim(), 1, MAX_TITLE_CHARS)
}

fn check_model(what: &str, m: &Option<String>) -> Result<(), String> {
    match m {
        Some(m) => check_len(what, m, 1, MAX_MODEL_CHARS),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateConversation {
    /// Client-made id (UUIDv7 recommended); the server makes one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Absent: "New conversation".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
}

impl Payload for CreateConversation {
    fn validate(&self) -> Result<(), String> {
        if let Some(t) = &self.title {
            check_title(t)?;
        }
        check_model("payload.model_id", &self.model_id)
    }
}

/// `get_conversation` and `delete_conversation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ById {
    pub id: Uuid,
}
impl Payload for ById {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConversation {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// Absent: unchanged; `null`: cleared.
    #[serde(
        default,
        deserialize_with = "nullable::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub model_id: Option<Option<String>>,
}

impl Payload for UpdateConversation {
    fn validate(&self) -> Result<(), String> {
        if let Some(t) = &self.title {
            check_title(t)?;
        }
        if let Some(m) = &self.model_id {
            check_model("payload.model_id", m)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetMessages {
    pub conversation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only messages older than this message (paging back in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Uuid>,
}
impl Payload for GetMessages {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Search {
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl Payload for Search {
    fn validate(&self) -> Result<(), String> {
        check_len("payload.query", self.query.trim(), 1, MAX_QUERY_CHARS)
    }
}

fn check_content(what: &str, c: &str) -> Result<(), String> {
    check_len(what, c, 1, MAX_CONTENT_CHARS)?;
    if c.trim().is_empty() {
        return Err(format!("{what} is only whitespace"));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Client-made id of the user message; makes retries safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    pub conversation_id: Uuid,
    pub content: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_audio: bool,
}

impl Payload for SendMessage {
    fn validate(&self) -> Result<(), String> {
        check_content("payload.content", &self.content)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppendMessages {
    pub messages: Vec<MessageInput>,
}

impl Payload for AppendMessages {
    fn validate(&self) -> Result<(), String> {
        if self.messages.is_empty() || self.messages.len() > MAX_APPEND {
            return Err(format!(
                "payload.messages must hold 1 to {MAX_APPEND} messages (got {})",
                self.messages.len()
            ));
        }
        // Per-message problems (content length...) are reported in
        // `rejected`, so one bad message does not block the others.
        Ok(())
    }
}

/// One `append_messages` of a client's upload, as [`AppendMessages::batches`]
/// cuts it: indexes into the messages given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendBatch {
    /// These messages fit in one frame the server takes.
    Send(std::ops::Range<usize>),
    /// This message alone is over the frame limit: no server would take it.
    TooLarge(usize),
}

impl AppendMessages {
    /// Cuts an upload into `append_messages` frames the server takes: each
    /// at most [`MAX_FRAME`](crate::protocol::limits::MAX_FRAME) bytes
    /// encoded (envelope included) and [`MAX_APPEND`] messages, in order.
    pub fn batches(messages: &[MessageInput]) -> Vec<AppendBatch> {
        let budget = MAX_FRAME - APPEND_ENVELOPE;
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, m) in messages.iter().enumerate() {
            // The message and the comma before it.
            let size = encoded_len(m) + 1;
            if size > budget {
                if start < i {
                    out.push(AppendBatch::Send(start..i));
                }
                out.push(AppendBatch::TooLarge(i));
                (start, bytes) = (i + 1, 0);
                continue;
            }
            if bytes + size > budget || i - start == MAX_APPEND {
                out.push(AppendBatch::Send(start..i));
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        if start < messages.len() {
            out.push(AppendBatch::Send(start..messages.len()));
        }
        out
    }
}

/// Checks one uploaded message (the reasons `append_messages` rejects it).
pub fn check_message_input(m: &MessageInput) -> Result<(), String> {
    check_content("content", &m.content)?;
    check_model("model_id", &m.model_id)?;
    if m.tokens_used.is_some_and(|t| t < 0) || m.response_time_ms.is_some_and(|t| t < 0) {
        return Err("tokens_used and response_time_ms cannot be negative".into());
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The client's cursor: changes with a greater `rev` are returned (0: everything).
    pub since: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl Payload for SyncRequest {
    fn validate(&self) -> Result<(), String> {
        if self.since < 0 {
            return Err(format!(
                "payload.since must be 0 or more (got {})",
                self.since
            ));
        }
        Ok(())
    }
}

/// A partial `voice_settings`: absent fields unchanged, `null` clears.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VoiceSettingsUpdate {
    #[serde(
        default,
        deserialize_with = "nullable::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub gender: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub accent: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub speed: Option<Option<f64>>,
}

/// `update_settings`: absent fields unchanged, `null` clears.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateSettings {
    #[serde(
        default,
        deserialize_with = "nullable::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub selected_model: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_settings: Option<VoiceSettingsUpdate>,
    #[serde(
        default,
        deserialize_with = "nullable::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub assistant_personality: Option<Option<String>>,
}

fn check_voice_field(what: &str, v: &Option<String>) -> Result<(), String> {
    match v {
        Some(v) => check_len(what, v, 1, MAX_VOICE_FIELD_CHARS),
        None => Ok(()),
    }
}

fn check_speed(what: &str, s: Option<f64>) -> Result<(), String> {
    let (lo, hi) = VOICE_SPEED;
    match s {
        Some(s) if !(lo..=hi).contains(&s) => Err(format!("{what} must be {lo} to {hi} (got {s})")),
        _ => Ok(()),
    }
}

impl Payload for UpdateSettings {
    fn validate(&self) -> Result<(), String> {
        if let Some(m) = &self.selected_model {
            check_model("payload.selected_model", m)?;
        }
        if let Some(Some(p)) = &self.assistant_personality {
            check_len("payload.assistant_personality", p, 1, MAX_PERSONALITY_CHARS)?;
        }
        if let Some(v) = &self.voice_settings {
            if let Some(g) = &v.gender {
                check_voice_field("payload.voice_settings.gender", g)?;
            }
            if let Some(a) = &v.accent {
                check_voice_field("payload.voice_settings.accent", a)?;
            }
            if let Some(s) = v.speed {
                check_speed("payload.voice_settings.speed", s)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextToSpeech {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_settings: Option<VoiceSettings>,
}

impl Payload for TextToSpeech {
    fn validate(&self) -> Result<(), String> {
        check_len("payload.text", self.text.trim(), 1, MAX_TTS_CHARS)?;
        if let Some(v) = &self.voice_settings {
            check_voice_field("payload.voice_settings.gender", &v.gender)?;
            check_voice_field("payload.voice_settings.accent", &v.accent)?;
            check_speed("payload.voice_settings.speed", v.speed)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechToText {
    /// A WAV file (PCM, any rate, mono or stereo), base64 (standard alphabet).
    pub audio_data: String,
}

impl Payload for SpeechToText {
    fn validate(&self) -> Result<(), String> {
        if self.audio_data.is_empty() {
            return Err("payload.audio_data is empty".into());
        }
        Ok(())
    }
}
