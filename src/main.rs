//! The `pichat` binary: parses the command line, runs the command, and is the
//! only place that decides the exit code (0 ok, 1 failure, 2 usage error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pichat::cli::Cli::parse();
    match pichat::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pichat: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
