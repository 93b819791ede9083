//! The change feed: what a write changed, delivered after its commit to
//! the server's connections ([`FeedSink`], the server's hub), for each
//! user in `rev` order.
//!
//! SQLite (one server): the writer thread delivers right after each
//! commit, in commit order. PostgreSQL (several servers): each writing
//! transaction sends a `NOTIFY` with the user and its revs; PostgreSQL
//! delivers notifications in commit order, and one user's commits are in
//! rev order (its row in `srv_users` is locked by the rev bump until the
//! commit), so every server sees each user's changes in rev order. A
//! server delivers its own changes from what it wrote, and reads those of
//! others (only for users it has connections of); a gap (a notification
//! lost while the listener reconnected) is filled by reading the feed
//! from the last rev delivered ([`Sequencer`]).

use std::collections::{HashMap, HashSet};

use super::records::{ChangePage, ServerChange, ServerConversation, UserId};

/// Who made a change: the connection that has the reply and is left out
/// of the notification. [`Author::NOBODY`] for tools and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Author(pub u64);

impl Author {
    pub const NOBODY: Author = Author(0);
}

/// What one committed write changed for one user, in rev order.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub user: UserId,
    pub by: Author,
    pub changes: Vec<ServerChange>,
}

/// Where committed changes go. Called from the store's own threads or
/// tasks: must not block.
pub trait FeedSink: Send + Sync {
    /// Whether changes of `user` are wanted here (it has connections):
    /// changes made on other servers are read only for those users.
    fn watching(&self, user: UserId) -> bool;
    fn deliver(&self, c: Committed);
}

/// What to do with a notification of `user`'s revs `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered already (an older notification, or read in a gap fill).
    Skip,
    /// Deliver revs `first..=last`, as notified.
    Deliver,
    /// Revs after `after` were missed: read and deliver `after+1..=last`.
    FillFrom { after: i64 },
}

/// Each user's last delivered rev, on one server: turns a stream of
/// notifications, possibly with gaps, into deliveries in rev order with
/// nothing missed and nothing twice.
#[derive(Debug, Default)]
pub struct Sequencer {
    last: HashMap<UserId, i64>,
}

impl Sequencer {
    /// What to do with `user`'s revs `first..=last`; the caller then
    /// delivers and calls [`Sequencer::delivered`].
    pub fn next(&self, user: UserId, first: i64, last: i64) -> Next {
        match self.last.get(&user) {
            None => Next::Deliver,
            Some(&at) if last <= at => Next::Skip,
            Some(&at) if first <= at + 1 => Next::Deliver,
            Some(&at) => Next::FillFrom { after: at },
        }
    }

    pub fn delivered(&mut self, user: UserId, last: i64) {
        let at = self.last.entry(user).or_insert(last);
        *at = (*at).max(last);
    }

    /// Forgets users no longer watched (their next change starts afresh).
    pub fn retain(&mut self, mut watching: impl FnMut(UserId) -> bool) {
        self.last.retain(|u, _| watching(*u));
    }

    /// The users followed and their last rev (to fill in after a reconnect).
    pub fn followed(&self) -> Vec<(UserId, i64)> {
        self.last.iter().map(|(u, r)| (*u, *r)).collect()
    }
}

/// One page of a user's sync feed, as both stores assemble it from their
/// rows in rev order: at most `limit` changes and what `fits` takes (at
/// least one change, however large), each message preceded by its
/// conversation when the device cannot know it yet (created after the
/// cursor and not in this page already), each conversation once.
///
/// The store reads; the page decides: for each next change, the store
/// looks up the conversation [`Page::needs`] names (if any), hands it to
/// [`Page::looked_up`], then [`Page::offer`]s the change.
pub(super) struct Page<F> {
    since: i64,
    limit: usize,
    fits: F,
    sent: HashSet<String>,
    looked_up: HashMap<String, Option<ServerConversation>>,
    changes: Vec<ServerChange>,
    taken: usize,
    rev: i64,
    has_more: bool,
}

impl<F: FnMut(&ServerChange) -> bool> Page<F> {
    pub fn new(since: i64, limit: usize, fits: F) -> Self {
        Page {
            since,
            limit: limit.clamp(1, 100_000),
            fits,
            sent: HashSet::new(),
            looked_up: HashMap::new(),
            changes: Vec::new(),
            taken: 0,
            rev: since,
            has_more: false,
        }
    }

    /// How many rows of each table a store needs to read at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether another change may join (false: full by count, and more
    /// remain — call only when the feed has another change).
    pub fn room(&mut self) -> bool {
        if self.taken == self.limit {
            self.has_more = true;
        }
        !self.has_more
    }

    /// The conversation to look up before `ch` is offered.
    pub fn needs<'c>(&self, ch: &'c ServerChange) -> Option<&'c str> {
        match ch {
            ServerChange::Message(m)
                if !self.sent.contains(&m.conversation_id)
                    && !self.looked_up.contains_key(&m.conversation_id) =>
            {
                Some(&m.conversation_id)
            }
            _ => None,
        }
    }

    /// What the lookup [`Page::needs`] asked for found (`None`: no such
    /// conversation at all).
    pub fn looked_up(&mut self, id: &str, conv: Option<ServerConversation>) {
        let conv = conv.filter(|c| c.created_rev > self.since);
        self.looked_up.insert(id.to_string(), conv);
    }

    /// Adds the feed's next change (at rev `rev`), with its conversation
    /// when needed. Returns false when it does not fit: the page is done
    /// and has more.
    pub fn offer(&mut self, ch: ServerChange, rev: i64) -> bool {
        let mut add = Vec::with_capacity(2);
        match &ch {
            ServerChange::Conversation(c) if self.sent.contains(&c.id) => {}
            ServerChange::Message(m) if !self.sent.contains(&m.conversation_id) => {
                if let Some(Some(c)) = self.looked_up.get(&m.conversation_id) {
                    add.push(ServerChange::Conversation(c.clone()));
                }
                add.push(ch);
            }
            _ => add.push(ch),
        }
        // Each record is put to `fits`, so that it counts them all.
        let mut all_fit = true;
        for c in &add {
            all_fit &= (self.fits)(c);
        }
        if self.taken > 0 && !all_fit {
            self.has_more = true;
            return false;
        }
        for c in add {
            if let ServerChange::Conversation(c) = &c {
                self.sent.insert(c.id.clone());
            }
            self.changes.push(c);
        }
        self.taken += 1;
        self.rev = rev;
        true
    }

    pub fn finish(self) -> ChangePage {
        ChangePage {
            changes: self.changes,
            rev: self.rev,
            has_more: self.has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequencer_skips_old_delivers_next_and_fills_gaps() {
        let mut s = Sequencer::default();
        assert_eq!(s.next(1, 5, 5), Next::Deliver, "first seen: as notified");
        s.delivered(1, 5);
        assert_eq!(s.next(1, 6, 8), Next::Deliver);
        s.delivered(1, 8);
        assert_eq!(s.next(1, 7, 8), Next::Skip);
        assert_eq!(s.next(1, 3, 3), Next::Skip);
        assert_eq!(s.next(1, 11, 12), Next::FillFrom { after: 8 });
        s.delivered(1, 12);
        assert_eq!(s.next(2, 1, 1), Next::Deliver, "users are apart");
        s.delivered(2, 1);
        s.retain(|u| u == 2);
        assert_eq!(s.followed(), vec![(2, 1)]);
        assert_eq!(s.next(1, 40, 40), Next::Deliver, "forgotten: afresh");
    }
}
