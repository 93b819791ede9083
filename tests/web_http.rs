//! The web app's HTTP side without a browser: sign-in and its cookie, what
//! is refused, the app's files, exports, `/metrics`, and TLS with a
//! certificate made by `pichat serve --make-cert`. The real server on
//! 127.0.0.1:0 with a real SQLite file.

mod server_support;

use std::net::SocketAddr;
use std::sync::Arc;

use pichat::server::ServerOptions;
use serde_json::json;
use server_support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A whole HTTP exchange over `io`: the status and the full response text.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, request: &str) -> (u16, String) {
    io.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, io.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(
        tcp,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"),
    )
    .await
}

async fn post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(
        tcp,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Signs in; returns the cookie's value.
async fn sign_in(addr: SocketAddr, token: &str) -> String {
    let (status, resp) = post(
        addr,
        "/signin",
        "",
        &format!("token={token}&next=%2F%23%2Fc%2Fx"),
    )
    .await;
    assert_eq!(status, 303, "{resp}");
    assert_eq!(header(&resp, "location"), Some("/#/c/x"), "{resp}");
    let set = header(&resp, "set-cookie").expect("a cookie").to_string();
    set.split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("pichat_session="))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn sign_in_sets_a_strict_session_cookie_and_the_app_needs_it() {
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["hi"])])).await;
    let token = srv.token("alice").await;
    let a = srv.addr;
    // Not signed in: the app sends to /signin; its files are public.
    let (s, r) = get(a, "/", "").await;
    assert_eq!((s, header(&r, "location")), (303, Some("/signin")), "{r}");
    let (s, r) = get(a, "/signin", "").await;
    assert_eq!(s, 200);
    assert!(
        header(&r, "content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let (s, r) = get(a, "/js/main.js", "").await;
    assert_eq!(s, 200);
    assert_eq!(
        header(&r, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let tag = header(&r, "etag").unwrap().to_string();
    let (s, _) = get(a, "/js/main.js", &format!("If-None-Match: {tag}\r\n")).await;
    assert_eq!(s, 304, "unchanged: not sent again");
    let (s, _) = get(a, "/api/session", "").await;
    assert_eq!(s, 401);

    // A wrong token, an empty one, a foreign page's post, a huge form.
    let (s, r) = post(a, "/signin", "", "token=pct_nope").await;
    assert_eq!(
        (s, header(&r, "location")),
        (303, Some("/signin?error=invalid&next=%2F"))
    );
    assert!(header(&r, "set-cookie").is_none());
    let (_, r) = post(a, "/signin", "", "token=").await;
    assert!(header(&r, "location").unwrap().contains("error=missing"));
    let (s, _) = post(
        a,
        "/signin",
        "Origin: http://evil.example\r\n",
        &format!("token={token}"),
    )
    .await;
    assert_eq!(s, 403, "login CSRF");
    let (s, _) = post(
        a,
        "/signin",
        "",
        &format!("token={token}&pad={}", "x".repeat(5000)),
    )
    .await;
    assert_eq!(s, 413);
    // An open redirect is not possible.
    let (_, r) = post(
        a,
        "/signin",
        "",
        &format!("token={token}&next=%2F%2Fevil.example%2F"),
    )
    .await;
    assert_eq!(header(&r, "location"), Some("/"));

    // Signed in: HttpOnly, SameSite=Strict, an expiry, not Secure on plain http.
    let (_, r) = post(
        a,
        "/signin",
        &format!("Origin: http://{a}\r\n"),
        &format!("token={token}"),
    )
    .await;
    let set = header(&r, "set-cookie").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=2592000"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let cookie = sign_in(a, &token).await;
    let c = format!("Cookie: pichat_session={cookie}\r\n");
    let (s, r) = get(a, "/", &c).await;
    assert_eq!(s, 200);
    assert!(r.contains("<meta name=\"pichat-ws\""), "the app itself");
    let (s, r) = get(a, "/api/session", &c).await;
    assert_eq!(s, 200);
    let body: serde_json::Value =
        serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["user"], "alice");

    // Sign out: the session is gone, the cookie removed.
    let (s, r) = post(a, "/signout", &c, "").await;
    assert_eq!(
        (s, header(&r, "location")),
        (303, Some("/signin?signedout=1"))
    );
    assert!(header(&r, "set-cookie").unwrap().contains("Max-Age=0"));
    let (s, _) = get(a, "/api/session", &c).await;
    assert_eq!(s, 401);
    let (s, _) = get(a, "/", &c).await;
    assert_eq!(s, 303);
}

#[tokio::test]
async fn exports_are_downloads_of_the_users_own_conversations() {
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["Fine", " thanks."])])).await;
    let token = srv.token("alice").await;
    let bob = srv.token("bob").await;
    let mut c = srv.hello(&token, "web").await;
    let conv = c
        .request(
            "create_conversation",
            json!({"title": "Trip: Paris / Rome?"}),
        )
        .await;
    let id = conv["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.send(json!({"action": "send_message", "request_id": "m1", "payload": {"conversation_id": id, "content": "How are you?"}}))
        .await;
    let frames = c.stream("m1").await;
    assert_eq!(frames[0]["action"], "message_sent");
    let mut b = srv.hello(&bob, "web").await;
    let other = b.request("create_conversation", json!({})).await;
    let other_id = other["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let a = srv.addr;
    let cookie = format!("Cookie: pichat_session={}\r\n", sign_in(a, &token).await);
    let (st, r) = get(a, &format!("/export?format=md&conversation={id}"), &cookie).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        header(&r, "content-disposition"),
        Some("attachment; filename=\"pichat-trip-paris-rome.md\"")
    );
    assert!(
        r.contains("# Trip: Paris / Rome?") && r.contains("How are you?"),
        "{r}"
    );
    let (_, r) = get(a, "/export?format=txt", &cookie).await;
    assert!(r.contains("Assistant: Fine thanks."), "{r}");
    let (st, r) = get(a, "/export", &cookie).await;
    assert_eq!(st, 200);
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    // Chunked: the body's chunks joined.
    let json = dechunk(body);
    let doc = pichat::history::export::parse_export(&json).unwrap();
    assert_eq!(doc.conversations.len(), 1, "only alice's");
    assert_eq!(doc.conversations[0].messages.len(), 2);
    // Refused: another user's conversation, a bad id, a bad format, no session.
    let (st, _) = get(a, &format!("/export?conversation={other_id}"), &cookie).await;
    assert_eq!(st, 404);
    let (st, _) = get(a, "/export?conversation=nope", &cookie).await;
    assert_eq!(st, 400);
    let (st, _) = get(a, "/export?format=pdf", &cookie).await;
    assert_eq!(st, 400);
    let (st, _) = get(a, "/export", "").await;
    assert_eq!(st, 401);
}

/// A chunked HTTP body, joined.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

#[tokio::test]
async fn metrics_count_connections_frames_actions_and_times() {
    let srv = TestServer::start(engines(vec![FakeLlm::tokens(&["A", "B"])])).await;
    let token = srv.token("alice").await;
    let mut c = srv.hello(&token, "web").await;
    let conv = c.request("create_conversation", json!({})).await;
    let id = conv["payload"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.request("sync", json!({"since": 0})).await;
    c.request("no_such_action", json!({})).await;
    c.send(json!({"action": "send_message", "request_id": "m1", "payload": {"conversation_id": id, "content": "hi"}}))
        .await;
    let frames = c.stream("m1").await;
    assert_eq!(frames.last().unwrap()["action"], "typing_indicator");
    let (st, r) = get(srv.addr, "/metrics", "").await;
    assert_eq!(st, 200);
    assert!(
        header(&r, "content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for line in [
        "pichat_connections 1",
        "pichat_actions_total{action=\"hello\",result=\"ok\"} 1",
        "pichat_actions_total{action=\"create_conversation\",result=\"ok\"} 1",
        "pichat_actions_total{action=\"sync\",result=\"ok\"} 1",
        "pichat_actions_total{action=\"(undecoded)\",result=\"unknown_action\"} 1",
        "pichat_actions_total{action=\"send_message\",result=\"ok\"} 1",
        "pichat_frames_total{direction=\"in\"} 5",
        "pichat_ai_first_token_seconds_count 1",
        "pichat_ai_stream_seconds_count{result=\"ok\"} 1",
    ] {
        assert!(r.contains(line), "{line} missing:\n{r}");
    }
    let commits = r
        .lines()
        .find_map(|l| l.strip_prefix("pichat_store_commit_seconds_count "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap();
    assert!(commits >= 2, "the writes' commits were timed: {commits}");
    assert!(!r.contains("alice"), "no user names");
}

/// `/health` and `/metrics` show the store's state, and the maintenance
/// that `pichat serve` runs every `server.maintenance_interval_min` (here
/// a second) shows in both.
#[tokio::test]
async fn health_and_metrics_show_the_store_and_its_scheduled_maintenance() {
    let opts = ServerOptions {
        maintenance_interval: std::time::Duration::from_secs(1),
        ..options()
    };
    let srv = TestServer::start_with(engines(vec![]), opts).await;
    let token = srv.token("alice").await;
    let mut c = srv.hello(&token, "web").await;
    c.request("create_conversation", json!({})).await;
    let kind = srv.store.kind();
    let (st, h) = health(srv.addr).await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["store"]["kind"], kind);
    assert_eq!(h["store"]["ok"], true);
    assert!(h["store"]["bytes"].as_u64().unwrap() > 0, "{h}");
    let (st, r) = get(srv.addr, "/metrics", "").await;
    assert_eq!(st, 200);
    assert!(r.contains("pichat_store_up 1"), "{r}");
    assert!(
        r.lines()
            .find_map(|l| l.strip_prefix("pichat_store_bytes "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|b| b > 0),
        "{r}"
    );
    let deadline = std::time::Instant::now() + WAIT;
    let maintained = loop {
        let (_, h) = health(srv.addr).await;
        if let Some(at) = h["store"]["last_maintenance"].as_str() {
            break at.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no maintenance pass: {h}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        maintained.starts_with("20"),
        "an RFC 3339 time: {maintained}"
    );
    let (_, r) = get(srv.addr, "/metrics", "").await;
    assert!(
        !r.contains("pichat_store_last_maintenance_timestamp_seconds 0\n"),
        "{r}"
    );
}

#[tokio::test]
async fn tls_with_a_made_certificate_serves_https_and_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    // The CLI makes the CA and the certificate, and says how to use them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pichat"))
        .args(["serve", "--make-cert", "--cert-dir"])
        .arg(dir.path())
        .args(["--cert-name", "localhost", "--cert-name", "127.0.0.1"])
        .env(
            "PICHAT_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/pichat.toml"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tls_cert = ") && stdout.contains("ca_file"),
        "{stdout}"
    );
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_pichat"))
        .args(["serve", "--make-cert", "--cert-dir"])
        .arg(dir.path())
        .env(
            "PICHAT_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/pichat.toml"),
        )
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "no overwrite without --force");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let files = pichat::config::TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
    };
    let opts = ServerOptions {
        tls: Some(pichat::server::tls::load(&files).unwrap()),
        ..options()
    };
    let srv = TestServer::start_with(engines(vec![FakeLlm::tokens(&["hi"])]), opts).await;
    let token = srv.token("alice").await;
    // A client that trusts only the private CA.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = |name: &'static str| {
        let connector = connector.clone();
        let addr = srv.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector
                .connect(rustls::pki_types::ServerName::try_from(name).unwrap(), tcp)
                .await
                .unwrap()
        }
    };
    let (s, r) = exchange(
        tls("localhost").await,
        &format!(
            "GET /health HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            srv.addr.port()
        ),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let body = format!("token={token}");
    let (s, r) = exchange(
        tls("localhost").await,
        &format!(
            "POST /signin HTTP/1.1\r\nHost: localhost:{}\r\nOrigin: https://localhost:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            srv.addr.port(),
            srv.addr.port(),
            body.len()
        ),
    )
    .await;
    assert_eq!(s, 303, "{r}");
    assert!(header(&r, "set-cookie").unwrap().contains("Secure"), "{r}");
    // Plain http on the TLS port gets no answer.
    let (s, _) = get(srv.addr, "/health", "").await;
    assert_eq!(s, 0);
}
