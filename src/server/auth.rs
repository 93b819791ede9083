//! Device tokens: made here from 32 random bytes, shown once, stored only as
//! their SHA-256 digest. A presented token is hashed and looked up by its
//! digest; the stored digest is then compared in constant time, so timing
//! tells nothing about how close a guess was.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::history::server::{TokenInfo, UserId};
use crate::history::{HistoryError, Store};

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
pub fn issue_token(
    store: &mut Store,
    user: &str,
    device: Option<&str>,
) -> Result<(TokenInfo, String), HistoryError> {
    let token = generate_token()
        .map_err(|e| HistoryError::Invalid(format!("no randomness from the OS: {e}")))?;
    let info = store
        .server()
        .add_token(user, device, &hash_token(&token))?;
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

/// Checks a presented token against the store (on the store thread).
pub(crate) fn check(store: &mut Store, token: &str) -> Result<Option<AuthUser>, HistoryError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    let digest = hash_token(token);
    let Some(found) = store.server().token_by_hash(&digest)? else {
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
pub(crate) fn new_session(
    store: &mut Store,
    user: &AuthUser,
    now: i64,
    ttl_ms: i64,
) -> Result<String, HistoryError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| HistoryError::Invalid(format!("no randomness from the OS: {e}")))?;
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    store
        .server()
        .create_session(user.token_id, &hash_token(&value), now, now + ttl_ms)?;
    Ok(value)
}

/// Who a session cookie belongs to, while it is live (not expired, its
/// token not revoked), and when it expires (ms).
pub(crate) fn check_session(
    store: &mut Store,
    value: &str,
    now: i64,
) -> Result<Option<(AuthUser, i64)>, HistoryError> {
    if value.is_empty() || value.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    let digest = hash_token(value);
    let Some((found, expires)) = store.server().session(&digest, now)? else {
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
pub(crate) fn end_session(store: &mut Store, value: &str) -> Result<(), HistoryError> {
    if value.is_empty() || value.len() > MAX_TOKEN_LEN {
        return Ok(());
    }
    store.server().delete_session(&hash_token(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_checked_by_hash() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 4 + 43, "{a}");
        let mut s = Store::open_in_memory().unwrap();
        let (info, token) = issue_token(&mut s, "alice", Some("pi")).unwrap();
        assert_eq!(info.user, "alice");
        let who = check(&mut s, &token).unwrap().unwrap();
        assert_eq!((who.name.as_str(), who.token_id), ("alice", info.id));
        assert!(check(&mut s, &a).unwrap().is_none());
        assert!(check(&mut s, "").unwrap().is_none());
        assert!(check(&mut s, &"x".repeat(1000)).unwrap().is_none());
        assert!(digests_match(&hash_token("x"), &hash_token("x")));
        assert!(!digests_match(&hash_token("x")[..31], &hash_token("x")));
    }

    #[test]
    fn sessions_are_checked_by_hash_and_end() {
        let mut s = Store::open_in_memory().unwrap();
        let (_, token) = issue_token(&mut s, "alice", Some("browser")).unwrap();
        let who = check(&mut s, &token).unwrap().unwrap();
        let v = new_session(&mut s, &who, 1000, 500).unwrap();
        let (u, exp) = check_session(&mut s, &v, 1499).unwrap().unwrap();
        assert_eq!(
            (u.name.as_str(), u.token_id, exp),
            ("alice", who.token_id, 1500)
        );
        // The token itself is no session cookie, nor is a guess.
        assert!(check_session(&mut s, &token, 1200).unwrap().is_none());
        assert!(
            check_session(&mut s, &"x".repeat(999), 1200)
                .unwrap()
                .is_none()
        );
        assert!(check_session(&mut s, &v, 1500).unwrap().is_none());
        let v2 = new_session(&mut s, &who, 2000, 500).unwrap();
        end_session(&mut s, &v2).unwrap();
        assert!(check_session(&mut s, &v2, 2100).unwrap().is_none());
    }
}
