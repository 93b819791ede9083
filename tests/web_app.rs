//! The web app in a real browser: Debian's chromium, headless, over
//! WebDriver, against the real server (in this process, on 127.0.0.1:0,
//! a real SQLite file) with a fake LLM that streams. Each test signs in as
//! a person would; a failing step saves a screenshot (see web_support).

mod server_support;
mod web_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fantoccini::Locator;
use pichat::config::{EngineConfig, EngineKind};
use pichat::engines::{Engines, Llm, SpeechToText, TextToSpeech};
use pichat::server::ServerOptions;
use pichat::serverdb::Author;
use pichat::store::{NewConversation, NewMessage, Role};
use serde_json::json;
use server_support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use web_support::*;

/// An LLM that streams a known reply slowly enough to see it stream.
fn streaming_llm() -> Arc<FakeLlm> {
    FakeLlm::new(
        "fake",
        Mode::Tokens(
            ["Hello", " from", " the", " fake", " model."]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Duration::from_millis(150),
        ),
    )
}

fn base(srv: &TestServer) -> String {
    format!("http://{}", srv.addr)
}

/// Seeds `n` conversations of `user` (one message each); returns their ids,
/// oldest first.
async fn seed(srv: &TestServer, user: &str, titles: &[&str]) -> Vec<String> {
    let user = user.to_string();
    let titles: Vec<String> = titles.iter().map(|t| t.to_string()).collect();
    let s = srv.store();
    let uid = s.user_id(&user).await.unwrap();
    let mut ids = Vec::new();
    for (i, t) in titles.iter().enumerate() {
        let (c, _) = s
            .create_conversation(
                Author::NOBODY,
                uid,
                NewConversation {
                    title: Some(t.clone()),
                    created_at: Some(1_700_000_000_000 + i as i64 * 60_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut m = NewMessage::new(&c.id, Role::User, format!("message about {t}"));
        m.created_at = Some(1_700_000_000_000 + i as i64 * 60_000 + 1);
        m.origin = pichat::store::Origin::Voice;
        m.is_audio = true;
        s.add_message(Author::NOBODY, uid, m).await.unwrap();
        ids.push(c.id);
    }
    ids
}

/// Opens the app, is sent to the sign-in page, signs in with `token`.
async fn sign_in(b: &Browser, srv: &TestServer, token: &str) -> Result<()> {
    b.goto(&format!("{}/", base(srv))).await?;
    let url = b.client.current_url().await?;
    ensure!(url.path() == "/signin", "not sent to sign in: {url}");
    b.type_in("#token", token).await?;
    b.click("#signin-form button[type=submit]").await?;
    b.wait_js(
        "the app connected",
        "return window.pichat && window.pichat.client.state === 'open' && document.body.dataset.listLoaded === '1'",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn sign_in_list_create_stream_rename_search_export_settings_live_sign_out() {
    let srv = TestServer::start(engines(vec![streaming_llm()])).await;
    let token = srv.token("alice").await;
    seed(
        &srv,
        "alice",
        &["Groceries", "Holiday in Lisbon", "Bike repair"],
    )
    .await;
    let b = Browser::start("web_flow").await;
    b.run(|| async {
        // A wrong token is refused: still on the sign-in page, told why, no cookie.
        b.goto(&format!("{}/", base(&srv))).await?;
        b.type_in("#token", "pct_not-a-real-token").await?;
        b.click("#signin-form button[type=submit]").await?;
        b.find_text("#signin-msg", "unknown or revoked").await?;
        ensure!(b.cookies().await?.iter().all(|c| c.name() != "pichat_session"));

        sign_in(&b, &srv, &token).await?;
        // The cookie: HttpOnly, SameSite=Strict; the page keeps no token.
        let cookie = b.client.get_named_cookie("pichat_session").await?;
        ensure!(cookie.http_only() == Some(true), "{cookie:?}");
        ensure!(
            cookie.same_site() == Some(cookie::SameSite::Strict),
            "{cookie:?}"
        );
        let stored = b
            .js("return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie")
            .await?;
        ensure!(!stored.as_str().unwrap_or_default().contains(&token), "{stored}");
        ensure!(!stored.as_str().unwrap_or_default().contains("pichat_session"), "{stored}");

        // The list: newest activity first, with counts and the voice mark.
        let names = b
            .js("return [...document.querySelectorAll('#conv-list .conv-name')].map(e => e.textContent)")
            .await?;
        ensure!(names == json!(["Bike repair", "Holiday in Lisbon", "Groceries"]), "{names}");
        b.find_text("#conv-list li:first-child .count", "1 message").await?;
        b.find_text("#conv-list li:first-child .mark.voice", "VOICE").await?;

        // Create, send, watch the reply stream in with the typing indicator.
        b.click("#btn-new").await?;
        b.find("#composer-input").await?;
        ensure!(b.focused_id().await? == "composer-input", "the message box has the focus");
        b.type_in("#composer-input", "Say hello please").await?;
        b.keys("\u{E007}").await?; // Enter
        b.find("#typing").await?;
        b.wait_js(
            "a partial reply while streaming",
            "const m = document.querySelector('.msg.assistant.streaming .content'); return m && m.textContent.startsWith('Hello') && !m.textContent.includes('model.')",
        )
        .await?;
        let reply = b.find_text(".msg.assistant .content", "Hello from the fake model.").await?;
        let _ = reply;
        b.wait_js("typing off", "return document.getElementById('typing').hidden").await?;
        b.find_text(".msg.assistant .model", "fake-model").await?;
        b.find_text(".msg.assistant .rt", " s").await?;
        b.find_text("#conv-meta", "2 messages").await?;
        let conv_id = b
            .js("return window.pichat.state.open")
            .await?
            .as_str()
            .context("a conversation is open")?
            .to_string();
        b.shot("desktop-conversation").await?;

        // A new conversation is named after its first question.
        b.find_text("#conv-list li:first-child .conv-name", "Say hello please").await?;
        // Rename (dialog), seen in the list and stored.
        b.click("#btn-rename").await?;
        let input = b.find("#rename-input").await?;
        input.clear().await?;
        input.send_keys("Greetings test").await?;
        b.click("#dlg-rename button[value=ok]").await?;
        b.find_text("#conv-list li:first-child .conv-name", "Greetings test").await?;
        let id = conv_id.clone();
        let uid = srv.store().user_id("alice").await?;
        let stored = srv.store().get_conversation(uid, &id).await?;
        ensure!(stored.title == "Greetings test", "{stored:?}");

        // Search: highlighted snippets; a hit jumps to its message.
        b.click("#search").await?;
        b.type_in("#search", "Lisbon").await?;
        let hit = b.find_text("#search-results .hit", "Holiday in Lisbon").await?;
        let marked = b
            .js("return document.querySelector('#search-results .snippet mark').textContent")
            .await?;
        ensure!(marked == json!("Lisbon"), "{marked}");
        hit.find(Locator::Css("a")).await?.click().await?;
        b.wait_js(
            "the message found is focused",
            "const a = document.activeElement; return a && a.classList.contains('msg') && a.textContent.includes('message about Holiday in Lisbon')",
        )
        .await?;
        b.find_text("#conv-title", "Holiday in Lisbon").await?;

        // Export this conversation as Markdown: a download with its messages.
        b.goto(&format!("{}/#/c/{conv_id}", base(&srv))).await?;
        b.find_text(".msg.assistant .content", "Hello from the fake model.").await?;
        b.click("#btn-export").await?;
        b.click("#dlg-export input[value=md]").await?;
        b.click("#export-ok").await?;
        let md = b.download(".md").await?;
        let text = std::fs::read_to_string(&md)?;
        ensure!(text.contains("# Greetings test"), "{text}");
        ensure!(text.contains("Say hello please") && text.contains("Hello from the fake model."), "{text}");
        // All of them as JSON: the history's export format, importable.
        b.keys("e").await?;
        b.click("#dlg-export input[value=all]").await?;
        b.click("#dlg-export input[value=json]").await?;
        b.click("#export-ok").await?;
        let json_file = b.download(".json").await?;
        let doc = pichat::history::export::parse_export(&std::fs::read_to_string(&json_file)?)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ensure!(doc.conversations.len() == 4, "{} conversations", doc.conversations.len());

        // Settings round trip: saved on the server, shown again after a reload.
        b.click("#btn-settings").await?;
        b.find("#set-model").await?.select_by_value("fake-model").await?;
        b.type_in("#set-personality", "Talk like a pirate.").await?;
        b.js("const s = document.getElementById('set-speed'); s.value = '1.5'; s.dispatchEvent(new Event('input'));").await?;
        b.find("#set-gender").await?.select_by_value("female").await?;
        b.click("#settings-save").await?;
        b.find_text("#status-text", "Settings saved").await?;
        let settings = srv.store().settings(uid).await?;
        ensure!(settings.selected_model.as_deref() == Some("fake-model"), "{settings:?}");
        ensure!(settings.assistant_personality.as_deref() == Some("Talk like a pirate."), "{settings:?}");
        ensure!(settings.voice_speed == Some(1.5) && settings.voice_gender.as_deref() == Some("female"), "{settings:?}");
        b.client.refresh().await?;
        b.wait_js("connected again", "return window.pichat.client.state === 'open'").await?;
        b.click("#btn-settings").await?;
        b.wait_js("the settings shown", "return document.getElementById('set-personality').value === 'Talk like a pirate.' && document.getElementById('set-model').value === 'fake-model' && document.getElementById('set-speed').value === '1.5'").await?;
        b.click("#dlg-settings button[value=cancel]").await?;

        // Live: a message appended by a device (the Pi) appears in the open page.
        b.goto(&format!("{}/#/c/{conv_id}", base(&srv))).await?;
        b.find_text(".msg.assistant .content", "Hello from the fake model.").await?;
        let mut pi = srv.hello(&token, "voice").await;
        let r = pi
            .request(
                "append_messages",
                json!({"messages": [
                    {"id": "0190aaaa-0000-7000-8000-000000000001", "conversation_id": conv_id, "role": "user", "content": "Spoken on the Pi", "is_audio": true},
                    {"id": "0190aaaa-0000-7000-8000-000000000002", "conversation_id": conv_id, "role": "assistant", "content": "Answered on the Pi", "model_id": "smollm2", "response_time_ms": 1234}
                ]}),
            )
            .await;
        ensure!(r["action"] == "messages_appended", "{r}");
        b.find_text(".msg.user .content", "Spoken on the Pi").await?;
        b.find_text(".msg.assistant .content", "Answered on the Pi").await?;
        b.find_text(".msg.assistant .rt", "1.2 s").await?;
        b.find_text("#conv-meta", "4 messages").await?;

        // Sign out: back to the sign-in page; the old cookie opens nothing.
        let old = b.client.get_named_cookie("pichat_session").await?.value().to_string();
        b.click("#btn-signout").await?;
        b.find_text("#signin-msg", "signed out").await?;
        b.goto(&format!("{}/", base(&srv))).await?;
        ensure!(b.client.current_url().await?.path() == "/signin");
        let status = cookie_upgrade(&srv, &old, &base(&srv)).await;
        ensure!(status == Err(401), "{status:?}");
        Ok(())
    })
    .await;
    b.close().await;
}

/// Tries the `/ws` upgrade with a session cookie and an `Origin`: `Ok` when
/// upgraded, else the HTTP status.
async fn cookie_upgrade(srv: &TestServer, cookie: &str, origin: &str) -> Result<(), u16> {
    let mut req = format!("ws://{}/ws", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Cookie",
        format!("pichat_session={cookie}").parse().unwrap(),
    );
    if !origin.is_empty() {
        req.headers_mut().insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// A page of another origin (another port of the same host: same site, so
/// the browser does send the cookie) tries to open the server's socket.
async fn foreign_page() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "<!doctype html><title>elsewhere</title><p>another site";
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn foreign_origins_expired_sessions_and_revoked_tokens_are_refused() {
    let opts = ServerOptions {
        session_ttl: Duration::from_secs(3),
        ping_interval: Duration::from_millis(300),
        ..options()
    };
    let srv = TestServer::start_with(engines(vec![streaming_llm()]), opts).await;
    let token = srv.token("alice").await;
    let b = Browser::start("web_refusals").await;
    let other = foreign_page().await;
    b.run(|| async {
        sign_in(&b, &srv, &token).await?;
        let value = b
            .client
            .get_named_cookie("pichat_session")
            .await?
            .value()
            .to_string();
        // The cookie with the server's own Origin opens the socket; with
        // another one, or none, it does not. Devices' tokens still work.
        ensure!(cookie_upgrade(&srv, &value, &base(&srv)).await.is_ok());
        ensure!(cookie_upgrade(&srv, &value, "http://evil.example").await == Err(403));
        ensure!(cookie_upgrade(&srv, &value, "").await == Err(403));
        ensure!(
            srv.try_connect(Some(&format!("Bearer {token}")), None)
                .await
                .is_ok()
        );
        ensure!(
            srv.try_connect(None, Some(&format!("token={token}")))
                .await
                .is_ok()
        );

        // In the browser: a page of another origin cannot open it with the cookie.
        b.goto(&format!("http://{other}/")).await?;
        let result = b
            .client
            .execute_async(
                &format!(
                    "const done = arguments[arguments.length - 1];
                     const ws = new WebSocket('ws://{}/ws');
                     ws.onopen = () => done('opened');
                     ws.onclose = (e) => done('closed ' + e.code);",
                    srv.addr
                ),
                vec![],
            )
            .await?;
        ensure!(
            result.as_str().unwrap_or_default().starts_with("closed"),
            "{result}"
        );

        // The session expires: the app is sent to sign in again.
        b.goto(&format!("{}/", base(&srv))).await?;
        b.wait_js(
            "connected",
            "return window.pichat && window.pichat.client.state === 'open'",
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(cookie_upgrade(&srv, &value, &base(&srv)).await == Err(401));
        b.goto(&format!("{}/", base(&srv))).await?;
        ensure!(b.client.current_url().await?.path() == "/signin");

        // Revoking the token ends its session and its open socket: the page
        // notices and goes to the sign-in page by itself.
        sign_in(&b, &srv, &token).await?;
        let uid_token = srv.store().tokens().await?.last().unwrap().id;
        srv.store().revoke_token(uid_token).await?;
        b.wait_js("sent to sign in", "return location.pathname === '/signin'")
            .await?;
        b.find_text("#signin-msg", "session has ended").await?;
        Ok(())
    })
    .await;
    b.close().await;
}

#[tokio::test]
async fn a_phone_screen_the_keyboard_alone_and_dark_mode() {
    let srv = TestServer::start(engines(vec![streaming_llm()])).await;
    let token = srv.token("alice").await;
    seed(&srv, "alice", &["First", "Second"]).await;
    let b = Browser::start_with(
        "web_phone",
        Options {
            size: PHONE,
            ..Options::default()
        },
    )
    .await;
    b.run(|| async {
        sign_in(&b, &srv, &token).await?;
        // One column: the list, then the conversation with a way back.
        b.find_text("#conv-list .conv-name", "Second").await?;
        ensure!(!b.client.find(Locator::Css("#composer")).await?.is_displayed().await?);
        b.shot("phone-list").await?;
        // Keyboard: the list is reachable and walkable, Enter opens.
        b.click("#search").await?;
        b.keys("\u{E004}").await?; // Tab: New conversation
        b.keys("\u{E004}").await?; // Tab: the Archived filter
        b.keys("\u{E004}").await?; // Tab: the list
        b.wait_js("the list has the focus", "return document.activeElement.classList.contains('conv')").await?;
        b.keys("j").await?;
        b.keys("\u{E007}").await?;
        b.find_text("#conv-title", "First").await?;
        ensure!(!b.client.find(Locator::Css("#conv-list")).await?.is_displayed().await?);
        b.find("#btn-back").await?;
        b.shot("phone-conversation").await?;
        // Shortcuts: i writes, Esc leaves the box, Esc again goes back.
        b.js("document.activeElement.blur()").await?;
        b.keys("i").await?;
        ensure!(b.focused_id().await? == "composer-input");
        b.keys("\u{E00C}").await?;
        b.js("document.activeElement.blur()").await?;
        b.js("document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}))").await?;
        b.find_text("#conv-list .conv-name", "Second").await?;
        // "/" goes to search, "n" makes a conversation.
        b.js("document.activeElement.blur()").await?;
        b.keys("/").await?;
        ensure!(b.focused_id().await? == "search");
        b.js("document.activeElement.blur()").await?;
        b.keys("n").await?;
        b.find_text("#conv-title", "New conversation").await?;
        ensure!(b.focused_id().await? == "composer-input");
        // The landmarks and live regions a screen reader needs.
        let aria = b
            .js("return ['#messages[role=log]', '#status[role=status]', '#conv-list[role=listbox]', 'main[aria-label]', 'aside[aria-label]', '#btn-mic[aria-label]'].every(s => document.querySelector(s))")
            .await?;
        ensure!(aria == json!(true));
        Ok(())
    })
    .await;
    b.close().await;
    // Dark mode follows the system.
    let d = Browser::start_with(
        "web_dark",
        Options {
            dark: true,
            ..Options::default()
        },
    )
    .await;
    d.run(|| async {
        sign_in(&d, &srv, &token).await?;
        let bg = d
            .js("return getComputedStyle(document.body).backgroundColor")
            .await?;
        ensure!(bg == json!("rgb(15, 18, 22)"), "dark background: {bg}");
        d.shot("desktop-dark").await?;
        Ok(())
    })
    .await;
    d.close().await;
}

#[tokio::test]
async fn a_long_conversation_opens_at_its_end_and_pages_back_windowed() {
    let srv = TestServer::start(engines(vec![streaming_llm()])).await;
    let token = srv.token("alice").await;
    let store = srv.store();
    let uid = store.user_id("alice").await.unwrap();
    let (c, _) = store
        .create_conversation(
            Author::NOBODY,
            uid,
            NewConversation {
                title: Some("Very long".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let msgs: Vec<NewMessage> = (0..10_000)
        .map(|i| {
            let mut m = NewMessage::new(
                &c.id,
                if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                format!("line number {i} {}", if i == 42 { "needle" } else { "" }),
            );
            m.created_at = Some(1_700_000_000_000 + i);
            m
        })
        .collect();
    for chunk in msgs.chunks(500) {
        store
            .append_messages(Author::NOBODY, uid, chunk.to_vec())
            .await
            .unwrap();
    }
    let conv = c.id;
    let b = Browser::start("web_long").await;
    b.run(|| async {
        sign_in(&b, &srv, &token).await?;
        b.goto(&format!("{}/#/c/{conv}", base(&srv))).await?;
        b.find_text(".msg .content", "line number 9999").await?;
        let (loaded, rows) = counts(&b).await?;
        ensure!(loaded == 100, "the newest page only: {loaded}");
        ensure!(rows < 60, "only the rows near the view are in the page: {rows}");
        // Scrolling up loads older pages; the page stays small.
        for _ in 0..8 {
            b.js("document.getElementById('messages').scrollTop = 0").await?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (loaded2, rows2) = counts(&b).await?;
        ensure!(loaded2 > 300, "older pages loaded on scroll: {loaded2}");
        ensure!(rows2 < 80, "still windowed: {rows2}");
        // A search hit far back: found, loaded and shown.
        b.type_in("#search", "needle").await?;
        let hit = b.find_text("#search-results .hit", "needle").await?;
        hit.find(Locator::Css("a")).await?.click().await?;
        b.wait_js("the old message shown", "const a = document.activeElement; return a && a.textContent.includes('line number 42 needle')").await?;
        let (_, rows3) = counts(&b).await?;
        ensure!(rows3 < 80, "windowed after the jump: {rows3}");
        Ok(())
    })
    .await;
    b.close().await;
}

/// Messages loaded in the page, and message rows in its DOM.
async fn counts(b: &Browser) -> Result<(u64, u64)> {
    let v = b
        .js("return [window.pichat.vlist.items.length, document.querySelectorAll('#messages .msg').length]")
        .await?;
    Ok((v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0)))
}

#[tokio::test]
async fn ask_by_voice_from_the_microphone_and_listen_to_the_answer() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let tts = pichat::engines::build_tts(
        &EngineConfig {
            name: "cat".into(),
            kind: EngineKind::Command {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("cat {}", data.join("question.wav").display()),
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
        llm: vec![streaming_llm() as Arc<dyn Llm>],
        tts: vec![tts as Arc<dyn TextToSpeech>],
    })
    .await;
    let token = srv.token("alice").await;
    let b = Browser::start_with(
        "web_voice",
        Options {
            mic_wav: Some(data.join("question.wav")),
            ..Options::default()
        },
    )
    .await;
    b.run(|| async {
        sign_in(&b, &srv, &token).await?;
        b.click("#btn-new").await?;
        b.click("#btn-mic").await?;
        b.wait_js(
            "recording",
            "return document.getElementById('btn-mic').getAttribute('aria-pressed') === 'true'",
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        b.click("#btn-mic").await?;
        // The server's speech-to-text got 16 kHz audio of about that length,
        // and the text went as a spoken question.
        let q = b.find_text(".msg.user .content", "heard ").await?;
        let n: u64 = q
            .text()
            .await?
            .trim_start_matches("heard ")
            .trim_end_matches(" samples")
            .parse()?;
        ensure!((12_000..=60_000).contains(&n), "{n} samples at 16 kHz");
        b.find_text(".msg.user .mark.voice", "SPOKEN").await?;
        b.find_text(".msg.assistant .content", "Hello from the fake model.")
            .await?;
        // Listen to the answer: the server's text-to-speech, played.
        b.click(".msg.assistant button.tts").await?;
        b.find_text(".msg.assistant button.tts", "Playing").await?;
        Ok(())
    })
    .await;
    b.close().await;
}
