//! The server's store when the disk fills up: the real server over a real
//! socket, its database on a small tmpfs that a filler file fills. Writes
//! answer `unavailable` with `retry_after_ms` (never `bad_request`: the
//! client must keep the data and retry), reads keep working, and the same
//! write succeeds by itself once space is freed — no restart.
//!
//! Mounting needs root (CI runs as root); without it the test says so and
//! passes nothing off as tested.

mod server_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use pichat::server::{self, auth};
use pichat::serverdb::sqlite::SqliteStore;
use pichat::store::OpenOptions;
use serde_json::json;
use server_support::*;
use tokio_util::sync::CancellationToken;

/// A tmpfs of `size` mounted on a new directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
    n
}

fn messages(conv: &str, n: usize, size: usize) -> serde_json::Value {
    let list: Vec<_> = (0..n)
        .map(|i| {
            json!({"id": new_id(), "conversation_id": conv, "role": "user",
                   "content": format!("{i} {}", "z".repeat(size))})
        })
        .collect();
    json!({ "messages": list })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_unavailable_reads_go_on_and_writes_resume_when_space_returns() {
    let fs = match Tmpfs::mount("3m") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the disk-full test ({e}); run as root");
            return;
        }
    };
    let db = fs.path("server.db");
    let (store, _thread) = SqliteStore::open(&db, &OpenOptions::default()).unwrap();
    let handle: Arc<dyn pichat::serverdb::ServerStore> = Arc::new(store);
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::run(
        listener,
        handle.clone(),
        engines(vec![]),
        options(),
        shutdown.clone(),
    ));
    let token = auth::issue_token(&*handle, "alice", None).await.unwrap().1;
    let srv = Endpoint { addr };
    let mut c = srv.hello(&token).await;
    let r = c
        .request("create_conversation", json!({"title": "before"}))
        .await;
    assert_eq!(r["action"], "conversation_created", "{r}");
    let conv = r["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c.request("append_messages", messages(&conv, 2, 100)).await;
    assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 2, "{r}");

    let filler = fs.path("filler");
    assert!(fill(&filler) > 0);
    // Bigger than anything the WAL holds yet: it must grow, and cannot.
    let batch = messages(&conv, 20, 30_000);
    let e = c.request("append_messages", batch.clone()).await;
    assert_eq!(e["action"], "error", "{e}");
    assert_eq!(e["payload"]["code"], "unavailable", "{e}");
    assert!(
        e["payload"]["retry_after_ms"].as_u64().unwrap() >= 1000,
        "{e}"
    );
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("disk is full"),
        "{e}"
    );
    let e = c
        .request("create_conversation", json!({"title": "x".repeat(200)}))
        .await;
    // A small write may still fit in the WAL's room: stored, or unavailable.
    assert!(
        e["action"] == "conversation_created" || e["payload"]["code"] == "unavailable",
        "{e}"
    );
    // Reads go on.
    let r = c
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    assert_eq!(r["payload"]["messages"].as_array().unwrap().len(), 2, "{r}");
    let r = c.request("sync", json!({"since": 0})).await;
    assert_eq!(r["action"], "sync_batch", "{r}");
    let r = c.request("get_conversations", json!({})).await;
    assert!(
        r["payload"]["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["title"] == "before"),
        "{r}"
    );
    // Space comes back: the same write now succeeds, nothing restarted.
    std::fs::remove_file(&filler).unwrap();
    let r = c.request("append_messages", batch).await;
    assert_eq!(
        r["payload"]["stored"].as_array().map(Vec::len),
        Some(20),
        "{r}"
    );
    let r = c
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    assert_eq!(r["payload"]["messages"].as_array().unwrap().len(), 22);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The server on a database of the test's choosing.
struct Endpoint {
    addr: std::net::SocketAddr,
}

impl Endpoint {
    async fn hello(&self, token: &str) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut c = Client::new(ws);
        let w = c
            .request(
                "hello",
                json!({"protocol": 2, "client_id": "test", "client_kind": "web"}),
            )
            .await;
        assert_eq!(w["action"], "welcome", "{w}");
        c
    }
}
