//! The sync feed of the SQLite store: a user's changes after a cursor, in
//! rev order, each row once at its latest state.

use std::collections::{HashMap, HashSet};

use rusqlite::params;

use super::*;

impl Conn {
    // ---- sync ----

    /// The user's changes with `rev > since`, ascending, each row once at its
    /// latest state, about `limit` of them.
    ///
    /// A message never comes before its conversation: when a message's
    /// conversation was created after `since` and has not come yet in this
    /// page, its current record is put just before the message (it comes
    /// again at its own rev later; applying it twice is harmless). Such
    /// records can make a page a little longer than `limit`.
    pub fn changes(&self, user: UserId, since: i64, limit: usize) -> Result<ChangePage> {
        self.changes_within(user, since, limit, &mut |_| true)
    }

    /// [`ServerDb::changes`], also ending the page where `fits` says no: it
    /// is asked about each record before it goes in (its caller counts the
    /// bytes); the page's first change goes in whatever it says. The rows
    /// are read as the page fills, so a page never holds more than it sends.
    pub fn changes_within(
        &self,
        user: UserId,
        since: i64,
        limit: usize,
        fits: &mut dyn FnMut(&ServerChange) -> bool,
    ) -> Result<ChangePage> {
        let limit = limit.clamp(1, 100_000);
        let fetch = limit as i64 + 1;
        let settings = Some(self.settings(user)?).filter(|s| s.rev > since);
        let mut conv_stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONV_COLS} FROM srv_conversations
             WHERE user_id = ?1 AND rev > ?2 ORDER BY rev LIMIT ?3"
        ))?;
        let mut convs = conv_stmt.query_map(params![user, since, fetch], conv_from_row)?;
        let mut msg_stmt = self.conn.prepare_cached(&format!(
            "SELECT {MSG_COLS} FROM srv_messages m
             WHERE m.user_id = ?1 AND m.rev > ?2 ORDER BY m.rev LIMIT ?3"
        ))?;
        let mut msgs = msg_stmt.query_map(params![user, since, fetch], msg_from_row)?;
        let mut next_conv = convs.next().transpose()?;
        let mut next_msg = msgs.next().transpose()?;
        let mut settings = settings;

        let mut sent: HashSet<String> = HashSet::new();
        let mut looked_up: HashMap<String, Option<ServerConversation>> = HashMap::new();
        let mut changes = Vec::new();
        let (mut taken, mut rev, mut has_more) = (0usize, since, false);
        loop {
            // The feed's next change: the lowest rev of the three sources.
            let revs = [
                next_conv.as_ref().map(|c| c.rev),
                next_msg.as_ref().map(|m| m.rev),
                settings.as_ref().map(|s| s.rev),
            ];
            let Some(lowest) = revs.iter().flatten().min().copied() else {
                break;
            };
            if taken == limit {
                has_more = true;
                break;
            }
            let ch = if revs[0] == Some(lowest) {
                ServerChange::Conversation(next_conv.take().expect("peeked"))
            } else if revs[1] == Some(lowest) {
                ServerChange::Message(next_msg.take().expect("peeked"))
            } else {
                ServerChange::Settings(settings.take().expect("peeked"))
            };
            let mut add = Vec::with_capacity(2);
            match &ch {
                ServerChange::Conversation(c) if sent.contains(&c.id) => {}
                ServerChange::Message(m) if !sent.contains(&m.conversation_id) => {
                    let conv = match looked_up.get(&m.conversation_id) {
                        Some(c) => c.clone(),
                        None => {
                            let c = get_conv_any(&self.conn, &m.conversation_id)?
                                .map(|(_, c)| c)
                                .filter(|c| c.created_rev > since);
                            looked_up.insert(m.conversation_id.clone(), c.clone());
                            c
                        }
                    };
                    if let Some(c) = conv {
                        add.push(ServerChange::Conversation(c));
                    }
                    add.push(ch.clone());
                }
                _ => add.push(ch.clone()),
            }
            // Each record is put to `fits`, so that it counts them all.
            let mut all_fit = true;
            for c in &add {
                all_fit &= fits(c);
            }
            if taken > 0 && !all_fit {
                has_more = true;
                break;
            }
            for c in add {
                if let ServerChange::Conversation(c) = &c {
                    sent.insert(c.id.clone());
                }
                changes.push(c);
            }
            taken += 1;
            rev = lowest;
            match ch {
                ServerChange::Conversation(_) => next_conv = convs.next().transpose()?,
                ServerChange::Message(_) => next_msg = msgs.next().transpose()?,
                ServerChange::Settings(_) => {}
            }
        }
        Ok(ChangePage {
            changes,
            rev,
            has_more,
        })
    }
}
