//! `pichat run` (the assistant), `pichat ask` (one turn without a button)
//! and `pichat say` (text to speech).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::audio::earcon::Earcons;
use crate::audio::{self, AudioSink, AudioSource};
use crate::config::{Config, DeviceSpec};
use crate::engines::{self, Engines};
use crate::history::HistoryHandle;
use crate::history::OpenOptions;
use crate::voice::daemon::{self, Voice, VoiceParts};
use crate::voice::turn::{Event, Outcome};

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question, typed (no speech-to-text)
    #[arg(conflicts_with = "wav", required_unless_present = "wav")]
    text: Option<String>,
    /// A spoken question in a WAV file, instead of text
    #[arg(long)]
    wav: Option<PathBuf>,
    /// Write the spoken reply to this WAV file instead of playing it
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start a new conversation (else the last one goes on if recent)
    #[arg(long)]
    new: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct TranscribeArgs {
    /// WAV file with speech
    file: PathBuf,
}

#[derive(Debug, Args)]
pub struct SayArgs {
    /// Text to speak
    text: String,
    /// Write the speech to this WAV file instead of playing it
    #[arg(long)]
    out: Option<PathBuf>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(2)
}

/// The daemon's runtime has one worker: its tasks wait on I/O (the heavy
/// parts, SQLite and audio, have their own threads), and armed it wakes 50
/// times a second for the microphone's frames, which a second worker only
/// doubles (`pichat bench wake`: about a quarter less CPU while armed).
fn daemon_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(1)
}

fn runtime_with(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}

fn open_history(cfg: &Config) -> anyhow::Result<(HistoryHandle, crate::store::actor::StoreThread)> {
    Ok(HistoryHandle::open(
        &cfg.history.path,
        &OpenOptions {
            busy_timeout: cfg.history.busy_timeout,
            create: true,
            ..OpenOptions::default()
        },
    )?)
}

fn output(cfg: &Config, out: Option<&Path>) -> anyhow::Result<Arc<dyn AudioSink>> {
    let spec = match out {
        Some(p) => DeviceSpec::Wav(p.to_path_buf()),
        None => cfg.audio.output.clone(),
    };
    Ok(Arc::from(audio::open_output(&spec, cfg.audio.volume)?))
}

pub fn run(cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let (path, origin) = crate::config::locate(cli_config);
    let must_exist = origin != crate::config::ConfigOrigin::Default;
    let loaded = crate::config::load_file(&path, must_exist)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let cfg = loaded.config;
    crate::logging::init(&cfg.log.level, cfg.log.format);
    engines::init_tls();
    tracing::info!(
        "pichat {} starting with {}{}",
        env!("CARGO_PKG_VERSION"),
        path.display(),
        if loaded.exists {
            ""
        } else {
            " (not present: defaults)"
        }
    );
    let rt = daemon_runtime()?;
    rt.block_on(async {
        let shutdown = crate::signals::shutdown_token();
        crate::voice::service::run(&path, must_exist, cfg, started, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn ask(args: AskArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(cli_config)?.config;
    engines::init_tls();
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = crate::signals::shutdown_token();
        let (history, store) = open_history(&cfg)?;
        let sink = output(&cfg, args.out.as_deref())?;
        let source: Option<Box<dyn AudioSource>> = match &args.wav {
            Some(p) => Some(Box::new(audio::wav::WavSource::open_limited(
                p,
                audio::wav::Pace::Fast,
                audio::wav::Limits::stt(cfg.stt.max_duration),
            )?)),
            None => None,
        };
        let engines = Engines::from_config(&cfg)?;
        let mut voice = Voice::new(
            &cfg,
            VoiceParts {
                history: history.clone(),
                engines,
                source,
                sink,
                earcons: Earcons::load(&cfg.audio)?,
            },
        );
        // A one-shot question: no button, so no earcons (errors are printed).
        voice.earcons_on = false;
        if args.new {
            voice.turn.start_new_conversation();
        }
        let start = match &args.text {
            Some(t) => vec![Event::Typed(t.clone())],
            None => vec![Event::Pressed],
        };
        let report = daemon::one_turn(&mut voice, start, &shutdown).await;
        drop(voice);
        drop(history);
        tokio::task::spawn_blocking(move || store.join()).await?;
        let ok = report.outcome == Some(Outcome::Answered);
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "question": report.question,
                    "answer": report.answer,
                    "conversation_id": report.conversation_id,
                    "outcome": format!("{:?}", report.outcome),
                    "times": report.times.summary(),
                }))?
            );
        } else {
            if let Some(q) = &report.question {
                println!("you: {}", super::safe_text::text(q));
            }
            if let Some(a) = &report.answer {
                println!("assistant: {}", super::safe_text::text(a));
            }
            eprintln!("{}", report.times.summary());
        }
        match report.outcome {
            Some(Outcome::Answered) => {}
            Some(Outcome::NothingHeard | Outcome::NoSpeech | Outcome::FollowUpEnded) => {
                eprintln!("pichat: nothing was heard in the recording")
            }
            Some(Outcome::Failed(e)) => eprintln!("pichat: error: {e}"),
            Some(Outcome::Interrupted) | None => eprintln!("pichat: interrupted"),
        }
        if let Some(o) = &args.out
            && ok
        {
            eprintln!("reply written to {}", o.display());
        }
        anyhow::Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

pub fn say(args: SayArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(cli_config)?.config;
    anyhow::ensure!(
        !args.text.trim().is_empty(),
        "nothing to say: the text is empty"
    );
    engines::init_tls();
    let rt = runtime()?;
    rt.block_on(async {
        let engines = Engines::build(&cfg, &[], &[], &cfg.tts.engines)?;
        let sink = output(&cfg, args.out.as_deref())?;
        let mut splitter = crate::voice::sentences::SentenceSplitter::new(cfg.tts.max_chunk_chars);
        let mut sentences = splitter.push(&args.text);
        sentences.extend(splitter.finish());
        for s in sentences {
            let (engine, mut stream) = engines::fallback::synthesize(&engines.tts, &s)
                .await
                .with_context(|| format!("cannot speak {s:?}"))?;
            tracing::debug!("{s:?} by {}", engine.name());
            while let Some(c) = stream.next().await {
                let c = c?;
                sink.enqueue(&c.pcm, c.rate)?;
            }
        }
        tokio::select! {
            _ = audio::drained(sink.as_ref()) => {}
            _ = crate::signals::terminated() => sink.flush(),
        }
        if let Some(o) = &args.out {
            eprintln!("speech written to {}", o.display());
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

pub fn transcribe(args: TranscribeArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(cli_config)?.config;
    let pcm = audio::wav::read_16k(&args.file, &audio::wav::Limits::stt(cfg.stt.max_duration))?;
    engines::init_tls();
    let rt = runtime()?;
    rt.block_on(async {
        let engines = Engines::build(&cfg, &cfg.stt.engines, &[], &[])?;
        let chain = engines::fallback::SttChain {
            engines: engines.stt,
        };
        let text = engines::transcribe(&chain, &pcm).await?;
        println!("{}", super::safe_text::text(&text));
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
