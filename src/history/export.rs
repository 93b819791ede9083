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
    /// Messages whose id exists here with other content (the stored one is kept).
    pub messages_conflicting: usize,
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
                .query_map([key("conversation", &c.id)?], msg_from_row)?
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
        check_header(&doc.format, doc.version).map_err(|e| StoreError::Invalid(e.message))?;
        for (i, ec) in doc.conversations.iter().enumerate() {
            check_conversation(i, ec).map_err(|e| StoreError::Invalid(e.message))?;
        }
        self.import_with(|sink| doc.conversations.iter().try_for_each(sink))
    }

    /// Imports an export file. The JSON is parsed on a second thread while
    /// this one writes what it has parsed so far; everything happens in one
    /// transaction that is rolled back on any error in the file, so a bad
    /// file changes nothing.
    pub fn import_file(&mut self, path: &Path) -> Result<ImportReport> {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<ExportedConversation>(256);
            let parser = scope.spawn(move || -> Result<()> {
                let bytes = std::fs::read(path).map_err(|e| StoreError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })?;
                stream_export(&bytes, &tx).map_err(|e| StoreError::Import {
                    path: path.to_path_buf(),
                    at: e.at,
                    message: e.message,
                })
            });
            self.import_with(move |sink| {
                for ec in rx {
                    sink(&ec)?;
                }
                parser.join().unwrap_or_else(|_| {
                    Err(StoreError::Invalid(
                        "the import parser thread panicked".into(),
                    ))
                })
            })
        })
    }

    /// The import itself: `feed` calls the sink with each conversation; the
    /// transaction commits only if `feed` returns `Ok`.
    ///
    /// Bulk path: the per-row triggers (full-text index, conversation
    /// counters) are set aside inside the transaction and their work is done
    /// once, set-wise, for the new rows. A failure rolls all of it back,
    /// triggers included.
    fn import_with<F>(&mut self, feed: F) -> Result<ImportReport>
    where
        F: FnOnce(&mut dyn FnMut(&ExportedConversation) -> Result<()>) -> Result<()>,
    {
        let old_cache: i64 = self.conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
        // A big page cache keeps dirty index pages of a large load in memory
        // instead of spilling them to the WAL mid-transaction; SQLite only
        // fills it as needed. Within a quarter of the RAM.
        let cache_kib = (256 * 1024).min(ram_kib() / 4).max(16 * 1024);
        self.conn
            .pragma_update(None, "cache_size", -(cache_kib as i64))?;
        let mut report = ImportReport::default();
        let result = (|| -> Result<()> {
            let tx = self.conn.transaction()?;
            let triggers: Vec<(String, String)> = tx
                .prepare(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'
                     AND name IN ('messages_fts_insert', 'messages_count_insert')",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (name, _) in &triggers {
                tx.execute_batch(&format!("DROP TRIGGER {name}"))?;
            }
            let first_new: i64 =
                tx.query_row("SELECT coalesce(max(seq), 0) + 1 FROM messages", [], |r| {
                    r.get(0)
                })?;
            {
                let mut conv_stmt = tx.prepare(
                    "INSERT INTO conversations (id, title, model_id, created_at, updated_at, activity_at, archived, metadata)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6, ?7) ON CONFLICT (id) DO NOTHING",
                )?;
                let mut msg_stmt = tx.prepare(INSERT_MSG)?;
                let mut same_stmt = tx.prepare(
                    "SELECT content = ?2 AND conversation_id = ?3 FROM messages WHERE id = ?1",
                )?;
                let mut sink = |ec: &ExportedConversation| -> Result<()> {
                    let c = &ec.conversation;
                    let ck = key("conversation", &c.id)?;
                    let n = conv_stmt.execute(params![
                        ck,
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
                        let mk = key("message", &m.id)?;
                        let n = msg_stmt.execute(params![
                            mk,
                            ck,
                            m.role.as_str(),
                            m.content,
                            m.created_at,
                            m.model_id,
                            m.tokens_used,
                            m.response_time_ms,
                            m.is_audio,
                            m.origin.as_str(),
                            m.reply_to
                                .as_deref()
                                .map(|r| key("message", r))
                                .transpose()?,
                            meta_to_sql(&Some(m.metadata.clone())),
                        ])?;
                        if n == 1 {
                            report.messages_added += 1;
                        } else if same_stmt
                            .query_row(params![mk, m.content, ck], |r| r.get::<_, bool>(0))?
                        {
                            report.messages_existing += 1;
                        } else {
                            report.messages_conflicting += 1;
                        }
                    }
                    Ok(())
                };
                feed(&mut sink)?;
            }
            tx.execute(
                "INSERT INTO messages_fts (rowid, content) SELECT seq, content FROM messages WHERE seq >= ?1",
                [first_new],
            )?;
            tx.execute(
                "UPDATE conversations SET
                    message_count = s.n,
                    last_message_at = s.last,
                    activity_at = max(conversations.created_at, coalesce(s.last, 0)),
                    updated_at = max(conversations.updated_at, coalesce(s.last, 0))
                 FROM (SELECT conversation_id, count(*) AS n, max(created_at) AS last FROM messages
                       WHERE conversation_id IN (SELECT DISTINCT conversation_id FROM messages WHERE seq >= ?1)
                       GROUP BY conversation_id) AS s
                 WHERE conversations.id = s.conversation_id",
                [first_new],
            )?;
            for (_, sql) in &triggers {
                tx.execute_batch(sql)?;
            }
            tx.commit()?;
            Ok(())
        })();
        self.conn.pragma_update(None, "cache_size", old_cache)?;
        result.map(|()| report)
    }
}

/// Physical memory in KiB (1 GiB when unknown).
fn ram_kib() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64 / 1024
    } else {
        1024 * 1024
    }
}

/// Why an export document was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl From<String> for ParseError {
    fn from(message: String) -> Self {
        ParseError { at: None, message }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((l, c)) = self.at {
            write!(f, "{l}:{c}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Says what is wrong with a document the typed parser refused: a syntax
/// error where it is, or, for valid JSON of the wrong shape, the path of the
/// offending field (found by a slower second pass, only on failure).
fn explain_json_error(text: &[u8], e: serde_json::Error) -> ParseError {
    use serde_json::error::Category;
    let at = Some((e.line(), e.column()));
    match e.classify() {
        Category::Eof => ParseError {
            at,
            message: format!("the file ends too early (truncated?): {e}"),
        },
        Category::Io => ParseError {
            at: None,
            message: e.to_string(),
        },
        Category::Syntax | Category::Data => {
            match serde_json::from_slice::<serde_json::Value>(text) {
                Err(e) => ParseError {
                    at: Some((e.line(), e.column())),
                    message: format!("not valid JSON: {e}"),
                },
                Ok(v) => match serde_path_to_error::deserialize::<_, Export>(v) {
                    Err(pe) => ParseError {
                        at: None,
                        message: format!(
                            "not a pichat history export: {}: {}",
                            pe.path(),
                            pe.inner()
                        ),
                    },
                    Ok(_) => ParseError {
                        at,
                        message: format!("not a pichat history export: {e}"),
                    },
                },
            }
        }
    }
}

/// Parses and validates export JSON held in memory.
pub fn parse_export(text: &str) -> std::result::Result<Export, ParseError> {
    let doc: Export = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(e) => return Err(explain_json_error(text.as_bytes(), e)),
    };
    check_header(&doc.format, doc.version)?;
    for (i, ec) in doc.conversations.iter().enumerate() {
        check_conversation(i, ec)?;
    }
    Ok(doc)
}

fn check_header(format: &str, version: u32) -> std::result::Result<(), ParseError> {
    if format != FORMAT_NAME {
        return Err(format!(
            "format is \"{format}\", expected \"{FORMAT_NAME}\" (make it with `pichat history export --format json`)"
        )
        .into());
    }
    if version > FORMAT_VERSION {
        return Err(format!(
            "export version {version} is newer than this pichat reads ({FORMAT_VERSION}); upgrade pichat"
        )
        .into());
    }
    Ok(())
}

fn check_conversation(i: usize, ec: &ExportedConversation) -> std::result::Result<(), ParseError> {
    let c = &ec.conversation;
    let at = format!("conversations[{i}]");
    check_id(&format!("{at}.id"), &c.id).map_err(|e| e.to_string())?;
    let n = c.title.trim().chars().count();
    if n == 0 || n > MAX_TITLE_CHARS {
        return Err(format!("{at}.title must have 1 to {MAX_TITLE_CHARS} characters").into());
    }
    for (j, m) in ec.messages.iter().enumerate() {
        let at = format!("{at}.messages[{j}]");
        check_id(&format!("{at}.id"), &m.id).map_err(|e| e.to_string())?;
        if m.conversation_id != c.id {
            return Err(format!(
                "{at}.conversation_id is {}, but the message is inside conversation {}",
                m.conversation_id, c.id
            )
            .into());
        }
        check_content(&m.content).map_err(|e| format!("{at}.content: {e}"))?;
        if let Some(r) = &m.reply_to {
            check_id(&format!("{at}.reply_to"), r).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Parses export JSON conversation by conversation, checking each and
/// handing it to `out` as soon as it is complete.
fn stream_export(
    bytes: &[u8],
    out: &SyncSender<ExportedConversation>,
) -> std::result::Result<(), ParseError> {
    use serde::de::DeserializeSeed;
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = DocSeed {
        out,
        failure: &mut failure,
    };
    let header = seed.deserialize(&mut de).and_then(|h| de.end().map(|()| h));
    if let Some(f) = failure {
        return Err(f);
    }
    let (format, version) = header.map_err(|e| explain_json_error(bytes, e))?;
    check_header(
        format.as_deref().unwrap_or("(missing)"),
        version.unwrap_or(FORMAT_VERSION),
    )
}

use std::sync::mpsc::SyncSender;

/// The top-level object: header fields kept, conversations streamed out.
struct DocSeed<'a> {
    out: &'a SyncSender<ExportedConversation>,
    failure: &'a mut Option<ParseError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DocSeed<'_> {
    type Value = (Option<String>, Option<u32>);

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DocSeed<'_> {
    type Value = (Option<String>, Option<u32>);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a pichat history export object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let (mut format, mut version) = (None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "format" => format = Some(map.next_value::<String>()?),
                "version" => version = Some(map.next_value::<u32>()?),
                "conversations" => map.next_value_seed(ConversationsSeed {
                    out: self.out,
                    failure: &mut *self.failure,
                })?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok((format, version))
    }
}

struct ConversationsSeed<'a> {
    out: &'a SyncSender<ExportedConversation>,
    failure: &'a mut Option<ParseError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ConversationsSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ConversationsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of conversations")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        let mut i = 0;
        while let Some(ec) = seq.next_element::<ExportedConversation>()? {
            if let Err(e) = check_conversation(i, &ec) {
                *self.failure = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
            if self.out.send(ec).is_err() {
                // The writer stopped (and reports why).
                return Err(serde::de::Error::custom("stopped"));
            }
            i += 1;
        }
        Ok(())
    }
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
                    c.model_id
                        .as_deref()
                        .map(|m| format!(", model {m}"))
                        .unwrap_or_default(),
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
                    let _ = writeln!(
                        s,
                        "[{}] {}: {}",
                        time::short(m.created_at),
                        speaker(m.role),
                        m.content
                    );
                }
                s.push('\n');
            }
            s
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Store {
        let mut s = Store::open_in_memory().unwrap();
        let c = s
            .create_conversation(NewConversation {
                title: Some("Geography".into()),
                ..Default::default()
            })
            .unwrap();
        let q = s
            .append_message(NewMessage::new(
                &c.id,
                Role::User,
                "What is the capital of France?",
            ))
            .unwrap();
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
        let err = parse_export(&text[..text.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = parse_export("{\"format\":\"x\"").unwrap_err();
        assert_eq!(err.at.map(|a| a.0), Some(1), "{err}");
        let bad = text.replace("\"role\": \"user\"", "\"role\": \"robot\"");
        assert!(
            parse_export(&bad)
                .unwrap_err()
                .to_string()
                .contains("not a pichat history export")
        );
        let mut s2 = sample();
        let mut bad_doc = parse_export(&text).unwrap();
        bad_doc.conversations[0].messages[0].content = "   ".into();
        assert!(matches!(s2.import(&bad_doc), Err(StoreError::Invalid(_))));
        let dup = r#"{"format":"pichat-history","version":1,"exported_at":"2026-01-01T00:00:00.000Z","conversations":[{"id":"not-a-uuid","title":"t","created_at":"2026-01-01T00:00:00.000Z","updated_at":"2026-01-01T00:00:00.000Z","messages":[]}]}"#;
        assert!(
            parse_export(dup)
                .unwrap_err()
                .to_string()
                .contains("not a UUID")
        );
    }
}
