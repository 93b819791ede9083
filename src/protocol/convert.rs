//! Conversions between the protocol's records and the stores' records
//! (`history::server` on the server; the local `history` for the daemon's
//! sync client).
//!
//! The stores keep ids as 16-byte UUIDs and give them out as text; turning
//! that text back into a protocol `Uuid` cannot fail unless the database
//! was damaged, and then it is an error ([`HistoryError::BadStoredId`],
//! `internal` on the wire), never a made-up id.

use uuid::Uuid;

use super::records::{
    Change, ChangeRecord, Conversation, Message, MessageInput, Op, Settings, VoiceSettings,
};
use crate::history::server::{ServerChange, ServerConversation, ServerSettings, SettingsUpdate};
use crate::history::{self, HistoryError, NewMessage, Origin};

/// An id a store gave out, as the protocol's UUID.
pub fn store_id(what: &'static str, s: &str) -> Result<Uuid, HistoryError> {
    Uuid::parse_str(s).map_err(|_| HistoryError::BadStoredId {
        what,
        id: s.to_string(),
    })
}

impl TryFrom<&ServerConversation> for Conversation {
    type Error = HistoryError;
    fn try_from(c: &ServerConversation) -> Result<Self, HistoryError> {
        Ok(Conversation {
            id: store_id("conversation", &c.id)?,
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
        })
    }
}

impl TryFrom<&history::Message> for Message {
    type Error = HistoryError;
    fn try_from(m: &history::Message) -> Result<Self, HistoryError> {
        Ok(Message {
            id: store_id("message", &m.id)?,
            conversation_id: store_id("conversation", &m.conversation_id)?,
            role: m.role,
            content: m.content.clone(),
            created_at: m.created_at,
            model_id: m.model_id.clone(),
            tokens_used: m.tokens_used,
            response_time_ms: m.response_time_ms,
            is_audio: m.is_audio,
            origin: m.origin,
            reply_to: m
                .reply_to
                .as_deref()
                .map(|r| store_id("message", r))
                .transpose()?,
            rev: m.rev,
        })
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

impl TryFrom<&history::Message> for MessageInput {
    type Error = HistoryError;
    /// A local message to upload with `append_messages`.
    fn try_from(m: &history::Message) -> Result<Self, HistoryError> {
        Ok(MessageInput {
            id: store_id("message", &m.id)?,
            conversation_id: store_id("conversation", &m.conversation_id)?,
            role: m.role,
            content: m.content.clone(),
            created_at: Some(m.created_at),
            model_id: m.model_id.clone(),
            tokens_used: m.tokens_used,
            response_time_ms: m.response_time_ms,
            is_audio: m.is_audio,
            origin: Some(m.origin),
            reply_to: m
                .reply_to
                .as_deref()
                .map(|r| store_id("message", r))
                .transpose()?,
        })
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

impl TryFrom<&ServerChange> for Change {
    type Error = HistoryError;
    fn try_from(c: &ServerChange) -> Result<Self, HistoryError> {
        Ok(match c {
            ServerChange::Conversation(c) => Change {
                rev: c.rev,
                op: if c.deleted { Op::Delete } else { Op::Upsert },
                record: ChangeRecord::Conversation(c.try_into()?),
            },
            ServerChange::Message(m) => Change {
                rev: m.rev,
                op: Op::Upsert,
                record: ChangeRecord::Message(m.try_into()?),
            },
            ServerChange::Settings(s) => Change {
                rev: s.rev,
                op: Op::Upsert,
                record: ChangeRecord::Settings(s.into()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_id_that_is_not_a_uuid_is_an_error_not_nil() {
        let mut m = history::Message {
            id: "not-a-uuid".into(),
            conversation_id: Uuid::now_v7().to_string(),
            role: history::Role::User,
            content: "x".into(),
            created_at: 0,
            model_id: None,
            tokens_used: None,
            response_time_ms: None,
            is_audio: false,
            origin: Origin::Api,
            reply_to: None,
            metadata: serde_json::Value::Null,
            rev: 1,
        };
        let e = Message::try_from(&m).unwrap_err();
        assert!(
            matches!(&e, HistoryError::BadStoredId { what: "message", id } if id == "not-a-uuid"),
            "{e}"
        );
        assert!(MessageInput::try_from(&m).is_err());
        m.id = Uuid::now_v7().to_string();
        m.reply_to = Some(String::new());
        assert!(Message::try_from(&m).is_err());
        m.reply_to = None;
        assert_eq!(Message::try_from(&m).unwrap().id.to_string(), m.id);
    }
}
