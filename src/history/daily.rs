//! `[history] cleanup_after_days` in `pichat run`: the rules of `pichat
//! history cleanup` (archive or delete the conversations idle for more
//! than that many days), applied at start and then once a day. A failed
//! pass is logged and tried again the next day; the device goes on.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{CleanupAction, HistoryHandle};

/// How often the cleanup runs.
pub const EVERY: Duration = Duration::from_secs(86_400);

/// Applies the cleanup now and then every `every` until `shutdown`;
/// `changed` is called after a pass that changed something (the sync
/// sends it).
pub async fn run(
    history: HistoryHandle,
    days: u32,
    action: CleanupAction,
    every: Duration,
    changed: impl Fn() + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match history.call(move |s| s.cleanup(days, action, false)).await {
            Ok(list) if list.is_empty() => {}
            Ok(list) => {
                tracing::info!(
                    "history cleanup: {} {} conversation(s) idle for more than {days} days",
                    match action {
                        CleanupAction::Archive => "archived",
                        CleanupAction::Delete => "deleted",
                    },
                    list.len()
                );
                changed();
            }
            Err(e) => tracing::warn!("history cleanup failed (tried again in a day): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::history::{NewConversation, OpenOptions};
    use crate::time;

    fn old(days: i64) -> NewConversation {
        NewConversation {
            created_at: Some(time::now_ms() - days * 86_400_000),
            ..Default::default()
        }
    }

    /// On a real file: the first pass runs at start, the next one a period
    /// later, each with `history cleanup`'s rules (older than the cutoff
    /// only), and each pass that changed something says so.
    #[tokio::test]
    async fn applies_the_cleanup_at_start_and_again_each_period() {
        let dir = tempfile::tempdir().unwrap();
        let opts = OpenOptions {
            create: true,
            ..OpenOptions::default()
        };
        let (h, thread) = HistoryHandle::open(&dir.path().join("h.db"), &opts).unwrap();
        let first = h.call(|s| s.create_conversation(old(31))).await.unwrap();
        let fresh = h.call(|s| s.create_conversation(old(29))).await.unwrap();
        let changes = Arc::new(AtomicUsize::new(0));
        let c2 = changes.clone();
        let stop = CancellationToken::new();
        let period = Duration::from_millis(300);
        let task = tokio::spawn(run(
            h.clone(),
            30,
            CleanupAction::Delete,
            period,
            move || {
                c2.fetch_add(1, Ordering::SeqCst);
            },
            stop.clone(),
        ));
        let gone = |id: String| {
            let h = h.clone();
            async move {
                h.call(move |s| Ok(s.get_conversation(&id).is_err()))
                    .await
                    .unwrap()
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !gone(first.id.clone()).await {
            assert!(tokio::time::Instant::now() < deadline, "no pass at start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!gone(fresh.id.clone()).await, "29 days is not past 30");
        // Made after the first pass: the next one takes it.
        let second = h.call(|s| s.create_conversation(old(45))).await.unwrap();
        while !gone(second.id.clone()).await {
            assert!(tokio::time::Instant::now() < deadline, "no second pass");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!gone(fresh.id.clone()).await);
        assert_eq!(changes.load(Ordering::SeqCst), 2);
        stop.cancel();
        task.await.unwrap();
        drop(h);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
    }
}
