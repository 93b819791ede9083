//! The shared handle of one WebSocket connection: its send queue
//! (`queue.rs`) and its kill switch. The session queues its replies here,
//! the hub its notifications, the token watch kills it; the socket's reader
//! and writer (`socket/`) are the only ones that touch the socket.
//!
//! The policy of sending, written as code: the connection's own replies
//! wait for room in the queue up to `send_timeout` (an AI stream so slows
//! down to the client's pace); notifications from elsewhere never wait: a
//! full queue is a slow reader, dropped with 1013. The first reason to drop
//! a connection wins: it is the close code and reason the peer gets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::audit::{Audit, Event, Who};
use super::auth::AuthUser;
pub(crate) use super::queue::Out;
use super::queue::{Refused, SendQueue};
use crate::protocol::{ServerFrame, close};

/// The shared handle of a connection: its queue and its kill switch.
pub(crate) struct Conn {
    pub id: u64,
    pub user: AuthUser,
    pub peer: SocketAddr,
    queue: SendQueue,
    kill: CancellationToken,
    /// Why it was killed (first reason wins): the close code and reason.
    killed_for: Mutex<Option<(u16, String)>>,
    send_timeout: Duration,
    audit: Arc<Audit>,
}

/// How a connection sends: its queue's size in bytes
/// (`server.send_queue_kib`), and how long its replies wait for room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendLimits {
    pub queue_bytes: usize,
    pub send_timeout: Duration,
}

impl Conn {
    /// A new connection `id` of `user`, from `peer`.
    pub fn new(
        id: u64,
        user: AuthUser,
        peer: SocketAddr,
        limits: SendLimits,
        audit: Arc<Audit>,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            user,
            peer,
            queue: SendQueue::new(limits.queue_bytes),
            kill: CancellationToken::new(),
            killed_for: Mutex::new(None),
            send_timeout: limits.send_timeout,
            audit,
        })
    }

    /// Drops the connection now (queued frames may be lost).
    pub fn kill(&self, code: u16, reason: &str) {
        {
            let mut k = self.killed_for.lock().unwrap_or_else(|p| p.into_inner());
            if k.is_none() {
                *k = Some((code, reason.to_string()));
            }
        }
        self.kill.cancel();
    }

    pub fn is_dead(&self) -> bool {
        self.kill.is_cancelled() || self.queue.is_closed()
    }

    /// Who this is, for the audit trail.
    pub fn who(&self) -> Who {
        Who::of(&self.user, self.peer.ip())
    }

    /// Drops a client that does not read (`what`: what it left unread),
    /// with an audit line.
    pub fn too_slow(&self, what: &str) {
        let why = format!(
            "connection {} closed (1013): it does not read {what} (server.send_queue_kib)",
            self.id
        );
        self.audit.repeated(Event::LimitRefused, self.who(), why);
        self.kill(close::TRY_AGAIN_LATER, "too slow reading");
    }

    /// Queues a reply, waiting up to `send_timeout` for room. False when the
    /// connection is gone (or was just dropped as too slow).
    pub async fn send(&self, frame: &ServerFrame) -> bool {
        if self.is_dead() {
            return false;
        }
        self.send_out(Out::Text(frame.encode().into())).await
    }

    async fn send_out(&self, out: Out) -> bool {
        match self.queue.push_wait(out, self.send_timeout).await {
            Ok(()) => true,
            Err(Refused::Closed) => false,
            Err(Refused::Full) => {
                self.too_slow("its replies");
                false
            }
        }
    }

    /// Queues a notification without waiting; a full queue drops the
    /// connection. True when queued.
    pub fn push(&self, text: Utf8Bytes) -> bool {
        match self.queue.try_push(Out::Text(text)) {
            Ok(()) => true,
            Err(Refused::Full) => {
                self.too_slow("its notifications (queue full)");
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Closes after the frames already queued have gone.
    pub async fn close_after_queue(&self, code: u16, reason: &str) {
        if !self.send_out(Out::Close(code, reason.to_string())).await {
            self.kill(code, reason);
        }
    }

    /// Frames queued and not yet written (for the socket-free fuzz harness).
    pub(crate) fn drain(&self) -> Vec<Out> {
        self.queue.drain()
    }

    // The socket's side (`socket/`).

    /// The queue the writer drains.
    pub(crate) fn queue(&self) -> &SendQueue {
        &self.queue
    }

    /// Resolves once the connection is killed (or its writer ended).
    pub(crate) fn killed(&self) -> WaitForCancellationFuture<'_> {
        self.kill.cancelled()
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.kill.is_cancelled()
    }

    /// The close code and reason of the first [`Conn::kill`], if any.
    pub(crate) fn killed_for(&self) -> Option<(u16, String)> {
        self.killed_for
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The writer has ended: wakes the reader if it still waits for frames
    /// (without a reason of its own: the first one stays).
    pub(crate) fn writer_ended(&self) {
        self.kill.cancel();
    }
}
