//! Every action of the protocol against the real server over real
//! WebSockets on 127.0.0.1, with a real SQLite file; users never see each
//! other's data; notifications reach only the same user's other connections.

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use pichat::config::{EngineConfig, EngineKind};
use pichat::engines::{Engines, Llm, SpeechToText, TextToSpeech};
use serde_json::{Value, json};
use server_support::*;

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn hello_welcome_and_ping() {
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["hi"])])).await;
    let t = srv.token("alice").await;
    let mut c = srv.connect(&t).await;
    let w = c
        .request(
            "hello",
            json!({"protocol": 2, "client_id": "pi-1", "client_kind": "voice", "last_rev": 0}),
        )
        .await;
    assert_eq!(w["action"], "welcome");
    assert_eq!(w["payload"]["protocol"], 2);
    assert_eq!(w["payload"]["rev"], 0);
    let features = ids(&w["payload"]["features"]);
    assert!(features.contains(&"sync".to_string()), "{features:?}");
    assert!(features.contains(&"ai_replies".to_string()));
    assert!(
        !features.contains(&"text_to_speech".to_string()),
        "no TTS engine"
    );
    let time = w["payload"]["server_time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == 24, "{time}");
    // The models settings and conversations may name: the engines, in order.
    assert_eq!(
        w["payload"]["models"],
        json!([{"engine": "fake", "model": "fake-model"}])
    );

    let p = c.request("ping", json!({})).await;
    assert_eq!(p["action"], "pong");
    assert!(pichat::time::parse(p["payload"]["server_time"].as_str().unwrap()).is_ok());
    // A ping without payload nor request id is answered too.
    c.send(json!({"action": "ping"})).await;
    let p = c.recv().await;
    assert_eq!(p["action"], "pong");
    assert!(p.get("request_id").is_none(), "{p}");
    // Wrong protocol version.
    let e = c
        .request(
            "hello",
            json!({"protocol": 1, "client_id": "x", "client_kind": "web"}),
        )
        .await;
    assert_eq!(
        (e["action"].as_str(), e["payload"]["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    assert_eq!(e["payload"]["action"], "hello");
}

#[tokio::test]
async fn conversations_say_where_their_messages_came_from() {
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["hi"])])).await;
    let t = srv.token("alice").await;
    let mut pi = srv.hello(&t, "voice").await;
    let mut web = srv.hello(&t, "web").await;
    let c = web
        .request("create_conversation", json!({"title": "Marks"}))
        .await;
    let id = c["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // No messages: no origins (the field is left out).
    assert!(c["payload"]["conversation"].get("origins").is_none(), "{c}");
    let mid = "018f0000-0000-7000-8000-000000000001";
    let r = pi
        .request(
            "append_messages",
            json!({"messages": [{"id": mid, "conversation_id": id, "role": "user", "content": "spoken"}]}),
        )
        .await;
    assert_eq!(r["action"], "messages_appended", "{r}");
    let got = web.request("get_conversation", json!({"id": id})).await;
    assert_eq!(got["payload"]["conversation"]["origins"], json!(["voice"]));
    let r = web
        .request(
            "append_messages",
            json!({"messages": [{"id": "018f0000-0000-7000-8000-000000000002", "conversation_id": id, "role": "user", "content": "typed"}]}),
        )
        .await;
    assert_eq!(r["action"], "messages_appended", "{r}");
    let list = web.request("get_conversations", json!({})).await;
    assert_eq!(
        list["payload"]["conversations"][0]["origins"],
        json!(["voice", "web"])
    );
}

#[tokio::test]
async fn conversations_create_get_update_list_delete() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;

    let id = new_id();
    let r = c
        .request(
            "create_conversation",
            json!({"id": id, "title": "  Trip to Paris  ", "model_id": "fake"}),
        )
        .await;
    assert_eq!(r["action"], "conversation_created", "{r}");
    let conv = &r["payload"]["conversation"];
    assert_eq!(conv["id"], id.as_str());
    assert_eq!(conv["title"], "Trip to Paris");
    assert_eq!(
        (conv["rev"].as_i64(), conv["deleted"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(conv["message_count"], 0);
    assert!(conv["last_message_at"].is_null());
    assert!(r["payload"].get("duplicate").is_none());

    // Idempotent: the same id again creates nothing and changes no rev.
    let again = c
        .request("create_conversation", json!({"id": id, "title": "Other"}))
        .await;
    assert_eq!(again["payload"]["duplicate"], true);
    assert_eq!(again["payload"]["conversation"]["title"], "Trip to Paris");
    assert_eq!(again["payload"]["conversation"]["rev"], 1);

    // Server-made id and default title.
    let r2 = c.request("create_conversation", json!({})).await;
    let id2 = r2["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r2["payload"]["conversation"]["title"], "New conversation");
    assert!(uuid::Uuid::parse_str(&id2).is_ok());

    let g = c.request("get_conversation", json!({"id": id})).await;
    assert_eq!(g["action"], "conversation");
    assert_eq!(g["payload"]["conversation"]["model_id"], "fake");

    let u = c
        .request(
            "update_conversation",
            json!({"id": id, "title": "Paris", "archived": true, "model_id": null}),
        )
        .await;
    assert_eq!(u["action"], "conversation_updated");
    let uc = &u["payload"]["conversation"];
    assert_eq!(
        (uc["title"].as_str(), uc["archived"].as_bool()),
        (Some("Paris"), Some(true))
    );
    assert!(uc["model_id"].is_null());
    assert_eq!(uc["rev"], 3);

    // The default list hides archived conversations.
    let l = c.request("get_conversations", json!({})).await;
    let list = l["payload"]["conversations"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id2.as_str());
    let l = c
        .request(
            "get_conversations",
            json!({"include_archived": true, "limit": 1}),
        )
        .await;
    assert_eq!(l["payload"]["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(l["payload"]["has_more"], true);
    let first = l["payload"]["conversations"][0]["id"].clone();
    let l2 = c
        .request(
            "get_conversations",
            json!({"include_archived": true, "limit": 1, "before": first}),
        )
        .await;
    assert_eq!(l2["payload"]["has_more"], false);
    assert_ne!(l2["payload"]["conversations"][0]["id"], first);

    let d = c.request("delete_conversation", json!({"id": id})).await;
    assert_eq!(d["action"], "conversation_deleted");
    assert_eq!(
        (d["payload"]["id"].as_str(), d["payload"]["rev"].as_i64()),
        (Some(id.as_str()), Some(4))
    );
    let d2 = c.request("delete_conversation", json!({"id": id})).await;
    assert_eq!(d2["payload"]["duplicate"], true);
    assert_eq!(d2["payload"]["rev"], 4);

    for (action, payload) in [
        ("get_conversation", json!({"id": id})),
        ("update_conversation", json!({"id": id, "title": "x"})),
        ("get_messages", json!({"conversation_id": id})),
        ("delete_conversation", json!({"id": new_id()})),
    ] {
        let e = c.request(action, payload).await;
        assert_eq!(e["payload"]["code"], "not_found", "{action}: {e}");
        assert_eq!(e["payload"]["action"], action);
    }
    // A deleted conversation's id is not reused.
    let e = c.request("create_conversation", json!({"id": id})).await;
    assert_eq!(e["payload"]["code"], "conflict");
}

#[tokio::test]
async fn send_message_streams_stores_and_retries() {
    let llm = FakeLlm::tokens(&["The ", "capital ", "is ", "Paris."]);
    let srv = TestServer::start(engines(vec![llm.clone()])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "voice").await;
    let conv = new_id();
    c.request("create_conversation", json!({"id": conv})).await;

    let mid = new_id();
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {
        "id": mid, "conversation_id": conv, "content": "What is the capital of France?", "is_audio": true}}))
        .await;
    let frames = c.stream(&rid).await;
    let actions: Vec<&str> = frames
        .iter()
        .map(|f| f["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "message_sent",
            "typing_indicator",
            "message_stream",
            "message_stream",
            "message_stream",
            "message_stream",
            "message_stream",
            "typing_indicator"
        ]
    );
    let sent = &frames[0]["payload"]["message"];
    assert_eq!(sent["id"], mid.as_str());
    assert_eq!(
        (
            sent["role"].as_str(),
            sent["origin"].as_str(),
            sent["is_audio"].as_bool()
        ),
        (Some("user"), Some("voice"), Some(true))
    );
    assert_eq!(frames[1]["payload"]["is_typing"], true);
    let stream: Vec<&Value> = frames[2..7].iter().map(|f| &f["payload"]).collect();
    let text: String = stream
        .iter()
        .map(|p| p["token"].as_str().unwrap())
        .collect();
    assert_eq!(text, "The capital is Paris.");
    for (i, p) in stream.iter().enumerate() {
        assert_eq!(p["seq"], i);
        assert_eq!(p["reply_to"], mid.as_str());
        assert_eq!(p["conversation_id"], conv.as_str());
        assert_eq!(p["message_id"], stream[0]["message_id"]);
        assert_eq!(p["finished"], i == 4);
    }
    let last = stream[4];
    let reply = &last["message"];
    assert_eq!(reply["content"], "The capital is Paris.");
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["reply_to"], mid.as_str());
    assert_eq!(reply["model_id"], "fake-model");
    assert_eq!(reply["tokens_used"], 3);
    assert!(reply["response_time_ms"].as_i64().is_some());
    assert_eq!(reply["id"], last["message_id"]);
    assert!(last.get("interrupted").is_none());
    assert_eq!(llm.calls(), 1);

    // Stored: oldest first.
    let m = c
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    let msgs = m["payload"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["id"], mid.as_str());
    assert_eq!(msgs[1]["content"], "The capital is Paris.");
    let g = c.request("get_conversation", json!({"id": conv})).await;
    assert_eq!(g["payload"]["conversation"]["message_count"], 2);

    // A retry re-sends the stored reply as one finished frame; no new LLM call.
    let rid = c.next_id();
    c.send(
        json!({"action": "send_message", "request_id": rid, "payload": {
        "id": mid, "conversation_id": conv, "content": "What is the capital of France?"}}),
    )
    .await;
    let s1 = c.reply_to(&rid).await;
    assert_eq!(
        (s1["action"].as_str(), s1["payload"]["duplicate"].as_bool()),
        (Some("message_sent"), Some(true))
    );
    let s2 = c.reply_to(&rid).await;
    assert_eq!(s2["action"], "message_stream");
    assert_eq!(
        (
            s2["payload"]["finished"].as_bool(),
            s2["payload"]["seq"].as_i64()
        ),
        (Some(true), Some(0))
    );
    assert_eq!(s2["payload"]["token"], "The capital is Paris.");
    assert_eq!(s2["payload"]["message"], *reply);
    assert_eq!(llm.calls(), 1);
    c.assert_quiet().await;

    // The same id with other content is a conflict; unknown conversation is not found.
    let e = c
        .request(
            "send_message",
            json!({"id": mid, "conversation_id": conv, "content": "something else"}),
        )
        .await;
    assert_eq!(e["payload"]["code"], "conflict");
    let e = c
        .request(
            "send_message",
            json!({"conversation_id": new_id(), "content": "hello?"}),
        )
        .await;
    assert_eq!(e["payload"]["code"], "not_found");
    assert_eq!(e["payload"]["action"], "send_message");
    assert_eq!(llm.calls(), 1);
}

#[tokio::test]
async fn the_llm_gets_the_personality_and_the_conversation() {
    let llm = FakeLlm::tokens(&["Arr."]);
    let srv = TestServer::start(engines(vec![llm.clone()])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;
    let conv = new_id();
    c.request("create_conversation", json!({"id": conv})).await;
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"conversation_id": conv, "content": "first question"}})).await;
    c.stream(&rid).await;
    c.request(
        "update_settings",
        json!({"assistant_personality": "You are a pirate."}),
    )
    .await;
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"conversation_id": conv, "content": "second question"}})).await;
    c.stream(&rid).await;
    let req = llm.last.lock().unwrap().clone().unwrap();
    let msgs: Vec<(String, String)> = req
        .messages
        .iter()
        .map(|m| (m.role.as_str().to_string(), m.content.clone()))
        .collect();
    assert_eq!(
        msgs,
        vec![
            ("system".into(), "You are a pirate.".into()),
            ("user".into(), "first question".into()),
            ("assistant".into(), "Arr.".into()),
            ("user".into(), "second question".into()),
        ]
    );
}

#[tokio::test]
async fn llm_fallback_then_ai_failed() {
    let down = FakeLlm::new("down", Mode::Down);
    let up = FakeLlm::new("up", Mode::Tokens(vec!["ok".into()], Duration::ZERO));
    let srv = TestServer::start(engines(vec![down.clone(), up.clone()])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;
    let conv = new_id();
    c.request("create_conversation", json!({"id": conv})).await;
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"conversation_id": conv, "content": "hi"}})).await;
    let frames = c.stream(&rid).await;
    let last = &frames[frames.len() - 2]["payload"];
    assert_eq!(last["message"]["model_id"], "up-model");
    assert_eq!((down.calls(), up.calls()), (1, 1));

    // The conversation's model goes first.
    c.request(
        "update_conversation",
        json!({"id": conv, "model_id": "up-model"}),
    )
    .await;
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"conversation_id": conv, "content": "again"}})).await;
    c.stream(&rid).await;
    assert_eq!((down.calls(), up.calls()), (1, 2));

    // Every engine down: ai_failed, and no assistant message stored.
    *up.mode.lock().unwrap() = Mode::Down;
    c.request("update_conversation", json!({"id": conv, "model_id": null}))
        .await;
    let mid = new_id();
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"id": mid, "conversation_id": conv, "content": "anyone?"}})).await;
    let frames = c.stream(&rid).await;
    let actions: Vec<&str> = frames
        .iter()
        .map(|f| f["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "message_sent",
            "typing_indicator",
            "error",
            "typing_indicator"
        ]
    );
    assert_eq!(frames[2]["payload"]["code"], "ai_failed");
    assert_eq!(frames[2]["payload"]["action"], "send_message");
    let m = c
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    let msgs = m["payload"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 5, "the question is kept, no reply");
    assert_eq!(msgs[4]["id"], mid.as_str());

    // Retrying the same message once an engine is back generates the reply.
    *up.mode.lock().unwrap() = Mode::Tokens(vec!["back".into()], Duration::ZERO);
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"id": mid, "conversation_id": conv, "content": "anyone?"}})).await;
    let frames = c.stream(&rid).await;
    assert_eq!(frames[0]["payload"]["duplicate"], true);
    assert_eq!(
        frames[frames.len() - 2]["payload"]["message"]["content"],
        "back"
    );
}

#[tokio::test]
async fn append_messages_stores_once_and_reports_each() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "voice").await;
    let conv = new_id();
    c.request("create_conversation", json!({"id": conv})).await;
    let q = new_id();
    let a = new_id();
    let msgs = json!([
        {"id": q, "conversation_id": conv, "role": "user", "content": "lights on", "created_at": "2026-11-20T09:15:02.123Z", "is_audio": true, "rev": 99, "unknown": 1},
        {"id": a, "conversation_id": conv, "role": "assistant", "content": "Done.", "created_at": "2026-11-20T09:15:03.000Z", "model_id": "smollm2", "tokens_used": 2, "response_time_ms": 800, "reply_to": q},
    ]);
    let r = c
        .request("append_messages", json!({"messages": msgs}))
        .await;
    assert_eq!(r["action"], "messages_appended", "{r}");
    assert_eq!(ids(&r["payload"]["stored"]), vec![q.clone(), a.clone()]);
    assert!(ids(&r["payload"]["duplicates"]).is_empty());
    assert_eq!(r["payload"]["rev"], 3);

    let bad_conv = new_id();
    let again = c
        .request(
            "append_messages",
            json!({"messages": [
                msgs[0],
                {"id": new_id(), "conversation_id": bad_conv, "role": "user", "content": "orphan"},
                {"id": a, "conversation_id": conv, "role": "assistant", "content": "changed"},
                {"id": new_id(), "conversation_id": conv, "role": "user", "content": "   "},
            ]}),
        )
        .await;
    let p = &again["payload"];
    assert_eq!(ids(&p["duplicates"]), vec![q.clone()]);
    assert!(ids(&p["stored"]).is_empty());
    let codes: Vec<&str> = p["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), 3);
    assert!(
        codes.contains(&"not_found")
            && codes.contains(&"conflict")
            && codes.contains(&"bad_request")
    );
    assert_eq!(p["rev"], 3, "nothing changed");

    let m = c
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    let list = m["payload"]["messages"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["created_at"], "2026-11-20T09:15:02.123Z");
    assert_eq!(
        (list[0]["origin"].as_str(), list[0]["is_audio"].as_bool()),
        (Some("voice"), Some(true)),
        "origin from hello's client_kind"
    );
    assert_eq!(list[1]["reply_to"], q.as_str());
    assert_eq!(list[1]["tokens_used"], 2);

    // Over 500 messages is refused whole.
    let many: Vec<Value> = (0..501)
        .map(|_| json!({"id": new_id(), "conversation_id": conv, "role": "user", "content": "x"}))
        .collect();
    let e = c
        .request("append_messages", json!({"messages": many}))
        .await;
    assert_eq!(e["payload"]["code"], "bad_request");
}

#[tokio::test]
async fn search_finds_the_users_messages() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "api").await;
    let (c1, c2) = (new_id(), new_id());
    c.request("create_conversation", json!({"id": c1, "title": "Travel"}))
        .await;
    c.request("create_conversation", json!({"id": c2})).await;
    c.request("append_messages", json!({"messages": [
        {"id": new_id(), "conversation_id": c1, "role": "user", "content": "What is the capital of France?"},
        {"id": new_id(), "conversation_id": c1, "role": "assistant", "content": "The capital of France is Paris."},
        {"id": new_id(), "conversation_id": c2, "role": "user", "content": "France again"},
    ]}))
    .await;
    let r = c
        .request("search", json!({"query": "capital france"}))
        .await;
    let hits = r["payload"]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| {
        let s = h["snippet"].as_str().unwrap();
        s.contains("[capital]") && s.contains("[France]")
    }));
    assert_eq!(hits[0]["conversation_title"], "Travel");
    let r = c
        .request(
            "search",
            json!({"query": "france", "conversation_id": c2, "limit": 5}),
        )
        .await;
    assert_eq!(r["payload"]["hits"].as_array().unwrap().len(), 1);
    let e = c.request("search", json!({"query": "  "})).await;
    assert_eq!(e["payload"]["code"], "bad_request");
    let e = c.request("search", json!({"query": "*** ..."})).await;
    assert_eq!(e["payload"]["code"], "bad_request");
}

#[tokio::test]
async fn settings_get_and_partial_update() {
    let srv = TestServer::start(engines(vec![])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "web").await;
    let s = c.request("get_settings", json!({})).await;
    assert_eq!(s["action"], "settings");
    assert_eq!(
        s["payload"]["settings"],
        json!({"selected_model": null, "voice_settings": {"gender": null, "accent": null, "speed": null}, "assistant_personality": null, "rev": 0})
    );
    let u = c
        .request(
            "update_settings",
            json!({"selected_model": "gpt", "voice_settings": {"gender": "female", "speed": 1.25}}),
        )
        .await;
    assert_eq!(u["action"], "settings_updated");
    let st = &u["payload"]["settings"];
    assert_eq!(
        (
            st["selected_model"].as_str(),
            st["voice_settings"]["gender"].as_str(),
            st["voice_settings"]["speed"].as_f64(),
            st["rev"].as_i64()
        ),
        (Some("gpt"), Some("female"), Some(1.25), Some(1))
    );
    // Partial: only what is named changes; null clears.
    let u = c
        .request(
            "update_settings",
            json!({"voice_settings": {"speed": null, "accent": "irish"}}),
        )
        .await;
    let st = &u["payload"]["settings"];
    assert_eq!(st["selected_model"], "gpt");
    assert_eq!(st["voice_settings"]["gender"], "female");
    assert_eq!(st["voice_settings"]["accent"], "irish");
    assert!(st["voice_settings"]["speed"].is_null());
    assert_eq!(st["rev"], 2);
    // No change: no new rev.
    let u = c
        .request("update_settings", json!({"selected_model": "gpt"}))
        .await;
    assert_eq!(u["payload"]["settings"]["rev"], 2);
    let e = c
        .request("update_settings", json!({"voice_settings": {"speed": 10}}))
        .await;
    assert_eq!(e["payload"]["code"], "bad_request");
    let e = c
        .request("update_settings", json!({"selected_model": 5}))
        .await;
    assert_eq!(e["payload"]["code"], "bad_request");
}

#[tokio::test]
async fn sync_returns_every_change_in_pages_with_tombstones() {
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["answer"])])).await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "voice").await;
    let (keep, gone) = (new_id(), new_id());
    c.request("create_conversation", json!({"id": keep})).await; // 1
    c.request("create_conversation", json!({"id": gone})).await; // 2
    let rid = c.next_id();
    c.send(json!({"action": "send_message", "request_id": rid, "payload": {"conversation_id": keep, "content": "q"}})).await;
    c.stream(&rid).await; // 3, 4
    c.request(
        "append_messages",
        json!({"messages": [
        {"id": new_id(), "conversation_id": gone, "role": "user", "content": "doomed"}]}),
    )
    .await; // 5
    c.request("update_settings", json!({"selected_model": "m"}))
        .await; // 6
    c.request("update_conversation", json!({"id": keep, "title": "Kept"}))
        .await; // 7
    c.request("delete_conversation", json!({"id": gone})).await; // 8

    let mut cursor = 0;
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let r = c
            .request("sync", json!({"since": cursor, "limit": 2}))
            .await;
        assert_eq!(r["action"], "sync_batch");
        let p = &r["payload"];
        all.extend(p["changes"].as_array().unwrap().iter().cloned());
        cursor = p["rev"].as_i64().unwrap();
        pages += 1;
        if p["has_more"] == false {
            break;
        }
    }
    assert!(pages >= 3, "paged");
    assert_eq!(cursor, 8);
    let w = c
        .request(
            "hello",
            json!({"protocol": 2, "client_id": "test", "client_kind": "voice"}),
        )
        .await;
    assert_eq!(w["payload"]["rev"], 8);
    // Every change once at its latest state (a conversation may come early,
    // ahead of its messages); the messages of the deleted one are gone.
    let summary: Vec<(i64, String, String)> = all
        .iter()
        .map(|ch| {
            (
                ch["rev"].as_i64().unwrap(),
                ch["entity"].as_str().unwrap().to_string(),
                ch["op"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut unique = summary.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique,
        vec![
            (3, "message".into(), "upsert".into()),
            (4, "message".into(), "upsert".into()),
            (6, "settings".into(), "upsert".into()),
            (7, "conversation".into(), "upsert".into()),
            (8, "conversation".into(), "delete".into()),
        ]
    );
    let kept = all.iter().find(|ch| ch["rev"] == 7).unwrap();
    assert_eq!(kept["record"]["title"], "Kept");
    let first_msg = all.iter().position(|ch| ch["entity"] == "message").unwrap();
    let first_conv = all
        .iter()
        .position(|ch| ch["entity"] == "conversation" && ch["record"]["id"] == keep.as_str())
        .unwrap();
    assert!(
        first_conv < first_msg,
        "the conversation comes before its messages"
    );
    let tomb = all.iter().find(|ch| ch["op"] == "delete").unwrap();
    assert_eq!(tomb["record"]["deleted"], true);
    assert_eq!(tomb["record"]["id"], gone.as_str());

    // Up to date: an empty page at the same cursor.
    let r = c.request("sync", json!({"since": 8})).await;
    assert_eq!(
        r["payload"],
        json!({"changes": [], "rev": 8, "has_more": false})
    );
    let e = c.request("sync", json!({"since": "8"})).await;
    assert_eq!(e["payload"]["code"], "bad_request");
    let e = c.request("sync", json!({})).await;
    assert_eq!(e["payload"]["code"], "bad_request");
}

#[tokio::test]
async fn two_users_never_see_each_others_data() {
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["x"])])).await;
    let (ta, tb) = (srv.token("alice").await, srv.token("bob").await);
    let mut a = srv.hello(&ta, "web").await;
    let mut b = srv.hello(&tb, "web").await;
    let conv = new_id();
    let msg = new_id();
    a.request(
        "create_conversation",
        json!({"id": conv, "title": "Alice's secrets"}),
    )
    .await;
    a.request(
        "append_messages",
        json!({"messages": [
        {"id": msg, "conversation_id": conv, "role": "user", "content": "my password hint"}]}),
    )
    .await;
    a.request(
        "update_settings",
        json!({"assistant_personality": "alice's"}),
    )
    .await;

    let l = b
        .request("get_conversations", json!({"include_archived": true}))
        .await;
    assert!(l["payload"]["conversations"].as_array().unwrap().is_empty());
    for (action, payload) in [
        ("get_conversation", json!({"id": conv})),
        ("update_conversation", json!({"id": conv, "title": "mine"})),
        ("delete_conversation", json!({"id": conv})),
        ("get_messages", json!({"conversation_id": conv})),
        (
            "search",
            json!({"query": "password", "conversation_id": conv}),
        ),
        (
            "send_message",
            json!({"conversation_id": conv, "content": "hi"}),
        ),
    ] {
        let e = b.request(action, payload).await;
        assert_eq!(e["payload"]["code"], "not_found", "{action}: {e}");
    }
    let s = b.request("search", json!({"query": "password"})).await;
    assert!(s["payload"]["hits"].as_array().unwrap().is_empty());
    let s = b.request("sync", json!({"since": 0})).await;
    assert!(s["payload"]["changes"].as_array().unwrap().is_empty());
    let st = b.request("get_settings", json!({})).await;
    assert!(st["payload"]["settings"]["assistant_personality"].is_null());
    // Alice's ids cannot be taken or probed.
    let e = b.request("create_conversation", json!({"id": conv})).await;
    assert_eq!(e["payload"]["code"], "conflict");
    let r = b
        .request(
            "append_messages",
            json!({"messages": [
            {"id": new_id(), "conversation_id": conv, "role": "user", "content": "intrusion"}]}),
        )
        .await;
    assert_eq!(r["payload"]["rejected"][0]["code"], "not_found");
    let e = b
        .request(
            "send_message",
            json!({"id": msg, "conversation_id": conv, "content": "my password hint"}),
        )
        .await;
    assert_eq!(e["payload"]["code"], "conflict");
    // Alice's data is intact.
    let m = a
        .request("get_messages", json!({"conversation_id": conv}))
        .await;
    assert_eq!(m["payload"]["messages"].as_array().unwrap().len(), 1);
    let g = a.request("get_conversation", json!({"id": conv})).await;
    assert_eq!(g["payload"]["conversation"]["title"], "Alice's secrets");
    a.assert_quiet().await;
    b.assert_quiet().await;
}

#[tokio::test]
async fn notifications_reach_only_the_users_other_hello_connections() {
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["Hello", "!"])])).await;
    let (ta, tb) = (srv.token("alice").await, srv.token("bob").await);
    let ta2 = srv.token("alice").await; // another device of alice
    let mut a1 = srv.hello(&ta, "web").await;
    let mut a2 = srv.hello(&ta2, "voice").await;
    let mut a3 = srv.connect(&ta).await; // no hello: no notifications
    let mut b1 = srv.hello(&tb, "web").await;

    let conv = new_id();
    let r = a1.request("create_conversation", json!({"id": conv})).await;
    let n = a2.recv().await;
    assert_eq!(n["action"], "conversation_created");
    assert!(n.get("request_id").is_none(), "{n}");
    assert_eq!(n["payload"]["conversation"], r["payload"]["conversation"]);

    a1.request("update_conversation", json!({"id": conv, "archived": true}))
        .await;
    let n = a2.recv().await;
    assert_eq!(
        (
            n["action"].as_str(),
            n["payload"]["conversation"]["archived"].as_bool()
        ),
        (Some("conversation_updated"), Some(true))
    );

    let rid = a1.next_id();
    a1.send(json!({"action": "send_message", "request_id": rid, "payload": {"conversation_id": conv, "content": "hi"}})).await;
    let frames = a1.stream(&rid).await;
    let reply = frames[frames.len() - 2]["payload"]["message"].clone();
    let n1 = a2.recv().await;
    let n2 = a2.recv().await;
    assert_eq!(
        (n1["action"].as_str(), n2["action"].as_str()),
        (Some("new_message"), Some("new_message"))
    );
    assert_eq!(n1["payload"]["message"]["content"], "hi");
    assert_eq!(n2["payload"]["message"], reply);
    assert_eq!(n1["payload"]["message"]["rev"], 3);
    assert_eq!(n2["payload"]["message"]["rev"], 4);

    a2.request("update_settings", json!({"selected_model": "m"}))
        .await;
    let n = a1.recv().await;
    assert_eq!(n["action"], "settings_updated");
    assert_eq!(n["payload"]["settings"]["rev"], 5);

    a2.request(
        "append_messages",
        json!({"messages": [
        {"id": new_id(), "conversation_id": conv, "role": "user", "content": "from the pi"}]}),
    )
    .await;
    let n = a1.recv().await;
    assert_eq!(n["action"], "new_message");
    assert_eq!(n["payload"]["message"]["origin"], "voice");

    a1.request("delete_conversation", json!({"id": conv})).await;
    let n = a2.recv().await;
    assert_eq!(n["action"], "conversation_deleted");
    assert_eq!(n["payload"], json!({"id": conv, "rev": 7}));

    // Nothing else anywhere: not to the requester, not before hello, not to bob.
    a1.assert_quiet().await;
    a2.assert_quiet().await;
    a3.assert_quiet().await;
    b1.assert_quiet().await;
    // A no-op change notifies nobody.
    a1.request("update_settings", json!({"selected_model": "m"}))
        .await;
    a2.assert_quiet().await;
}

#[tokio::test]
async fn text_to_speech_and_speech_to_text() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    let samples: Vec<i16> = (0..22050).map(|i| ((i % 100) * 100) as i16).collect();
    {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 22050,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&wav, spec).unwrap();
        for s in &samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
    }
    // A real command engine that "speaks" the file.
    let tts = pichat::engines::build_tts(
        &EngineConfig {
            name: "cat".into(),
            kind: EngineKind::Command {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("cat {}", wav.display()),
                    "{text}".into(),
                ],
            },
            timeout: Duration::from_secs(10),
        },
        Duration::from_secs(600),
    )
    .unwrap();
    let srv = TestServer::start(Engines {
        stt: vec![Arc::new(CountingStt) as Arc<dyn SpeechToText>],
        llm: vec![FakeLlm::tokens(&["x"]) as Arc<dyn Llm>],
        tts: vec![tts as Arc<dyn TextToSpeech>],
    })
    .await;
    let t = srv.token("alice").await;
    let mut c = srv.hello(&t, "voice").await;
    let r = c
        .request(
            "text_to_speech",
            json!({"text": "Hello there", "voice_settings": {"speed": 1.0}}),
        )
        .await;
    assert_eq!(r["action"], "text_to_speech_result", "{r}");
    assert_eq!(r["payload"]["sample_rate"], 22050);
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["payload"]["audio_data"].as_str().unwrap())
        .unwrap();
    let back = hound::WavReader::new(std::io::Cursor::new(&bytes)).unwrap();
    assert_eq!(back.spec().channels, 1);
    let back: Vec<i16> = back.into_samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(back, samples);

    // The WAV goes back through speech-to-text: resampled to 16 kHz mono.
    let r = c
        .request(
            "speech_to_text",
            json!({"audio_data": r["payload"]["audio_data"]}),
        )
        .await;
    assert_eq!(r["action"], "speech_to_text_result", "{r}");
    let text = r["payload"]["text"].as_str().unwrap();
    let n: usize = text
        .trim_start_matches("heard ")
        .trim_end_matches(" samples")
        .parse()
        .unwrap();
    assert!(
        (15_000..=16_500).contains(&n),
        "one second at 16 kHz: {text}"
    );

    for (payload, code) in [
        (json!({"audio_data": "not base64!"}), "bad_request"),
        (json!({"audio_data": "aGVsbG8="}), "bad_request"),
        (json!({"audio_data": ""}), "bad_request"),
    ] {
        let e = c.request("speech_to_text", payload).await;
        assert_eq!(e["payload"]["code"], code, "{e}");
    }
    let e = c.request("text_to_speech", json!({"text": ""})).await;
    assert_eq!(e["payload"]["code"], "bad_request");

    // Without engines: unavailable.
    let bare = TestServer::start(engines(vec![])).await;
    let t = bare.token("alice").await;
    let mut c = bare.hello(&t, "web").await;
    for (action, payload) in [
        ("text_to_speech", json!({"text": "hi"})),
        ("speech_to_text", json!({"audio_data": "aGVsbG8="})),
        (
            "send_message",
            json!({"conversation_id": new_id(), "content": "hi"}),
        ),
    ] {
        let e = c.request(action, payload).await;
        assert_eq!(e["payload"]["code"], "unavailable", "{action}: {e}");
    }
}
