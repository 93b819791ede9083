//! The web app's figures (issue 13, item 6), in the real browser against
//! the real server; run by `scripts/bench-web.sh` (ignored by `cargo test`:
//! it measures, it asserts nothing about speed):
//!
//! - navigation → the conversation list shown, with 10,000 conversations;
//! - opening a 10,000-message conversation (and a 10-message one);
//! - the app's bytes, gzipped;
//! - the server's RSS (`pichat serve`, the real binary) with 100 open
//!   browser sessions (signed-in tabs, each with its socket).

mod server_support;
mod web_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use pichat::serverdb::Author;
use pichat::store::{NewConversation, NewMessage, Role};
use server_support::*;
use web_support::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn sign_in(b: &Browser, base: &str, token: &str) -> Result<()> {
    b.goto(&format!("{base}/signin")).await?;
    b.type_in("#token", token).await?;
    b.click("#signin-form button[type=submit]").await?;
    b.wait_js(
        "the app connected",
        "return window.pichat && window.pichat.client.state === 'open' && document.body.dataset.listLoaded === '1'",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench-web.sh"]
async fn web_figures() {
    let conversations = env_usize("BENCH_CONVERSATIONS", 10_000);
    let messages = env_usize("BENCH_MESSAGES", 10_000);
    let sessions = env_usize("BENCH_SESSIONS", 100);
    let loads = env_usize("BENCH_LOADS", 10);

    // The app's bytes.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let mut raw = 0u64;
    let mut gz = 0u64;
    let mut files = vec![root.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
            continue;
        }
        raw += std::fs::metadata(&p).unwrap().len();
        let out = Command::new("gzip")
            .args(["-9", "-c"])
            .arg(&p)
            .output()
            .unwrap();
        gz += out.stdout.len() as u64;
    }
    println!("app: {raw} bytes, {gz} bytes gzipped (each file gzip -9)");

    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["ok"])])).await;
    let token = srv.token("alice").await;
    // 10,000 conversations (a message each), and one of 10,000 messages.
    let t = std::time::Instant::now();
    let store = srv.store();
    let uid = store.user_id("alice").await.unwrap();
    let mut pending = Vec::new();
    for i in 0..conversations {
        let store = store.clone();
        pending.push(tokio::spawn(async move {
            let (c, _) = store
                .create_conversation(
                    Author::NOBODY,
                    uid,
                    NewConversation {
                        title: Some(format!("Conversation {i}")),
                        created_at: Some(1_700_000_000_000 + i as i64 * 1000),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let mut m = NewMessage::new(&c.id, Role::User, format!("question number {i}"));
            m.created_at = Some(1_700_000_000_000 + i as i64 * 1000 + 1);
            store.add_message(Author::NOBODY, uid, m).await.unwrap();
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
    let mk = async |title: &str, n: usize| -> String {
        let (c, _) = store
            .create_conversation(
                Author::NOBODY,
                uid,
                NewConversation {
                    title: Some(title.into()),
                    created_at: Some(1_600_000_000_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let msgs: Vec<NewMessage> = (0..n)
            .map(|i| {
                let mut m = NewMessage::new(
                    &c.id,
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    format!("message {i} of a long talk about many things, to have some text"),
                );
                m.created_at = Some(1_600_000_000_000 + i as i64);
                m
            })
            .collect();
        for chunk in msgs.chunks(500) {
            store
                .append_messages(Author::NOBODY, uid, chunk.to_vec())
                .await
                .unwrap();
        }
        c.id
    };
    let (long, short) = (mk("Long", messages).await, mk("Short", 10).await);
    println!(
        "seeded {conversations} conversations and a {messages}-message one in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let base = format!("http://{}", srv.addr);
    let b = Browser::start("web_bench").await;
    let mut list_ms = Vec::new();
    let mut open_long = Vec::new();
    let mut open_short = Vec::new();
    b.run(|| async {
        sign_in(&b, &base, &token).await?;
        for _ in 0..loads {
            b.goto(&format!("{base}/")).await?;
            let v = b
                .wait_js(
                    "the list shown",
                    "const m = performance.getEntriesByName('pichat:list')[0]; return m ? m.startTime : 0",
                )
                .await?;
            list_ms.push(v.as_f64().context("a time")?);
        }
        let shown = b
            .js("return document.querySelectorAll('#conv-list .conv').length")
            .await?;
        ensure!(shown.as_u64() == Some(50), "the first page: {shown}");
        for (id, out) in [(&long, &mut open_long), (&short, &mut open_short)] {
            for _ in 0..loads {
                b.goto(&format!("{base}/")).await?;
                b.wait_js("connected", "return window.pichat.client.state === 'open' && document.body.dataset.listLoaded === '1'").await?;
                let ms = b
                    .client
                    .execute_async(
                        &format!(
                            "const done = arguments[arguments.length - 1];
                             const t0 = performance.now();
                             location.hash = '#/c/{id}';
                             const poll = () => {{
                               const m = performance.getEntriesByName('pichat:conv:{id}')[0];
                               if (m && document.querySelector('#messages .msg')) requestAnimationFrame(() => done(performance.now() - t0));
                               else requestAnimationFrame(poll);
                             }};
                             poll();"
                        ),
                        vec![],
                    )
                    .await?;
                out.push(ms.as_f64().context("a time")?);
            }
        }
        Ok(())
    })
    .await;
    b.close().await;
    println!(
        "navigation → conversation list shown ({conversations} conversations): median {:.0} ms, p95 {:.0} ms ({loads} loads)",
        percentile(&mut list_ms, 50.0),
        percentile(&mut list_ms, 95.0)
    );
    println!(
        "opening a {messages}-message conversation: median {:.0} ms, p95 {:.0} ms; a 10-message one: median {:.0} ms",
        percentile(&mut open_long, 50.0),
        percentile(&mut open_long, 95.0),
        percentile(&mut open_short, 50.0)
    );
    // The in-process server stays (its folder holds the database); the
    // real binary serves the same file.
    let db = srv.db.clone();

    // The real server's memory with `sessions` signed-in tabs.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pichat.toml");
    // The shipped config (its engines are not called), more connections per user.
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pichat.toml"))
            .unwrap();
    std::fs::write(
        &cfg,
        shipped
            .replace(
                "max_connections_per_user = 64",
                "max_connections_per_user = 1000",
            )
            .replace("level = \"info\"", "level = \"warn\""),
    )
    .unwrap();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_pichat"))
            .args([
                "-c",
                cfg.to_str().unwrap(),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--db",
            ])
            .arg(db_arg(&db))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().trim_start_matches("listening on ").to_string();
    let base = format!("http://{addr}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(child.id());
    let b = Browser::start("web_bench_sessions").await;
    b.run(|| async {
        sign_in(&b, &base, &token).await?;
        for _ in 1..sessions {
            let w = b.client.new_window(true).await?;
            b.client.switch_to_window(w.handle).await?;
            b.goto(&format!("{base}/")).await?;
            b.wait_js("connected", "return window.pichat && window.pichat.client.state === 'open' && document.body.dataset.listLoaded === '1'").await?;
        }
        let h: serde_json::Value = reqwest_health(&addr).await?;
        ensure!(h["connections"].as_u64() == Some(sessions as u64), "{h}");
        Ok(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = rss_kib(child.id());
    println!(
        "server RSS: {:.1} MiB idle, {:.1} MiB with {sessions} open browser sessions ({:.0} KiB each)",
        idle as f64 / 1024.0,
        busy as f64 / 1024.0,
        (busy.saturating_sub(idle)) as f64 / sessions as f64
    );
    b.close().await;
    drop(srv);
}

/// The server process, ended with the test (even when it fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn reqwest_health(addr: &str) -> Result<serde_json::Value> {
    let (status, body) = health(addr.parse()?).await;
    ensure!(status == 200, "health {status}");
    Ok(body)
}
