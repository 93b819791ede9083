//! The audit trail: one log line per security event, all alike so they can
//! be found and parsed (`journalctl -u pichat-server | grep 'audit event='`):
//!
//! ```text
//! <4>audit event=auth_refused user="-" device="-" addr=10.0.0.7 reason="unknown or revoked token"
//! <6>audit event=new_address user="alice" device="kitchen-pi" addr=10.0.0.5 reason="first use of token 3 from this address"
//! <4>audit event=auth_refused user="-" device="-" addr=10.0.0.7 reason="unknown or revoked token" repeated=1999 window_s=60
//! ```
//!
//! Events that an attacker or a broken client can repeat at will (refused
//! authentication, refusals by a limit, rate limiting) are summarized: the
//! first of a kind (event, address, user) in a window is logged at once, at
//! most [`IMMEDIATE`] such lines per window; the rest are counted, and at
//! the end of the window the busiest kinds get one summary line each
//! (`repeated=N`), the others one line together. Rare events (a token used
//! from a new address, added or revoked) are always logged.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::auth::AuthUser;

/// How long counts are gathered before their summary.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Lines logged at once per window for repeating events.
const IMMEDIATE: usize = 64;
/// Kinds counted per window (more are counted together).
const MAX_KINDS: usize = 1024;
/// Summary lines per window, besides the one for the rest.
const SUMMARIES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Event {
    /// No token, or an unknown or revoked one.
    AuthRefused,
    /// Refused or dropped by a limit (connections, handshakes, frames...).
    LimitRefused,
    /// A request refused by a rate limit.
    RateLimited,
    /// A token used from an address it was not used from since the start.
    NewAddress,
    TokenAdded,
    /// Also: its open connections were closed.
    TokenRevoked,
    /// A browser signed in with a token (a session cookie was made).
    SignedIn,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::AuthRefused => "auth_refused",
            Event::LimitRefused => "limit_refused",
            Event::RateLimited => "rate_limited",
            Event::NewAddress => "new_address",
            Event::TokenAdded => "token_added",
            Event::TokenRevoked => "token_revoked",
            Event::SignedIn => "signed_in",
        }
    }

    fn is_warning(self) -> bool {
        !matches!(self, Event::NewAddress | Event::TokenAdded)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who an event is about; unknown parts are logged as `-`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Who {
    pub user: Option<String>,
    pub device: Option<String>,
    pub addr: Option<IpAddr>,
}

impl Who {
    /// A client whose token checked out.
    pub fn of(user: &AuthUser, addr: IpAddr) -> Who {
        Who {
            user: Some(user.name.clone()),
            device: user.device.clone(),
            addr: Some(addr),
        }
    }

    pub fn addr(addr: IpAddr) -> Who {
        Who {
            addr: Some(addr),
            ..Who::default()
        }
    }
}

fn line(event: Event, who: &Who, reason: &str, repeated: Option<u64>) {
    let user = who.user.as_deref().unwrap_or("-");
    let device = who.device.as_deref().unwrap_or("-");
    let addr: &dyn fmt::Display = match &who.addr {
        Some(a) => a,
        None => &"-",
    };
    match (event.is_warning(), repeated) {
        (true, None) => {
            tracing::warn!(event = %event, user, device, addr = %addr, reason, "audit")
        }
        (true, Some(n)) => tracing::warn!(
            event = %event, user, device, addr = %addr, reason, repeated = n,
            window_s = WINDOW.as_secs(), "audit"
        ),
        (false, None) => {
            tracing::info!(event = %event, user, device, addr = %addr, reason, "audit")
        }
        (false, Some(n)) => tracing::info!(
            event = %event, user, device, addr = %addr, reason, repeated = n,
            window_s = WINDOW.as_secs(), "audit"
        ),
    }
}

struct Count {
    /// Events after the first (which was logged, or counted in `silent`).
    more: u64,
    reason: String,
}

#[derive(Default)]
struct Window {
    kinds: HashMap<(Event, Who), Count>,
    logged: usize,
    /// Events beyond `MAX_KINDS`, per event.
    other: HashMap<Event, u64>,
}

#[derive(Default)]
pub(crate) struct Audit {
    window: Mutex<Window>,
}

impl Audit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A rare event: always logged.
    pub fn once(&self, event: Event, who: &Who, reason: &str) {
        line(event, who, reason, None);
    }

    /// An event that may repeat: logged at once the first time in the
    /// window, else counted for the summary.
    pub fn repeated(&self, event: Event, who: Who, reason: impl Into<String>) {
        let mut w = self.lock();
        if let Some(c) = w.kinds.get_mut(&(event, who.clone())) {
            c.more += 1;
            return;
        }
        if w.kinds.len() >= MAX_KINDS {
            *w.other.entry(event).or_default() += 1;
            return;
        }
        let reason = reason.into();
        let log_now = w.logged < IMMEDIATE;
        if log_now {
            w.logged += 1;
            line(event, &who, &reason, None);
        }
        w.kinds.insert(
            (event, who),
            Count {
                more: u64::from(!log_now),
                reason,
            },
        );
    }

    /// Ends the window: the summaries of what repeated.
    pub fn flush(&self) {
        let w = std::mem::take(&mut *self.lock());
        let mut repeated: Vec<_> = w.kinds.into_iter().filter(|(_, c)| c.more > 0).collect();
        repeated.sort_by_key(|(_, c)| std::cmp::Reverse(c.more));
        let mut rest = w.other;
        for (i, ((event, who), c)) in repeated.into_iter().enumerate() {
            if i < SUMMARIES {
                line(event, &who, &c.reason, Some(c.more));
            } else {
                *rest.entry(event).or_default() += c.more;
            }
        }
        for (event, n) in rest {
            line(event, &Who::default(), "from other addresses", Some(n));
        }
    }

    /// Kinds counted in this window (for tests).
    #[cfg(test)]
    fn pending(&self) -> u64 {
        let w = self.lock();
        w.kinds.values().map(|c| c.more).sum::<u64>() + w.other.values().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_the_window_starts_again() {
        let a = Audit::default();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        for _ in 0..500 {
            a.repeated(Event::AuthRefused, Who::addr(ip), "unknown token");
        }
        assert_eq!(a.pending(), 499);
        a.repeated(Event::LimitRefused, Who::addr(ip), "full");
        assert_eq!(a.lock().kinds.len(), 2);
        a.flush();
        assert_eq!(a.pending(), 0);
        assert!(a.lock().kinds.is_empty());
        // Bounded: beyond MAX_KINDS, counted together.
        for i in 0..(MAX_KINDS + 10) as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            a.repeated(Event::AuthRefused, Who::addr(ip), "x");
        }
        assert_eq!(a.lock().kinds.len(), MAX_KINDS);
        assert_eq!(a.lock().other[&Event::AuthRefused], 10);
        assert_eq!(a.lock().logged, IMMEDIATE);
    }
}
