//! One WebSocket connection: a reader (this task: frames in, actions run in
//! order) and a writer task draining the send queue (`queue.rs`).
//!
//! Backpressure: the connection's own replies wait for room in the queue up
//! to `send_timeout` (an AI stream so slows down to the client's pace), and
//! the reader reads no further request while the replies not yet written
//! pass `send_queue_bytes`; notifications from elsewhere never wait. A
//! client that does not read is disconnected with 1013. A peer silent for
//! `idle_timeout` (pings unanswered) is dropped.
//!
//! Reads go through `reading.rs` (a global budget for frames in progress, a
//! deadline per frame). Close codes, as RFC 6455 says: 1002 a protocol
//! violation, 1007 a text frame that is not UTF-8 (or not JSON), 1008 a
//! policy (token revoked, a frame too slow), 1009 too large, 1013 the
//! client does not read, or the server is too busy reading others.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::State;
use super::audit::{Audit, Event, Who};
use super::auth::AuthUser;
use super::limiter::Bucket;
pub(crate) use super::queue::Out;
use super::queue::{Refused, SendQueue, size_of};
use super::reading::{Marks, Metered, ReadLimit};
use super::registry::Admission;
use crate::protocol::{ClientKind, ErrorCode, ErrorPayload, ServerFrame, close};

pub(crate) type Ws = WebSocketStream<Metered<TokioIo<Upgraded>>>;

/// How long a closing connection waits for the peer's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A close frame's reason is at most 123 bytes (RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;

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

impl Conn {
    /// A new connection of `user`.
    pub fn new(state: &State, user: AuthUser, peer: SocketAddr) -> Arc<Conn> {
        Arc::new(Conn {
            id: state.next_conn.fetch_add(1, Ordering::Relaxed),
            user,
            peer,
            queue: SendQueue::new(state.opts.send_queue_bytes),
            kill: CancellationToken::new(),
            killed_for: Mutex::new(None),
            send_timeout: state.opts.send_timeout,
            audit: state.audit.clone(),
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

    fn too_slow(&self, what: &str) {
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
}

/// What the reader got from the socket.
enum Incoming {
    Message(Message),
    /// Nothing, not even a pong, for `idle_timeout`.
    Silent,
    /// Its replies were not read within `send_timeout`.
    NotReading,
    /// Closed or broken by the peer.
    Gone,
    Failed(WsError),
}

/// The next message, once the unsent replies are within the limit. A client
/// that reads slowly is waited for as long as it acknowledges bytes
/// (`sockinfo.rs`; else: as long as its socket takes bytes); one that
/// acknowledged none for `send_timeout` does not read.
async fn next_message(
    conn: &Conn,
    progress: &impl Fn() -> u64,
    stream: &mut SplitStream<Ws>,
    state: &State,
) -> Incoming {
    loop {
        let before = progress();
        if conn.queue.wait_unsent_within(state.opts.send_timeout).await {
            break;
        }
        if conn.queue.is_closed() {
            return Incoming::Gone;
        }
        if progress() == before {
            return Incoming::NotReading;
        }
    }
    match tokio::time::timeout(state.opts.idle_timeout, stream.next()).await {
        Err(_) => Incoming::Silent,
        Ok(None) => Incoming::Gone,
        Ok(Some(Ok(m))) => Incoming::Message(m),
        Ok(Some(Err(e))) => Incoming::Failed(e),
    }
}

/// How a failed read ends the connection: an error frame to send first
/// (if any), and the close code and reason; `None` when the peer is gone.
fn failure(e: &WsError) -> Option<(Option<ErrorPayload>, u16, String)> {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some((
            Some(ErrorPayload::new(
                ErrorCode::TooLarge,
                format!("the frame has {size} bytes; the limit is {max_size}"),
            )),
            close::TOO_BIG,
            "frame too large".into(),
        )),
        WsError::Utf8(_) => Some((
            Some(ErrorPayload::new(
                ErrorCode::BadRequest,
                "a text frame is not valid UTF-8",
            )),
            close::INVALID_PAYLOAD,
            "text frame not UTF-8".into(),
        )),
        WsError::Protocol(
            tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        WsError::Protocol(p) => Some((None, close::PROTOCOL_ERROR, p.to_string())),
        WsError::Io(io) => {
            let limit = ReadLimit::of(io)?;
            let code = match limit {
                ReadLimit::FrameTimeout(_) => close::POLICY_VIOLATION,
                ReadLimit::Busy => close::TRY_AGAIN_LATER,
            };
            Some((None, code, limit.to_string()))
        }
        _ => None,
    }
}

/// Serves an upgraded connection until it ends; `admission` is its place
/// (given back when it ends).
pub(crate) async fn run(
    state: Arc<State>,
    ws: Ws,
    marks: Arc<Marks>,
    fd: RawFd,
    user: AuthUser,
    peer: SocketAddr,
    admission: Admission,
) {
    let (sink, mut stream) = ws.split();
    let conn = Conn::new(&state, user, peer);
    state.registry.track(&conn);
    tracing::debug!("{}: connection {} from {peer}", conn.user.name, conn.id);
    let writer = state.tracker.spawn(writer(
        sink,
        conn.clone(),
        state.opts.ping_interval,
        state.metrics.clone(),
    ));
    let mut session = Session::new(state.clone(), conn.clone());
    // `fd` is the socket `ws` owns, alive as long as this function runs.
    let progress = || super::sockinfo::bytes_acked(fd).unwrap_or_else(|| marks.written());
    let mut stopping = false;
    // The peer closed or broke the connection: no closing handshake to wait for.
    let mut peer_gone = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = conn.kill.cancelled() => break,
            _ = state.shutdown.cancelled() => { stopping = true; break }
            next = next_message(&conn, &progress, &mut stream, &state) => next,
        };
        match next {
            Incoming::Silent => {
                tracing::info!(
                    "{}: connection {} silent for {} s; dropping it",
                    conn.user.name,
                    conn.id,
                    state.opts.idle_timeout.as_secs()
                );
                conn.kill(close::GOING_AWAY, "silent too long");
                break;
            }
            Incoming::NotReading => {
                conn.too_slow("its replies");
                break;
            }
            Incoming::Gone => {
                peer_gone = true;
                break;
            }
            Incoming::Failed(e) => {
                peer_gone = true;
                let Some((frame, code, reason)) = failure(&e) else {
                    tracing::debug!("{}: connection {}: {e}", conn.user.name, conn.id);
                    conn.kill(close::GOING_AWAY, "");
                    break;
                };
                if matches!(code, close::POLICY_VIOLATION | close::TRY_AGAIN_LATER) {
                    // A read limit (reading.rs).
                    let why = format!("connection {} closed ({code}): {reason}", conn.id);
                    state.audit.repeated(Event::LimitRefused, conn.who(), why);
                } else {
                    tracing::info!(
                        "{}: connection {} from {peer} closed ({code}): {e}",
                        conn.user.name,
                        conn.id
                    );
                }
                if let Some(e) = frame {
                    conn.send(&ServerFrame::error(None, e)).await;
                }
                conn.close_after_queue(code, &reason).await;
                break;
            }
            Incoming::Message(msg) => match msg {
                Message::Text(text) => {
                    marks.message_done();
                    state.metrics.frame_in();
                    if !session.handle_text(text.as_str()).await {
                        break;
                    }
                }
                Message::Binary(_) => {
                    marks.message_done();
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
                Message::Ping(p) | Message::Pong(p) => marks.control_done(p.len()),
                Message::Frame(_) => {}
            },
        }
    }
    state.hub.leave(&conn);
    state.registry.untrack(conn.id);
    drop(admission);
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

/// Cuts a close reason to what a close frame holds, at a character boundary.
fn close_reason(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

async fn writer(
    mut sink: SplitSink<Ws, Message>,
    conn: Arc<Conn>,
    ping_every: Duration,
    metrics: Arc<super::metrics::Metrics>,
) {
    let start = tokio::time::Instant::now() + ping_every;
    let mut ping = tokio::time::interval_at(start, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut close_with: Option<(u16, String)> = None;
    loop {
        let out = tokio::select! {
            biased;
            _ = conn.kill.cancelled() => break,
            out = conn.queue.pop() => match out {
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
        let n = size_of(&out);
        match out {
            Out::Text(text) => {
                // Frames are fed, and flushed when nothing else is queued:
                // a burst of stream tokens goes out in few writes.
                let r = tokio::select! {
                    _ = conn.kill.cancelled() => break,
                    r = async {
                        sink.feed(Message::Text(text)).await?;
                        metrics.frame_out();
                        if conn.queue.is_empty() {
                            sink.flush().await?;
                        }
                        Ok::<(), WsError>(())
                    } => r,
                };
                conn.queue.written(n);
                if r.is_err() {
                    conn.kill(close::GOING_AWAY, "");
                    break;
                }
            }
            Out::Close(code, reason) => {
                conn.queue.written(n);
                close_with = Some((code, reason));
                break;
            }
        }
    }
    conn.queue.close();
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
        reason: close_reason(reason).into(),
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
                // Not decoded: counted under the action it named, if known.
                let named = e
                    .action
                    .as_deref()
                    .and_then(|a| {
                        <crate::protocol::Request as crate::protocol::Body>::ACTIONS
                            .iter()
                            .find(|k| **k == a)
                    })
                    .copied()
                    .unwrap_or("(undecoded)");
                self.state.metrics.action(named, &e.code.to_string());
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
                    let action = frame.body.action();
                    self.state.metrics.action(action, "rate_limited");
                    self.audit_rate_limited(action, "server's per-connection request rate");
                    let e = ErrorPayload {
                        retry_after_ms: Some(wait.as_millis().max(1) as u64),
                        ..ErrorPayload::new(
                            ErrorCode::RateLimited,
                            "too many requests on this connection; slow down",
                        )
                        .for_action(action)
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

    fn audit_rate_limited(&self, action: &str, limit: &str) {
        let who = self.conn.who();
        let reason = format!("{action}: over the {limit}");
        self.state.audit.repeated(Event::RateLimited, who, reason);
    }

    /// A request over a per-user rate limit (`send_message`, speech):
    /// audited, and answered with when to try again.
    pub(super) fn user_rate_limited(&self, action: &str, wait: Duration) -> ErrorPayload {
        self.audit_rate_limited(action, "user's limit (server.rate_limit_per_min)");
        ErrorPayload {
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
            ..ErrorPayload::new(
                ErrorCode::RateLimited,
                format!("too many {action} requests for this user; try again later"),
            )
        }
    }
}
