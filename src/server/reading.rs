//! Frames being received: a global budget in bytes (`read_budget_bytes`)
//! and a deadline per frame (`frame_timeout`), enforced under the WebSocket
//! layer by [`Metered`], the socket wrapper every connection reads through.
//!
//! Bytes read since the connection's last whole message are the frame in
//! progress. The first [`FREE`] bytes of it are free (most requests are far
//! smaller); beyond them every byte needs a share of the global budget, so
//! many half-sent large frames can never hold more than the budget. A
//! reader that finds no share free waits up to [`BUDGET_WAIT`] (it stops
//! reading its socket meanwhile), then fails with [`ReadLimit::Busy`]: two
//! large frames can never hold each other up past that. A frame larger than
//! the whole budget may take all of it.
//!
//! The deadline starts with the first byte of a frame: a frame (or a
//! message in fragments) not whole within `frame_timeout` fails the read
//! with [`ReadLimit::FrameTimeout`], and the connection is closed. Pings
//! and pongs in between do not restart it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Bytes of a frame in progress that need no budget.
pub(crate) const FREE: usize = 16 * 1024;
/// The budget is taken in shares of this size.
const SHARE: usize = 64 * 1024;
/// How long a reader waits for a share of the budget.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Why a read failed (inside an `io::Error`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadLimit {
    #[error("a frame was not received whole within {} s", .0.as_secs())]
    FrameTimeout(Duration),
    #[error("the server is receiving too many large frames at once")]
    Busy,
}

impl ReadLimit {
    /// The limit behind a failed read, if it was one.
    pub fn of(e: &io::Error) -> Option<&ReadLimit> {
        e.get_ref()?.downcast_ref::<ReadLimit>()
    }
}

/// The global budget of bytes of frames in progress.
pub(crate) struct ReadBudget {
    sem: Arc<Semaphore>,
    /// Shares in all.
    total: usize,
}

impl ReadBudget {
    pub fn new(bytes: usize) -> ReadBudget {
        let shares = bytes.div_ceil(SHARE).clamp(1, Semaphore::MAX_PERMITS);
        ReadBudget {
            sem: Arc::new(Semaphore::new(shares)),
            total: shares,
        }
    }

    /// Bytes of the budget in use now.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        (self.total - self.sem.available_permits()) * SHARE
    }
}

/// What the connection's reader tells its [`Metered`] socket.
#[derive(Default)]
pub(crate) struct Marks {
    /// A data message (text, binary, close) was delivered whole.
    message_done: AtomicBool,
    /// Bytes of control frames (ping, pong) delivered since.
    control: AtomicUsize,
    /// Bytes written to the socket so far (the writer's progress).
    written: AtomicU64,
}

impl Marks {
    /// A whole text, binary or close message arrived: the next byte starts a
    /// new frame.
    pub fn message_done(&self) {
        self.message_done.store(true, Ordering::Release);
    }

    /// A ping or pong with this payload arrived: its bytes are not part of
    /// the frame in progress (a client frame's header is 6 bytes for a
    /// control frame: 2, and the 4 of the mask).
    pub fn control_done(&self, payload: usize) {
        self.control.fetch_add(payload + 6, Ordering::AcqRel);
    }

    /// Bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A socket whose reads are within the budget and the frame deadline.
pub(crate) struct Metered<S> {
    inner: S,
    marks: Arc<Marks>,
    sem: Arc<Semaphore>,
    total_shares: usize,
    frame_timeout: Duration,
    /// Bytes read of the frame in progress.
    pending: usize,
    /// Budget held for it.
    held: Option<OwnedSemaphorePermit>,
    /// Waiting for shares, until the timer.
    acquiring: Option<(Acquire, Pin<Box<Sleep>>)>,
    /// Armed at the first byte of a frame.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, budget: &ReadBudget, frame_timeout: Duration) -> (Metered<S>, Arc<Marks>) {
        let marks = Arc::new(Marks::default());
        let m = Metered {
            inner,
            marks: marks.clone(),
            sem: budget.sem.clone(),
            total_shares: budget.total,
            frame_timeout,
            pending: 0,
            held: None,
            acquiring: None,
            deadline: None,
        };
        (m, marks)
    }

    /// Applies what the reader marked since the last read.
    fn sync_marks(&mut self) {
        if self.marks.message_done.swap(false, Ordering::AcqRel) {
            self.marks.control.store(0, Ordering::Release);
            self.pending = 0;
        } else {
            let control = self.marks.control.swap(0, Ordering::AcqRel);
            self.pending = self.pending.saturating_sub(control);
        }
        if self.pending == 0 {
            self.held = None;
            self.acquiring = None;
            self.deadline = None;
        }
    }

    fn count_written(&self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.marks.written.fetch_add(*n as u64, Ordering::AcqRel);
        }
    }

    fn held_shares(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Bytes of the frame in progress it may read before taking more shares.
    fn allowance(&self) -> usize {
        FREE + self.held_shares() * SHARE
    }

    /// Ready(Err) once the frame's deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let passed = self
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if passed {
            Poll::Ready(io::Error::other(ReadLimit::FrameTimeout(
                self.frame_timeout,
            )))
        } else {
            Poll::Pending
        }
    }

    /// Ready(Ok) once the frame in progress has the shares it needs.
    fn poll_shares(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending > self.allowance() {
            // A frame larger than the whole budget takes all of it.
            let room = self.total_shares - self.held_shares();
            let need = (self.pending - self.allowance()).div_ceil(SHARE).min(room);
            if need == 0 {
                return Poll::Ready(Ok(()));
            }
            let (acquire, timer) = self.acquiring.get_or_insert_with(|| {
                let acquire = self.sem.clone().acquire_many_owned(need as u32);
                (Box::pin(acquire), Box::pin(tokio::time::sleep(BUDGET_WAIT)))
            });
            match acquire.as_mut().poll(cx) {
                Poll::Ready(Ok(p)) => {
                    self.acquiring = None;
                    match self.held.as_mut() {
                        Some(h) => h.merge(p),
                        None => self.held = Some(p),
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(io::Error::other(ReadLimit::Busy))),
                Poll::Pending => {
                    if timer.as_mut().poll(cx).is_ready() {
                        self.acquiring = None;
                        return Poll::Ready(Err(io::Error::other(ReadLimit::Busy)));
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.sync_marks();
        if let Poll::Ready(e) = this.poll_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        // Over the allowance: take shares of the budget before reading on.
        match this.poll_shares(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            // The deadline was polled above, so its wake-up is registered.
            Poll::Pending => return Poll::Pending,
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    if this.pending == 0 {
                        let at = tokio::time::Instant::now() + this.frame_timeout;
                        this.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
                    }
                    this.pending += n;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count_written(&r);
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count_written(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn large_frames_share_the_budget_and_have_a_deadline() {
        let budget = ReadBudget::new(2 * SHARE);
        let timeout = Duration::from_secs(20);
        let (mut a_peer, a) = tokio::io::duplex(1 << 20);
        let (mut b_peer, b) = tokio::io::duplex(1 << 20);
        let (mut a, a_marks) = Metered::new(a, &budget, timeout);
        let (mut b, _b_marks) = Metered::new(b, &budget, timeout);
        let mut buf = vec![0u8; 4096];
        // `a` reads the free part and two shares: the budget is used up.
        a_peer
            .write_all(&vec![1u8; FREE + 2 * SHARE + 4096])
            .await
            .unwrap();
        let mut got = 0;
        while got < FREE + 2 * SHARE {
            got += a.read(&mut buf).await.unwrap();
        }
        assert_eq!(budget.in_use(), 2 * SHARE);
        // `b` reads its free part, then waits for the budget.
        b_peer.write_all(&vec![2u8; FREE + 8192]).await.unwrap();
        let mut got = 0;
        while got <= FREE {
            got += b.read(&mut buf).await.unwrap();
        }
        let waiting = tokio::time::timeout(BUDGET_WAIT / 2, b.read(&mut buf)).await;
        assert!(waiting.is_err(), "b waits for the budget");
        // `a`'s message is done: its shares go back at its next read.
        a_marks.message_done();
        let _ = tokio::time::timeout(Duration::from_millis(10), a.read(&mut buf)).await;
        let n = b.read(&mut buf).await;
        assert!(matches!(n, Ok(n) if n > 0), "{n:?}");
        // `b` never finishes its frame: the deadline cuts it.
        let e = loop {
            match b.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(ReadLimit::of(&e), Some(ReadLimit::FrameTimeout(_))),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pings_do_not_restart_the_deadline_of_a_frame_in_progress() {
        let budget = ReadBudget::new(SHARE);
        let (mut peer, s) = tokio::io::duplex(1 << 16);
        let (mut s, marks) = Metered::new(s, &budget, Duration::from_secs(5));
        let mut buf = vec![0u8; 4096];
        // A whole small message, then nothing: no deadline runs.
        peer.write_all(&[0u8; 100]).await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 100);
        marks.message_done();
        let idle = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await;
        assert!(idle.is_err(), "no frame in progress, no deadline");
        // Part of a frame and a ping: the ping's bytes do not end it.
        peer.write_all(&[0u8; 506]).await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 506);
        marks.control_done(0);
        let e = s.read(&mut buf).await.unwrap_err();
        assert!(
            matches!(ReadLimit::of(&e), Some(ReadLimit::FrameTimeout(_))),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_too_long_for_the_budget_is_busy() {
        let budget = ReadBudget::new(SHARE);
        let timeout = Duration::from_secs(5);
        let (mut p1, s1) = tokio::io::duplex(1 << 20);
        let (mut p2, s2) = tokio::io::duplex(1 << 20);
        let (mut s1, _m1) = Metered::new(s1, &budget, timeout);
        let (mut s2, _m2) = Metered::new(s2, &budget, timeout);
        let mut buf = vec![0u8; 4096];
        p1.write_all(&vec![1u8; FREE + SHARE]).await.unwrap();
        let mut got = 0;
        while got < FREE + SHARE {
            got += s1.read(&mut buf).await.unwrap();
        }
        p2.write_all(&vec![2u8; FREE + 8192]).await.unwrap();
        let e = loop {
            match s2.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(matches!(ReadLimit::of(&e), Some(ReadLimit::Busy)), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_larger_than_the_budget_takes_all_of_it() {
        let budget = ReadBudget::new(SHARE);
        let (mut peer, s) = tokio::io::duplex(1 << 20);
        let (mut s, _marks) = Metered::new(s, &budget, Duration::from_secs(5));
        peer.write_all(&vec![1u8; FREE + 3 * SHARE]).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < FREE + 3 * SHARE {
            got += s.read(&mut buf).await.unwrap();
        }
        assert_eq!(budget.in_use(), SHARE);
    }
}
