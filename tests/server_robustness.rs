//! The server under bad input and bad peers: wrong tokens, malformed and
//! oversized frames, clients that vanish mid-stream or stop reading, LLMs
//! that stall or break, rate limits, shutdown. Each gets the specified
//! answer, and the server keeps serving everyone else.

mod server_support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pichat::server::ServerOptions;
use serde_json::{Value, json};
use server_support::*;
use tokio_tungstenite::tungstenite::Message;

fn slow_tokens(n: usize, delay_ms: u64) -> Mode {
    Mode::Tokens(
        (0..n).map(|i| format!("w{i} ")).collect(),
        Duration::from_millis(delay_ms),
    )
}

async fn conversation(c: &mut Client) -> String {
    let id = new_id();
    let r = c.request("create_conversation", json!({"id": id})).await;
    assert_eq!(r["action"], "conversation_created");
    id
}

/// Sends a message; returns its request id.
async fn ask(c: &mut Client, conv: &str, text: &str) -> String {
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"conversation_id": conv, "content": text}}))
        .await;
    rid
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut ok = srv.hello(&t, "web").await;

    assert_eq!(srv.try_connect(None, None).await, Err(401));
    assert_eq!(srv.try_connect(Some("Bearer nope"), None).await, Err(401));
    assert_eq!(
        srv.try_connect(Some(&format!("Basic {t}")), None).await,
        Err(401)
    );
    assert_eq!(
        srv.try_connect(Some(&format!("Bearer {t}x")), None).await,
        Err(401)
    );
    assert_eq!(
        srv.try_connect(None, Some("token=pct_wrong")).await,
        Err(401)
    );
    assert_eq!(srv.try_connect(None, Some("token=")).await, Err(401));
    assert_eq!(
        srv.try_connect(Some(&format!("Bearer {t}")), None).await,
        Ok(())
    );
    assert_eq!(
        srv.try_connect(Some(&format!("bearer  {t} ")), None).await,
        Ok(())
    );
    assert_eq!(
        srv.try_connect(None, Some(&format!("x=1&token={t}"))).await,
        Ok(())
    );

    // The 401 has a JSON body saying what to do.
    let (status, body) = http(srv.addr, "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await;
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "unauthorized");
    // With a token but no upgrade: 426. Other paths and methods.
    let (status, _) = http(
        srv.addr,
        &format!("GET /ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 426);
    assert_eq!(
        http(srv.addr, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .0,
        404
    );
    assert_eq!(
        http(
            srv.addr,
            "POST /ws HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
        )
        .await
        .0,
        405
    );
    assert_eq!(http(srv.addr, "garbage\r\n\r\n").await.0, 400);

    // A revoked token is refused from then on.
    let id = srv.store().tokens().await.unwrap().last().unwrap().id;
    srv.store().revoke_token(id).await.unwrap();
    assert_eq!(
        srv.try_connect(Some(&format!("Bearer {t}")), None).await,
        Err(401)
    );

    let (status, h) = health(srv.addr).await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_s"].as_u64().is_some());
    assert_eq!(h["store"]["kind"], srv.store().kind());
    assert_eq!(h["store"]["ok"], true);
    // The connection opened before keeps working.
    ok.assert_quiet().await;
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_server_keeps_serving() {
    let srv = TestServer::start(engines(vec![])).await;
    let (ta, tb) = (srv.token("alice").await, srv.token("bob").await);
    let mut bystander = srv.hello(&tb, "web").await;
    let mut c = srv.hello(&ta, "web").await;

    let cases: Vec<(&str, &str, Option<&str>, Option<&str>)> = vec![
        // (frame, code, request_id echoed, action echoed)
        ("[1,2]", "bad_request", None, None),
        ("42", "bad_request", None, None),
        (r#"{"request_id":"a"}"#, "bad_request", Some("a"), None),
        (
            r#"{"action":5,"request_id":"b"}"#,
            "bad_request",
            Some("b"),
            None,
        ),
        (
            r#"{"action":"ping","request_id":7}"#,
            "bad_request",
            None,
            None,
        ),
        (
            r#"{"action":"ping","request_id":"c","payload":"x"}"#,
            "bad_request",
            Some("c"),
            Some("ping"),
        ),
        (
            r#"{"action":"sync","request_id":"d","payload":{"since":"zero"}}"#,
            "bad_request",
            Some("d"),
            Some("sync"),
        ),
        (
            r#"{"action":"get_conversation","request_id":"e","payload":{"id":"../etc"}}"#,
            "bad_request",
            Some("e"),
            Some("get_conversation"),
        ),
        (
            r#"{"action":"create_conversation","request_id":"f","payload":{"title":["x"]}}"#,
            "bad_request",
            Some("f"),
            Some("create_conversation"),
        ),
        (
            r#"{"action":"send_message","request_id":"g","payload":{"conversation_id":null,"content":"x"}}"#,
            "bad_request",
            Some("g"),
            Some("send_message"),
        ),
        (
            r#"{"action":"launch_rockets","request_id":"h"}"#,
            "unknown_action",
            Some("h"),
            Some("launch_rockets"),
        ),
        (
            r#"{"action":"welcome","request_id":"i","payload":{}}"#,
            "unknown_action",
            Some("i"),
            Some("welcome"),
        ),
    ];
    for (frame, code, rid, action) in cases {
        c.send_text(frame).await;
        let e = c.recv().await;
        assert_eq!(e["action"], "error", "{frame}: {e}");
        assert_eq!(e["payload"]["code"], code, "{frame}: {e}");
        assert_eq!(e["request_id"].as_str(), rid, "{frame}: {e}");
        assert_eq!(e["payload"]["action"].as_str(), action, "{frame}: {e}");
        assert!(!e["payload"]["message"].as_str().unwrap().is_empty());
    }
    let e = {
        c.send_text(r#"{"action":"sync","request_id":"d","payload":{"since":"zero"}}"#)
            .await;
        c.recv().await
    };
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .starts_with("payload.since: invalid type"),
        "{e}"
    );
    c.assert_quiet().await; // still open and serving

    // Not JSON at all: an error, then the connection is closed (1007).
    c.send_text("this is not json").await;
    let e = c.recv().await;
    assert_eq!(e["payload"]["code"], "bad_request");
    assert_eq!(c.close_code().await, Some(1007));

    // A binary frame: an error, then closed (1003).
    let mut b = srv.hello(&ta, "web").await;
    b.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let e = b.recv().await;
    assert_eq!(e["payload"]["code"], "bad_request");
    assert_eq!(b.close_code().await, Some(1003));

    // Everyone else is served as before.
    bystander.assert_quiet().await;
    let mut again = srv.hello(&ta, "web").await;
    again.assert_quiet().await;
}

#[tokio::test]
async fn oversized_frames_are_refused_with_1009() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut bystander = srv.hello(&t, "web").await;

    // Over 1 MiB: too_large (with the request id), then closed.
    let mut c = srv.hello(&t, "web").await;
    let pad = "x".repeat(pichat::protocol::limits::MAX_FRAME);
    c.send(json!({"action": "ping", "request_id": "big", "payload": {"pad": pad}}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["payload"]["code"].as_str(), e["request_id"].as_str()),
        (Some("too_large"), Some("big"))
    );
    assert_eq!(c.close_code().await, Some(1009));

    // speech_to_text may be bigger than 1 MiB (here refused for another reason).
    let mut s = srv.hello(&t, "web").await;
    let audio = "A".repeat(2 << 20);
    let r = s
        .request("speech_to_text", json!({"audio_data": audio}))
        .await;
    assert_eq!(r["payload"]["code"], "unavailable", "no STT engine: {r}");
    s.assert_quiet().await;

    // Over 8 MiB: refused by the WebSocket layer, same answer.
    let huge = "A".repeat((8 << 20) + 10);
    s.send(
        json!({"action": "speech_to_text", "request_id": "huge", "payload": {"audio_data": huge}}),
    )
    .await;
    let e = s.recv().await;
    assert_eq!(e["payload"]["code"], "too_large", "{e}");
    assert_eq!(s.close_code().await, Some(1009));

    bystander.assert_quiet().await;
}

#[tokio::test]
async fn a_disconnect_mid_stream_still_stores_the_reply() {
    let llm = FakeLlm::new("slow", slow_tokens(20, 10));
    let srv = TestServer::start(engines(vec![llm])).await;
    let t = srv.token("alice").await;
    let mut watcher = srv.hello(&t, "web").await;
    let mut c = srv.hello(&t, "voice").await;
    let conv = conversation(&mut c).await;
    assert_eq!(watcher.recv().await["action"], "conversation_created");
    let rid = ask(&mut c, &conv, "tell me a long story").await;
    loop {
        let f = c.reply_to(&rid).await;
        if f["action"] == "message_stream" {
            assert_eq!(f["payload"]["finished"], false);
            break;
        }
    }
    drop(c); // gone mid-stream

    // The other connection hears of the question, then of the whole reply.
    let q = watcher.recv().await;
    assert_eq!(q["payload"]["message"]["content"], "tell me a long story");
    let a = watcher.recv().await;
    assert_eq!(a["action"], "new_message");
    let expected: String = (0..20).map(|i| format!("w{i} ")).collect();
    assert_eq!(a["payload"]["message"]["content"], expected.as_str());
    let m = watcher
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    let msgs = m["payload"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1]["content"], expected.as_str());
    assert_eq!(msgs[1]["reply_to"], q["payload"]["message"]["id"]);
}

#[tokio::test]
async fn sync_is_not_blocked_by_a_running_stream() {
    // The LLM says one word and then nothing for a long time.
    let llm = FakeLlm::new("stuck", Mode::Stall(vec!["thinking".into()]));
    let srv = TestServer::start(engines(vec![llm])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "voice").await;
    let conv = conversation(&mut c).await;
    let rid = ask(&mut c, &conv, "hard question").await;
    loop {
        if c.reply_to(&rid).await["action"] == "message_stream" {
            break;
        }
    }
    // The stream is still running; sync and the rest answer at once.
    let s = c.request("sync", json!({"since": 0})).await;
    assert_eq!(s["action"], "sync_batch");
    assert_eq!(s["payload"]["changes"].as_array().unwrap().len(), 2);
    let m = c
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    assert_eq!(m["payload"]["messages"].as_array().unwrap().len(), 1);
    c.assert_quiet().await;
}

#[tokio::test]
async fn stalled_or_broken_llm_replies_are_cut_and_stored() {
    let stalled = FakeLlm::new(
        "stuck",
        Mode::Stall(vec!["partial ".into(), "answer".into()]),
    );
    let srv = TestServer::start_with(
        engines(vec![stalled.clone()]),
        ServerOptions {
            stall_timeout: Duration::from_millis(300),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;
    let conv = conversation(&mut c).await;
    let rid = ask(&mut c, &conv, "q1").await;
    let frames = c.stream(&rid).await;
    let last = &frames[frames.len() - 2]["payload"];
    assert_eq!(last["finished"], true);
    assert_eq!(last["interrupted"], true);
    assert_eq!(last["message"]["content"], "partial answer");

    *stalled.mode.lock().unwrap() = Mode::FailAfter(vec!["half ".into()]);
    let rid = ask(&mut c, &conv, "q2").await;
    let frames = c.stream(&rid).await;
    let last = &frames[frames.len() - 2]["payload"];
    assert_eq!(
        (
            last["interrupted"].as_bool(),
            last["message"]["content"].as_str()
        ),
        (Some(true), Some("half "))
    );

    // Stalled before any word: ai_failed, nothing stored.
    *stalled.mode.lock().unwrap() = Mode::Stall(vec![]);
    let rid = ask(&mut c, &conv, "q3").await;
    let frames = c.stream(&rid).await;
    assert_eq!(frames[2]["payload"]["code"], "ai_failed", "{frames:?}");
    let m = c
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    let contents: Vec<&str> = m["payload"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, vec!["q1", "partial answer", "q2", "half ", "q3"]);
}

#[tokio::test]
async fn rate_limits_per_user_and_per_connection() {
    let srv = TestServer::start_with(
        engines(vec![FakeLlm::tokens(&["ok"])]),
        ServerOptions {
            rate_limit_per_min: 2,
            requests_per_sec: 1,
            request_burst: 30,
            ..options()
        },
    )
    .await;
    let (ta, tb) = (srv.token("alice").await, srv.token("bob").await);
    let mut a = srv.hello(&ta, "web").await;
    let mut a2 = srv.hello(&ta, "web").await;
    let conv = conversation(&mut a).await;
    for i in 0..2 {
        let rid = ask(&mut a, &conv, &format!("q{i}")).await;
        a.stream(&rid).await;
    }
    // The limit is per user: another connection of alice is limited too.
    let e = a2
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "q3"}),
        )
        .await;
    assert_eq!(e["payload"]["code"], "rate_limited", "{e}");
    assert_eq!(e["payload"]["action"], "send_message");
    let wait = e["payload"]["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 60_000, "{wait}");
    // Bob is not.
    let mut b = srv.hello(&tb, "web").await;
    let bconv = conversation(&mut b).await;
    let rid = ask(&mut b, &bconv, "hi").await;
    let frames = b.stream(&rid).await;
    assert_eq!(frames[0]["action"], "message_sent");
    // Nothing was stored for the refused message.
    let m = a
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    assert_eq!(m["payload"]["messages"].as_array().unwrap().len(), 4);

    // The per-connection limit of other actions (burst 30 here).
    let mut limited = None;
    for i in 0..40 {
        let r = a2.request("ping", json!({})).await;
        if r["action"] == "error" {
            limited = Some((i, r));
            break;
        }
    }
    let (i, r) = limited.expect("the burst runs out");
    assert!(i >= 20, "generous: {i}");
    assert_eq!(r["payload"]["code"], "rate_limited");
    assert_eq!(r["payload"]["action"], "ping");
    // Other connections have their own budget.
    b.assert_quiet().await;
}

#[tokio::test]
async fn jobs_per_connection_are_bounded() {
    let llm = FakeLlm::new("stuck", Mode::Stall(vec!["..".into()]));
    let srv = TestServer::start_with(
        engines(vec![llm]),
        ServerOptions {
            max_jobs_per_connection: 1,
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;
    let conv = conversation(&mut c).await;
    let rid = ask(&mut c, &conv, "one").await;
    assert_eq!(c.reply_to(&rid).await["action"], "message_sent");
    let e = c
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "two"}),
        )
        .await;
    assert_eq!(e["payload"]["code"], "rate_limited");
    assert!(e["payload"]["retry_after_ms"].as_u64().is_some());
}

#[tokio::test]
async fn a_slow_reader_is_disconnected_and_never_stalls_others() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut writer = srv.hello(&t, "web").await;
    let mut slow = srv.connect_small_buffer(&t).await;
    slow.send(json!({"action": "hello", "request_id": "h", "payload": {"protocol": 2, "client_id": "slow", "client_kind": "web"}}))
        .await;
    let tb = srv.token("bob").await;
    let mut bob = srv.hello(&tb, "web").await;
    srv.wait_connections(3).await;
    let conv = conversation(&mut writer).await;
    // `slow` never reads again. Each batch notifies it 200 big messages.
    let text = "lorem ipsum ".repeat(330);
    let mut dropped = false;
    for _ in 0..60 {
        let batch: Vec<Value> = (0..200)
            .map(|_| json!({"id": new_id(), "conversation_id": conv, "role": "user", "content": text}))
            .collect();
        let r = writer
            .request("append_messages", json!({"messages": batch}))
            .await;
        assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 200);
        // The writer and bob are answered at once, whatever `slow` does.
        bob.assert_quiet().await;
        if health(srv.addr).await.1["connections"] == 2 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the slow reader was disconnected");
    // What `slow` finally reads ends with the close (1013), or a reset.
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, slow.ws.next()).await {
        match msg {
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert!(matches!(code, Some(1013) | None), "{code:?}");
    writer.assert_quiet().await;
}

#[tokio::test]
async fn silent_peers_are_pinged_then_dropped() {
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            ping_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(1500),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut lively = srv.hello(&t, "web").await;
    let mut silent = srv.hello(&t, "web").await;
    // `lively` talks every 200 ms for 2 s; `silent` reads nothing (so it
    // answers no ping) and is dropped.
    for _ in 0..10 {
        lively.assert_quiet().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut pings = 0;
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, silent.ws.next()).await {
        match msg {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                silent.finish().await;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(pings > 0, "the server pings");
    assert_eq!(code, Some(1001));
    lively.assert_quiet().await;
}

#[tokio::test]
async fn max_connections_are_enforced_with_503() {
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            max_connections: 2,
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let a = srv.hello(&t, "web").await;
    let _b = srv.hello(&t, "web").await;
    assert_eq!(
        srv.try_connect(Some(&format!("Bearer {t}")), None).await,
        Err(503)
    );
    drop(a);
    srv.wait_connections(1).await;
    let mut c = srv.hello(&t, "web").await;
    c.assert_quiet().await;
}

#[tokio::test]
async fn a_retry_during_a_running_reply_waits_for_it() {
    let llm = FakeLlm::new("slow", slow_tokens(10, 20));
    let srv = TestServer::start(engines(vec![llm.clone()])).await;
    let t = srv.token("alice").await;
    let mut first = srv.hello(&t, "voice").await;
    let mut second = srv.hello(&t, "voice").await;
    let conv = conversation(&mut first).await;
    assert_eq!(second.recv().await["action"], "conversation_created");
    let mid = new_id();
    let payload = json!({"id": mid, "conversation_id": conv, "content": "once"});
    first
        .send(json!({"action": "send_message", "request_id": "a", "payload": payload}))
        .await;
    assert_eq!(first.reply_to("a").await["action"], "message_sent");
    second
        .send(json!({"action": "send_message", "request_id": "b", "payload": payload}))
        .await;
    let s = second.reply_to("b").await;
    assert_eq!(
        (s["action"].as_str(), s["payload"]["duplicate"].as_bool()),
        (Some("message_sent"), Some(true))
    );
    let f = second.reply_to("b").await;
    assert_eq!(f["action"], "message_stream");
    assert_eq!(f["payload"]["finished"], true);
    let expected: String = (0..10).map(|i| format!("w{i} ")).collect();
    assert_eq!(f["payload"]["token"], expected.as_str());
    let frames = first.stream("a").await;
    assert_eq!(
        frames[frames.len() - 2]["payload"]["message"],
        f["payload"]["message"]
    );
    assert_eq!(llm.calls(), 1, "asked once");
}

#[tokio::test]
async fn shutdown_lets_streams_finish_stores_them_and_closes_with_1001() {
    let llm = FakeLlm::new("slow", slow_tokens(10, 30));
    let srv = TestServer::start_with(
        engines(vec![llm]),
        ServerOptions {
            shutdown_grace: Duration::from_secs(30),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;
    let mut idle = srv.hello(&t, "web").await;
    let conv = conversation(&mut c).await;
    let rid = ask(&mut c, &conv, "story").await;
    loop {
        if c.reply_to(&rid).await["action"] == "message_stream" {
            break;
        }
    }
    let store = srv.store();
    let stopping = tokio::spawn(srv.stop());
    // The stream runs to its end, then the connection is closed with 1001.
    let frames = c.stream(&rid).await;
    let last = &frames[frames.len() - 2]["payload"];
    let expected: String = (0..10).map(|i| format!("w{i} ")).collect();
    assert_eq!(last["message"]["content"], expected.as_str());
    assert!(last.get("interrupted").is_none());
    assert_eq!(c.close_code().await, Some(1001));
    assert_eq!(idle.close_code().await, Some(1001));
    stopping.await.unwrap();
    // Stored before `run` returned.
    let u = store.user_id("alice").await.unwrap();
    let (msgs, _) = store
        .messages(u, &conv, 10, None, pichat::serverdb::everything())
        .await
        .unwrap();
    assert_eq!(msgs.len(), 2);
}

#[tokio::test]
async fn shutdown_cuts_streams_after_the_grace_and_stores_what_came() {
    let llm = FakeLlm::new("stuck", Mode::Stall(vec!["so ".into(), "far".into()]));
    let srv = TestServer::start_with(
        engines(vec![llm]),
        ServerOptions {
            shutdown_grace: Duration::from_millis(200),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;
    let conv = conversation(&mut c).await;
    let rid = ask(&mut c, &conv, "q").await;
    let mut tokens = 0;
    while tokens < 2 {
        if c.reply_to(&rid).await["action"] == "message_stream" {
            tokens += 1;
        }
    }
    let store = srv.store();
    let stopping = tokio::spawn(srv.stop());
    let frames = c.stream(&rid).await;
    let last = &frames[frames.len() - 2]["payload"];
    assert_eq!(
        (
            last["interrupted"].as_bool(),
            last["message"]["content"].as_str()
        ),
        (Some(true), Some("so far"))
    );
    assert_eq!(c.close_code().await, Some(1001));
    stopping.await.unwrap();
    let u = store.user_id("alice").await.unwrap();
    let (msgs, _) = store
        .messages(u, &conv, 10, None, pichat::serverdb::everything())
        .await
        .unwrap();
    assert_eq!(msgs.len(), 2);
}

/// A raw request to /ws with these extra headers (and a valid token).
async fn upgrade_with(srv: &TestServer, version: &str, token: &str, headers: &str) -> (u16, Value) {
    let (status, body) = http(
        srv.addr,
        &format!("GET /ws {version}\r\nHost: t\r\nAuthorization: Bearer {token}\r\n{headers}\r\n"),
    )
    .await;
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON body: {status} {body:?}"));
    (status, v)
}

#[tokio::test]
async fn malformed_upgrades_get_400_with_a_reason() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut ok = srv.hello(&t, "web").await;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let up = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let cases = [
        (
            "HTTP/1.1",
            format!("{up}Sec-WebSocket-Version: 13\r\n"),
            "Sec-WebSocket-Key is missing",
        ),
        (
            "HTTP/1.1",
            format!("{up}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"),
            "Sec-WebSocket-Key must be 16 bytes",
        ),
        (
            "HTTP/1.1",
            format!("{up}Sec-WebSocket-Version: 8\r\n{key}"),
            "Sec-WebSocket-Version must be 13",
        ),
        (
            "HTTP/1.1",
            format!("{up}{key}"),
            "Sec-WebSocket-Version must be 13 (got none)",
        ),
        (
            "HTTP/1.0",
            format!("{up}Sec-WebSocket-Version: 13\r\n{key}"),
            "needs HTTP/1.1",
        ),
        (
            "HTTP/1.1",
            format!("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}"),
            "`Connection: Upgrade` is missing",
        ),
    ];
    for (version, headers, reason) in cases {
        let (status, v) = upgrade_with(&srv, version, &t, &headers).await;
        assert_eq!(status, 400, "{version} {headers}: {v}");
        assert_eq!(v["error"], "bad_request");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains(reason), "{headers}: {m}");
    }
    // The wrong version is answered with the one spoken here.
    let raw = http_raw(
        srv.addr,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n{up}Sec-WebSocket-Version: 8\r\n{key}\r\n"
        ),
    )
    .await;
    assert!(
        raw.to_ascii_lowercase()
            .contains("\r\nsec-websocket-version: 13\r\n"),
        "{raw}"
    );
    // An over-long request head: 431.
    let big = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "x".repeat(9000)
    );
    assert_eq!(http(srv.addr, &big).await.0, 431);
    // The client that was already connected is served as before.
    ok.assert_quiet().await;
    let mut again = srv.hello(&t, "web").await;
    again.assert_quiet().await;
}

#[tokio::test]
async fn unauthenticated_sockets_have_their_own_places() {
    // Two connection places; three handshake places, two per address.
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            max_connections: 2,
            max_handshakes: 3,
            max_handshakes_per_address: 2,
            header_timeout: Duration::from_secs(60),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    // Sockets that never finish their head, from other clients.
    let mut s1 = slow_head(srv.addr, "127.0.0.2").await;
    let mut s2 = slow_head(srv.addr, "127.0.0.2").await;
    // One past the per-address limit: closed at once.
    let mut s3 = slow_head(srv.addr, "127.0.0.2").await;
    assert!(
        closed_by_server(&mut s3).await,
        "over the per-address limit"
    );
    let mut s4 = slow_head(srv.addr, "127.0.0.3").await;
    // All three places are taken; a real client still gets in (the oldest
    // slow socket makes room) and both connection places are free for it.
    let mut a = srv.hello(&t, "web").await;
    assert!(closed_by_server(&mut s1).await, "the oldest made room");
    // `a` is upgraded: its handshake place is free again, for `s5`.
    let mut s5 = slow_head(srv.addr, "127.0.0.4").await;
    let mut b = srv.hello(&t, "web").await;
    assert!(closed_by_server(&mut s2).await, "the next oldest made room");
    assert!(still_open(&mut s4).await);
    assert!(still_open(&mut s5).await);
    a.assert_quiet().await;
    b.assert_quiet().await;
    // The connection places are what max_connections says.
    assert_eq!(
        srv.try_connect(Some(&format!("Bearer {t}")), None).await,
        Err(503)
    );
}

#[tokio::test]
async fn a_request_head_not_sent_in_time_is_closed() {
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            header_timeout: Duration::from_millis(300),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut slow = slow_head(srv.addr, "127.0.0.2").await;
    let mut silent = tcp_from(srv.addr, "127.0.0.3").await;
    assert!(closed_by_server(&mut slow).await);
    assert!(closed_by_server(&mut silent).await);
    // A head sent at once is answered; a client is served.
    assert_eq!(health(srv.addr).await.0, 200);
    srv.hello(&t, "web").await.assert_quiet().await;
}

#[tokio::test]
async fn connections_per_user_are_capped_with_429() {
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            max_connections_per_user: 2,
            ..options()
        },
    )
    .await;
    let (ta, ta2, tb) = (
        srv.token("alice").await,
        srv.token("alice").await,
        srv.token("bob").await,
    );
    let a1 = srv.hello(&ta, "web").await;
    let mut a2 = srv.hello(&ta2, "voice").await;
    // One past the limit, whichever of the user's tokens: 429, with the reason.
    assert_eq!(
        srv.try_connect(Some(&format!("Bearer {ta}")), None).await,
        Err(429)
    );
    let (status, body) = http(srv.addr, &format!("GET /ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ta2}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")).await;
    assert_eq!(status, 429);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "rate_limited");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("max_connections_per_user"),
        "{v}"
    );
    // Other users are not limited by alice's connections.
    let mut b = srv.hello(&tb, "web").await;
    b.assert_quiet().await;
    a2.assert_quiet().await;
    // A place given back is a place again.
    drop(a1);
    srv.wait_connections(2).await;
    srv.hello(&ta, "web").await.assert_quiet().await;
}

#[tokio::test]
async fn a_revoked_tokens_connections_close_within_the_ping_interval() {
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            ping_interval: Duration::from_millis(200),
            ..options()
        },
    )
    .await;
    let (revoked, kept, bob) = (
        srv.token("alice").await,
        srv.token("alice").await,
        srv.token("bob").await,
    );
    let mut r1 = srv.hello(&revoked, "voice").await;
    let mut r2 = srv.connect(&revoked).await;
    let mut k = srv.hello(&kept, "web").await;
    let mut b = srv.hello(&bob, "web").await;
    let id = srv
        .store()
        .tokens()
        .await
        .unwrap()
        .iter()
        .find(|t| t.user == "alice")
        .unwrap()
        .id;
    srv.store().revoke_token(id).await.unwrap();
    assert_eq!(r1.close_code().await, Some(1008));
    assert_eq!(r2.close_code().await, Some(1008));
    // The user's other token and other users go on.
    k.assert_quiet().await;
    b.assert_quiet().await;
    assert_eq!(
        srv.try_connect(Some(&format!("Bearer {revoked}")), None)
            .await,
        Err(401)
    );
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_protocol_violations_with_1002() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut bystander = srv.hello(&t, "web").await;

    // A text frame that is not UTF-8: an error frame, then 1007.
    let mut c = raw_ws(srv.addr, &t).await;
    write_frame(&mut c, b"{\"action\":\"ping\",\"x\":\"\xff\xfe\"}").await;
    let (op, payload) = read_frame(&mut c).await.unwrap();
    assert_eq!(op, 0x1);
    let e: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(e["payload"]["code"], "bad_request", "{e}");
    assert_eq!(raw_close_code(&mut c).await, Some(1007));

    // An unmasked client frame, and a frame with a reserved bit: 1002.
    for (masked, rsv1) in [(false, false), (true, true)] {
        use tokio::io::AsyncWriteExt;
        let mut c = raw_ws(srv.addr, &t).await;
        let body = br#"{"action":"ping"}"#;
        let mut f = frame_header(0x1, body.len(), masked, rsv1);
        f.extend_from_slice(body);
        c.write_all(&f).await.unwrap();
        assert_eq!(
            raw_close_code(&mut c).await,
            Some(1002),
            "masked {masked}, rsv1 {rsv1}"
        );
    }
    // An unknown opcode too.
    {
        use tokio::io::AsyncWriteExt;
        let mut c = raw_ws(srv.addr, &t).await;
        c.write_all(&frame_header(0x3, 0, true, false))
            .await
            .unwrap();
        assert_eq!(raw_close_code(&mut c).await, Some(1002));
    }
    bystander.assert_quiet().await;
}

#[tokio::test]
async fn a_frame_not_received_in_time_is_closed_with_1008() {
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            frame_timeout: Duration::from_millis(500),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut bystander = srv.hello(&t, "web").await;
    // A frame whose whole arrives in time is served, however it is split.
    let mut c = raw_ws(srv.addr, &t).await;
    let body = br#"{"action":"ping","request_id":"p"}"#;
    let mut f = frame_header(0x1, body.len(), true, false);
    f.extend_from_slice(body);
    let (first, rest) = f.split_at(10);
    c.write_all(first).await.unwrap();
    c.write_all(rest).await.unwrap();
    let (_, pong) = read_frame(&mut c).await.unwrap();
    assert!(String::from_utf8_lossy(&pong).contains("pong"));
    // Half a frame, then nothing: closed with 1008 after the deadline.
    c.write_all(&frame_header(0x1, 100_000, true, false))
        .await
        .unwrap();
    c.write_all(&[b' '; 50_000]).await.unwrap();
    assert_eq!(raw_close_code(&mut c).await, Some(1008));
    bystander.assert_quiet().await;
}

#[tokio::test]
async fn frames_in_progress_share_the_read_budget() {
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            read_budget_bytes: 512 * 1024,
            frame_timeout: Duration::from_secs(60),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut bystander = srv.hello(&t, "web").await;
    let ping = |id: &str, pad: usize| {
        format!(
            r#"{{"action":"ping","request_id":"{id}","payload":{{"pad":"{}"}}}}"#,
            "x".repeat(pad)
        )
    };
    // `a` sends the first 300 KiB fragment of a 400 KiB message, then a
    // ping: its pong says the server has read the fragment (and holds most
    // of the budget for it).
    let mut a = raw_ws(srv.addr, &t).await;
    let big = ping("a", 400 * 1024);
    let (first, rest) = big.as_bytes().split_at(300 * 1024);
    let mut f = frame_header(0x1, first.len(), true, false);
    f[0] &= 0x7f; // not the last fragment
    f.extend_from_slice(first);
    f.extend_from_slice(&frame_header(0x9, 0, true, false));
    a.write_all(&f).await.unwrap();
    let (op, _) = read_frame(&mut a).await.unwrap();
    assert_eq!(op, 0xA, "the pong");
    // `b`'s 250 KiB frame does not fit in what is left: after a short wait
    // it is closed with 1013 (the server is busy), with no reply.
    let mut b = srv.connect(&t).await;
    b.send_text(ping("b", 250 * 1024)).await;
    assert_eq!(b.close_code().await, Some(1013));
    assert!(b.pending.is_empty(), "{:?}", b.pending);
    // Small frames need no budget; `a` is served once its message is whole.
    bystander.assert_quiet().await;
    let mut f = frame_header(0x0, rest.len(), true, false);
    f.extend_from_slice(rest);
    a.write_all(&f).await.unwrap();
    let (_, pong) = read_frame(&mut a).await.unwrap();
    assert!(String::from_utf8_lossy(&pong).contains(r#""request_id":"a""#));
    // The budget is free again.
    let mut c = srv.connect(&t).await;
    let r = c
        .request("ping", json!({"pad": "x".repeat(250 * 1024)}))
        .await;
    assert_eq!(r["action"], "pong");
}

/// A conversation whose `sync` page is ~200 KiB.
async fn large_history(c: &mut Client) {
    let conv = conversation(c).await;
    let text = "lorem ipsum ".repeat(170);
    let batch: Vec<Value> = (0..100)
        .map(|_| json!({"id": new_id(), "conversation_id": conv, "role": "user", "content": text}))
        .collect();
    let r = c
        .request("append_messages", json!({"messages": batch}))
        .await;
    assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn a_client_reading_slowly_is_not_dropped() {
    use tokio::io::AsyncReadExt;
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            send_queue_bytes: 64 * 1024,
            send_timeout: Duration::from_millis(300),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;
    // Eight 1 MiB pages asked for at once: more than the socket buffers
    // hold, so the slow reader takes well over `send_timeout` to get them.
    let conv = conversation(&mut c).await;
    let text = "lorem ipsum ".repeat(500);
    for _ in 0..2 {
        let batch: Vec<Value> = (0..143)
            .map(|_| json!({"id": new_id(), "conversation_id": conv, "role": "user", "content": text}))
            .collect();
        let r = c
            .request("append_messages", json!({"messages": batch}))
            .await;
        assert_eq!(r["payload"]["stored"].as_array().unwrap().len(), 143);
    }
    let mut slow = raw_ws_with_buffer(srv.addr, &t, 64 * 1024).await;
    let f = format!(
        r#"{{"action":"get_messages","request_id":"m","payload":{{"conversation_id":"{conv}","limit":1000}}}}"#
    );
    for _ in 0..8 {
        write_frame(&mut slow, f.as_bytes()).await;
    }
    // Read 64 KiB every 20 ms: the socket takes bytes all along.
    let mut buf = Vec::new();
    let mut pages = 0;
    while pages < 8 {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(WAIT, slow.read(&mut chunk))
            .await
            .expect("bytes within the wait")
            .unwrap();
        assert!(n > 0, "closed after {pages} pages");
        buf.extend_from_slice(&chunk[..n]);
        // The whole frames at the front of `buf`.
        while buf.len() >= 2 {
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < at + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..at + len).collect();
            assert_eq!(frame[0] & 0x0f, 0x1, "a text frame, not a close");
            let reply: Value = serde_json::from_slice(&frame[at..]).unwrap();
            assert_eq!(reply["action"], "messages_list", "{reply}");
            assert!(reply["payload"]["messages"].as_array().unwrap().len() > 100);
            pages += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still connected, and served.
    write_frame(&mut slow, br#"{"action":"ping","request_id":"p"}"#).await;
    let (_, pong) = read_frame(&mut slow).await.unwrap();
    assert!(String::from_utf8_lossy(&pong).contains("pong"));
    c.assert_quiet().await;
}

#[tokio::test]
async fn a_client_that_never_reads_its_pages_is_dropped_with_1013() {
    let srv = TestServer::start_with(
        engines(vec![]),
        ServerOptions {
            send_queue_bytes: 64 * 1024,
            send_timeout: Duration::from_millis(500),
            ..options()
        },
    )
    .await;
    let t = srv.token("alice").await;
    let mut healthy = srv.hello(&t, "web").await;
    large_history(&mut healthy).await;
    // 40 pages asked for (8 MiB of replies), none read.
    let mut greedy = srv.connect_small_buffer(&t).await;
    srv.wait_connections(2).await;
    for i in 0..40 {
        greedy
            .send(json!({"action": "sync", "request_id": format!("s{i}"), "payload": {"since": 0}}))
            .await;
    }
    // It is dropped; the healthy client is served all along.
    let mut dropped = false;
    for _ in 0..100 {
        healthy.assert_quiet().await;
        if health(srv.addr).await.1["connections"] == 1 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the client that does not read was disconnected");
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, greedy.ws.next()).await {
        match msg {
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert!(matches!(code, Some(1013) | None), "{code:?}");
    let s = healthy.request("sync", json!({"since": 0})).await;
    assert_eq!(s["action"], "sync_batch");
}

/// The config of the server processes below: defaults, but a log on stderr
/// at `info`, and room for many connections of one user.
const PROCESS_CONFIG: &str =
    "[log]\nlevel = \"info\"\nformat = \"human\"\n\n[server]\nmax_connections_per_user = 100000\n";

#[tokio::test]
async fn connections_fit_in_a_lowered_open_files_limit() {
    // Soft 128, hard 256: the server raises its soft limit to 256, then
    // fits its limits in it: 256 - 64 kept = 192, 24 handshake places, 168
    // connections (the config asks for 10,000).
    let srv = ServerProcess::start(PROCESS_CONFIG, Some((128, 256))).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files, ["256", "256"], "{limits}");
    srv.wait_log("the open-files limit is 256: server.max_connections lowered from 10000 to 168")
        .await;
    let t = srv.token("alice", Some("laptop"));
    let mut held = Vec::new();
    for _ in 0..168 {
        held.push(srv.connect(&t).await.expect("a place"));
    }
    // One past the fitted limit: a clean 503, and /health still answers.
    assert_eq!(srv.connect(&t).await.err(), Some(503));
    let (status, h) = health(srv.addr).await;
    assert_eq!((status, h["connections"].as_u64()), (200, Some(168)));
    held[0].assert_quiet().await;
    held.pop();
    let mut again = loop {
        match srv.connect(&t).await {
            Ok(c) => break c,
            Err(503) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    };
    again.assert_quiet().await;

    // Out of descriptors anyway (the limit lowered under the running
    // server): accept fails; the server backs off and logs it once a
    // second at most, instead of ten lines a second, and recovers.
    let lowered = libc::rlimit {
        rlim_cur: 100,
        rlim_max: 256,
    };
    // SAFETY: prlimit on our own child, with a struct we own.
    let r = unsafe {
        libc::prlimit(
            srv.pid(),
            libc::RLIMIT_NOFILE,
            &lowered,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let mut waiting = Vec::new();
    for _ in 0..20 {
        waiting.push(tokio::net::TcpStream::connect(srv.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures = srv.log().matches("accept failed").count();
    assert!(
        (1..=5).contains(&failures),
        "{failures} lines:\n{}",
        srv.log()
    );
    let raised = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: as above.
    unsafe {
        libc::prlimit(
            srv.pid(),
            libc::RLIMIT_NOFILE,
            &raised,
            std::ptr::null_mut(),
        );
    }
    drop(waiting);
    held[1].assert_quiet().await;
    assert_eq!(health(srv.addr).await.0, 200);
    drop(held);
    drop(again);
    srv.stop().await;
}

#[tokio::test]
async fn security_events_are_audited_and_repeated_ones_summarized() {
    let srv = ServerProcess::start(PROCESS_CONFIG, None).await;
    let t = srv.token("alice", Some("kitchen-pi"));
    // 200 refused upgrades from one address: one line, then a summary.
    for _ in 0..200 {
        assert_eq!(srv.connect("pct_wrong").await.err(), Some(401));
    }
    // Meanwhile a real client is served; its first use from this address
    // is audited with its user and device.
    let mut c = srv.connect(&t).await.unwrap();
    c.assert_quiet().await;
    // A token added while the server runs, used at once.
    let t2 = srv.token("bob", None);
    srv.connect(&t2).await.unwrap().assert_quiet().await;
    drop(c);
    let log = srv.stop().await;
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("event=auth_refused"))
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(
        refused[0]
            .contains(r#"user="-" device="-" addr=127.0.0.1 reason="unknown or revoked token""#),
        "{}",
        refused[0]
    );
    assert!(
        refused[1].contains("repeated=199 window_s=60"),
        "{}",
        refused[1]
    );
    assert!(
        log.lines().any(|l| l.contains("event=new_address")
            && l.contains(r#"user="alice" device="kitchen-pi" addr=127.0.0.1"#)),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("event=token_added") && l.contains(r#"user="bob""#)),
        "{log}"
    );
    assert!(!log.contains("refused a connection from"), "{log}");
}
