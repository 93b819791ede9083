//! Helpers of the chat server tests: the real server on 127.0.0.1:0 with a
//! real store, real WebSocket clients (tokio-tungstenite), and fake
//! engines for fault injection (an LLM that streams, fails or stalls).
//!
//! The store is a SQLite file, or with `PICHAT_TEST_STORE=postgres` a
//! fresh database on a private PostgreSQL cluster that this test binary
//! starts once (`scripts/test.sh` runs the server suites both ways).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use pichat::engines::{
    ChatRequest, EngineError, Engines, EventStream, Llm, LlmEvent, SpeechToText, SttSession,
};
use pichat::server::{self, ServerOptions, auth};
use pichat::serverdb::postgres::cluster::Cluster;
use pichat::serverdb::{self, Location, ServerStore, StoreOptions};
use pichat::store::actor::StoreThread;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long a test waits for a frame before failing (never asserted as a duration).
pub const WAIT: Duration = Duration::from_secs(10);

/// What the fake LLM does.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Streams these tokens, waiting `delay` before each.
    Tokens(Vec<String>, Duration),
    /// Refuses to connect (a retryable failure: the next engine is tried).
    Down,
    /// Streams these tokens, then never says anything again.
    Stall(Vec<String>),
    /// Streams these tokens, then fails.
    FailAfter(Vec<String>),
}

/// An LLM for fault injection.
pub struct FakeLlm {
    pub name: String,
    pub mode: Mutex<Mode>,
    pub calls: AtomicUsize,
    pub last: Mutex<Option<ChatRequest>>,
}

impl FakeLlm {
    pub fn new(name: &str, mode: Mode) -> Arc<FakeLlm> {
        Arc::new(FakeLlm {
            name: name.into(),
            mode: Mutex::new(mode),
            calls: AtomicUsize::new(0),
            last: Mutex::new(None),
        })
    }

    pub fn tokens(words: &[&str]) -> Arc<FakeLlm> {
        Self::new(
            "fake",
            Mode::Tokens(
                words.iter().map(|w| w.to_string()).collect(),
                Duration::ZERO,
            ),
        )
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Llm for FakeLlm {
    fn name(&self) -> &str {
        &self.name
    }
    fn model(&self) -> Option<String> {
        Some(format!("{}-model", self.name))
    }
    async fn chat(&self, req: &ChatRequest) -> pichat::engines::Result<EventStream<LlmEvent>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap() = Some(req.clone());
        let mode = self.mode.lock().unwrap().clone();
        let name = self.name.clone();
        match mode {
            Mode::Down => Err(EngineError::Connect {
                engine: name,
                addr: "127.0.0.1:9".into(),
                cause: "connection refused".into(),
            }),
            Mode::Tokens(tokens, delay) => Ok(EventStream::spawn(move |tx| async move {
                for t in tokens {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if tx.send(Ok(LlmEvent::Token(t))).await.is_err() {
                        return;
                    }
                }
                let _ = tx
                    .send(Ok(LlmEvent::Usage {
                        prompt: 10,
                        completion: 3,
                    }))
                    .await;
            })),
            Mode::Stall(tokens) => Ok(EventStream::spawn(move |tx| async move {
                for t in tokens {
                    let _ = tx.send(Ok(LlmEvent::Token(t))).await;
                }
                std::future::pending::<()>().await;
            })),
            Mode::FailAfter(tokens) => Ok(EventStream::spawn(move |tx| async move {
                for t in tokens {
                    let _ = tx.send(Ok(LlmEvent::Token(t))).await;
                }
                let _ = tx
                    .send(Err(EngineError::Protocol {
                        engine: name,
                        message: "stream broke".into(),
                    }))
                    .await;
            })),
        }
    }
}

/// A speech-to-text engine that reports how much 16 kHz audio it got.
pub struct CountingStt;

struct CountingSession(usize);

#[async_trait]
impl SpeechToText for CountingStt {
    fn name(&self) -> &str {
        "counting"
    }
    async fn start(&self) -> pichat::engines::Result<Box<dyn SttSession>> {
        Ok(Box::new(CountingSession(0)))
    }
}

#[async_trait]
impl SttSession for CountingSession {
    async fn push(&mut self, pcm: &[i16]) -> pichat::engines::Result<()> {
        self.0 += pcm.len();
        Ok(())
    }
    async fn finish(self: Box<Self>) -> pichat::engines::Result<String> {
        Ok(format!("heard {} samples", self.0))
    }
}

pub fn engines(llm: Vec<Arc<FakeLlm>>) -> Engines {
    Engines {
        stt: vec![],
        llm: llm.into_iter().map(|l| l as Arc<dyn Llm>).collect(),
        tts: vec![],
    }
}

/// Options for tests: the defaults, with a high rate limit.
pub fn options() -> ServerOptions {
    ServerOptions {
        rate_limit_per_min: 1000,
        ..ServerOptions::default()
    }
}

/// Whether the server tests run on PostgreSQL (`PICHAT_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("PICHAT_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// This test binary's PostgreSQL cluster (started on first use, stopped
/// when the binary exits).
pub fn cluster() -> &'static Cluster {
    static CLUSTER: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start().expect("a private PostgreSQL cluster"))
}

/// A fresh PostgreSQL database on this binary's cluster.
pub async fn fresh_postgres() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let c = cluster();
    let name = format!(
        "t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        fastrand::u32(..)
    );
    c.create_db(&name).await.expect("a database")
}

/// A fresh, empty store location for a test: a file in `dir`, or a new
/// PostgreSQL database.
pub async fn fresh_db(dir: &std::path::Path) -> Location {
    if on_postgres() {
        Location::Postgres(fresh_postgres().await)
    } else {
        Location::Sqlite(dir.join("server.db"))
    }
}

/// The `--db` argument of a location.
pub fn db_arg(at: &Location) -> String {
    match at {
        Location::Sqlite(p) => p.display().to_string(),
        Location::Postgres(u) => u.clone(),
    }
}

/// The real server, in this process, on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub db: Location,
    pub store: Arc<dyn ServerStore>,
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    thread: Option<StoreThread>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(engines: Engines) -> TestServer {
        Self::start_with(engines, options()).await
    }

    pub async fn start_with(engines: Engines, opts: ServerOptions) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_db(dir.path()).await;
        Self::start_on(engines, opts, db, dir).await
    }

    /// A server on an existing store (another server's: several servers
    /// on one PostgreSQL database).
    pub async fn start_on(
        engines: Engines,
        opts: ServerOptions,
        db: Location,
        dir: tempfile::TempDir,
    ) -> TestServer {
        let opened = serverdb::open(&db, &StoreOptions::default()).await.unwrap();
        let (store, thread) = (opened.store, opened.thread);
        assert_eq!(
            store.kind(),
            if matches!(db, Location::Postgres(_)) {
                "postgres"
            } else {
                "sqlite"
            }
        );
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::run(
            listener,
            store.clone(),
            engines,
            opts,
            shutdown.clone(),
        ));
        TestServer {
            addr,
            db,
            store,
            shutdown,
            task: Some(tokio::spawn(async move {
                task.await.unwrap().unwrap();
            })),
            thread,
            dir,
        }
    }

    /// A new token for `user` (created if new).
    pub async fn token(&self, user: &str) -> String {
        auth::issue_token(&*self.store, user, None).await.unwrap().1
    }

    pub async fn connect(&self, token: &str) -> Client {
        let mut req = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Client::new(ws)
    }

    /// A connection that said `hello` (and got its `welcome`).
    pub async fn hello(&self, token: &str, kind: &str) -> Client {
        let mut c = self.connect(token).await;
        let w = c
            .request(
                "hello",
                json!({"protocol": 2, "client_id": "test", "client_kind": kind}),
            )
            .await;
        assert_eq!(w["action"], "welcome", "{w}");
        c
    }

    /// The upgrade request with the given token (header or query) and its HTTP outcome.
    pub async fn try_connect(&self, bearer: Option<&str>, query: Option<&str>) -> Result<(), u16> {
        let url = match query {
            Some(q) => format!("ws://{}/ws?{q}", self.addr),
            None => format!("ws://{}/ws", self.addr),
        };
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = bearer {
            req.headers_mut()
                .insert("Authorization", t.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => Ok(()),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// The store (for setup and checks).
    pub fn store(&self) -> Arc<dyn ServerStore> {
        self.store.clone()
    }

    /// Shuts the server down and waits until it has stored everything.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("the server stops")
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = self.thread.take();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub struct Client {
    pub ws: Ws,
    next: u64,
    /// Frames read while waiting for another one.
    pub pending: VecDeque<Value>,
}

impl Client {
    pub fn new(ws: Ws) -> Client {
        Client {
            ws,
            next: 0,
            pending: VecDeque::new(),
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// The next text frame from the socket, or `None` when it closed.
    pub async fn next_frame(&mut self) -> Option<Result<Value, Option<CloseFrame>>> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")?;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(Ok(serde_json::from_str(t.as_str()).expect("JSON")));
                }
                Ok(Message::Close(f)) => return Some(Err(f)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next frame (read earlier or now).
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        match self.next_frame().await {
            Some(Ok(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    pub fn next_id(&mut self) -> String {
        self.next += 1;
        format!("r{}", self.next)
    }

    /// Sends a request and returns the first reply carrying its request id;
    /// other frames are kept in `pending`.
    pub async fn request(&mut self, action: &str, payload: Value) -> Value {
        let id = self.next_id();
        self.send(json!({"action": action, "request_id": id, "payload": payload}))
            .await;
        self.reply_to(&id).await
    }

    /// The next frame answering `id` (others are kept in `pending`).
    pub async fn reply_to(&mut self, id: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["request_id"] == id) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            match self.next_frame().await {
                Some(Ok(v)) if v["request_id"] == id => return v,
                Some(Ok(v)) => self.pending.push_back(v),
                other => panic!("waiting for {id}, got {other:?}"),
            }
        }
    }

    /// Asserts nothing is queued for this client: a ping's pong is the next frame.
    pub async fn assert_quiet(&mut self) {
        assert!(self.pending.is_empty(), "unexpected: {:?}", self.pending);
        let id = self.next_id();
        self.send(json!({"action": "ping", "request_id": id})).await;
        let v = self.recv().await;
        assert_eq!(
            (v["action"].as_str(), v["request_id"].as_str()),
            (Some("pong"), Some(id.as_str())),
            "expected only the pong, got {v}"
        );
    }

    /// Reads until the server closes; returns the close code. Then keeps
    /// reading, as a client should, so the close reply goes out.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_frame().await {
                Some(Ok(v)) => self.pending.push_back(v),
                Some(Err(f)) => {
                    self.finish().await;
                    return f.map(|f| u16::from(f.code));
                }
                None => return None,
            }
        }
    }

    /// Reads until the socket ends (completes the closing handshake).
    pub async fn finish(&mut self) {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }

    /// The frames of a `send_message` up to its typing-off, in order.
    pub async fn stream(&mut self, id: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let v = self.reply_to(id).await;
            let end = v["action"] == "typing_indicator" && v["payload"]["is_typing"] == false;
            let error_without_typing = v["action"] == "error" && frames.is_empty();
            frames.push(v);
            if end || error_without_typing {
                return frames;
            }
        }
    }
}

/// An upgrade request as raw bytes (for header checks).
pub fn request_for(addr: SocketAddr, path: &str) -> http::Request<()> {
    format!("ws://{addr}{path}").into_client_request().unwrap()
}

/// A new client-made id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A raw HTTP request; returns the whole response (the server closes).
pub async fn http_raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("a response")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// A raw HTTP/1.1 request; returns the status code and the body.
pub async fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let text = http_raw(addr, request).await;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `GET /health`: the status and the JSON body.
pub async fn health(addr: SocketAddr) -> (u16, Value) {
    let (status, body) = http(addr, "GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await;
    (status, serde_json::from_str(&body).expect("JSON health"))
}

impl TestServer {
    /// A connection whose socket has a tiny receive buffer, for slow-reader tests.
    pub async fn connect_small_buffer(&self, token: &str) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let tcp = sock.connect(self.addr).await.unwrap();
        let mut req = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
        Client::new(ws)
    }

    /// Waits until /health counts `n` connections.
    pub async fn wait_connections(&self, n: u64) {
        for _ in 0..1000 {
            if health(self.addr).await.1["connections"] == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never reached {n} connections");
    }
}

/// A socket from `from` (any 127.x.y.z: loopback addresses other than
/// 127.0.0.1 stand for other clients).
pub async fn tcp_from(addr: SocketAddr, from: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(addr).await.unwrap()
}

/// A slowloris socket: connected from `from`, it sends the start of a
/// request head and nothing more.
pub async fn slow_head(addr: SocketAddr, from: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tcp_from(addr, from).await;
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tcp
}

/// True when the server closed (or reset) the socket within the wait.
pub async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// True when the socket is still open after a short look (used only after
/// the checks that wait for closes, so a late close cannot be missed).
pub async fn still_open(tcp: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf))
        .await
        .is_err()
}

/// A WebSocket opened by hand (no WebSocket library): the handshake is
/// sent, the `101` read; frames are then written with [`write_frame`].
pub async fn raw_ws(addr: SocketAddr, token: &str) -> TcpStream {
    raw_ws_with(TcpStream::connect(addr).await.unwrap(), token).await
}

/// [`raw_ws`] over a socket whose receive buffer is `size` bytes.
pub async fn raw_ws_with_buffer(addr: SocketAddr, token: &str, size: u32) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(size).unwrap();
    raw_ws_with(sock.connect(addr).await.unwrap(), token).await
}

async fn raw_ws_with(mut tcp: TcpStream, token: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut b))
            .await
            .expect("the 101 within the wait")
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// The header of a client frame: FIN, `opcode`, masked with a zero key (so
/// the payload goes as is), `len` bytes of payload to follow; `rsv1` sets
/// a reserved bit (a protocol violation); `masked: false` is one too.
pub fn frame_header(opcode: u8, len: usize, masked: bool, rsv1: bool) -> Vec<u8> {
    let mut h = vec![0x80 | opcode | if rsv1 { 0x40 } else { 0 }];
    let mask = if masked { 0x80 } else { 0 };
    if len < 126 {
        h.push(mask | len as u8);
    } else if len <= 0xffff {
        h.push(mask | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(mask | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        h.extend_from_slice(&[0, 0, 0, 0]);
    }
    h
}

/// Writes a whole client text frame.
pub async fn write_frame(tcp: &mut TcpStream, payload: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut f = frame_header(0x1, payload.len(), true, false);
    f.extend_from_slice(payload);
    tcp.write_all(&f).await.unwrap();
}

/// A frame from the server: its opcode and payload; `None` at the end.
pub async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 2];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut h))
        .await
        .expect("a frame within the wait")
        .ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            tcp.read_exact(&mut l).await.ok()?;
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            tcp.read_exact(&mut l).await.ok()?;
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x0f, payload))
}

/// Reads server frames until the close frame; its code (`None`: the socket
/// ended without one).
pub async fn raw_close_code(tcp: &mut TcpStream) -> Option<u16> {
    while let Some((opcode, payload)) = read_frame(tcp).await {
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    None
}

/// The real `pichat serve` binary, on 127.0.0.1:0, with its log (stderr)
/// collected; `nofile` sets its open-files limit (soft, hard) before it starts.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub db: Location,
    log: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
}

impl ServerProcess {
    pub async fn start(config: &str, nofile: Option<(u64, u64)>) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_db(dir.path()).await;
        Self::start_on(config, nofile, db, dir).await
    }

    /// One on an existing store (several servers on one database).
    pub async fn start_on(
        config: &str,
        nofile: Option<(u64, u64)>,
        db: Location,
        dir: tempfile::TempDir,
    ) -> ServerProcess {
        use tokio::io::AsyncBufReadExt;
        let cfg = dir.path().join("pichat.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pichat"));
        cmd.arg("--config")
            .arg(&cfg)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db_arg(&db))
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some((soft, hard)) = nofile {
            // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = err.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .expect("the server starts")
            .unwrap()
            .unwrap_or_else(|| panic!("no address; log:\n{}", log.lock().unwrap()));
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap();
        ServerProcess {
            child,
            addr,
            db,
            log,
            dir,
        }
    }

    /// A new token for `user`, made in the database by `pichat token add`.
    pub fn token(&self, user: &str, device: Option<&str>) -> String {
        token_cli(&self.db, user, device)
    }

    pub fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`; the log so far.
    pub async fn wait_log(&self, needle: &str) -> String {
        for _ in 0..500 {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {needle:?} in the log:\n{}", self.log());
    }

    pub async fn connect(&self, token: &str) -> Result<Client, u16> {
        let mut req = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client::new(ws)),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// SIGTERM, then the whole log once it has stopped.
    pub async fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server stops")
            .unwrap();
        assert!(status.success(), "{status:?}\n{}", self.log());
        // The log reader has the last lines once stderr is closed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.log()
    }
}

/// A new token for `user`, made by `pichat token add` on the store `db`.
pub fn token_cli(db: &Location, user: &str, device: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pichat"));
    cmd.args(["token", "add", user, "--db"])
        .arg(db_arg(db))
        .env_remove("PICHAT_CONFIG")
        .env("HOME", std::env::temp_dir())
        .env_remove("RUST_LOG");
    if let Some(d) = device {
        cmd.args(["--device", d]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pichat token add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
