//! The chat server's storage for its web app: signed-in browser sessions and
//! the conversations of an export download. Schema: migration V4.
//!
//! A session is made from a device token at sign-in. Only the SHA-256 of
//! its cookie is stored, with the token it came from and its expiry: a
//! session is valid while it has not expired **and** its token is not
//! revoked, so revoking a token signs out every browser it signed in.

use rusqlite::{OptionalExtension, params};

use super::export::{ExportedConversation, FORMAT_NAME, FORMAT_VERSION};
use super::server::{ServerDb, TokenMatch, UserId};
use super::*;

/// Live sessions kept per token; signing in again past this ends the oldest.
pub const MAX_SESSIONS_PER_TOKEN: i64 = 20;

/// The first part of a streamed JSON export: the same document as
/// `pichat history export --format json` (importable with `pichat history
/// import`), its conversations written one by one after this.
pub fn json_export_head(exported_at: i64) -> String {
    format!(
        "{{\"format\":\"{FORMAT_NAME}\",\"version\":{FORMAT_VERSION},\"exported_at\":\"{}\",\"conversations\":[\n",
        crate::time::format(exported_at)
    )
}

/// The end of a streamed JSON export.
pub const JSON_EXPORT_TAIL: &str = "\n]}\n";

impl ServerDb<'_> {
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

    /// The ids of the user's conversations to export, newest activity
    /// first: one (it must be the user's and live) or all (archived ones
    /// too).
    pub fn export_ids(&self, user: UserId, conversation: Option<&str>) -> Result<Vec<String>> {
        if let Some(id) = conversation {
            return Ok(vec![self.get_conversation(user, id)?.id]);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM srv_conversations WHERE user_id = ?1 AND deleted = 0
             ORDER BY activity_at DESC, id DESC",
        )?;
        let ids = stmt
            .query_map([user], |r| id_at(r, 0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    /// One conversation with all its messages, oldest first, in the
    /// history's export form; `None` when it was deleted meanwhile.
    pub fn export_conversation(
        &self,
        user: UserId,
        id: &str,
    ) -> Result<Option<ExportedConversation>> {
        let c = match self.get_conversation(user, id) {
            Ok(c) => c,
            Err(HistoryError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut messages = Vec::with_capacity(c.message_count.clamp(0, 100_000) as usize);
        let mut before: Option<String> = None;
        loop {
            let (page, more) = self.messages(user, id, 1000, before.as_deref())?;
            before = page.first().map(|m| m.id.clone());
            let mut page = page;
            page.append(&mut messages);
            messages = page;
            if !more {
                break;
            }
        }
        Ok(Some(ExportedConversation {
            conversation: Conversation {
                id: c.id,
                title: c.title,
                model_id: c.model_id,
                user_id: None,
                created_at: c.created_at,
                updated_at: c.updated_at,
                last_message_at: c.last_message_at,
                message_count: c.message_count,
                archived: c.archived,
                metadata: serde_json::Value::Object(Default::default()),
                rev: c.rev,
            },
            messages,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::export::{ExportFormat, parse_export, render};

    fn store_with_user() -> (Store, UserId, i64) {
        let mut s = Store::open_in_memory().unwrap();
        let t = s
            .server()
            .add_token("alice", Some("browser"), &[7; 32])
            .unwrap();
        let uid = s.server().user_id("alice").unwrap();
        (s, uid, t.id)
    }

    #[test]
    fn sessions_expire_and_die_with_their_token() {
        let (mut s, uid, tid) = store_with_user();
        s.server()
            .create_session(tid, &[1; 32], 1000, 2000)
            .unwrap();
        let (who, exp) = s.server().session(&[1; 32], 1999).unwrap().unwrap();
        assert_eq!((who.user_id, who.token_id, exp), (uid, tid, 2000));
        // At its expiry and after: gone.
        assert!(s.server().session(&[1; 32], 2000).unwrap().is_none());
        assert!(s.server().session(&[2; 32], 1500).unwrap().is_none());
        s.server()
            .create_session(tid, &[3; 32], 1000, 9000)
            .unwrap();
        assert!(s.server().session(&[3; 32], 1500).unwrap().is_some());
        s.server().revoke_token(tid).unwrap();
        assert!(s.server().session(&[3; 32], 1500).unwrap().is_none());
    }

    #[test]
    fn sign_out_and_the_limit_per_token() {
        let (mut s, _uid, tid) = store_with_user();
        for i in 0..=MAX_SESSIONS_PER_TOKEN as u8 {
            s.server()
                .create_session(tid, &[i + 1; 32], 1000 + i64::from(i), 99_999)
                .unwrap();
        }
        // The limit is kept: the oldest went, the newest stay.
        assert!(s.server().session(&[1; 32], 5000).unwrap().is_none());
        assert!(s.server().session(&[2; 32], 5000).unwrap().is_some());
        let last = MAX_SESSIONS_PER_TOKEN as u8 + 1;
        assert!(s.server().session(&[last; 32], 5000).unwrap().is_some());
        s.server().delete_session(&[last; 32]).unwrap();
        assert!(s.server().session(&[last; 32], 5000).unwrap().is_none());
        s.server().delete_session(&[last; 32]).unwrap();
    }

    #[test]
    fn exports_are_the_users_and_import_back() {
        let (mut s, uid, _) = store_with_user();
        let other = {
            s.server().add_token("bob", None, &[8; 32]).unwrap();
            s.server().user_id("bob").unwrap()
        };
        let mut db = s.server();
        let (c, _) = db
            .create_conversation(
                uid,
                &NewConversation {
                    title: Some("Trip".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        for (i, text) in ["first", "second"].iter().enumerate() {
            let mut m = NewMessage::new(&c.id, Role::User, text.to_string());
            m.created_at = Some(1000 + i as i64);
            db.add_message(uid, &m).unwrap();
        }
        let (b, _) = db
            .create_conversation(other, &NewConversation::default())
            .unwrap();
        assert_eq!(db.export_ids(uid, None).unwrap(), vec![c.id.clone()]);
        assert!(matches!(
            db.export_ids(uid, Some(&b.id)),
            Err(HistoryError::NotFound { .. })
        ));
        let ec = db.export_conversation(uid, &c.id).unwrap().unwrap();
        let texts: Vec<_> = ec.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["first", "second"]);
        assert!(db.export_conversation(uid, &b.id).unwrap().is_none());
        // The streamed JSON is the history's export format.
        let json = format!(
            "{}{}{}",
            json_export_head(5000),
            serde_json::to_string(&ec).unwrap(),
            JSON_EXPORT_TAIL
        );
        let doc = parse_export(&json).unwrap();
        assert_eq!(doc.conversations[0].messages.len(), 2);
        assert!(render(&doc, ExportFormat::Markdown).contains("# Trip"));
        let mut local = Store::open_in_memory().unwrap();
        let report = local.import(&doc).unwrap();
        assert_eq!(report.messages_added, 2);
    }
}
