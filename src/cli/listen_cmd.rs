//! `pichat listen monitor`: the running daemon's live listening figures
//! (each wake word's score, voice activity, the microphone's level,
//! whether a question is being heard), ten lines a second, for tuning
//! `[wake.words.*]` thresholds and `listen.vad_threshold` over ssh.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ListenCmd {
    /// Print the daemon's wake word scores, voice activity and levels live (Ctrl-C ends).
    Monitor {
        /// Stop after this many lines (0: until interrupted)
        #[arg(long, default_value_t = 0)]
        lines: u64,
    },
}

pub fn run(cmd: ListenCmd, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(cli_config)?.config;
    let ListenCmd::Monitor { lines } = cmd;
    let path = &cfg.ptt.socket;
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "control socket {}: is `pichat run` running, and does ptt.socket match its config?",
            path.display()
        )
    })?;
    s.write_all(b"monitor\n")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = std::io::stdout().lock();
    let mut n = 0;
    for line in std::io::BufReader::new(s).lines() {
        let line = line.context("the daemon stopped sending (is it listening for a wake word?)")?;
        if let Some(e) = line.strip_prefix("error: ") {
            anyhow::bail!("{e}");
        }
        writeln!(out, "{line}")?;
        n += 1;
        if lines > 0 && n >= lines {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
