//! Files made by the pichat of before the split (schema version 3, one
//! schema for both kinds: `tests/data/legacy/`, made by that binary — a
//! device's history that synced with a server, renamed, archived and
//! deleted conversations; that server's database with two users, their
//! tokens, settings, a tombstone) open with today's binary, migrate in
//! place to their own kind's schema and keep every row; each kind refuses
//! the other's file unchanged; the server file copies into PostgreSQL.

mod server_support;

use std::path::{Path, PathBuf};

use pichat::history::Store;
use pichat::serverdb::sqlite::Conn;
use pichat::serverdb::{ServerChange, ServerStore, everything};
use pichat::store::{OpenOptions, StoreError};

/// The legacy alice token (test data).
const ALICE_TOKEN: &str = "pct_vrTvnVorMBryhhlLNNTM6ao4bNHMIAolHRthZ77-c7c";

fn legacy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join(name);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/legacy")
            .join(name),
        &to,
    )
    .unwrap();
    (dir, to)
}

/// Rows of a table, read with plain SQLite (no pichat code).
fn count(path: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn the_device_file_migrates_and_keeps_every_row() {
    let (_dir, path) = legacy("device-v3.db");
    let s = Store::open(&path, &OpenOptions::default()).unwrap();
    assert_eq!(
        s.schema_version().unwrap(),
        pichat::history::schema::VERSION
    );
    assert_eq!(s.integrity_check().unwrap(), "ok");
    let tables = s.tables().unwrap();
    assert!(
        tables.iter().all(|t| !t.starts_with("srv_")),
        "the server's tables are gone: {tables:?}"
    );
    // Every conversation, message, tombstone and sync state is there.
    let all = s
        .list_conversations(&pichat::history::ListQuery {
            filter: pichat::history::ArchivedFilter::All,
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .conversations;
    let mut titles: Vec<&str> = all.iter().map(|c| c.title.as_str()).collect();
    titles.sort();
    assert_eq!(
        titles,
        [
            "Archived one",
            "Jokes (renamed on the web)",
            "Long talk",
            "Weather (local rename)"
        ]
    );
    let stats = s.stats(None).unwrap();
    assert_eq!(stats.messages, 32);
    assert_eq!(s.sync_cursor().unwrap(), 55);
    assert_eq!(
        s.client_id().unwrap(),
        "01a23376-7112-76ed-9e5b-64660190d71c"
    );
    let out = s.outbox(1000, 1 << 20).unwrap();
    assert_eq!(
        (
            out.conversations.len(),
            out.deleted.len(),
            out.messages.len()
        ),
        (2, 1, 0),
        "what waited to be pushed still does"
    );
    let hits = s.search("capitale", None, 10).unwrap();
    assert!(!hits.is_empty(), "the full-text index came along");
    drop(s);
    // Opened again: nothing to do, the same.
    let s = Store::open(&path, &OpenOptions::default()).unwrap();
    assert_eq!(s.stats(None).unwrap().messages, 32);
    drop(s);
    // Now a history: a server refuses it.
    let before = std::fs::read(&path).unwrap();
    let e = Conn::open(&path, &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::WrongKind {
                found: "history",
                expected: "server",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "unchanged");
    for (table, n) in [
        ("conversations", 4),
        ("messages", 32),
        ("tombstones", 2),
        ("sync_state", 5),
    ] {
        assert_eq!(count(&path, table), n, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_file_migrates_and_keeps_every_row() {
    let (_dir, path) = legacy("server-v3.db");
    {
        let c = Conn::open(&path, &OpenOptions::default()).unwrap();
        assert_eq!(c.integrity_check().unwrap(), "ok");
        let tables = c.tables().unwrap();
        for gone in ["conversations", "messages", "tombstones", "sync_state"] {
            assert!(!tables.iter().any(|t| t == gone), "{gone}: {tables:?}");
        }
    }
    for (table, n) in [
        ("srv_users", 2),
        ("srv_tokens", 2),
        ("srv_settings", 1),
        ("srv_conversations", 6),
        ("srv_messages", 40),
    ] {
        assert_eq!(count(&path, table), n, "{table}");
    }
    let (store, thread) =
        pichat::serverdb::sqlite::SqliteStore::open(&path, &OpenOptions::default()).unwrap();
    check_server_rows(&store).await;
    drop(store);
    thread.join();
}

/// Every row of the legacy server file, as the store gives them.
async fn check_server_rows(s: &dyn ServerStore) {
    let tokens = s.tokens().await.unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0].user, "alice");
    assert_eq!(tokens[0].device.as_deref(), Some("kitchen-pi"));
    let who = s
        .token_by_hash(pichat::server::auth::hash_token(ALICE_TOKEN))
        .await
        .unwrap()
        .expect("alice's token still works");
    let alice = who.user_id;
    assert_eq!(s.user_rev(alice).await.unwrap(), 55);
    let bob = s.user_id("bob").await.unwrap();
    assert_eq!(s.user_rev(bob).await.unwrap(), 0);
    let settings = s.settings(alice).await.unwrap();
    assert_eq!(
        (
            settings.selected_model.as_deref(),
            settings.voice_speed,
            settings.rev
        ),
        (Some("llama-3.2-1b"), Some(1.25), 53)
    );
    // The whole feed: 6 conversations (one a tombstone), 40 messages,
    // the settings, each once, in rev order.
    let mut since = 0;
    let (mut convs, mut msgs, mut sets, mut revs) = (0, 0, 0, Vec::new());
    loop {
        let p = s.changes(alice, since, 7, everything()).await.unwrap();
        for ch in &p.changes {
            match ch {
                ServerChange::Conversation(_) => convs += 1,
                ServerChange::Message(_) => msgs += 1,
                ServerChange::Settings(_) => sets += 1,
            }
            revs.push(ch.rev());
        }
        since = p.rev;
        if !p.has_more {
            break;
        }
    }
    assert_eq!((msgs, sets), (40, 1));
    assert!(convs >= 6);
    assert_eq!(since, 55);
    let (list, _) = s.list_conversations(alice, true, 100, None).await.unwrap();
    assert_eq!(list.len(), 5, "live conversations");
    let jokes = list
        .iter()
        .find(|c| c.title == "Jokes (renamed on the web)")
        .unwrap();
    assert_eq!((jokes.rev, jokes.message_count), (54, 7));
    let (page, _) = s
        .messages(alice, &jokes.id, 100, None, everything())
        .await
        .unwrap();
    assert_eq!(page.len(), 7);
    let hits = s
        .search(alice, "capitale", None, 10, everything())
        .await
        .unwrap();
    assert!(!hits.is_empty(), "the full-text index came along");
}

#[test]
fn each_kind_refuses_the_others_legacy_file_unchanged() {
    let (_d1, device) = legacy("device-v3.db");
    let before = std::fs::read(&device).unwrap();
    let e = Conn::open(&device, &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::WrongKind {
                found: "history",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(std::fs::read(&device).unwrap(), before);
    let (_d2, server) = legacy("server-v3.db");
    let before = std::fs::read(&server).unwrap();
    let e = Store::open(&server, &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::WrongKind {
                found: "server",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("history.path"), "{e}");
    assert_eq!(std::fs::read(&server).unwrap(), before);
}

#[test]
fn a_fresh_file_has_the_schema_a_migrated_one_has() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = Store::open(&dir.path().join("h.db"), &OpenOptions::default()).unwrap();
    let (_d, old) = legacy("device-v3.db");
    let migrated = Store::open(&old, &OpenOptions::default()).unwrap();
    assert_eq!(fresh.tables().unwrap(), migrated.tables().unwrap());
    let fresh = Conn::open(&dir.path().join("s.db"), &OpenOptions::default()).unwrap();
    let (_d, old) = legacy("server-v3.db");
    let migrated = Conn::open(&old, &OpenOptions::default()).unwrap();
    assert_eq!(fresh.tables().unwrap(), migrated.tables().unwrap());
}

#[test]
fn another_programs_sqlite_file_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.db");
    {
        let c = rusqlite::Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    for e in [
        Store::open(&foreign, &OpenOptions::default()).unwrap_err(),
        Conn::open(&foreign, &OpenOptions::default()).unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::NotADatabase { .. }), "{e}");
    }
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_server_file_copies_into_postgres() {
    if std::env::var("PICHAT_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: PostgreSQL (PICHAT_SKIP_POSTGRES=1)");
        return;
    }
    let (_dir, path) = legacy("server-v3.db");
    let url = server_support::fresh_postgres().await;
    let r = pichat::serverdb::migrate::migrate(&path, &url, 7, &mut |_: &str| {})
        .await
        .unwrap();
    assert_eq!(
        (r.users, r.tokens, r.settings, r.conversations, r.messages),
        (2, 2, 1, 6, 40)
    );
    let store = pichat::serverdb::postgres::PgStore::open(&url, &Default::default())
        .await
        .unwrap();
    check_server_rows(&store).await;
}
