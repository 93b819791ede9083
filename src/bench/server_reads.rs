//! `pichat bench server --only reads`: a healthy user's latency while
//! another user runs a search storm, over real WebSockets on 127.0.0.1 and
//! a real store (`--store`).
//!
//! The storm user has a large history (`--storm-messages`) and
//! `--storm-clients` connections that each send `search` back to back for
//! a common word (every search ranks thousands of matches). Meanwhile the
//! healthy user, on its own connection, alternates `ping` and
//! `get_conversations` (a read of its own, small history) every 10 ms.
//! Printed: p50 / p99 / max of both, and the storm's searches per second,
//! once with every read on the writer thread (`server.read_connections =
//! 0`, as before the read connections) and once with the given number of
//! read connections (SQLite; PostgreSQL runs once, on its pool).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::stores::{StoreKind, Stores};
use crate::bench::{Percentiles, ms};
use crate::engines::Engines;
use crate::server::{self, ServerOptions, auth};
use crate::serverdb::{Author, Location, StoreOptions};
use crate::store::{NewConversation, NewMessage, OpenOptions, Role};

#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// Messages in the storm user's history (`reads`)
    #[arg(long, default_value_t = 20_000)]
    storm_messages: usize,
    /// Connections of the storm user sending searches back to back (`reads`)
    #[arg(long, default_value_t = 8)]
    storm_clients: usize,
    /// How long each storm lasts, in seconds (`reads`)
    #[arg(long, default_value_t = 10)]
    storm_seconds: u64,
    /// Read connections in the run after the writer-only one (`reads`)
    #[arg(long, default_value_t = crate::store::DEFAULT_READERS)]
    read_connections: usize,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WORDS: &[&str] = &[
    "timer", "kitchen", "weather", "music", "lights", "garden", "coffee", "train", "news",
    "recipe", "alarm", "paris", "river", "yellow", "window", "shopping", "battery", "doctor",
    "holiday", "football", "moon", "coat", "bread", "piano", "email", "printer", "cat",
];

pub async fn run(a: &ReadArgs, st: &Stores) -> anyhow::Result<()> {
    println!(
        "\n== a healthy user during a search storm ({} messages, {} storm connections, {} s)",
        a.storm_messages, a.storm_clients, a.storm_seconds
    );
    let db = st.fresh("reads").await?;
    let (storm_token, healthy_token) = fill(&db, a).await?;
    let runs: &[usize] = match st.kind {
        StoreKind::Sqlite => &[0, a.read_connections],
        StoreKind::Postgres => &[a.read_connections],
    };
    for &readers in runs {
        let label = if st.kind == StoreKind::Postgres {
            "postgres (the pool)".to_string()
        } else if readers == 0 {
            "every read on the writer (read_connections = 0)".to_string()
        } else {
            format!("read_connections = {readers}")
        };
        let r = storm(a, &db, readers, &storm_token, &healthy_token)
            .await
            .with_context(|| label.clone())?;
        println!("{label}:");
        println!(
            "  healthy ping              p50 {}  p99 {}  max {}  ({} samples)",
            ms(r.ping.p(50.0)),
            ms(r.ping.p(99.0)),
            ms(r.ping.p(100.0)),
            r.samples
        );
        println!(
            "  healthy get_conversations p50 {}  p99 {}  max {}",
            ms(r.read.p(50.0)),
            ms(r.read.p(99.0)),
            ms(r.read.p(100.0))
        );
        println!("  storm searches            {:.0}/s", r.searches_per_s);
    }
    Ok(())
}

/// The storm user's large history and the healthy user's small one.
async fn fill(db: &Location, a: &ReadArgs) -> anyhow::Result<(String, String)> {
    let t = Instant::now();
    let (s, thread) = super::stores::open(db).await?;
    let storm = auth::issue_token(&*s, "storm", Some("bench")).await?.1;
    let healthy = auth::issue_token(&*s, "healthy", Some("bench")).await?.1;
    let mut rng = fastrand::Rng::with_seed(7);
    for (user, n) in [("storm", a.storm_messages), ("healthy", 20)] {
        let uid = s.user_id(user).await?;
        let (c, _) = s
            .create_conversation(Author::NOBODY, uid, NewConversation::default())
            .await?;
        let mut left = n;
        while left > 0 {
            let k = left.min(500);
            let batch: Vec<NewMessage> = (0..k)
                .map(|_| {
                    let text: Vec<&str> =
                        (0..40).map(|_| WORDS[rng.usize(..WORDS.len())]).collect();
                    let mut m = NewMessage::new(&c.id, Role::User, text.join(" "));
                    m.id = Some(crate::store::new_id());
                    m
                })
                .collect();
            s.append_messages(Author::NOBODY, uid, batch).await?;
            left -= k;
        }
    }
    drop(s);
    if let Some(t) = thread {
        tokio::task::spawn_blocking(move || t.join()).await?;
    }
    println!(
        "filled in {:.1} s ({} messages)",
        t.elapsed().as_secs_f64(),
        a.storm_messages + 20
    );
    Ok((storm, healthy))
}

struct Outcome {
    ping: Percentiles,
    read: Percentiles,
    samples: usize,
    searches_per_s: f64,
}

async fn storm(
    a: &ReadArgs,
    db: &Location,
    readers: usize,
    storm_token: &str,
    healthy_token: &str,
) -> anyhow::Result<Outcome> {
    let opened = crate::serverdb::open(
        db,
        &StoreOptions {
            sqlite: OpenOptions {
                readers,
                ..OpenOptions::default()
            },
            ..StoreOptions::default()
        },
    )
    .await?;
    let (handle, thread) = (opened.store, opened.thread);
    let listener = server::bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let opts = ServerOptions {
        requests_per_sec: 1_000_000,
        request_burst: 1_000_000,
        shutdown_grace: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let engines = Engines {
        stt: vec![],
        llm: vec![],
        tts: vec![],
    };
    let task = tokio::spawn(server::run(
        listener,
        handle,
        engines,
        opts,
        shutdown.clone(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let searches = Arc::new(AtomicU64::new(0));
    let mut stormers = Vec::new();
    for i in 0..a.storm_clients {
        let mut ws = connect(addr, storm_token).await?;
        hello(&mut ws).await?;
        let (stop, searches) = (stop.clone(), searches.clone());
        stormers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let word = WORDS[(i + n as usize) % WORDS.len()];
                let id = format!("s{n}");
                request(&mut ws, &id, "search", json!({"query": word, "limit": 100})).await?;
                searches.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let mut healthy = connect(addr, healthy_token).await?;
    hello(&mut healthy).await?;
    // Let the storm build up first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let before = searches.load(Ordering::Relaxed);
    let (mut pings, mut reads) = (Vec::new(), Vec::new());
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(a.storm_seconds) {
        n += 1;
        let t = Instant::now();
        request(&mut healthy, &format!("p{n}"), "ping", json!({})).await?;
        pings.push(t.elapsed());
        let t = Instant::now();
        request(
            &mut healthy,
            &format!("g{n}"),
            "get_conversations",
            json!({}),
        )
        .await?;
        reads.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let searches_per_s =
        (searches.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for s in stormers {
        s.await??;
    }
    let _ = healthy.close(None).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    if let Some(t) = thread {
        tokio::task::block_in_place(|| t.join());
    }
    Ok(Outcome {
        samples: pings.len(),
        ping: Percentiles::new(pings),
        read: Percentiles::new(reads),
        searches_per_s,
    })
}

async fn connect(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<Ws> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

/// Sends a request; returns its reply (an `error` reply is an error).
async fn request(ws: &mut Ws, id: &str, action: &str, payload: Value) -> anyhow::Result<Value> {
    let frame = json!({"action": action, "request_id": id, "payload": payload});
    ws.send(Message::Text(Utf8Bytes::from(frame.to_string())))
        .await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("no reply within 60 s")?
            .context("the server closed the connection")??;
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["request_id"] == id {
                if v["action"] == "error" {
                    bail!("{action}: {}", v["payload"]);
                }
                return Ok(v);
            }
        }
    }
}

async fn hello(ws: &mut Ws) -> anyhow::Result<()> {
    request(
        ws,
        "hello",
        "hello",
        json!({"protocol": 2, "client_id": "bench", "client_kind": "api"}),
    )
    .await?;
    Ok(())
}
