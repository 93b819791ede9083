//! The wire form of the records both stores keep (messages): to and from
//! the protocol's records. The stores keep ids as 16-byte UUIDs and give
//! them out as text; turning that text back into a protocol `Uuid` cannot
//! fail unless the database was damaged, and then it is an error
//! ([`StoreError::BadStoredId`], `internal` on the wire), never a made-up id.

use crate::protocol::records::{self as wire, MessageInput};

use super::{Message, NewMessage, Origin, StoreError, store_id};

impl TryFrom<&Message> for wire::Message {
    type Error = StoreError;
    fn try_from(m: &Message) -> Result<Self, StoreError> {
        Ok(wire::Message {
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

impl From<&wire::Message> for Message {
    fn from(m: &wire::Message) -> Self {
        Message {
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

impl TryFrom<&Message> for wire::MessageInput {
    type Error = StoreError;
    /// A local message to upload with `append_messages`.
    fn try_from(m: &Message) -> Result<Self, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_stored_id_that_is_not_a_uuid_is_an_error_not_nil() {
        let mut m = Message {
            id: "not-a-uuid".into(),
            conversation_id: Uuid::now_v7().to_string(),
            role: super::super::Role::User,
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
        let e = wire::Message::try_from(&m).unwrap_err();
        assert!(
            matches!(&e, StoreError::BadStoredId { what: "message", id } if id == "not-a-uuid"),
            "{e}"
        );
        assert!(MessageInput::try_from(&m).is_err());
        m.id = Uuid::now_v7().to_string();
        m.reply_to = Some(String::new());
        assert!(wire::Message::try_from(&m).is_err());
        m.reply_to = None;
        assert_eq!(wire::Message::try_from(&m).unwrap().id.to_string(), m.id);
    }
}
