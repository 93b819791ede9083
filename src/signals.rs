//! Process signals: Ctrl-C (SIGINT) and SIGTERM (how systemd stops a
//! service) both mean "finish cleanly".

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// SIGINT and SIGTERM, caught from the moment this is made: until then a
/// signal has its default action (the process ends at once).
pub struct Termination {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl Termination {
    /// Catches both now (needs a runtime).
    pub fn catch() -> Termination {
        Termination {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => {}
            _ = next(&mut self.int) => {}
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM from its first poll on.
pub async fn terminated() {
    Termination::catch().recv().await
}

/// A token cancelled on SIGINT or SIGTERM. The signals are caught before
/// it returns: a daemon stopped right after it started (systemd stopping a
/// unit it just started) stops cleanly instead of being killed outright.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let mut caught = Termination::catch();
    tokio::spawn(async move {
        caught.recv().await;
        tracing::info!("stopping");
        t.cancel();
    });
    token
}
