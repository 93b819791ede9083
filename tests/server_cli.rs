//! The real binary: `pichat token add|list|revoke` on a real database, and
//! `pichat serve` end to end (a token made by the CLI, a WebSocket client,
//! an AI reply through the real OpenAI-compatible engine talking to a small
//! fake HTTP server, SIGTERM closing connections with 1001).

mod common;
mod server_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Env;
use futures_util::StreamExt;
use pichat::store::OpenOptions;
use serde_json::json;
use server_support::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[test]
fn token_add_list_revoke() {
    let env = Env::new();
    let db = env.path("srv/server.db");
    let db_s = db.to_str().unwrap();

    env.run(&["token", "list", "--db", db_s])
        .fails_with("no server database yet");
    env.run(&["token", "add", "bad name", "--db", db_s])
        .fails_with("user name \"bad name\"");
    assert!(
        !db.exists() || pichat::serverdb::sqlite::Conn::open(&db, &OpenOptions::default()).is_ok()
    );

    let r = env.run(&[
        "token",
        "add",
        "alice",
        "--device",
        "kitchen-pi",
        "--db",
        db_s,
    ]);
    let token = r.ok().trim().to_string();
    assert!(token.starts_with("pct_") && !token.contains(' '), "{token}");
    assert!(
        r.stderr().contains("shown only this once"),
        "{}",
        r.stderr()
    );
    let j = env
        .run(&["token", "add", "alice", "--json", "--db", db_s])
        .json();
    assert_eq!(
        (j["id"].as_i64(), j["user"].as_str()),
        (Some(2), Some("alice"))
    );
    assert!(j["token"].as_str().unwrap().starts_with("pct_"));
    assert_ne!(j["token"].as_str().unwrap(), token);

    let list = env.run(&["token", "list", "--json", "--db", db_s]).json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["device"], "kitchen-pi");
    assert!(list[0]["revoked_at"].is_null());
    let text = serde_json::to_string(list).unwrap();
    assert!(!text.contains(&token) && !text.contains("hash"), "{text}");
    // Only the hash is stored.
    let raw = std::fs::read(&db).unwrap();
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));

    let out = env.run(&["token", "revoke", "1", "--db", db_s]).ok();
    assert!(out.contains("revoked"), "{out}");
    let list = env.run(&["token", "list", "--json", "--db", db_s]).json();
    assert!(list[0]["revoked_at"].is_string());
    let human = env.run(&["token", "list", "--db", db_s]).ok();
    assert!(
        human.contains("revoked") && human.contains("active"),
        "{human}"
    );
    env.run(&["token", "revoke", "99", "--db", db_s])
        .fails_with("no token with id 99 (see `pichat token list`)");
    assert_eq!(env.run(&["token"]).code(), 2);
    assert_eq!(env.run(&["token", "revoke", "x"]).code(), 2);
}

/// An OpenAI-compatible `/chat/completions` that streams fixed tokens; keeps
/// the last request body.
async fn fake_openai(tokens: Vec<&'static str>) -> (SocketAddr, Arc<Mutex<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let last = Arc::new(Mutex::new(String::new()));
    let seen = last.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tokens = tokens.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body_start = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < body_start + len {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                *seen.lock().unwrap() = String::from_utf8_lossy(&buf[body_start..]).into_owned();
                let mut body = String::new();
                for t in tokens {
                    body += &format!(
                        "data: {}\n\n",
                        json!({"choices": [{"delta": {"content": t}}]})
                    );
                }
                body += "data: [DONE]\n\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_end_to_end_and_sigterm() {
    let (llm, last_request) = fake_openai(vec!["Hello", " from", " the server."]).await;
    let env = Env::new();
    let db = env.path("server.db");
    env.write_config(&format!(
        r#"
[llm]
system_prompt = "Be brief."

[engines.fake]
kind = "openai"
url = "http://{llm}/v1"
model = "fake-gpt"

[server]
database = "{}"
llm_engines = ["fake"]
"#,
        db.display()
    ));
    let token = env
        .run(&["token", "add", "alice", "--device", "laptop"])
        .ok()
        .trim()
        .to_string();

    let mut cmd = tokio::process::Command::from(env.cmd(&["serve", "--listen", "127.0.0.1:0"]));
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("serve starts")
        .unwrap()
        .unwrap_or_default();
    let addr: SocketAddr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .parse()
        .unwrap();

    // The browser-style token in the query.
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .unwrap();
    let mut c = Client::new(ws);
    let w = c
        .request(
            "hello",
            json!({"protocol": 2, "client_id": "e2e", "client_kind": "web"}),
        )
        .await;
    assert_eq!(w["payload"]["features"][4], "ai_replies", "{w}");
    let conv = server_support::new_id();
    c.request("create_conversation", json!({"id": conv})).await;
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"conversation_id": conv, "content": "Hi there"}}))
        .await;
    let frames = c.stream(&rid).await;
    let tokens: String = frames
        .iter()
        .filter(|f| f["action"] == "message_stream")
        .map(|f| f["payload"]["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, "Hello from the server.");
    let reply = &frames[frames.len() - 2]["payload"]["message"];
    assert_eq!(reply["model_id"], "fake-gpt");
    let sent: serde_json::Value = serde_json::from_str(&last_request.lock().unwrap()).unwrap();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["messages"][0]["content"], "Be brief.");
    assert_eq!(sent["messages"][1]["content"], "Hi there");

    // A wrong token is refused over the real binary too.
    let e = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=pct_nope")).await;
    assert!(
        matches!(e, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401)
    );

    // SIGTERM: the connection is closed with 1001 and the process exits 0.
    let pid = child.id().unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(20), c.ws.next()).await {
        if let Ok(tokio_tungstenite::tungstenite::Message::Close(f)) = msg {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1001));
    c.finish().await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("serve exits")
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains(&token), "the token is never logged");

    // Everything is in the database.
    let s = pichat::serverdb::sqlite::Conn::open(&db, &OpenOptions::default()).unwrap();
    let u = s.user_id("alice").unwrap();
    let (msgs, _) = s.messages(u, &conv, 10, None).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1].content, "Hello from the server.");
}

#[test]
fn serve_reports_a_busy_port_in_one_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let env = Env::new();
    let db = env.path("s.db");
    env.write_config(&format!("[server]\ndatabase = \"{}\"\n", db.display()));
    env.run(&["serve", "--listen", &addr])
        .fails_with("cannot listen on");
}
