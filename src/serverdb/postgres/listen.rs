//! The change feed on PostgreSQL: one connection per server that
//! `LISTEN`s on [`CHANNEL`], and one task that turns the notifications
//! into deliveries to the server's hub, for each user in rev order (see
//! `serverdb/feed.rs` for why the order holds).
//!
//! A notification's payload is `INSTANCE USER FIRST LAST AUTHOR`: the
//! writing server's random instance id, the user, the write's revs, and
//! its connection. This server's own writes are delivered from what they
//! wrote (stashed before their commit); another server's are read back
//! (`feed_range`) — only for users with connections here. A gap (the
//! listener reconnected, or its queue overflowed) is filled by reading
//! from the last rev delivered; after a reconnect every followed user is
//! checked at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::feed::feed_range;
use super::*;
use crate::serverdb::feed::{Committed, Next, Sequencer};

/// Notifications queued for the delivering task at most; past that the
/// rest are dropped and every followed user is checked (nothing is lost).
const QUEUE: usize = 65_536;
/// Own writes kept for delivery at most (their notifications are late):
/// past that they are read back like other servers' writes.
const STASH: usize = 16_384;
/// Changes read back per query when filling a gap.
const FILL_CHUNK: usize = 1000;

/// What one write's notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Note {
    instance: u64,
    user: UserId,
    first: i64,
    last: i64,
    by: u64,
}

impl Note {
    fn payload(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.instance, self.user, self.first, self.last, self.by
        )
    }

    fn parse(s: &str) -> Option<Note> {
        let mut it = s.split(' ');
        let mut next = || it.next();
        let n = Note {
            instance: next()?.parse().ok()?,
            user: next()?.parse().ok()?,
            first: next()?.parse().ok()?,
            last: next()?.parse().ok()?,
            by: next()?.parse().ok()?,
        };
        (n.first <= n.last).then_some(n)
    }
}

enum Event {
    Note(Note),
    /// The listener (re)connected, or notifications were dropped: check
    /// every followed user.
    Resync,
}

/// The feed of one store (see the module docs).
pub(super) struct Feed {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pool: Pool,
    location: String,
    instance: u64,
    sink: OnceLock<Arc<dyn FeedSink>>,
    stash: Mutex<HashMap<(UserId, i64), Committed>>,
    stop: CancellationToken,
}

impl Feed {
    pub(super) fn new(
        config: tokio_postgres::Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
        pool: Pool,
        location: String,
    ) -> Arc<Feed> {
        Arc::new(Feed {
            config,
            tls,
            pool,
            location,
            instance: fastrand::u64(1..),
            sink: OnceLock::new(),
            stash: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        })
    }

    pub(super) fn subscribe(&self, sink: Arc<dyn FeedSink>) {
        let _ = self.sink.set(sink);
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    /// Connects the listener and starts the tasks; returns once it listens
    /// (so no write made after the store is open goes unheard).
    pub(super) async fn start(self: &Arc<Self>) -> Result<()> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let first = self.listen(tx.clone()).await?;
        let me = self.clone();
        tokio::spawn(async move {
            let mut first = Some(first);
            let mut delay = Duration::from_millis(100);
            loop {
                let ended = match first.take() {
                    Some(listening) => listening,
                    None => match me.listen(tx.clone()).await {
                        Ok(l) => {
                            delay = Duration::from_millis(100);
                            let _ = tx.try_send(Event::Resync);
                            tracing::info!("{}: change feed listening again", me.location);
                            l
                        }
                        Err(e) => {
                            tracing::warn!(
                                "{}: change feed cannot listen ({e}); trying again in {delay:?}",
                                me.location
                            );
                            tokio::select! {
                                _ = me.stop.cancelled() => return,
                                _ = tokio::time::sleep(delay) => {}
                            }
                            delay = (delay * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                };
                tokio::select! {
                    _ = me.stop.cancelled() => return,
                    _ = ended => {}
                }
                if me.stop.is_cancelled() {
                    return;
                }
                tracing::warn!("{}: change feed connection lost; reconnecting", me.location);
            }
        });
        let me = self.clone();
        tokio::spawn(async move { me.deliver_all(rx).await });
        Ok(())
    }

    /// One listening connection: resolves when it ends.
    async fn listen(&self, tx: mpsc::Sender<Event>) -> Result<tokio::sync::oneshot::Receiver<()>> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(pg_error)?;
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let stop = self.stop.clone();
        // The connection lives while a client handle does: the polling
        // task keeps one until the connection ends.
        let client = Arc::new(client);
        let keep = client.clone();
        tokio::spawn(async move {
            let _keep = keep;
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    m = messages.next() => match m {
                        Some(Ok(AsyncMessage::Notification(n))) => {
                            let ev = match Note::parse(n.payload()) {
                                Some(note) => Event::Note(note),
                                None => {
                                    tracing::warn!("change feed: an unreadable notification ({:?})", n.payload());
                                    continue;
                                }
                            };
                            if tx.try_send(ev).is_err() {
                                // Full: what is dropped is found again by a resync.
                                let _ = tx.send(Event::Resync).await;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!("change feed: {e}");
                            break;
                        }
                        None => break,
                    },
                }
            }
            let _ = ended_tx.send(());
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(pg_error)?;
        Ok(ended_rx)
    }

    /// Stashes a write's changes (before its commit) and sends its
    /// notification inside its transaction.
    pub(super) async fn announce(
        &self,
        tx: &impl GenericClient,
        c: Committed,
        first: i64,
        last: i64,
    ) -> Result<()> {
        let note = Note {
            instance: self.instance,
            user: c.user,
            first,
            last,
            by: c.by.0,
        };
        {
            let mut stash = self.stash.lock().unwrap_or_else(|p| p.into_inner());
            if stash.len() >= STASH {
                stash.clear();
            }
            stash.insert((c.user, last), c);
        }
        exec(tx, "SELECT pg_notify($1, $2)", &[&CHANNEL, &note.payload()]).await?;
        Ok(())
    }

    /// Forgets a stashed write that did not commit.
    pub(super) fn unstash(&self, user: UserId, last: i64) {
        self.stash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(user, last));
    }

    /// The delivering task.
    async fn deliver_all(self: Arc<Self>, mut rx: mpsc::Receiver<Event>) {
        let mut seq = Sequencer::default();
        loop {
            let ev = tokio::select! {
                _ = self.stop.cancelled() => return,
                ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            };
            let Some(sink) = self.sink.get().cloned() else {
                continue;
            };
            let r = match ev {
                Event::Note(n) => self.deliver(&sink, &mut seq, n).await,
                Event::Resync => self.resync(&sink, &mut seq).await,
            };
            if let Err(e) = r {
                tracing::warn!(
                    "{}: change feed: {e}; the next change or reconnect fills in",
                    self.location
                );
            }
        }
    }

    async fn deliver(&self, sink: &Arc<dyn FeedSink>, seq: &mut Sequencer, n: Note) -> Result<()> {
        let mine = (n.instance == self.instance)
            .then(|| {
                self.stash
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(n.user, n.last))
            })
            .flatten();
        if mine.is_none() && !sink.watching(n.user) {
            seq.retain(|u| u != n.user);
            return Ok(());
        }
        match seq.next(n.user, n.first, n.last) {
            Next::Skip => {}
            Next::Deliver => match mine {
                Some(c) => sink.deliver(c),
                None => {
                    let by = if n.instance == self.instance {
                        Author(n.by)
                    } else {
                        Author::NOBODY
                    };
                    self.fill(sink, n.user, n.first - 1, n.last, by).await?;
                }
            },
            Next::FillFrom { after } => {
                self.fill(sink, n.user, after, n.last, Author::NOBODY)
                    .await?
            }
        }
        seq.delivered(n.user, n.last);
        Ok(())
    }

    /// Reads and delivers the user's changes in `after+1..=upto`.
    async fn fill(
        &self,
        sink: &Arc<dyn FeedSink>,
        user: UserId,
        after: i64,
        upto: i64,
        by: Author,
    ) -> Result<()> {
        let mut at = after;
        while at < upto {
            let (changes, read_to) = feed_range(&self.pool, user, at, upto, FILL_CHUNK).await?;
            if !changes.is_empty() {
                sink.deliver(Committed { user, by, changes });
            }
            if read_to <= at {
                break;
            }
            at = read_to;
        }
        Ok(())
    }

    /// Checks every followed user against its rev now.
    async fn resync(&self, sink: &Arc<dyn FeedSink>, seq: &mut Sequencer) -> Result<()> {
        seq.retain(|u| sink.watching(u));
        let followed = seq.followed();
        if followed.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = followed.iter().map(|(u, _)| *u).collect();
        let now: HashMap<i64, i64> = {
            let c = get(&self.pool).await?;
            rows(
                &c,
                "SELECT id, rev FROM srv_users WHERE id = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        };
        for (user, last) in followed {
            let cur = now.get(&user).copied().unwrap_or(last);
            if cur > last {
                self.fill(sink, user, last, cur, Author::NOBODY).await?;
                seq.delivered(user, cur);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_bad_ones_are_refused() {
        let n = Note {
            instance: 77,
            user: 3,
            first: 10,
            last: 12,
            by: 9,
        };
        assert_eq!(Note::parse(&n.payload()), Some(n));
        assert_eq!(Note::parse("77 3 12 10 9"), None, "first after last");
        assert_eq!(Note::parse("77 3 10"), None);
        assert_eq!(Note::parse("x 3 10 12 9"), None);
    }
}
