//! The history store on its own thread, for async code.
//!
//! SQLite calls block (on disk, on fsync, on another process's lock), so the
//! daemon and the server never make them on an async worker thread. A
//! [`HistoryHandle`] sends closures to one dedicated thread that owns the
//! [`Store`] and gets the results back through a oneshot channel.
//!
//! Group commit: writes sent with [`HistoryHandle::call_batched`] that are
//! queued together run in one transaction (each in its own savepoint, so a
//! failing one changes nothing and the others go on), committed with one
//! fsync; their results, and their [`Store::after_commit`] actions, are
//! delivered only after that commit. Under concurrent writers this turns
//! many fsyncs into one.

use std::path::Path;
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{HistoryError, OpenOptions, Result, Store};

/// Delivers a batched call's result once its group is committed (`true`)
/// or rolled back (`false`).
type Finish = Box<dyn FnOnce(bool) + Send>;

enum Job {
    /// Runs alone; delivers its result at once.
    Plain(Box<dyn FnOnce(&mut Store) + Send>),
    /// May share a transaction with the batched jobs queued after it.
    Batched(Box<dyn FnOnce(&mut Store) -> Finish + Send>),
}

/// Most jobs in one group commit.
const MAX_GROUP: usize = 64;

/// A figure of the store thread, for whoever watches it (the server's
/// `/metrics`): how long a job waited in the queue, how long a group
/// commit took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    QueueWait(Duration),
    Commit(Duration),
}

type Observer = Arc<OnceLock<Box<dyn Fn(Timing) + Send + Sync>>>;

/// A job and when it was queued.
type Queued = (Instant, Job);

fn note(observer: &Observer, t: Timing) {
    if let Some(f) = observer.get() {
        f(t);
    }
}

/// The store thread's loop.
fn serve(store: &mut Store, rx: &mpsc::Receiver<Queued>, observer: &Observer) {
    let mut next: Option<Job> = None;
    let started = |(queued, job): Queued| {
        note(observer, Timing::QueueWait(queued.elapsed()));
        job
    };
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => started(j),
                Err(_) => return,
            },
        };
        match job {
            Job::Plain(f) => f(store),
            Job::Batched(f) => {
                let grouped = store.conn.execute_batch("BEGIN IMMEDIATE").is_ok();
                let mut finish = vec![f(store)];
                if !grouped {
                    // Could not open the group (locked): the job ran on its own.
                    finish.into_iter().for_each(|f| f(true));
                    continue;
                }
                while finish.len() < MAX_GROUP {
                    match rx.try_recv().map(started) {
                        Ok(Job::Batched(g)) => finish.push(g(store)),
                        Ok(plain) => {
                            next = Some(plain);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let commit_start = Instant::now();
                let commit = store.conn.execute_batch("COMMIT");
                note(observer, Timing::Commit(commit_start.elapsed()));
                let committed = match commit {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!("history: a group of writes failed to commit: {e}");
                        let _ = store.conn.execute_batch("ROLLBACK");
                        false
                    }
                };
                finish.into_iter().for_each(|f| f(committed));
            }
        }
    }
}

/// A cheap, cloneable handle to the store thread. The thread ends (closing
/// the database) when the last handle is dropped.
#[derive(Clone)]
pub struct HistoryHandle {
    tx: mpsc::Sender<Queued>,
    observer: Observer,
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
        let (tx, rx) = mpsc::channel::<Queued>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let observer: Observer = Arc::default();
        let watched = observer.clone();
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
                serve(&mut store, &rx, &watched);
            })
            .map_err(|e| HistoryError::Invalid(format!("cannot start the history thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((HistoryHandle { tx, observer }, StoreThread(join))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HistoryError::Invalid(
                "the history thread died while opening".into(),
            )),
        }
    }

    /// Calls `f` with each [`Timing`] of the store thread from now on (the
    /// first observer set stays; it runs on the store thread, so it must
    /// be quick).
    pub fn observe(&self, f: impl Fn(Timing) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(f));
    }

    /// Queues `f` on the store thread at once (jobs run in the order they
    /// are queued) and returns a receiver for its result, to await later.
    pub fn submit<T, F>(&self, f: F) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Plain(Box::new(move |store: &mut Store| {
            let path = store.path().to_path_buf();
            let result = f(store).map_err(|e| e.with_path(&path));
            let deferred = store.take_deferred();
            if result.is_ok() {
                deferred.into_iter().for_each(|d| d());
            }
            let _ = tx.send(result);
        }));
        if let Err(mpsc::SendError(job)) = self.tx.send((Instant::now(), job)) {
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
        let job = Job::Plain(Box::new(move |store: &mut Store| {
            let path = store.path().to_path_buf();
            let result = f(store).map_err(|e| e.with_path(&path));
            let deferred = store.take_deferred();
            if result.is_ok() {
                deferred.into_iter().for_each(|d| d());
            }
            let _ = tx.send(result);
        }));
        self.send(job, rx).await
    }

    /// Like [`HistoryHandle::call`], for a write that may share its commit
    /// with the batched writes queued with it (see the module docs). `f`
    /// must open its transactions so that they become savepoints inside a
    /// group (as `history::server` does); its result comes once committed.
    pub async fn call_batched<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Batched(Box::new(move |store: &mut Store| {
            let path = store.path().to_path_buf();
            let result = f(store).map_err(|e| e.with_path(&path));
            let deferred = store.take_deferred();
            Box::new(move |committed: bool| {
                let result = match result {
                    Ok(v) if committed => {
                        deferred.into_iter().for_each(|d| d());
                        Ok(v)
                    }
                    Ok(_) => Err(HistoryError::Invalid(
                        "the write could not be committed (see the log); nothing was stored".into(),
                    )),
                    Err(e) => Err(e),
                };
                let _ = tx.send(result);
            }) as Finish
        }));
        self.send(job, rx).await
    }

    async fn send<T>(&self, job: Job, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        self.tx
            .send((Instant::now(), job))
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

    #[tokio::test]
    async fn the_queue_wait_and_the_commits_are_observed() {
        let dir = tempfile::tempdir().unwrap();
        let (h, thread) =
            HistoryHandle::open(&dir.path().join("h.db"), &OpenOptions::default()).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        h.observe(move |t| s2.lock().unwrap().push(t));
        h.call(|s| s.schema_version()).await.unwrap();
        h.call_batched(|s| s.server().add_token("alice", None, &[1; 32]))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        let waits = seen
            .iter()
            .filter(|t| matches!(t, Timing::QueueWait(_)))
            .count();
        let commits = seen
            .iter()
            .filter(|t| matches!(t, Timing::Commit(_)))
            .count();
        assert_eq!((waits, commits), (2, 1), "{seen:?}");
        drop(h);
        thread.join();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_writes_share_commits_and_report_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (h, thread) = HistoryHandle::open(&path, &OpenOptions::default()).unwrap();
        let (alice, bob) = h
            .call(|s| {
                s.server().add_token("alice", None, &[1; 32])?;
                s.server().add_token("bob", None, &[2; 32])?;
                Ok((s.server().user_id("alice")?, s.server().user_id("bob")?))
            })
            .await
            .unwrap();
        let taken = crate::history::new_id();
        h.call_batched({
            let taken = taken.clone();
            move |s| {
                s.server().create_conversation(
                    bob,
                    &NewConversation {
                        id: Some(taken),
                        ..Default::default()
                    },
                )
            }
        })
        .await
        .unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (h, seen, path, taken) = (h.clone(), seen.clone(), path.clone(), taken.clone());
            tasks.push(tokio::spawn(async move {
                h.call_batched(move |s| {
                    let id = if i == 7 {
                        taken
                    } else {
                        crate::history::new_id()
                    };
                    let (c, _) = s.server().create_conversation(
                        alice,
                        &NewConversation {
                            id: Some(id),
                            ..Default::default()
                        },
                    )?;
                    let cid = c.id.clone();
                    s.after_commit(move || {
                        // Runs after the commit: another connection sees the row.
                        let mut other =
                            crate::history::Store::open(&path, &OpenOptions::default()).unwrap();
                        assert!(other.server().get_conversation(alice, &cid).is_ok());
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    });
                    Ok(c)
                })
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert!(matches!(e, HistoryError::Conflict(_)), "{e}"),
            }
        }
        assert_eq!(ok, 39, "only the taken id failed");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 39);
        let rev = h.call(move |s| s.server().user_rev(alice)).await.unwrap();
        assert_eq!(rev, 39, "the failed create took no revision");
        drop(h);
        thread.join();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_batched_writes_are_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (h, thread) = HistoryHandle::open(&path, &OpenOptions::default()).unwrap();
        let alice = h
            .call(|s| {
                s.server().add_token("alice", None, &[1; 32])?;
                s.server().user_id("alice")
            })
            .await
            .unwrap();
        // Hold the store thread while ten writes queue up.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let h = h.clone();
            tokio::spawn(async move {
                h.call(move |_| {
                    let _ = wait.recv();
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (h, path) = (h.clone(), path.clone());
            tasks.push(tokio::spawn(async move {
                h.call_batched(move |s| {
                    s.server()
                        .create_conversation(alice, &NewConversation::default())?;
                    // Another connection does not see it yet: the group is not committed.
                    let mut other = crate::history::Store::open(&path, &OpenOptions::default())?;
                    Ok(other.server().changes(alice, 0, 100)?.changes.len())
                })
                .await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 0);
        }
        let n = h
            .call(move |s| Ok(s.server().changes(alice, 0, 100)?.changes.len()))
            .await
            .unwrap();
        assert_eq!(n, 10);
        drop(h);
        thread.join();
    }
}
