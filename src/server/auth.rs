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
}
