//! A store on its own threads, for async code.
//!
//! SQLite calls block (on disk, on fsync, on another process's lock), so the
//! daemon and the server never make them on an async worker thread. A
//! [`StoreHandle`] sends closures to one dedicated writer thread that owns
//! the [`Db`] and gets the results back through a oneshot channel.
//!
//! Group commit: writes sent with [`HistoryHandle::call_batched`] that are
//! queued together run in one transaction (each in its own savepoint, so a
//! failing one changes nothing and the others go on), committed with one
//! fsync; their results, and their [`Db::after_commit`] actions, are
//! delivered only after that commit. Under concurrent writers this turns
//! many fsyncs into one. A commit that fails reports to every write of its
//! group why: [`StoreError::DiskFull`] or [`StoreError::CommitFailed`].
//!
//! Reads sent with [`HistoryHandle::read`] do not queue behind the writes,
//! nor behind each other: they run on read-only connections of their own
//! (WAL lets readers run beside the writer), opened on demand up to
//! [`OpenOptions::readers`], each on its thread. Reads are taken in turn by
//! key (the server's user), and one key never holds every reader: one
//! user's storm of reads waits behind itself, while another user's read
//! finds a free reader at once.
//!
//! A call that panics is reported to its caller as [`StoreError::Bug`];
//! the thread and its connection go on.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Db, Kind, OpenOptions, Result, StoreError};

/// Why a group of writes was not committed (each write gets its own error).
#[derive(Debug, Clone)]
enum Uncommitted {
    DiskFull,
    Failed(String),
}

impl Uncommitted {
    fn of(e: &rusqlite::Error) -> Uncommitted {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Uncommitted::DiskFull,
            _ => Uncommitted::Failed(e.to_string()),
        }
    }

    fn error(&self, path: &Path) -> StoreError {
        let path = path.to_path_buf();
        match self {
            Uncommitted::DiskFull => StoreError::DiskFull { path },
            Uncommitted::Failed(detail) => StoreError::CommitFailed {
                path,
                detail: detail.clone(),
            },
        }
    }
}

/// Delivers a batched call's result once its group is committed (`Ok`) or
/// rolled back (`Err`).
type Finish = Box<dyn FnOnce(std::result::Result<(), Uncommitted>) + Send>;

enum Job<K: Kind> {
    /// Runs alone; delivers its result at once.
    Plain(PlainJob<K>),
    /// May share a transaction with the batched jobs queued after it.
    Batched(BatchedJob<K>),
}

type PlainJob<K> = Box<dyn FnOnce(&mut Db<K>) + Send>;
type BatchedJob<K> = Box<dyn FnOnce(&mut Db<K>) -> Finish + Send>;

/// Most jobs in one group commit.
const MAX_GROUP: usize = 64;

/// What a panic said.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Runs `f` on `store`; a panic becomes [`StoreError::Bug`] (logged).
fn guarded<K: Kind, T>(store: &mut Db<K>, f: impl FnOnce(&mut Db<K>) -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(|| f(store))) {
        Ok(r) => r,
        Err(p) => {
            let what = panic_text(p.as_ref());
            tracing::error!("{}: a call panicked: {what}", K::SCHEMA.name);
            Err(StoreError::Bug(what))
        }
    }
}

/// A figure of the store threads, for whoever watches them (the server's
/// `/metrics`): how long a call waited before it ran, how long a group
/// commit took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    QueueWait(Duration),
    Commit(Duration),
}

type Observer = Arc<OnceLock<Box<dyn Fn(Timing) + Send + Sync>>>;

fn note(observer: &Observer, t: Timing) {
    if let Some(f) = observer.get() {
        f(t);
    }
}

/// `f`, telling the observer how long it waited to run.
fn timed<K: Kind, T, F>(
    observer: Observer,
    f: F,
) -> impl FnOnce(&mut Db<K>) -> Result<T> + Send + 'static
where
    F: FnOnce(&mut Db<K>) -> Result<T> + Send + 'static,
{
    let queued = Instant::now();
    move |s: &mut Db<K>| {
        note(&observer, Timing::QueueWait(queued.elapsed()));
        f(s)
    }
}

/// The writer thread's loop.
fn serve<K: Kind>(store: &mut Db<K>, rx: &mpsc::Receiver<Job<K>>, observer: &Observer) {
    let mut next: Option<Job<K>> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match job {
            Job::Plain(f) => {
                f(store);
                if !store.conn.is_autocommit() {
                    // A call that left its transaction open (a bug): undone.
                    let _ = store.conn.execute_batch("ROLLBACK");
                }
            }
            Job::Batched(f) => {
                let grouped = store.conn.execute_batch("BEGIN IMMEDIATE").is_ok();
                let mut finish = vec![f(store)];
                if !grouped {
                    // Could not open the group (locked): the job ran on its own.
                    finish.into_iter().for_each(|f| f(Ok(())));
                    continue;
                }
                while finish.len() < MAX_GROUP {
                    match rx.try_recv() {
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
                let outcome = match commit {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        tracing::error!(
                            "{}: a group of {} write(s) failed to commit: {e}",
                            K::SCHEMA.name,
                            finish.len()
                        );
                        let _ = store.conn.execute_batch("ROLLBACK");
                        Err(Uncommitted::of(&e))
                    }
                };
                finish.into_iter().for_each(|f| f(outcome.clone()));
            }
        }
    }
}

/// A read waiting for a reader.
type ReadJob<K> = Box<dyn FnOnce(&mut Db<K>) + Send>;

/// The read-only connections: threads opened on demand, reads taken in
/// turn by key.
struct Readers<K: Kind> {
    path: PathBuf,
    opts: OpenOptions,
    queue: Mutex<ReadQueue<K>>,
    wake: Condvar,
    /// Where reads go when no read connection can be opened.
    writer: mpsc::Sender<Job<K>>,
}

struct ReadQueue<K: Kind> {
    waiting: HashMap<u64, VecDeque<ReadJob<K>>>,
    /// Reads running, by key.
    running: HashMap<u64, usize>,
    /// Most readers one key may hold at once.
    per_key: usize,
    /// Keys with reads waiting, in the order they are served.
    turn: VecDeque<u64>,
    /// Reads waiting, in all.
    queued: usize,
    idle: usize,
    threads: usize,
    /// A reader connection could not be opened: reads go to the writer.
    broken: bool,
    closed: bool,
}

impl<K: Kind> ReadQueue<K> {
    fn new(per_key: usize) -> Self {
        ReadQueue {
            waiting: HashMap::new(),
            running: HashMap::new(),
            per_key,
            turn: VecDeque::new(),
            queued: 0,
            idle: 0,
            threads: 0,
            broken: false,
            closed: false,
        }
    }

    /// The next read to run: the first key in turn that holds fewer than
    /// `per_key` readers. Counted as running until [`ReadQueue::done`].
    fn pop(&mut self) -> Option<(u64, ReadJob<K>)> {
        let per_key = self.per_key.max(1);
        let at = self
            .turn
            .iter()
            .position(|k| self.running.get(k).copied().unwrap_or(0) < per_key)?;
        let key = self.turn.remove(at)?;
        let q = self.waiting.get_mut(&key)?;
        let job = q.pop_front()?;
        self.queued -= 1;
        if q.is_empty() {
            self.waiting.remove(&key);
        } else {
            self.turn.push_back(key);
        }
        *self.running.entry(key).or_default() += 1;
        Some((key, job))
    }

    fn done(&mut self, key: u64) {
        if let Some(n) = self.running.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(&key);
            }
        }
    }

    /// Everything waiting, for the writer to run (no reader can).
    fn drain(&mut self) -> Vec<ReadJob<K>> {
        self.turn.clear();
        self.queued = 0;
        self.waiting.drain().flat_map(|(_, q)| q).collect()
    }
}

impl<K: Kind> Readers<K> {
    /// Queues a read; starts a reader thread if none is idle and there is
    /// room. Gives the job back when reads cannot run here.
    fn push(self: &Arc<Self>, key: u64, job: ReadJob<K>) -> std::result::Result<(), ReadJob<K>> {
        let mut guard = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let q = &mut *guard;
        if q.broken || q.closed {
            return Err(job);
        }
        let waiting = q.waiting.entry(key).or_default();
        if waiting.is_empty() {
            q.turn.push_back(key);
        }
        waiting.push_back(job);
        q.queued += 1;
        if q.queued > q.idle && q.threads < self.opts.readers {
            q.threads += 1;
            let me = self.clone();
            let spawned = thread::Builder::new()
                .name(format!("pichat-{}-read", K::SCHEMA.name))
                .spawn(move || me.run());
            if spawned.is_err() {
                q.threads -= 1;
                if q.threads == 0 {
                    // No reader at all: the writer takes what waits.
                    q.broken = true;
                    for job in q.drain() {
                        let _ = self.writer.send(Job::Plain(job));
                    }
                }
            }
        }
        drop(guard);
        self.wake.notify_one();
        Ok(())
    }

    fn run(self: Arc<Self>) {
        let mut store = match Db::<K>::open_reader(&self.path, &self.opts) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "{}: cannot open a read connection ({e}); reads share the writer",
                    K::SCHEMA.name
                );
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                q.broken = true;
                q.threads -= 1;
                for job in q.drain() {
                    let _ = self.writer.send(Job::Plain(job));
                }
                return;
            }
        };
        let mut finished: Option<u64> = None;
        loop {
            let (key, job) = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(k) = finished.take() {
                    q.done(k);
                }
                loop {
                    if let Some(j) = q.pop() {
                        break j;
                    }
                    if q.closed {
                        q.threads -= 1;
                        return;
                    }
                    q.idle += 1;
                    q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                    q.idle -= 1;
                }
            };
            // One snapshot per read: a page of several queries is consistent.
            let snapshot = store.conn.execute_batch("BEGIN").is_ok();
            job(&mut store);
            if snapshot || !store.conn.is_autocommit() {
                let _ = store.conn.execute_batch("COMMIT");
            }
            finished = Some(key);
        }
    }

    fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.wake.notify_all();
    }
}

/// A cheap, cloneable handle to the store threads. They end (closing the
/// database) when the last handle is dropped.
pub struct StoreHandle<K: Kind> {
    tx: mpsc::Sender<Job<K>>,
    readers: Arc<ReadersGuard<K>>,
    observer: Observer,
}

impl<K: Kind> Clone for StoreHandle<K> {
    fn clone(&self) -> Self {
        StoreHandle {
            tx: self.tx.clone(),
            readers: self.readers.clone(),
            observer: self.observer.clone(),
        }
    }
}

/// Closes the readers when the last handle goes.
struct ReadersGuard<K: Kind>(Option<Arc<Readers<K>>>);

impl<K: Kind> Drop for ReadersGuard<K> {
    fn drop(&mut self) {
        if let Some(r) = &self.0 {
            r.close();
        }
    }
}

impl<K: Kind> std::fmt::Debug for StoreHandle<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreHandle({})", K::SCHEMA.name)
    }
}

/// Joins the store thread: returned by [`StoreHandle::open`], waited on at
/// shutdown so the database is closed before the process exits.
pub struct StoreThread(thread::JoinHandle<()>);

impl StoreThread {
    /// Waits until every handle is dropped and the database is closed.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

/// The receiver of a call's result; a dropped sender means the thread died.
async fn outcome<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await
        .map_err(|_| StoreError::StoreGone("the store thread stopped".into()))?
}

impl<K: Kind> StoreHandle<K> {
    /// Opens the store on a new thread; returns once it is open (or failed).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<(StoreHandle<K>, StoreThread)> {
        let (tx, rx) = mpsc::channel::<Job<K>>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let observer: Observer = Arc::default();
        let watched = observer.clone();
        let path = path.to_path_buf();
        let thread_opts = opts.clone();
        let thread_path = path.clone();
        let join = thread::Builder::new()
            .name(format!("pichat-{}", K::SCHEMA.name))
            .spawn(move || {
                let mut store = match Db::<K>::open(&thread_path, &thread_opts) {
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
            .map_err(|e| {
                StoreError::StoreGone(format!("cannot start the {} thread: {e}", K::SCHEMA.name))
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StoreError::StoreGone(format!(
                    "the {} thread died while opening",
                    K::SCHEMA.name
                )));
            }
        }
        let readers = (opts.readers > 0 && path != Path::new(":memory:")).then(|| {
            Arc::new(Readers {
                path,
                opts: opts.clone(),
                // One key leaves a reader free for the others.
                queue: Mutex::new(ReadQueue::new(opts.readers.saturating_sub(1).max(1))),
                wake: Condvar::new(),
                writer: tx.clone(),
            })
        });
        Ok((
            StoreHandle {
                tx,
                readers: Arc::new(ReadersGuard(readers)),
                observer,
            },
            StoreThread(join),
        ))
    }

    /// A plain job: runs `f`, runs its after-commit actions if it
    /// succeeded, sends the result.
    fn plain<T, F>(f: F, tx: oneshot::Sender<Result<T>>) -> Job<K>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db<K>) -> Result<T> + Send + 'static,
    {
        Job::Plain(Box::new(move |store: &mut Db<K>| {
            let path = store.path().to_path_buf();
            let result = guarded(store, f).map_err(|e| e.with_path(&path));
            let deferred = store.take_deferred();
            if result.is_ok() {
                deferred.into_iter().for_each(|d| d());
            }
            let _ = tx.send(result);
        }))
    }

    /// Queues `f` on the store thread at once (jobs run in the order they
    /// are queued) and returns a receiver for its result, to await later.
    pub fn submit<T, F>(&self, f: F) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db<K>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::SendError(job)) = self.tx.send(Self::plain(f, tx)) {
            drop(job); // drops the sender: the receiver sees the store closed
        }
        rx
    }

    /// Runs `f` on the store thread and waits for its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db<K>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Self::plain(timed(self.observer.clone(), f), tx))?;
        outcome(rx).await
    }

    /// Calls `f` with each [`Timing`] from now on (the first observer set
    /// stays; it runs on the store threads, so it must be quick).
    pub fn observe(&self, f: impl Fn(Timing) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(f));
    }

    /// Runs a read on a read-only connection (see the module docs), taken
    /// in turn with the other reads of `key`'s kind. `f` cannot write (its
    /// connection is read-only); without readers it runs on the writer.
    pub async fn read<T, F>(&self, key: u64, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db<K>) -> Result<T> + Send + 'static,
    {
        let Some(readers) = &self.readers.0 else {
            return self.call(f).await;
        };
        let f = timed(self.observer.clone(), f);
        let (tx, rx) = oneshot::channel();
        let job: ReadJob<K> = Box::new(move |store: &mut Db<K>| {
            let path = store.path().to_path_buf();
            let result = guarded(store, f).map_err(|e| e.with_path(&path));
            let _ = tx.send(result);
        });
        if let Err(job) = readers.push(key, job) {
            // No read connection can be opened: the writer reads.
            self.send(Job::Plain(job))?;
        }
        outcome(rx).await
    }

    /// Like [`HistoryHandle::call`], for a write that may share its commit
    /// with the batched writes queued with it (see the module docs). `f`
    /// must open its transactions so that they become savepoints inside a
    /// group (as `history::server` does); its result comes once committed.
    pub async fn call_batched<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db<K>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let f = timed(self.observer.clone(), f);
        let job = Job::Batched(Box::new(move |store: &mut Db<K>| {
            let path = store.path().to_path_buf();
            let result = guarded(store, f).map_err(|e| e.with_path(&path));
            let deferred = store.take_deferred();
            Box::new(move |committed: std::result::Result<(), Uncommitted>| {
                let result = match (result, committed) {
                    (Ok(v), Ok(())) => {
                        deferred.into_iter().for_each(|d| d());
                        Ok(v)
                    }
                    (Ok(_), Err(why)) => Err(why.error(&path)),
                    (Err(e), _) => Err(e),
                };
                let _ = tx.send(result);
            }) as Finish
        }));
        self.send(job)?;
        outcome(rx).await
    }

    fn send(&self, job: Job<K>) -> Result<()> {
        self.tx
            .send(job)
            .map_err(|_| StoreError::StoreGone(format!("the {} store is closed", K::SCHEMA.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, HistoryHandle, NewConversation, NewMessage, Role};
    use crate::serverdb::sqlite::ServerHandle;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_writes_share_commits_and_report_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (h, thread) = ServerHandle::open(&path, &OpenOptions::default()).unwrap();
        let (alice, bob) = h
            .call(|s| {
                s.add_token("alice", None, &[1; 32])?;
                s.add_token("bob", None, &[2; 32])?;
                Ok((s.user_id("alice")?, s.user_id("bob")?))
            })
            .await
            .unwrap();
        let taken = crate::history::new_id();
        h.call_batched({
            let taken = taken.clone();
            move |s| {
                s.create_conversation(
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
                    let (c, _) = s.create_conversation(
                        alice,
                        &NewConversation {
                            id: Some(id),
                            ..Default::default()
                        },
                    )?;
                    let cid = c.id.clone();
                    s.after_commit(move || {
                        // Runs after the commit: another connection sees the row.
                        let other =
                            crate::serverdb::sqlite::Conn::open(&path, &OpenOptions::default())
                                .unwrap();
                        assert!(other.get_conversation(alice, &cid).is_ok());
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
                Err(e) => assert!(matches!(e, StoreError::Conflict(_)), "{e}"),
            }
        }
        assert_eq!(ok, 39, "only the taken id failed");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 39);
        let rev = h.call(move |s| s.user_rev(alice)).await.unwrap();
        assert_eq!(rev, 39, "the failed create took no revision");
        drop(h);
        thread.join();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_batched_writes_are_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (h, thread) = ServerHandle::open(&path, &OpenOptions::default()).unwrap();
        let alice = h
            .call(|s| {
                s.add_token("alice", None, &[1; 32])?;
                s.user_id("alice")
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
                    s.create_conversation(alice, &NewConversation::default())?;
                    // Another connection does not see it yet: the group is not committed.
                    let other =
                        crate::serverdb::sqlite::Conn::open(&path, &OpenOptions::default())?;
                    Ok(other.changes(alice, 0, 100)?.changes.len())
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
            .call(move |s| Ok(s.changes(alice, 0, 100)?.changes.len()))
            .await
            .unwrap();
        assert_eq!(n, 10);
        drop(h);
        thread.join();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_call_is_a_bug_error_and_the_thread_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (h, thread) =
            HistoryHandle::open(&dir.path().join("h.db"), &OpenOptions::default()).unwrap();
        let e = h
            .call(|_| -> Result<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(&e, StoreError::Bug(m) if m == "boom"), "{e}");
        let e = h
            .call_batched(|_| -> Result<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Bug(_)), "{e}");
        let e = h
            .read(1, |_| -> Result<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Bug(_)), "{e}");
        // Writer and readers still answer.
        let c = h
            .call(|s| s.create_conversation(NewConversation::default()))
            .await
            .unwrap();
        let id = c.id.clone();
        let got = h.read(1, move |s| s.get_conversation(&id)).await.unwrap();
        assert_eq!(got.id, c.id);
        drop(h);
        thread.join();
    }

    #[tokio::test]
    async fn the_queue_wait_and_the_commits_are_observed() {
        let dir = tempfile::tempdir().unwrap();
        let (h, thread) =
            ServerHandle::open(&dir.path().join("h.db"), &OpenOptions::default()).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        h.observe(move |t| s2.lock().unwrap().push(t));
        h.call(|s| s.schema_version()).await.unwrap();
        h.call_batched(|s| s.add_token("alice", None, &[1; 32]))
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

    #[tokio::test]
    async fn a_store_that_is_gone_says_so() {
        let (tx, rx) = mpsc::channel::<Job<History>>();
        drop(rx);
        let h = StoreHandle::<History> {
            tx,
            readers: Arc::new(ReadersGuard(None)),
            observer: Arc::default(),
        };
        let e = h.call(|s| s.schema_version()).await.unwrap_err();
        assert!(matches!(e, StoreError::StoreGone(_)), "{e}");
        assert!(!e.is_retryable());
        let e = h.read(1, |s| s.schema_version()).await.unwrap_err();
        assert!(matches!(e, StoreError::StoreGone(_)), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_beside_the_writer_and_beside_each_other_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let (h, thread) =
            HistoryHandle::open(&dir.path().join("h.db"), &OpenOptions::default()).unwrap();
        h.call(|s| s.create_conversation(NewConversation::default()))
            .await
            .unwrap();
        // The writer is held, and key 1 holds every reader it may (3 of 4)
        // with a fourth read waiting.
        let (release_w, wait_w) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let writer = {
            let h = h.clone();
            tokio::spawn(async move {
                h.call(move |_| {
                    let _ = wait_w.recv();
                    Ok(())
                })
                .await
            })
        };
        let mut slow = Vec::new();
        for _ in 0..4 {
            let (h, gate) = (h.clone(), gate.clone());
            slow.push(tokio::spawn(async move {
                h.read(1, move |_| {
                    let (open, cv) = &*gate;
                    let mut o = open.lock().unwrap();
                    while !*o {
                        o = cv.wait(o).unwrap();
                    }
                    Ok(())
                })
                .await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Another key's read is served meanwhile, on a read-only connection.
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            h.read(2, |s| {
                Ok(s.list_conversations(&crate::history::ListQuery {
                    limit: 10,
                    ..Default::default()
                })?
                .conversations
                .len())
            }),
        )
        .await
        .expect("not queued behind the writer or the other read")
        .unwrap();
        assert_eq!(n, 1);
        let e = h
            .read(2, |s| s.create_conversation(NewConversation::default()))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::ReadOnly { .. }), "{e}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        release_w.send(()).unwrap();
        for s in slow {
            s.await.unwrap().unwrap();
        }
        writer.await.unwrap().unwrap();
        drop(h);
        thread.join();
    }
}
