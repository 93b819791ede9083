//! `pichat bench service`: what systemd sees. The real binary is started the
//! way systemd starts it (`$NOTIFY_SOCKET` pointing at a datagram socket this
//! benchmark owns) and timed from spawn to `READY=1` — the cold start — and
//! from SIGHUP to the `READY=1` that ends the `RELOADING=1` — the reload —
//! for `pichat run` (WAV audio, no button, a local database; the reload
//! applies a changed volume and debounce, so push-to-talk is re-armed) and
//! `pichat serve` (127.0.0.1:0, a local database; its reload validates the
//! edited file and names what waits for a restart).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Percentiles, ms};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Starts and reloads timed for each service
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// A config for `pichat run` that needs no hardware: WAV files for the
/// microphone and speaker, no push-to-talk source (the control socket stays),
/// the history in `dir`.
pub(crate) fn daemon_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let wav = dir.join("in.wav");
    crate::audio::wav::write(&wav, &[0; 1600], 16_000)?;
    let cfg = dir.join("daemon.toml");
    write_daemon_config(dir, &cfg, 0)?;
    Ok(cfg)
}

/// Variant `n` of the daemon's config: the volume and the push-to-talk
/// debounce change with `n`, so a reload applies something and re-arms the
/// push-to-talk sources (the control socket is bound again).
fn write_daemon_config(dir: &Path, cfg: &Path, n: usize) -> anyhow::Result<()> {
    std::fs::write(
        cfg,
        format!(
            "[audio]\ninput = \"wav:{}\"\noutput = \"wav:{}\"\nvolume = {}\n[ptt]\nsource = \"none\"\nsocket = \"{}\"\ndebounce_ms = {}\n[history]\npath = \"{}\"\n",
            dir.join("in.wav").display(),
            dir.join("out.wav").display(),
            if n.is_multiple_of(2) { "0.8" } else { "0.6" },
            dir.join("ctl.sock").display(),
            20 + n % 2,
            dir.join("history.db").display()
        ),
    )?;
    Ok(())
}

/// Variant `n` of the server's config: the rate limit changes with `n`.
fn write_server_config(dir: &Path, cfg: &Path, n: usize) -> anyhow::Result<()> {
    std::fs::write(
        cfg,
        format!(
            "[history]\npath = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\nrate_limit_per_min = {}\n",
            dir.join("history.db").display(),
            dir.join("server.db").display(),
            30 + n % 2
        ),
    )?;
    Ok(())
}

/// The `$NOTIFY_SOCKET` end: the messages the service sends.
struct Notify {
    sock: UnixDatagram,
}

impl Notify {
    fn bind(path: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(path);
        let sock =
            UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        Ok(Notify { sock })
    }

    /// Waits for a message with `needle` among its lines; returns when it came.
    fn wait_for(&self, needle: &str, child: &mut Child) -> anyhow::Result<Instant> {
        let end = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        loop {
            let left = end
                .checked_duration_since(Instant::now())
                .with_context(|| format!("no {needle} within 20 s"))?;
            self.sock
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let at = Instant::now();
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == needle) {
                        return Ok(at);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(status) = child.try_wait()? {
                        bail!("the service exited ({status}) before {needle}");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

struct Timings {
    first: Duration,
    starts: Vec<Duration>,
    reloads: Vec<Duration>,
}

/// `edit(n)` writes variant `n` of the config: even before a start, odd
/// before the reload.
fn measure(
    dir: &Path,
    cfg: &Path,
    sub: &str,
    rounds: usize,
    edit: &dyn Fn(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Timings> {
    let exe = std::env::current_exe()?;
    let sock = dir.join(format!("{sub}.notify"));
    let notify = Notify::bind(&sock)?;
    let mut t = Timings {
        first: Duration::ZERO,
        starts: Vec::new(),
        reloads: Vec::new(),
    };
    for round in 0..=rounds {
        edit(2 * round)?;
        let spawned = Instant::now();
        let mut child = Command::new(&exe)
            .args(["--config", &cfg.to_string_lossy(), sub])
            .env("NOTIFY_SOCKET", &sock)
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let result = (|| -> anyhow::Result<()> {
            let ready = notify.wait_for("READY=1", &mut child)?;
            if round == 0 {
                // The first start creates the database.
                t.first = ready - spawned;
            } else {
                t.starts.push(ready - spawned);
            }
            edit(2 * round + 1)?;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
            let hup = Instant::now();
            notify.wait_for("RELOADING=1", &mut child)?;
            let done = notify.wait_for("READY=1", &mut child)?;
            t.reloads.push(done - hup);
            Ok(())
        })();
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait()?;
        result.with_context(|| format!("pichat {sub}, round {round}"))?;
        if !status.success() {
            bail!("pichat {sub} exited with {status} after SIGTERM");
        }
    }
    Ok(t)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let rounds = a.rounds.max(1);
    println!(
        "pichat bench service: spawn -> READY=1 and SIGHUP -> RELOADING=1 -> READY=1, {rounds} rounds each"
    );
    for (sub, what) in [
        ("run", "daemon (WAV audio, local db)"),
        ("serve", "server (127.0.0.1:0, local db)"),
    ] {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let t = if sub == "run" {
            let cfg = daemon_config(d)?;
            measure(d, &cfg, sub, rounds, &|n| write_daemon_config(d, &cfg, n))?
        } else {
            // `measure` writes it before each start.
            let cfg = d.join("server.toml");
            measure(d, &cfg, sub, rounds, &|n| write_server_config(d, &cfg, n))?
        };
        let starts = Percentiles::new(t.starts);
        let reloads = Percentiles::new(t.reloads);
        println!("pichat {sub:<5} {what}");
        println!("  cold start to READY, new db      {}", ms(t.first));
        println!(
            "  cold start to READY, existing db p50 {}  p99 {}   goal <= 100 ms",
            ms(starts.p(50.0)),
            ms(starts.p(99.0))
        );
        println!(
            "  reload (SIGHUP to READY)         p50 {}  p99 {}",
            ms(reloads.p(50.0)),
            ms(reloads.p(99.0))
        );
    }
    Ok(())
}
