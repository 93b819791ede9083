//! Messages in the PostgreSQL store: append (idempotent by id; a batch is
//! a handful of statements whatever its size), find with its reply, pages,
//! full-text search (`ts_headline` snippets), and the LLM context.

use std::collections::HashMap;

use super::*;
use crate::serverdb::MessagePage;
use crate::store::{ChatMessage, check_content, check_id, estimate_tokens, fts_query, new_id};
use crate::time;

/// A message checked, with its ids in canonical form.
struct Checked<'a> {
    new: &'a NewMessage,
    id: String,
    conversation_id: String,
    reply_to: Option<String>,
}

fn check(new: &NewMessage) -> Result<Checked<'_>> {
    check_content(&new.content)?;
    Ok(Checked {
        new,
        id: match &new.id {
            Some(id) => check_id("message id", id)?,
            None => new_id(),
        },
        conversation_id: check_id("conversation id", &new.conversation_id)?,
        reply_to: new
            .reply_to
            .as_deref()
            .map(|r| check_id("reply_to", r))
            .transpose()?,
    })
}

fn uuid_of(s: &str) -> uuid::Uuid {
    // Ids were checked (or read back from the database): always UUIDs.
    uuid::Uuid::parse_str(s).unwrap_or_default()
}

/// A snapshot for reads of several queries.
async fn snapshot(c: &mut deadpool_postgres::Client) -> Result<deadpool_postgres::Transaction<'_>> {
    c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)
}

impl PgStore {
    /// Stores messages in one transaction: each one's outcome, in order,
    /// and the user's rev after the batch.
    pub(super) async fn append_(
        &self,
        by: Author,
        user: UserId,
        msgs: &[NewMessage],
    ) -> Result<Vec<Result<Stored>>> {
        Ok(self.append_all(by, user, msgs).await?.0)
    }

    async fn append_all(
        &self,
        by: Author,
        user: UserId,
        msgs: &[NewMessage],
    ) -> Result<(Vec<Result<Stored>>, i64)> {
        let checked: Vec<Result<Checked<'_>>> = msgs.iter().map(check).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let mut rev = lock_user(&tx, user).await?;
        let ids: Vec<uuid::Uuid> = checked.iter().flatten().map(|c| uuid_of(&c.id)).collect();
        let convs: Vec<uuid::Uuid> = checked
            .iter()
            .flatten()
            .map(|c| uuid_of(&c.conversation_id))
            .collect();
        let mut existing: HashMap<String, (UserId, Message)> = rows(
            &tx,
            &format!("SELECT {MSG_COLS}, m.user_id FROM srv_messages m WHERE m.id = ANY($1)"),
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| {
            let m = msg_from_row(r);
            (m.id.clone(), (r.get(AFTER_MSG_COLS), m))
        })
        .collect();
        let live: HashMap<String, bool> = rows(
            &tx,
            "SELECT id, user_id, deleted FROM srv_conversations WHERE id = ANY($1)",
            &[&convs],
        )
        .await?
        .iter()
        .map(|r| {
            let (id, owner, deleted): (uuid::Uuid, i64, bool) = (r.get(0), r.get(1), r.get(2));
            (id.to_string(), owner == user && !deleted)
        })
        .collect();
        let mut out = Vec::with_capacity(msgs.len());
        let mut fresh: Vec<Message> = Vec::new();
        for c in checked {
            let c = match c {
                Ok(c) => c,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            if let Some((owner, stored)) = existing.get(&c.id) {
                out.push(if *owner != user {
                    Err(taken("message", &c.id))
                } else if stored.content != c.new.content
                    || stored.conversation_id != c.conversation_id
                    || stored.role != c.new.role
                {
                    Err(StoreError::Conflict(format!(
                        "message {} already exists with different content",
                        c.id
                    )))
                } else {
                    Ok(Stored::Duplicate(stored.clone()))
                });
                continue;
            }
            if !live.get(&c.conversation_id).copied().unwrap_or(false) {
                out.push(Err(not_found("conversation", &c.conversation_id)));
                continue;
            }
            rev += 1;
            let m = Message {
                id: c.id.clone(),
                conversation_id: c.conversation_id,
                role: c.new.role,
                content: c.new.content.clone(),
                created_at: c.new.created_at.unwrap_or_else(time::now_ms),
                model_id: c.new.model_id.clone(),
                tokens_used: c.new.tokens_used,
                response_time_ms: c.new.response_time_ms,
                is_audio: c.new.is_audio,
                origin: c.new.origin,
                reply_to: c.reply_to,
                metadata: serde_json::Value::Object(Default::default()),
                rev,
            };
            existing.insert(m.id.clone(), (user, m.clone()));
            fresh.push(m.clone());
            out.push(Ok(Stored::New(m)));
        }
        if !fresh.is_empty() {
            insert(&tx, user, &fresh).await?;
            set_rev(&tx, user, rev).await?;
            let changes = fresh.into_iter().map(ServerChange::Message).collect();
            self.commit_feed(tx, user, by, changes).await?;
        }
        Ok((out, rev))
    }

    pub(super) async fn append_messages_(
        &self,
        by: Author,
        user: UserId,
        msgs: &[NewMessage],
    ) -> Result<AppendOutcome> {
        let (outcomes, rev) = self.append_all(by, user, msgs).await?;
        let mut out = AppendOutcome {
            rev,
            ..Default::default()
        };
        for (m, o) in msgs.iter().zip(outcomes) {
            match o {
                Ok(Stored::New(m)) => out.stored.push(m),
                Ok(Stored::Duplicate(m)) => out.duplicates.push(m.id),
                Err(e) => out.rejected.push((m.id.clone().unwrap_or_default(), e)),
            }
        }
        Ok(out)
    }

    pub(super) async fn find_message_(
        &self,
        user: UserId,
        id: &str,
    ) -> Result<Option<MessageWithReply>> {
        let k = key("message", id)?;
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let Some(r) = opt(
            &tx,
            &format!("SELECT {MSG_COLS}, m.user_id FROM srv_messages m WHERE m.id = $1"),
            &[&k],
        )
        .await?
        else {
            return Ok(None);
        };
        if r.get::<_, i64>(AFTER_MSG_COLS) != user {
            return Err(taken("message", id));
        }
        let message = msg_from_row(&r);
        let reply = opt(
            &tx,
            &format!(
                "SELECT {MSG_COLS} FROM srv_messages m
                 WHERE m.reply_to = $1 AND m.role = 'assistant' AND m.user_id = $2
                 ORDER BY m.seq LIMIT 1"
            ),
            &[&k, &user],
        )
        .await?
        .map(|r| msg_from_row(&r));
        tx.commit().await.map_err(pg_error)?;
        Ok(Some(MessageWithReply { message, reply }))
    }

    pub(super) async fn messages_(
        &self,
        user: UserId,
        conversation_id: &str,
        limit: usize,
        before: Option<&str>,
        mut fits: Fits<Message>,
    ) -> Result<(Vec<Message>, bool)> {
        let limit = limit.clamp(1, 100_000);
        // Read in chunks (one snapshot), so a page holds what it sends.
        let chunk = (limit as i64 + 1).min(200);
        if before.is_none() && chunk == limit as i64 + 1 {
            return self
                .latest_messages(user, conversation_id, chunk, fits)
                .await;
        }
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        live_conv(&tx, user, conversation_id).await?;
        let ck = key("conversation", conversation_id)?;
        let (mut at, mut seq) = match before {
            None => (i64::MAX, i64::MAX),
            Some(b) => {
                let r = opt(
                    &tx,
                    "SELECT created_at, seq FROM srv_messages WHERE id = $1 AND conversation_id = $2",
                    &[&key("message", b)?, &ck],
                )
                .await?
                .ok_or_else(|| not_found("message", b))?;
                (r.get(0), r.get(1))
            }
        };
        let mut page = MessagePage::new(limit, &mut fits);
        'pages: loop {
            let got = rows(
                &tx,
                &format!(
                    "SELECT {MSG_COLS}, m.seq FROM srv_messages m WHERE m.conversation_id = $1
                     AND (m.created_at, m.seq) < ($2, $3)
                     ORDER BY m.created_at DESC, m.seq DESC LIMIT $4"
                ),
                &[&ck, &at, &seq, &chunk],
            )
            .await?;
            for r in &got {
                let m = msg_from_row(r);
                let next = (m.created_at, r.get(AFTER_MSG_COLS));
                if !page.offer(m) {
                    break 'pages;
                }
                (at, seq) = next;
            }
            if (got.len() as i64) < chunk {
                break;
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(page.finish())
    }

    /// The latest page of a conversation when it fits in one chunk (the
    /// common `get_messages`): the owner check and the rows in one
    /// statement (one snapshot, one round trip, no transaction).
    async fn latest_messages(
        &self,
        user: UserId,
        conversation_id: &str,
        fetch: i64,
        mut fits: Fits<Message>,
    ) -> Result<(Vec<Message>, bool)> {
        let c = self.client().await?;
        let got = rows(
            &c,
            &format!(
                "SELECT m.*, c.user_id, c.deleted FROM srv_conversations c
                 LEFT JOIN LATERAL (
                     SELECT {MSG_COLS}, m.seq FROM srv_messages m WHERE m.conversation_id = c.id
                     ORDER BY m.created_at DESC, m.seq DESC LIMIT $2
                 ) m ON true
                 WHERE c.id = $1
                 ORDER BY m.created_at DESC, m.seq DESC"
            ),
            &[&key("conversation", conversation_id)?, &fetch],
        )
        .await?;
        let owner = got.first().map(|r| {
            (
                r.get::<_, UserId>(AFTER_MSG_COLS + 1),
                r.get::<_, bool>(AFTER_MSG_COLS + 2),
            )
        });
        if owner != Some((user, false)) {
            return Err(not_found("conversation", conversation_id));
        }
        let mut page = MessagePage::new((fetch - 1) as usize, &mut fits);
        // No message: one row of NULLs from the outer join.
        for r in got
            .iter()
            .filter(|r| r.get::<_, Option<uuid::Uuid>>(0).is_some())
        {
            if !page.offer(msg_from_row(r)) {
                break;
            }
        }
        Ok(page.finish())
    }

    pub(super) async fn search_(
        &self,
        user: UserId,
        query: &str,
        conversation_id: Option<&str>,
        limit: usize,
        mut fits: Fits<SearchHit>,
    ) -> Result<Vec<SearchHit>> {
        // The same words as the SQLite store (and the same refusal of none).
        fts_query(query)?;
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let ck = match conversation_id {
            Some(c) => {
                live_conv(&tx, user, c).await?;
                Some(key("conversation", c)?)
            }
            None => None,
        };
        let limit = limit.clamp(1, 1000) as i64;
        let found = rows(
            &tx,
            &format!(
                "SELECT {MSG_COLS}, c.title,
                        ts_headline('simple', m.content, q,
                            'StartSel=[, StopSel=], MaxWords=12, MinWords=4, ShortWord=0')
                 FROM srv_messages m
                 JOIN srv_conversations c ON c.id = m.conversation_id,
                      plainto_tsquery('simple', $1) q
                 WHERE m.tsv @@ q AND m.user_id = $2
                   AND ($3::uuid IS NULL OR m.conversation_id = $3)
                 ORDER BY ts_rank(m.tsv, q) DESC, m.seq DESC LIMIT $4"
            ),
            &[&query, &user, &ck, &limit],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        let mut hits = Vec::new();
        for r in &found {
            let h = SearchHit {
                message: msg_from_row(r),
                conversation_title: r.get(AFTER_MSG_COLS),
                snippet: r.get(AFTER_MSG_COLS + 1),
            };
            if !fits(&h) && !hits.is_empty() {
                break;
            }
            hits.push(h);
        }
        Ok(hits)
    }

    pub(super) async fn reply_context_(
        &self,
        user: UserId,
        conversation_id: &str,
        upto: &str,
        default_prompt: &str,
        budget_tokens: usize,
    ) -> Result<ReplyContext> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let settings = settings::get(&tx, user).await?;
        let conv = live_conv(&tx, user, conversation_id).await?;
        let prompt = settings
            .assistant_personality
            .clone()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| default_prompt.to_string());
        let ck = key("conversation", conversation_id)?;
        let r = opt(
            &tx,
            "SELECT created_at, seq FROM srv_messages WHERE id = $1 AND conversation_id = $2",
            &[&key("message", upto)?, &ck],
        )
        .await?
        .ok_or_else(|| not_found("message", upto))?;
        let (at, seq): (i64, i64) = (r.get(0), r.get(1));
        let mut messages = Vec::new();
        let mut used = 0;
        if !prompt.trim().is_empty() {
            used += estimate_tokens(&prompt);
            messages.push(ChatMessage {
                role: Role::System,
                content: prompt,
            });
        }
        let got = rows(
            &tx,
            "SELECT role, content FROM srv_messages WHERE conversation_id = $1
             AND (created_at, seq) <= ($2, $3)
             ORDER BY created_at DESC, seq DESC LIMIT 500",
            &[&ck, &at, &seq],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        let mut recent = Vec::new();
        for r in got {
            let content: String = r.get(1);
            let cost = estimate_tokens(&content);
            // The question itself always goes, even over budget.
            if used + cost > budget_tokens && !recent.is_empty() {
                break;
            }
            used += cost;
            let role: &str = r.get(0);
            recent.push(ChatMessage {
                role: Role::parse(role).unwrap_or(Role::User),
                content,
            });
        }
        messages.extend(recent.into_iter().rev());
        Ok(ReplyContext {
            messages,
            model: conv.model_id.or(settings.selected_model),
        })
    }
}

/// Inserts new messages (one statement) and brings their conversations'
/// counters and times along (one statement), as SQLite's trigger does.
async fn insert(c: &impl GenericClient, user: UserId, ms: &[Message]) -> Result<()> {
    let ids: Vec<uuid::Uuid> = ms.iter().map(|m| uuid_of(&m.id)).collect();
    let convs: Vec<uuid::Uuid> = ms.iter().map(|m| uuid_of(&m.conversation_id)).collect();
    let roles: Vec<&str> = ms.iter().map(|m| m.role.as_str()).collect();
    let contents: Vec<&str> = ms.iter().map(|m| m.content.as_str()).collect();
    let created: Vec<i64> = ms.iter().map(|m| m.created_at).collect();
    let models: Vec<Option<&str>> = ms.iter().map(|m| m.model_id.as_deref()).collect();
    let tokens: Vec<Option<i64>> = ms.iter().map(|m| m.tokens_used).collect();
    let times: Vec<Option<i64>> = ms.iter().map(|m| m.response_time_ms).collect();
    let audio: Vec<bool> = ms.iter().map(|m| m.is_audio).collect();
    let origins: Vec<&str> = ms.iter().map(|m| m.origin.as_str()).collect();
    let replies: Vec<Option<uuid::Uuid>> = ms
        .iter()
        .map(|m| m.reply_to.as_deref().map(uuid_of))
        .collect();
    let revs: Vec<i64> = ms.iter().map(|m| m.rev).collect();
    exec(
        c,
        "INSERT INTO srv_messages (id, conversation_id, user_id, role, content, created_at,
             model_id, tokens_used, response_time_ms, is_audio, origin, reply_to, rev)
         SELECT u.id, u.cid, $1, u.role, u.content, u.created_at, u.model_id, u.tokens_used,
                u.rt, u.is_audio, u.origin, u.reply_to, u.rev
         FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::bigint[], $7::text[],
                     $8::bigint[], $9::bigint[], $10::bool[], $11::text[], $12::uuid[], $13::bigint[])
              AS u(id, cid, role, content, created_at, model_id, tokens_used, rt, is_audio,
                   origin, reply_to, rev)
         ORDER BY u.rev",
        &[
            &user, &ids, &convs, &roles, &contents, &created, &models, &tokens, &times, &audio,
            &origins, &replies, &revs,
        ],
    )
    .await?;
    // Per conversation: count, by origin, latest time.
    let mut per: Vec<(uuid::Uuid, [i64; 4], i64)> = Vec::new();
    for m in ms {
        let id = uuid_of(&m.conversation_id);
        let at = match per.iter().position(|(c, _, _)| *c == id) {
            Some(i) => i,
            None => {
                per.push((id, [0; 4], i64::MIN));
                per.len() - 1
            }
        };
        let (_, n, mx) = &mut per[at];
        n[0] += 1;
        n[1 + match m.origin {
            Origin::Voice => 0,
            Origin::Web => 1,
            Origin::Api => 2,
        }] += 1;
        *mx = (*mx).max(m.created_at);
    }
    let col = |i: usize| -> Vec<i64> { per.iter().map(|(_, n, _)| n[i]).collect() };
    let ids: Vec<uuid::Uuid> = per.iter().map(|(c, _, _)| *c).collect();
    let latest: Vec<i64> = per.iter().map(|(_, _, mx)| *mx).collect();
    exec(
        c,
        "UPDATE srv_conversations c SET
             message_count = c.message_count + d.n,
             voice_messages = c.voice_messages + d.v,
             web_messages = c.web_messages + d.w,
             api_messages = c.api_messages + d.a,
             last_message_at = greatest(coalesce(c.last_message_at, d.mx), d.mx),
             activity_at = greatest(c.activity_at, d.mx)
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
              AS d(id, n, v, w, a, mx)
         WHERE c.id = d.id",
        &[&ids, &col(0), &col(1), &col(2), &col(3), &latest],
    )
    .await?;
    Ok(())
}
