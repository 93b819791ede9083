//! `pichat sync` (one sync now) and `pichat sync status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::history::HistoryHandle;
use crate::history::OpenOptions;
use crate::history::sync as hsync;

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// History database to use instead of the configured history.path
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Option<SyncCmd>,
}

#[derive(Debug, Subcommand)]
enum SyncCmd {
    /// Cursor, what waits to be pushed, the last error and the last success.
    Status,
}

pub fn run(args: SyncArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(cli_config)?.config;
    let db = args.db.clone().unwrap_or_else(|| cfg.history.path.clone());
    crate::engines::init_tls();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let opts = OpenOptions {
            busy_timeout: cfg.history.busy_timeout,
            create: args.cmd.is_none(),
            ..OpenOptions::default()
        };
        let (history, store) = HistoryHandle::open(&db, &opts)?;
        let code = match args.cmd {
            Some(SyncCmd::Status) => {
                let (cursor, counts, err, ok) = history
                    .call(|s| {
                        Ok((
                            s.sync_cursor()?,
                            s.outbox_counts()?,
                            s.state_get(hsync::LAST_ERROR)?,
                            s.state_get(hsync::LAST_SUCCESS)?,
                        ))
                    })
                    .await?;
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "url": cfg.sync.url.as_ref().map(|u| super::safe_text::redact(u.as_str())),
                            "cursor": cursor,
                            "pending": {"conversations": counts.0, "deletes": counts.1, "messages": counts.2},
                            "last_error": err,
                            "last_success": ok,
                        }))?
                    );
                } else {
                    println!(
                        "server        {}",
                        cfg.sync.url.as_ref().map(|u| super::safe_text::redact(u.as_str())).unwrap_or_else(|| "(sync off: sync.url is empty)".into())
                    );
                    println!("cursor        {cursor}");
                    println!("to push       {} conversations, {} deletes, {} messages", counts.0, counts.1, counts.2);
                    println!("last success  {}", ok.as_deref().unwrap_or("never"));
                    let err = err.map(|e| super::safe_text::line(&super::safe_text::redact(&e)).into_owned());
                    println!("last error    {}", err.as_deref().unwrap_or("none"));
                }
                ExitCode::SUCCESS
            }
            None => {
                let r = crate::sync::once(&cfg.sync, &history).await?;
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "pulled": r.pulled, "pushed_messages": r.pushed_messages,
                            "pushed_conversations": r.pushed_conversations, "pushed_deletes": r.pushed_deletes,
                            "dropped_unsent": r.dropped_unsent, "cursor": r.cursor,
                        }))?
                    );
                } else {
                    println!(
                        "synced: {} changes pulled, {} messages / {} conversations / {} deletes pushed, cursor {}",
                        r.pulled, r.pushed_messages, r.pushed_conversations, r.pushed_deletes, r.cursor
                    );
                }
                ExitCode::SUCCESS
            }
        };
        drop(history);
        tokio::task::spawn_blocking(move || store.join()).await?;
        anyhow::Ok(code)
    })
}
