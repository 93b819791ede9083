//! `get_settings` and `update_settings` (a change is notified to the
//! user's other connections once committed).

use super::client::Client;
use super::db::notify;
use crate::protocol::{self as p, ErrorPayload, Reply};

pub(super) async fn get(c: &Client) -> Result<Reply, ErrorPayload> {
    let user = c.user();
    let settings = c.db(move |st| st.server().settings(user)).await?;
    Ok(Reply::Settings(p::SettingsPayload {
        settings: (&settings).into(),
    }))
}

pub(super) async fn update(c: &Client, u: p::UpdateSettings) -> Result<Reply, ErrorPayload> {
    let (user, me, hub) = (c.user(), c.conn.id, c.state.hub.clone());
    let upd = (&u).into();
    let settings = c
        .db_write(move |st| {
            let (set, changed) = st.server().update_settings(user, &upd)?;
            if changed {
                notify(
                    st,
                    &hub,
                    user,
                    me,
                    Reply::SettingsUpdated(p::SettingsPayload {
                        settings: (&set).into(),
                    }),
                );
            }
            Ok(set)
        })
        .await?;
    Ok(Reply::SettingsUpdated(p::SettingsPayload {
        settings: (&settings).into(),
    }))
}
