//! `pichat bench sync`: the daemon's sync against the real server in-process
//! on loopback: a new device catching up on a large history, pushing the
//! turns queued during an outage, and the time from a message stored on one
//! device to stored on another — on the store of `--store`, and with
//! `--servers 2` (PostgreSQL) the two devices on different servers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::stores::{StoreKind, Stores};
use super::{Percentiles, ms};
use crate::config::{SecretSource, SyncConfig};
use crate::engines::Engines;
use crate::history::{HistoryHandle, NewConversation, NewMessage, OpenOptions, Role};
use crate::store::actor::StoreThread;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages a new device catches up on
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Turns (2 messages each) queued during an outage
    #[arg(long, default_value_t = 10_000)]
    turns: usize,
    /// Messages timed from one device to another
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// The store the server runs on
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// With --store postgres: a PostgreSQL server to make the bench's database on
    /// [default: a private cluster made for the run]
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Servers on the store; with 2, the timed devices are on different servers
    /// (needs --store postgres)
    #[arg(long, default_value_t = 1)]
    servers: usize,
}

/// An in-process server on `db`.
async fn server_on(
    db: &crate::serverdb::Location,
) -> anyhow::Result<(String, CancellationToken, tokio::task::JoinHandle<()>)> {
    let (store, thread) = super::stores::open(db).await?;
    let listener = crate::server::bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let no_engines = Engines {
        stt: vec![],
        llm: vec![],
        tts: vec![],
    };
    let task = tokio::spawn(crate::server::run(
        listener,
        store,
        no_engines,
        Default::default(),
        shutdown.clone(),
    ));
    let done = tokio::spawn(async move {
        let _ = task.await;
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    });
    Ok((format!("ws://{addr}/ws"), shutdown, done))
}

struct Device {
    h: HistoryHandle,
    _t: StoreThread,
    cfg: SyncConfig,
}

fn device(dir: &Path, name: &str, url: &str, token: &str) -> anyhow::Result<Device> {
    let tf = dir.join(format!("{name}.token"));
    std::fs::write(&tf, token)?;
    let (h, t) = HistoryHandle::open(&dir.join(format!("{name}.db")), &OpenOptions::default())?;
    Ok(Device {
        h,
        _t: t,
        cfg: SyncConfig {
            url: Some(url.parse()?),
            token: SecretSource::File(tf),
            ca_file: None,
            keepalive: Duration::from_secs(25),
        },
    })
}

/// Stores `turns` voice turns, ten per conversation.
async fn queue_turns(d: &Device, turns: usize) -> anyhow::Result<()> {
    d.h.call(move |s| {
        let mut conv = String::new();
        for i in 0..turns {
            if i % 10 == 0 {
                conv = s
                    .create_conversation(NewConversation {
                        title: Some(format!("outage {i}")),
                        ..Default::default()
                    })?
                    .id;
            }
            let mut q = NewMessage::new(
                &conv,
                Role::User,
                format!("question {i} about the weather and the time"),
            );
            q.is_audio = true;
            let q = s.append_message(q)?;
            let mut a = NewMessage::new(
                &conv,
                Role::Assistant,
                format!("answer {i}: it is sunny and ten past four"),
            );
            a.reply_to = Some(q.id);
            s.append_message(a)?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::engines::init_tls();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    anyhow::ensure!(
        a.servers <= 1 || a.store == StoreKind::Postgres,
        "--servers {}: several servers share a database only with --store postgres",
        a.servers
    );
    let dir = tempfile::tempdir()?;
    let stores = Stores::new(a.store, dir.path(), a.postgres.clone())?;
    println!(
        "pichat bench sync (store: {}, {} server(s))",
        stores.name(),
        a.servers.max(1)
    );
    rt.block_on(async {
        let db = stores.fresh("sync").await?;
        let (url, shutdown, server) = server_on(&db).await?;
        let second = if a.servers > 1 {
            Some(server_on(&db).await?)
        } else {
            None
        };
        let other_url = second.as_ref().map_or(url.clone(), |s| s.0.clone());
        let token = |user: &'static str| {
            let db = db.clone();
            async move { super::stores::token(&db, user).await }
        };

        // 1. Pushing the turns queued during an outage.
        let a1 = device(dir.path(), "a", &url, &token("alice").await?)?;
        queue_turns(&a1, a.turns).await?;
        let t = Instant::now();
        let r = crate::sync::once(&a1.cfg, &a1.h).await?;
        let took = t.elapsed();
        anyhow::ensure!(
            r.pushed_messages == a.turns * 2,
            "pushed {}",
            r.pushed_messages
        );
        println!(
            "{:<38} {:.2} s  ({} turns = {} messages, {:.0} messages/s)",
            "push turns queued in an outage",
            took.as_secs_f64(),
            a.turns,
            a.turns * 2,
            (a.turns * 2) as f64 / took.as_secs_f64()
        );

        // 2. A new device catching up on the history.
        let more = a.messages.saturating_sub(a.turns * 2) / 2;
        queue_turns(&a1, more).await?;
        crate::sync::once(&a1.cfg, &a1.h).await?;
        let fresh = device(dir.path(), "fresh", &url, &token("alice").await?)?;
        let t = Instant::now();
        let r = crate::sync::once(&fresh.cfg, &fresh.h).await?;
        let took = t.elapsed();
        let n = fresh.h.call(|s| s.stats(None)).await?.messages;
        println!(
            "{:<38} {:.2} s  ({} messages, {} changes, {:.0} messages/s)",
            "new device catches up",
            took.as_secs_f64(),
            n,
            r.pulled,
            n as f64 / took.as_secs_f64()
        );

        // 3. Stored on one device -> stored on another, both live.
        let b = device(dir.path(), "b", &url, &token("alice").await?)?;
        let c = device(dir.path(), "c", &other_url, &token("alice").await?)?;
        crate::sync::once(&b.cfg, &b.h).await?;
        crate::sync::once(&c.cfg, &c.h).await?;
        let stop = CancellationToken::new();
        let kick_b = Arc::new(tokio::sync::Notify::new());
        let kick_c = Arc::new(tokio::sync::Notify::new());
        let tb = tokio::spawn(crate::sync::run(
            b.cfg.clone(),
            b.h.clone(),
            kick_b.clone(),
            stop.clone(),
        ));
        let tc = tokio::spawn(crate::sync::run(
            c.cfg.clone(),
            c.h.clone(),
            kick_c,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let conv =
            b.h.call(|s| s.create_conversation(NewConversation::default()))
                .await?
                .id;
        kick_b.notify_one();
        let mut v = Vec::new();
        for i in 0..a.samples {
            let (cv, text) = (conv.clone(), format!("ping {i}"));
            let t = Instant::now();
            let id =
                b.h.call(move |s| s.append_message(NewMessage::new(&cv, Role::User, text)))
                    .await?
                    .id;
            kick_b.notify_one();
            loop {
                let id2 = id.clone();
                if c.h.call(move |s| Ok(s.get_message(&id2).is_ok())).await? {
                    break;
                }
                anyhow::ensure!(
                    t.elapsed() < Duration::from_secs(10),
                    "message {i} never arrived"
                );
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            v.push(t.elapsed());
        }
        stop.cancel();
        let _ = tb.await;
        let _ = tc.await;
        let p = Percentiles::new(v);
        println!(
            "{:<38} p50 {}  p99 {}  ({} messages; polled every 0.5 ms{})",
            "stored on device B -> stored on C",
            ms(p.p(50.0)),
            ms(p.p(99.0)),
            a.samples,
            if second.is_some() {
                "; C on the other server"
            } else {
                ""
            }
        );
        shutdown.cancel();
        let _ = server.await;
        if let Some((_, stop, task)) = second {
            stop.cancel();
            let _ = task.await;
        }
        anyhow::Ok(())
    })
}
