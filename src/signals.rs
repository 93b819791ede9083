//! Process signals: Ctrl-C (SIGINT) and SIGTERM (how systemd stops a
//! service) both mean "finish cleanly".

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGINT or SIGTERM.
pub async fn terminated() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A token cancelled on SIGINT or SIGTERM (the watcher is spawned on the
/// current runtime).
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("stopping");
        t.cancel();
    });
    token
}
