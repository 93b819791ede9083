//! The command line: clap definitions and dispatch to each command's module.
//! Commands return `anyhow::Result<ExitCode>`; `main` prints errors and exits.

mod audio_cmd;
mod config_cmd;
mod doctor_cmd;
mod history_cmd;
mod listen_cmd;
mod safe_text;
mod server_cmd;
mod sync_cmd;
mod voice_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Loaded};

/// A hands-free voice assistant for the Raspberry Pi, and its chat server.
#[derive(Debug, Parser)]
#[command(name = "pichat", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file [default: $PICHAT_CONFIG, else /etc/pichat/pichat.toml, else ~/.config/pichat/pichat.toml]
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the voice assistant (push-to-talk, speech, LLM, history) until stopped.
    Run,
    /// Ask one question, typed or from a WAV file, and hear (or save) the reply.
    Ask(voice_cmd::AskArgs),
    /// Speak a text with the configured text-to-speech engines.
    Say(voice_cmd::SayArgs),
    /// Turn the speech in a WAV file into text with the configured speech-to-text engines.
    Transcribe(voice_cmd::TranscribeArgs),
    /// Check everything the assistant needs (config, audio, button, engines, server, disk, database).
    Doctor,
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCmd),
    /// Sync the local history with the chat server now, or show the sync's status.
    Sync(sync_cmd::SyncArgs),
    /// Browse, search, export and maintain the local conversation history.
    History(history_cmd::HistoryArgs),
    /// List audio devices and the configurations they support.
    Devices(audio_cmd::DevicesArgs),
    /// Record from the microphone into a WAV file (16 kHz mono, as the assistant hears it).
    Record(audio_cmd::RecordArgs),
    /// Play a WAV file on the speaker.
    Play(audio_cmd::PlayArgs),
    /// Watch hands-free listening live: wake word scores, voice activity, levels.
    #[command(subcommand)]
    Listen(listen_cmd::ListenCmd),
    /// Push-to-talk by command (through the daemon's control socket), or watch the button.
    #[command(subcommand)]
    Ptt(audio_cmd::PttCmd),
    /// Run the chat server (the WebSocket protocol, see PROTOCOL.md).
    Serve(server_cmd::ServeArgs),
    /// Manage the chat server's users and device tokens.
    Token(server_cmd::TokenArgs),
    /// Look after the chat server's database: copy it into PostgreSQL, check its health.
    Server(server_cmd::ServerArgs),
    /// Measure performance and print the figures.
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Loads the config for a command; errors carry every problem with its line.
pub fn load_config(cli_path: Option<&std::path::Path>) -> anyhow::Result<Loaded> {
    config::load(cli_path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // One-shot commands log warnings; the daemons set their own level.
    if !matches!(cli.command, Command::Run | Command::Serve(_)) {
        crate::logging::init("warn", crate::config::LogFormat::Human);
    }
    match cli.command {
        Command::Run => voice_cmd::run(cli.config.as_deref()),
        Command::Ask(a) => voice_cmd::ask(a, cli.config.as_deref()),
        Command::Say(a) => voice_cmd::say(a, cli.config.as_deref()),
        Command::Transcribe(a) => voice_cmd::transcribe(a, cli.config.as_deref()),
        Command::Doctor => doctor_cmd::run(cli.config.as_deref()),
        Command::Config(cmd) => config_cmd::run(cmd, cli.config.as_deref()),
        Command::Sync(a) => sync_cmd::run(a, cli.config.as_deref()),
        Command::History(args) => history_cmd::run(args, cli.config.as_deref()),
        Command::Devices(a) => audio_cmd::devices(a),
        Command::Record(a) => audio_cmd::record(a, cli.config.as_deref()),
        Command::Play(a) => audio_cmd::play(a, cli.config.as_deref()),
        Command::Ptt(c) => audio_cmd::ptt(c, cli.config.as_deref()),
        Command::Listen(c) => listen_cmd::run(c, cli.config.as_deref()),
        Command::Serve(a) => server_cmd::serve(a, cli.config.as_deref()),
        Command::Token(a) => server_cmd::token(a, cli.config.as_deref()),
        Command::Server(a) => server_cmd::server(a, cli.config.as_deref()),
        Command::Bench(cmd) => crate::bench::run(cmd),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "pichat", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
