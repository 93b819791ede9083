//! `pichat serve` (the chat server), `pichat token add|list|revoke` (the
//! users' device tokens in the server database) and `pichat server
//! migrate|health|maintain` (the server database itself).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::engines::Engines;
use crate::server::{self, ServerOptions, auth};
use crate::serverdb::{self, Location, StoreOptions};
use crate::store::{OpenOptions, StoreError};
use crate::time;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on instead of server.listen (e.g. 0.0.0.0:8080; port 0 picks one)
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// Server database instead of server.database (a file, or postgres://…)
    #[arg(long, value_name = "PATH|URL")]
    db: Option<String>,
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
    /// Server database instead of server.database (a file, or postgres://…)
    #[arg(long, global = true, value_name = "PATH|URL")]
    db: Option<String>,
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

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Server database instead of server.database (a file, or postgres://…)
    #[arg(long, global = true, value_name = "PATH|URL")]
    db: Option<String>,
    #[command(subcommand)]
    cmd: ServerCmd,
}

#[derive(Debug, Subcommand)]
enum ServerCmd {
    /// Copy a SQLite server database into PostgreSQL (resumable; verified at the end).
    ///
    /// Stop the server for the final run (a run while it serves copies a
    /// snapshot; run it again after stopping to bring the rest over), then
    /// set server.database to the URL on every server.
    Migrate {
        /// The PostgreSQL database: postgres://USER:PASSWORD@HOST:PORT/DB (empty, or
        /// an earlier run's)
        #[arg(long, value_name = "URL")]
        to: String,
        /// Rows per batch (each batch is one transaction on the target)
        #[arg(long, default_value_t = serverdb::migrate::DEFAULT_BATCH)]
        batch: usize,
        /// Machine-readable JSON output
        #[arg(long)]
        json: bool,
    },
    /// Check the database: can it be reached, how big it is, what could be reclaimed.
    Health {
        /// Machine-readable JSON output
        #[arg(long)]
        json: bool,
    },
    /// Run one maintenance pass now (what `pichat serve` runs every
    /// server.maintenance_interval_min).
    Maintain,
}

/// The server database: `--db`, else `server.database`.
fn db_location(db: Option<&str>, cli_config: Option<&Path>) -> anyhow::Result<Location> {
    match db {
        Some(s) => {
            let at = Location::parse(s);
            at.check().map_err(|e| anyhow::anyhow!("--db: {e}"))?;
            Ok(at)
        }
        None => Ok(super::load_config(cli_config)?.config.server.database),
    }
}

fn store_options(cli_config: Option<&Path>, create: bool) -> StoreOptions {
    let cfg = super::load_config(cli_config).ok().map(|l| l.config);
    StoreOptions {
        sqlite: OpenOptions {
            create,
            busy_timeout: cfg
                .as_ref()
                .map_or(OpenOptions::default().busy_timeout, |c| {
                    c.history.busy_timeout
                }),
            readers: 1,
        },
        pool_size: cfg
            .as_ref()
            .map_or(serverdb::postgres::DEFAULT_POOL_SIZE, |c| {
                c.server.database_pool
            })
            .min(4),
        ..StoreOptions::default()
    }
}

/// A runtime for the commands that talk to the store.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Opens the store, runs `f` on it, closes it (joining SQLite's thread).
fn with_store<T>(
    at: &Location,
    opts: &StoreOptions,
    f: impl AsyncFnOnce(&dyn serverdb::ServerStore) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let rt = runtime()?;
    let (r, thread) = rt.block_on(async {
        let opened = serverdb::open(at, opts).await?;
        let r = f(&*opened.store).await;
        Ok::<_, anyhow::Error>((r, opened.thread))
    })?;
    drop(rt);
    if let Some(t) = thread {
        t.join();
    }
    r
}

pub fn token(args: TokenArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let at = db_location(args.db.as_deref(), cli_config)?;
    let create = matches!(args.cmd, TokenCmd::Add { .. });
    if let Location::Sqlite(path) = &at
        && !create
        && !path.exists()
    {
        anyhow::bail!(
            "{}: no server database yet (`pichat token add USER` creates it; use --db to pick another file)",
            path.display()
        );
    }
    let opts = store_options(cli_config, create);
    with_store(&at, &opts, async |store| {
        let mut out = std::io::stdout().lock();
        match args.cmd {
            TokenCmd::Add { user, device, json } => {
                let (info, token) = auth::issue_token(store, &user, device.as_deref()).await?;
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
                let tokens = store.tokens().await?;
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
                let t = store.revoke_token(id).await.map_err(|e| match e {
                    StoreError::NotFound { .. } => {
                        anyhow::anyhow!("no token with id {id} (see `pichat token list`)")
                    }
                    e => anyhow::Error::new(e),
                })?;
                writeln!(
                    out,
                    "token {} of {} revoked: new connections with it are refused, and a running server closes the open ones within its ping interval (25 s)",
                    t.id, t.user
                )?;
            }
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn server(args: ServerArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let at = db_location(args.db.as_deref(), cli_config)?;
    match args.cmd {
        ServerCmd::Migrate { to, batch, json } => {
            let Location::Sqlite(from) = &at else {
                anyhow::bail!(
                    "the source must be a SQLite file (server.database or --db is {})",
                    at.display()
                );
            };
            if !matches!(Location::parse(&to), Location::Postgres(_)) {
                anyhow::bail!("--to: give a postgres:// URL (got \"{to}\")");
            }
            Location::parse(&to)
                .check()
                .map_err(|e| anyhow::anyhow!("--to: {e}"))?;
            let rt = runtime()?;
            let target = serverdb::postgres::redact(&to);
            eprintln!("copying {} into {target}…", from.display());
            let report = rt.block_on(serverdb::migrate::migrate(
                from,
                &to,
                batch,
                &mut |line: &str| eprintln!("{line}"),
            ))?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "migrated and verified: {} users, {} tokens, {} sessions, {} settings, {} conversations, {} messages ({} copied by this run in {:.1} s: {:.0} messages/s)",
                    report.users,
                    report.tokens,
                    report.sessions,
                    report.settings,
                    report.conversations,
                    report.messages,
                    report.messages_copied,
                    report.seconds,
                    report.messages_per_second
                )?;
                writeln!(
                    out,
                    "next: set server.database = \"{target}\" (with its password) on every server, and start them"
                )?;
            }
        }
        ServerCmd::Health { json } => {
            let h = with_store(&at, &store_options(cli_config, false), async |store| {
                Ok(store.health().await)
            })?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &h)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{} {}: {}",
                    h.kind,
                    h.location,
                    if h.ok {
                        "ok".to_string()
                    } else {
                        format!("not ok ({})", h.error.clone().unwrap_or_default())
                    }
                )?;
                writeln!(
                    out,
                    "size {} bytes, reclaimable {} bytes{}",
                    h.bytes,
                    h.reclaimable_bytes,
                    if h.kind == "sqlite" {
                        format!(", WAL {} bytes", h.wal_bytes)
                    } else {
                        String::new()
                    }
                )?;
            }
            if !h.ok {
                return Ok(ExitCode::from(1));
            }
        }
        ServerCmd::Maintain => {
            let line = with_store(&at, &store_options(cli_config, false), async |store| {
                Ok(store.maintain().await?)
            })?;
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What SIGHUP does to `pichat serve`: check the edited config, say that
/// changes apply at restart.
struct ServeReload<'a> {
    cli_config: Option<&'a Path>,
    addr: SocketAddr,
}

impl crate::supervisor::Reload for ServeReload<'_> {
    fn status(&self) -> String {
        format!("serving on {}", self.addr)
    }

    async fn reload(&mut self) {
        let (path, origin) = crate::config::locate(self.cli_config);
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
    }
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
    let db = match args.db.as_deref() {
        Some(s) => {
            let at = Location::parse(s);
            at.check().map_err(|e| anyhow::anyhow!("--db: {e}"))?;
            at
        }
        None => cfg.server.database.clone(),
    };
    let engines = Engines::build(
        &cfg,
        &cfg.server.stt_engines,
        &cfg.server.llm_engines,
        &cfg.server.tts_engines,
    )
    .context("cannot set up the server's engines (server.*_engines)")?;
    let store_opts = StoreOptions {
        sqlite: OpenOptions {
            busy_timeout: cfg.history.busy_timeout,
            create: true,
            readers: cfg.server.read_connections,
        },
        pool_size: cfg.server.database_pool,
        ..StoreOptions::default()
    };
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
    let mut store_thread = None;
    let result = rt.block_on(async {
        let listener = server::bind(listen).await?;
        let opened = serverdb::open(&db, &store_opts).await?;
        store_thread = opened.thread;
        let handle = opened.store;
        tracing::info!("database: {} {}", handle.kind(), db.display());
        let tokens = handle.tokens().await?;
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
        // the edited config instead of killing the server. The loop ends
        // when the server does (it watches `shutdown` itself).
        let server = tokio::spawn(server::run(listener, handle, engines, opts, shutdown));
        let mut sup = ServeReload { cli_config, addr };
        let never = tokio_util::sync::CancellationToken::new();
        if let Some(r) = crate::supervisor::run(&mut sup, server, &never).await? {
            r??;
        }
        Ok::<(), anyhow::Error>(())
    });
    // Every handle is gone with the runtime's tasks: wait for the database to close.
    drop(rt);
    if let Some(t) = store_thread {
        t.join();
    }
    result.map(|()| ExitCode::SUCCESS)
}
