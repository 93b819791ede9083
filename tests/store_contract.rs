//! The server store's contract, the same test on both stores: SQLite (a
//! real file) and PostgreSQL (a real private cluster, `initdb`/`pg_ctl`,
//! started once for this binary). Revisions, idempotent creates,
//! conflicts, tombstones, the sync feed, byte-capped pages, search with
//! highlighted snippets, per-user isolation, sessions, exports, the change
//! feed after commit in rev order, shared rate limits and health.
//!
//! Without PostgreSQL installed these tests fail (run `scripts/deps.sh
//! --test`); `PICHAT_SKIP_POSTGRES=1` runs the SQLite half alone and says so.

mod server_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pichat::serverdb::{
    self, Author, Committed, ConversationUpdate, FeedSink, Location, ServerChange, ServerStore,
    SettingsUpdate, StoreOptions, Stored, UserId, everything,
};
use pichat::store::{NewConversation, NewMessage, Role, StoreError, new_id};

/// A fresh store of each kind, and what must outlive it.
struct Fresh {
    store: Arc<dyn ServerStore>,
    /// PostgreSQL: the database's URL.
    url: Option<String>,
    _dir: tempfile::TempDir,
    _thread: Option<pichat::store::actor::StoreThread>,
}

async fn sqlite() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let at = Location::Sqlite(dir.path().join("server.db"));
    let o = serverdb::open(&at, &StoreOptions::default()).await.unwrap();
    Fresh {
        store: o.store,
        url: None,
        _dir: dir,
        _thread: o.thread,
    }
}

async fn postgres() -> Option<Fresh> {
    if std::env::var("PICHAT_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: the PostgreSQL half (PICHAT_SKIP_POSTGRES=1)");
        return None;
    }
    let url = server_support::fresh_postgres().await;
    let o = serverdb::open(&Location::Postgres(url.clone()), &StoreOptions::default())
        .await
        .unwrap();
    Some(Fresh {
        store: o.store,
        url: Some(url),
        _dir: tempfile::tempdir().unwrap(),
        _thread: None,
    })
}

/// Runs `$body` (with `$s: &dyn ServerStore`) on both stores.
macro_rules! on_both {
    ($name:ident, |$s:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            async fn case($s: &dyn ServerStore) $body
            let f = sqlite().await;
            case(&*f.store).await;
            if let Some(f) = postgres().await {
                case(&*f.store).await;
            }
        }
    };
}

async fn users(s: &dyn ServerStore) -> (UserId, UserId) {
    s.add_token("alice", Some("pi"), [1; 32]).await.unwrap();
    s.add_token("bob", None, [2; 32]).await.unwrap();
    (
        s.user_id("alice").await.unwrap(),
        s.user_id("bob").await.unwrap(),
    )
}

async fn conv(s: &dyn ServerStore, u: UserId, title: &str) -> serverdb::ServerConversation {
    s.create_conversation(
        Author::NOBODY,
        u,
        NewConversation {
            title: Some(title.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .0
}

fn msg(conv: &str, text: &str) -> NewMessage {
    let mut m = NewMessage::new(conv, Role::User, text);
    m.id = Some(new_id());
    m
}

on_both!(tokens_add_find_revoke, |s| {
    let (a, _) = users(s).await;
    let t = s.token_by_hash([1; 32]).await.unwrap().unwrap();
    assert_eq!((t.user_id, t.user.as_str()), (a, "alice"));
    assert_eq!(t.hash, vec![1; 32]);
    assert!(s.token_by_hash([3; 32]).await.unwrap().is_none());
    let list = s.tokens().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].device.as_deref(), Some("pi"));
    assert!(list[0].last_used_at.is_some(), "use is noted");
    let r = s.revoke_token(t.token_id).await.unwrap();
    assert!(r.revoked_at.is_some());
    assert_eq!(
        s.revoke_token(t.token_id).await.unwrap().revoked_at,
        r.revoked_at,
        "revoking twice changes nothing"
    );
    assert!(s.token_by_hash([1; 32]).await.unwrap().is_none());
    assert!(matches!(
        s.revoke_token(99).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.add_token("bad name", None, [4; 32]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(
        s.add_token("carol", None, [2; 32]).await.is_err(),
        "same hash"
    );
    assert!(matches!(
        s.user_id("nobody").await,
        Err(StoreError::NotFound { .. })
    ));
});

on_both!(revs_count_every_change_and_creates_are_idempotent, |s| {
    let (a, b) = users(s).await;
    let c = conv(s, a, "One").await;
    assert_eq!((c.rev, c.created_rev), (1, 1));
    let again = s
        .create_conversation(
            Author::NOBODY,
            a,
            NewConversation {
                id: Some(c.id.clone()),
                title: Some("Other".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(again, (c.clone(), true));
    // Another user cannot take the id, nor see the conversation.
    let e = s
        .create_conversation(
            Author::NOBODY,
            b,
            NewConversation {
                id: Some(c.id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(s.get_conversation(b, &c.id).await.is_err());
    let m = msg(&c.id, "hello");
    let stored = s.add_message(Author::NOBODY, a, m.clone()).await.unwrap();
    assert_eq!(stored.message().rev, 2);
    assert!(matches!(
        s.add_message(Author::NOBODY, a, m.clone()).await.unwrap(),
        Stored::Duplicate(_)
    ));
    let mut changed = m.clone();
    changed.content = "other".into();
    assert!(matches!(
        s.add_message(Author::NOBODY, a, changed).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.add_message(Author::NOBODY, b, msg(&c.id, "intruder"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let rename = ConversationUpdate {
        title: Some("Renamed".into()),
        ..Default::default()
    };
    let (u, changed) = s
        .update_conversation(Author::NOBODY, a, &c.id, rename.clone())
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(
        (u.rev, u.message_count, u.title.as_str()),
        (3, 1, "Renamed")
    );
    let (_, changed) = s
        .update_conversation(Author::NOBODY, a, &c.id, rename)
        .await
        .unwrap();
    assert!(!changed, "no change, no rev");
    assert_eq!(s.user_rev(a).await.unwrap(), 3);
    assert_eq!(s.user_rev(b).await.unwrap(), 0);
    assert!(matches!(
        s.get_conversation(a, "not-a-uuid").await,
        Err(StoreError::NotFound { .. })
    ));
});

on_both!(delete_leaves_a_tombstone_and_removes_messages, |s| {
    let (a, _) = users(s).await;
    let c = conv(s, a, "Doomed").await;
    s.add_message(Author::NOBODY, a, msg(&c.id, "secret words"))
        .await
        .unwrap();
    let hits = s.search(a, "secret", None, 10, everything()).await.unwrap();
    assert_eq!(hits.len(), 1);
    let (rev, again) = s
        .delete_conversation(Author::NOBODY, a, &c.id)
        .await
        .unwrap();
    assert_eq!((rev, again), (3, false));
    assert_eq!(
        s.delete_conversation(Author::NOBODY, a, &c.id)
            .await
            .unwrap(),
        (3, true)
    );
    assert!(s.get_conversation(a, &c.id).await.is_err());
    assert!(
        s.search(a, "secret", None, 10, everything())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        s.add_message(Author::NOBODY, a, msg(&c.id, "late")).await,
        Err(StoreError::NotFound { .. })
    ));
    let e = s
        .create_conversation(
            Author::NOBODY,
            a,
            NewConversation {
                id: Some(c.id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)));
    let page = s.changes(a, 0, 100, everything()).await.unwrap();
    assert_eq!(page.changes.len(), 1);
    assert!(matches!(&page.changes[0], ServerChange::Conversation(c) if c.deleted && c.rev == 3));
});

on_both!(sync_feed_pages_in_rev_order_with_conversations_first, |s| {
    let (a, b) = users(s).await;
    let c1 = conv(s, a, "c1").await; // rev 1
    for i in 0..5 {
        s.add_message(Author::NOBODY, a, msg(&c1.id, &format!("m{i}")))
            .await
            .unwrap(); // revs 2..=6
    }
    // Renaming moves c1 to rev 7, after its messages.
    s.update_conversation(
        Author::NOBODY,
        a,
        &c1.id,
        ConversationUpdate {
            title: Some("renamed".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.update_settings(
        Author::NOBODY,
        a,
        SettingsUpdate {
            selected_model: Some(Some("m".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap(); // rev 8
    conv(s, b, "bob's").await;
    let kinds = |p: &serverdb::ChangePage| -> Vec<(i64, &'static str)> {
        p.changes
            .iter()
            .map(|c| {
                (
                    c.rev(),
                    match c {
                        ServerChange::Conversation(_) => "c",
                        ServerChange::Message(_) => "m",
                        ServerChange::Settings(_) => "s",
                    },
                )
            })
            .collect()
    };
    let p1 = s.changes(a, 0, 3, everything()).await.unwrap();
    assert!(p1.has_more);
    assert_eq!(p1.rev, 4);
    // c1 comes first (at its latest state), then m0, m1, m2.
    assert_eq!(kinds(&p1), vec![(7, "c"), (2, "m"), (3, "m"), (4, "m")]);
    let p2 = s.changes(a, p1.rev, 3, everything()).await.unwrap();
    assert_eq!(kinds(&p2), vec![(5, "m"), (6, "m"), (7, "c")]);
    let p3 = s.changes(a, p2.rev, 3, everything()).await.unwrap();
    assert_eq!(kinds(&p3), vec![(8, "s")]);
    assert!(!p3.has_more);
    let p4 = s.changes(a, p3.rev, 3, everything()).await.unwrap();
    assert!(p4.changes.is_empty() && !p4.has_more);
    assert_eq!(p4.rev, 8);
    // Bob sees only his own.
    let pb = s.changes(b, 0, 100, everything()).await.unwrap();
    assert_eq!(pb.changes.len(), 1);
});

on_both!(pages_stop_where_fits_says_and_the_first_always_goes, |s| {
    let (a, _) = users(s).await;
    let c = conv(s, a, "big").await;
    let batch: Vec<NewMessage> = (0..30)
        .map(|i| msg(&c.id, &format!("message {i}")))
        .collect();
    s.append_messages(Author::NOBODY, a, batch).await.unwrap();
    // A budget of 10 records: the page ends there, with has_more.
    let mut n = 0;
    let page = s
        .changes(
            a,
            0,
            1000,
            Box::new(move |_| {
                n += 1;
                n <= 10
            }),
        )
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 10);
    assert!(page.has_more);
    // A budget that takes nothing still sends the first record.
    let page = s.changes(a, 0, 1000, Box::new(|_| false)).await.unwrap();
    assert_eq!(page.changes.len(), 1);
    let (list, more) = s
        .messages(a, &c.id, 100, None, Box::new(|_| false))
        .await
        .unwrap();
    assert_eq!(
        (list.len(), more, list[0].content.as_str()),
        (1, true, "message 29")
    );
    let mut k = 0;
    let (list, more) = s
        .messages(
            a,
            &c.id,
            100,
            None,
            Box::new(move |_| {
                k += 1;
                k <= 25
            }),
        )
        .await
        .unwrap();
    assert_eq!((list.len(), more), (25, true));
    assert_eq!(list.last().unwrap().content, "message 29", "newest last");
    let hits = s
        .search(a, "message", None, 100, Box::new(|_| false))
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
});

on_both!(append_reports_each_message_and_pages_go_back, |s| {
    let (a, b) = users(s).await;
    let c = conv(s, a, "c").await;
    let cb = conv(s, b, "cb").await;
    let first = msg(&c.id, "one");
    s.add_message(Author::NOBODY, a, first.clone())
        .await
        .unwrap();
    let mut bad = msg(&c.id, "x");
    bad.content = " ".into();
    let batch = vec![
        first.clone(),
        msg(&c.id, "two"),
        msg(&cb.id, "not yours"),
        bad,
        msg(&c.id, "three"),
    ];
    let out = s.append_messages(Author::NOBODY, a, batch).await.unwrap();
    assert_eq!(out.stored.len(), 2);
    assert_eq!(out.duplicates, vec![first.id.clone().unwrap()]);
    assert_eq!(out.rejected.len(), 2);
    assert!(matches!(out.rejected[0].1, StoreError::NotFound { .. }));
    assert!(matches!(out.rejected[1].1, StoreError::Invalid(_)));
    assert_eq!(out.rev, 4);
    let (list, more) = s.messages(a, &c.id, 10, None, everything()).await.unwrap();
    assert_eq!(
        list.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        vec!["one", "two", "three"]
    );
    assert!(!more);
    let (older, more) = s
        .messages(a, &c.id, 1, Some(list[2].id.clone()), everything())
        .await
        .unwrap();
    assert_eq!(older[0].content, "two");
    assert!(more);
    // The conversation's counters follow its messages.
    let got = s.get_conversation(a, &c.id).await.unwrap();
    assert_eq!(got.message_count, 3);
    assert_eq!(got.origins, vec![pichat::store::Origin::Voice]);
    assert!(got.last_message_at.is_some());
    // Lists: newest activity first, pages by `before`, archived hidden.
    let c2 = conv(s, a, "second").await;
    s.update_conversation(
        Author::NOBODY,
        a,
        &c2.id,
        ConversationUpdate {
            archived: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (shown, _) = s.list_conversations(a, false, 10, None).await.unwrap();
    assert_eq!(shown.len(), 1);
    let (all, more) = s.list_conversations(a, true, 1, None).await.unwrap();
    assert_eq!((all.len(), more), (1, true));
    let (rest, more) = s
        .list_conversations(a, true, 10, Some(all[0].id.clone()))
        .await
        .unwrap();
    assert_eq!((rest.len(), more), (1, false));
    assert_ne!(rest[0].id, all[0].id);
    assert!(matches!(
        s.list_conversations(b, true, 10, Some(c.id.clone())).await,
        Err(StoreError::NotFound { .. })
    ));
});

on_both!(search_highlights_and_stays_within_the_user, |s| {
    let (a, b) = users(s).await;
    let c = conv(s, a, "Trip").await;
    let other = conv(s, a, "Other").await;
    s.add_message(
        Author::NOBODY,
        a,
        msg(
            &c.id,
            "We should visit Lisbon in the spring, when it is warm",
        ),
    )
    .await
    .unwrap();
    s.add_message(Author::NOBODY, a, msg(&other.id, "Lisbon again"))
        .await
        .unwrap();
    let cb = conv(s, b, "Bob").await;
    s.add_message(Author::NOBODY, b, msg(&cb.id, "Lisbon is bob's"))
        .await
        .unwrap();
    let hits = s.search(a, "lisbon", None, 10, everything()).await.unwrap();
    assert_eq!(hits.len(), 2, "{hits:?}");
    for h in &hits {
        assert!(h.snippet.contains("[Lisbon]"), "{}", h.snippet);
    }
    let hits = s
        .search(a, "lisbon spring", Some(c.id.clone()), 10, everything())
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].conversation_title, "Trip");
    assert!(hits[0].snippet.contains("[spring]"), "{}", hits[0].snippet);
    assert!(matches!(
        s.search(a, "  ", None, 10, everything()).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.search(a, "lisbon", Some(cb.id.clone()), 10, everything())
            .await,
        Err(StoreError::NotFound { .. })
    ));
});

on_both!(replies_context_and_settings, |s| {
    let (a, _) = users(s).await;
    let c = conv(s, a, "c").await;
    let q = s
        .add_message(Author::NOBODY, a, msg(&c.id, "question"))
        .await
        .unwrap()
        .message()
        .clone();
    assert!(
        s.find_message(a, &q.id)
            .await
            .unwrap()
            .unwrap()
            .reply
            .is_none()
    );
    // Another user's message claiming to answer it is not its reply.
    s.add_token("mallory", None, [9; 32]).await.unwrap();
    let m = s.user_id("mallory").await.unwrap();
    let mc = conv(s, m, "m").await;
    let mut fake = NewMessage::new(&mc.id, Role::Assistant, "injected");
    fake.reply_to = Some(q.id.clone());
    s.add_message(Author::NOBODY, m, fake).await.unwrap();
    assert!(
        s.find_message(a, &q.id)
            .await
            .unwrap()
            .unwrap()
            .reply
            .is_none()
    );
    assert!(matches!(
        s.find_message(m, &q.id).await,
        Err(StoreError::Conflict(_))
    ));
    let mut r = NewMessage::new(&c.id, Role::Assistant, "answer");
    r.reply_to = Some(q.id.clone());
    s.add_message(Author::NOBODY, a, r).await.unwrap();
    let found = s.find_message(a, &q.id).await.unwrap().unwrap();
    assert_eq!(found.reply.unwrap().content, "answer");
    let ctx = s
        .reply_context(a, &c.id, &q.id, "Be brief.", 1000)
        .await
        .unwrap();
    assert_eq!(
        ctx.messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        vec!["Be brief.", "question"],
        "the context stops at the question"
    );
    assert_eq!(ctx.model, None);
    let (st, changed) = s
        .update_settings(
            Author::NOBODY,
            a,
            SettingsUpdate {
                assistant_personality: Some(Some("pirate".into())),
                voice_speed: Some(Some(1.5)),
                selected_model: Some(Some("big".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(st.assistant_personality.as_deref(), Some("pirate"));
    let ctx = s
        .reply_context(a, &c.id, &q.id, "Be brief.", 1000)
        .await
        .unwrap();
    assert_eq!(ctx.messages[0].content, "pirate");
    assert_eq!(ctx.model.as_deref(), Some("big"));
    let (st2, changed) = s
        .update_settings(
            Author::NOBODY,
            a,
            SettingsUpdate {
                voice_speed: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(st2.voice_speed, None);
    assert_eq!(st2.assistant_personality.as_deref(), Some("pirate"));
    assert_eq!(s.settings(a).await.unwrap(), st2);
    let (_, changed) = s
        .update_settings(
            Author::NOBODY,
            a,
            SettingsUpdate {
                voice_speed: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!changed, "no change, no rev");
});

on_both!(sessions_expire_die_with_their_token_and_are_limited, |s| {
    let t = s
        .add_token("alice", Some("browser"), [7; 32])
        .await
        .unwrap();
    let uid = s.user_id("alice").await.unwrap();
    s.create_session(t.id, [1; 32], 1000, 2000).await.unwrap();
    let (who, exp) = s.session([1; 32], 1999).await.unwrap().unwrap();
    assert_eq!((who.user_id, who.token_id, exp), (uid, t.id, 2000));
    assert!(s.session([1; 32], 2000).await.unwrap().is_none());
    assert!(s.session([2; 32], 1500).await.unwrap().is_none());
    for i in 0..=serverdb::MAX_SESSIONS_PER_TOKEN as u8 {
        s.create_session(t.id, [i + 10; 32], 1000 + i64::from(i), 99_999)
            .await
            .unwrap();
    }
    assert!(
        s.session([10; 32], 5000).await.unwrap().is_none(),
        "the oldest went"
    );
    assert!(s.session([11; 32], 5000).await.unwrap().is_some());
    s.delete_session([11; 32]).await.unwrap();
    assert!(s.session([11; 32], 5000).await.unwrap().is_none());
    s.delete_session([11; 32]).await.unwrap();
    s.revoke_token(t.id).await.unwrap();
    assert!(s.session([12; 32], 5000).await.unwrap().is_none());
});

on_both!(exports_are_the_users_own, |s| {
    let (a, b) = users(s).await;
    let c = conv(s, a, "Trip").await;
    for (i, text) in ["first", "second"].iter().enumerate() {
        let mut m = msg(&c.id, text);
        m.created_at = Some(1000 + i as i64);
        s.add_message(Author::NOBODY, a, m).await.unwrap();
    }
    let cb = conv(s, b, "bob's").await;
    assert_eq!(s.export_ids(a, None).await.unwrap(), vec![c.id.clone()]);
    assert!(matches!(
        s.export_ids(a, Some(cb.id.clone())).await,
        Err(StoreError::NotFound { .. })
    ));
    let ec = s.export_conversation(a, &c.id).await.unwrap().unwrap();
    let texts: Vec<_> = ec.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["first", "second"]);
    assert_eq!(ec.conversation.title, "Trip");
    assert!(s.export_conversation(a, &cb.id).await.unwrap().is_none());
});

/// A feed sink that records what it is given.
#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<Committed>>,
}

impl FeedSink for Recorder {
    fn watching(&self, _user: UserId) -> bool {
        true
    }
    fn deliver(&self, c: Committed) {
        self.got.lock().unwrap().push(c);
    }
}

on_both!(
    committed_changes_reach_the_feed_in_rev_order_and_failed_ones_never,
    |s| {
        let rec = Arc::new(Recorder::default());
        s.subscribe(rec.clone());
        let (a, _) = users(s).await;
        let c = conv(s, a, "fed").await;
        // Concurrent writers of one user: every rev once, in order.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let m = msg(&c.id, &format!("n{i}"));
            tasks.push(s.add_message(Author(7), a, m));
        }
        for r in futures_util::future::join_all(tasks).await {
            r.unwrap();
        }
        // A failed write (not found) changes nothing and says nothing.
        assert!(
            s.add_message(Author(7), a, msg(&new_id(), "nowhere"))
                .await
                .is_err()
        );
        s.delete_conversation(Author(8), a, &c.id).await.unwrap();
        let want = 42;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n: usize = rec
                .got
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.changes.len())
                .sum();
            if n >= want || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = rec.got.lock().unwrap().clone();
        let revs: Vec<i64> = got
            .iter()
            .flat_map(|c| c.changes.iter().map(ServerChange::rev))
            .collect();
        assert_eq!(
            revs,
            (1..=42).collect::<Vec<_>>(),
            "every rev once, in order"
        );
        assert!(got.iter().all(|c| c.user == a));
        assert_eq!(got[0].by, Author::NOBODY);
        assert_eq!(got[1].by, Author(7));
        let last = got.last().unwrap();
        assert_eq!(last.by, Author(8));
        assert!(matches!(&last.changes[0], ServerChange::Conversation(c) if c.deleted));
        assert_eq!(s.user_rev(a).await.unwrap(), 42);
    }
);

on_both!(health_and_maintenance_report_the_store, |s| {
    let (a, _) = users(s).await;
    conv(s, a, "x").await;
    let h = s.health().await;
    assert!(h.ok, "{h:?}");
    assert_eq!(h.kind, s.kind());
    assert!(h.bytes > 0, "{h:?}");
    let line = s.maintain().await.unwrap();
    assert!(line.starts_with(s.kind()), "{line}");
    assert!(s.health().await.last_maintenance.is_some());
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_on_postgres_and_the_servers_own_on_sqlite() {
    let f = sqlite().await;
    let (a, _) = users(&*f.store).await;
    assert_eq!(
        f.store.take_shared(a, "send_message", 2).await.unwrap(),
        None
    );
    let Some(f) = postgres().await else { return };
    let (a, b) = users(&*f.store).await;
    // Two stores on one database, as two servers: one bucket.
    let other = serverdb::open(
        &Location::Postgres(f.url.clone().unwrap()),
        &StoreOptions::default(),
    )
    .await
    .unwrap()
    .store;
    let s = &f.store;
    assert_eq!(
        s.take_shared(a, "send_message", 2).await.unwrap(),
        Some(Ok(()))
    );
    assert_eq!(
        other.take_shared(a, "send_message", 2).await.unwrap(),
        Some(Ok(()))
    );
    let wait = s
        .take_shared(a, "send_message", 2)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert_eq!(
        s.take_shared(a, "text_to_speech", 2).await.unwrap(),
        Some(Ok(())),
        "another action's bucket"
    );
    assert_eq!(
        s.take_shared(b, "send_message", 2).await.unwrap(),
        Some(Ok(())),
        "another user's bucket"
    );
}

on_both!(
    messages_of_an_empty_a_deleted_and_another_users_conversation,
    |s| {
        let (a, b) = users(s).await;
        let empty = conv(s, a, "empty").await;
        let theirs = conv(s, b, "bob's").await;
        s.append_messages(Author::NOBODY, b, vec![msg(&theirs.id, "private")])
            .await
            .unwrap();
        let gone = conv(s, a, "gone").await;
        s.append_messages(Author::NOBODY, a, vec![msg(&gone.id, "soon deleted")])
            .await
            .unwrap();
        s.delete_conversation(Author::NOBODY, a, &gone.id)
            .await
            .unwrap();
        // The latest page (one statement on PostgreSQL) and a page of more than
        // one chunk (a snapshot of several queries) say the same.
        for limit in [100, 500] {
            let (list, more) = s
                .messages(a, &empty.id, limit, None, everything())
                .await
                .unwrap();
            assert!(list.is_empty() && !more, "{limit}");
            for id in [&theirs.id, &gone.id] {
                let e = s
                    .messages(a, id, limit, None, everything())
                    .await
                    .unwrap_err();
                assert!(matches!(e, StoreError::NotFound { .. }), "{limit}: {e:?}");
            }
            let unknown = new_id();
            let e = s
                .messages(a, &unknown, limit, None, everything())
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::NotFound { .. }), "{e:?}");
        }
        // Exactly a page, and one more than a page, of the owner's.
        let full = conv(s, a, "full").await;
        let batch: Vec<_> = (0..101).map(|i| msg(&full.id, &format!("m{i}"))).collect();
        s.append_messages(Author::NOBODY, a, batch).await.unwrap();
        let (list, more) = s
            .messages(a, &full.id, 100, None, everything())
            .await
            .unwrap();
        assert_eq!((list.len(), more), (100, true));
        assert_eq!(
            (list[0].content.as_str(), list[99].content.as_str()),
            ("m1", "m100")
        );
        let (list, more) = s
            .messages(a, &full.id, 101, None, everything())
            .await
            .unwrap();
        assert_eq!(
            (list.len(), more, list[0].content.as_str()),
            (101, false, "m0")
        );
    }
);
