//! Conversations in the SQLite store: create, get, change, delete
//! (tombstones), list, and the web app's exports.

use rusqlite::{Connection, params};

use super::*;
use crate::history::export::ExportedConversation;
use crate::store::{check_id, check_title, new_id};
use crate::time;

impl Conn {
    // ---- conversations ----

    /// Creates a conversation. An id that exists for this user returns the
    /// stored conversation and `true` (nothing changes); an id taken by
    /// another user, or by a deleted conversation, is a `Conflict`.
    pub fn create_conversation(
        &mut self,
        user: UserId,
        new: &NewConversation,
    ) -> Result<(ServerConversation, bool)> {
        let id = match &new.id {
            Some(id) => check_id("conversation id", id)?,
            None => new_id(),
        };
        let title = check_title(new.title.as_deref().unwrap_or("New conversation"))?;
        let tx = self.write_tx()?;
        if let Some((owner, c)) = get_conv_any(&tx, &id)? {
            if owner != user {
                return Err(StoreError::Conflict(format!(
                    "conversation id {id} is already taken; make a new UUID"
                )));
            }
            if c.deleted {
                return Err(StoreError::Conflict(format!(
                    "conversation {id} was deleted; ids are not reused, make a new UUID"
                )));
            }
            return Ok((c, true));
        }
        let rev = bump(&tx, user, 1)?;
        let now = new.created_at.unwrap_or_else(time::now_ms);
        tx.prepare_cached(
            "INSERT INTO srv_conversations (id, user_id, title, model_id, created_at, updated_at,
                 activity_at, created_rev, rev)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5, ?6, ?6)",
        )?
        .execute(params![
            key("conversation", &id)?,
            user,
            title,
            new.model_id,
            now,
            rev
        ])?;
        let c = live_conv(&tx, user, &id)?;
        tx.commit()?;
        Ok((c, false))
    }

    /// The user's conversation (not deleted).
    pub fn get_conversation(&self, user: UserId, id: &str) -> Result<ServerConversation> {
        live_conv(&self.conn, user, id)
    }

    /// Changes title, archived flag or model. Returns the conversation and
    /// whether anything changed (no change: no new rev).
    pub fn update_conversation(
        &mut self,
        user: UserId,
        id: &str,
        u: &ConversationUpdate,
    ) -> Result<(ServerConversation, bool)> {
        let title = u.title.as_deref().map(check_title).transpose()?;
        let tx = self.write_tx()?;
        let c = live_conv(&tx, user, id)?;
        let new_title = title.unwrap_or_else(|| c.title.clone());
        let new_archived = u.archived.unwrap_or(c.archived);
        let new_model = u.model_id.clone().unwrap_or_else(|| c.model_id.clone());
        if new_title == c.title && new_archived == c.archived && new_model == c.model_id {
            return Ok((c, false));
        }
        let rev = bump(&tx, user, 1)?;
        tx.execute(
            "UPDATE srv_conversations SET title = ?2, archived = ?3, model_id = ?4,
                 updated_at = max(updated_at, ?5), rev = ?6
             WHERE id = ?1",
            params![
                key("conversation", id)?,
                new_title,
                new_archived,
                new_model,
                time::now_ms(),
                rev
            ],
        )?;
        let c = live_conv(&tx, user, id)?;
        tx.commit()?;
        Ok((c, true))
    }

    /// Deletes a conversation: its messages go, the row stays as a tombstone
    /// with a new rev. Returns the tombstone's rev and whether it was
    /// deleted already (then nothing changes).
    pub fn delete_conversation(&mut self, user: UserId, id: &str) -> Result<(i64, bool)> {
        let tx = self.write_tx()?;
        let c = match get_conv_any(&tx, id)? {
            Some((owner, c)) if owner == user => c,
            _ => return Err(not_found("conversation", id)),
        };
        if c.deleted {
            return Ok((c.rev, true));
        }
        let rev = bump(&tx, user, 1)?;
        let k = key("conversation", id)?;
        tx.execute("DELETE FROM srv_messages WHERE conversation_id = ?1", [k])?;
        tx.execute(
            "UPDATE srv_conversations SET deleted = 1, message_count = 0, archived = 0,
                 voice_messages = 0, web_messages = 0, api_messages = 0,
                 updated_at = max(updated_at, ?2), rev = ?3
             WHERE id = ?1",
            params![k, time::now_ms(), rev],
        )?;
        tx.commit()?;
        Ok((rev, false))
    }

    /// The tombstone or live record of a conversation of this user (for
    /// notifications after a delete).
    pub fn conversation_any(&self, user: UserId, id: &str) -> Result<ServerConversation> {
        match get_conv_any(&self.conn, id)? {
            Some((owner, c)) if owner == user => Ok(c),
            _ => Err(not_found("conversation", id)),
        }
    }

    /// A page of the user's conversations, newest activity first, after the
    /// conversation `before` when given. Returns the page and whether more follow.
    pub fn list_conversations(
        &self,
        user: UserId,
        include_archived: bool,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<ServerConversation>, bool)> {
        let limit = limit.clamp(1, 10_000);
        let (at, bid) = match before {
            Some(b) => match get_conv_any(&self.conn, b)? {
                Some((owner, _)) if owner == user => (
                    Some(activity_of(&self.conn, b)?),
                    Some(key("conversation", b)?),
                ),
                _ => return Err(not_found("conversation", b)),
            },
            None => (None, None),
        };
        let archived = if include_archived {
            ""
        } else {
            "AND archived = 0"
        };
        let cursor = if at.is_some() {
            "AND (activity_at, id) < (?2, ?3)"
        } else {
            "AND ?2 IS NULL AND ?3 IS NULL"
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONV_COLS} FROM srv_conversations
             WHERE user_id = ?1 AND deleted = 0 {archived} {cursor}
             ORDER BY activity_at DESC, id DESC LIMIT ?4"
        ))?;
        let mut rows: Vec<ServerConversation> = stmt
            .query_map(params![user, at, bid, limit as i64 + 1], conv_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    /// The ids of the user's conversations to export, newest activity
    /// first: one (it must be the user's and live) or all (archived ones
    /// too).
    pub fn export_ids(&self, user: UserId, conversation: Option<&str>) -> Result<Vec<String>> {
        if let Some(id) = conversation {
            return Ok(vec![self.get_conversation(user, id)?.id]);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM srv_conversations WHERE user_id = ?1 AND deleted = 0
             ORDER BY activity_at DESC, id DESC",
        )?;
        let ids = stmt
            .query_map([user], |r| id_at(r, 0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    /// One conversation with all its messages, oldest first, in the
    /// history's export form; `None` when it was deleted meanwhile.
    pub fn export_conversation(
        &self,
        user: UserId,
        id: &str,
    ) -> Result<Option<ExportedConversation>> {
        let c = match self.get_conversation(user, id) {
            Ok(c) => c,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut messages = Vec::with_capacity(c.message_count.clamp(0, 100_000) as usize);
        let mut before: Option<String> = None;
        loop {
            let (page, more) = self.messages(user, id, 1000, before.as_deref())?;
            before = page.first().map(|m| m.id.clone());
            let mut page = page;
            page.append(&mut messages);
            messages = page;
            if !more {
                break;
            }
        }
        Ok(Some(exported(c, messages)))
    }
}

fn activity_of(conn: &Connection, id: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT activity_at FROM srv_conversations WHERE id = ?1")?
        .query_row([key("conversation", id)?], |r| r.get(0))?)
}
