//! `pichat config check|show`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::config;

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a config file; print every problem as FILE:LINE: key: what is wrong. Exit 0 or 1.
    Check {
        /// The file to check [default: the config pichat would use]
        file: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults filled in, secrets redacted).
    Show,
}

pub fn run(cmd: ConfigCmd, cli_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Check { file } => {
            let (path, must_exist) = match file.as_deref().or(cli_path) {
                Some(p) => (p.to_path_buf(), true),
                None => {
                    let (p, origin) = config::locate(None);
                    (p, origin != config::ConfigOrigin::Default)
                }
            };
            match config::load_file(&path, must_exist) {
                Ok(l) => {
                    if l.exists {
                        println!("{}: ok", path.display());
                    } else {
                        println!(
                            "{}: not present; the built-in defaults are valid",
                            path.display()
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("{e}");
                    let n = e.problems.len();
                    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
                    Ok(ExitCode::from(1))
                }
            }
        }
        ConfigCmd::Show => {
            let loaded = super::load_config(cli_path)?;
            // Passwords in URLs and `token=` values are not printed either.
            print!("{}", super::safe_text::redact(&config::show(&loaded)));
            Ok(ExitCode::SUCCESS)
        }
    }
}
