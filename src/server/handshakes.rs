//! Sockets not yet authenticated (still sending their request head, or on
//! `/health`) have a budget of their own, apart from the connections:
//! `max_handshakes` in all and `max_handshakes_per_address` per client
//! address. So sockets that never finish their head (slowloris) can never
//! take a connection's place, which is only given after authentication.
//!
//! Over the per-address limit a new socket is closed at once. When the
//! whole budget is in use, the *oldest* socket makes room for the new one:
//! a real client finishes its head in milliseconds, so the sockets that
//! linger are the ones that never will.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Why a socket was not given a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PerAddressFull {
    pub max: usize,
}

#[derive(Default)]
struct Inner {
    /// By age (ids increase): the address and the eviction switch.
    slots: BTreeMap<u64, (IpAddr, CancellationToken)>,
    per_address: HashMap<IpAddr, usize>,
    next: u64,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<(IpAddr, CancellationToken)> {
        let (ip, token) = self.slots.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
        Some((ip, token))
    }
}

pub(crate) struct Handshakes {
    max: usize,
    per_address: usize,
    inner: Mutex<Inner>,
}

/// A socket's place; given back when dropped (or taken by eviction).
pub(crate) struct Slot {
    id: u64,
    evicted: CancellationToken,
    owner: Arc<Handshakes>,
}

impl Slot {
    /// Completes when the slot was taken for a newer socket.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.lock().remove(self.id);
    }
}

/// What [`Handshakes::admit`] did besides admitting.
pub(crate) struct Admitted {
    pub slot: Slot,
    /// The address of the socket evicted to make room.
    pub evicted: Option<IpAddr>,
}

impl Handshakes {
    pub fn new(max: usize, per_address: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            max: max.max(1),
            per_address: per_address.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new socket from `ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, PerAddressFull> {
        let mut g = self.lock();
        if g.per_address.get(&ip).copied().unwrap_or(0) >= self.per_address {
            return Err(PerAddressFull {
                max: self.per_address,
            });
        }
        let evicted = if g.slots.len() >= self.max {
            Self::evict_locked(&mut g)
        } else {
            None
        };
        let id = g.next;
        g.next += 1;
        let token = CancellationToken::new();
        g.slots.insert(id, (ip, token.clone()));
        *g.per_address.entry(ip).or_default() += 1;
        Ok(Admitted {
            slot: Slot {
                id,
                evicted: token,
                owner: self.clone(),
            },
            evicted,
        })
    }

    fn evict_locked(g: &mut Inner) -> Option<IpAddr> {
        let id = *g.slots.keys().next()?;
        let (ip, token) = g.remove(id)?;
        token.cancel();
        Some(ip)
    }

    /// Drops the oldest socket (out of file descriptors: make one free).
    pub fn evict_oldest(&self) -> Option<IpAddr> {
        Self::evict_locked(&mut self.lock())
    }

    /// Sockets holding a place now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_limit_and_eviction_of_the_oldest() {
        let h = Handshakes::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = h.admit(a).unwrap();
        let a2 = h.admit(a).unwrap();
        // At the per-address limit, one past it is refused.
        assert_eq!(h.admit(a).err(), Some(PerAddressFull { max: 2 }));
        let b1 = h.admit(b).unwrap();
        assert!(b1.evicted.is_none());
        assert_eq!(h.len(), 3);
        // Full: the oldest (a1) makes room.
        let c1 = h.admit(c).unwrap();
        assert_eq!(c1.evicted, Some(a));
        assert!(a1.slot.evicted.is_cancelled());
        assert!(!a2.slot.evicted.is_cancelled());
        assert_eq!(h.len(), 3);
        // `a` has one place left now.
        drop(a1);
        assert_eq!(h.len(), 3);
        drop(a2);
        assert_eq!(h.len(), 2);
        let _a3 = h.admit(a).unwrap();
        assert_eq!(h.evict_oldest(), Some(b));
        drop((b1, c1));
        assert_eq!(h.len(), 1);
    }
}
