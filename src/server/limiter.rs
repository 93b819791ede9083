//! Rate limits as token buckets on `tokio::time` (so tests can pause time):
//! per user and action for the expensive actions, per connection for the rest.
//! A store that several servers share (PostgreSQL) keeps the per-user
//! buckets itself, so the limits hold across the servers; this server's
//! own buckets are then the fallback while the store cannot answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::serverdb::{ServerStore, UserId};

/// A token bucket: `capacity` tokens, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(capacity: u32, per_sec: f64) -> Bucket {
        Bucket {
            capacity: f64::from(capacity.max(1)),
            per_sec: per_sec.max(1e-9),
            tokens: f64::from(capacity.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.per_sec;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }
}

/// The expensive actions, limited per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Costly {
    SendMessage,
    TextToSpeech,
    SpeechToText,
}

impl Costly {
    /// The bucket's name in a shared store.
    pub fn name(self) -> &'static str {
        match self {
            Costly::SendMessage => "send_message",
            Costly::TextToSpeech => "text_to_speech",
            Costly::SpeechToText => "speech_to_text",
        }
    }
}

/// Per-user buckets of the expensive actions: `per_min` each, per minute,
/// with a burst of `per_min`.
pub(crate) struct UserLimits {
    per_min: u32,
    buckets: Mutex<HashMap<(UserId, Costly), Bucket>>,
}

impl UserLimits {
    pub fn new(per_min: u32) -> UserLimits {
        UserLimits {
            per_min,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from the store's shared bucket when it keeps them,
    /// else (or while it cannot answer) from this server's.
    pub async fn take(
        &self,
        store: &dyn ServerStore,
        user: UserId,
        what: Costly,
    ) -> Result<(), Duration> {
        match store.take_shared(user, what.name(), self.per_min).await {
            Ok(Some(r)) => r,
            Ok(None) => self.take_here(user, what),
            Err(e) => {
                tracing::warn!(
                    "rate limits: the store's buckets cannot be read ({e}); this server's hold"
                );
                self.take_here(user, what)
            }
        }
    }

    /// Takes a token from this server's own bucket.
    pub fn take_here(&self, user: UserId, what: Costly) -> Result<(), Duration> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.entry((user, what))
            .or_insert_with(|| Bucket::new(self.per_min, f64::from(self.per_min) / 60.0))
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_over_time() {
        let l = UserLimits::new(5);
        for _ in 0..5 {
            l.take_here(1, Costly::SendMessage).unwrap();
        }
        let wait = l.take_here(1, Costly::SendMessage).unwrap_err();
        assert_eq!(wait.as_millis(), 12_000);
        // Other users and other actions have their own buckets.
        l.take_here(2, Costly::SendMessage).unwrap();
        l.take_here(1, Costly::TextToSpeech).unwrap();
        tokio::time::advance(wait).await;
        l.take_here(1, Costly::SendMessage).unwrap();
        assert!(l.take_here(1, Costly::SendMessage).is_err());
    }
}
