//! The authenticated connections: their places (`max_connections` in all,
//! `max_connections_per_user` per user), taken only once a token checked
//! out, and the live connections by id, so a revoked token's connections
//! can be found and closed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::Conn;
use crate::serverdb::UserId;

/// Why a connection was refused a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` are open.
    Full { max: usize },
    /// The user has `max_connections_per_user` open.
    UserFull { max: usize },
}

#[derive(Default)]
struct Inner {
    per_user: HashMap<UserId, usize>,
    conns: HashMap<u64, Arc<Conn>>,
}

pub(crate) struct Registry {
    permits: Arc<Semaphore>,
    max: usize,
    per_user: usize,
    inner: Mutex<Inner>,
}

/// A connection's place, given back when dropped.
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    user: UserId,
    owner: Arc<Registry>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut g = self.owner.lock();
        if let Some(n) = g.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                g.per_user.remove(&self.user);
            }
        }
    }
}

impl Registry {
    pub fn new(max: usize, per_user: usize) -> Arc<Registry> {
        Arc::new(Registry {
            permits: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
            per_user: per_user.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection of `user`.
    pub fn admit(self: &Arc<Self>, user: UserId) -> Result<Admission, Refusal> {
        let mut g = self.lock();
        let n = g.per_user.get(&user).copied().unwrap_or(0);
        if n >= self.per_user {
            return Err(Refusal::UserFull { max: self.per_user });
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full { max: self.max })?;
        g.per_user.insert(user, n + 1);
        Ok(Admission {
            _permit: permit,
            user,
            owner: self.clone(),
        })
    }

    pub fn track(&self, conn: &Arc<Conn>) {
        self.lock().conns.insert(conn.id, conn.clone());
    }

    pub fn untrack(&self, id: u64) {
        self.lock().conns.remove(&id);
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// The open connections made with one of `tokens`.
    pub fn with_tokens(&self, tokens: &HashSet<i64>) -> Vec<Arc<Conn>> {
        self.lock()
            .conns
            .values()
            .filter(|c| tokens.contains(&c.user.token_id))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_in_all_and_per_user() {
        let r = Registry::new(3, 2);
        let a1 = r.admit(1).unwrap();
        let _a2 = r.admit(1).unwrap();
        assert_eq!(r.admit(1).err(), Some(Refusal::UserFull { max: 2 }));
        let _b1 = r.admit(2).unwrap();
        assert_eq!(r.admit(3).err(), Some(Refusal::Full { max: 3 }));
        drop(a1);
        let _c1 = r.admit(3).unwrap();
        assert_eq!(r.admit(1).err(), Some(Refusal::Full { max: 3 }));
    }
}
