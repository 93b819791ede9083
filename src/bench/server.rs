//! `pichat bench server`: the chat server's figures, over real WebSockets
//! on 127.0.0.1 and real SQLite files.
//!
//! 1. Idle connections held: a real `pichat serve` child process, N clients
//!    that say `hello`; its resident memory before and after, per connection.
//! 2. `send_message` round trips per second with a fast fake LLM (in
//!    process): one client in turn, then several at once.
//! 3. A fresh client pulling N messages with `sync` (pages of 5000).
//! 4. Notification latency: a change on one connection until the user's
//!    other connection has the notification (p50, p99).
//! 5. A healthy user's latency during another user's search storm
//!    (`server_reads.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::bench::{Percentiles, ms};
use crate::engines::{ChatRequest, Engines, EventStream, Llm, LlmEvent};
use crate::history::actor::HistoryHandle;
use crate::history::{OpenOptions, Store};
use crate::protocol::ServerFrame;
use crate::server::{self, ServerOptions, auth};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Idle,
    Send,
    Sync,
    Notify,
    Reads,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Idle connections to hold
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// send_message round trips to time
    #[arg(long, default_value_t = 2_000)]
    round_trips: usize,
    /// Clients sending at once in the concurrent round-trip run
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Messages a fresh client pulls with sync
    #[arg(long, default_value_t = 100_000)]
    sync_messages: usize,
    /// Notifications to time
    #[arg(long, default_value_t = 2_000)]
    notifications: usize,
    /// Run only these parts (comma-separated) [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Directory for the databases, kept [default: a temporary directory]
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    reads: super::server_reads::ReadArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let all = a.only.is_empty();
    let wants = |p: Part| all || a.only.contains(&p);
    println!("pichat bench server (databases in {})", dir.display());
    rt.block_on(async {
        if wants(Part::Idle) {
            idle(&a, &dir).await.context("idle connections")?;
        }
        if wants(Part::Send) {
            round_trips(&a, &dir)
                .await
                .context("send_message round trips")?;
        }
        if wants(Part::Sync) {
            sync_pull(&a, &dir).await.context("sync")?;
        }
        if wants(Part::Notify) {
            notify(&a, &dir).await.context("notifications")?;
        }
        if wants(Part::Reads) {
            super::server_reads::run(&a.reads, &dir)
                .await
                .context("reads during a search storm")?;
        }
        Ok::<(), anyhow::Error>(())
    })
}

/// Lifts the soft limit of open files to the hard one (each connection is
/// a descriptor on both sides).
fn raise_fd_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn open_files_limit() -> u64 {
    // SAFETY: as above.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur
        } else {
            1024
        }
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// An LLM that answers at once with a few tokens.
struct FastLlm;

#[async_trait]
impl Llm for FastLlm {
    fn name(&self) -> &str {
        "fast"
    }
    fn model(&self) -> Option<String> {
        Some("fast-fake".into())
    }
    async fn chat(&self, _req: &ChatRequest) -> crate::engines::Result<EventStream<LlmEvent>> {
        Ok(EventStream::from_vec(
            ["The ", "answer ", "is ", "forty", "-two", "."]
                .iter()
                .map(|t| Ok(LlmEvent::Token(t.to_string())))
                .collect(),
        ))
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

async fn connect(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<Ws> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(req, Some(client_config()), true).await?;
    Ok(ws)
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(Utf8Bytes::from(v.to_string())))
        .await?;
    Ok(())
}

/// The next text frame, parsed.
async fn recv(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Err(_) => bail!("no frame within 60 s"),
            Ok(None) => bail!("the server closed the connection"),
            Ok(Some(m)) => {
                if let Message::Text(t) = m? {
                    return Ok(serde_json::from_str(t.as_str())?);
                }
            }
        }
    }
}

/// Sends a request; returns the reply with its request id (skips the rest).
async fn request(ws: &mut Ws, id: &str, action: &str, payload: Value) -> anyhow::Result<Value> {
    send(
        ws,
        json!({"action": action, "request_id": id, "payload": payload}),
    )
    .await?;
    loop {
        let v = recv(ws).await?;
        if v["request_id"] == id {
            if v["action"] == "error" {
                bail!("{action}: {}", v["payload"]);
            }
            return Ok(v);
        }
    }
}

async fn hello(ws: &mut Ws) -> anyhow::Result<i64> {
    let w = request(
        ws,
        "hello",
        "hello",
        json!({"protocol": 2, "client_id": "bench", "client_kind": "api"}),
    )
    .await?;
    Ok(w["payload"]["rev"].as_i64().unwrap_or(0))
}

fn make_token(db: &Path, user: &str) -> anyhow::Result<String> {
    let mut s = Store::open(db, &OpenOptions::default())?;
    Ok(auth::issue_token(&mut s, user, Some("bench"))?.1)
}

/// A server in this process, with the fast LLM.
struct InProcess {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn in_process(db: &Path) -> anyhow::Result<InProcess> {
    let (handle, _thread) = HistoryHandle::open(db, &OpenOptions::default())?;
    let listener = server::bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let engines = Engines {
        stt: vec![],
        llm: vec![Arc::new(FastLlm)],
        tts: vec![],
    };
    let opts = ServerOptions {
        rate_limit_per_min: 100_000,
        requests_per_sec: 100_000,
        request_burst: 100_000,
        shutdown_grace: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let task = tokio::spawn(server::run(
        listener,
        handle,
        engines,
        opts,
        shutdown.clone(),
    ));
    Ok(InProcess {
        addr,
        shutdown,
        task: tokio::spawn(async move {
            let _ = task.await;
        }),
    })
}

impl InProcess {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

async fn idle(a: &Args, dir: &Path) -> anyhow::Result<()> {
    let n = a.connections;
    println!("\n1. idle connections held (a `pichat serve` child process)");
    let limit = open_files_limit();
    if (n as u64) + 64 > limit {
        println!(
            "   note: the open-files limit is {limit}; fewer than {n} connections may be possible (raise `ulimit -n`)"
        );
    }
    let db = dir.join("idle.db");
    let token = make_token(&db, "idle")?;
    let config = dir.join("idle.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"warn\"\n\n[server]\nmax_connections = {}\n",
            n + 100
        ),
    )?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `pichat serve`")?;
    let pid = child.id().context("no child pid")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the server did not start")??
        .unwrap_or_default();
    let addr: std::net::SocketAddr = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected output: {line}"))?
        .parse()?;
    // One connection first, so the runtime and the database are warm.
    let mut warm = connect(addr, &token).await?;
    hello(&mut warm).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid).unwrap_or(0);
    let started = Instant::now();
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(0..n)
        .map(|_| {
            let token = token.clone();
            async move {
                let mut ws = connect(addr, &token).await?;
                hello(&mut ws).await?;
                Ok(ws)
            }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let took = started.elapsed();
    let mut conns = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(ws) => conns.push(ws),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid).unwrap_or(0);
    // Are they all still served? Each answers a ping.
    let mut alive = 0;
    for (i, ws) in conns.iter_mut().enumerate() {
        let id = format!("p{i}");
        if request(ws, &id, "ping", json!({})).await.is_ok() {
            alive += 1;
        }
    }
    let held = conns.len();
    println!(
        "   connections held:        {held} of {n} ({failed} failed{}), opened in {:.1} s",
        first_error.map(|e| format!(": {e}")).unwrap_or_default(),
        took.as_secs_f64()
    );
    println!("   answering a ping after:  {alive}");
    println!(
        "   server memory (RSS):     {:.1} MiB before, {:.1} MiB with them",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    if held > 0 {
        println!(
            "   memory per connection:   {:.1} KiB",
            after.saturating_sub(before) as f64 / held as f64
        );
    }
    // Clients leave first (the server then has nothing to wait for), then SIGTERM.
    drop(conns);
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: signalling our own child by its pid.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    if !matches!(status, Ok(Ok(s)) if s.success()) {
        println!("   note: the server did not stop cleanly: {status:?}");
    }
    Ok(())
}

/// Sends one message and waits for the end of its reply.
async fn round_trip(ws: &mut Ws, id: &str, conv: &str, i: usize) -> anyhow::Result<()> {
    send(
        ws,
        json!({"action": "send_message", "request_id": id, "payload": {"conversation_id": conv, "content": format!("question number {i}")}}),
    )
    .await?;
    loop {
        let v = recv(ws).await?;
        if v["request_id"] != id {
            continue;
        }
        match v["action"].as_str() {
            Some("error") => bail!("send_message: {}", v["payload"]),
            Some("typing_indicator") if v["payload"]["is_typing"] == false => return Ok(()),
            _ => {}
        }
    }
}

async fn send_client(
    addr: std::net::SocketAddr,
    token: String,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut ws = connect(addr, &token).await?;
    hello(&mut ws).await?;
    let c = request(&mut ws, "c", "create_conversation", json!({})).await?;
    let conv = c["payload"]["conversation"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        round_trip(&mut ws, &format!("m{i}"), &conv, i).await?;
        times.push(t.elapsed());
    }
    Ok(times)
}

async fn round_trips(a: &Args, dir: &Path) -> anyhow::Result<()> {
    println!("\n2. send_message round trips (fast fake LLM, 6 tokens; message_sent … typing off)");
    let db = dir.join("send.db");
    let token = make_token(&db, "send")?;
    let srv = in_process(&db).await?;
    // One client, one message at a time.
    let n1 = (a.round_trips / 4).max(1);
    let t = Instant::now();
    let times = send_client(srv.addr, token.clone(), n1).await?;
    let rate = n1 as f64 / t.elapsed().as_secs_f64();
    let p = Percentiles::new(times);
    println!(
        "   1 client:    {rate:>8.0} round trips/s  (p50 {}, p99 {})",
        ms(p.p(50.0)),
        ms(p.p(99.0))
    );
    // Several clients at once.
    let k = a.clients.max(1);
    let per = (a.round_trips / k).max(1);
    let t = Instant::now();
    let runs: Vec<anyhow::Result<Vec<Duration>>> =
        futures_util::future::join_all((0..k).map(|_| send_client(srv.addr, token.clone(), per)))
            .await;
    let secs = t.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in runs {
        all.extend(r?);
    }
    let total = all.len();
    let p = Percentiles::new(all);
    println!(
        "   {k} clients:  {:>8.0} round trips/s  (p50 {}, p99 {}; {total} in {secs:.1} s)",
        total as f64 / secs,
        ms(p.p(50.0)),
        ms(p.p(99.0))
    );
    srv.stop().await;
    Ok(())
}

async fn sync_pull(a: &Args, dir: &Path) -> anyhow::Result<()> {
    let n = a.sync_messages;
    println!("\n3. a fresh client pulls {n} messages with `sync` (pages of 5000)");
    let db = dir.join("sync.db");
    let token = make_token(&db, "sync")?;
    let srv = in_process(&db).await?;
    let mut up = connect(srv.addr, &token).await?;
    hello(&mut up).await?;
    // Upload them as a device would: append_messages, 500 a frame, 100
    // messages a conversation.
    let words = [
        "weather", "tomorrow", "kitchen", "lights", "music", "timer", "recipe", "train", "paris",
        "garden", "reminder", "battery",
    ];
    let t = Instant::now();
    let mut conv = String::new();
    let mut batch = Vec::with_capacity(500);
    let mut frames = 0;
    for i in 0..n {
        if i % 100 == 0 {
            let c = request(&mut up, &format!("c{i}"), "create_conversation", json!({})).await?;
            conv = c["payload"]["conversation"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        let text: Vec<&str> = (0..16)
            .map(|j| words[(i * 7 + j * 3) % words.len()])
            .collect();
        batch.push(json!({
            "id": uuid::Uuid::now_v7(), "conversation_id": conv,
            "role": if i % 2 == 0 { "user" } else { "assistant" },
            "content": format!("{} {i}", text.join(" ")),
        }));
        if batch.len() == 500 || i + 1 == n {
            frames += 1;
            let r = request(
                &mut up,
                &format!("a{frames}"),
                "append_messages",
                json!({"messages": std::mem::take(&mut batch)}),
            )
            .await?;
            if !r["payload"]["rejected"].is_null() {
                bail!("rejected: {}", r["payload"]["rejected"]);
            }
        }
    }
    let upload = t.elapsed();
    println!(
        "   upload (append_messages): {n} in {:.1} s = {:.0} messages/s",
        upload.as_secs_f64(),
        n as f64 / upload.as_secs_f64()
    );
    drop(up);

    let t = Instant::now();
    let mut ws = connect(srv.addr, &token).await?;
    let rev = hello(&mut ws).await?;
    let mut cursor = 0i64;
    let mut pages = 0;
    let mut messages = 0;
    let mut bytes = 0usize;
    loop {
        let id = format!("s{pages}");
        send(
            &mut ws,
            json!({"action": "sync", "request_id": id, "payload": {"since": cursor, "limit": 5000}}),
        )
        .await?;
        let text = loop {
            match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => break t,
                Ok(Some(Ok(_))) => continue,
                other => bail!("sync page: {other:?}"),
            }
        };
        bytes += text.len();
        // Decoded as a client would.
        let frame = ServerFrame::decode(text.as_str())?;
        let crate::protocol::Reply::SyncBatch(b) = frame.body else {
            bail!("not a sync_batch: {}", text.as_str());
        };
        messages += b
            .changes
            .iter()
            .filter(|c| matches!(c.record, crate::protocol::ChangeRecord::Message(_)))
            .count();
        cursor = b.rev;
        pages += 1;
        if !b.has_more {
            break;
        }
    }
    let took = t.elapsed();
    println!(
        "   sync from 0: {messages} messages in {pages} pages, {:.1} MiB, {:.2} s = {:.0} messages/s (cursor {cursor} of {rev}; goal <= 5 s)",
        bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
        messages as f64 / took.as_secs_f64()
    );
    srv.stop().await;
    Ok(())
}

async fn notify(a: &Args, dir: &Path) -> anyhow::Result<()> {
    let n = a.notifications;
    println!(
        "\n4. notification latency: update_settings on one connection until the other has settings_updated"
    );
    let db = dir.join("notify.db");
    let token = make_token(&db, "notify")?;
    let srv = in_process(&db).await?;
    let mut from = connect(srv.addr, &token).await?;
    let mut to = connect(srv.addr, &token).await?;
    hello(&mut from).await?;
    hello(&mut to).await?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        send(
            &mut from,
            json!({"action": "update_settings", "request_id": format!("u{i}"), "payload": {"selected_model": format!("m{i}")}}),
        )
        .await?;
        loop {
            let v = recv(&mut to).await?;
            if v["action"] == "settings_updated" {
                break;
            }
        }
        times.push(t.elapsed());
        recv(&mut from).await?; // the reply
    }
    let p = Percentiles::new(times);
    println!(
        "   {n} notifications: p50 {}, p99 {}, max {}",
        ms(p.p(50.0)),
        ms(p.p(99.0)),
        ms(p.p(100.0))
    );
    srv.stop().await;
    Ok(())
}
