//! Export of conversations as JSON, Markdown or plain text, and import of the
//! JSON export (idempotent: importing the same file twice adds nothing).

use std::fmt::Write as _;
use std::path::Path;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::conversations::{CONV_COLS, conv_from_row};
use super::messages::{INSERT_MSG, MSG_COLS, msg_from_row};
use super::*;
use crate::time;

/// Marks the JSON export format (and its version) at the top of the file.
pub const FORMAT_NAME: &str = "pichat-history";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Json,
    Markdown,
    Text,
}

/// A conversation with its messages, as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedConversation {
    #[serde(flatten)]
    pub conversation: Conversation,
    #[serde(default)]
    pub messages: Vec<Message>,
}

/// The JSON export document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub format: String,
    pub version: u32,
    #[serde(with = "time::rfc3339")]
    pub exported_at: i64,
    pub conversations: Vec<ExportedConversation>,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub conversations_added: usize,
    pub conversations_existing: usize,
    pub messages_added: usize,
    pub messages_existing: usize,
}

impl Store {
    /// Collects one conversation (or all, newest activity first) with their messages.
    pub fn export(&self, conversation_id: Option<&str>) -> Result<Export> {
        let convs: Vec<Conversation> = match conversation_id {
            Some(id) => vec![self.get_conversation(id)?],
            None => self
                .conn
                .prepare(&format!(
                    "SELECT {CONV_COLS} FROM conversations ORDER BY activity_at DESC, id DESC"
                ))?
                .query_map([], conv_from_row)?
                .collect::<rusqlite::Result<_>>()?,
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MSG_COLS} FROM messages m WHERE m.conversation_id = ?1 ORDER BY m.created_at, m.seq"
        ))?;
        let mut out = Vec::with_capacity(convs.len());
        for c in convs {
            let messages = stmt
                .query_map([&c.id], msg_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            out.push(ExportedConversation {
                conversation: c,
                messages,
            });
        }
        Ok(Export {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            exported_at: time::now_ms(),
            conversations: out,
        })
    }

    /// Imports an export document in one transaction. Conversations and
    /// messages whose ids exist already are left as they are.
    pub fn import(&mut self, doc: &Export) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        let tx = self.conn.transaction()?;
        {
            let mut conv_stmt = tx.prepare(
                "INSERT INTO conversations (id, title, model_id, created_at, updated_at, activity_at, archived, metadata)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6, ?7) ON CONFLICT (id) DO NOTHING",
            )?;
            let mut msg_stmt = tx.prepare(INSERT_MSG)?;
            for ec in &doc.conversations {
                let c = &ec.conversation;
                let n = conv_stmt.execute(params![
                    c.id,
                    c.title,
                    c.model_id,
                    c.created_at,
                    c.updated_at,
                    c.archived,
                    meta_to_sql(&Some(c.metadata.clone())),
                ])?;
                if n == 1 {
                    report.conversations_added += 1;
                } else {
                    report.conversations_existing += 1;
                }
                for m in &ec.messages {
                    let n = msg_stmt.execute(params![
                        m.id,
                        c.id,
                        m.role.as_str(),
                        m.content,
                        m.created_at,
                        m.model_id,
                        m.tokens_used,
                        m.response_time_ms,
                        m.is_audio,
                        m.origin.as_str(),
                        m.reply_to,
                        meta_to_sql(&Some(m.metadata.clone())),
                    ])?;
                    if n == 1 {
                        report.messages_added += 1;
                    } else {
                        report.messages_existing += 1;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(report)
    }
}

/// Reads and validates an export file completely, before anything is written.
pub fn read_export(path: &Path) -> Result<Export> {
    let text = std::fs::read_to_string(path).map_err(|e| HistoryError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse_export(&text).map_err(|message| HistoryError::Import {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses and validates export JSON. The error says where and what.
pub fn parse_export(text: &str) -> std::result::Result<Export, String> {
    let doc: Export = serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "the file ends too early (truncated?)",
            serde_json::error::Category::Syntax => "not valid JSON",
            _ => "not a pichat history export",
        };
        format!("{}:{}: {what}: {e}", e.line(), e.column())
    })?;
    if doc.format != FORMAT_NAME {
        return Err(format!(
            "format is \"{}\", expected \"{FORMAT_NAME}\" (make it with `pichat history export --format json`)",
            doc.format
        ));
    }
    if doc.version > FORMAT_VERSION {
        return Err(format!(
            "export version {} is newer than this pichat reads ({FORMAT_VERSION}); upgrade pichat",
            doc.version
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, ec) in doc.conversations.iter().enumerate() {
        let c = &ec.conversation;
        let at = format!("conversations[{i}]");
        check_id(&format!("{at}.id"), &c.id).map_err(|e| e.to_string())?;
        let n = c.title.trim().chars().count();
        if n == 0 || n > MAX_TITLE_CHARS {
            return Err(format!("{at}.title must have 1 to {MAX_TITLE_CHARS} characters"));
        }
        for (j, m) in ec.messages.iter().enumerate() {
            let at = format!("{at}.messages[{j}]");
            check_id(&format!("{at}.id"), &m.id).map_err(|e| e.to_string())?;
            if m.conversation_id != c.id {
                return Err(format!(
                    "{at}.conversation_id is {}, but the message is inside conversation {}",
                    m.conversation_id, c.id
                ));
            }
            check_content(&m.content).map_err(|e| format!("{at}.content: {e}"))?;
            if !seen.insert(m.id.as_str()) {
                return Err(format!("{at}.id {} appears twice in the file", m.id));
            }
        }
    }
    Ok(doc)
}

fn speaker(role: Role) -> &'static str {
    match role {
        Role::User => "You",
        Role::Assistant => "Assistant",
        Role::System => "System",
    }
}

/// Renders an export in the chosen format.
pub fn render(doc: &Export, format: ExportFormat) -> String {
    match format {
        ExportFormat::Json => {
            let mut s = serde_json::to_string_pretty(doc).unwrap_or_default();
            s.push('\n');
            s
        }
        ExportFormat::Markdown => {
            let mut s = String::new();
            for ec in &doc.conversations {
                let c = &ec.conversation;
                let _ = writeln!(s, "# {}\n", c.title);
                let _ = writeln!(
                    s,
                    "*{} messages, started {}{}{}*\n",
                    ec.messages.len(),
                    time::format(c.created_at),
                    c.model_id.as_deref().map(|m| format!(", model {m}")).unwrap_or_default(),
                    if c.archived { ", archived" } else { "" },
                );
                for m in &ec.messages {
                    let _ = writeln!(
                        s,
                        "**{}** ({}){}:\n\n{}\n",
                        speaker(m.role),
                        time::format(m.created_at),
                        if m.is_audio { " 🎤" } else { "" },
                        m.content
                    );
                }
            }
            s
        }
        ExportFormat::Text => {
            let mut s = String::new();
            for ec in &doc.conversations {
                let c = &ec.conversation;
                let _ = writeln!(s, "== {} ({}) ==", c.title, c.id);
                for m in &ec.messages {
                    let _ = writeln!(s, "[{}] {}: {}", time::short(m.created_at), speaker(m.role), m.content);
                }
                s.push('\n');
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Store {
        let mut s = Store::open_in_memory().unwrap();
        let c = s
            .create_conversation(NewConversation { title: Some("Geography".into()), ..Default::default() })
            .unwrap();
        let q = s.append_message(NewMessage::new(&c.id, Role::User, "What is the capital of France?")).unwrap();
        let mut a = NewMessage::new(&c.id, Role::Assistant, "Paris.");
        a.reply_to = Some(q.id);
        a.model_id = Some("smollm2".into());
        s.append_message(a).unwrap();
        s
    }

    #[test]
    fn json_round_trip_is_idempotent() {
        let src = sample();
        let text = render(&src.export(None).unwrap(), ExportFormat::Json);
        let doc = parse_export(&text).unwrap();
        let mut dst = Store::open_in_memory().unwrap();
        let r1 = dst.import(&doc).unwrap();
        assert_eq!((r1.conversations_added, r1.messages_added), (1, 2));
        let r2 = dst.import(&doc).unwrap();
        assert_eq!((r2.conversations_added, r2.messages_added), (0, 0));
        assert_eq!((r2.conversations_existing, r2.messages_existing), (1, 2));
        let a = src.export(None).unwrap().conversations;
        let b = dst.export(None).unwrap().conversations;
        assert_eq!(a, b);
    }

    #[test]
    fn markdown_and_text() {
        let s = sample();
        let doc = s.export(None).unwrap();
        let md = render(&doc, ExportFormat::Markdown);
        assert!(md.starts_with("# Geography\n"));
        assert!(md.contains("**You** ("));
        assert!(md.contains("Paris."));
        let txt = render(&doc, ExportFormat::Text);
        assert!(txt.contains("] Assistant: Paris."));
    }

    #[test]
    fn bad_imports_say_where() {
        let s = sample();
        let text = render(&s.export(None).unwrap(), ExportFormat::Json);
        let err = parse_export(&text[..text.len() / 2]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let err = parse_export("{\"format\":\"x\"").unwrap_err();
        assert!(err.starts_with("1:"), "{err}");
        let bad = text.replace("\"role\": \"user\"", "\"role\": \"robot\"");
        assert!(parse_export(&bad).unwrap_err().contains("not a pichat history export"));
        let dup = r#"{"format":"pichat-history","version":1,"exported_at":"2026-01-01T00:00:00.000Z","conversations":[{"id":"not-a-uuid","title":"t","created_at":"2026-01-01T00:00:00.000Z","updated_at":"2026-01-01T00:00:00.000Z","messages":[]}]}"#;
        assert!(parse_export(dup).unwrap_err().contains("not a UUID"));
    }
}
