//! The sync feed of the SQLite store: a user's changes after a cursor, in
//! rev order, each row once at its latest state.

use rusqlite::params;

use super::*;
use crate::serverdb::feed::Page;

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
        let mut page = Page::new(since, limit, fits);
        let fetch = page.limit() as i64 + 1;
        let mut settings = Some(self.settings(user)?).filter(|s| s.rev > since);
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
            if !page.room() {
                break;
            }
            let ch = if revs[0] == Some(lowest) {
                ServerChange::Conversation(next_conv.take().expect("peeked"))
            } else if revs[1] == Some(lowest) {
                ServerChange::Message(next_msg.take().expect("peeked"))
            } else {
                ServerChange::Settings(settings.take().expect("peeked"))
            };
            if let Some(id) = page.needs(&ch) {
                let conv = get_conv_any(&self.conn, id)?.map(|(_, c)| c);
                let id = id.to_string();
                page.looked_up(&id, conv);
            }
            let is_conv = matches!(ch, ServerChange::Conversation(_));
            let is_msg = matches!(ch, ServerChange::Message(_));
            if !page.offer(ch, lowest) {
                break;
            }
            if is_conv {
                next_conv = convs.next().transpose()?;
            } else if is_msg {
                next_msg = msgs.next().transpose()?;
            }
        }
        Ok(page.finish())
    }
}
