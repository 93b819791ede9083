//! Reading across the history: full-text search, statistics, and the LLM
//! context of a conversation.

use rusqlite::{OptionalExtension, params};

use super::messages::{MSG_COLS, msg_from_row};
use super::*;

impl Store {
    /// Full-text search, best matches first, with highlighted snippets.
    pub fn search(
        &self,
        query: &str,
        conversation_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        self.search_marked(query, conversation_id, limit, MARK_START, MARK_END)
    }

    /// [`Store::search`] with chosen highlight markers (e.g. terminal bold).
    pub fn search_marked(
        &self,
        query: &str,
        conversation_id: Option<&str>,
        limit: usize,
        start: &str,
        end: &str,
    ) -> Result<Vec<SearchHit>> {
        let q = fts_query(query)?;
        if let Some(c) = conversation_id {
            self.get_conversation(c)?;
        }
        let ck = conversation_id
            .map(|c| key("conversation", c))
            .transpose()?;
        let sql = format!(
            "SELECT {MSG_COLS}, c.title, snippet(messages_fts, 0, ?3, ?4, '…', 12)
             FROM messages_fts
             JOIN messages m ON m.seq = messages_fts.rowid
             JOIN conversations c ON c.id = m.conversation_id
             WHERE messages_fts MATCH ?1 AND (?2 IS NULL OR m.conversation_id = ?2)
             ORDER BY rank LIMIT ?5"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let hits = stmt
            .query_map(
                params![q, ck, start, end, limit.clamp(1, 1000) as i64],
                |r| {
                    Ok(SearchHit {
                        message: msg_from_row(r)?,
                        conversation_title: r.get(13)?,
                        snippet: r.get(14)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(hits)
    }

    /// Statistics of one conversation, or of the whole history.
    pub fn stats(&self, conversation_id: Option<&str>) -> Result<Stats> {
        if let Some(c) = conversation_id {
            self.get_conversation(c)?;
        }
        let ck = conversation_id
            .map(|c| key("conversation", c))
            .transpose()?;
        let (conversations, archived): (i64, i64) = match conversation_id {
            Some(_) => (1, 0),
            None => self.conn.query_row(
                "SELECT count(*), coalesce(sum(archived), 0) FROM conversations",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
        };
        let archived = match conversation_id {
            Some(c) => self.get_conversation(c)?.archived as i64,
            None => archived,
        };
        let row = self.conn.query_row(
            "SELECT count(*),
                    coalesce(sum(role = 'user'), 0),
                    coalesce(sum(role = 'assistant'), 0),
                    coalesce(sum(tokens_used), 0),
                    avg(response_time_ms),
                    min(created_at),
                    max(created_at)
             FROM messages WHERE ?1 IS NULL OR conversation_id = ?1",
            [ck],
            |r| {
                Ok(Stats {
                    conversation_id: conversation_id.map(str::to_string),
                    conversations,
                    archived_conversations: archived,
                    messages: r.get(0)?,
                    user_messages: r.get(1)?,
                    assistant_messages: r.get(2)?,
                    tokens_used: r.get(3)?,
                    avg_response_time_ms: r.get(4)?,
                    first_message_at: r.get(5)?,
                    last_message_at: r.get(6)?,
                })
            },
        )?;
        Ok(row)
    }

    /// The messages to send to the LLM: the system prompt, then the most
    /// recent messages of the conversation that fit in `budget_tokens`
    /// (oldest dropped first), oldest first.
    pub fn context(
        &self,
        conversation_id: &str,
        system_prompt: &str,
        budget_tokens: usize,
    ) -> Result<Vec<ChatMessage>> {
        let mut out = Vec::new();
        let mut used = 0;
        if !system_prompt.trim().is_empty() {
            used += estimate_tokens(system_prompt);
            out.push(ChatMessage {
                role: Role::System,
                content: system_prompt.to_string(),
            });
        }
        let exists: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM conversations WHERE id = ?1")?
            .query_row([key("conversation", conversation_id)?], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                what: "conversation",
                id: conversation_id.to_string(),
            });
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT role, content FROM messages WHERE conversation_id = ?1
             ORDER BY created_at DESC, seq DESC LIMIT 500",
        )?;
        let mut rows = stmt.query([key("conversation", conversation_id)?])?;
        let mut recent = Vec::new();
        while let Some(r) = rows.next()? {
            let content: String = r.get(1)?;
            let cost = estimate_tokens(&content);
            if used + cost > budget_tokens {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_building() {
        assert_eq!(
            fts_query("capital France").unwrap(),
            "\"capital\" \"France\""
        );
        assert_eq!(fts_query("a\"b OR c*").unwrap(), "\"a\" \"b\" \"OR\" \"c\"");
        assert!(fts_query("  ... ").is_err());
        assert!(fts_query("").is_err());
    }

    fn store_with(texts: &[(&str, Role)]) -> (Store, String) {
        let mut s = Store::open_in_memory().unwrap();
        let c = s.create_conversation(NewConversation::default()).unwrap();
        for (i, (t, role)) in texts.iter().enumerate() {
            let mut m = NewMessage::new(&c.id, *role, *t);
            m.created_at = Some(1000 + i as i64);
            if *role == Role::Assistant {
                m.tokens_used = Some(10);
                m.response_time_ms = Some(100 * (i as i64 + 1));
            }
            s.append_message(m).unwrap();
        }
        (s, c.id)
    }

    #[test]
    fn search_snippets_and_scope() {
        let (mut s, c) = store_with(&[
            ("What is the capital of France?", Role::User),
            ("The capital of France is Paris.", Role::Assistant),
            ("Tell me a joke", Role::User),
        ]);
        let other = s.create_conversation(NewConversation::default()).unwrap();
        s.append_message(NewMessage::new(&other.id, Role::User, "France again"))
            .unwrap();
        let hits = s.search("capital france", None, 20).unwrap();
        assert_eq!(hits.len(), 2);
        assert!(
            hits.iter()
                .all(|h| h.snippet.contains("[capital]") && h.snippet.contains("[France]"))
        );
        assert_eq!(s.search("france", None, 20).unwrap().len(), 3);
        assert_eq!(s.search("france", Some(&c), 20).unwrap().len(), 2);
        assert_eq!(s.search("FRANCE", Some(&other.id), 20).unwrap().len(), 1);
        assert!(s.search("nothing-here-xyz", None, 20).unwrap().is_empty());
    }

    #[test]
    fn stats_per_conversation_and_overall() {
        let (s, c) = store_with(&[
            ("q1", Role::User),
            ("a1", Role::Assistant),
            ("q2", Role::User),
            ("a2", Role::Assistant),
        ]);
        let st = s.stats(Some(&c)).unwrap();
        assert_eq!(
            (
                st.messages,
                st.user_messages,
                st.assistant_messages,
                st.tokens_used
            ),
            (4, 2, 2, 20)
        );
        assert_eq!(st.avg_response_time_ms, Some(300.0));
        let all = s.stats(None).unwrap();
        assert_eq!(all.conversations, 1);
        assert_eq!(all.messages, 4);
    }

    #[test]
    fn context_fits_budget_dropping_oldest() {
        let texts: Vec<(String, Role)> = (0..10)
            .map(|i| {
                (
                    format!("message number {i} {}", "x".repeat(36)),
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                )
            })
            .collect();
        let refs: Vec<(&str, Role)> = texts.iter().map(|(t, r)| (t.as_str(), *r)).collect();
        let (s, c) = store_with(&refs);
        let per = estimate_tokens(&texts[0].0);
        let sys = "Be brief.";
        let budget = estimate_tokens(sys) + 3 * per;
        let ctx = s.context(&c, sys, budget).unwrap();
        assert_eq!(ctx.len(), 4);
        assert_eq!(ctx[0].role, Role::System);
        assert!(ctx[1].content.starts_with("message number 7"));
        assert!(ctx[3].content.starts_with("message number 9"));
        assert!(s.context(&new_id(), sys, budget).is_err());
    }
}
