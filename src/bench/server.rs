//! `pichat bench server`: the chat server's figures, over real WebSockets
//! on 127.0.0.1, on a real store: SQLite files, or PostgreSQL with
//! `--store postgres` (a private cluster made for the run, or `--postgres
//! URL`), with `--servers 2` for two servers on one database (`idle`,
//! `notify`).
//!
//! 1. Idle connections held: a real `pichat serve` child process under the
//!    open-files limit of `systemd/pichat-server.service` (`LimitNOFILE=`)
//!    and the default config, N clients (of several users: the default
//!    `max_connections_per_user` holds) that say `hello`; its resident
//!    memory before and after, per connection.
//! 2. `send_message` round trips per second with a fast fake LLM (in
//!    process): one client in turn, then several at once.
//! 3. A fresh client pulling N messages with `sync` (pages of 5000).
//! 4. Notification latency: a change on one connection until the user's
//!    other connection has the notification (p50, p99) — on the other
//!    server, with `--servers 2`.
//! 5. A healthy user's latency during another user's search storm
//!    (`server_reads.rs`).
//! 6. Unread: clients that ask for large `sync` pages again and again and
//!    never read (reconnecting when dropped), against a `pichat serve`
//!    child: its peak resident memory, and the bound it must stay under.
//! 7. Slowloris: N sockets from 127.0.0.2 and up that never finish their
//!    request head (reopened when closed), against a `pichat serve` child:
//!    how many legitimate connections (from 127.0.0.1) are refused
//!    meanwhile, how long they take, and the server's CPU.
//! 8. Lists under load: `get_conversations` and `get_messages` p50/p99
//!    while other clients send (the measurement behind "no cache",
//!    ARCHITECTURE.md).
//! 9. Migration (`--store postgres`): a SQLite store of `--sync-messages`
//!    messages copied into PostgreSQL by `pichat server migrate`'s code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::server_store::{lists, migrate};
use super::stores::{self, StoreKind, Stores};
use crate::bench::{Percentiles, ms};
use crate::engines::{ChatRequest, Engines, EventStream, Llm, LlmEvent};
use crate::protocol::ServerFrame;
use crate::server::{self, ServerOptions};
use crate::serverdb::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Idle,
    Send,
    Sync,
    Notify,
    Reads,
    Unread,
    Slowloris,
    Lists,
    Migrate,
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
    pub(super) sync_messages: usize,
    /// Notifications to time
    #[arg(long, default_value_t = 2_000)]
    notifications: usize,
    /// Clients asking for sync pages they never read (`unread`; one user:
    /// at most its max_connections_per_user, 64)
    #[arg(long, default_value_t = 32)]
    unread_clients: usize,
    /// Messages in the history of the `unread` storm
    #[arg(long, default_value_t = 10_000)]
    unread_messages: usize,
    /// Characters per message in the history of the `unread` storm
    #[arg(long, default_value_t = 1_000)]
    unread_message_chars: usize,
    /// Seconds the `unread` storm lasts
    #[arg(long, default_value_t = 30)]
    unread_seconds: u64,
    /// Slowloris sockets held open
    #[arg(long, default_value_t = 5_000)]
    slowloris: usize,
    /// Slowloris sockets per client address, one run each (comma-separated)
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100])]
    slowloris_per_address: Vec<usize>,
    /// Legitimate connections tried during each slowloris run
    #[arg(long, default_value_t = 500)]
    legit_attempts: usize,
    /// The store the servers run on
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// With --store postgres: a PostgreSQL server to make the bench's databases on
    /// (postgres://USER@HOST:PORT/DB, a user that may CREATE DATABASE) [default: a
    /// private cluster made for the run]
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Servers on the one store, for `idle` and `notify` (more than 1 needs --store postgres)
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Clients reading lists (`lists`), and as many sending meanwhile
    #[arg(long, default_value_t = 8)]
    pub(super) list_clients: usize,
    /// Seconds the `lists` load lasts
    #[arg(long, default_value_t = 10)]
    pub(super) list_seconds: u64,
    /// Run only these parts (comma-separated) [default: all but migrate]
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
    let wants = |p: Part| {
        a.only.contains(&p) || (all && !(p == Part::Migrate && a.store == StoreKind::Sqlite))
    };
    if a.servers > 1 && a.store != StoreKind::Postgres {
        bail!(
            "--servers {}: several servers share a database only with --store postgres",
            a.servers
        );
    }
    let stores = Stores::new(a.store, &dir, a.postgres.clone())?;
    println!(
        "pichat bench server (store: {}, {} server(s); files in {})",
        stores.name(),
        a.servers.max(1),
        dir.display()
    );
    rt.block_on(async {
        let st = &stores;
        if wants(Part::Idle) {
            idle(&a, &dir, st).await.context("idle connections")?;
        }
        if wants(Part::Send) {
            round_trips(&a, st)
                .await
                .context("send_message round trips")?;
        }
        if wants(Part::Sync) {
            sync_pull(&a, st).await.context("sync")?;
        }
        if wants(Part::Notify) {
            notify(&a, st).await.context("notifications")?;
        }
        if wants(Part::Reads) {
            super::server_reads::run(&a.reads, st)
                .await
                .context("reads during a search storm")?;
        }
        if wants(Part::Unread) {
            unread_storm(&a, &dir, st)
                .await
                .context("storm of unread sync pages")?;
        }
        if wants(Part::Slowloris) {
            slowloris(&a, &dir, st).await.context("slowloris")?;
        }
        if wants(Part::Lists) {
            lists(&a, st).await.context("lists under load")?;
        }
        if wants(Part::Migrate) {
            migrate(&a, &dir, st).await.context("migration")?;
        }
        Ok::<(), anyhow::Error>(())
    })
}

/// Lifts the soft limit of open files to the hard one (each connection is
/// a descriptor on both sides).
fn raise_fd_limit() {
    if let Err(e) = server::raise_open_files_limit() {
        println!("note: cannot raise the open-files limit: {e}");
    }
}

fn open_files_limit() -> u64 {
    server::open_files_limit().unwrap_or(1024)
}

/// `LimitNOFILE=` of the server's unit, as shipped.
fn unit_nofile() -> Option<u64> {
    include_str!("../../systemd/pichat-server.service")
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time a process used so far (user + system).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// A `pichat serve` child process on 127.0.0.1:0.
struct ServerChild {
    child: tokio::process::Child,
    pid: u32,
    addr: std::net::SocketAddr,
}

impl ServerChild {
    /// Starts one with `config` (TOML) and the database `db`; `nofile` is
    /// its open-files limit (soft and hard), when it can be set.
    async fn start(
        dir: &Path,
        name: &str,
        db: &Location,
        config: &str,
        nofile: Option<u64>,
    ) -> anyhow::Result<ServerChild> {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config)?;
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("--config")
            .arg(&cfg)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(match db {
                Location::Sqlite(p) => p.display().to_string(),
                Location::Postgres(url) => url.clone(),
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        if let Some(n) = nofile {
            // SAFETY: only getrlimit/setrlimit (async-signal-safe) between
            // fork and exec. Raising the hard limit needs privileges: else
            // the hard limit there is, if lower.
            unsafe {
                cmd.pre_exec(move || {
                    let mut l = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0
                        && libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0
                    {
                        l.rlim_cur = l.rlim_max.min(n as libc::rlim_t);
                        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("cannot start `pichat serve`")?;
        let pid = child.id().context("no child pid")?;
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the server did not start")??
            .unwrap_or_default();
        let addr = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected output: {line}"))?
            .parse()?;
        Ok(ServerChild { child, pid, addr })
    }

    /// The open-files limit it runs with.
    fn nofile(&self) -> Option<u64> {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid)).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }

    /// SIGTERM, and its exit.
    async fn stop(mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        if !matches!(status, Ok(Ok(s)) if s.success()) {
            println!("   note: the server did not stop cleanly: {status:?}");
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

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

pub(super) async fn connect(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<Ws> {
    connect_from(addr, token, None, None).await
}

/// A connection from `from` (another loopback address stands for another
/// device), its socket's receive buffer `recv_buffer` bytes when given.
async fn connect_from(
    addr: std::net::SocketAddr,
    token: &str,
    from: Option<std::net::Ipv4Addr>,
    recv_buffer: Option<u32>,
) -> anyhow::Result<Ws> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = from {
        sock.bind((ip, 0).into())?;
    }
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    let tcp = sock.connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        req,
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        Some(client_config()),
    )
    .await?;
    Ok(ws)
}

/// The `i`-th address of a group of loopback addresses (`base` and up).
fn nth_ip(base: [u8; 4], i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::from(base)) + i as u32)
}

pub(super) async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(Utf8Bytes::from(v.to_string())))
        .await?;
    Ok(())
}

/// The next text frame, parsed.
pub(super) async fn recv(ws: &mut Ws) -> anyhow::Result<Value> {
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
pub(super) async fn request(
    ws: &mut Ws,
    id: &str,
    action: &str,
    payload: Value,
) -> anyhow::Result<Value> {
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

pub(super) async fn hello(ws: &mut Ws) -> anyhow::Result<i64> {
    let w = request(
        ws,
        "hello",
        "hello",
        json!({"protocol": 2, "client_id": "bench", "client_kind": "api"}),
    )
    .await?;
    Ok(w["payload"]["rev"].as_i64().unwrap_or(0))
}

pub(super) async fn make_token(db: &Location, user: &str) -> anyhow::Result<String> {
    stores::token(db, user).await
}

/// A server in this process, with the fast LLM.
pub(super) struct InProcess {
    pub(super) addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub(super) async fn in_process(db: &Location) -> anyhow::Result<InProcess> {
    let (handle, _thread) = stores::open(db).await?;
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
    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// The default limit of connections per user (the idle clients are
/// spread over enough users to stay under it).
const PER_USER: usize = 64;

async fn idle(a: &Args, dir: &Path, st: &Stores) -> anyhow::Result<()> {
    let n = a.connections;
    let servers = a.servers.max(1);
    let nofile = unit_nofile();
    println!(
        "\n1. idle connections held ({servers} `pichat serve` child process(es), default config, LimitNOFILE={} as in the unit)",
        nofile.map_or("?".into(), |n| n.to_string())
    );
    let limit = open_files_limit();
    if (n as u64) + 64 > limit {
        println!(
            "   note: this process may open {limit} files; fewer than {n} connections may be possible (raise `ulimit -n`)"
        );
    }
    let db = st.fresh("idle").await?;
    let users = n.div_ceil(PER_USER).max(1);
    let names: Vec<String> = (0..users).map(|u| format!("idle{u}")).collect();
    let tokens = stores::tokens(&db, &names).await?;
    let mut srvs = Vec::with_capacity(servers);
    for i in 0..servers {
        srvs.push(
            ServerChild::start(
                dir,
                &format!("idle{i}"),
                &db,
                "[log]\nlevel = \"warn\"\n",
                nofile,
            )
            .await?,
        );
    }
    let pids: Vec<u32> = srvs.iter().map(|s| s.pid).collect();
    let addrs: Vec<std::net::SocketAddr> = srvs.iter().map(|s| s.addr).collect();
    let addr = addrs[0];
    let rss_all = |pids: &[u32]| pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).sum::<u64>();
    let got = srvs[0].nofile();
    println!(
        "   server's open-files limit: {}{}",
        got.map_or("?".into(), |n| n.to_string()),
        match (got, nofile) {
            (Some(g), Some(u)) if g < u =>
                " (the unit's could not be set here: this machine's hard limit is lower)",
            _ => "",
        }
    );
    // One connection first, so the runtime and the database are warm.
    let mut warm = connect(addr, &tokens[0]).await?;
    hello(&mut warm).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_all(&pids);
    let started = Instant::now();
    // The warm one counts: n in all.
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(0..n.saturating_sub(1))
        .map(|i| {
            // The warm connection is one of the first user's; each user's
            // connections come from an address of their own (as devices would).
            let u = (i + 1) / PER_USER % users;
            let token = tokens[u].clone();
            // Spread over the servers, one connection each in turn.
            let addr = addrs[(i + 1) % addrs.len()];
            async move {
                let from = nth_ip([127, 0, 1, 1], u);
                let mut ws = connect_from(addr, &token, Some(from), None).await?;
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
    conns.push(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_all(&pids);
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
        "   connections held:        {held} of {n} ({failed} failed{}), opened in {:.1} s ({users} users)",
        first_error.map(|e| format!(": {e}")).unwrap_or_default(),
        took.as_secs_f64()
    );
    println!("   answering a ping after:  {alive}");
    println!(
        "   server memory (RSS):     {:.1} MiB before, {:.1} MiB with them (all servers)",
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    for srv in srvs {
        srv.stop().await;
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

async fn round_trips(a: &Args, st: &Stores) -> anyhow::Result<()> {
    println!(
        "\n2. send_message round trips (fast fake LLM, 6 tokens; message_sent … typing off; {})",
        st.name()
    );
    let db = st.fresh("send").await?;
    let token = make_token(&db, "send").await?;
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

async fn sync_pull(a: &Args, st: &Stores) -> anyhow::Result<()> {
    let n = a.sync_messages;
    println!(
        "\n3. a fresh client pulls {n} messages with `sync` (pages of 5000; {})",
        st.name()
    );
    let db = st.fresh("sync").await?;
    let token = make_token(&db, "sync").await?;
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

async fn notify(a: &Args, st: &Stores) -> anyhow::Result<()> {
    let n = a.notifications;
    let cross = a.servers > 1;
    println!(
        "\n4. notification latency: update_settings on one connection until the other has settings_updated ({}; {})",
        if cross {
            "the other connection on another server"
        } else {
            "both on one server"
        },
        st.name()
    );
    let db = st.fresh("notify").await?;
    let token = make_token(&db, "notify").await?;
    let srv = in_process(&db).await?;
    let other = if cross {
        Some(in_process(&db).await?)
    } else {
        None
    };
    let mut from = connect(srv.addr, &token).await?;
    let mut to = connect(other.as_ref().map_or(srv.addr, |o| o.addr), &token).await?;
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
    if let Some(o) = other {
        o.stop().await;
    }
    Ok(())
}

/// One storm client: connects, asks for the first page every 50 ms without
/// ever reading, and starts again when dropped. Returns how often it was
/// dropped.
async fn unread_client(
    addr: std::net::SocketAddr,
    token: String,
    from: std::net::Ipv4Addr,
    until: Instant,
) -> u64 {
    let mut dropped = 0;
    while Instant::now() < until {
        let Ok(mut ws) = connect_from(addr, &token, Some(from), Some(4096)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut i = 0u64;
        loop {
            if Instant::now() >= until {
                return dropped;
            }
            let frame = json!({"action": "sync", "request_id": format!("s{i}"), "payload": {"since": 0, "limit": 5000}});
            i += 1;
            let sent = tokio::time::timeout(
                Duration::from_secs(1),
                ws.send(Message::Text(Utf8Bytes::from(frame.to_string()))),
            )
            .await;
            match sent {
                Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(50)).await,
                // The server stopped reading this connection: wait, do not read.
                Err(_) => {}
                Ok(Err(_)) => {
                    dropped += 1;
                    break;
                }
            }
        }
    }
    dropped
}

async fn unread_storm(a: &Args, dir: &Path, st: &Stores) -> anyhow::Result<()> {
    let k = a.unread_clients.max(1);
    println!(
        "\n6. a storm of {k} clients asking for `sync` pages (since 0, limit 5000) every 50 ms and never reading them, for {} s (a `pichat serve` child, default config)",
        a.unread_seconds
    );
    let db = st.fresh("storm").await?;
    let token = make_token(&db, "storm").await?;
    let srv = ServerChild::start(dir, "storm", &db, "[log]\nlevel = \"error\"\n", None).await?;
    // The history: messages of `unread_message_chars`, 100 a conversation,
    // appended in frames under 1 MiB.
    let mut up = connect(srv.addr, &token).await?;
    hello(&mut up).await?;
    let text: String = "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(a.unread_message_chars.max(1))
        .collect();
    let per_frame = ((900 * 1024) / (a.unread_message_chars + 200)).clamp(1, 500);
    let mut conv = String::new();
    let mut batch = Vec::new();
    for i in 0..a.unread_messages {
        if i % 100 == 0 {
            let c = request(&mut up, &format!("c{i}"), "create_conversation", json!({})).await?;
            conv = c["payload"]["conversation"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        batch.push(json!({"id": uuid::Uuid::now_v7(), "conversation_id": conv, "role": "user", "content": text}));
        if batch.len() == per_frame || i + 1 == a.unread_messages {
            let id = format!("a{i}");
            let msgs = std::mem::take(&mut batch);
            request(&mut up, &id, "append_messages", json!({"messages": msgs})).await?;
        }
    }
    // The size of the page each request asks for, as a reading client sees it.
    send(
        &mut up,
        json!({"action": "sync", "request_id": "page", "payload": {"since": 0, "limit": 5000}}),
    )
    .await?;
    let page = loop {
        match tokio::time::timeout(Duration::from_secs(60), up.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"page\"") => break t.len(),
            Ok(Some(Ok(_))) => continue,
            other => bail!("sync page: {other:?}"),
        }
    };
    drop(up);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(srv.pid).unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(a.unread_seconds);
    let clients: Vec<_> = (0..k)
        .map(|i| {
            let from = nth_ip([127, 0, 2, 1], i);
            tokio::spawn(unread_client(srv.addr, token.clone(), from, until))
        })
        .collect();
    let mut peak = before;
    let mut samples = Vec::new();
    // Meanwhile, another user's client: its ping round trips.
    let other = make_token(&db, "bystander").await?;
    let mut healthy = connect(srv.addr, &other).await?;
    hello(&mut healthy).await?;
    let mut pings = Vec::new();
    let mut failed_pings = 0;
    let mut i = 0;
    while Instant::now() < until {
        let rss = rss_kib(srv.pid).unwrap_or(0);
        peak = peak.max(rss);
        samples.push(rss);
        let t = Instant::now();
        match request(&mut healthy, &format!("p{i}"), "ping", json!({})).await {
            Ok(_) => pings.push(t.elapsed()),
            Err(_) => failed_pings += 1,
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut dropped = 0;
    for c in clients {
        dropped += c.await.unwrap_or(0);
    }
    // Per connection: its queue (1 MiB, or one page when a page is larger)
    // and the page being written (in the WebSocket layer's buffer; the
    // reader reads nothing more meanwhile); and a page being built (rows,
    // records, JSON: 3 pages) on each runtime worker and the store thread.
    let queue = 1 << 20;
    let builders = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let per_client = mib(queue.max(page) + page);
    let bound = before as f64 / 1024.0 + k as f64 * per_client + builders as f64 * mib(3 * page);
    println!(
        "   page asked for: {:.1} MiB; {dropped} disconnections of the non-reading clients (1013)",
        mib(page)
    );
    let at = |s: usize| samples.get(s).map_or(0.0, |&k| k as f64 / 1024.0);
    println!(
        "   server memory (RSS): {:.1} MiB before; peak {:.1} MiB; at 10 / 20 / 30 s: {:.1} / {:.1} / {:.1} MiB",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        at(samples.len() / 3),
        at(samples.len() * 2 / 3),
        at(samples.len().saturating_sub(1)),
    );
    println!(
        "   model: before + {k} clients x (queue max(1 MiB, page) + the page being written = {per_client:.1} MiB) + {builders} x 3 pages being built = {bound:.1} MiB (RSS adds the allocator's slack)"
    );
    let p = Percentiles::new(pings);
    println!(
        "   another user's pings meanwhile: p50 {}, p99 {}, {failed_pings} failed",
        ms(p.p(50.0)),
        ms(p.p(99.0))
    );
    srv.stop().await;
    Ok(())
}

/// The attack's sockets: open now, and closed by the server so far.
#[derive(Default)]
struct AttackCounts {
    open: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicU64,
}

/// One slowloris socket from `ip`, for as long as `stop` is not cancelled:
/// the start of a head, then a header line every 2 s; reopened 1 s after
/// the server closes it.
async fn loris(
    addr: std::net::SocketAddr,
    ip: std::net::Ipv4Addr,
    counts: Arc<AttackCounts>,
    stop: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    while !stop.is_cancelled() {
        let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
            return;
        };
        if sock.bind((ip, 0).into()).is_err() {
            return;
        }
        let Ok(mut tcp) = sock.connect(addr).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        counts.open.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = tcp.read(&mut buf) => {
                    if matches!(r, Ok(0) | Err(_)) {
                        counts.closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        counts.closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        counts.open.fetch_sub(1, Ordering::Relaxed);
        drop(tcp);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn slowloris(a: &Args, dir: &Path, st: &Stores) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let n = a.slowloris;
    println!(
        "\n7. legitimate connections while {n} slowloris sockets from 127.0.0.2 and up are open (a `pichat serve` child, default config)"
    );
    for &per_address in &a.slowloris_per_address {
        let per_address = per_address.max(1);
        let db = st.fresh(&format!("loris{per_address}")).await?;
        let token = make_token(&db, "legit").await?;
        let srv = ServerChild::start(
            dir,
            "loris",
            &db,
            "[log]\nlevel = \"error\"\n",
            unit_nofile(),
        )
        .await?;
        let counts = Arc::new(AttackCounts::default());
        let stop = CancellationToken::new();
        let attack: Vec<_> = (0..n)
            .map(|i| {
                tokio::spawn(loris(
                    srv.addr,
                    nth_ip([127, 0, 0, 2], i / per_address),
                    counts.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        // Wait for the attack to be in place.
        let t = Instant::now();
        while counts.open.load(Ordering::Relaxed) < n * 9 / 10
            && t.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu0 = cpu_time(srv.pid).unwrap_or_default();
        let closed0 = counts.closed.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut times = Vec::new();
        let mut refused = 0;
        let mut first_error = None;
        let mut open_seen = Vec::new();
        for i in 0..a.legit_attempts {
            open_seen.push(counts.open.load(Ordering::Relaxed));
            let t = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                let mut ws = connect(srv.addr, &token).await?;
                hello(&mut ws).await?;
                request(&mut ws, &format!("p{i}"), "ping", json!({})).await?;
                anyhow::Ok(())
            })
            .await;
            match r {
                Ok(Ok(())) => times.push(t.elapsed()),
                Ok(Err(e)) => {
                    refused += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Err(_) => {
                    refused += 1;
                    first_error.get_or_insert("no answer within 10 s".into());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_time(srv.pid).unwrap_or_default().saturating_sub(cpu0);
        let churn = counts.closed.load(Ordering::Relaxed) - closed0;
        stop.cancel();
        for t in attack {
            let _ = t.await;
        }
        let open_avg = open_seen.iter().sum::<usize>() as f64 / open_seen.len().max(1) as f64;
        let p = Percentiles::new(times);
        println!(
            "   {per_address} per address ({} addresses): {refused} of {} legitimate connections refused{}; connect+hello+ping p50 {}, p99 {}",
            n.div_ceil(per_address),
            a.legit_attempts,
            first_error
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            ms(p.p(50.0)),
            ms(p.p(99.0)),
        );
        println!(
            "      attack sockets open meanwhile: {open_avg:.0} on average; closed by the server: {:.0}/s; server CPU: {:.0} % of a core",
            churn as f64 / secs,
            100.0 * cpu.as_secs_f64() / secs
        );
        srv.stop().await;
    }
    Ok(())
}
