//! A socket-free harness for the cargo-fuzz target (`fuzz/`) and its
//! regression tests: one text frame in, through decoding and dispatch
//! against a real store (in a temporary directory) and an echoing LLM, the
//! frames the server would send out. Not a stable API.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::auth;
use super::conn::Out;
use super::options::ServerOptions;
use super::session::Session;
use super::state::State;
use crate::engines::{ChatRequest, Engines, EventStream, Llm, LlmEvent, Result as EngineResult};
use crate::serverdb::sqlite::SqliteStore;
use crate::store::OpenOptions;
use crate::store::actor::StoreThread;

/// An LLM that answers with the last message, word by word.
struct EchoLlm;

#[async_trait]
impl Llm for EchoLlm {
    fn name(&self) -> &str {
        "echo"
    }
    fn model(&self) -> Option<String> {
        Some("echo-1".into())
    }
    async fn chat(&self, req: &ChatRequest) -> EngineResult<EventStream<LlmEvent>> {
        let last = req
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        Ok(EventStream::from_vec(
            last.split_inclusive(' ')
                .map(|w| Ok(LlmEvent::Token(w.to_string())))
                .collect(),
        ))
    }
}

/// The server's dispatch, without sockets.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    session: Option<Session>,
    thread: Option<StoreThread>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("server.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (store, thread) = SqliteStore::open(&db, &OpenOptions::default()).expect("open");
        rt.block_on(auth::issue_token(&store, "fuzz", None))
            .expect("token");
        let opts = ServerOptions {
            rate_limit_per_min: 1_000_000,
            requests_per_sec: 1_000_000,
            request_burst: 1_000_000,
            send_queue_bytes: 1 << 30,
            ..ServerOptions::default()
        };
        let engines = Engines {
            stt: vec![],
            llm: vec![Arc::new(EchoLlm)],
            tts: vec![],
        };
        let state = State::new(Arc::new(store), engines, opts, CancellationToken::new());
        let user = rt.block_on(async {
            let id = state.db.user_id("fuzz").await.expect("user");
            auth::AuthUser {
                id,
                name: "fuzz".into(),
                token_id: 1,
                device: None,
            }
        });
        let conn = state.new_conn(user, ([127, 0, 0, 1], 0).into());
        let session = Session::new(state, conn);
        Harness {
            rt,
            session: Some(session),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Handles one text frame (and the jobs it starts); returns the frames
    /// sent back and whether the connection stays open.
    pub fn frame(&mut self, text: &str) -> (Vec<String>, bool) {
        let session = self.session.as_mut().expect("session");
        let open = self.rt.block_on(async {
            let open = session.handle_text(text).await;
            session.jobs().wait_all().await;
            open
        });
        let mut out = Vec::new();
        for o in session.conn().drain() {
            match o {
                Out::Text(t) => out.push(t.as_str().to_string()),
                Out::Close(code, _) => out.push(format!("<close {code}>")),
            }
        }
        (out, open)
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The store thread ends when the last handle (in the session) goes.
        self.session.take();
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}
