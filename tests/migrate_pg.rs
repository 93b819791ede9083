//! `pichat server migrate --to postgres://…` on a real private PostgreSQL
//! cluster: a copy that is killed half way resumes and is verified; a run
//! again copies nothing and verifies again; the copy serves the same
//! tokens, sessions and feed; a foreign target (another program's tables,
//! a pichat server already in use, another source's copy) is refused and
//! left unchanged. The 100,000-message run is `--ignored` (scripts/test.sh
//! runs it).
//!
//! Needs PostgreSQL (`scripts/deps.sh --test`); `PICHAT_SKIP_POSTGRES=1`
//! skips these tests and says so.

mod server_support;

use std::path::Path;
use std::time::{Duration, Instant};

use pichat::serverdb::migrate::{MigrateError, migrate};
use pichat::serverdb::postgres::PgStore;
use pichat::serverdb::sqlite::SqliteStore;
use pichat::serverdb::{Author, ConversationUpdate, ServerStore, SettingsUpdate, everything};
use pichat::store::{NewConversation, NewMessage, OpenOptions, Role};

fn skipped() -> bool {
    let skip = std::env::var("PICHAT_SKIP_POSTGRES").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED: the migration needs PostgreSQL (PICHAT_SKIP_POSTGRES=1)");
    }
    skip
}

/// A SQLite server store with two users, `n` messages of alice in
/// conversations of 100, a tombstone, settings, a session; returns alice's
/// token.
async fn source(path: &Path, n: usize) -> String {
    let (s, thread) = SqliteStore::open(path, &OpenOptions::default()).unwrap();
    let (info, token) = pichat::server::auth::issue_token(&s, "alice", Some("pi"))
        .await
        .unwrap();
    pichat::server::auth::issue_token(&s, "bob", None)
        .await
        .unwrap();
    let alice = s.user_id("alice").await.unwrap();
    let bob = s.user_id("bob").await.unwrap();
    s.create_session(info.id, [5; 32], 1000, i64::MAX / 2)
        .await
        .unwrap();
    let mut batch = Vec::new();
    let mut conv = String::new();
    for i in 0..n {
        if i % 100 == 0 {
            conv = s
                .create_conversation(Author::NOBODY, alice, NewConversation::default())
                .await
                .unwrap()
                .0
                .id;
        }
        let mut m = NewMessage::new(
            &conv,
            if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            },
            format!("message {i}: the train to Lisbon leaves at nine"),
        );
        m.id = Some(pichat::store::new_id());
        batch.push(m);
        if batch.len() == 500 {
            s.append_messages(Author::NOBODY, alice, std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        s.append_messages(Author::NOBODY, alice, batch)
            .await
            .unwrap();
    }
    let (doomed, _) = s
        .create_conversation(Author::NOBODY, alice, NewConversation::default())
        .await
        .unwrap();
    let mut m = NewMessage::new(&doomed.id, Role::User, "gone");
    m.id = Some(pichat::store::new_id());
    s.add_message(Author::NOBODY, alice, m).await.unwrap();
    s.delete_conversation(Author::NOBODY, alice, &doomed.id)
        .await
        .unwrap();
    s.update_settings(
        Author::NOBODY,
        alice,
        SettingsUpdate {
            selected_model: Some(Some("big".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (bc, _) = s
        .create_conversation(Author::NOBODY, bob, NewConversation::default())
        .await
        .unwrap();
    s.update_conversation(
        Author::NOBODY,
        bob,
        &bc.id,
        ConversationUpdate {
            archived: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    drop(s);
    thread.join();
    token
}

/// Rows in a table of a PostgreSQL database.
async fn rows(url: &str, table: &str) -> i64 {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

async fn execute(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

/// What both stores say of alice: her rev, the feed's length, her
/// conversations, her settings.
async fn view(s: &dyn ServerStore) -> (i64, usize, usize, Option<String>) {
    let alice = s.user_id("alice").await.unwrap();
    let mut since = 0;
    let mut n = 0;
    loop {
        let p = s.changes(alice, since, 5000, everything()).await.unwrap();
        n += p.changes.len();
        since = p.rev;
        if !p.has_more {
            break;
        }
    }
    let (convs, _) = s
        .list_conversations(alice, true, 10_000, None)
        .await
        .unwrap();
    (
        s.user_rev(alice).await.unwrap(),
        n,
        convs.len(),
        s.settings(alice).await.unwrap().selected_model,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_killed_half_way_resumes_is_verified_and_serves_the_same() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("server.db");
    let token = source(&src, 6000).await;
    let url = server_support::fresh_postgres().await;
    // The real command, killed once part of the messages are in.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pichat"))
        .args(["server", "migrate", "--batch", "100", "--db"])
        .arg(&src)
        .args(["--to", &url])
        .env_remove("PICHAT_CONFIG")
        .env("HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let n = rows(&url, "srv_messages").await;
        if n >= 300 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let part = rows(&url, "srv_messages").await;
    assert!(part > 0 && part < 6000, "killed half way: {part} copied");
    // Again: it resumes, and is verified.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pichat"))
        .args(["server", "migrate", "--json", "--db"])
        .arg(&src)
        .args(["--to", &url])
        .env_remove("PICHAT_CONFIG")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resumed"], true, "{report}");
    assert_eq!(report["messages"], 6000, "{report}");
    assert_eq!(
        report["messages_copied"].as_i64().unwrap(),
        6000 - part,
        "{report}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resuming"),
        "feedback on the resumption"
    );
    // Once more: nothing left to copy, verified again.
    let r = migrate(&src, &url, 1000, &mut |_: &str| {}).await.unwrap();
    assert_eq!((r.messages_copied, r.messages, r.resumed), (0, 6000, true));
    assert_eq!((r.users, r.tokens, r.sessions, r.settings), (2, 2, 1, 1));
    // The copy serves what the source served.
    let (sq, thread) = SqliteStore::open(&src, &OpenOptions::default()).unwrap();
    let pg = PgStore::open(&url, &Default::default()).await.unwrap();
    assert_eq!(view(&sq).await, view(&pg).await);
    let digest = pichat::server::auth::hash_token(&token);
    assert_eq!(
        sq.token_by_hash(digest).await.unwrap().map(|t| t.user_id),
        pg.token_by_hash(digest).await.unwrap().map(|t| t.user_id),
    );
    assert!(pg.session([5; 32], 2000).await.unwrap().is_some());
    // New rows on the copy take ids after the copied ones.
    let t = pg.add_token("carol", None, [77; 32]).await.unwrap();
    assert_eq!(t.id, 3);
    let alice = pg.user_id("alice").await.unwrap();
    let c = pg
        .create_conversation(Author::NOBODY, alice, NewConversation::default())
        .await
        .unwrap()
        .0;
    assert_eq!(c.rev, view(&sq).await.0 + 1, "revs go on from the copy's");
    drop(sq);
    thread.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_target_is_refused_and_left_unchanged() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("server.db");
    source(&src, 50).await;
    // Another program's table.
    let url = server_support::fresh_postgres().await;
    execute(
        &url,
        "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('mine');",
    )
    .await;
    let e = migrate(&src, &url, 100, &mut |_: &str| {})
        .await
        .unwrap_err();
    assert!(matches!(e, MigrateError::ForeignTarget { .. }), "{e}");
    assert!(e.to_string().contains("notes"), "{e}");
    assert_eq!(rows(&url, "notes").await, 1);
    assert_eq!(rows(&url, "pichat_meta").await, -1, "nothing was created");
    // A pichat server database in use.
    let url = server_support::fresh_postgres().await;
    {
        let pg = PgStore::open(&url, &Default::default()).await.unwrap();
        pg.add_token("zoe", None, [9; 32]).await.unwrap();
    }
    let e = migrate(&src, &url, 100, &mut |_: &str| {})
        .await
        .unwrap_err();
    assert!(matches!(e, MigrateError::ForeignTarget { .. }), "{e}");
    assert_eq!(rows(&url, "srv_users").await, 1);
    // Another source's copy.
    let url = server_support::fresh_postgres().await;
    migrate(&src, &url, 100, &mut |_: &str| {}).await.unwrap();
    let other = dir.path().join("other.db");
    source(&other, 10).await;
    let before = rows(&url, "srv_messages").await;
    let e = migrate(&other, &url, 100, &mut |_: &str| {})
        .await
        .unwrap_err();
    assert!(matches!(e, MigrateError::ForeignTarget { .. }), "{e}");
    assert!(e.to_string().contains("another SQLite database"), "{e}");
    assert_eq!(rows(&url, "srv_messages").await, before);
    // An empty pichat schema (a server started on it, no user yet) is fine.
    let url = server_support::fresh_postgres().await;
    drop(PgStore::open(&url, &Default::default()).await.unwrap());
    let r = migrate(&src, &url, 100, &mut |_: &str| {}).await.unwrap();
    assert_eq!(r.messages, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow (100,000 messages): scripts/test.sh runs it"]
async fn a_100000_message_database_migrates() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("server.db");
    let t = Instant::now();
    source(&src, 100_000).await;
    eprintln!("source filled in {:.1} s", t.elapsed().as_secs_f64());
    let url = server_support::fresh_postgres().await;
    let r = migrate(
        &src,
        &url,
        pichat::serverdb::migrate::DEFAULT_BATCH,
        &mut |l: &str| eprintln!("{l}"),
    )
    .await
    .unwrap();
    eprintln!(
        "migrated {} messages in {:.1} s ({:.0}/s)",
        r.messages, r.seconds, r.messages_per_second
    );
    assert_eq!(r.messages, 100_000);
    let (sq, thread) = SqliteStore::open(&src, &OpenOptions::default()).unwrap();
    let pg = PgStore::open(&url, &Default::default()).await.unwrap();
    assert_eq!(view(&sq).await, view(&pg).await);
    let alice = pg.user_id("alice").await.unwrap();
    let hits = pg
        .search(alice, "lisbon", None, 10, everything())
        .await
        .unwrap();
    assert_eq!(hits.len(), 10);
    drop(sq);
    thread.join();
}
