//! A SIGTERM that arrives just after `shutdown_token` returns, before any
//! task has run, is a clean stop. (When the handler was installed by the
//! spawned task, such a signal killed the process: seen once in CI as a
//! server stopped right after a reload sending no STOPPING=1.) Its own
//! test binary: the signal goes to this whole process.

use std::time::Duration;

#[test]
fn sigterm_right_after_the_token_is_made_cancels_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let token = pichat::signals::shutdown_token();
        // No await between: on this single-threaded runtime the watcher
        // task has not run yet.
        // SAFETY: raising a signal in this process.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        tokio::time::timeout(Duration::from_secs(10), token.cancelled())
            .await
            .expect("the token is cancelled by the SIGTERM");
    });
}
