//! A connection's jobs: the actions that call engines (`chat.rs`,
//! `speech.rs`) run as tasks of their own, so the reader goes on serving
//! the connection's other requests while they run. At most
//! `server.max_jobs_per_connection` run at once (more are `rate_limited`);
//! each is tracked by the connection (its socket waits for them at
//! shutdown) and by the server (`run` returns only when all are done).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::engines::EngineError;
use crate::protocol::{ErrorCode, ErrorPayload, Frame, Reply, ServerFrame};
use crate::server::conn::Conn;

/// A free place for one job of a connection, taken before the job starts.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

pub(crate) struct Jobs {
    /// This connection's jobs.
    mine: TaskTracker,
    /// Every task of the server.
    server: TaskTracker,
    slots: Arc<Semaphore>,
    max: usize,
}

impl Jobs {
    pub fn new(max: usize, server: TaskTracker) -> Jobs {
        let max = max.max(1);
        Jobs {
            mine: TaskTracker::new(),
            server,
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A free slot, or `rate_limited`.
    pub fn slot(&self) -> Result<Slot, ErrorPayload> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map(|p| Slot { _permit: p })
            .map_err(|_| ErrorPayload {
                retry_after_ms: Some(1000),
                ..ErrorPayload::new(
                    ErrorCode::RateLimited,
                    format!(
                        "{} requests are already running on this connection; wait for one to finish",
                        self.max
                    ),
                )
            })
    }

    /// Runs a job in its slot (given back when the job ends).
    pub fn spawn_in<F>(&self, slot: Slot, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.server.spawn(self.mine.track_future(async move {
            fut.await;
            drop(slot);
        }));
    }

    /// Starts a job, if there is a free slot.
    pub fn spawn<F>(&self, fut: F) -> Result<(), ErrorPayload>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let slot = self.slot()?;
        self.spawn_in(slot, fut);
        Ok(())
    }

    /// Waits until every job started so far has ended; jobs may be started
    /// again afterwards.
    pub async fn wait_all(&self) {
        self.mine.close();
        self.mine.wait().await;
        self.mine.reopen();
    }
}

/// Where a job's replies go: the connection (maybe gone by then), the
/// request id, the action (named in its errors).
#[derive(Clone)]
pub(crate) struct Responder {
    pub conn: Arc<Conn>,
    pub rid: Option<String>,
    pub action: &'static str,
}

impl Responder {
    /// False when the connection is gone.
    pub async fn send(&self, body: Reply) -> bool {
        self.conn.send(&Frame::new(self.rid.clone(), body)).await
    }

    pub async fn error(&self, e: ErrorPayload) {
        self.conn
            .send(&ServerFrame::error(
                self.rid.clone(),
                e.for_action(self.action),
            ))
            .await;
    }
}

/// An engine's failure on the wire.
pub(crate) fn engine_failed(e: &EngineError) -> ErrorPayload {
    ErrorPayload::new(ErrorCode::AiFailed, e.to_string())
}

/// A job cut by the server's shutdown.
pub(crate) fn shutting_down() -> ErrorPayload {
    ErrorPayload::new(
        ErrorCode::Unavailable,
        "the server is shutting down; try again later",
    )
}
