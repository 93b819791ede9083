//! The server's view of the device tokens, read from the database at start
//! and every `ping_interval` after (`pichat token add|revoke` runs in
//! another process): a revoked token's open connections are closed (1008)
//! within one interval; added and revoked tokens, and the first use of a
//! token from an address (since the server started), go to the audit trail.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use super::audit::{Audit, Event, Who};
use super::registry::Registry;
use crate::protocol::close;
use crate::serverdb::{ServerStore, TokenInfo};

/// Addresses remembered per token (the oldest is forgotten first).
const ADDRESSES_PER_TOKEN: usize = 32;

#[derive(Default)]
struct Book {
    tokens: HashMap<i64, TokenInfo>,
    loaded: bool,
    seen: HashMap<i64, VecDeque<IpAddr>>,
}

#[derive(Default)]
pub(crate) struct TokenBook {
    book: Mutex<Book>,
}

/// What a refresh found.
#[derive(Debug, Default)]
struct Changes {
    added: Vec<TokenInfo>,
    newly_revoked: Vec<TokenInfo>,
    revoked: HashSet<i64>,
}

fn who(t: &TokenInfo, addr: Option<IpAddr>) -> Who {
    Who {
        user: Some(t.user.clone()),
        device: t.device.clone(),
        addr,
    }
}

impl TokenBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device name of a token, if it is known.
    pub fn device(&self, id: i64) -> Option<Option<String>> {
        self.lock().tokens.get(&id).map(|t| t.device.clone())
    }

    /// True the first time `id` is used from `addr` (since the start).
    pub fn first_use_from(&self, id: i64, addr: IpAddr) -> bool {
        let mut b = self.lock();
        let seen = b.seen.entry(id).or_default();
        if seen.contains(&addr) {
            return false;
        }
        if seen.len() >= ADDRESSES_PER_TOKEN {
            seen.pop_front();
        }
        seen.push_back(addr);
        true
    }

    fn update(&self, fresh: Vec<TokenInfo>) -> Changes {
        let mut b = self.lock();
        let mut c = Changes::default();
        for t in &fresh {
            if t.revoked_at.is_some() {
                c.revoked.insert(t.id);
            }
            if !b.loaded {
                continue;
            }
            match b.tokens.get(&t.id) {
                None => c.added.push(t.clone()),
                Some(old) if old.revoked_at.is_none() && t.revoked_at.is_some() => {
                    c.newly_revoked.push(t.clone())
                }
                Some(_) => {}
            }
        }
        b.tokens = fresh.into_iter().map(|t| (t.id, t)).collect();
        b.loaded = true;
        c
    }
}

impl TokenBook {
    /// Reads the tokens again (from the store); closes the connections of
    /// revoked ones and audits the changes.
    pub(crate) async fn refresh(&self, db: &dyn ServerStore, registry: &Registry, audit: &Audit) {
        let fresh = match db.tokens().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(
                    "cannot read the tokens (revoked tokens stay connected until then): {e}"
                );
                return;
            }
        };
        let c = self.update(fresh);
        for t in &c.added {
            let reason = format!("token {} added", t.id);
            audit.once(Event::TokenAdded, &who(t, None), &reason);
        }
        for t in &c.newly_revoked {
            let reason = format!("token {} revoked; its connections are closed", t.id);
            audit.once(Event::TokenRevoked, &who(t, None), &reason);
        }
        for conn in registry.with_tokens(&c.revoked) {
            let reason = format!(
                "connection {} closed: token {} was revoked",
                conn.id, conn.user.token_id
            );
            audit.once(Event::TokenRevoked, &conn.who(), &reason);
            conn.kill(close::POLICY_VIOLATION, "token revoked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: i64, revoked: bool) -> TokenInfo {
        TokenInfo {
            id,
            user: "alice".into(),
            device: Some("pi".into()),
            created_at: 0,
            last_used_at: None,
            revoked_at: revoked.then_some(1),
        }
    }

    #[test]
    fn changes_since_the_last_read() {
        let b = TokenBook::default();
        let c = b.update(vec![token(1, false), token(2, true)]);
        assert!(c.added.is_empty() && c.newly_revoked.is_empty(), "{c:?}");
        assert_eq!(c.revoked, HashSet::from([2]));
        let c = b.update(vec![token(1, true), token(2, true), token(3, false)]);
        assert_eq!(c.added.iter().map(|t| t.id).collect::<Vec<_>>(), [3]);
        assert_eq!(
            c.newly_revoked.iter().map(|t| t.id).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(c.revoked, HashSet::from([1, 2]));
        assert_eq!(b.device(3), Some(Some("pi".into())));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(b.first_use_from(1, ip));
        assert!(!b.first_use_from(1, ip));
        assert!(b.first_use_from(3, ip));
    }
}
