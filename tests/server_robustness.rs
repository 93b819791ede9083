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
    let id = srv
        .db(|s| Ok(s.server().tokens()?.last().unwrap().id))
        .await;
    srv.db(move |s| s.server().revoke_token(id).map(|_| ()))
        .await;
    assert_eq!(
        srv.try_connect(Some(&format!("Bearer {t}")), None).await,
        Err(401)
    );

    let (status, h) = health(srv.addr).await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_s"].as_u64().is_some());
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
    let handle = srv.handle.clone();
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
    let n = handle
        .call(move |s| {
            let u = s.server().user_id("alice")?;
            Ok(s.server().messages(u, &conv, 10, None)?.0.len())
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
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
    let handle = srv.handle.clone();
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
    let n = handle
        .call(move |s| {
            let u = s.server().user_id("alice")?;
            Ok(s.server().messages(u, &conv, 10, None)?.0.len())
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
}
