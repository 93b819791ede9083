//! `pichat serve` (the chat server) and `pichat token add|list|revoke` (the
//! users' device tokens in the server database).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::engines::Engines;
use crate::history::actor::HistoryHandle;
use crate::history::{HistoryError, OpenOptions, Store};
use crate::server::{self, ServerOptions, auth};
use crate::time;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on instead of server.listen (e.g. 0.0.0.0:8080; port 0 picks one)
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// Server database instead of server.database
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Write a private CA and a server certificate (for https:// and wss://), print the
    /// config lines that use them, and exit
    #[arg(long)]
    make_cert: bool,
    /// With --make-cert: the folder to write to (default: beside server.tls_cert, else
    /// the data folder's tls/)
    #[arg(long, value_name = "DIR", requires = "make_cert")]
    cert_dir: Option<PathBuf>,
    /// With --make-cert: a name or address the certificate is for (repeat it; default:
    /// this machine's host name, NAME.local, localhost and its addresses)
    #[arg(long = "cert-name", value_name = "HOST", requires = "make_cert")]
    cert_names: Vec<String>,
    /// With --make-cert: replace existing files (a new CA too: clients need the new ca.pem)
    #[arg(long, requires = "make_cert")]
    force: bool,
}

/// `pichat serve --make-cert`.
fn make_cert(args: &ServeArgs, cfg: &crate::config::Config) -> anyhow::Result<ExitCode> {
    let dir = args.cert_dir.clone().unwrap_or_else(|| {
        cfg.server
            .tls
            .as_ref()
            .and_then(|t| t.cert.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| crate::config::paths::data_dir().join("tls"))
    });
    let names = if args.cert_names.is_empty() {
        server::certs::default_names()
    } else {
        args.cert_names.clone()
    };
    let f = server::certs::make(&dir, &names, args.force)?;
    let mut out = std::io::stdout().lock();
    if f.new_ca {
        writeln!(
            out,
            "made a private CA: {} (its key: {})",
            f.ca_cert.display(),
            f.ca_key.display()
        )?;
    } else {
        writeln!(out, "signed with the CA already in {}", dir.display())?;
    }
    writeln!(out, "made a server certificate for {}", f.names.join(", "))?;
    writeln!(out, "\nIn the server's config ([server]):")?;
    writeln!(out, "  tls_cert = \"{}\"", f.cert.display())?;
    writeln!(out, "  tls_key = \"{}\"", f.key.display())?;
    writeln!(
        out,
        "\nOn each Pi: copy {} there and set ([sync]) ca_file = \"/etc/pichat/ca.pem\" and url = \"wss://HOST:PORT/ws\".",
        f.ca_cert.display()
    )?;
    writeln!(
        out,
        "In the browser: import {} as a trusted authority (once), then open https://HOST:PORT/.",
        f.ca_cert.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Server database instead of server.database
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    #[command(subcommand)]
    cmd: TokenCmd,
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Make a token for a user (created if new); it is shown once, only its hash is stored.
    Add {
        /// User name: letters, digits, '.', '_', '-', '@'
        user: String,
        /// What the token is for (e.g. "kitchen-pi", "laptop")
        #[arg(long)]
        device: Option<String>,
        /// Machine-readable JSON output
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Machine-readable JSON output
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (new connections with it are refused, open ones closed within 25 s).
    Revoke { id: i64 },
}

/// The server database path: `--db`, else `server.database`.
fn db_path(db: Option<&Path>, cli_config: Option<&Path>) -> anyhow::Result<PathBuf> {
    match db {
        Some(p) => Ok(p.to_path_buf()),
        None => Ok(super::load_config(cli_config)?.config.server.database),
    }
}

fn fix(path: &Path) -> impl Fn(HistoryError) -> anyhow::Error + '_ {
    move |e| anyhow::Error::new(e.with_path(path))
}

pub fn token(args: TokenArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let path = db_path(args.db.as_deref(), cli_config)?;
    let create = matches!(args.cmd, TokenCmd::Add { .. });
    if !create && !path.exists() {
        anyhow::bail!(
            "{}: no server database yet (`pichat token add USER` creates it; use --db to pick another file)",
            path.display()
        );
    }
    let mut store = Store::open(
        &path,
        &OpenOptions {
            create,
            ..OpenOptions::default()
        },
    )
    .map_err(fix(&path))?;
    let mut out = std::io::stdout().lock();
    match args.cmd {
        TokenCmd::Add { user, device, json } => {
            let (info, token) =
                auth::issue_token(&mut store, &user, device.as_deref()).map_err(fix(&path))?;
            if json {
                let mut v = serde_json::to_value(&info)?;
                v["token"] = serde_json::Value::String(token);
                serde_json::to_writer_pretty(&mut out, &v)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{token}")?;
                eprintln!(
                    "token {} for {}{}: shown only this once; give it to the device (sync.token_file) and keep it secret",
                    info.id,
                    info.user,
                    info.device
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                );
            }
        }
        TokenCmd::List { json } => {
            let tokens = store.server().tokens().map_err(fix(&path))?;
            if json {
                serde_json::to_writer_pretty(&mut out, &tokens)?;
                writeln!(out)?;
            } else if tokens.is_empty() {
                writeln!(out, "no tokens (make one with `pichat token add USER`)")?;
            } else {
                writeln!(
                    out,
                    "{:>4}  {:<16} {:<16} {:<16} {:<16} status",
                    "id", "user", "device", "created", "last used"
                )?;
                for t in tokens {
                    writeln!(
                        out,
                        "{:>4}  {:<16} {:<16} {:<16} {:<16} {}",
                        t.id,
                        t.user,
                        t.device.as_deref().unwrap_or("-"),
                        time::short(t.created_at),
                        t.last_used_at.map(time::short).unwrap_or("never".into()),
                        match t.revoked_at {
                            Some(r) => format!("revoked {}", time::short(r)),
                            None => "active".into(),
                        }
                    )?;
                }
            }
        }
        TokenCmd::Revoke { id } => {
            let t = store.server().revoke_token(id).map_err(|e| match e {
                HistoryError::NotFound { .. } => {
                    anyhow::anyhow!("no token with id {id} (see `pichat token list`)")
                }
                e => fix(&path)(e),
            })?;
            writeln!(
                out,
                "token {} of {} revoked: new connections with it are refused, and a running server closes the open ones within its ping interval (25 s)",
                t.id, t.user
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn serve(args: ServeArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let loaded = super::load_config(cli_config)?;
    let cfg = loaded.config;
    if args.make_cert {
        return make_cert(&args, &cfg);
    }
    crate::logging::init(&cfg.log.level, cfg.log.format);
    // Every connection is a file descriptor: use all the hard limit allows
    // (`server::run` fits the connection limits to it).
    match server::raise_open_files_limit() {
        Ok(limit) => tracing::debug!("open-files limit: {limit}"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    let listen = args.listen.unwrap_or(cfg.server.listen);
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| cfg.server.database.clone());
    let engines = Engines::build(
        &cfg,
        &cfg.server.stt_engines,
        &cfg.server.llm_engines,
        &cfg.server.tts_engines,
    )
    .context("cannot set up the server's engines (server.*_engines)")?;
    let (handle, store_thread) = HistoryHandle::open(
        &db,
        &OpenOptions {
            busy_timeout: cfg.history.busy_timeout,
            create: true,
            readers: cfg.server.read_connections,
        },
    )
    .map_err(fix(&db))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pichat-server")
        .build()
        .context("cannot start the async runtime")?;
    let mut opts = ServerOptions::from_config(&cfg);
    if let Some(files) = &cfg.server.tls {
        opts.tls = Some(server::tls::load(files)?);
    }
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let result = rt.block_on(async {
        let listener = server::bind(listen).await?;
        let tokens = handle
            .call(|s| s.server().tokens())
            .await
            .map_err(fix(&db))?;
        if !tokens.iter().any(|t| t.revoked_at.is_none()) {
            tracing::warn!(
                "no active token yet: every connection will be refused; make one with `pichat token add USER`"
            );
        }
        let addr = listener.local_addr().unwrap_or(listen);
        // One line on stdout for scripts (and tests) to learn the port.
        println!("listening on {addr}");
        tracing::info!("the web app: {scheme}://{addr}/ (sign in with a token from `pichat token add USER --device browser`)");
        let _ = std::io::stdout().flush();
        let shutdown = crate::signals::shutdown_token();
        // systemd (Type=notify): ready, a watchdog, and SIGHUP that checks
        // the edited config instead of killing the server.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let server = tokio::spawn(server::run(listener, handle, engines, opts, shutdown.clone()));
        crate::service::ready(&format!("serving on {addr}"));
        let mut watchdog = crate::service::watchdog_interval().map(tokio::time::interval);
        let mut server = std::pin::pin!(server);
        loop {
            tokio::select! {
                r = &mut server => {
                    crate::service::stopping();
                    r??;
                    break;
                }
                _ = hangup.recv() => {
                    crate::service::reloading();
                    let (path, origin) = crate::config::locate(cli_config);
                    match crate::config::load_file(&path, origin != crate::config::ConfigOrigin::Default) {
                        Ok(_) => tracing::warn!(
                            "{}: valid; the server applies config changes at restart (systemctl restart pichat-server)",
                            path.display()
                        ),
                        Err(e) => {
                            for line in e.to_string().lines() {
                                tracing::error!("config not valid, the running server is unchanged: {line}");
                            }
                        }
                    }
                    crate::service::ready(&format!("serving on {addr}"));
                }
                _ = async {
                    match watchdog.as_mut() {
                        Some(w) => { w.tick().await; }
                        None => std::future::pending().await,
                    }
                } => crate::service::watchdog(),
            }
        }
        Ok::<(), anyhow::Error>(())
    });
    // Every handle is gone with the runtime's tasks: wait for the database to close.
    drop(rt);
    store_thread.join();
    result.map(|()| ExitCode::SUCCESS)
}
