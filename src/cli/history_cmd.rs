//! `pichat history …`: the local history from the command line, for people
//! (tables) and scripts (`--json`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::history::export::{self, ExportFormat};
use crate::history::{ArchivedFilter, CleanupAction, Cursor, ListQuery, OpenOptions, Role, Store};
use crate::time;

use super::safe_text;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// History database to use instead of the configured history.path
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: HistoryCmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Markdown,
    Text,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Action {
    Archive,
    Delete,
}

#[derive(Debug, Subcommand)]
enum HistoryCmd {
    /// List conversations, newest activity first.
    List {
        /// Show archived conversations instead of active ones
        #[arg(long, conflicts_with = "all")]
        archived: bool,
        /// Show active and archived conversations
        #[arg(long)]
        all: bool,
        /// Conversations per page
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Page number, from 1
        #[arg(long, default_value_t = 1, conflicts_with = "before")]
        page: usize,
        /// Continue after this cursor (printed as `next` by the previous page)
        #[arg(long)]
        before: Option<String>,
    },
    /// Show a conversation's messages.
    Show {
        /// Conversation id (or a unique prefix of at least 4 characters)
        id: String,
        /// How many of the latest messages
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Full-text search over all messages.
    Search {
        /// Words to find (all must match)
        query: String,
        /// Only in this conversation
        #[arg(long)]
        conversation: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Export one conversation, or all, as JSON, Markdown or text.
    Export {
        /// Conversation id or prefix [default: all conversations]
        id: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Write to this file instead of standard output
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Import a JSON export (importing the same file again adds nothing).
    Import { file: PathBuf },
    /// Statistics of one conversation or of the whole history.
    Stats { id: Option<String> },
    /// Give a conversation a new title.
    Rename { id: String, title: String },
    /// Archive a conversation (hidden from the default list).
    Archive { id: String },
    /// Bring an archived conversation back.
    Unarchive { id: String },
    /// Delete a conversation and its messages.
    Delete {
        id: String,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
    },
    /// Archive or delete conversations idle for more than N days.
    Cleanup {
        /// Idle for more than this many days
        #[arg(long, value_name = "N")]
        older_than_days: u32,
        #[arg(long, value_enum, default_value_t = Action::Archive)]
        action: Action,
        /// Only list what would be affected
        #[arg(long)]
        dry_run: bool,
    },
}

/// Opens the database; also says whether it was created just now.
fn open(args: &HistoryArgs, cli_config: Option<&Path>) -> anyhow::Result<(Store, bool)> {
    let (path, busy) = match &args.db {
        Some(p) => {
            let busy = crate::config::load(cli_config)
                .map(|l| l.config.history.busy_timeout)
                .unwrap_or(std::time::Duration::from_secs(5));
            (p.clone(), busy)
        }
        None => {
            let l = super::load_config(cli_config)?;
            (l.config.history.path, l.config.history.busy_timeout)
        }
    };
    // Reading commands never create a database that is not there.
    let create = matches!(args.cmd, HistoryCmd::Import { .. });
    if !create && !path.exists() {
        anyhow::bail!(
            "{}: no history database yet (it is created by the first voice turn or `pichat history import`; use --db to pick another file)",
            path.display()
        );
    }
    let existed = path.exists();
    Ok((
        Store::open(
            &path,
            &OpenOptions {
                busy_timeout: busy,
                create,
                ..OpenOptions::default()
            },
        )?,
        !existed,
    ))
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn who(role: Role) -> &'static str {
    match role {
        Role::User => "you",
        Role::Assistant => "assistant",
        Role::System => "system",
    }
}

pub fn run(args: HistoryArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    if let HistoryCmd::Import { file } = &args.cmd {
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    let (mut store, created) = open(&args, cli_config)?;
    let db = store.path().to_path_buf();
    let json = args.json;
    let fix = |e: crate::history::StoreError| anyhow::Error::new(e.with_path(&db));
    match args.cmd {
        HistoryCmd::List {
            archived,
            all,
            limit,
            page,
            before,
        } => {
            let before = match before {
                Some(b) => Some(Cursor::decode(&b).with_context(|| {
                    format!("--before {b}: not a cursor (use the `next` value a list printed)")
                })?),
                None => None,
            };
            let filter = if all {
                ArchivedFilter::All
            } else if archived {
                ArchivedFilter::Archived
            } else {
                ArchivedFilter::Active
            };
            let q = ListQuery {
                filter,
                limit: limit.max(1),
                offset: if before.is_some() {
                    0
                } else {
                    (page.max(1) - 1) * limit.max(1)
                },
                before,
            };
            let p = store.list_conversations(&q).map_err(fix)?;
            if json {
                print_json(&p)?;
            } else if p.conversations.is_empty() {
                println!("no conversations");
            } else {
                println!("{:<8}  {:<16}  {:>5}  TITLE", "ID", "LAST ACTIVITY", "MSGS");
                for c in &p.conversations {
                    println!(
                        "{:<8}  {:<16}  {:>5}  {}{}",
                        short_id(&c.id),
                        time::short(c.last_message_at.unwrap_or(c.created_at)),
                        c.message_count,
                        safe_text::line(&c.title),
                        if c.archived { " (archived)" } else { "" }
                    );
                }
                if let Some(n) = p.next {
                    println!("more: pichat history list --before {n}");
                }
            }
        }
        HistoryCmd::Show { id, limit } => {
            let id = store.resolve_conversation_id(&id).map_err(fix)?;
            let c = store.get_conversation(&id).map_err(fix)?;
            let msgs = store.messages(&id, limit, None).map_err(fix)?;
            if json {
                print_json(&json!({"conversation": c, "messages": msgs}))?;
            } else {
                println!(
                    "{}  ({}, {} messages)",
                    safe_text::line(&c.title),
                    c.id,
                    c.message_count
                );
                for m in msgs {
                    println!(
                        "[{}] {}: {}",
                        time::short(m.created_at),
                        who(m.role),
                        safe_text::text(&m.content)
                    );
                }
            }
        }
        HistoryCmd::Search {
            query,
            conversation,
            limit,
        } => {
            let conv = conversation
                .map(|c| store.resolve_conversation_id(&c))
                .transpose()
                .map_err(fix)?;
            let color = !json && std::io::stdout().is_terminal();
            let (s, e) = if color {
                ("\x1b[1m", "\x1b[0m")
            } else {
                ("[", "]")
            };
            // Marked with private characters, put in after the escaping
            // (the snippet's own escapes are escaped, not the marks).
            let (ps, pe) = if json {
                (s, e)
            } else {
                ("\u{E000}", "\u{E001}")
            };
            let hits = store
                .search_marked(&query, conv.as_deref(), limit, ps, pe)
                .map_err(fix)?;
            if json {
                print_json(&json!({"query": query, "hits": hits}))?;
            } else if hits.is_empty() {
                println!("no messages match \"{}\"", safe_text::line(&query));
            } else {
                for h in hits {
                    let snippet = safe_text::line(&h.snippet.replace('\n', " "))
                        .replace(ps, s)
                        .replace(pe, e);
                    println!(
                        "{}  {}  {}: {}   ({})",
                        short_id(&h.message.conversation_id),
                        time::short(h.message.created_at),
                        who(h.message.role),
                        snippet,
                        safe_text::line(&h.conversation_title)
                    );
                }
            }
        }
        HistoryCmd::Export { id, format, out } => {
            let id = id
                .map(|i| store.resolve_conversation_id(&i))
                .transpose()
                .map_err(fix)?;
            let doc = store.export(id.as_deref()).map_err(fix)?;
            let fmt = match format {
                Format::Json => ExportFormat::Json,
                Format::Markdown => ExportFormat::Markdown,
                Format::Text => ExportFormat::Text,
            };
            let text = export::render(&doc, fmt);
            match out {
                Some(path) => {
                    // Written next to the target, then renamed: never a half file.
                    let tmp = path.with_extension("partial");
                    std::fs::write(&tmp, &text)
                        .with_context(|| format!("cannot write {}", tmp.display()))?;
                    std::fs::rename(&tmp, &path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    let n: usize = doc.conversations.iter().map(|c| c.messages.len()).sum();
                    eprintln!(
                        "exported {} conversations, {n} messages to {}",
                        doc.conversations.len(),
                        path.display()
                    );
                }
                // To a terminal, escapes in the texts are shown, not run.
                None if std::io::stdout().is_terminal() => print!("{}", safe_text::text(&text)),
                None => print!("{text}"),
            }
        }
        HistoryCmd::Import { file } => {
            let r = match store.import_file(&file) {
                Ok(r) => r,
                Err(e) => {
                    // The import rolled back; a database it created is removed too.
                    if created {
                        drop(store);
                        for suffix in ["", "-wal", "-shm"] {
                            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                        }
                    }
                    return Err(fix(e));
                }
            };
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "imported {} conversations and {} messages ({} conversations and {} messages were already there)",
                    r.conversations_added,
                    r.messages_added,
                    r.conversations_existing,
                    r.messages_existing
                );
                if r.messages_conflicting > 0 {
                    println!(
                        "{} messages exist here with other content; the stored versions were kept",
                        r.messages_conflicting
                    );
                }
            }
        }
        HistoryCmd::Stats { id } => {
            let id = id
                .map(|i| store.resolve_conversation_id(&i))
                .transpose()
                .map_err(fix)?;
            let s = store.stats(id.as_deref()).map_err(fix)?;
            if json {
                print_json(&s)?;
            } else {
                if let Some(id) = &s.conversation_id {
                    println!("conversation      {id}");
                } else {
                    println!(
                        "conversations     {} ({} archived)",
                        s.conversations, s.archived_conversations
                    );
                }
                println!(
                    "messages          {} ({} from you, {} replies)",
                    s.messages, s.user_messages, s.assistant_messages
                );
                println!("tokens used       {}", s.tokens_used);
                match s.avg_response_time_ms {
                    Some(ms) => println!("avg response time {ms:.0} ms"),
                    None => println!("avg response time -"),
                }
                if let (Some(a), Some(b)) = (s.first_message_at, s.last_message_at) {
                    println!("period            {} .. {}", time::short(a), time::short(b));
                }
            }
        }
        HistoryCmd::Rename { id, title } => {
            let id = store.resolve_conversation_id(&id).map_err(fix)?;
            let c = store.rename_conversation(&id, &title).map_err(fix)?;
            done(
                json,
                &c,
                &format!("renamed {} to \"{}\"", short_id(&c.id), c.title),
            )?;
        }
        HistoryCmd::Archive { id } => {
            let id = store.resolve_conversation_id(&id).map_err(fix)?;
            let c = store.set_archived(&id, true).map_err(fix)?;
            done(
                json,
                &c,
                &format!("archived {} \"{}\"", short_id(&c.id), c.title),
            )?;
        }
        HistoryCmd::Unarchive { id } => {
            let id = store.resolve_conversation_id(&id).map_err(fix)?;
            let c = store.set_archived(&id, false).map_err(fix)?;
            done(
                json,
                &c,
                &format!("unarchived {} \"{}\"", short_id(&c.id), c.title),
            )?;
        }
        HistoryCmd::Delete { id, yes } => {
            let id = store.resolve_conversation_id(&id).map_err(fix)?;
            let c = store.get_conversation(&id).map_err(fix)?;
            if !yes && std::io::stdin().is_terminal() {
                eprint!(
                    "delete \"{}\" and its {} messages? [y/N] ",
                    c.title, c.message_count
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !answer.trim().eq_ignore_ascii_case("y") {
                    eprintln!("nothing deleted");
                    return Ok(ExitCode::from(1));
                }
            }
            store.delete_conversation(&id).map_err(fix)?;
            done(
                json,
                &json!({"deleted": id}),
                &format!(
                    "deleted {} \"{}\" ({} messages)",
                    short_id(&id),
                    c.title,
                    c.message_count
                ),
            )?;
        }
        HistoryCmd::Cleanup {
            older_than_days,
            action,
            dry_run,
        } => {
            let act = match action {
                Action::Archive => CleanupAction::Archive,
                Action::Delete => CleanupAction::Delete,
            };
            let list = store.cleanup(older_than_days, act, dry_run).map_err(fix)?;
            let verb = match (act, dry_run) {
                (CleanupAction::Archive, true) => "would archive",
                (CleanupAction::Delete, true) => "would delete",
                (CleanupAction::Archive, false) => "archived",
                (CleanupAction::Delete, false) => "deleted",
            };
            if json {
                print_json(
                    &json!({"dry_run": dry_run, "action": format!("{action:?}").to_lowercase(), "conversations": list}),
                )?;
            } else {
                for c in &list {
                    println!(
                        "{verb} {}  {}  {}",
                        short_id(&c.id),
                        time::short(c.last_message_at.unwrap_or(c.created_at)),
                        c.title
                    );
                }
                println!(
                    "{verb} {} conversations idle for more than {older_than_days} days",
                    list.len()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn done(json: bool, v: &impl serde::Serialize, human: &str) -> anyhow::Result<()> {
    if json {
        print_json(v)
    } else {
        println!("{human}");
        Ok(())
    }
}
