//! `get_settings` and `update_settings` (a change reaches the user's other
//! connections through the store's change feed once committed).

use super::client::Client;
use super::db::db_error;
use crate::protocol::{self as p, ErrorPayload, Reply};

pub(super) async fn get(c: &Client) -> Result<Reply, ErrorPayload> {
    let settings = c.store().settings(c.user()).await.map_err(db_error)?;
    Ok(Reply::Settings(p::SettingsPayload {
        settings: (&settings).into(),
    }))
}

pub(super) async fn update(c: &Client, u: p::UpdateSettings) -> Result<Reply, ErrorPayload> {
    let (settings, _changed) = c
        .store()
        .update_settings(c.author(), c.user(), (&u).into())
        .await
        .map_err(db_error)?;
    Ok(Reply::SettingsUpdated(p::SettingsPayload {
        settings: (&settings).into(),
    }))
}
