//! A private PostgreSQL cluster for tests and benchmarks (never for
//! production): `initdb` in a temporary directory, `pg_ctl start` on a
//! port of its own on 127.0.0.1, its socket in that directory, trust
//! authentication for the `pichat` role. Debian's `postgresql` package
//! provides the programs (`/usr/lib/postgresql/N/bin`, or
//! `PICHAT_PG_BIN`); initdb refuses root, so as root the cluster runs as
//! the `postgres` user the package creates (through `runuser`).
//!
//! The cluster stops and its directory goes when the [`Cluster`] is
//! dropped — and, through a watcher process, when the process that made it
//! dies without dropping it (a test binary's statics are never dropped).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running private cluster.
pub struct Cluster {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
}

/// Why a cluster could not be made (with what to do about it).
#[derive(Debug, thiserror::Error)]
#[error("cannot start a private PostgreSQL cluster: {0}")]
pub struct ClusterError(String);

fn err(s: impl Into<String>) -> ClusterError {
    ClusterError(s.into())
}

/// The directory of `initdb` and `pg_ctl`: `PICHAT_PG_BIN`, else the
/// newest `/usr/lib/postgresql/N/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PICHAT_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// A free TCP port on 127.0.0.1 (free when asked).
fn free_port() -> Result<u16, ClusterError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| err(e.to_string()))?;
    Ok(l.local_addr().map_err(|e| err(e.to_string()))?.port())
}

impl Cluster {
    /// Makes and starts a cluster (a few seconds).
    pub fn start() -> Result<Cluster, ClusterError> {
        let bin = bin_dir().ok_or_else(|| {
            err("no initdb found (install Debian's postgresql package: scripts/deps.sh --test; or set PICHAT_PG_BIN)")
        })?;
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "postgres".to_string());
        let dir = tempfile::Builder::new()
            .prefix("pichat-pg-")
            .tempdir()
            .map_err(|e| err(e.to_string()))?
            .keep();
        let data = dir.join("data");
        let mut c = Cluster {
            dir,
            data,
            bin,
            port: 0,
            run_as,
        };
        if let Some(user) = &c.run_as {
            let status = Command::new("chown")
                .arg(user)
                .arg(&c.dir)
                .status()
                .map_err(|e| err(format!("chown: {e}")))?;
            if !status.success() {
                return Err(err(format!(
                    "cannot give {} to the {user} user (does it exist? the postgresql package creates it)",
                    c.dir.display()
                )));
            }
        }
        c.run(
            "initdb",
            &[
                "-D",
                &c.data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "pichat",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        // The port may be taken between asking and starting: a few tries.
        let mut last = String::new();
        for _ in 0..5 {
            c.port = free_port()?;
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=32MB",
                c.port,
                c.dir.display()
            );
            match c.run(
                "pg_ctl",
                &[
                    "-D",
                    &c.data.display().to_string(),
                    "-l",
                    &c.dir.join("log").display().to_string(),
                    "-o",
                    &opts,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ) {
                Ok(()) => {
                    c.watch();
                    return Ok(c);
                }
                Err(e) => last = e.0,
            }
        }
        Err(err(format!(
            "{last} (log: {})",
            std::fs::read_to_string(c.dir.join("log")).unwrap_or_default()
        )))
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), ClusterError> {
        let out = self
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| err(format!("{program}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )))
        }
    }

    /// Stops the cluster and removes its directory when this process dies.
    fn watch(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = match &self.run_as {
                Some(u) => format!("runuser -u {u} -- '{}'", self.bin.join("pg_ctl").display()),
                None => format!("'{}'", self.bin.join("pg_ctl").display()),
            },
            data = self.data.display(),
            dir = self.dir.display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://pichat@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database (names of letters, digits and `_`).
    pub async fn create_db(&self, name: &str) -> Result<String, ClusterError> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(format!("database name {name:?}")));
        }
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .map_err(|e| err(e.to_string()))?;
        let task = tokio::spawn(conn);
        let r = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| err(e.to_string()));
        drop(client);
        let _ = task.await;
        r.map(|()| self.url(name))
    }

    /// Waits until the cluster accepts connections (after a restart).
    pub fn wait_ready(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops the cluster at once (as a crash would), keeping its files.
    pub fn kill(&self) -> Result<(), ClusterError> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
        )
    }

    /// Starts it again after [`Cluster::kill`], on the same port.
    pub fn restart(&self) -> Result<(), ClusterError> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=32MB",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-l",
                &self.dir.join("log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
