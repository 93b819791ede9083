//! Per-user fan-out of change notifications to a user's other connections
//! (those that said `hello`): the store's change feed ends here
//! ([`FeedSink`]), each committed change turned into its notification. Sending never waits: a connection whose
//! queue is full is a slow reader and is disconnected (see `conn.rs`), so a
//! stuck client can never hold up the one making the change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::conn::Conn;
use crate::protocol::ServerFrame;
use crate::serverdb::{Committed, FeedSink, UserId};

#[derive(Default)]
pub(crate) struct Hub {
    users: Mutex<HashMap<UserId, Vec<Arc<Conn>>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<Arc<Conn>>>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts sending the user's notifications to `conn` (idempotent).
    pub fn join(&self, conn: &Arc<Conn>) {
        let mut users = self.lock();
        let peers = users.entry(conn.user.id).or_default();
        if !peers.iter().any(|p| p.id == conn.id) {
            peers.push(conn.clone());
        }
    }

    pub fn leave(&self, conn: &Conn) {
        let mut users = self.lock();
        if let Some(peers) = users.get_mut(&conn.user.id) {
            peers.retain(|p| p.id != conn.id);
            if peers.is_empty() {
                users.remove(&conn.user.id);
            }
        }
    }

    /// Sends `frame` to the user's connections but `except`; returns how
    /// many it was queued for. The frame is encoded once.
    pub fn notify(&self, user: UserId, except: u64, frame: &ServerFrame) -> usize {
        let peers: Vec<Arc<Conn>> = match self.lock().get(&user) {
            Some(p) => p.iter().filter(|c| c.id != except).cloned().collect(),
            None => return 0,
        };
        if peers.is_empty() {
            return 0;
        }
        let text = Utf8Bytes::from(frame.encode());
        peers.iter().filter(|p| p.push(text.clone())).count()
    }
}

impl FeedSink for Hub {
    fn watching(&self, user: UserId) -> bool {
        self.lock().contains_key(&user)
    }

    fn deliver(&self, c: Committed) {
        for change in &c.changes {
            match crate::serverdb::notification(change) {
                Ok(body) => {
                    self.notify(c.user, c.by.0, &crate::protocol::Frame::new(None, body));
                }
                Err(e) => tracing::error!("database: {e}"),
            }
        }
    }
}
