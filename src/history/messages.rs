//! Message operations: append, get, page, update, delete.

use rusqlite::{OptionalExtension, Row, params};

use super::*;
use crate::time;

pub(super) const MSG_COLS: &str = "m.id, m.conversation_id, m.role, m.content, m.created_at, m.model_id, \
     m.tokens_used, m.response_time_ms, m.is_audio, m.origin, m.reply_to, m.metadata, m.rev";

pub(super) fn msg_from_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    msg_from_row_at(r, 0)
}

/// A message from the columns of [`MSG_COLS`] starting at `at`.
pub(super) fn msg_from_row_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    let role: String = r.get(at + 2)?;
    let origin: String = r.get(at + 9)?;
    Ok(Message {
        id: id_at(r, at)?,
        conversation_id: id_at(r, at + 1)?,
        role: Role::parse(&role).unwrap_or(Role::User),
        content: r.get(at + 3)?,
        created_at: r.get(at + 4)?,
        model_id: r.get(at + 5)?,
        tokens_used: r.get(at + 6)?,
        response_time_ms: r.get(at + 7)?,
        is_audio: r.get(at + 8)?,
        origin: Origin::parse(&origin).unwrap_or(Origin::Api),
        reply_to: opt_id_at(r, at + 10)?,
        metadata: meta_from_sql(r.get(at + 11)?),
        rev: r.get(at + 12)?,
    })
}

/// The insert used by append and import (same columns, same order).
pub(super) const INSERT_MSG: &str = "INSERT INTO messages (id, conversation_id, role, content, created_at, model_id, \
     tokens_used, response_time_ms, is_audio, origin, reply_to, metadata, pending) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 1) ON CONFLICT (id) DO NOTHING";

impl Store {
    /// Appends a message. Appending an id that exists returns the stored
    /// message when it is the same message, and an error when it differs.
    pub fn append_message(&mut self, new: NewMessage) -> Result<Message> {
        check_content(&new.content)?;
        let id = match &new.id {
            Some(id) => check_id("message id", id)?,
            None => new_id(),
        };
        let reply_to = new
            .reply_to
            .as_deref()
            .map(|r| check_id("reply_to", r).and_then(|r| key("message", &r)))
            .transpose()?;
        let conv_key = key("conversation", &new.conversation_id)?;
        let created = new.created_at.unwrap_or_else(time::now_ms);
        let n = self
            .conn
            .prepare_cached(INSERT_MSG)?
            .execute(params![
                key("message", &id)?,
                conv_key,
                new.role.as_str(),
                new.content,
                created,
                new.model_id,
                new.tokens_used,
                new.response_time_ms,
                new.is_audio,
                new.origin.as_str(),
                reply_to,
                meta_to_sql(&new.metadata),
            ])
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::NotFound {
                    what: "conversation",
                    id: new.conversation_id.clone(),
                },
                _ => e.into(),
            })?;
        let stored = self.get_message(&id)?;
        if n == 0
            && (stored.content != new.content || stored.conversation_id != new.conversation_id)
        {
            return Err(StoreError::Invalid(format!(
                "message {id} already exists with different content"
            )));
        }
        Ok(stored)
    }

    pub fn get_message(&self, id: &str) -> Result<Message> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {MSG_COLS} FROM messages m WHERE m.id = ?1"
            ))?
            .query_row([key("message", id)?], msg_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "message",
                id: id.to_string(),
            })
    }

    /// Up to `limit` messages of a conversation, oldest first: the newest
    /// ones, or those before the message `before`.
    pub fn messages(
        &self,
        conversation_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Message>> {
        self.get_conversation(conversation_id)?;
        let ck = key("conversation", conversation_id)?;
        let limit = limit.clamp(1, 100_000) as i64;
        let mut out: Vec<Message> = match before {
            None => self
                .conn
                .prepare_cached(&format!(
                    "SELECT {MSG_COLS} FROM messages m WHERE m.conversation_id = ?1
                     ORDER BY m.created_at DESC, m.seq DESC LIMIT ?2"
                ))?
                .query_map(params![ck, limit], msg_from_row)?
                .collect::<rusqlite::Result<_>>()?,
            Some(b) => {
                let (at, seq): (i64, i64) = self
                    .conn
                    .query_row(
                        "SELECT created_at, seq FROM messages WHERE id = ?1 AND conversation_id = ?2",
                        [key("message", b)?, ck],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .ok_or_else(|| StoreError::NotFound {
                        what: "message",
                        id: b.to_string(),
                    })?;
                self.conn
                    .prepare_cached(&format!(
                        "SELECT {MSG_COLS} FROM messages m WHERE m.conversation_id = ?1
                         AND (m.created_at, m.seq) < (?2, ?3)
                         ORDER BY m.created_at DESC, m.seq DESC LIMIT ?4"
                    ))?
                    .query_map(params![ck, at, seq, limit], msg_from_row)?
                    .collect::<rusqlite::Result<_>>()?
            }
        };
        out.reverse();
        Ok(out)
    }

    /// Changes a message in place (e.g. an assistant reply cut short by barge-in).
    pub fn update_message(&mut self, id: &str, u: MessageUpdate) -> Result<Message> {
        if let Some(c) = &u.content {
            check_content(c)?;
        }
        let n = self.conn.execute(
            "UPDATE messages SET
                content = coalesce(?1, content),
                model_id = coalesce(?2, model_id),
                tokens_used = coalesce(?3, tokens_used),
                response_time_ms = coalesce(?4, response_time_ms),
                metadata = coalesce(?5, metadata),
                pending = 1
             WHERE id = ?6",
            params![
                u.content,
                u.model_id,
                u.tokens_used,
                u.response_time_ms,
                meta_to_sql(&u.metadata),
                key("message", id)?
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "message",
                id: id.to_string(),
            });
        }
        self.get_message(id)
    }

    pub fn delete_message(&mut self, id: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        let k = key("message", id)?;
        let n = tx.execute("DELETE FROM messages WHERE id = ?1", [k])?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "message",
                id: id.to_string(),
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO tombstones (id, entity, deleted_at, pending) VALUES (?1, 'message', ?2, 1)",
            params![k, time::now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Store, String) {
        let mut s = Store::open_in_memory().unwrap();
        let c = s.create_conversation(NewConversation::default()).unwrap();
        (s, c.id)
    }

    #[test]
    fn append_updates_conversation() {
        let (mut s, c) = setup();
        let mut m = NewMessage::new(&c, Role::User, "hello there");
        m.created_at = Some(5_000_000_000_000);
        m.is_audio = true;
        let stored = s.append_message(m).unwrap();
        assert!(stored.is_audio);
        assert_eq!(stored.origin, Origin::Voice);
        let conv = s.get_conversation(&c).unwrap();
        assert_eq!(conv.message_count, 1);
        assert_eq!(conv.last_message_at, Some(5_000_000_000_000));
        s.delete_message(&stored.id).unwrap();
        let conv = s.get_conversation(&c).unwrap();
        assert_eq!(conv.message_count, 0);
        assert_eq!(conv.last_message_at, None);
    }

    #[test]
    fn append_is_idempotent_by_id() {
        let (mut s, c) = setup();
        let mut m = NewMessage::new(&c, Role::User, "same");
        m.id = Some(new_id());
        let a = s.append_message(m.clone()).unwrap();
        let b = s.append_message(m.clone()).unwrap();
        assert_eq!(a, b);
        assert_eq!(s.get_conversation(&c).unwrap().message_count, 1);
        m.content = "different".into();
        assert!(matches!(s.append_message(m), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn append_rejects_unknown_conversation_and_empty_content() {
        let (mut s, c) = setup();
        let err = s
            .append_message(NewMessage::new(&new_id(), Role::User, "x"))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotFound {
                    what: "conversation",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            s.append_message(NewMessage::new(&c, Role::User, "   "))
                .is_err()
        );
        assert!(
            s.append_message(NewMessage::new(&c, Role::User, "x".repeat(32_001)))
                .is_err()
        );
    }

    #[test]
    fn paging_oldest_first() {
        let (mut s, c) = setup();
        let mut ids = vec![];
        for i in 0..7 {
            let mut m = NewMessage::new(&c, Role::User, format!("m{i}"));
            m.created_at = Some(1000 + i);
            ids.push(s.append_message(m).unwrap().id);
        }
        let last3: Vec<String> = s
            .messages(&c, 3, None)
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(last3, vec!["m4", "m5", "m6"]);
        let before: Vec<String> = s
            .messages(&c, 3, Some(&ids[4]))
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(before, vec!["m1", "m2", "m3"]);
    }

    #[test]
    fn update_keeps_fts_in_step() {
        let (mut s, c) = setup();
        let m = s
            .append_message(NewMessage::new(&c, Role::Assistant, "the quick brown fox"))
            .unwrap();
        s.update_message(
            &m.id,
            MessageUpdate {
                content: Some("a lazy dog".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(s.search("fox", None, 10).unwrap().is_empty());
        assert_eq!(s.search("lazy", None, 10).unwrap().len(), 1);
    }

    #[test]
    fn deleting_conversation_cascades() {
        let (mut s, c) = setup();
        s.append_message(NewMessage::new(&c, Role::User, "cascade me"))
            .unwrap();
        s.delete_conversation(&c).unwrap();
        assert!(s.search("cascade", None, 10).unwrap().is_empty());
        let n: i64 = s
            .conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
