//! The control socket: a Unix socket (mode 0660) that is always on, so that
//! `pichat ptt press|release|toggle`, scripts or a web page can push to talk.
//! One line per command (`press`, `release`, `toggle`, `status`); the
//! answer is one line, `ok ...` or `error: ...`.
//!
//! What a peer sends is bounded: a line of at most [`MAX_LINE`] bytes (a
//! longer one is answered with an error and the connection closed, after
//! reading no more than that), at most [`MAX_CLIENTS`] connections at once,
//! 10 s of silence. An unknown command is echoed back cut short and with
//! its control characters escaped.
//!
//! `monitor` instead streams the daemon's live listening figures (wake
//! scores, voice activity, levels), a line every 100 ms, until the client
//! goes away.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::{PttError, PttHub};

/// Longest command line, in bytes (the newline included).
pub const MAX_LINE: usize = 256;
/// Connections served at once; more wait to be accepted.
pub const MAX_CLIENTS: usize = 16;
/// How much of an unknown command is echoed in the error, in characters.
const ECHO_CHARS: usize = 32;

fn sock_err(path: &Path, cause: impl ToString, hint: &str) -> PttError {
    PttError::Socket {
        path: path.to_path_buf(),
        cause: cause.to_string(),
        hint: hint.to_string(),
    }
}

/// Binds the socket: creates its directory, replaces a stale socket (one no
/// process answers on), refuses to steal a live one, sets mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, PttError> {
    let hint =
        "set ptt.socket to a path in a directory this user can write (e.g. under $XDG_RUNTIME_DIR)";
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| sock_err(path, format!("cannot create {}: {e}", dir.display()), hint))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(sock_err(
                path,
                "another pichat is already listening here",
                "stop it first, or set another ptt.socket",
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| sock_err(path, format!("cannot remove the stale socket: {e}"), hint))?;
    }
    let listener = {
        let std_listener =
            std::os::unix::net::UnixListener::bind(path).map_err(|e| sock_err(path, e, hint))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| sock_err(path, e, hint))?;
        UnixListener::from_std(std_listener).map_err(|e| sock_err(path, e, hint))?
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| sock_err(path, e, hint))?;
    Ok(listener)
}

/// Answers commands until shutdown; removes the socket file at the end.
pub async fn serve(listener: UnixListener, hub: PttHub, shutdown: CancellationToken) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let hub = hub.clone();
                    // Short-lived and bounded by the timeout inside.
                    tokio::spawn(async move {
                        handle(stream, hub).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

/// What a command does; the reply line.
pub fn apply(hub: &PttHub, command: &str) -> String {
    let state = |h: &PttHub| {
        if h.is_pressed() {
            "pressed"
        } else {
            "released"
        }
    };
    match command.trim() {
        "press" => {
            hub.press();
            format!("ok {}", state(hub))
        }
        "release" => {
            hub.release();
            format!("ok {}", state(hub))
        }
        "toggle" => {
            hub.toggle();
            format!("ok {}", state(hub))
        }
        "status" => format!("ok {}", state(hub)),
        other => {
            let mut shown: String = other
                .chars()
                .take(ECHO_CHARS)
                .flat_map(|c| {
                    if c.is_control() {
                        c.escape_default().collect::<Vec<_>>()
                    } else {
                        vec![c]
                    }
                })
                .collect();
            if other.chars().count() > ECHO_CHARS {
                shown.push('…');
            }
            format!("error: unknown command \"{shown}\" (press, release, toggle, status)")
        }
    }
}

async fn handle(stream: UnixStream, hub: PttHub) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(64);
    loop {
        line.clear();
        let mut limited = (&mut r).take(MAX_LINE as u64);
        let read = limited.read_until(b'\n', &mut line);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        if line.last() != Some(&b'\n') {
            if line.len() >= MAX_LINE {
                let msg = format!("error: line too long (at most {MAX_LINE} bytes)\n");
                let _ = w.write_all(msg.as_bytes()).await;
            }
            // Too long, or the peer closed mid-line: nothing more from it.
            return;
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim() == "monitor" {
            return monitor(&hub, w).await;
        }
        let reply = apply(&hub, &text);
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Streams the monitor lines to a client until it leaves; a slow client
/// skips lines rather than holding anyone up.
async fn monitor(hub: &PttHub, mut w: tokio::net::unix::OwnedWriteHalf) {
    let Some(mut rx) = hub.monitor() else {
        let _ = w
            .write_all(b"error: this daemon gives no listening figures\n")
            .await;
        return;
    };
    loop {
        let line = match rx.recv().await {
            Ok(l) => l,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let bytes = format!("{line}\n");
        match tokio::time::timeout(Duration::from_secs(5), w.write_all(bytes.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// The client side, for `pichat ptt …`: sends one command, returns the reply.
pub fn send_command(path: &PathBuf, command: &str) -> Result<String, PttError> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        sock_err(
            path,
            e,
            "is `pichat run` running, and does ptt.socket match its config?",
        )
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| sock_err(path, e, "the daemon closed the connection"))?;
    let mut line = String::new();
    std::io::BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| sock_err(path, e, "the daemon did not answer"))?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptt::PttEvent;

    #[tokio::test]
    async fn commands_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/pichat.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let (hub, mut rx) = PttHub::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, hub.clone(), shutdown.clone()));
        let p = path.clone();
        let replies = tokio::task::spawn_blocking(move || {
            ["press", "press", "status", "toggle", "toggle", "bogus"]
                .map(|c| send_command(&p, c).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(replies[0], "ok pressed");
        assert_eq!(replies[2], "ok pressed");
        assert_eq!(replies[3], "ok released");
        assert_eq!(replies[4], "ok pressed");
        assert!(replies[5].starts_with("error: unknown command"));
        let mut got = vec![];
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        // The repeated press is not a second event.
        assert_eq!(
            got,
            vec![PttEvent::Pressed, PttEvent::Released, PttEvent::Pressed]
        );
        // A second daemon cannot steal a live socket.
        assert!(
            bind(&path)
                .unwrap_err()
                .to_string()
                .contains("already listening")
        );
        shutdown.cancel();
        task.await.unwrap();
        assert!(!path.exists(), "socket removed at shutdown");
        // A stale socket file (nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(bind(&path).is_ok());
    }

    #[tokio::test]
    async fn long_lines_and_many_clients_are_bounded() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pichat.sock");
        let listener = bind(&path).unwrap();
        let (hub, _rx) = PttHub::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, hub.clone(), shutdown.clone()));
        // 16 MiB without a newline: refused after MAX_LINE bytes, not echoed.
        let mut s = UnixStream::connect(&path).await.unwrap();
        let big = vec![b'a'; 16 << 20];
        let writer = tokio::spawn(async move {
            let _ = s.write_all(&big).await;
            s
        });
        let mut s = writer.await.unwrap_or_else(|_| panic!("writer"));
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
            .await
            .unwrap()
            .ok();
        let reply = String::from_utf8_lossy(&reply);
        assert_eq!(
            reply,
            format!("error: line too long (at most {MAX_LINE} bytes)\n")
        );
        // At the limit it is a command; an unknown one is echoed short and escaped.
        for (line, want) in [
            (
                format!("{}status\n", " ".repeat(MAX_LINE - 7)),
                "ok released".to_string(),
            ),
            (
                format!("\x1b[31m{}\n", "x".repeat(200)),
                format!(
                    "error: unknown command \"\\u{{1b}}[31m{}…\" (press, release, toggle, status)",
                    "x".repeat(ECHO_CHARS - 5)
                ),
            ),
        ] {
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(line.as_bytes()).await.unwrap();
            let mut r = BufReader::new(s);
            let mut got = String::new();
            r.read_line(&mut got).await.unwrap();
            assert_eq!(got.trim_end(), want);
        }
        // Clients over MAX_CLIENTS wait for a slot; the socket still answers after.
        let mut idle = Vec::new();
        for _ in 0..MAX_CLIENTS + 4 {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        drop(idle);
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || send_command(&p, "status"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r, "ok released");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn unwritable_place_is_explained() {
        let err = bind(Path::new("/proc/pichat-test/pichat.sock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/proc/pichat-test/pichat.sock"), "{err}");
        assert!(err.contains("ptt.socket"), "{err}");
        let err = send_command(&PathBuf::from("/nonexistent/pichat.sock"), "press")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is `pichat run` running"), "{err}");
    }
}
