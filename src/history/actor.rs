//! The history store on its own thread, for async code.
//!
//! SQLite calls block (on disk, on fsync, on another process's lock), so the
//! daemon and the server never make them on an async worker thread. A
//! [`HistoryHandle`] sends closures to one dedicated thread that owns the
//! [`Store`] and gets the results back through a oneshot channel.

use std::path::Path;
use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

use super::{HistoryError, OpenOptions, Result, Store};

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A cheap, cloneable handle to the store thread. The thread ends (closing
/// the database) when the last handle is dropped.
#[derive(Clone)]
pub struct HistoryHandle {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for HistoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HistoryHandle")
    }
}

/// Joins the store thread: returned by [`HistoryHandle::open`], waited on at
/// shutdown so the database is closed before the process exits.
pub struct StoreThread(thread::JoinHandle<()>);

impl StoreThread {
    /// Waits until every handle is dropped and the database is closed.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl HistoryHandle {
    /// Opens the store on a new thread; returns once it is open (or failed).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<(HistoryHandle, StoreThread)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = path.to_path_buf();
        let opts = opts.clone();
        let join = thread::Builder::new()
            .name("pichat-history".into())
            .spawn(move || {
                let mut store = match Store::open(&path, &opts) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut store);
                }
            })
            .map_err(|e| HistoryError::Invalid(format!("cannot start the history thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((HistoryHandle { tx }, StoreThread(join))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HistoryError::Invalid(
                "the history thread died while opening".into(),
            )),
        }
    }

    /// Queues `f` on the store thread at once (jobs run in the order they
    /// are queued) and returns a receiver for its result, to await later.
    pub fn submit<T, F>(&self, f: F) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store: &mut Store| {
            let path = store.path().to_path_buf();
            let _ = tx.send(f(store).map_err(|e| e.with_path(&path)));
        });
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
            drop(job); // drops the sender: the receiver sees the store closed
        }
        rx
    }

    /// Runs `f` on the store thread and waits for its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store: &mut Store| {
            let path = store.path().to_path_buf();
            let _ = tx.send(f(store).map_err(|e| e.with_path(&path)));
        });
        self.tx
            .send(job)
            .map_err(|_| HistoryError::Invalid("the history store is closed".into()))?;
        rx.await
            .map_err(|_| HistoryError::Invalid("the history store thread stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{NewConversation, NewMessage, Role};

    #[tokio::test]
    async fn calls_run_on_the_store_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (h, thread) =
            HistoryHandle::open(&dir.path().join("h.db"), &OpenOptions::default()).unwrap();
        let c = h
            .call(|s| s.create_conversation(NewConversation::default()))
            .await
            .unwrap();
        let id = c.id.clone();
        let name = h
            .call(move |s| {
                s.append_message(NewMessage::new(&id, Role::User, "hi"))?;
                Ok(std::thread::current().name().map(str::to_string))
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("pichat-history"));
        drop(h);
        thread.join();
    }
}
