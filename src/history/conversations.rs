//! Conversation operations: create, get, rename, archive, delete, list, cleanup.

use rusqlite::{OptionalExtension, Row, params};

use super::*;
use crate::time;

pub(super) const CONV_COLS: &str = "id, title, model_id, user_id, created_at, updated_at, \
     last_message_at, message_count, archived, metadata, rev, activity_at";

pub(super) fn conv_from_row(r: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: id_at(r, 0)?,
        title: r.get(1)?,
        model_id: r.get(2)?,
        user_id: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        last_message_at: r.get(6)?,
        message_count: r.get(7)?,
        archived: r.get(8)?,
        metadata: meta_from_sql(r.get(9)?),
        rev: r.get(10)?,
    })
}

impl Store {
    /// Creates a conversation. An existing id is not an error: the stored
    /// conversation is returned unchanged (creates are idempotent).
    pub fn create_conversation(&mut self, new: NewConversation) -> Result<Conversation> {
        let id = match &new.id {
            Some(id) => check_id("conversation id", id)?,
            None => new_id(),
        };
        let title = check_title(new.title.as_deref().unwrap_or("New conversation"))?;
        let now = new.created_at.unwrap_or_else(time::now_ms);
        self.conn.execute(
            "INSERT INTO conversations (id, title, model_id, created_at, updated_at, activity_at, metadata)
             VALUES (?1, ?2, ?3, ?4, ?4, ?4, ?5) ON CONFLICT (id) DO NOTHING",
            params![key("conversation", &id)?, title, new.model_id, now, meta_to_sql(&new.metadata)],
        )?;
        self.get_conversation(&id)
    }

    /// The conversation with this exact id.
    pub fn get_conversation(&self, id: &str) -> Result<Conversation> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {CONV_COLS} FROM conversations WHERE id = ?1"
            ))?
            .query_row([key("conversation", id)?], conv_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "conversation",
                id: id.to_string(),
            })
    }

    /// Resolves a full id or a unique prefix of one (at least 4 characters),
    /// as the CLI accepts them.
    pub fn resolve_conversation_id(&self, id_or_prefix: &str) -> Result<String> {
        let p = id_or_prefix.trim().to_ascii_lowercase();
        if p.len() < 4 || !p.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(StoreError::NotFound {
                what: "conversation",
                id: id_or_prefix.to_string(),
            });
        }
        // Range scan on the primary key: the ids whose hex starts with `p`.
        let hex: String = p.chars().filter(|c| *c != '-').take(32).collect();
        let bound = |fill: char| {
            let full: String = hex
                .chars()
                .chain(std::iter::repeat(fill))
                .take(32)
                .collect();
            uuid::Uuid::parse_str(&full).ok()
        };
        let (Some(lo), Some(hi)) = (bound('0'), bound('f')) else {
            return Err(StoreError::NotFound {
                what: "conversation",
                id: id_or_prefix.to_string(),
            });
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM conversations WHERE id BETWEEN ?1 AND ?2 ORDER BY id LIMIT 2",
        )?;
        let ids: Vec<String> = stmt
            .query_map([lo, hi], |r| id_at(r, 0))?
            .collect::<rusqlite::Result<_>>()?;
        match ids.len() {
            0 => Err(StoreError::NotFound {
                what: "conversation",
                id: id_or_prefix.to_string(),
            }),
            1 => Ok(ids.into_iter().next().unwrap_or_default()),
            _ => Err(StoreError::Ambiguous(id_or_prefix.to_string())),
        }
    }

    fn touch(&mut self, id: &str, sql: &str, value: &dyn rusqlite::ToSql) -> Result<Conversation> {
        let n = self.conn.execute(
            sql,
            params![value, time::now_ms(), key("conversation", id)?],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "conversation",
                id: id.to_string(),
            });
        }
        self.get_conversation(id)
    }

    pub fn rename_conversation(&mut self, id: &str, title: &str) -> Result<Conversation> {
        let title = check_title(title)?;
        self.touch(
            id,
            "UPDATE conversations SET title = ?1, updated_at = max(updated_at, ?2), pending = 1, pending_fields = pending_fields | 1 WHERE id = ?3",
            &title,
        )
    }

    pub fn set_archived(&mut self, id: &str, archived: bool) -> Result<Conversation> {
        self.touch(
            id,
            "UPDATE conversations SET archived = ?1, updated_at = max(updated_at, ?2), pending = 1, pending_fields = pending_fields | 2 WHERE id = ?3",
            &archived,
        )
    }

    pub fn set_model(&mut self, id: &str, model_id: &str) -> Result<Conversation> {
        self.touch(
            id,
            "UPDATE conversations SET model_id = ?1, updated_at = max(updated_at, ?2), pending = 1, pending_fields = pending_fields | 4 WHERE id = ?3",
            &model_id,
        )
    }

    /// Deletes a conversation and its messages, leaving a tombstone for sync.
    pub fn delete_conversation(&mut self, id: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        let k = key("conversation", id)?;
        let n = tx.execute("DELETE FROM conversations WHERE id = ?1", [k])?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "conversation",
                id: id.to_string(),
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO tombstones (id, entity, deleted_at, pending) VALUES (?1, 'conversation', ?2, 1)",
            params![k, time::now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A page of conversations, newest activity first.
    pub fn list_conversations(&self, q: &ListQuery) -> Result<ConversationPage> {
        let limit = q.limit.clamp(1, 1000);
        let mut sql = format!("SELECT {CONV_COLS} FROM conversations WHERE 1");
        match q.filter {
            ArchivedFilter::Active => sql.push_str(" AND archived = 0"),
            ArchivedFilter::Archived => sql.push_str(" AND archived = 1"),
            ArchivedFilter::All => {}
        }
        if q.before.is_some() {
            sql.push_str(" AND (activity_at, id) < (?1, ?2)");
        } else {
            sql.push_str(" AND ?1 IS NULL AND ?2 IS NULL");
        }
        sql.push_str(" ORDER BY activity_at DESC, id DESC LIMIT ?3 OFFSET ?4");
        let (a, i) = match &q.before {
            Some(c) => (Some(c.activity_at), Some(key("conversation", &c.id)?)),
            None => (None, None),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut last = None;
        let conversations = stmt
            .query_map(params![a, i, limit as i64, q.offset as i64], |r| {
                last = Some(Cursor {
                    activity_at: r.get(11)?,
                    id: id_at(r, 0)?,
                });
                conv_from_row(r)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next = if conversations.len() == limit {
            last.map(|c| c.encode())
        } else {
            None
        };
        Ok(ConversationPage {
            conversations,
            next,
        })
    }

    /// Conversations whose last activity is more than `days` days old. With
    /// `dry_run`, only lists them; else archives or deletes them. Returns the
    /// conversations concerned (as they were before).
    pub fn cleanup(
        &mut self,
        days: u32,
        action: CleanupAction,
        dry_run: bool,
    ) -> Result<Vec<Conversation>> {
        let cutoff = time::now_ms() - i64::from(days) * 86_400_000;
        let archived_clause = match action {
            CleanupAction::Archive => "AND archived = 0",
            CleanupAction::Delete => "",
        };
        let victims: Vec<Conversation> = {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {CONV_COLS} FROM conversations WHERE activity_at < ?1 {archived_clause} ORDER BY activity_at"
            ))?;
            stmt.query_map([cutoff], conv_from_row)?
                .collect::<rusqlite::Result<_>>()?
        };
        if dry_run || victims.is_empty() {
            return Ok(victims);
        }
        let now = time::now_ms();
        let tx = self.conn.transaction()?;
        for c in &victims {
            match action {
                CleanupAction::Archive => {
                    tx.execute(
                        "UPDATE conversations SET archived = 1, updated_at = max(updated_at, ?1), pending = 1, pending_fields = pending_fields | 2 WHERE id = ?2",
                        params![now, key("conversation", &c.id)?],
                    )?;
                }
                CleanupAction::Delete => {
                    let k = key("conversation", &c.id)?;
                    tx.execute("DELETE FROM conversations WHERE id = ?1", [k])?;
                    tx.execute(
                        "INSERT OR REPLACE INTO tombstones (id, entity, deleted_at, pending) VALUES (?1, 'conversation', ?2, 1)",
                        params![k, now],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(victims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::open_in_memory().unwrap()
    }

    #[test]
    fn create_is_idempotent() {
        let mut s = store();
        let id = new_id();
        let a = s
            .create_conversation(NewConversation {
                id: Some(id.clone()),
                title: Some("First".into()),
                ..Default::default()
            })
            .unwrap();
        let b = s
            .create_conversation(NewConversation {
                id: Some(id.clone()),
                title: Some("Second".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(b.title, "First");
    }

    #[test]
    fn rename_archive_delete() {
        let mut s = store();
        let c = s.create_conversation(NewConversation::default()).unwrap();
        assert_eq!(s.rename_conversation(&c.id, "  Hi  ").unwrap().title, "Hi");
        assert!(s.rename_conversation(&c.id, "").is_err());
        assert!(s.set_archived(&c.id, true).unwrap().archived);
        let page = s
            .list_conversations(&ListQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert!(page.conversations.is_empty());
        let page = s
            .list_conversations(&ListQuery {
                limit: 10,
                filter: ArchivedFilter::Archived,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.conversations.len(), 1);
        s.delete_conversation(&c.id).unwrap();
        assert!(matches!(
            s.get_conversation(&c.id),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.delete_conversation(&c.id),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn list_pages_newest_first() {
        let mut s = store();
        for i in 0..25 {
            s.create_conversation(NewConversation {
                title: Some(format!("c{i}")),
                created_at: Some(1_000_000 + i),
                ..Default::default()
            })
            .unwrap();
        }
        let mut titles = Vec::new();
        let mut before = None;
        loop {
            let page = s
                .list_conversations(&ListQuery {
                    limit: 10,
                    before: before.clone(),
                    ..Default::default()
                })
                .unwrap();
            titles.extend(page.conversations.iter().map(|c| c.title.clone()));
            match page.next {
                Some(n) => before = Cursor::decode(&n),
                None => break,
            }
        }
        let want: Vec<String> = (0..25).rev().map(|i| format!("c{i}")).collect();
        assert_eq!(titles, want);
        let page3 = s
            .list_conversations(&ListQuery {
                limit: 10,
                offset: 20,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page3.conversations.len(), 5);
        assert!(page3.next.is_none());
    }

    #[test]
    fn prefix_resolution() {
        let mut s = store();
        let c = s.create_conversation(NewConversation::default()).unwrap();
        assert_eq!(s.resolve_conversation_id(&c.id[..8]).unwrap(), c.id);
        assert_eq!(s.resolve_conversation_id(&c.id).unwrap(), c.id);
        assert!(s.resolve_conversation_id("zzzz").is_err());
        s.create_conversation(NewConversation::default()).unwrap();
        // Two v7 ids made in the same millisecond share their first 8 hex digits.
        assert!(matches!(
            s.resolve_conversation_id(&c.id[..4]),
            Err(StoreError::Ambiguous(_))
        ));
    }

    #[test]
    fn cleanup_dry_run_then_archive() {
        let mut s = store();
        let old = s
            .create_conversation(NewConversation {
                created_at: Some(time::now_ms() - 40 * 86_400_000),
                ..Default::default()
            })
            .unwrap();
        let fresh = s.create_conversation(NewConversation::default()).unwrap();
        let listed = s.cleanup(30, CleanupAction::Delete, true).unwrap();
        assert_eq!(
            listed.iter().map(|c| &c.id).collect::<Vec<_>>(),
            vec![&old.id]
        );
        assert!(
            s.get_conversation(&old.id).is_ok(),
            "dry run changed nothing"
        );
        s.cleanup(30, CleanupAction::Archive, false).unwrap();
        assert!(s.get_conversation(&old.id).unwrap().archived);
        assert!(!s.get_conversation(&fresh.id).unwrap().archived);
        s.cleanup(30, CleanupAction::Delete, false).unwrap();
        assert!(s.get_conversation(&old.id).is_err());
    }
}
