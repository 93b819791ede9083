//! The wire form of the server's records: conversations, settings, sync
//! changes, and the notification each change is to a user's other
//! connections.

use crate::protocol::records::{Change, ChangeRecord, Conversation, Op, Settings, VoiceSettings};
use crate::protocol::{self as p, Reply};
use crate::store::{StoreError, store_id};

use super::records::{ServerChange, ServerConversation, ServerSettings, SettingsUpdate};

impl TryFrom<&ServerConversation> for Conversation {
    type Error = StoreError;
    fn try_from(c: &ServerConversation) -> Result<Self, StoreError> {
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

impl From<&p::UpdateSettings> for SettingsUpdate {
    fn from(u: &p::UpdateSettings) -> Self {
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
    type Error = StoreError;
    fn try_from(c: &ServerChange) -> Result<Self, StoreError> {
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

/// The notification a change is to the user's other connections:
/// `conversation_created` (its rev is its creation's), `_updated`,
/// `_deleted` (a tombstone), `new_message`, `settings_updated`.
pub fn notification(change: &ServerChange) -> Result<Reply, StoreError> {
    Ok(match change {
        ServerChange::Conversation(c) if c.deleted => {
            Reply::ConversationDeleted(p::ConversationDeleted {
                id: store_id("conversation", &c.id)?,
                rev: c.rev,
                duplicate: false,
            })
        }
        ServerChange::Conversation(c) => {
            let payload = p::ConversationPayload {
                conversation: c.try_into()?,
                duplicate: false,
            };
            if c.created_rev == c.rev {
                Reply::ConversationCreated(payload)
            } else {
                Reply::ConversationUpdated(payload)
            }
        }
        ServerChange::Message(m) => Reply::NewMessage(p::MessagePayload {
            message: m.try_into()?,
            duplicate: false,
        }),
        ServerChange::Settings(s) => {
            Reply::SettingsUpdated(p::SettingsPayload { settings: s.into() })
        }
    })
}
