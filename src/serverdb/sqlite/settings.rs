//! A user's settings in the SQLite store.

use rusqlite::{OptionalExtension, params};

use super::*;

impl Conn {
    // ---- settings ----

    pub fn settings(&self, user: UserId) -> Result<ServerSettings> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {SETTINGS_COLS} FROM srv_settings WHERE user_id = ?1"
            ))?
            .query_row([user], settings_from_row)
            .optional()?
            .unwrap_or_default())
    }

    /// Applies a partial change. Returns the settings and whether anything
    /// changed (no change: no new rev).
    pub fn update_settings(
        &mut self,
        user: UserId,
        u: &SettingsUpdate,
    ) -> Result<(ServerSettings, bool)> {
        let tx = self.write_tx()?;
        let cur = tx
            .prepare_cached(&format!(
                "SELECT {SETTINGS_COLS} FROM srv_settings WHERE user_id = ?1"
            ))?
            .query_row([user], settings_from_row)
            .optional()?
            .unwrap_or_default();
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
        next.rev = bump(&tx, user, 1)?;
        tx.execute(
            "INSERT INTO srv_settings (user_id, selected_model, voice_gender, voice_accent,
                 voice_speed, assistant_personality, rev)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (user_id) DO UPDATE SET
                 selected_model = excluded.selected_model, voice_gender = excluded.voice_gender,
                 voice_accent = excluded.voice_accent, voice_speed = excluded.voice_speed,
                 assistant_personality = excluded.assistant_personality, rev = excluded.rev",
            params![
                user,
                next.selected_model,
                next.voice_gender,
                next.voice_accent,
                next.voice_speed,
                next.assistant_personality,
                next.rev
            ],
        )?;
        tx.commit()?;
        Ok((next, true))
    }
}
