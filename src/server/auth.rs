//! Device tokens: made here from 32 random bytes, shown once, stored only as
//! their SHA-256 digest. A presented token is hashed and looked up by its
//! digest; the stored digest is then compared in constant time, so timing
//! tells nothing about how close a guess was.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::serverdb::{ServerStore, TokenInfo, UserId};
use crate::store::StoreError;

/// Tokens start with this, so they are recognizable (and scannable) as pichat's.
pub const TOKEN_PREFIX: &str = "pct_";

/// Longest token accepted (longer ones are refused before hashing).
const MAX_TOKEN_LEN: usize = 256;

/// A new random token: `pct_` + 32 bytes from the OS, base64url.
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The SHA-256 digest a token is stored as.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests in constant time.
pub fn digests_match(stored: &[u8], presented: &[u8; 32]) -> bool {
    stored.len() == presented.len() && bool::from(stored.ct_eq(presented))
}

/// Makes a token for `user` (created if new) on `device`, stores its hash,
/// and returns the record and the token (the only time it is known).
pub async fn issue_token(
    store: &dyn ServerStore,
    user: &str,
    device: Option<&str>,
) -> Result<(TokenInfo, String), StoreError> {
    let token = generate_token()
        .map_err(|e| StoreError::Invalid(format!("no randomness from the OS: {e}")))?;
    let info = store.add_token(user, device, hash_token(&token)).await?;
    Ok((info, token))
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub id: UserId,
    pub name: String,
    pub token_id: i64,
    /// The token's device name (`--device`), when it has one.
    pub device: Option<String>,
}

/// Checks a presented token against the store.
pub(crate) async fn check(
    store: &dyn ServerStore,
    token: &str,
) -> Result<Option<AuthUser>, StoreError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    let digest = hash_token(token);
    let Some(found) = store.token_by_hash(digest).await? else {
        return Ok(None);
    };
    if !digests_match(&found.hash, &digest) {
        return Ok(None);
    }
    Ok(Some(AuthUser {
        id: found.user_id,
        name: found.user,
        token_id: found.token_id,
        device: None,
    }))
}

/// Signs a browser in: a new session of the token `user` came with, valid
/// for `ttl_ms`. Returns the cookie's value (32 random bytes, base64url),
/// known only to the browser; the store keeps its SHA-256.
pub(crate) async fn new_session(
    store: &dyn ServerStore,
    user: &AuthUser,
    now: i64,
    ttl_ms: i64,
) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Invalid(format!("no randomness from the OS: {e}")))?;
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    store
        .create_session(user.token_id, hash_token(&value), now, now + ttl_ms)
        .await?;
    Ok(value)
}

/// Who a session cookie belongs to, while it is live (not expired, its
/// token not revoked), and when it expires (ms).
pub(crate) async fn check_session(
    store: &dyn ServerStore,
    value: &str,
    now: i64,
) -> Result<Option<(AuthUser, i64)>, StoreError> {
    if value.is_empty() || value.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    let digest = hash_token(value);
    let Some((found, expires)) = store.session(digest, now).await? else {
        return Ok(None);
    };
    if !digests_match(&found.hash, &digest) {
        return Ok(None);
    }
    Ok(Some((
        AuthUser {
            id: found.user_id,
            name: found.user,
            token_id: found.token_id,
            device: None,
        },
        expires,
    )))
}

/// Signs a session out (its cookie value).
pub(crate) async fn end_session(store: &dyn ServerStore, value: &str) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > MAX_TOKEN_LEN {
        return Ok(());
    }
    store.delete_session(hash_token(value)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server store in a temporary directory.
    fn store() -> (tempfile::TempDir, crate::serverdb::sqlite::SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let (s, _thread) = crate::serverdb::sqlite::SqliteStore::open(
            &dir.path().join("server.db"),
            &Default::default(),
        )
        .unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn tokens_are_random_and_checked_by_hash() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 4 + 43, "{a}");
        let (_dir, s) = store();
        let (info, token) = issue_token(&s, "alice", Some("pi")).await.unwrap();
        assert_eq!(info.user, "alice");
        let who = check(&s, &token).await.unwrap().unwrap();
        assert_eq!((who.name.as_str(), who.token_id), ("alice", info.id));
        assert!(check(&s, &a).await.unwrap().is_none());
        assert!(check(&s, "").await.unwrap().is_none());
        assert!(check(&s, &"x".repeat(1000)).await.unwrap().is_none());
        assert!(digests_match(&hash_token("x"), &hash_token("x")));
        assert!(!digests_match(&hash_token("x")[..31], &hash_token("x")));
    }

    #[tokio::test]
    async fn sessions_are_checked_by_hash_and_end() {
        let (_dir, s) = store();
        let (_, token) = issue_token(&s, "alice", Some("browser")).await.unwrap();
        let who = check(&s, &token).await.unwrap().unwrap();
        let v = new_session(&s, &who, 1000, 500).await.unwrap();
        let (u, exp) = check_session(&s, &v, 1499).await.unwrap().unwrap();
        assert_eq!(
            (u.name.as_str(), u.token_id, exp),
            ("alice", who.token_id, 1500)
        );
        // The token itself is no session cookie, nor is a guess.
        assert!(check_session(&s, &token, 1200).await.unwrap().is_none());
        assert!(
            check_session(&s, &"x".repeat(999), 1200)
                .await
                .unwrap()
                .is_none()
        );
        assert!(check_session(&s, &v, 1500).await.unwrap().is_none());
        let v2 = new_session(&s, &who, 2000, 500).await.unwrap();
        end_session(&s, &v2).await.unwrap();
        assert!(check_session(&s, &v2, 2100).await.unwrap().is_none());
    }
}
