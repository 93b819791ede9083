//! The store a server benchmark runs on (`--store sqlite|postgres`): a
//! fresh database per part — a SQLite file in the bench's directory, or a
//! database on PostgreSQL (`--postgres URL` of a server the bench may
//! create databases on, else a private cluster made for the run).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::serverdb::postgres::cluster::Cluster;
use crate::serverdb::{self, Location, ServerStore, StoreOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// Where the bench's databases are made.
pub struct Stores {
    pub kind: StoreKind,
    dir: PathBuf,
    /// The server to make databases on (`postgres`): a URL with any database.
    postgres: Option<String>,
    cluster: Option<Cluster>,
}

impl Stores {
    pub fn new(kind: StoreKind, dir: &Path, postgres: Option<String>) -> anyhow::Result<Stores> {
        let cluster = match (kind, &postgres) {
            (StoreKind::Postgres, None) => {
                let c = Cluster::start()?;
                println!("(a private PostgreSQL cluster on port {})", c.port());
                Some(c)
            }
            _ => None,
        };
        Ok(Stores {
            kind,
            dir: dir.to_path_buf(),
            postgres,
            cluster,
        })
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }

    /// A new, empty database for part `name`.
    pub async fn fresh(&self, name: &str) -> anyhow::Result<Location> {
        match self.kind {
            StoreKind::Sqlite => {
                let p = self.dir.join(format!("{name}.db"));
                let _ = std::fs::remove_file(&p);
                Ok(Location::Sqlite(p))
            }
            StoreKind::Postgres => {
                let db = format!("bench_{name}_{}", fastrand::u32(..));
                if let Some(c) = &self.cluster {
                    return Ok(Location::Postgres(c.create_db(&db).await?));
                }
                let base = self.postgres.as_deref().unwrap_or_default();
                let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
                let task = tokio::spawn(conn);
                client
                    .batch_execute(&format!("CREATE DATABASE {db}"))
                    .await?;
                drop(client);
                let _ = task.await;
                let mut u = url::Url::parse(base)?;
                u.set_path(&format!("/{db}"));
                Ok(Location::Postgres(u.to_string()))
            }
        }
    }
}

/// Opens a store (for a part that needs it in this process).
pub async fn open(
    at: &Location,
) -> anyhow::Result<(
    Arc<dyn ServerStore>,
    Option<crate::store::actor::StoreThread>,
)> {
    let o = serverdb::open(at, &StoreOptions::default()).await?;
    Ok((o.store, o.thread))
}

/// Tokens for `users` (created), through a store opened for it.
pub async fn tokens(at: &Location, users: &[String]) -> anyhow::Result<Vec<String>> {
    let (store, thread) = open(at).await?;
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        out.push(
            crate::server::auth::issue_token(&*store, u, Some("bench"))
                .await?
                .1,
        );
    }
    drop(store);
    if let Some(t) = thread {
        tokio::task::spawn_blocking(move || t.join()).await?;
    }
    Ok(out)
}

/// A token for `user`.
pub async fn token(at: &Location, user: &str) -> anyhow::Result<String> {
    Ok(tokens(at, &[user.to_string()]).await?.remove(0))
}
