//! A connection's send queue, bounded in bytes (`send_queue_bytes`), with
//! its policy written down here:
//!
//! - A frame enters while the queue holds less than the limit, so the queue
//!   never holds more than the limit plus one frame (a reply larger than the
//!   limit still goes, alone).
//! - Replies wait for that room (up to `send_timeout`); notifications never
//!   wait: no room means the client does not read, and it is dropped (1013).
//! - The frame the writer has taken counts as *unsent* until it is written;
//!   the reader reads no further request while unsent bytes exceed the
//!   limit, so a client that asks and never reads holds at most one reply
//!   being written, a full queue and the one reply waiting for room.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What the writer is asked to do.
pub(crate) enum Out {
    Text(Utf8Bytes),
    /// Send what is queued before this, then close with this code.
    Close(u16, String),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Text(t) => t.len(),
            Out::Close(_, reason) => reason.len(),
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No room (a reply: not within its wait).
    Full,
    /// The connection is closing.
    Closed,
}

#[derive(Default)]
struct Inner {
    frames: VecDeque<Out>,
    /// Bytes in `frames`.
    queued: usize,
    /// Bytes of the frame the writer took and has not written yet.
    writing: usize,
    closed: bool,
}

pub(crate) struct SendQueue {
    limit: usize,
    inner: Mutex<Inner>,
    /// Wakes the writer: a frame was queued, or the queue closed.
    ready: Notify,
    /// Wakes whoever waits for room or for unsent bytes to go down.
    room: Notify,
}

impl SendQueue {
    pub fn new(limit: usize) -> SendQueue {
        SendQueue {
            limit: limit.max(1),
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `out` if there is room now.
    fn try_enter(&self, g: &mut Inner, out: &mut Option<Out>) -> Option<Result<(), Refused>> {
        if g.closed {
            return Some(Err(Refused::Closed));
        }
        if g.queued >= self.limit {
            return None;
        }
        let out = out.take()?;
        g.queued += out.len();
        g.frames.push_back(out);
        self.ready.notify_one();
        Some(Ok(()))
    }

    /// A reply: waits up to `wait` for room.
    pub async fn push_wait(&self, out: Out, wait: Duration) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Some(out);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_enter(&mut self.lock(), &mut out) {
                return r;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Refused::Full);
            }
        }
    }

    /// A notification: queued now, or refused.
    pub fn try_push(&self, out: Out) -> Result<(), Refused> {
        let mut out = Some(out);
        self.try_enter(&mut self.lock(), &mut out)
            .unwrap_or(Err(Refused::Full))
    }

    /// The writer's next frame; `None` once the queue is closed. The frame
    /// counts as unsent until [`SendQueue::written`].
    pub async fn pop(&self) -> Option<Out> {
        loop {
            let notified = self.ready.notified();
            {
                let mut g = self.lock();
                if let Some(out) = g.frames.pop_front() {
                    let n = out.len();
                    g.queued -= n;
                    g.writing += n;
                    self.room.notify_waiters();
                    return Some(out);
                }
                if g.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Frames queued and not yet taken by the writer, without waiting (for
    /// the socket-free fuzz harness).
    pub fn drain(&self) -> Vec<Out> {
        let mut g = self.lock();
        g.queued = 0;
        let out = g.frames.drain(..).collect();
        self.room.notify_waiters();
        out
    }

    /// The writer wrote the frame it took last (`len` of [`SendQueue::pop`]'s
    /// frame: the caller keeps it).
    pub fn written(&self, len: usize) {
        let mut g = self.lock();
        g.writing = g.writing.saturating_sub(len);
        self.room.notify_waiters();
    }

    /// Nothing is queued (the writer flushes then).
    pub fn is_empty(&self) -> bool {
        self.lock().frames.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Bytes queued or being written.
    #[cfg(test)]
    pub fn unsent(&self) -> usize {
        let g = self.lock();
        g.queued + g.writing
    }

    /// Waits until the unsent bytes are within the limit; false when they
    /// were not within `wait` (the client does not read) or the queue closed.
    pub async fn wait_unsent_within(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let g = self.lock();
                if g.closed {
                    return false;
                }
                if g.queued + g.writing <= self.limit {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Refuses new frames; the writer gets what is queued, then `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.room.notify_waiters();
    }
}

/// The size of a frame as the queue counts it.
pub(crate) fn size_of(out: &Out) -> usize {
    out.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Out {
        Out::Text("x".repeat(n).into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_enters_while_the_queue_is_below_its_limit() {
        let q = SendQueue::new(100);
        // One frame larger than the limit goes, alone.
        q.try_push(text(250)).unwrap();
        assert_eq!(q.try_push(text(1)), Err(Refused::Full));
        let wait = Duration::from_millis(50);
        assert_eq!(q.push_wait(text(1), wait).await, Err(Refused::Full));
        // Taken by the writer: room in the queue, but unsent until written.
        let o = q.pop().await.unwrap();
        assert_eq!(q.unsent(), 250);
        assert!(!q.wait_unsent_within(wait).await);
        q.try_push(text(60)).unwrap();
        q.try_push(text(60)).unwrap(); // 60 < 100: enters, 120 queued
        assert_eq!(q.try_push(text(1)), Err(Refused::Full));
        q.written(size_of(&o));
        assert_eq!(q.unsent(), 120);
        assert!(!q.wait_unsent_within(wait).await);
        q.pop().await.unwrap();
        q.written(60);
        assert!(q.wait_unsent_within(wait).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reply_enters_when_the_writer_takes_a_frame() {
        let q = std::sync::Arc::new(SendQueue::new(10));
        q.try_push(text(10)).unwrap();
        let q2 = q.clone();
        let waiting =
            tokio::spawn(async move { q2.push_wait(text(5), Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        q.pop().await.unwrap();
        assert_eq!(waiting.await.unwrap(), Ok(()));
        q.close();
        assert!(matches!(q.pop().await, Some(Out::Text(t)) if t.len() == 5));
        assert!(q.pop().await.is_none());
        assert_eq!(q.try_push(text(1)), Err(Refused::Closed));
    }
}
