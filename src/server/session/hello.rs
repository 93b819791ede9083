//! `hello` (who the client is; the `welcome` names what this server can do)
//! and `ping`.

use super::client::Client;
use crate::protocol::{self as p, ErrorPayload, Reply};
use crate::time;

/// `hello`: the connection joins the user's notifications; `welcome` has
/// the user's revision, the features and the models of the configured
/// engines.
pub(super) async fn hello(c: &mut Client, h: p::Hello) -> Result<Reply, ErrorPayload> {
    let user = c.user();
    let first = c.kind.is_none();
    c.kind = Some(h.client_kind);
    c.state.hub.join(&c.conn);
    let rev = c
        .store()
        .user_rev(user)
        .await
        .map_err(super::db::db_error)?;
    if first {
        tracing::info!(
            "{}: {:?} client \"{}\" connected (cursor {}, server rev {rev})",
            c.conn.user.name,
            h.client_kind,
            h.client_id,
            h.last_rev.map_or("none".to_string(), |r| r.to_string())
        );
    }
    let e = &c.state.engines;
    let mut features = vec![
        p::features::SYNC,
        p::features::APPEND,
        p::features::SEARCH,
        p::features::SETTINGS,
    ];
    for (on, name) in [
        (!e.llm.is_empty(), p::features::AI_REPLIES),
        (!e.tts.is_empty(), p::features::TEXT_TO_SPEECH),
        (!e.stt.is_empty(), p::features::SPEECH_TO_TEXT),
    ] {
        if on {
            features.push(name);
        }
    }
    Ok(Reply::Welcome(p::Welcome {
        protocol: p::PROTOCOL_VERSION,
        rev,
        server_time: time::now_ms(),
        features: features.into_iter().map(str::to_string).collect(),
        models: e
            .llm
            .iter()
            .map(|l| p::ModelInfo {
                engine: l.name().to_string(),
                model: l.model(),
            })
            .collect(),
    }))
}

/// `ping`: the server's clock.
pub(super) fn pong() -> Reply {
    Reply::Pong(p::Pong {
        server_time: time::now_ms(),
    })
}
