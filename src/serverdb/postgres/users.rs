//! Users, device tokens and browser sessions in the PostgreSQL store.

use tokio_postgres::Row;

use super::*;
use crate::time;

const TOKEN_SELECT: &str =
    "SELECT t.id, u.name, t.device, t.created_at, t.last_used_at, t.revoked_at
     FROM srv_tokens t JOIN srv_users u ON u.id = t.user_id";

fn token_from_row(r: &Row) -> TokenInfo {
    TokenInfo {
        id: r.get(0),
        user: r.get(1),
        device: r.get(2),
        created_at: r.get(3),
        last_used_at: r.get(4),
        revoked_at: r.get(5),
    }
}

impl PgStore {
    pub(super) async fn add_token_(
        &self,
        user: &str,
        device: Option<&str>,
        hash: &[u8; 32],
    ) -> Result<TokenInfo> {
        check_user_name(user)?;
        check_device_name(device)?;
        let now = time::now_ms();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        exec(
            &tx,
            "INSERT INTO srv_users (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&user, &now],
        )
        .await?;
        let uid: i64 = one(&tx, "SELECT id FROM srv_users WHERE name = $1", &[&user])
            .await?
            .get(0);
        let device = device.map(str::trim);
        let id: i64 = one(
            &tx,
            "INSERT INTO srv_tokens (user_id, device, hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            &[&uid, &device, &&hash[..], &now],
        )
        .await?
        .get(0);
        let t = token(&tx, id).await?;
        self.commit(tx).await?;
        Ok(t)
    }

    pub(super) async fn tokens_(&self) -> Result<Vec<TokenInfo>> {
        let c = self.client().await?;
        Ok(
            rows(&c, &format!("{TOKEN_SELECT} ORDER BY u.name, t.id"), &[])
                .await?
                .iter()
                .map(token_from_row)
                .collect(),
        )
    }

    pub(super) async fn revoke_token_(&self, id: i64) -> Result<TokenInfo> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE srv_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &time::now_ms()],
        )
        .await?;
        token(&c, id).await
    }

    pub(super) async fn token_by_hash_(&self, hash: &[u8; 32]) -> Result<Option<TokenMatch>> {
        let c = self.client().await?;
        let found = opt(
            &c,
            "SELECT t.id, t.user_id, u.name, t.hash FROM srv_tokens t
             JOIN srv_users u ON u.id = t.user_id
             WHERE t.hash = $1 AND t.revoked_at IS NULL",
            &[&&hash[..]],
        )
        .await?
        .map(|r| TokenMatch {
            token_id: r.get(0),
            user_id: r.get(1),
            user: r.get(2),
            hash: r.get(3),
        });
        if let Some(t) = &found {
            let now = time::now_ms();
            exec(
                &c,
                "UPDATE srv_tokens SET last_used_at = $2
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
                &[&t.token_id, &now, &(now - LAST_USED_EVERY_MS)],
            )
            .await?;
        }
        Ok(found)
    }

    pub(super) async fn user_rev_(&self, user: UserId) -> Result<i64> {
        let c = self.client().await?;
        opt(&c, "SELECT rev FROM srv_users WHERE id = $1", &[&user])
            .await?
            .map(|r| r.get(0))
            .ok_or_else(|| not_found("user", &user.to_string()))
    }

    pub(super) async fn user_id_(&self, name: &str) -> Result<UserId> {
        let c = self.client().await?;
        opt(&c, "SELECT id FROM srv_users WHERE name = $1", &[&name])
            .await?
            .map(|r| r.get(0))
            .ok_or_else(|| not_found("user", name))
    }

    pub(super) async fn create_session_(
        &self,
        token_id: i64,
        digest: &[u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        exec(
            &tx,
            "DELETE FROM srv_sessions WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
        exec(
            &tx,
            "INSERT INTO srv_sessions (id, token_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            &[&&digest[..], &token_id, &now, &expires_at],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM srv_sessions WHERE token_id = $1 AND id NOT IN
                 (SELECT id FROM srv_sessions WHERE token_id = $1
                  ORDER BY created_at DESC, id DESC LIMIT $2)",
            &[&token_id, &MAX_SESSIONS_PER_TOKEN],
        )
        .await?;
        self.commit(tx).await
    }

    pub(super) async fn session_(
        &self,
        digest: &[u8; 32],
        now: i64,
    ) -> Result<Option<(TokenMatch, i64)>> {
        let c = self.client().await?;
        Ok(opt(
            &c,
            "SELECT t.id, t.user_id, u.name, s.id, s.expires_at FROM srv_sessions s
             JOIN srv_tokens t ON t.id = s.token_id
             JOIN srv_users u ON u.id = t.user_id
             WHERE s.id = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
            &[&&digest[..], &now],
        )
        .await?
        .map(|r| {
            (
                TokenMatch {
                    token_id: r.get(0),
                    user_id: r.get(1),
                    user: r.get(2),
                    hash: r.get(3),
                },
                r.get(4),
            )
        }))
    }

    pub(super) async fn delete_session_(&self, digest: &[u8; 32]) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "DELETE FROM srv_sessions WHERE id = $1",
            &[&&digest[..]],
        )
        .await?;
        Ok(())
    }
}

async fn token(c: &impl GenericClient, id: i64) -> Result<TokenInfo> {
    opt(c, &format!("{TOKEN_SELECT} WHERE t.id = $1"), &[&id])
        .await?
        .map(|r| token_from_row(&r))
        .ok_or_else(|| not_found("token", &id.to_string()))
}
