//! Messages in the SQLite store: append (idempotent by id), find with
//! its reply, pages, full-text search, and the LLM context.

use rusqlite::{Connection, OptionalExtension, params};

use super::*;
use crate::serverdb::MessagePage;
use crate::store::{
    ChatMessage, MARK_END, MARK_START, check_content, check_id, estimate_tokens, fts_query, new_id,
};
use crate::time;

/// Stores one message in an open transaction (idempotent by id).
fn insert_message(conn: &Connection, user: UserId, new: &NewMessage) -> Result<Stored> {
    check_content(&new.content)?;
    let id = match &new.id {
        Some(id) => check_id("message id", id)?,
        None => new_id(),
    };
    let conversation_id = check_id("conversation id", &new.conversation_id)?;
    let reply_to = new
        .reply_to
        .as_deref()
        .map(|r| check_id("reply_to", r))
        .transpose()?;
    if let Some((owner, stored)) = get_msg(conn, &id)? {
        if owner != user {
            return Err(StoreError::Conflict(format!(
                "message id {id} is already taken; make a new UUID"
            )));
        }
        if stored.content != new.content
            || stored.conversation_id != conversation_id
            || stored.role != new.role
        {
            return Err(StoreError::Conflict(format!(
                "message {id} already exists with different content"
            )));
        }
        return Ok(Stored::Duplicate(stored));
    }
    live_conv(conn, user, &conversation_id)?;
    let rev = bump(conn, user, 1)?;
    let created_at = new.created_at.unwrap_or_else(time::now_ms);
    conn.prepare_cached(
        "INSERT INTO srv_messages (id, conversation_id, user_id, role, content, created_at, model_id,
             tokens_used, response_time_ms, is_audio, origin, reply_to, rev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        key("message", &id)?,
        key("conversation", &conversation_id)?,
        user,
        new.role.as_str(),
        new.content,
        created_at,
        new.model_id,
        new.tokens_used,
        new.response_time_ms,
        new.is_audio,
        new.origin.as_str(),
        reply_to.as_deref().map(|r| key("message", r)).transpose()?,
        rev,
    ])?;
    Ok(Stored::New(Message {
        id,
        conversation_id,
        role: new.role,
        content: new.content.clone(),
        created_at,
        model_id: new.model_id.clone(),
        tokens_used: new.tokens_used,
        response_time_ms: new.response_time_ms,
        is_audio: new.is_audio,
        origin: new.origin,
        reply_to,
        metadata: serde_json::Value::Object(Default::default()),
        rev,
    }))
}

impl Conn {
    // ---- messages ----

    /// Stores one message (idempotent by id: the same message again is a
    /// `Duplicate`; the same id with other content is a `Conflict`). The
    /// conversation must be the user's and not deleted.
    pub fn add_message(&mut self, user: UserId, new: &NewMessage) -> Result<Stored> {
        let tx = self.write_tx()?;
        let stored = insert_message(&tx, user, new)?;
        tx.commit()?;
        Ok(stored)
    }

    /// Stores many messages in one transaction; each is stored, a duplicate,
    /// or rejected with its reason (the others are stored all the same).
    pub fn append_messages(&mut self, user: UserId, msgs: &[NewMessage]) -> Result<AppendOutcome> {
        let tx = self.write_tx()?;
        let mut out = AppendOutcome::default();
        for m in msgs {
            match insert_message(&tx, user, m) {
                Ok(Stored::New(m)) => out.stored.push(m),
                Ok(Stored::Duplicate(m)) => out.duplicates.push(m.id),
                Err(e @ StoreError::Sqlite(_)) => return Err(e),
                Err(e) => out.rejected.push((m.id.clone().unwrap_or_default(), e)),
            }
        }
        out.rev = tx
            .prepare_cached("SELECT rev FROM srv_users WHERE id = ?1")?
            .query_row([user], |r| r.get(0))?;
        tx.commit()?;
        Ok(out)
    }

    /// A message of the user and the assistant reply to it (the first one
    /// stored), or `None`. Another user's id is a `Conflict`.
    pub fn find_message(&self, user: UserId, id: &str) -> Result<Option<MessageWithReply>> {
        let Some((owner, message)) = get_msg(&self.conn, id)? else {
            return Ok(None);
        };
        if owner != user {
            return Err(StoreError::Conflict(format!(
                "message id {id} is already taken; make a new UUID"
            )));
        }
        let reply = self
            .conn
            .prepare_cached(&format!(
                "SELECT {MSG_COLS} FROM srv_messages m
                 WHERE m.reply_to = ?1 AND m.role = 'assistant' AND m.user_id = ?2
                 ORDER BY m.seq LIMIT 1"
            ))?
            .query_row(params![key("message", id)?, user], msg_from_row)
            .optional()?;
        Ok(Some(MessageWithReply { message, reply }))
    }

    /// Up to `limit` messages of a conversation, oldest first: the newest
    /// ones, or those before the message `before`. Also says whether older
    /// ones exist.
    pub fn messages(
        &self,
        user: UserId,
        conversation_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<Message>, bool)> {
        self.messages_within(user, conversation_id, limit, before, &mut |_| true)
    }

    /// [`ServerDb::messages`], also ending the page (at its oldest end) where
    /// `fits` says no; the newest message goes in whatever it says.
    pub fn messages_within(
        &self,
        user: UserId,
        conversation_id: &str,
        limit: usize,
        before: Option<&str>,
        fits: &mut dyn FnMut(&Message) -> bool,
    ) -> Result<(Vec<Message>, bool)> {
        live_conv(&self.conn, user, conversation_id)?;
        let ck = key("conversation", conversation_id)?;
        let limit = limit.clamp(1, 100_000);
        let (at, seq) = match before {
            None => (i64::MAX, i64::MAX),
            Some(b) => self
                .conn
                .prepare_cached(
                    "SELECT created_at, seq FROM srv_messages WHERE id = ?1 AND conversation_id = ?2",
                )?
                .query_row([key("message", b)?, ck], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| not_found("message", b))?,
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MSG_COLS} FROM srv_messages m WHERE m.conversation_id = ?1
             AND (m.created_at, m.seq) < (?2, ?3)
             ORDER BY m.created_at DESC, m.seq DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![ck, at, seq, limit as i64 + 1], msg_from_row)?;
        let mut page = MessagePage::new(limit, fits);
        for m in rows {
            if !page.offer(m?) {
                break;
            }
        }
        Ok(page.finish())
    }

    /// Full-text search in the user's messages, best first; snippets mark
    /// matched words with `[` and `]`.
    pub fn search(
        &self,
        user: UserId,
        query: &str,
        conversation_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        self.search_within(user, query, conversation_id, limit, &mut |_| true)
    }

    /// [`ServerDb::search`], also stopping before the first hit `fits` says
    /// no to (the best hit goes in whatever it says).
    pub fn search_within(
        &self,
        user: UserId,
        query: &str,
        conversation_id: Option<&str>,
        limit: usize,
        fits: &mut dyn FnMut(&SearchHit) -> bool,
    ) -> Result<Vec<SearchHit>> {
        let q = fts_query(query)?;
        if let Some(c) = conversation_id {
            live_conv(&self.conn, user, c)?;
        }
        let ck = conversation_id
            .map(|c| key("conversation", c))
            .transpose()?;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MSG_COLS}, c.title, snippet(srv_messages_fts, 0, ?4, ?5, '…', 12)
             FROM srv_messages_fts
             JOIN srv_messages m ON m.seq = srv_messages_fts.rowid
             JOIN srv_conversations c ON c.id = m.conversation_id
             WHERE srv_messages_fts MATCH ?1 AND m.user_id = ?2
               AND (?3 IS NULL OR m.conversation_id = ?3)
             ORDER BY rank LIMIT ?6"
        ))?;
        let rows = stmt.query_map(
            params![
                q,
                user,
                ck,
                MARK_START,
                MARK_END,
                limit.clamp(1, 1000) as i64
            ],
            |r| {
                Ok(SearchHit {
                    message: msg_from_row(r)?,
                    conversation_title: r.get(13)?,
                    snippet: r.get(14)?,
                })
            },
        )?;
        let mut hits = Vec::new();
        for h in rows {
            let h = h?;
            if !fits(&h) && !hits.is_empty() {
                break;
            }
            hits.push(h);
        }
        Ok(hits)
    }

    /// The LLM context of a reply to `upto` (a message of the conversation):
    /// the system prompt, then the most recent messages up to and including
    /// `upto` that fit in `budget_tokens` (oldest dropped first), oldest first.
    pub fn context(
        &self,
        user: UserId,
        conversation_id: &str,
        upto: &str,
        system_prompt: &str,
        budget_tokens: usize,
    ) -> Result<Vec<ChatMessage>> {
        live_conv(&self.conn, user, conversation_id)?;
        let ck = key("conversation", conversation_id)?;
        let (at, seq): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT created_at, seq FROM srv_messages WHERE id = ?1 AND conversation_id = ?2",
            )?
            .query_row([key("message", upto)?, ck], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| not_found("message", upto))?;
        let mut out = Vec::new();
        let mut used = 0;
        if !system_prompt.trim().is_empty() {
            used += estimate_tokens(system_prompt);
            out.push(ChatMessage {
                role: Role::System,
                content: system_prompt.to_string(),
            });
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT role, content FROM srv_messages WHERE conversation_id = ?1
             AND (created_at, seq) <= (?2, ?3)
             ORDER BY created_at DESC, seq DESC LIMIT 500",
        )?;
        let mut rows = stmt.query(params![ck, at, seq])?;
        let mut recent = Vec::new();
        while let Some(r) = rows.next()? {
            let content: String = r.get(1)?;
            let cost = estimate_tokens(&content);
            // The question itself always goes, even over budget.
            if used + cost > budget_tokens && !recent.is_empty() {
                break;
            }
            used += cost;
            let role: String = r.get(0)?;
            recent.push(ChatMessage {
                role: Role::parse(&role).unwrap_or(Role::User),
                content,
            });
        }
        out.extend(recent.into_iter().rev());
        Ok(out)
    }

    /// What the LLM reply to `upto` is made from: the user's personality
    /// (else `default_prompt`) as the system prompt, the context, and the
    /// model the conversation or the settings prefer. One snapshot.
    pub fn reply_context(
        &self,
        user: UserId,
        conversation_id: &str,
        upto: &str,
        default_prompt: &str,
        budget_tokens: usize,
    ) -> Result<ReplyContext> {
        let settings = self.settings(user)?;
        let conv = self.get_conversation(user, conversation_id)?;
        let prompt = settings
            .assistant_personality
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| default_prompt.to_string());
        let messages = self.context(user, conversation_id, upto, &prompt, budget_tokens)?;
        Ok(ReplyContext {
            messages,
            model: conv.model_id.or(settings.selected_model),
        })
    }
}
