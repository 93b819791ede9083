//! The keyboard as a push-to-talk button, when standard input is a terminal.
//! Terminals report key presses but not releases, so a key toggles: space or
//! enter starts listening, the next one stops. The terminal is put in
//! non-canonical, no-echo mode while armed (Ctrl-C still works) and restored
//! when the returned guard is dropped.

use std::io::{IsTerminal, Read};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{PttError, PttHub};

/// Restores the terminal's settings when dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores settings read from the same fd by tcgetattr.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

fn raw_mode() -> std::io::Result<RawTerminal> {
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawTerminal { saved })
    }
}

/// True for the keys that toggle talking.
pub fn is_talk_key(b: u8) -> bool {
    b == b' ' || b == b'\n' || b == b'\r'
}

pub fn arm(
    hub: PttHub,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<RawTerminal, PttError> {
    if !std::io::stdin().is_terminal() {
        return Err(PttError::NotATerminal);
    }
    let guard = raw_mode().map_err(|_| PttError::NotATerminal)?;
    // A blocking read on its own thread: it ends with the process (a read
    // on a terminal cannot be interrupted portably), and does nothing once
    // shutdown is cancelled.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
    std::thread::Builder::new()
        .name("pichat-keyboard".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            let mut stdin = std::io::stdin().lock();
            while let Ok(1) = stdin.read(&mut byte) {
                if tx.send(byte[0]).is_err() {
                    return;
                }
            }
        })
        .map_err(|_| PttError::NotATerminal)?;
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                b = rx.recv() => match b {
                    Some(b) if is_talk_key(b) => { hub.toggle(); }
                    Some(_) => {}
                    None => return,
                },
            }
        }
    });
    Ok(guard)
}
