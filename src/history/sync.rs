//! The local side of the sync with the chat server: what is waiting to be
//! pushed (the outbox), acknowledging what the server stored, and applying
//! the server's changes with the new cursor in one transaction.
//!
//! Rules (see ARCHITECTURE.md, "Sync"):
//! - messages are append-only and keyed by id: an incoming message that
//!   exists is only marked as known to the server; never duplicated;
//! - a conversation's title and archived flag follow the server's rev
//!   order, except that a local edit not yet pushed is kept (it is pushed
//!   next and becomes the server's latest);
//! - a conversation deleted on the server is deleted here, with any of its
//!   messages not yet pushed (they are counted and logged by the caller);
//! - a conversation deleted here and not yet pushed is not brought back by
//!   an older upsert from the server.

use rusqlite::{OptionalExtension, params};

use super::conversations::{CONV_COLS, conv_from_row};
use super::messages::{MSG_COLS, msg_from_row_at};
use super::*;

/// Keys of the `sync_state` table.
pub const CURSOR: &str = "cursor";
pub const PUSHED_SEQ: &str = "pushed_seq";
pub const CLIENT_ID: &str = "client_id";
pub const LAST_ERROR: &str = "last_error";
pub const LAST_SUCCESS: &str = "last_success";
pub const SETTINGS: &str = "settings";

/// What is waiting to be pushed.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    /// Conversations created or changed here (`rev == 0`: never on the
    /// server), with the fields changed here (bits: 1 title, 2 archived,
    /// 4 model).
    pub conversations: Vec<(Conversation, u8)>,
    /// Conversations deleted here.
    pub deleted: Vec<String>,
    /// Messages made here, oldest first, with their local sequence numbers.
    pub messages: Vec<(i64, Message)>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty() && self.deleted.is_empty() && self.messages.is_empty()
    }
}

/// A change from the server, in the store's terms.
#[derive(Debug, Clone)]
pub enum Remote {
    Conversation { c: Conversation, deleted: bool },
    Message(Message),
    Settings(serde_json::Value),
}

/// What applying a page did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub conversations: usize,
    pub messages: usize,
    pub deleted: usize,
    /// Local messages not yet pushed that went with a deleted conversation.
    pub dropped_unsent: usize,
}

impl Store {
    pub fn sync_cursor(&self) -> Result<i64> {
        Ok(self
            .state_get(CURSOR)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// This device's id for `hello`, made once.
    pub fn client_id(&self) -> Result<String> {
        if let Some(id) = self.state_get(CLIENT_ID)? {
            return Ok(id);
        }
        let id = new_id();
        self.state_set(CLIENT_ID, &id)?;
        Ok(id)
    }

    /// Every pending conversation and delete, and the oldest pending
    /// messages: up to `limit` of them and about `max_bytes` of content
    /// (at least one message, however long).
    pub fn outbox(&self, limit: usize, max_bytes: usize) -> Result<Outbox> {
        let mut out = Outbox::default();
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONV_COLS}, pending_fields FROM conversations WHERE pending = 1 ORDER BY created_at"
        ))?;
        out.conversations = stmt
            .query_map([], |r| Ok((conv_from_row(r)?, r.get::<_, u8>(12)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM tombstones WHERE pending = 1 AND entity = 'conversation' ORDER BY deleted_at",
        )?;
        out.deleted = stmt
            .query_map([], |r| id_at(r, 0))?
            .collect::<rusqlite::Result<_>>()?;
        let hwm: i64 = self
            .state_get(PUSHED_SEQ)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT m.seq, {MSG_COLS} FROM messages m WHERE m.seq > ?1 AND m.pending = 1 ORDER BY m.seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![hwm, limit as i64], |r| {
            let seq: i64 = r.get(0)?;
            // msg_from_row reads columns from 0: shift by reading a sub-row.
            Ok((seq, msg_from_row_at(r, 1)?))
        })?;
        let mut bytes = 0;
        for row in rows {
            let (seq, m) = row?;
            bytes += m.content.len();
            out.messages.push((seq, m));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Counts of what waits to be pushed: (conversations, deletes, messages).
    pub fn outbox_counts(&self) -> Result<(i64, i64, i64)> {
        let hwm: i64 = self
            .state_get(PUSHED_SEQ)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(self.conn.query_row(
            "SELECT (SELECT count(*) FROM conversations WHERE pending = 1),
                    (SELECT count(*) FROM tombstones WHERE pending = 1 AND entity = 'conversation'),
                    (SELECT count(*) FROM messages WHERE seq > ?1 AND pending = 1)",
            [hwm],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// The server stored this conversation as it was when pushed
    /// (`updated_at`); a newer local edit stays pending.
    pub fn ack_conversation(&mut self, id: &str, pushed_updated_at: i64, rev: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE conversations SET rev = max(rev, ?2),
                 pending = CASE WHEN updated_at <= ?3 THEN 0 ELSE pending END,
                 pending_fields = CASE WHEN updated_at <= ?3 THEN 0 ELSE pending_fields END
             WHERE id = ?1",
            params![key("conversation", id)?, rev, pushed_updated_at],
        )?;
        Ok(())
    }

    pub fn ack_deleted(&mut self, id: &str, rev: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE tombstones SET pending = 0, rev = ?2 WHERE id = ?1",
            params![key("conversation", id)?, rev],
        )?;
        Ok(())
    }

    /// The server has these messages; messages up to `through_seq` need no
    /// more looking at.
    pub fn ack_messages(&mut self, ids: &[String], through_seq: i64, rev: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE messages SET pending = 0, rev = max(rev, ?2) WHERE id = ?1",
            )?;
            for id in ids {
                stmt.execute(params![key("message", id)?, rev])?;
            }
        }
        let hwm: i64 = tx
            .query_row(
                "SELECT value FROM sync_state WHERE key = ?1",
                [PUSHED_SEQ],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // The mark only moves past messages that are all acknowledged.
        let first_pending: Option<i64> = tx
            .query_row(
                "SELECT min(seq) FROM messages WHERE seq > ?1 AND seq <= ?2 AND pending = 1",
                params![hwm, through_seq],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let new_hwm = match first_pending {
            Some(s) => s - 1,
            None => through_seq,
        };
        if new_hwm > hwm {
            tx.execute(
                "INSERT INTO sync_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![PUSHED_SEQ, new_hwm.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Applies changes from the server and stores the new cursor, together.
    pub fn apply_remote(&mut self, changes: &[Remote], cursor: i64) -> Result<Applied> {
        let mut a = Applied::default();
        let tx = self.conn.transaction()?;
        for ch in changes {
            match ch {
                Remote::Conversation { c, deleted: true } => {
                    let k = key("conversation", &c.id)?;
                    a.dropped_unsent += tx.query_row(
                        "SELECT count(*) FROM messages WHERE conversation_id = ?1 AND pending = 1",
                        [k],
                        |r| r.get::<_, i64>(0),
                    )? as usize;
                    a.deleted += tx.execute("DELETE FROM conversations WHERE id = ?1", [k])?;
                    tx.execute(
                        "INSERT INTO tombstones (id, entity, deleted_at, rev, pending) VALUES (?1, 'conversation', ?2, ?3, 0)
                         ON CONFLICT (id) DO UPDATE SET rev = excluded.rev, pending = 0",
                        params![k, crate::time::now_ms(), c.rev],
                    )?;
                }
                Remote::Conversation { c, deleted: false } => {
                    let k = key("conversation", &c.id)?;
                    let gone: bool = tx
                        .query_row("SELECT 1 FROM tombstones WHERE id = ?1", [k], |_| Ok(true))
                        .optional()?
                        .unwrap_or(false);
                    if gone {
                        continue; // deleted here (pending) or already seen deleted
                    }
                    a.conversations += tx.execute(
                        "INSERT INTO conversations (id, title, model_id, created_at, updated_at, activity_at, archived, rev, pending)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6, ?7, 0)
                         ON CONFLICT (id) DO UPDATE SET
                            title = CASE WHEN pending_fields & 1 THEN title ELSE excluded.title END,
                            archived = CASE WHEN pending_fields & 2 THEN archived ELSE excluded.archived END,
                            model_id = CASE WHEN pending_fields & 4 THEN model_id ELSE excluded.model_id END,
                            rev = max(rev, excluded.rev)
                         WHERE excluded.rev > conversations.rev",
                        params![k, c.title, c.model_id, c.created_at, c.updated_at, c.archived, c.rev],
                    )?;
                }
                Remote::Message(m) => {
                    let ck = key("conversation", &m.conversation_id)?;
                    let known: bool = tx
                        .query_row("SELECT 1 FROM conversations WHERE id = ?1", [ck], |_| {
                            Ok(true)
                        })
                        .optional()?
                        .unwrap_or(false);
                    if !known {
                        continue; // its conversation was deleted here
                    }
                    a.messages += tx.execute(
                        "INSERT INTO messages (id, conversation_id, role, content, created_at, model_id, tokens_used,
                                               response_time_ms, is_audio, origin, reply_to, rev, pending)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0)
                         ON CONFLICT (id) DO UPDATE SET rev = max(rev, excluded.rev), pending = 0
                         WHERE messages.pending = 1 OR messages.rev < excluded.rev",
                        params![
                            key("message", &m.id)?,
                            ck,
                            m.role.as_str(),
                            m.content,
                            m.created_at,
                            m.model_id,
                            m.tokens_used,
                            m.response_time_ms,
                            m.is_audio,
                            m.origin.as_str(),
                            m.reply_to.as_deref().map(|r| key("message", r)).transpose()?,
                            m.rev,
                        ],
                    )?;
                }
                Remote::Settings(v) => {
                    tx.execute(
                        "INSERT INTO sync_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![SETTINGS, v.to_string()],
                    )?;
                }
            }
        }
        tx.execute(
            "INSERT INTO sync_state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = CAST(max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)",
            params![CURSOR, cursor.to_string()],
        )?;
        tx.commit()?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote_conv(id: &str, title: &str, rev: i64) -> Remote {
        Remote::Conversation {
            c: Conversation {
                id: id.into(),
                title: title.into(),
                model_id: None,
                user_id: None,
                created_at: 1000,
                updated_at: 1000,
                last_message_at: None,
                message_count: 0,
                archived: false,
                metadata: serde_json::Value::Null,
                rev,
            },
            deleted: false,
        }
    }

    fn remote_msg(id: &str, conv: &str, rev: i64) -> Remote {
        Remote::Message(Message {
            id: id.into(),
            conversation_id: conv.into(),
            role: Role::User,
            content: "hello".into(),
            created_at: 2000,
            model_id: None,
            tokens_used: None,
            response_time_ms: None,
            is_audio: false,
            origin: Origin::Web,
            reply_to: None,
            metadata: serde_json::Value::Null,
            rev,
        })
    }

    #[test]
    fn outbox_and_acks() {
        let mut s = Store::open_in_memory().unwrap();
        let c = s.create_conversation(NewConversation::default()).unwrap();
        let m1 = s
            .append_message(NewMessage::new(&c.id, Role::User, "q"))
            .unwrap();
        let m2 = s
            .append_message(NewMessage::new(&c.id, Role::Assistant, "a"))
            .unwrap();
        let o = s.outbox(100, usize::MAX).unwrap();
        assert_eq!(o.conversations.len(), 1);
        assert_eq!(o.conversations[0].1, 0, "created here: no field edited");
        assert_eq!(
            o.messages
                .iter()
                .map(|(_, m)| m.id.clone())
                .collect::<Vec<_>>(),
            vec![m1.id.clone(), m2.id.clone()]
        );
        s.ack_conversation(&c.id, o.conversations[0].0.updated_at, 3)
            .unwrap();
        let last = o.messages.last().unwrap().0;
        s.ack_messages(std::slice::from_ref(&m1.id), last, 4)
            .unwrap();
        // m2 is not acknowledged: still in the outbox, the mark stops before it.
        let o = s.outbox(100, usize::MAX).unwrap();
        assert!(o.conversations.is_empty());
        assert_eq!(o.messages.len(), 1);
        s.ack_messages(std::slice::from_ref(&m2.id), last, 5)
            .unwrap();
        assert!(s.outbox(100, usize::MAX).unwrap().is_empty());
        assert_eq!(s.outbox_counts().unwrap(), (0, 0, 0));
    }

    #[test]
    fn a_local_edit_made_while_pushing_stays_pending() {
        let mut s = Store::open_in_memory().unwrap();
        let c = s
            .create_conversation(NewConversation {
                created_at: Some(1),
                ..Default::default()
            })
            .unwrap();
        let pushed = s.outbox(10, usize::MAX).unwrap().conversations[0]
            .0
            .updated_at;
        std::thread::sleep(std::time::Duration::from_millis(3));
        s.rename_conversation(&c.id, "later").unwrap();
        s.ack_conversation(&c.id, pushed, 1).unwrap();
        assert_eq!(s.outbox(10, usize::MAX).unwrap().conversations.len(), 1);
    }

    #[test]
    fn remote_changes_are_idempotent_and_ordered() {
        let mut s = Store::open_in_memory().unwrap();
        let c = new_id();
        let m = new_id();
        let page = vec![remote_conv(&c, "From the web", 1), remote_msg(&m, &c, 2)];
        let a = s.apply_remote(&page, 2).unwrap();
        assert_eq!((a.conversations, a.messages), (1, 1));
        // The same page again (a retry): nothing new, no duplicate.
        let a = s.apply_remote(&page, 2).unwrap();
        assert_eq!(a.messages, 0);
        assert_eq!(s.get_conversation(&c).unwrap().message_count, 1);
        assert_eq!(s.sync_cursor().unwrap(), 2);
        // An older rev does not overwrite a newer title; the cursor never goes back.
        s.apply_remote(&[remote_conv(&c, "Renamed", 5)], 5).unwrap();
        s.apply_remote(&[remote_conv(&c, "Old", 3)], 3).unwrap();
        assert_eq!(s.get_conversation(&c).unwrap().title, "Renamed");
        assert_eq!(s.sync_cursor().unwrap(), 5);
        // Remote messages are not pushed back.
        assert!(s.outbox(10, usize::MAX).unwrap().messages.is_empty());
    }

    #[test]
    fn merges_field_by_field() {
        let mut s = Store::open_in_memory().unwrap();
        let c = new_id();
        s.apply_remote(&[remote_conv(&c, "Original", 1)], 1)
            .unwrap();
        s.set_archived(&c, true).unwrap();
        // Renamed elsewhere meanwhile: the title follows the server, the
        // local archive stays (to be pushed).
        s.apply_remote(&[remote_conv(&c, "Renamed elsewhere", 2)], 2)
            .unwrap();
        let got = s.get_conversation(&c).unwrap();
        assert_eq!(
            (got.title.as_str(), got.archived),
            ("Renamed elsewhere", true)
        );
        let o = s.outbox(10, usize::MAX).unwrap();
        assert_eq!(o.conversations[0].1, 2, "only the archived flag is pushed");
    }

    #[test]
    fn server_delete_wins_and_local_delete_is_not_undone() {
        let mut s = Store::open_in_memory().unwrap();
        let c = s.create_conversation(NewConversation::default()).unwrap();
        s.append_message(NewMessage::new(&c.id, Role::User, "unsent"))
            .unwrap();
        let Remote::Conversation { c: mut rc, .. } = remote_conv(&c.id, "x", 9) else {
            unreachable!()
        };
        rc.id = c.id.clone();
        let a = s
            .apply_remote(
                &[Remote::Conversation {
                    c: rc.clone(),
                    deleted: true,
                }],
                9,
            )
            .unwrap();
        assert_eq!((a.deleted, a.dropped_unsent), (1, 1));
        assert!(s.get_conversation(&c.id).is_err());
        // A late upsert of it does not bring it back.
        s.apply_remote(
            &[Remote::Conversation {
                c: rc,
                deleted: false,
            }],
            9,
        )
        .unwrap();
        assert!(s.get_conversation(&c.id).is_err());
        // Deleted here, pending: an upsert from the server does not undo it.
        let d = s.create_conversation(NewConversation::default()).unwrap();
        s.delete_conversation(&d.id).unwrap();
        s.apply_remote(&[remote_conv(&d.id, "back?", 11)], 11)
            .unwrap();
        assert!(s.get_conversation(&d.id).is_err());
        assert_eq!(s.outbox(10, usize::MAX).unwrap().deleted, vec![d.id]);
    }
}
