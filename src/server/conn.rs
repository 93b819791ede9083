//! One WebSocket connection: a reader (this task: frames in, actions run in
//! order) and a writer task draining a bounded queue of frames out.
//!
//! Backpressure: the connection's own replies wait for room in the queue up
//! to `send_timeout` (an AI stream so slows down to the client's pace);
//! notifications from elsewhere never wait. Either way, a queue that stays
//! full means the client is not reading: it is disconnected with 1013.
//! A peer silent for `idle_timeout` (pings unanswered) is dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::State;
use super::auth::AuthUser;
use super::limiter::Bucket;
use crate::protocol::{ClientKind, ErrorCode, ErrorPayload, ServerFrame, close};

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long a closing connection waits for the peer's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the writer is asked to do.
pub(crate) enum Out {
    Text(Utf8Bytes),
    /// Send what is queued before this, then close with this code.
    Close(u16, String),
}

/// The shared handle of a connection: its queue and its kill switch.
pub(crate) struct Conn {
    pub id: u64,
    pub user: AuthUser,
    tx: mpsc::Sender<Out>,
    kill: CancellationToken,
    /// Why it was killed (first reason wins): the close code and reason.
    killed_for: Mutex<Option<(u16, String)>>,
    send_timeout: Duration,
}

impl Conn {
    /// A new connection of `user` and the receiving end of its queue.
    pub fn new(state: &State, user: AuthUser) -> (Arc<Conn>, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(state.opts.send_queue.max(1));
        let conn = Arc::new(Conn {
            id: state.next_conn.fetch_add(1, Ordering::Relaxed),
            user,
            tx,
            kill: CancellationToken::new(),
            killed_for: Mutex::new(None),
            send_timeout: state.opts.send_timeout,
        });
        (conn, rx)
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
        self.kill.is_cancelled() || self.tx.is_closed()
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
        match tokio::time::timeout(self.send_timeout, self.tx.send(out)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(
                    "{}: connection {} does not read its replies; disconnecting it",
                    self.user.name,
                    self.id
                );
                self.kill(close::TRY_AGAIN_LATER, "too slow reading");
                false
            }
        }
    }

    /// Queues a notification without waiting; a full queue drops the
    /// connection. True when queued.
    pub fn push(&self, text: Utf8Bytes) -> bool {
        match self.tx.try_send(Out::Text(text)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "{}: connection {} is not reading (queue full); disconnecting it",
                    self.user.name,
                    self.id
                );
                self.kill(close::TRY_AGAIN_LATER, "too slow reading");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Closes after the frames already queued have gone.
    pub async fn close_after_queue(&self, code: u16, reason: &str) {
        if !self.send_out(Out::Close(code, reason.to_string())).await {
            self.kill(code, reason);
        }
    }
}

/// Serves an upgraded connection until it ends.
pub(crate) async fn run(state: Arc<State>, ws: Ws, user: AuthUser, peer: std::net::SocketAddr) {
    let (sink, mut stream) = ws.split();
    let (conn, rx) = Conn::new(&state, user);
    state.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!("{}: connection {} from {peer}", conn.user.name, conn.id);
    let writer = state
        .tracker
        .spawn(writer(sink, rx, conn.clone(), state.opts.ping_interval));
    let mut session = Session::new(state.clone(), conn.clone());
    let mut stopping = false;
    // The peer closed or broke the connection: no closing handshake to wait for.
    let mut peer_gone = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = conn.kill.cancelled() => break,
            _ = state.shutdown.cancelled() => { stopping = true; break }
            next = tokio::time::timeout(state.opts.idle_timeout, stream.next()) => next,
        };
        match next {
            Err(_) => {
                tracing::info!(
                    "{}: connection {} silent for {} s; dropping it",
                    conn.user.name,
                    conn.id,
                    state.opts.idle_timeout.as_secs()
                );
                conn.kill(close::GOING_AWAY, "silent too long");
                break;
            }
            Ok(None) => {
                peer_gone = true;
                break;
            }
            Ok(Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })))) => {
                let e = ErrorPayload::new(
                    ErrorCode::TooLarge,
                    format!("the frame has {size} bytes; the limit is {max_size}"),
                );
                conn.send(&ServerFrame::error(None, e)).await;
                conn.close_after_queue(close::TOO_BIG, "frame too large")
                    .await;
                peer_gone = true;
                break;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!("{}: connection {}: {e}", conn.user.name, conn.id);
                conn.kill(close::GOING_AWAY, "");
                peer_gone = true;
                break;
            }
            Ok(Some(Ok(msg))) => match msg {
                Message::Text(text) => {
                    if !session.handle_text(text.as_str()).await {
                        break;
                    }
                }
                Message::Binary(_) => {
                    let e = ErrorPayload::new(
                        ErrorCode::BadRequest,
                        "binary frames are not part of the protocol; send JSON text frames",
                    );
                    conn.send(&ServerFrame::error(None, e)).await;
                    conn.close_after_queue(close::UNSUPPORTED_DATA, "binary frame")
                        .await;
                    break;
                }
                Message::Close(_) => {
                    peer_gone = true;
                    break;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            },
        }
    }
    state.hub.leave(&conn);
    state.connections.fetch_sub(1, Ordering::Relaxed);
    if stopping {
        // Let this connection's AI replies end (they are cut after the
        // grace period) so their last frames reach the client, then close.
        session.jobs.close();
        session.jobs.wait().await;
        conn.close_after_queue(close::GOING_AWAY, "server shutting down")
            .await;
    } else if !conn.kill.is_cancelled() {
        conn.close_after_queue(1000, "").await;
    }
    if !peer_gone {
        // The closing handshake: read (and drop) what the peer still sends
        // until its close frame, so the socket is not reset under it before
        // it has read ours.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(m)) = stream.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    drop(session);
    drop(stream);
    let _ = writer.await;
    tracing::debug!("{}: connection {} closed", conn.user.name, conn.id);
}

async fn writer(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Out>,
    conn: Arc<Conn>,
    ping_every: Duration,
) {
    let start = tokio::time::Instant::now() + ping_every;
    let mut ping = tokio::time::interval_at(start, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut close_with: Option<(u16, String)> = None;
    loop {
        let out = tokio::select! {
            biased;
            _ = conn.kill.cancelled() => break,
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
            _ = ping.tick() => {
                let sent = tokio::select! {
                    _ = conn.kill.cancelled() => break,
                    r = sink.send(Message::Ping(Default::default())) => r,
                };
                if sent.is_err() {
                    break;
                }
                continue;
            }
        };
        match out {
            Out::Text(text) => {
                // Frames are fed, and flushed when nothing else is queued:
                // a burst of stream tokens goes out in few writes.
                let r = tokio::select! {
                    _ = conn.kill.cancelled() => break,
                    r = async {
                        sink.feed(Message::Text(text)).await?;
                        if rx.is_empty() {
                            sink.flush().await?;
                        }
                        Ok::<(), WsError>(())
                    } => r,
                };
                if r.is_err() {
                    conn.kill(close::GOING_AWAY, "");
                    break;
                }
            }
            Out::Close(code, reason) => {
                close_with = Some((code, reason));
                break;
            }
        }
    }
    let (code, reason) = close_with
        .or_else(|| {
            conn.killed_for
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
        .unwrap_or((1000, String::new()));
    // Wakes the reader if it is still waiting for frames.
    conn.kill.cancel();
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
}

/// The reader's side of a connection: what it knows about the client.
pub(crate) struct Session {
    pub state: Arc<State>,
    pub conn: Arc<Conn>,
    /// This connection's AI/TTS/STT jobs (also tracked by the server).
    pub jobs: TaskTracker,
    pub job_slots: Arc<Semaphore>,
    limiter: Bucket,
    /// What `hello` said (`None`: no hello yet).
    pub kind: Option<ClientKind>,
}

impl Session {
    pub fn new(state: Arc<State>, conn: Arc<Conn>) -> Session {
        Session {
            limiter: Bucket::new(
                state.opts.request_burst,
                f64::from(state.opts.requests_per_sec),
            ),
            job_slots: Arc::new(Semaphore::new(state.opts.max_jobs_per_connection.max(1))),
            jobs: TaskTracker::new(),
            state,
            conn,
            kind: None,
        }
    }

    /// Handles one text frame; false when the connection must close.
    pub async fn handle_text(&mut self, text: &str) -> bool {
        match crate::protocol::ClientFrame::decode(text) {
            Err(e) => {
                self.conn
                    .send(&ServerFrame::error(e.request_id.clone(), e.payload()))
                    .await;
                if let Some(code) = e.close {
                    self.conn.close_after_queue(code, &e.code.to_string()).await;
                    return false;
                }
            }
            Ok(frame) => {
                if let Err(wait) = self.limiter.take() {
                    let e = ErrorPayload {
                        retry_after_ms: Some(wait.as_millis().max(1) as u64),
                        ..ErrorPayload::new(
                            ErrorCode::RateLimited,
                            "too many requests on this connection; slow down",
                        )
                        .for_action(frame.body.action())
                    };
                    self.conn
                        .send(&ServerFrame::error(frame.request_id, e))
                        .await;
                } else {
                    super::handlers::dispatch(self, frame).await;
                }
            }
        }
        !self.conn.is_dead()
    }
}
