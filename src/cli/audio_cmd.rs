//! `pichat devices`, `pichat record`, `pichat play`, `pichat ptt …`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::audio::devices::{self, Direction};
use crate::audio::{self, AudioSource};
use crate::config::DeviceSpec;
use crate::ptt;

#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// How long to record
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Input to use instead of audio.input (device name or id, or wav:PATH)
    #[arg(long)]
    input: Option<String>,
    /// WAV file to write (16 kHz mono, as the assistant hears it)
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlayArgs {
    /// WAV file to play
    file: PathBuf,
    /// Output to use instead of audio.output (device name or id, or wav:PATH)
    #[arg(long)]
    output: Option<String>,
    /// Volume 0.0..1.0 instead of audio.volume
    #[arg(long)]
    volume: Option<f32>,
}

#[derive(Debug, Subcommand)]
pub enum PttCmd {
    /// Start talking (as if the button were pressed)
    Press,
    /// Stop talking
    Release,
    /// Press if released, release if pressed
    Toggle,
    /// Print whether the button is pressed
    Status,
    /// Arm the configured button and the control socket and print every event (for checking the wiring)
    Monitor,
}

fn spec(flag: Option<&str>, configured: &DeviceSpec) -> anyhow::Result<DeviceSpec> {
    match flag {
        Some(s) => DeviceSpec::parse(s).map_err(|e| anyhow::anyhow!(e)),
        None => Ok(configured.clone()),
    }
}

pub fn devices(args: DevicesArgs) -> anyhow::Result<ExitCode> {
    let inputs = devices::list(Direction::Input)?;
    let outputs = devices::list(Direction::Output)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"input": inputs, "output": outputs}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (title, list) in [("Input devices", &inputs), ("Output devices", &outputs)] {
        println!("{title}:");
        if list.is_empty() {
            println!("  (none)");
        }
        for d in list {
            let mark = if d.is_default { " [default]" } else { "" };
            if d.id == d.name {
                println!("  {}{mark}", d.id);
            } else {
                println!("  {} — {}{mark}", d.id, d.name);
            }
            if let Some(c) = &d.default_config {
                println!("      default: {c}");
            }
            for c in &d.configs {
                println!("      supports: {c}");
            }
        }
    }
    println!("Use a device in the config as audio.input / audio.output = \"ID\" (or its name).");
    Ok(ExitCode::SUCCESS)
}

pub fn record(args: RecordArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(cli_config)?.config;
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds {} is out of range (0..=3600)",
        args.seconds
    );
    let input = spec(args.input.as_deref(), &cfg.audio.input)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut source: Box<dyn AudioSource> = match &input {
        DeviceSpec::Wav(p) => Box::new(audio::wav::WavSource::open(p, audio::wav::Pace::Fast)?),
        other => audio::open_input(other)?,
    };
    let want = (args.seconds * audio::RATE as f64).round() as usize;
    eprintln!(
        "recording {:.1} s from {} ...",
        args.seconds,
        source.describe()
    );
    let started = Instant::now();
    let mut rx = source.start()?;
    let pcm = rt.block_on(async {
        let mut pcm: Vec<i16> = Vec::with_capacity(want);
        let deadline = tokio::time::sleep(Duration::from_secs_f64(args.seconds + 5.0));
        tokio::pin!(deadline);
        while pcm.len() < want {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => pcm.extend_from_slice(&f),
                    None => break,
                },
                _ = &mut deadline => break,
                _ = crate::signals::terminated() => break,
            }
        }
        pcm.truncate(want);
        pcm
    });
    source.stop();
    if pcm.is_empty() {
        anyhow::bail!(
            "{}: no audio arrived in {:.1} s",
            source.describe(),
            started.elapsed().as_secs_f64()
        );
    }
    audio::wav::write(&args.out, &pcm, audio::RATE)?;
    eprintln!(
        "wrote {} ({:.2} s, {} samples at 16 kHz mono)",
        args.out.display(),
        pcm.len() as f64 / audio::RATE as f64,
        pcm.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn play(args: PlayArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(cli_config)?.config;
    let clip = audio::wav::read(&args.file)?;
    let output = spec(args.output.as_deref(), &cfg.audio.output)?;
    let volume = args.volume.unwrap_or(cfg.audio.volume);
    anyhow::ensure!(
        (0.0..=1.0).contains(&volume),
        "--volume {volume} is out of range (0.0..=1.0)"
    );
    let sink = audio::open_output(&output, volume)?;
    eprintln!(
        "playing {} ({:.2} s, {} Hz) on {}",
        args.file.display(),
        clip.duration().as_secs_f64(),
        clip.rate,
        sink.describe()
    );
    let pcm = clip.mono_i16();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        sink.enqueue(&pcm, clip.rate)?;
        tokio::select! {
            _ = audio::drained(sink.as_ref()) => {}
            _ = crate::signals::terminated() => sink.flush(),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn ptt(cmd: PttCmd, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let loaded = super::load_config(cli_config)?;
    let mut cfg = loaded.config;
    // A user talking to the system service: its socket is in /run/pichat.
    let service_socket = Path::new("/run/pichat/pichat.sock");
    if loaded.raw.ptt.socket.is_empty() && !cfg.ptt.socket.exists() && service_socket.exists() {
        cfg.ptt.socket = service_socket.to_path_buf();
    }
    let word = match cmd {
        PttCmd::Press => "press",
        PttCmd::Release => "release",
        PttCmd::Toggle => "toggle",
        PttCmd::Status => "status",
        PttCmd::Monitor => return monitor(&cfg.ptt),
    };
    let reply = ptt::socket::send_command(&cfg.ptt.socket, word)?;
    match reply.strip_prefix("ok") {
        Some(rest) => {
            println!("{}", rest.trim());
            Ok(ExitCode::SUCCESS)
        }
        None => anyhow::bail!("{reply}"),
    }
}

fn monitor(cfg: &crate::config::PttConfig) -> anyhow::Result<ExitCode> {
    crate::logging::init("info", crate::config::LogFormat::Auto);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = crate::signals::shutdown_token();
        let tracker = tokio_util::task::TaskTracker::new();
        let (hub, mut rx) = ptt::PttHub::new();
        let armed = ptt::arm(cfg, &hub, &tracker, &shutdown).context("cannot arm push-to-talk")?;
        eprintln!(
            "listening to: {} (Ctrl-C to stop)",
            armed.sources.join(", ")
        );
        let t0 = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                e = rx.recv() => match e {
                    Some(e) => println!("{:>9.3} s  {e:?}", t0.elapsed().as_secs_f64()),
                    None => break,
                },
            }
        }
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        drop(armed);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
