//! A connection's writer task: drains the send queue (`queue.rs`) into the
//! socket, pings every `ping_interval`, and ends with a close frame: the
//! code and reason queued last, else the first reason the connection was
//! killed for (`conn.rs`), else 1000.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::protocol::close;
use crate::server::conn::{Conn, Out};
use crate::server::metrics::Metrics;
use crate::server::queue::size_of;

/// A close frame's reason is at most 123 bytes (RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;

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

pub(super) async fn run<S>(
    mut sink: S,
    conn: Arc<Conn>,
    ping_every: Duration,
    metrics: Arc<Metrics>,
) where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let start = tokio::time::Instant::now() + ping_every;
    let mut ping = tokio::time::interval_at(start, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let queue = conn.queue();
    let mut close_with: Option<(u16, String)> = None;
    loop {
        let out = tokio::select! {
            biased;
            _ = conn.killed() => break,
            out = queue.pop() => match out {
                Some(out) => out,
                None => break,
            },
            _ = ping.tick() => {
                let sent = tokio::select! {
                    _ = conn.killed() => break,
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
                    _ = conn.killed() => break,
                    r = async {
                        sink.feed(Message::Text(text)).await?;
                        metrics.frame_out();
                        if queue.is_empty() {
                            sink.flush().await?;
                        }
                        Ok::<(), WsError>(())
                    } => r,
                };
                queue.written(n);
                if r.is_err() {
                    conn.kill(close::GOING_AWAY, "");
                    break;
                }
            }
            Out::Close(code, reason) => {
                queue.written(n);
                close_with = Some((code, reason));
                break;
            }
        }
    }
    queue.close();
    let (code, reason) = close_with
        .or_else(|| conn.killed_for())
        .unwrap_or((1000, String::new()));
    conn.writer_ended();
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
