//! Conversations in the PostgreSQL store: create, change, delete
//! (tombstones), list, and the web app's exports.

use super::*;
use crate::store::{check_id, check_title, new_id};
use crate::time;

impl PgStore {
    pub(super) async fn create_conversation_(
        &self,
        by: Author,
        user: UserId,
        new: &NewConversation,
    ) -> Result<(ServerConversation, bool)> {
        let id = match &new.id {
            Some(id) => check_id("conversation id", id)?,
            None => new_id(),
        };
        let title = check_title(new.title.as_deref().unwrap_or("New conversation"))?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let rev = lock_user(&tx, user).await?;
        if let Some((owner, c)) = conv_any(&tx, &id).await? {
            if owner != user {
                return Err(taken("conversation", &id));
            }
            if c.deleted {
                return Err(StoreError::Conflict(format!(
                    "conversation {id} was deleted; ids are not reused, make a new UUID"
                )));
            }
            return Ok((c, true));
        }
        let rev = rev + 1;
        let now = new.created_at.unwrap_or_else(time::now_ms);
        exec(
            &tx,
            "INSERT INTO srv_conversations (id, user_id, title, model_id, created_at, updated_at,
                 activity_at, created_rev, rev)
             VALUES ($1, $2, $3, $4, $5, $5, $5, $6, $6)",
            &[
                &key("conversation", &id)?,
                &user,
                &title,
                &new.model_id,
                &now,
                &rev,
            ],
        )
        .await?;
        set_rev(&tx, user, rev).await?;
        let c = live_conv(&tx, user, &id).await?;
        self.commit_feed(tx, user, by, vec![ServerChange::Conversation(c.clone())])
            .await?;
        Ok((c, false))
    }

    pub(super) async fn update_conversation_(
        &self,
        by: Author,
        user: UserId,
        id: &str,
        u: &ConversationUpdate,
    ) -> Result<(ServerConversation, bool)> {
        let title = u.title.as_deref().map(check_title).transpose()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let rev = lock_user(&tx, user).await?;
        let c = live_conv(&tx, user, id).await?;
        let new_title = title.unwrap_or_else(|| c.title.clone());
        let new_archived = u.archived.unwrap_or(c.archived);
        let new_model = u.model_id.clone().unwrap_or_else(|| c.model_id.clone());
        if new_title == c.title && new_archived == c.archived && new_model == c.model_id {
            return Ok((c, false));
        }
        let rev = rev + 1;
        exec(
            &tx,
            "UPDATE srv_conversations SET title = $2, archived = $3, model_id = $4,
                 updated_at = greatest(updated_at, $5), rev = $6
             WHERE id = $1",
            &[
                &key("conversation", id)?,
                &new_title,
                &new_archived,
                &new_model,
                &time::now_ms(),
                &rev,
            ],
        )
        .await?;
        set_rev(&tx, user, rev).await?;
        let c = live_conv(&tx, user, id).await?;
        self.commit_feed(tx, user, by, vec![ServerChange::Conversation(c.clone())])
            .await?;
        Ok((c, true))
    }

    pub(super) async fn delete_conversation_(
        &self,
        by: Author,
        user: UserId,
        id: &str,
    ) -> Result<(i64, bool)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let rev = lock_user(&tx, user).await?;
        let c = match conv_any(&tx, id).await? {
            Some((owner, c)) if owner == user => c,
            _ => return Err(not_found("conversation", id)),
        };
        if c.deleted {
            return Ok((c.rev, true));
        }
        let rev = rev + 1;
        let k = key("conversation", id)?;
        exec(
            &tx,
            "DELETE FROM srv_messages WHERE conversation_id = $1",
            &[&k],
        )
        .await?;
        exec(
            &tx,
            "UPDATE srv_conversations SET deleted = true, message_count = 0, archived = false,
                 voice_messages = 0, web_messages = 0, api_messages = 0,
                 updated_at = greatest(updated_at, $2), rev = $3
             WHERE id = $1",
            &[&k, &time::now_ms(), &rev],
        )
        .await?;
        set_rev(&tx, user, rev).await?;
        let tomb = conv_any(&tx, id)
            .await?
            .map(|(_, c)| c)
            .ok_or_else(|| not_found("conversation", id))?;
        self.commit_feed(tx, user, by, vec![ServerChange::Conversation(tomb)])
            .await?;
        Ok((rev, false))
    }

    pub(super) async fn list_conversations_(
        &self,
        user: UserId,
        include_archived: bool,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<ServerConversation>, bool)> {
        let limit = limit.clamp(1, 10_000);
        let c = self.client().await?;
        let archived = if include_archived {
            ""
        } else {
            "AND NOT archived"
        };
        let fetch = limit as i64 + 1;
        let mut list: Vec<ServerConversation> = match before {
            Some(b) => {
                let (at, bid) = match conv_any(&c, b).await? {
                    Some((owner, conv)) if owner == user => {
                        let at: i64 = one(
                            &c,
                            "SELECT activity_at FROM srv_conversations WHERE id = $1",
                            &[&key("conversation", &conv.id)?],
                        )
                        .await?
                        .get(0);
                        (at, key("conversation", b)?)
                    }
                    _ => return Err(not_found("conversation", b)),
                };
                rows(
                    &c,
                    &format!(
                        "SELECT {CONV_COLS} FROM srv_conversations
                         WHERE user_id = $1 AND NOT deleted {archived} AND (activity_at, id) < ($2, $3)
                         ORDER BY activity_at DESC, id DESC LIMIT $4"
                    ),
                    &[&user, &at, &bid, &fetch],
                )
                .await?
            }
            None => {
                rows(
                    &c,
                    &format!(
                        "SELECT {CONV_COLS} FROM srv_conversations
                         WHERE user_id = $1 AND NOT deleted {archived}
                         ORDER BY activity_at DESC, id DESC LIMIT $2"
                    ),
                    &[&user, &fetch],
                )
                .await?
            }
        }
        .iter()
        .map(conv_from_row)
        .collect();
        let more = list.len() > limit;
        list.truncate(limit);
        Ok((list, more))
    }

    pub(super) async fn export_ids_(
        &self,
        user: UserId,
        conversation: Option<&str>,
    ) -> Result<Vec<String>> {
        let c = self.client().await?;
        if let Some(id) = conversation {
            return Ok(vec![live_conv(&c, user, id).await?.id]);
        }
        Ok(rows(
            &c,
            "SELECT id FROM srv_conversations WHERE user_id = $1 AND NOT deleted
             ORDER BY activity_at DESC, id DESC",
            &[&user],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, uuid::Uuid>(0).to_string())
        .collect())
    }

    pub(super) async fn export_conversation_(
        &self,
        user: UserId,
        id: &str,
    ) -> Result<Option<ExportedConversation>> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        let c = match live_conv(&tx, user, id).await {
            Ok(c) => c,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let k = key("conversation", id)?;
        let mut messages = Vec::with_capacity(c.message_count.clamp(0, 100_000) as usize);
        let (mut at, mut seq) = (i64::MIN, i64::MIN);
        loop {
            let chunk = rows(
                &tx,
                &format!(
                    "SELECT {MSG_COLS}, m.seq FROM srv_messages m WHERE m.conversation_id = $1
                     AND (m.created_at, m.seq) > ($2, $3) ORDER BY m.created_at, m.seq LIMIT 1000"
                ),
                &[&k, &at, &seq],
            )
            .await?;
            let Some(last) = chunk.last() else { break };
            (at, seq) = (last.get(4), last.get(AFTER_MSG_COLS));
            messages.extend(chunk.iter().map(msg_from_row));
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(Some(exported(c, messages)))
    }
}
