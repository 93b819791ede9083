//! A user's settings in the PostgreSQL store.

use super::*;

const SETTINGS_COLS: &str =
    "selected_model, voice_gender, voice_accent, voice_speed, assistant_personality, rev";

fn from_row(r: &Row) -> ServerSettings {
    ServerSettings {
        selected_model: r.get(0),
        voice_gender: r.get(1),
        voice_accent: r.get(2),
        voice_speed: r.get(3),
        assistant_personality: r.get(4),
        rev: r.get(5),
    }
}

/// The user's settings (all empty and rev 0 until first changed).
pub(super) async fn get(c: &impl GenericClient, user: UserId) -> Result<ServerSettings> {
    Ok(opt(
        c,
        &format!("SELECT {SETTINGS_COLS} FROM srv_settings WHERE user_id = $1"),
        &[&user],
    )
    .await?
    .map(|r| from_row(&r))
    .unwrap_or_default())
}

/// The user's settings if changed after `after` and at or before `upto`.
pub(super) async fn changed_in(
    c: &impl GenericClient,
    user: UserId,
    after: i64,
    upto: i64,
) -> Result<Option<ServerSettings>> {
    Ok(Some(get(c, user).await?).filter(|s| s.rev > after && s.rev <= upto))
}

impl PgStore {
    pub(super) async fn update_settings_(
        &self,
        by: Author,
        user: UserId,
        u: &SettingsUpdate,
    ) -> Result<(ServerSettings, bool)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let rev = lock_user(&tx, user).await?;
        let cur = get(&tx, user).await?;
        let pick = |new: &Option<Option<String>>, old: &Option<String>| {
            new.clone().unwrap_or_else(|| old.clone())
        };
        let mut next = ServerSettings {
            selected_model: pick(&u.selected_model, &cur.selected_model),
            voice_gender: pick(&u.voice_gender, &cur.voice_gender),
            voice_accent: pick(&u.voice_accent, &cur.voice_accent),
            voice_speed: u.voice_speed.unwrap_or(cur.voice_speed),
            assistant_personality: pick(&u.assistant_personality, &cur.assistant_personality),
            rev: cur.rev,
        };
        if next == cur {
            return Ok((cur, false));
        }
        next.rev = rev + 1;
        exec(
            &tx,
            "INSERT INTO srv_settings (user_id, selected_model, voice_gender, voice_accent,
                 voice_speed, assistant_personality, rev)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (user_id) DO UPDATE SET
                 selected_model = excluded.selected_model, voice_gender = excluded.voice_gender,
                 voice_accent = excluded.voice_accent, voice_speed = excluded.voice_speed,
                 assistant_personality = excluded.assistant_personality, rev = excluded.rev",
            &[
                &user,
                &next.selected_model,
                &next.voice_gender,
                &next.voice_accent,
                &next.voice_speed,
                &next.assistant_personality,
                &next.rev,
            ],
        )
        .await?;
        set_rev(&tx, user, next.rev).await?;
        self.commit_feed(tx, user, by, vec![ServerChange::Settings(next.clone())])
            .await?;
        Ok((next, true))
    }
}
