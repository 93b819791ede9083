//! Conversions between the protocol's records and the stores' records
//! (`history::server` on the server; the local `history` for the daemon's
//! sync client).

use uuid::Uuid;

use super::records::{
    Change, ChangeRecord, Conversation, Message, MessageInput, Op, Settings, VoiceSettings,
};
use crate::history::server::{ServerChange, ServerConversation, ServerSettings, SettingsUpdate};
use crate::history::{self, NewMessage, Origin};

/// Ids in the stores are UUIDs in text form, written by this program.
fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap_or_else(|_| Uuid::nil())
}

impl From<&ServerConversation> for Conversation {
    fn from(c: &ServerConversation) -> Self {
        Conversation {
            id: uuid(&c.id),
            title: c.title.clone(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_message_at: c.last_message_at,
            message_count: c.message_count,
            archived: c.archived,
            model_id: c.model_id.clone(),
            rev: c.rev,
            deleted: c.deleted,
            origins: c.origins.clone(),
        }
    }
}

impl From<&history::Message> for Message {
    fn from(m: &history::Message) -> Self {
        Message {
            id: uuid(&m.id),
            conversation_id: uuid(&m.conversation_id),
            role: m.role,
            content: m.content.clone(),
            created_at: m.created_at,
            model_id: m.model_id.clone(),
            tokens_used: m.tokens_used,
            response_time_ms: m.response_time_ms,
            is_audio: m.is_audio,
            origin: m.origin,
            reply_to: m.reply_to.as_deref().map(uuid),
            rev: m.rev,
        }
    }
}

impl From<&Message> for history::Message {
    fn from(m: &Message) -> Self {
        history::Message {
            id: m.id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            role: m.role,
            content: m.content.clone(),
            created_at: m.created_at,
            model_id: m.model_id.clone(),
            tokens_used: m.tokens_used,
            response_time_ms: m.response_time_ms,
            is_audio: m.is_audio,
            origin: m.origin,
            reply_to: m.reply_to.map(|r| r.to_string()),
            metadata: serde_json::Value::Object(Default::default()),
            rev: m.rev,
        }
    }
}

impl From<&history::Message> for MessageInput {
    /// A local message to upload with `append_messages`.
    fn from(m: &history::Message) -> Self {
        MessageInput {
            id: uuid(&m.id),
            conversation_id: uuid(&m.conversation_id),
            role: m.role,
            content: m.content.clone(),
            created_at: Some(m.created_at),
            model_id: m.model_id.clone(),
            tokens_used: m.tokens_used,
            response_time_ms: m.response_time_ms,
            is_audio: m.is_audio,
            origin: Some(m.origin),
            reply_to: m.reply_to.as_deref().map(uuid),
        }
    }
}

impl MessageInput {
    /// What the store is asked to append; `origin` falls back to `default_origin`.
    pub fn to_new_message(&self, default_origin: Origin) -> NewMessage {
        NewMessage {
            id: Some(self.id.to_string()),
            conversation_id: self.conversation_id.to_string(),
            role: self.role,
            content: self.content.clone(),
            created_at: self.created_at,
            model_id: self.model_id.clone(),
            tokens_used: self.tokens_used,
            response_time_ms: self.response_time_ms,
            is_audio: self.is_audio,
            origin: self.origin.unwrap_or(default_origin),
            reply_to: self.reply_to.map(|r| r.to_string()),
            metadata: None,
        }
    }
}

impl From<&ServerSettings> for Settings {
    fn from(s: &ServerSettings) -> Self {
        Settings {
            selected_model: s.selected_model.clone(),
            voice_settings: VoiceSettings {
                gender: s.voice_gender.clone(),
                accent: s.voice_accent.clone(),
                speed: s.voice_speed,
            },
            assistant_personality: s.assistant_personality.clone(),
            rev: s.rev,
        }
    }
}

impl From<&super::UpdateSettings> for SettingsUpdate {
    fn from(u: &super::UpdateSettings) -> Self {
        let v = u.voice_settings.clone().unwrap_or_default();
        SettingsUpdate {
            selected_model: u.selected_model.clone(),
            voice_gender: v.gender,
            voice_accent: v.accent,
            voice_speed: v.speed,
            assistant_personality: u.assistant_personality.clone(),
        }
    }
}

impl From<&ServerChange> for Change {
    fn from(c: &ServerChange) -> Self {
        match c {
            ServerChange::Conversation(c) => Change {
                rev: c.rev,
                op: if c.deleted { Op::Delete } else { Op::Upsert },
                record: ChangeRecord::Conversation(c.into()),
            },
            ServerChange::Message(m) => Change {
                rev: m.rev,
                op: Op::Upsert,
                record: ChangeRecord::Message(m.into()),
            },
            ServerChange::Settings(s) => Change {
                rev: s.rev,
                op: Op::Upsert,
                record: ChangeRecord::Settings(s.into()),
            },
        }
    }
}
