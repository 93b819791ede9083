//! The web app's side of the router: the app itself (the files of `web/`,
//! embedded in the binary), signing in and out with a server-side session
//! cookie, the session's check for `/ws`, and the export download.
//!
//! - `GET /` is the app for a signed-in browser, else a redirect to
//!   `/signin`. The other files are public (they hold no data).
//! - `POST /signin` takes a device token (`pichat token add USER --device
//!   browser`) and sets the cookie [`COOKIE`]: `HttpOnly`,
//!   `SameSite=Strict`, `Secure` under TLS, `Max-Age` = `server.session_hours`.
//!   Only its SHA-256 is stored; it dies with its token (`pichat token
//!   revoke`) or at `POST /signout`. The token is never kept by the page.
//! - `/ws` accepts the cookie only when `Origin` is this server's own
//!   ([`same_origin`]): another site's page cannot open a socket with the
//!   user's cookie (cross-site WebSocket hijacking). Bearer and `?token=`
//!   work as before, for devices.
//! - `GET /export?format=json|md|txt[&conversation=ID]`: a download, read
//!   from the store one conversation at a time as it is sent.
//! - `GET /api/session`: `200 {user, expires_at}` or `401`: lets the app
//!   tell "signed out" from "server unreachable".

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State as With};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use cookie::{Cookie, SameSite};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::answer::{Peer, error_response};
use crate::history::export::{ExportFormat, render};
use crate::history::export::{JSON_EXPORT_TAIL, json_export_head};
use crate::protocol::ErrorCode;
use crate::server::audit::{Event, Who};
use crate::server::auth::{self, AuthUser};
use crate::server::state::State;

/// The session cookie's name.
pub const COOKIE: &str = "pichat_session";

/// Largest sign-in form body.
const MAX_FORM_BYTES: usize = 4096;

/// The policy of the app's pages: its own scripts and styles only, its own
/// socket, blobs for played audio; no frames, no plugins.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A file of the app.
pub(crate) struct Asset {
    pub path: &'static str,
    pub mime: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $mime:literal) => {
        Asset {
            path: $path,
            mime: $mime,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)),
        }
    };
}

/// Every file of `web/` (a test checks none is missing).
pub(crate) const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("signin.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("js/main.js", "text/javascript; charset=utf-8"),
    asset!("js/client.js", "text/javascript; charset=utf-8"),
    asset!("js/vlist.js", "text/javascript; charset=utf-8"),
    asset!("js/audio.js", "text/javascript; charset=utf-8"),
    asset!("js/rec-worklet.js", "text/javascript; charset=utf-8"),
    asset!("js/signin.js", "text/javascript; charset=utf-8"),
];

fn asset(path: &str) -> &'static Asset {
    ASSETS.iter().find(|a| a.path == path).unwrap_or(&ASSETS[0])
}

/// The ETag of each asset (its digest), computed once.
fn etag(a: &'static Asset) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let d = Sha256::digest(a.body);
                let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    let i = ASSETS.iter().position(|x| std::ptr::eq(x, a)).unwrap_or(0);
    &tags[i]
}

/// The web app's routes (merged into the router, `http/mod.rs`).
pub(crate) fn routes() -> Router<Arc<State>> {
    let mut r = Router::new()
        .route("/", get(app))
        .route("/index.html", get(app))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", post(signout))
        .route("/api/session", get(session_info))
        .route("/export", get(export))
        .route("/metrics", get(metrics));
    for a in ASSETS.iter().filter(|a| !a.path.ends_with(".html")) {
        r = r.route(
            &format!("/{}", a.path),
            get(move |headers: HeaderMap| async move { file(a, &headers) }),
        );
    }
    r
}

/// Answers with an asset (`304` when the browser has it already). Each
/// answer closes its HTTP connection: a socket holds a handshake place
/// while open (`handshakes.rs`), and idle keep-alive sockets must not use
/// them up.
fn file(a: &'static Asset, req: &HeaderMap) -> Response {
    let tag = etag(a);
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
    h.insert(header::ETAG, HeaderValue::from_static(tag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if a.mime.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        h.insert(
            header::HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        );
    }
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    (StatusCode::OK, h, a.body).into_response()
}

/// The value of the session cookie of a request, if it sent one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

/// Whether the request's `Origin` is this server's own: the scheme it is
/// served with and the `Host` the browser asked for. A page of another
/// site (or a rebound DNS name, which has no cookie of ours) never is.
pub(crate) fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

/// The live session of a request's cookie.
pub(crate) async fn session_of(
    state: &Arc<State>,
    headers: &HeaderMap,
) -> Result<Option<(AuthUser, i64)>, Response> {
    let Some(value) = session_cookie(headers) else {
        return Ok(None);
    };
    let now = crate::time::now_ms();
    auth::check_session(&*state.db, &value, now)
        .await
        .map_err(|e| {
            tracing::error!("cannot check a session: {e}");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "cannot check the session now",
                HeaderMap::new(),
            )
        })
}

/// A path of this site to go to after signing in (never another site).
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

async fn app(With(state): With<Arc<State>>, headers: HeaderMap) -> Response {
    match session_of(&state, &headers).await {
        Ok(Some(_)) => file(asset("index.html"), &headers),
        Ok(None) => see_other("/signin"),
        Err(r) => r,
    }
}

async fn signin_page(headers: HeaderMap) -> Response {
    file(asset("signin.html"), &headers)
}

/// The session cookie (or, with `None`, the one that removes it).
fn session_set_cookie(value: Option<&str>, max_age_s: i64, tls: bool) -> HeaderValue {
    let mut c = Cookie::build((COOKIE, value.unwrap_or("").to_string()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(tls)
        .path("/")
        .max_age(cookie::time::Duration::seconds(if value.is_some() {
            max_age_s
        } else {
            0
        }))
        .build();
    if value.is_none() {
        c.make_removal();
    }
    HeaderValue::from_str(&c.to_string()).unwrap_or(HeaderValue::from_static(""))
}

fn see_other(to: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A form post must come from a page of this server (when the browser says
/// where it comes from): no other site signs anyone in or out.
fn foreign_post(headers: &HeaderMap, tls: bool) -> Option<Response> {
    if headers.contains_key(header::ORIGIN) && !same_origin(headers, tls) {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized,
            "this form must be sent from this server's own page",
            HeaderMap::new(),
        ));
    }
    None
}

async fn signin(With(state): With<Arc<State>>, req: Request) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.0.ip());
    let (parts, body) = req.into_parts();
    let tls = state.opts.tls.is_some();
    if let Some(r) = foreign_post(&parts.headers, tls) {
        return r;
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            &format!("the sign-in form is over {MAX_FORM_BYTES} bytes"),
            HeaderMap::new(),
        );
    };
    let mut token = String::new();
    let mut next = None;
    for (k, v) in url::form_urlencoded::parse(&body) {
        match k.as_ref() {
            "token" => token = v.trim().to_string(),
            "next" => next = Some(v.into_owned()),
            _ => {}
        }
    }
    let next = local_path(next.as_deref());
    let back = |why: &str| {
        see_other(&format!(
            "/signin?error={why}&next={}",
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        ))
    };
    if token.is_empty() {
        return back("missing");
    }
    let ttl = state.opts.session_ttl;
    let now = crate::time::now_ms();
    let made = async {
        match auth::check(&*state.db, &token).await? {
            Some(user) => {
                let v = auth::new_session(&*state.db, &user, now, ttl.as_millis() as i64).await?;
                Ok::<_, crate::store::StoreError>(Some((user, v)))
            }
            None => Ok(None),
        }
    }
    .await;
    match made {
        Ok(Some((user, value))) => {
            if let Some(ip) = peer {
                state
                    .audit
                    .once(Event::SignedIn, &Who::of(&user, ip), "browser session");
            }
            let mut r = see_other(&next);
            r.headers_mut().insert(
                header::SET_COOKIE,
                session_set_cookie(Some(&value), ttl.as_secs() as i64, tls),
            );
            r
        }
        Ok(None) => {
            if let Some(ip) = peer {
                state.audit.repeated(
                    Event::AuthRefused,
                    Who::addr(ip),
                    "sign-in with an unknown or revoked token",
                );
            }
            back("invalid")
        }
        Err(e) => {
            tracing::error!("cannot sign in: {e}");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "cannot sign in now; try again in a moment",
                HeaderMap::new(),
            )
        }
    }
}

async fn signout(With(state): With<Arc<State>>, headers: HeaderMap) -> Response {
    let tls = state.opts.tls.is_some();
    if let Some(r) = foreign_post(&headers, tls) {
        return r;
    }
    if let Some(value) = session_cookie(&headers)
        && let Err(e) = auth::end_session(&*state.db, &value).await
    {
        tracing::error!("cannot end a session: {e}");
    }
    let mut r = see_other("/signin?signedout=1");
    r.headers_mut()
        .insert(header::SET_COOKIE, session_set_cookie(None, 0, tls));
    r
}

/// `GET /metrics`: counts and times only, no user's name or data, so it
/// is open to the scraper like `/health`.
async fn metrics(With(state): With<Arc<State>>) -> Response {
    state.metrics.set_connections(state.registry.len());
    let store = super::store_state(&state).await;
    state.metrics.set_store(&store);
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    (StatusCode::OK, h, state.metrics.encode()).into_response()
}

#[derive(serde::Serialize)]
struct SessionInfo {
    user: String,
    #[serde(with = "crate::time::rfc3339")]
    expires_at: i64,
}

fn signed_out() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "not signed in (or the session ended): sign in at /signin",
        HeaderMap::new(),
    )
}

async fn session_info(With(state): With<Arc<State>>, headers: HeaderMap) -> Response {
    match session_of(&state, &headers).await {
        Ok(Some((user, expires_at))) => {
            let mut r = axum::Json(SessionInfo {
                user: user.name,
                expires_at,
            })
            .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        Ok(None) => signed_out(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    format: Option<String>,
    conversation: Option<String>,
}

/// A file name of plain characters.
fn file_name(title: &str) -> String {
    let s: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let s: String = s.chars().take(60).collect();
    if s.is_empty() {
        "conversation".into()
    } else {
        s
    }
}

async fn export(
    With(state): With<Arc<State>>,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Response {
    let user = match session_of(&state, &headers).await {
        Ok(Some((u, _))) => u,
        Ok(None) => return signed_out(),
        Err(r) => return r,
    };
    let bad = |m: &str| {
        error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            m,
            HeaderMap::new(),
        )
    };
    let (format, ext, mime) = match q.format.as_deref().unwrap_or("json") {
        "json" => (ExportFormat::Json, "json", "application/json"),
        "md" | "markdown" => (ExportFormat::Markdown, "md", "text/markdown; charset=utf-8"),
        "txt" | "text" => (ExportFormat::Text, "txt", "text/plain; charset=utf-8"),
        other => return bad(&format!("format \"{other}\": use json, md or txt")),
    };
    let one = match q.conversation.as_deref() {
        None | Some("") => None,
        Some(c) => match uuid::Uuid::parse_str(c) {
            Ok(id) => Some(id.to_string()),
            Err(_) => return bad(&format!("conversation \"{c}\" is not a conversation id")),
        },
    };
    let uid = user.id;
    let ids = match state.db.export_ids(uid, one.clone()).await {
        Ok(ids) => ids,
        Err(crate::store::StoreError::NotFound { .. }) => {
            return error_response(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such conversation",
                HeaderMap::new(),
            );
        }
        Err(e) => {
            tracing::error!("export: {e}");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "cannot read the conversations now",
                HeaderMap::new(),
            );
        }
    };
    let name = match &one {
        Some(id) => {
            let title = state
                .db
                .get_conversation(uid, id)
                .await
                .map(|c| c.title)
                .unwrap_or_default();
            format!("pichat-{}.{ext}", file_name(&title))
        }
        None => format!("pichat-all-{}.{ext}", chrono::Utc::now().format("%Y-%m-%d")),
    };
    let now = crate::time::now_ms();
    let head = match format {
        ExportFormat::Json => json_export_head(now),
        _ => String::new(),
    };
    // One conversation read and rendered at a time, as the client takes them.
    let db = state.db.clone();
    let stream = futures_util::stream::unfold(
        (ids.into_iter(), Some(head), false, false),
        move |(mut ids, head, mut first_done, done)| {
            let db = db.clone();
            async move {
                if let Some(h) = head {
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from(h)),
                        (ids, None, first_done, done),
                    ));
                }
                if done {
                    return None;
                }
                loop {
                    let Some(id) = ids.next() else {
                        let tail = match format {
                            ExportFormat::Json => JSON_EXPORT_TAIL,
                            _ => "",
                        };
                        return Some((Ok(Bytes::from(tail)), (ids, None, first_done, true)));
                    };
                    let got = db.export_conversation(uid, &id).await;
                    let ec = match got {
                        Ok(Some(ec)) => ec,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::error!("export: {e}");
                            return Some((
                                Err(std::io::Error::other(e.to_string())),
                                (ids, None, first_done, true),
                            ));
                        }
                    };
                    let text = match format {
                        ExportFormat::Json => {
                            let sep = if first_done { ",\n" } else { "" };
                            format!("{sep}{}", serde_json::to_string(&ec).unwrap_or_default())
                        }
                        f => {
                            let doc = crate::history::export::Export {
                                format: String::new(),
                                version: 0,
                                exported_at: now,
                                conversations: vec![ec],
                            };
                            render(&doc, f)
                        }
                    };
                    first_done = true;
                    return Some((Ok(Bytes::from(text)), (ids, None, first_done, false)));
                }
            }
        },
    );
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    (StatusCode::OK, h, Body::from_stream(stream)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_app_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut files = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    files.push(p.strip_prefix(&root).unwrap().to_string_lossy().to_string());
                }
            }
        }
        for f in &files {
            assert!(
                ASSETS.iter().any(|a| a.path == f),
                "web/{f} is not in ASSETS"
            );
        }
        assert_eq!(files.len(), ASSETS.len());
    }

    #[test]
    fn origins_and_paths() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "pi.local:8080".parse().unwrap());
        assert!(!same_origin(&h, false), "no Origin: not ours");
        h.insert(header::ORIGIN, "http://pi.local:8080".parse().unwrap());
        assert!(same_origin(&h, false));
        assert!(!same_origin(&h, true), "https page, http origin");
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h, false));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h, false));
        assert_eq!(local_path(Some("/#/c/x")), "/#/c/x");
        for bad in ["//evil.example/", "https://evil.example/", "/\\evil", "x"] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(file_name("Trip to Paris? (2026)"), "trip-to-paris-2026");
        assert_eq!(file_name("???"), "conversation");
    }

    #[test]
    fn cookies_are_strict_and_http_only() {
        let c = session_set_cookie(Some("abc"), 3600, true);
        let s = c.to_str().unwrap();
        for part in [
            "pichat_session=abc",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Max-Age=3600",
            "Path=/",
        ] {
            assert!(s.contains(part), "{s}");
        }
        let plain = session_set_cookie(Some("abc"), 60, false);
        assert!(!plain.to_str().unwrap().contains("Secure"));
        let gone = session_set_cookie(None, 0, false);
        assert!(gone.to_str().unwrap().contains("Max-Age=0"), "{gone:?}");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; pichat_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("xyz"));
    }
}
