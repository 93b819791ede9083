//! The socket of one WebSocket connection: this task is its reader (frames
//! in, each handed to the connection's [`Session`] in order), and it spawns
//! its writer (`writer.rs`: the send queue out, pings, the close frame).
//!
//! Backpressure: the reader reads no further request while the replies not
//! yet written pass `send_queue_bytes`; a client that does not read is
//! disconnected with 1013 (the sending policy is `conn.rs`'s). A peer silent
//! for `idle_timeout` (pings unanswered) is dropped.
//!
//! Reads go through `reading.rs` (a global budget for frames in progress, a
//! deadline per frame). Close codes, as RFC 6455 says: 1002 a protocol
//! violation, 1007 a text frame that is not UTF-8 (or not JSON), 1008 a
//! policy (token revoked, a frame too slow), 1009 too large, 1013 the
//! client does not read, or the server is too busy reading others.

mod writer;

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::audit::Event;
use super::auth::AuthUser;
use super::conn::Conn;
use super::reading::{Marks, Metered, ReadLimit};
use super::registry::Admission;
use super::session::Session;
use super::state::State;
use crate::protocol::{ErrorCode, ErrorPayload, ServerFrame, close};

/// An upgraded connection's socket, its reads metered (`reading.rs`).
pub(crate) type Ws = WebSocketStream<Metered<TokioIo<Upgraded>>>;

/// How long a closing connection waits for the peer's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
        if conn
            .queue()
            .wait_unsent_within(state.opts.send_timeout)
            .await
        {
            break;
        }
        if conn.queue().is_closed() {
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
    let conn = state.new_conn(user, peer);
    state.registry.track(&conn);
    tracing::debug!("{}: connection {} from {peer}", conn.user.name, conn.id);
    let writer = state.tracker.spawn(writer::run(
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
            _ = conn.killed() => break,
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
        session.jobs().wait_all().await;
        conn.close_after_queue(close::GOING_AWAY, "server shutting down")
            .await;
    } else if !conn.is_killed() {
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
