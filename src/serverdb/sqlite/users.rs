//! Users, device tokens and browser sessions in the SQLite store.

use rusqlite::{OptionalExtension, Row, params};

use super::Conn;
use crate::serverdb::records::*;
use crate::store::{Result, StoreError};
use crate::time;

impl Conn {
    // ---- users and tokens ----

    /// Adds a device token (its SHA-256) for `user`, creating the user.
    pub fn add_token(
        &mut self,
        user: &str,
        device: Option<&str>,
        hash: &[u8; 32],
    ) -> Result<TokenInfo> {
        check_user_name(user)?;
        if let Some(d) = device
            && (d.trim().is_empty() || d.chars().count() > MAX_DEVICE_CHARS)
        {
            return Err(StoreError::Invalid(format!(
                "device name: use 1 to {MAX_DEVICE_CHARS} characters"
            )));
        }
        let now = time::now_ms();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO srv_users (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![user, now],
        )?;
        let uid: i64 = tx.query_row("SELECT id FROM srv_users WHERE name = ?1", [user], |r| {
            r.get(0)
        })?;
        tx.execute(
            "INSERT INTO srv_tokens (user_id, device, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![uid, device.map(str::trim), &hash[..], now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        self.token(id)
    }

    fn token(&self, id: i64) -> Result<TokenInfo> {
        self.conn
            .query_row(
                "SELECT t.id, u.name, t.device, t.created_at, t.last_used_at, t.revoked_at
                 FROM srv_tokens t JOIN srv_users u ON u.id = t.user_id WHERE t.id = ?1",
                [id],
                token_from_row,
            )
            .optional()?
            .ok_or_else(|| not_found("token", &id.to_string()))
    }

    /// Every token, by user then id.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut stmt = self.conn.prepare(
            "SELECT t.id, u.name, t.device, t.created_at, t.last_used_at, t.revoked_at
             FROM srv_tokens t JOIN srv_users u ON u.id = t.user_id ORDER BY u.name, t.id",
        )?;
        let rows = stmt
            .query_map([], token_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Revokes a token (it stays listed, marked revoked). Revoking twice is
    /// not an error.
    pub fn revoke_token(&mut self, id: i64) -> Result<TokenInfo> {
        self.conn.execute(
            "UPDATE srv_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, time::now_ms()],
        )?;
        self.token(id)
    }

    /// The live token with this hash, if any (noting its use).
    pub fn token_by_hash(&mut self, hash: &[u8; 32]) -> Result<Option<TokenMatch>> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT t.id, t.user_id, u.name, t.hash FROM srv_tokens t
                 JOIN srv_users u ON u.id = t.user_id
                 WHERE t.hash = ?1 AND t.revoked_at IS NULL",
            )?
            .query_row([&hash[..]], |r| {
                Ok(TokenMatch {
                    token_id: r.get(0)?,
                    user_id: r.get(1)?,
                    user: r.get(2)?,
                    hash: r.get(3)?,
                })
            })
            .optional()?;
        if let Some(t) = &found {
            let now = time::now_ms();
            self.conn
                .prepare_cached(
                    "UPDATE srv_tokens SET last_used_at = ?2
                     WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3)",
                )?
                .execute(params![t.token_id, now, now - LAST_USED_EVERY_MS])?;
        }
        Ok(found)
    }

    /// The user's current revision.
    pub fn user_rev(&self, user: UserId) -> Result<i64> {
        self.conn
            .prepare_cached("SELECT rev FROM srv_users WHERE id = ?1")?
            .query_row([user], |r| r.get(0))
            .optional()?
            .ok_or_else(|| not_found("user", &user.to_string()))
    }

    /// The id of a user by name (for tools and tests).
    pub fn user_id(&self, name: &str) -> Result<UserId> {
        self.conn
            .query_row("SELECT id FROM srv_users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| not_found("user", name))
    }

    /// Stores a new session (the digest of its cookie) of `token_id`,
    /// valid until `expires_at`. Expired sessions go, and the token's
    /// oldest ones beyond [`MAX_SESSIONS_PER_TOKEN`].
    pub fn create_session(
        &mut self,
        token_id: i64,
        digest: &[u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        let tx = self.write_tx()?;
        tx.prepare_cached("DELETE FROM srv_sessions WHERE expires_at <= ?1")?
            .execute([now])?;
        tx.prepare_cached(
            "INSERT INTO srv_sessions (id, token_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![&digest[..], token_id, now, expires_at])?;
        tx.prepare_cached(
            "DELETE FROM srv_sessions WHERE token_id = ?1 AND id NOT IN
                 (SELECT id FROM srv_sessions WHERE token_id = ?1
                  ORDER BY created_at DESC, id DESC LIMIT ?2)",
        )?
        .execute(params![token_id, MAX_SESSIONS_PER_TOKEN])?;
        tx.commit()
    }

    /// The user of a live session (not expired at `now`, its token not
    /// revoked), with the stored digest for a constant-time compare.
    pub fn session(&self, digest: &[u8; 32], now: i64) -> Result<Option<(TokenMatch, i64)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT t.id, t.user_id, u.name, s.id, s.expires_at FROM srv_sessions s
                 JOIN srv_tokens t ON t.id = s.token_id
                 JOIN srv_users u ON u.id = t.user_id
                 WHERE s.id = ?1 AND s.expires_at > ?2 AND t.revoked_at IS NULL",
            )?
            .query_row(params![&digest[..], now], |r| {
                Ok((
                    TokenMatch {
                        token_id: r.get(0)?,
                        user_id: r.get(1)?,
                        user: r.get(2)?,
                        hash: r.get(3)?,
                    },
                    r.get(4)?,
                ))
            })
            .optional()?)
    }

    /// Ends a session (sign-out). Ending one that is gone is not an error.
    pub fn delete_session(&mut self, digest: &[u8; 32]) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM srv_sessions WHERE id = ?1")?
            .execute([&digest[..]])?;
        Ok(())
    }
}

fn token_from_row(r: &Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(0)?,
        user: r.get(1)?,
        device: r.get(2)?,
        created_at: r.get(3)?,
        last_used_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}
