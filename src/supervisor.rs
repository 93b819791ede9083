//! The supervisor loop of both daemons (`pichat run` and `pichat serve`):
//! READY once started, WATCHDOG at half of `WatchdogSec`, SIGHUP as a
//! reload bracketed by RELOADING/READY, STOPPING at the end. What a reload
//! does is the daemon's ([`Reload`]); the loop ends at shutdown or when the
//! daemon's own work ends.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// What a daemon does on SIGHUP, and how it describes itself to systemd.
pub trait Reload {
    /// The status line for `systemctl status`.
    fn status(&self) -> String;
    /// Re-reads and applies the config; problems are logged, the running
    /// config stays.
    fn reload(&mut self) -> impl Future<Output = ()> + Send;
}

/// Tells systemd the daemon is ready, then keeps the watchdog fed and
/// answers SIGHUP until `shutdown` or until `work` finishes (its result is
/// returned; `None` at shutdown).
pub async fn run<R: Reload + Send, T>(
    daemon: &mut R,
    work: impl Future<Output = T>,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<T>> {
    // Reload requests are taken before READY: systemd may send one as soon
    // as it sees READY.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    crate::service::ready(&daemon.status());
    let mut watchdog = crate::service::watchdog_interval().map(tokio::time::interval);
    let mut work = std::pin::pin!(work);
    let out = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            r = &mut work => break Some(r),
            _ = hangup.recv() => {
                crate::service::reloading();
                daemon.reload().await;
                crate::service::ready(&daemon.status());
            }
            _ = async {
                match watchdog.as_mut() {
                    Some(w) => { w.tick().await; }
                    None => std::future::pending().await,
                }
            } => crate::service::watchdog(),
        }
    };
    crate::service::stopping();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>);

    impl Reload for Counting {
        fn status(&self) -> String {
            format!("reloaded {} times", self.0.load(Ordering::SeqCst))
        }
        async fn reload(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn sighup_reloads_and_the_work_ending_ends_the_loop() {
        let n = Arc::new(AtomicUsize::new(0));
        let mut d = Counting(n.clone());
        let shutdown = CancellationToken::new();
        let work = async {
            // Wait until the loop took SIGHUP, send one, wait for the reload.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            // SAFETY: raising a signal this process handles.
            unsafe { libc::raise(libc::SIGHUP) };
            for _ in 0..200 {
                if n.load(Ordering::SeqCst) == 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            42
        };
        let r = run(&mut d, work, &shutdown).await.unwrap();
        assert_eq!(r, Some(42));
        assert_eq!(d.0.load(Ordering::SeqCst), 1);
        // Shutdown ends it with no result.
        shutdown.cancel();
        let r = run(&mut d, std::future::pending::<()>(), &shutdown)
            .await
            .unwrap();
        assert_eq!(r, None);
    }
}
