//! The `pichat run` lifecycle: opens the history, the devices, the engines
//! and the push-to-talk sources, starts the voice loop and the sync, then
//! hands over to the [`crate::supervisor`] loop (READY, watchdog, SIGHUP).
//! A reload applies what it can at once (engines, earcons, `[listen]`,
//! `[wake]`, push-to-talk, the sync target) and names what needs a restart;
//! an invalid file changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::daemon::{self, Control, Listening, Voice, VoiceParts};
use crate::audio::earcon::Earcons;
use crate::audio::{self, AudioError, AudioSink};
use crate::config::Config;
use crate::engines::{EngineError, Engines};
use crate::history::HistoryHandle;
use crate::history::{OpenOptions, StoreError};
use crate::ptt::{PttError, PttHub};
use crate::wake::WakeError;

/// Why the assistant could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    History(#[from] StoreError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Wake(#[from] WakeError),
    #[error(transparent)]
    Ptt(#[from] PttError),
    #[error("cannot watch for signals: {0}")]
    Signal(#[from] std::io::Error),
}

/// The armed push-to-talk sources, on their own tracker so they can be
/// re-armed on reload (the old ones fully gone before the new ones bind).
struct Ptt {
    armed: crate::ptt::Armed,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Ptt {
    fn arm(
        cfg: &crate::config::PttConfig,
        hub: &PttHub,
        shutdown: &CancellationToken,
    ) -> Result<Ptt, PttError> {
        let token = shutdown.child_token();
        let tracker = TaskTracker::new();
        let armed = crate::ptt::arm(cfg, hub, &tracker, &token)?;
        Ok(Ptt {
            armed,
            token,
            tracker,
        })
    }

    async fn disarm(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        drop(self.armed);
    }
}

/// Hands-free listening as the config asks for it.
pub fn listening(cfg: &Config) -> Result<Listening, WakeError> {
    Ok(Listening {
        wake: if cfg.listen.mode.wake() {
            crate::wake::build(cfg)?
        } else {
            Vec::new()
        },
        hands_free: cfg.listen.mode.wake(),
        vad_threshold: cfg.listen.vad_threshold,
        echo_tail: cfg.listen.echo_cancel.then_some(cfg.listen.echo_tail),
    })
}

/// The running assistant, as the supervisor sees it.
struct Assistant {
    path: PathBuf,
    must_exist: bool,
    current: Config,
    hub: PttHub,
    ptt: Ptt,
    control: mpsc::Sender<Control>,
    history: HistoryHandle,
    kick: Arc<Notify>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    sync_token: CancellationToken,
}

fn describe_listening(cfg: &Config) -> String {
    if cfg.listen.mode.wake() {
        let words: Vec<&str> = cfg.wake.words.keys().map(String::as_str).collect();
        format!("the wake word ({}) and push-to-talk", words.join(", "))
    } else {
        "push-to-talk".into()
    }
}

impl crate::supervisor::Reload for Assistant {
    fn status(&self) -> String {
        format!("listening for {}", describe_listening(&self.current))
    }

    async fn reload(&mut self) {
        let t = Instant::now();
        if let Some(next) = self.apply().await {
            if next.sync != self.current.sync {
                self.sync_token.cancel();
                self.sync_token = start_sync(
                    &next,
                    &self.history,
                    &self.kick,
                    &self.tracker,
                    &self.shutdown,
                );
                tracing::info!("sync target changed: restarted");
            }
            self.current = next;
            tracing::info!(
                "config reloaded from {} in {} ms",
                self.path.display(),
                t.elapsed().as_millis()
            );
        }
    }
}

impl Assistant {
    /// Re-reads and applies the config (SIGHUP). An invalid file changes
    /// nothing: its problems are logged with their lines. Returns the
    /// config now in force when it changed.
    async fn apply(&mut self) -> Option<Config> {
        let refuse = |e: &dyn std::fmt::Display| {
            for line in e.to_string().lines() {
                tracing::error!("reload refused, the running config stays: {line}");
            }
        };
        let next = match crate::config::load_file(&self.path, self.must_exist) {
            Ok(l) => l.config,
            Err(e) => {
                refuse(&e);
                return None;
            }
        };
        let engines = match Engines::from_config(&next) {
            Ok(e) => e,
            Err(e) => {
                refuse(&e);
                return None;
            }
        };
        let earcons = match Earcons::load(&next.audio) {
            Ok(e) => e,
            Err(e) => {
                refuse(&e);
                return None;
            }
        };
        let listen = if next.listen.mode != self.current.listen.mode
            || next.wake != self.current.wake
            || next.listen != self.current.listen
            || next.engines != self.current.engines
        {
            match listening(&next) {
                Ok(l) => Some(l),
                Err(e) => {
                    refuse(&e);
                    return None;
                }
            }
        } else {
            None
        };
        let cur = &self.current;
        let mut restart = Vec::new();
        if next.audio.input != cur.audio.input {
            restart.push("audio.input");
        }
        if next.audio.output != cur.audio.output {
            restart.push("audio.output");
        }
        if next.history != cur.history {
            restart.push("[history]");
        }
        if next.log != cur.log {
            restart.push("[log]");
        }
        if !restart.is_empty() {
            tracing::warn!(
                "changed but applied only at restart: {}",
                restart.join(", ")
            );
        }
        if next.ptt != cur.ptt {
            let armed = match Ptt::arm(&next.ptt, &self.hub, &self.shutdown.child_token()) {
                Ok(p) => p,
                Err(e) => {
                    refuse(&e);
                    return None;
                }
            };
            let old = std::mem::replace(&mut self.ptt, armed);
            old.disarm().await;
            tracing::info!(
                "push-to-talk re-armed: {}",
                self.ptt.armed.sources.join(" + ")
            );
        }
        if let Some(l) = &listen {
            tracing::info!("listening re-armed: {}", describe_listening(&next));
            let _ = l;
        }
        let cfg = next.clone();
        let apply: Control = Box::new(move |v: &mut Voice| {
            v.reconfigure(&cfg, engines);
            v.set_earcons(earcons);
            if let Some(l) = listen {
                v.set_listening(l);
            }
        });
        if self.control.send(apply).await.is_err() {
            return None;
        }
        Some(next)
    }
}

/// Starts the sync task when `sync.url` is set; returns its stop token.
fn start_sync(
    cfg: &Config,
    history: &HistoryHandle,
    kick: &Arc<Notify>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> CancellationToken {
    let token = shutdown.child_token();
    if cfg.sync.url.is_some() {
        tracker.spawn(crate::sync::run(
            cfg.sync.clone(),
            history.clone(),
            kick.clone(),
            token.clone(),
        ));
    }
    token
}

/// Runs the assistant until SIGTERM/SIGINT (`shutdown`).
pub async fn run(
    path: &Path,
    must_exist: bool,
    cfg: Config,
    started: Instant,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let (history, store) = HistoryHandle::open(
        &cfg.history.path,
        &OpenOptions {
            busy_timeout: cfg.history.busy_timeout,
            create: true,
            ..OpenOptions::default()
        },
    )?;
    let sink: Arc<dyn AudioSink> =
        Arc::from(audio::open_output(&cfg.audio.output, cfg.audio.volume)?);
    let source = audio::open_input(&cfg.audio.input)?;
    if let Some(why) = audio::pulse::spinning_input(&cfg) {
        tracing::warn!("{why}");
    }
    let earcons = Earcons::load(&cfg.audio)?;
    let engines = Engines::from_config(&cfg)?;
    let listen = listening(&cfg)?;
    let (hub, ptt_rx) = PttHub::new();
    let ptt = Ptt::arm(&cfg.ptt, &hub, &shutdown)?;
    let ready = format!(
        "ready: microphone {}, speaker {}, {} ({}), history {}",
        source.describe(),
        sink.describe(),
        describe_listening(&cfg),
        ptt.armed.sources.join(" + "),
        cfg.history.path.display()
    );
    let mut voice = Voice::new(
        &cfg,
        VoiceParts {
            history: history.clone(),
            engines,
            source: Some(source),
            sink,
            earcons,
        },
    );
    hub.set_monitor(voice.monitor.clone());
    voice.set_listening(listen);
    let (control, control_rx) = mpsc::channel(4);
    let tracker = TaskTracker::new();
    // The sync with the chat server, if configured: it only reads and
    // writes the local store; no turn ever waits on it.
    let kick = Arc::new(Notify::new());
    voice.sync_kick = Some(kick.clone());
    let sync_token = start_sync(&cfg, &history, &kick, &tracker, &shutdown);
    if let Some(days) = cfg.history.cleanup_after_days {
        let kick = kick.clone();
        tracker.spawn(crate::history::daily::run(
            history.clone(),
            days,
            cfg.history.cleanup_action,
            crate::history::daily::EVERY,
            move || kick.notify_one(),
            shutdown.clone(),
        ));
    }
    tracker.spawn(daemon::run(voice, ptt_rx, control_rx, shutdown.clone()));
    tracing::info!("{ready} (in {} ms)", started.elapsed().as_millis());
    let mut assistant = Assistant {
        path: path.to_path_buf(),
        must_exist,
        current: cfg,
        hub,
        ptt,
        control,
        history: history.clone(),
        kick,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        sync_token,
    };
    crate::supervisor::run(&mut assistant, std::future::pending::<()>(), &shutdown).await?;
    tracker.close();
    tracker.wait().await;
    assistant.ptt.disarm().await;
    drop(assistant.history);
    drop(history);
    let _ = tokio::task::spawn_blocking(move || store.join()).await;
    tracing::info!("stopped");
    Ok(())
}
