//! Push-to-talk: every source (a GPIO button, the keyboard, the control
//! socket) ends in the same [`PttHub`], which hands the daemon one stream of
//! Pressed / Released events with duplicates removed.
//!
//! One file per source: `gpio.rs` (rppal, behind the `gpio` feature),
//! `keyboard.rs`, `socket.rs`; the pure logic is in `debounce.rs`.

pub mod debounce;
pub mod gpio;
pub mod keyboard;
pub mod socket;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{PttConfig, PttSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PttEvent {
    Pressed,
    Released,
}

#[derive(Debug, thiserror::Error)]
pub enum PttError {
    #[error(
        "ptt.source = \"gpio\": this pichat was built without GPIO support (cargo feature `gpio`); rebuild with it, or use ptt.source = \"keyboard\" or \"none\" (with `pichat ptt press|release`)"
    )]
    GpioNotBuilt,
    #[error(
        "ptt.source = \"gpio\": cannot use GPIO pin {pin}: {cause}; on a Raspberry Pi, add the user to the gpio group; elsewhere use ptt.source = \"keyboard\" or \"none\" (with `pichat ptt press|release`)"
    )]
    Gpio { pin: u8, cause: String },
    #[error("control socket {}: {cause}; {hint}", path.display())]
    Socket {
        path: PathBuf,
        cause: String,
        hint: String,
    },
    #[error(
        "ptt.source = \"keyboard\": standard input is not a terminal; use ptt.source = \"none\" and `pichat ptt press|release` (e.g. under systemd)"
    )]
    NotATerminal,
}

/// Where every source sends its presses; removes duplicates (a press while
/// already pressed) and resolves "toggle".
#[derive(Clone)]
pub struct PttHub {
    tx: mpsc::Sender<PttEvent>,
    pressed: Arc<AtomicBool>,
    /// The daemon's live listening figures, for the socket's `monitor`.
    monitor: Arc<std::sync::Mutex<Option<tokio::sync::broadcast::Sender<String>>>>,
}

impl PttHub {
    pub fn new() -> (PttHub, mpsc::Receiver<PttEvent>) {
        let (tx, rx) = mpsc::channel(32);
        (
            PttHub {
                tx,
                pressed: Arc::new(AtomicBool::new(false)),
                monitor: Arc::default(),
            },
            rx,
        )
    }

    /// Where `monitor` clients read the daemon's listening figures.
    pub fn set_monitor(&self, tx: tokio::sync::broadcast::Sender<String>) {
        if let Ok(mut m) = self.monitor.lock() {
            *m = Some(tx);
        }
    }

    /// A subscription to the listening figures, if the daemon gives them.
    pub fn monitor(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        self.monitor.lock().ok()?.as_ref().map(|t| t.subscribe())
    }

    pub fn is_pressed(&self) -> bool {
        self.pressed.load(Ordering::SeqCst)
    }

    /// Sends an event unless it repeats the current state.
    pub fn send(&self, e: PttEvent) -> bool {
        let down = e == PttEvent::Pressed;
        if self.pressed.swap(down, Ordering::SeqCst) == down {
            return false;
        }
        // A full queue means the daemon is far behind; dropping is better
        // than blocking an interrupt thread.
        self.tx.try_send(e).is_ok()
    }

    pub fn press(&self) -> bool {
        self.send(PttEvent::Pressed)
    }

    pub fn release(&self) -> bool {
        self.send(PttEvent::Released)
    }

    pub fn toggle(&self) -> bool {
        if self.is_pressed() {
            self.release()
        } else {
            self.press()
        }
    }
}

/// Handles that keep the armed sources alive (dropping them disarms).
pub struct Armed {
    _gpio: Option<gpio::GpioButton>,
    _keyboard: Option<keyboard::RawTerminal>,
    pub socket: PathBuf,
    pub sources: Vec<String>,
}

/// Arms the configured source and the control socket; every task is spawned
/// on `tracker` and ends when `shutdown` is cancelled.
pub fn arm(
    cfg: &PttConfig,
    hub: &PttHub,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Armed, PttError> {
    let mut sources = Vec::new();
    let gpio = match cfg.source {
        PttSource::Gpio => {
            let b = gpio::GpioButton::arm(cfg, hub.clone(), tracker, shutdown.clone())?;
            sources.push(format!(
                "GPIO{} ({})",
                cfg.gpio_pin,
                if cfg.active_low {
                    "active low"
                } else {
                    "active high"
                }
            ));
            Some(b)
        }
        _ => None,
    };
    let keyboard = match cfg.source {
        PttSource::Keyboard => {
            let k = keyboard::arm(hub.clone(), tracker, shutdown.clone())?;
            sources.push("keyboard (space or enter toggles)".into());
            Some(k)
        }
        _ => None,
    };
    let listener = socket::bind(&cfg.socket)?;
    tracker.spawn(socket::serve(listener, hub.clone(), shutdown.clone()));
    sources.push(format!("control socket {}", cfg.socket.display()));
    Ok(Armed {
        _gpio: gpio,
        _keyboard: keyboard,
        socket: cfg.socket.clone(),
        sources,
    })
}
