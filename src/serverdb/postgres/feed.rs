//! The sync feed of the PostgreSQL store: the same pages as the SQLite
//! store's (`sqlite/feed.rs`: a user's changes after a cursor, in rev
//! order, each row once at its latest state, a message never before its
//! conversation), read in one snapshot, in chunks by rev; and the range
//! reads the change feed uses to deliver what other servers wrote.

use std::collections::VecDeque;

use super::*;
use crate::serverdb::feed::Page;

/// Rows read at a time from each table.
const CHUNK: i64 = 128;

/// One table's rows of the user with `rev > after` (and `<= upto`), read
/// in chunks by rev as they are taken.
struct Source {
    sql: String,
    user: UserId,
    after: i64,
    upto: i64,
    buf: VecDeque<ServerChange>,
    done: bool,
}

impl Source {
    fn new(sql: String, user: UserId, after: i64, upto: i64) -> Source {
        Source {
            sql,
            user,
            after,
            upto,
            buf: VecDeque::new(),
            done: false,
        }
    }

    async fn peek(
        &mut self,
        c: &impl GenericClient,
        message: bool,
    ) -> Result<Option<&ServerChange>> {
        if self.buf.is_empty() && !self.done {
            let got = rows(c, &self.sql, &[&self.user, &self.after, &self.upto, &CHUNK]).await?;
            self.done = (got.len() as i64) < CHUNK;
            for r in &got {
                let ch = if message {
                    ServerChange::Message(msg_from_row(r))
                } else {
                    ServerChange::Conversation(conv_from_row(r))
                };
                self.after = ch.rev();
                self.buf.push_back(ch);
            }
        }
        Ok(self.buf.front())
    }

    fn take(&mut self) -> Option<ServerChange> {
        self.buf.pop_front()
    }
}

fn conversations(user: UserId, after: i64, upto: i64) -> Source {
    Source::new(
        format!(
            "SELECT {CONV_COLS} FROM srv_conversations
             WHERE user_id = $1 AND rev > $2 AND rev <= $3 ORDER BY rev LIMIT $4"
        ),
        user,
        after,
        upto,
    )
}

fn messages(user: UserId, after: i64, upto: i64) -> Source {
    Source::new(
        format!(
            "SELECT {MSG_COLS} FROM srv_messages m
             WHERE m.user_id = $1 AND m.rev > $2 AND m.rev <= $3 ORDER BY m.rev LIMIT $4"
        ),
        user,
        after,
        upto,
    )
}

/// The snapshot the feed reads in.
async fn snapshot(c: &mut deadpool_postgres::Client) -> Result<deadpool_postgres::Transaction<'_>> {
    c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)
}

impl PgStore {
    pub(super) async fn changes_(
        &self,
        user: UserId,
        since: i64,
        limit: usize,
        mut fits: Fits<ServerChange>,
    ) -> Result<ChangePage> {
        let mut page = Page::new(since, limit, &mut *fits);
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let mut settings = settings::changed_in(&tx, user, since, i64::MAX).await?;
        let mut convs = conversations(user, since, i64::MAX);
        let mut msgs = messages(user, since, i64::MAX);
        loop {
            let revs = [
                convs.peek(&tx, false).await?.map(ServerChange::rev),
                msgs.peek(&tx, true).await?.map(ServerChange::rev),
                settings.as_ref().map(|s| s.rev),
            ];
            let Some(lowest) = revs.iter().flatten().min().copied() else {
                break;
            };
            if !page.room() {
                break;
            }
            let ch = if revs[0] == Some(lowest) {
                convs.take()
            } else if revs[1] == Some(lowest) {
                msgs.take()
            } else {
                settings.take().map(ServerChange::Settings)
            }
            .ok_or_else(|| StoreError::Bug("the feed lost a peeked row".into()))?;
            if let Some(id) = page.needs(&ch) {
                let conv = conv_any(&tx, id).await?.map(|(_, c)| c);
                let id = id.to_string();
                page.looked_up(&id, conv);
            }
            if !page.offer(ch, lowest) {
                break;
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(page.finish())
    }
}

/// The user's rows whose last change has a rev in `after+1..=upto`, in rev
/// order, at most `max` of them (what the change feed delivers for a write
/// made elsewhere; a row changed again since comes at its later rev
/// instead). Returns them and the rev read up to.
pub(super) async fn feed_range(
    pool: &Pool,
    user: UserId,
    after: i64,
    upto: i64,
    max: usize,
) -> Result<(Vec<ServerChange>, i64)> {
    {
        let mut client = get(pool).await?;
        let tx = snapshot(&mut client).await?;
        let mut settings = settings::changed_in(&tx, user, after, upto).await?;
        let mut convs = conversations(user, after, upto);
        let mut msgs = messages(user, after, upto);
        let mut out = Vec::new();
        let mut at = after;
        loop {
            if out.len() == max {
                break;
            }
            let revs = [
                convs.peek(&tx, false).await?.map(ServerChange::rev),
                msgs.peek(&tx, true).await?.map(ServerChange::rev),
                settings.as_ref().map(|s| s.rev),
            ];
            let Some(lowest) = revs.iter().flatten().min().copied() else {
                at = upto;
                break;
            };
            let ch = if revs[0] == Some(lowest) {
                convs.take()
            } else if revs[1] == Some(lowest) {
                msgs.take()
            } else {
                settings.take().map(ServerChange::Settings)
            };
            if let Some(ch) = ch {
                at = ch.rev();
                out.push(ch);
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok((out, at))
    }
}
