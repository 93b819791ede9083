//! The store's parts of `pichat bench server`: lists under load (8) and
//! the migration from SQLite to PostgreSQL (9).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::server::{Args, Ws, hello, in_process, make_token, request};
use super::stores::{StoreKind, Stores};
use super::{Percentiles, ms};
use crate::serverdb::{Author, Location, ServerStore, sqlite::SqliteStore};
use crate::store::{NewConversation, NewMessage, OpenOptions, Role};

/// Conversations and messages of the `lists` user.
const LIST_CONVERSATIONS: usize = 200;
const LIST_MESSAGES: usize = 50;

/// Fills `user`'s history through the store: `convs` conversations of `per` messages.
async fn fill(
    store: &dyn ServerStore,
    user: i64,
    convs: usize,
    per: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(convs);
    let mut batch = Vec::with_capacity(500);
    for c in 0..convs {
        let (conv, _) = store
            .create_conversation(Author::NOBODY, user, NewConversation::default())
            .await?;
        for i in 0..per {
            let mut m = NewMessage::new(
                &conv.id,
                if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                format!("message {i} of conversation {c}: the weather tomorrow in the garden"),
            );
            m.id = Some(crate::store::new_id());
            batch.push(m);
            if batch.len() == 500 {
                store
                    .append_messages(Author::NOBODY, user, std::mem::take(&mut batch))
                    .await?;
            }
        }
        ids.push(conv.id);
    }
    if !batch.is_empty() {
        store.append_messages(Author::NOBODY, user, batch).await?;
    }
    Ok(ids)
}

/// Part 8: `get_conversations` and `get_messages` p50/p99 while as many
/// clients append messages.
pub(super) async fn lists(a: &Args, st: &Stores) -> anyhow::Result<()> {
    let k = a.list_clients.max(1);
    println!(
        "\n8. lists under load: {k} clients reading get_conversations (20) then get_messages (100) while {k} append, {} s ({})",
        a.list_seconds,
        st.name()
    );
    let db = st.fresh("lists").await?;
    let token = make_token(&db, "lists").await?;
    let convs = {
        let (store, thread) = super::stores::open(&db).await?;
        let user = store.user_id("lists").await?;
        let convs = fill(&*store, user, LIST_CONVERSATIONS, LIST_MESSAGES).await?;
        drop(store);
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join()).await?;
        }
        convs
    };
    let srv = in_process(&db).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(a.list_seconds.max(1));
    let mut readers = Vec::new();
    for r in 0..k {
        let mut ws: Ws = super::server::connect(srv.addr, &token).await?;
        hello(&mut ws).await?;
        let convs = convs.clone();
        readers.push(tokio::spawn(async move {
            let (mut lists, mut pages) = (Vec::new(), Vec::new());
            let mut i = 0usize;
            while Instant::now() < until {
                let t = Instant::now();
                request(
                    &mut ws,
                    &format!("l{i}"),
                    "get_conversations",
                    json!({"limit": 20}),
                )
                .await?;
                lists.push(t.elapsed());
                let conv = &convs[(r * 31 + i * 17) % convs.len()];
                let t = Instant::now();
                request(
                    &mut ws,
                    &format!("m{i}"),
                    "get_messages",
                    json!({"conversation_id": conv, "limit": 100}),
                )
                .await?;
                pages.push(t.elapsed());
                i += 1;
            }
            Ok::<_, anyhow::Error>((lists, pages))
        }));
    }
    let mut writers = Vec::new();
    for w in 0..k {
        let mut ws: Ws = super::server::connect(srv.addr, &token).await?;
        hello(&mut ws).await?;
        let (convs, stop) = (convs.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let conv = &convs[(w * 13 + n * 7) % convs.len()];
                request(
                    &mut ws,
                    &format!("a{n}"),
                    "append_messages",
                    json!({"messages": [{"id": uuid::Uuid::now_v7(), "conversation_id": conv, "role": "user", "content": format!("written under load {n}")}]}),
                )
                .await?;
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let (mut lists, mut pages) = (Vec::new(), Vec::new());
    for r in readers {
        let (l, p) = r.await??;
        lists.extend(l);
        pages.extend(p);
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await??;
    }
    let secs = a.list_seconds.max(1) as f64;
    let (nl, np) = (lists.len(), pages.len());
    let (l, p) = (Percentiles::new(lists), Percentiles::new(pages));
    println!(
        "   get_conversations: p50 {}, p99 {} ({nl} in all, {:.0}/s)",
        ms(l.p(50.0)),
        ms(l.p(99.0)),
        nl as f64 / secs
    );
    println!(
        "   get_messages:      p50 {}, p99 {} ({np} in all, {:.0}/s)",
        ms(p.p(50.0)),
        ms(p.p(99.0)),
        np as f64 / secs
    );
    println!(
        "   appends meanwhile: {written} ({:.0}/s)",
        written as f64 / secs
    );
    srv.stop().await;
    Ok(())
}

/// Part 9: a SQLite store of `--sync-messages` messages copied into
/// PostgreSQL, then the same migration again (resumed: nothing to copy).
pub(super) async fn migrate(a: &Args, dir: &Path, st: &Stores) -> anyhow::Result<()> {
    anyhow::ensure!(
        st.kind == StoreKind::Postgres,
        "the migration part needs --store postgres"
    );
    let n = a.sync_messages;
    println!("\n9. migration: a SQLite store of {n} messages into PostgreSQL");
    let path = dir.join("migrate-source.db");
    let _ = std::fs::remove_file(&path);
    {
        let (store, thread) = SqliteStore::open(&path, &OpenOptions::default())?;
        crate::server::auth::issue_token(&store, "migrated", Some("bench")).await?;
        let user = store.user_id("migrated").await?;
        let t = Instant::now();
        fill(&store, user, n.div_ceil(100), 100.min(n.max(1))).await?;
        println!(
            "   source filled in {:.1} s ({} bytes)",
            t.elapsed().as_secs_f64(),
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        );
        drop(store);
        tokio::task::spawn_blocking(move || thread.join()).await?;
    }
    let Location::Postgres(url) = st.fresh("migrate").await? else {
        anyhow::bail!("not a PostgreSQL location");
    };
    let r = crate::serverdb::migrate::migrate(
        &path,
        &url,
        crate::serverdb::migrate::DEFAULT_BATCH,
        &mut |_: &str| {},
    )
    .await?;
    println!(
        "   migrated and verified: {} messages in {:.2} s = {:.0} messages/s",
        r.messages, r.seconds, r.messages_per_second
    );
    let again = crate::serverdb::migrate::migrate(
        &path,
        &url,
        crate::serverdb::migrate::DEFAULT_BATCH,
        &mut |_: &str| {},
    )
    .await?;
    println!(
        "   run again (resumed): {} copied, verified in {:.2} s",
        again.messages_copied, again.seconds
    );
    Ok(())
}
