//! Several `pichat serve` on one PostgreSQL database (a real private
//! cluster): a change made through one server reaches the user's
//! connections on the other, in rev order; rate limits hold across them;
//! devices and a web-like client on different servers, through the
//! fault-injecting proxy, converge to identical histories and resume
//! their sync on either server; `kill -9` of one server loses nothing it
//! acknowledged while the other goes on.
//!
//! Needs PostgreSQL (`scripts/deps.sh --test`); `PICHAT_SKIP_POSTGRES=1`
//! skips these tests and says so.

mod common;
mod server_support;
mod sync_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pichat::config::SecretSource;
use pichat::serverdb::Location;
use serde_json::json;
use server_support::*;
use sync_support::*;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn skipped() -> bool {
    let skip = std::env::var("PICHAT_SKIP_POSTGRES").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED: several servers need PostgreSQL (PICHAT_SKIP_POSTGRES=1)");
    }
    skip
}

/// Two in-process servers on one fresh PostgreSQL database.
async fn two_servers(
    engines_of: impl Fn() -> pichat::engines::Engines,
    opts: pichat::server::ServerOptions,
) -> (TestServer, TestServer) {
    let db = Location::Postgres(fresh_postgres().await);
    let one = TestServer::start_on(
        engines_of(),
        opts.clone(),
        db.clone(),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let two = TestServer::start_on(engines_of(), opts, db, tempfile::tempdir().unwrap()).await;
    (one, two)
}

/// A connection to a `pichat serve` process that said `hello`.
async fn hello_on(p: &ServerProcess, token: &str) -> Client {
    let mut c = p.connect(token).await.expect("connected");
    let w = c
        .request(
            "hello",
            json!({"protocol": 2, "client_id": "test", "client_kind": "web"}),
        )
        .await;
    assert_eq!(w["action"], "welcome", "{w}");
    c
}

/// What a notification frame says: (action, rev).
fn note(v: &serde_json::Value) -> (String, i64) {
    let p = &v["payload"];
    let rev = p["conversation"]["rev"]
        .as_i64()
        .or(p["message"]["rev"].as_i64())
        .or(p["settings"]["rev"].as_i64())
        .or(p["rev"].as_i64())
        .unwrap_or(-1);
    (v["action"].as_str().unwrap_or("").to_string(), rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_server_reaches_the_other_servers_connections_in_rev_order() {
    if skipped() {
        return;
    }
    let (s1, s2) = two_servers(|| engines(vec![]), options()).await;
    let t = s1.token("alice").await;
    let mut w1 = s1.hello(&t, "web").await;
    let mut w1b = s1.hello(&t, "web").await;
    let mut w2 = s2.hello(&t, "voice").await;
    let bob = s2.token("bob").await;
    let mut b2 = s2.hello(&bob, "web").await;

    let r = w1
        .request("create_conversation", json!({"title": "shared"}))
        .await;
    let conv = r["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let doomed = w1
        .request("create_conversation", json!({"title": "doomed"}))
        .await;
    let doomed = doomed["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for batch in 0..3 {
        let msgs: Vec<_> = (0..20)
            .map(|i| json!({"id": pichat::store::new_id(), "conversation_id": conv, "role": "user", "content": format!("batch {batch} message {i}")}))
            .collect();
        let r = w1
            .request("append_messages", json!({"messages": msgs}))
            .await;
        assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 20, "{r}");
    }
    w1.request(
        "update_conversation",
        json!({"id": conv, "title": "renamed"}),
    )
    .await;
    w1.request("update_settings", json!({"selected_model": "m1"}))
        .await;
    w1.request("delete_conversation", json!({"id": doomed}))
        .await;
    // 2 creates, 60 messages, a rename, settings, a delete: revs 1..=65.
    let want: Vec<i64> = (1..=65).collect();
    for (name, c) in [("the other server", &mut w2), ("the same server", &mut w1b)] {
        let mut seen = Vec::new();
        while seen.len() < want.len() {
            let v = c.recv().await;
            let (action, rev) = note(&v);
            assert!(v["request_id"].is_null(), "a notification: {v}");
            seen.push((action, rev));
        }
        let revs: Vec<i64> = seen.iter().map(|s| s.1).collect();
        assert_eq!(revs, want, "{name}: every change once, in rev order");
        let kinds: HashSet<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        for k in [
            "conversation_created",
            "new_message",
            "conversation_updated",
            "settings_updated",
            "conversation_deleted",
        ] {
            assert!(kinds.contains(k), "{name}: {k} in {kinds:?}");
        }
        c.assert_quiet().await;
    }
    // The author has replies, not notifications; other users hear nothing.
    w1.assert_quiet().await;
    b2.assert_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_servers() {
    if skipped() {
        return;
    }
    let opts = pichat::server::ServerOptions {
        rate_limit_per_min: 2,
        ..options()
    };
    let (s1, s2) = two_servers(|| engines(vec![FakeLlm::tokens(&["ok"])]), opts).await;
    let t = s1.token("alice").await;
    let mut c1 = s1.hello(&t, "web").await;
    let mut c2 = s2.hello(&t, "web").await;
    let r = c1.request("create_conversation", json!({})).await;
    let conv = r["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ask = |c: &mut Client, n: usize| {
        let id = c.next_id();
        let conv = conv.clone();
        (
            id.clone(),
            json!({"action": "send_message", "request_id": id, "payload": {"conversation_id": conv, "content": format!("question {n}")}}),
        )
    };
    for (c, n) in [(&mut c1, 0), (&mut c2, 1)] {
        let (id, frame) = ask(c, n);
        c.send(frame).await;
        let frames = c.stream(&id).await;
        assert!(
            frames.iter().any(|f| f["action"] == "message_stream"),
            "{frames:?}"
        );
    }
    // The third, on either server, is over the user's limit.
    for c in [&mut c1, &mut c2] {
        let (id, frame) = ask(c, 2);
        c.send(frame).await;
        let r = c.reply_to(&id).await;
        assert_eq!(r["action"], "error", "{r}");
        assert_eq!(r["payload"]["code"], "rate_limited", "{r}");
        assert!(
            r["payload"]["retry_after_ms"].as_u64().unwrap() > 1000,
            "{r}"
        );
    }
    // Another user's bucket is its own.
    let tb = s2.token("bob").await;
    let mut b = s2.hello(&tb, "web").await;
    let r = b.request("create_conversation", json!({})).await;
    let bconv = r["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = b.next_id();
    b.send(json!({"action": "send_message", "request_id": id, "payload": {"conversation_id": bconv, "content": "hi"}})).await;
    assert!(
        b.stream(&id)
            .await
            .iter()
            .any(|f| f["action"] == "message_stream")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_two_devices_and_a_web_client_converge_through_a_flaky_network() {
    if skipped() {
        return;
    }
    let (s1, s2) = two_servers(|| engines(vec![]), options()).await;
    let calm = Arc::new(AtomicBool::new(false));
    let p1 = flaky_proxy(s1.addr, calm.clone()).await;
    let p2 = flaky_proxy(s2.addr, calm.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = device(dir.path(), "a", p1, &s1.token("alice").await);
    let b = device(dir.path(), "b", p2, &s2.token("alice").await);
    let web_token = s2.token("alice").await;
    let shutdown = CancellationToken::new();
    let (ka, kb) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let ta = tokio::spawn(pichat::sync::run(
        a.cfg.clone(),
        a.h.clone(),
        ka.clone(),
        shutdown.clone(),
    ));
    let tb = tokio::spawn(pichat::sync::run(
        b.cfg.clone(),
        b.h.clone(),
        kb.clone(),
        shutdown.clone(),
    ));
    let mut web = s2.hello(&web_token, "web").await;
    let r = web
        .request("create_conversation", json!({"title": "from the web"}))
        .await;
    let wconv = r["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut made = 0;
    for round in 0..10 {
        turn(&a, None, &format!("a round {round}"), 0).await;
        turn(&b, None, &format!("b round {round}"), 0).await;
        made += 4;
        ka.notify_one();
        kb.notify_one();
        let r = web
            .request(
                "append_messages",
                json!({"messages": [{"id": pichat::store::new_id(), "conversation_id": wconv, "role": "user", "content": format!("web {round}")}]}),
            )
            .await;
        assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 1, "{r}");
        made += 1;
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    calm.store(true, Ordering::SeqCst);
    shutdown.cancel();
    for t in [ta, tb] {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    // Directly now, each device on the *other* server: the sync resumes
    // from its cursor wherever it connects.
    let swap = |d: Device, to: std::net::SocketAddr| Device {
        cfg: sync_support::sync_cfg(
            to,
            match &d.cfg.token {
                SecretSource::File(p) => p,
                _ => unreachable!(),
            },
        ),
        ..d
    };
    let a = swap(a, s2.addr);
    let b = swap(b, s1.addr);
    for _ in 0..2 {
        sync_once(&a).await;
        sync_once(&b).await;
    }
    let sa = snapshot(&a).await;
    assert_eq!(snapshot(&b).await, sa, "the devices differ");
    let total: usize = sa.iter().map(|c| c.3.len()).sum();
    assert_eq!(
        total, made,
        "every message once: none lost, none duplicated"
    );
    // The web client reads the same through either server.
    let mut w1 = s1.hello(&web_token, "web").await;
    let l1 = w1.request("get_conversations", json!({"limit": 100})).await;
    let l2 = web
        .request("get_conversations", json!({"limit": 100}))
        .await;
    assert_eq!(l1["payload"], l2["payload"]);
    assert_eq!(
        l1["payload"]["conversations"].as_array().unwrap().len(),
        sa.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_server_loses_nothing_it_acknowledged_and_the_other_goes_on() {
    if skipped() {
        return;
    }
    let db = Location::Postgres(fresh_postgres().await);
    let config = "[log]\nlevel = \"warn\"\n";
    let mut p1 =
        ServerProcess::start_on(config, None, db.clone(), tempfile::tempdir().unwrap()).await;
    let p2 = ServerProcess::start_on(config, None, db.clone(), tempfile::tempdir().unwrap()).await;
    let t = token_cli(&db, "alice", Some("pi"));
    let mut writer = hello_on(&p1, &t).await;
    let mut watcher = hello_on(&p2, &t).await;
    let r = writer
        .request("create_conversation", json!({"title": "stream"}))
        .await;
    let conv = r["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Writes stream into server 1; it is killed mid-stream.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stream = {
        let (acked, conv) = (acked.clone(), conv.clone());
        tokio::spawn(async move {
            for i in 0..10_000 {
                let id = pichat::store::new_id();
                let rid = writer.next_id();
                writer
                    .send(json!({"action": "append_messages", "request_id": rid, "payload": {"messages": [{"id": id, "conversation_id": conv, "role": "user", "content": format!("streamed {i}")}]}}))
                    .await;
                match writer.next_frame().await {
                    Some(Ok(v)) if v["request_id"] == rid.as_str() => {
                        assert_eq!(v["payload"]["stored"][0], id.as_str(), "{v}");
                        acked.lock().unwrap().push(id);
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        })
    };
    while acked.lock().unwrap().len() < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SAFETY: our own child, by its pid.
    unsafe {
        libc::kill(p1.pid(), libc::SIGKILL);
    }
    let _ = p1.child.wait().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), stream).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40);
    // The other server goes on: its connection answers and writes.
    let r = watcher.request("ping", json!({})).await;
    assert_eq!(r["action"], "pong", "{r}");
    // Everything server 1 acknowledged is stored: read through server 2.
    let mut reader = hello_on(&p2, &t).await;
    let page = reader
        .request(
            "get_messages",
            json!({"conversation_id": conv, "limit": 1000}),
        )
        .await;
    let stored: HashSet<&str> = page["payload"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in &acked {
        assert!(stored.contains(id.as_str()), "acknowledged {id} was lost");
    }
    assert!(
        stored.len() <= acked.len() + 1,
        "at most the one in flight more"
    );
    // A client of the dead server resumes on the other one from its cursor.
    let r = reader
        .request("sync", json!({"since": 0, "limit": 5000}))
        .await;
    let changes = r["payload"]["changes"].as_array().unwrap();
    assert_eq!(
        changes.len(),
        stored.len() + 1,
        "the conversation and its messages"
    );
    let r = reader
        .request(
            "append_messages",
            json!({"messages": [{"id": pichat::store::new_id(), "conversation_id": conv, "role": "user", "content": "after the crash"}]}),
        )
        .await;
    assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 1, "{r}");
    // The other server's connection was told of every stored message, in
    // rev order, the one written after the crash last.
    let mut revs = Vec::new();
    loop {
        let n = watcher.recv().await;
        let (action, rev) = note(&n);
        revs.push(rev);
        if action == "new_message" && n["payload"]["message"]["content"] == "after the crash" {
            break;
        }
    }
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    assert_eq!(revs.len(), stored.len() + 2, "{revs:?}");
    drop(p2);
}
