//! The sync of device histories with the real chat server on 127.0.0.1:
//! devices and a web-like client changing things at once converge; a
//! fault-injecting TCP proxy drops, stalls and cuts connections mid-frame;
//! `kill -9` of a syncing process loses and duplicates nothing; a server
//! restart mid-sync; device clocks hours off change nothing; `wss://`
//! through a TLS front with a private CA.

mod common;
mod server_support;
mod sync_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use pichat::config::SecretSource;
use pichat::history::{HistoryHandle, NewConversation, NewMessage, OpenOptions, Role};
use pichat::serverdb::Author;
use serde_json::json;
use server_support::*;
use sync_support::*;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_a_web_client_converge() {
    let srv = TestServer::start(engines(vec![])).await;
    let token_a = srv.token("alice").await;
    let token_b = srv.token("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let a = device(dir.path(), "a", srv.addr, &token_a);
    let b = device(dir.path(), "b", srv.addr, &token_b);
    // Device A's clock is five hours ahead: revs, not times, order the sync.
    let ca = turn(&a, None, "kitchen timer", 5 * 3_600_000).await;
    let cb = turn(&b, None, "weather", -3 * 3_600_000).await;
    sync_once(&a).await;
    sync_once(&b).await;
    // A web client renames A's conversation and adds a message, while A
    // archives it locally and B adds a turn to it.
    let mut web = srv.hello(&srv.token("alice").await, "web").await;
    let r = web
        .request(
            "update_conversation",
            json!({"id": ca, "title": "Timer (renamed on the web)"}),
        )
        .await;
    assert_eq!(r["action"], "conversation_updated", "{r}");
    let r = web
        .request(
            "append_messages",
            json!({"messages": [{"id": pichat::store::new_id(), "conversation_id": ca, "role": "user", "content": "typed on the web"}]}),
        )
        .await;
    assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 1, "{r}");
    sync_once(&b).await;
    turn(&b, Some(ca.clone()), "more timer", 0).await;
    let c2 = ca.clone();
    a.h.call(move |s| s.set_archived(&c2, true)).await.unwrap();
    for _ in 0..2 {
        sync_once(&a).await;
        sync_once(&b).await;
    }
    let sa = snapshot(&a).await;
    let sb = snapshot(&b).await;
    assert_eq!(sa, sb, "the devices differ");
    // A fresh device pulling everything sees the same.
    let c = device(dir.path(), "c", srv.addr, &srv.token("alice").await);
    sync_once(&c).await;
    assert_eq!(snapshot(&c).await, sa);
    let conv = sa.iter().find(|x| x.0 == ca).unwrap();
    // A's archive came after the web's rename in rev order: both hold.
    assert_eq!(conv.1, "Timer (renamed on the web)");
    assert!(conv.2, "archived by device A");
    assert_eq!(conv.3.len(), 5, "2 + 1 web + 2 from B, each once");
    assert!(sa.iter().any(|x| x.0 == cb));
    // Another user sees none of it.
    let other = device(dir.path(), "eve", srv.addr, &srv.token("eve").await);
    sync_once(&other).await;
    assert!(snapshot(&other).await.is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_deleted_on_the_server_goes_with_its_unsent_messages() {
    let srv = TestServer::start(engines(vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let a = device(dir.path(), "a", srv.addr, &srv.token("alice").await);
    let c = turn(&a, None, "to be deleted", 0).await;
    sync_once(&a).await;
    turn(&a, Some(c.clone()), "unsent", 0).await;
    let mut web = srv.hello(&srv.token("alice").await, "web").await;
    let r = web.request("delete_conversation", json!({"id": c})).await;
    assert_eq!(r["action"], "conversation_deleted");
    let rep = sync_once(&a).await;
    assert_eq!(rep.dropped_unsent, 2);
    assert!(snapshot(&a).await.is_empty());
    // Deleted locally, never pushed: the server never hears of it.
    let d = turn(&a, None, "local only", 0).await;
    let d2 = d.clone();
    a.h.call(move |s| s.delete_conversation(&d2)).await.unwrap();
    sync_once(&a).await;
    let r = web.request("get_conversation", json!({"id": d})).await;
    assert_eq!(r["payload"]["code"], "not_found");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sync_through_a_flaky_network_converges() {
    let srv = TestServer::start(engines(vec![])).await;
    let calm = Arc::new(AtomicBool::new(false));
    let proxy = flaky_proxy(srv.addr, calm.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let devices: Vec<Device> = {
        let mut v = Vec::new();
        for name in ["a", "b", "c"] {
            v.push(device(dir.path(), name, proxy, &srv.token("alice").await));
        }
        v
    };
    let shutdown = CancellationToken::new();
    let mut kicks = Vec::new();
    let mut tasks = Vec::new();
    for d in &devices {
        let kick = Arc::new(Notify::new());
        kicks.push(kick.clone());
        tasks.push(tokio::spawn(pichat::sync::run(
            d.cfg.clone(),
            d.h.clone(),
            kick,
            shutdown.clone(),
        )));
    }
    // Turns on every device while connections keep breaking.
    let mut made = 0;
    for round in 0..15 {
        for (i, d) in devices.iter().enumerate() {
            turn(d, None, &format!("device {i} round {round}"), 0).await;
            made += 2;
            kicks[i].notify_one();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The weather clears; every device reaches the server once more.
    calm.store(true, Ordering::SeqCst);
    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    let direct: Vec<Device> = devices
        .into_iter()
        .map(|d| Device {
            cfg: sync_cfg(
                srv.addr,
                match &d.cfg.token {
                    SecretSource::File(p) => p,
                    _ => unreachable!(),
                },
            ),
            ..d
        })
        .collect();
    for _ in 0..2 {
        for d in &direct {
            sync_once(d).await;
        }
    }
    let s0 = snapshot(&direct[0]).await;
    for d in &direct[1..] {
        assert_eq!(snapshot(d).await, s0, "a device differs");
    }
    let total: usize = s0.iter().map(|c| c.3.len()).sum();
    assert_eq!(
        total, made,
        "every message once: none lost, none duplicated"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_sync_loses_and_duplicates_nothing() {
    let srv = TestServer::start(engines(vec![])).await;
    let env = common::Env::new();
    let tf = env.path("device.token");
    std::fs::write(&tf, srv.token("alice").await).unwrap();
    env.write_config(&format!(
        "[history]\npath = \"{}\"\n[sync]\nurl = \"ws://{}/ws\"\ntoken_file = \"{}\"\n",
        env.path("h.db").display(),
        srv.addr,
        tf.display()
    ));
    // A big outbox: 60 conversations of 40 messages.
    {
        let (h, t) = HistoryHandle::open(&env.path("h.db"), &OpenOptions::default()).unwrap();
        h.call(|s| {
            for i in 0..60 {
                let c = s.create_conversation(NewConversation {
                    title: Some(format!("c{i}")),
                    ..Default::default()
                })?;
                for j in 0..40 {
                    s.append_message(NewMessage::new(&c.id, Role::User, format!("m{i}-{j}")))?;
                }
            }
            Ok(())
        })
        .await
        .unwrap();
        drop(h);
        t.join();
    }
    let mut rng = fastrand::Rng::with_seed(9);
    let mut killed = 0;
    for _ in 0..12 {
        let mut child = env
            .cmd(&["sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.u64(5..150))).await;
        if child.try_wait().unwrap().is_none() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            killed += 1;
        }
        let _ = child.wait();
    }
    assert!(killed > 0, "no sync was interrupted");
    let r = tokio::task::spawn_blocking({
        let mut c = env.cmd(&["sync", "--json"]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let status = env.run(&["sync", "status", "--json"]).json();
    assert_eq!(status["pending"]["messages"], 0, "{status}");
    assert_eq!(status["pending"]["conversations"], 0, "{status}");
    // The server has every message exactly once.
    let mut web = srv.hello(&srv.token("alice").await, "web").await;
    let r = web
        .request("sync", json!({"since": 0, "limit": 5000}))
        .await;
    let changes = r["payload"]["changes"].as_array().unwrap();
    let msgs: Vec<&str> = changes
        .iter()
        .filter(|c| c["entity"] == "message")
        .map(|c| c["record"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(msgs.len(), 2400);
    let unique: std::collections::HashSet<&&str> = msgs.iter().collect();
    assert_eq!(unique.len(), 2400, "a message was duplicated");
    srv.stop().await;
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `pichat serve` as a child process on a fixed port and database.
fn serve(env: &common::Env, port: u16) -> common::KillOnDrop {
    let child = env
        .cmd(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
            env.path("server.db").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut c = common::KillOnDrop(child);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("listening"), "{line}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_sync_loses_nothing() {
    let env = common::Env::new();
    let port = free_port();
    let tok = env
        .run(&[
            "token",
            "add",
            "alice",
            "--db",
            env.path("server.db").to_str().unwrap(),
            "--json",
        ])
        .json();
    let tf = env.path("device.token");
    std::fs::write(&tf, tok["token"].as_str().unwrap()).unwrap();
    env.write_config(&format!(
        "[history]\npath = \"{}\"\n[sync]\nurl = \"ws://127.0.0.1:{port}/ws\"\ntoken_file = \"{}\"\n",
        env.path("h.db").display(),
        tf.display()
    ));
    {
        let (h, t) = HistoryHandle::open(&env.path("h.db"), &OpenOptions::default()).unwrap();
        h.call(|s| {
            for i in 0..40 {
                let c = s.create_conversation(NewConversation {
                    title: Some(format!("c{i}")),
                    ..Default::default()
                })?;
                for j in 0..50 {
                    s.append_message(NewMessage::new(&c.id, Role::User, format!("m{i}-{j}")))?;
                }
            }
            Ok(())
        })
        .await
        .unwrap();
        drop(h);
        t.join();
    }
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..4 {
        let server = serve(&env, port);
        let mut sync = env
            .cmd(&["sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.u64(20..200))).await;
        // The server dies under the sync (SIGKILL: no goodbye).
        drop(server);
        let _ = sync.wait();
    }
    let _server = serve(&env, port);
    let r = env.run(&["sync"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let status = env.run(&["sync", "status", "--json"]).json();
    assert_eq!(status["pending"]["messages"], 0, "{status}");
    assert!(status["last_success"].is_string(), "{status}");
    // A second device gets exactly everything.
    let env2_db = env.path("h2.db");
    let r = env
        .run(&["sync", "--db", env2_db.to_str().unwrap(), "--json"])
        .json();
    assert_eq!(r["pulled"].as_u64().unwrap(), 40 + 2000, "{r}");
    let st = env
        .run(&[
            "history",
            "--db",
            env2_db.to_str().unwrap(),
            "stats",
            "--json",
        ])
        .json();
    assert_eq!(
        (st["conversations"].as_i64(), st["messages"].as_i64()),
        (Some(40), Some(2000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_as_the_llm_and_the_local_llm_takes_over_when_it_is_down() {
    use pichat::bench::fakes::{self, LlmMode, TtsMode};
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&[
        "Paris",
        " is",
        " the",
        " capital.",
    ])]))
    .await;
    let env = common::Env::new();
    let tf = env.path("device.token");
    std::fs::write(&tf, srv.token("alice").await).unwrap();
    let local = fakes::llm(LlmMode::Tokens {
        tokens: vec!["Local answer.".into()],
        gap: Duration::ZERO,
    })
    .await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    let config = |addr: String| {
        format!(
            "[history]\npath = \"{}\"\n[sync]\nurl = \"ws://{addr}/ws\"\ntoken_file = \"{}\"\n[llm]\nengines = [\"srv\", \"local\"]\n[tts]\nengines = [\"t\"]\n\
             [engines.srv]\nkind = \"server\"\ntimeout_ms = 3000\n[engines.local]\nkind = \"openai\"\nurl = \"{}\"\nmodel = \"local-model\"\n\
             [engines.t]\nkind = \"wyoming\"\nurl = \"{}\"\n",
            env.path("h.db").display(),
            tf.display(),
            local.url(),
            tts.tcp()
        )
    };
    env.write_config(&config(srv.addr.to_string()));
    let out = env.path("o.wav");
    let r = common::run_async(env.cmd(&[
        "ask",
        "What is the capital of France?",
        "--out",
        out.to_str().unwrap(),
    ]))
    .await;
    assert!(r.ok().contains("assistant: Paris is the capital."));
    assert_eq!(local.count(), 0);
    // Pushing the turn adds nothing: the server stored it already, same ids.
    let s = common::run_async(env.cmd(&["sync", "--json"])).await.json();
    assert_eq!(s["pushed_messages"], 0, "{s}");
    let mut web = srv.hello(&srv.token("alice").await, "web").await;
    let list = web.request("get_conversations", json!({})).await;
    let conv = list["payload"]["conversations"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let msgs = web
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    assert_eq!(
        msgs["payload"]["messages"].as_array().unwrap().len(),
        2,
        "{msgs}"
    );
    // The server goes away: the local LLM answers; the turn waits to be pushed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    env.write_config(&config(dead.to_string()));
    let r =
        common::run_async(env.cmd(&["ask", "And of Italy?", "--out", out.to_str().unwrap()])).await;
    assert!(r.ok().contains("assistant: Local answer."));
    let st = env.run(&["sync", "status", "--json"]).json();
    assert_eq!(st["pending"]["messages"], 2, "{st}");
    env.write_config(&config(srv.addr.to_string()));
    let s = common::run_async(env.cmd(&["sync", "--json"])).await.json();
    assert_eq!(s["pushed_messages"], 2, "{s}");
    srv.stop().await;
}

/// A TLS front for `upstream` (as nginx or caddy would be in front of the
/// server): a certificate for `localhost` signed by a private CA, whose PEM
/// is written to `ca_pem`.
async fn tls_front(upstream: SocketAddr, ca_pem: &std::path::Path) -> SocketAddr {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pichat test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(ca_pem, ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

/// `wss://` through a TLS front with a private CA: with `sync.ca_file` the
/// sync works; without it the certificate is refused, as a connect error
/// that says so, and nothing is lost locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_private_ca() {
    let srv = TestServer::start(engines(vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    let front = tls_front(srv.addr, &ca_pem).await;
    let mut a = device(dir.path(), "a", srv.addr, &srv.token("alice").await);
    a.cfg.url = Some(
        format!("wss://localhost:{}/ws", front.port())
            .parse()
            .unwrap(),
    );
    let conv = turn(&a, None, "over tls", 0).await;

    // The system roots alone do not know the private CA.
    let err = pichat::sync::once(&a.cfg, &a.h).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            pichat::sync::SyncError::Client(pichat::client::ClientError::Connect { .. })
        ) && text.contains("certificate")
            && text.contains("sync.ca_file"),
        "{text}"
    );

    a.cfg.ca_file = Some(ca_pem);
    let report = pichat::sync::once(&a.cfg, &a.h).await.unwrap();
    assert_eq!(
        (report.pushed_conversations, report.pushed_messages),
        (1, 2),
        "{report:?}"
    );
    // Another device reads it back over plain ws:// from the same server.
    let b = device(dir.path(), "b", srv.addr, &srv.token("alice").await);
    sync_once(&b).await;
    assert_eq!(snapshot(&a).await, snapshot(&b).await);
    let s = snapshot(&b).await;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, conv);
    assert_eq!(s[0].3.len(), 2);
    srv.stop().await;
}

/// Messages stored on a device while offline: one conversation, `n`
/// messages of `content(i)`.
async fn offline_messages(d: &Device, n: usize, content: fn(usize) -> String) -> String {
    d.h.call(move |s| {
        let c = s.create_conversation(NewConversation::default())?.id;
        for i in 0..n {
            let role = if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            s.append_message(NewMessage::new(&c, role, content(i)))?;
        }
        Ok(c)
    })
    .await
    .unwrap()
}

/// The server's messages of a conversation (all pages), as (id, content).
async fn server_messages(srv: &TestServer, user: &str, conv: &str) -> Vec<(String, String)> {
    let s = srv.store();
    let uid = s.user_id(user).await.unwrap();
    s.messages(uid, conv, 100_000, None, pichat::serverdb::everything())
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|m| (m.id, m.content))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_offline_messages_of_3_kb_push() {
    // 600 × 3 KB is 1.8 MB: one append_messages of it is over the 1 MiB
    // frame limit (once refused as too_large on every retry, forever).
    let srv = TestServer::start(engines(vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let a = device(dir.path(), "a", srv.addr, &srv.token("alice").await);
    let conv = offline_messages(&a, 600, |i| format!("{i:05} {}", "x".repeat(3000))).await;
    let rep = sync_once(&a).await;
    assert_eq!(rep.pushed_messages, 600, "{rep:?}");
    let on_server = server_messages(&srv, "alice", &conv).await;
    assert_eq!(on_server.len(), 600);
    assert!(on_server.iter().all(|(_, c)| c.len() == 3006));
    let counts = a.h.call(|s| s.outbox_counts()).await.unwrap();
    assert_eq!(counts, (0, 0, 0), "nothing left to push");
    // Again: nothing is pushed twice.
    assert_eq!(sync_once(&a).await.pushed_messages, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_one_hundred_large_messages_pull() {
    // 2,100 messages of 32,000 characters: 67 MB, once one page far over
    // the client's frame limit (the cursor never moved).
    let srv = TestServer::start(engines(vec![])).await;
    let token = srv.token("alice").await;
    let s = srv.store();
    let uid = s.user_id("alice").await.unwrap();
    let (c, _) = s
        .create_conversation(Author::NOBODY, uid, NewConversation::default())
        .await
        .unwrap();
    for chunk in 0..21 {
        let batch: Vec<NewMessage> = (0..100)
            .map(|i| {
                let mut m = NewMessage::new(
                    &c.id,
                    Role::User,
                    format!("{:05}{}", chunk * 100 + i, "y".repeat(31_995)),
                );
                m.id = Some(pichat::store::new_id());
                m
            })
            .collect();
        let out = s.append_messages(Author::NOBODY, uid, batch).await.unwrap();
        assert_eq!(out.stored.len(), 100);
    }
    let conv = c.id;
    // Every page the server sends stays within the page limit.
    let mut web = srv.hello(&token, "web").await;
    let (mut since, mut pages, mut seen) = (0i64, 0, 0usize);
    loop {
        let id = web.next_id();
        web.send(
            json!({"action": "sync", "request_id": id, "payload": {"since": since, "limit": 5000}}),
        )
        .await;
        let text = loop {
            match web.ws.next().await.unwrap().unwrap() {
                tokio_tungstenite::tungstenite::Message::Text(t) => break t,
                _ => continue,
            }
        };
        assert!(
            text.len() <= pichat::protocol::limits::MAX_PAGE_BYTES + 1024,
            "a page of {} bytes",
            text.len()
        );
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(v["request_id"], id);
        let changes = v["payload"]["changes"].as_array().unwrap();
        assert!(!changes.is_empty());
        seen += changes.len();
        since = v["payload"]["rev"].as_i64().unwrap();
        pages += 1;
        if v["payload"]["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen, 2101, "the conversation and every message, once");
    assert!(pages >= 60, "{pages} pages");
    // A device pulls it all through the sync client.
    let dir = tempfile::tempdir().unwrap();
    let d = device(dir.path(), "d", srv.addr, &token);
    let rep = sync_once(&d).await;
    assert_eq!(rep.cursor, since);
    let snap = snapshot(&d).await;
    let local = &snap.iter().find(|x| x.0 == conv).expect("pulled").3;
    assert_eq!(local.len(), 2100);
    assert!(local.iter().all(|(_, c)| c.len() == 32_000));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_32000_four_byte_characters_syncs_both_ways() {
    let srv = TestServer::start(engines(vec![])).await;
    let token = srv.token("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let a = device(dir.path(), "a", srv.addr, &token);
    let b = device(dir.path(), "b", srv.addr, &token);
    let big = "😀".repeat(32_000);
    assert_eq!(big.len(), 128_000);
    // Device → server → another device: ten of them, made offline, are
    // 1.28 MB (more than one frame).
    let conv = offline_messages(&a, 10, |_| "😀".repeat(32_000)).await;
    assert_eq!(sync_once(&a).await.pushed_messages, 10);
    let on_server = server_messages(&srv, "alice", &conv).await;
    assert_eq!(on_server.len(), 10);
    assert!(on_server.iter().all(|(_, c)| *c == big));
    sync_once(&b).await;
    let snap = snapshot(&b).await;
    assert_eq!(snap[0].3.len(), 10);
    assert!(snap[0].3.iter().all(|(_, c)| *c == big));
    // Web → server → device, and as a notification to a live device.
    let mut web = srv.hello(&token, "web").await;
    let id = pichat::store::new_id();
    let r = web
        .request(
            "append_messages",
            json!({"messages": [{"id": id, "conversation_id": conv, "role": "user", "content": "🎉".repeat(32_000)}]}),
        )
        .await;
    assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 1, "{r}");
    sync_once(&a).await;
    let snap = snapshot(&a).await;
    let got = snap[0].3.iter().find(|(i, _)| *i == id).expect("pulled");
    assert_eq!(got.1, "🎉".repeat(32_000));
    // One over the limit is refused by the server, and the device does not
    // push it forever.
    let r = web
        .request(
            "append_messages",
            json!({"messages": [{"id": pichat::store::new_id(), "conversation_id": conv, "role": "user", "content": "😀".repeat(32_001)}]}),
        )
        .await;
    assert_eq!(r["payload"]["rejected"][0]["code"], "bad_request", "{r}");
    srv.stop().await;
}
