//! `pichat bench voice`: the voice turn's own cost.
//!
//! - daemon overhead: release → first reply sample, minus the engines' own
//!   time, with fake engines (real protocols) of fixed delays;
//! - streaming: time to first audio for a 1- and a 10-sentence reply;
//! - the same turn on the real local engines, per stage (if they run);
//! - `pichat run` idle: CPU and RSS.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::fakes::{self, LlmMode, SttMode, TtsMode};
use super::{Percentiles, ms};
use crate::audio::earcon::Earcons;
use crate::audio::wav::{Pace, WavSink, WavSource};
use crate::config::{self, Config};
use crate::engines::Engines;
use crate::history::HistoryHandle;
use crate::history::OpenOptions;
use crate::voice::daemon::{self, TurnReport, Voice, VoiceParts};
use crate::voice::turn::{Event, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Turns per measurement
    #[arg(long, default_value_t = 200)]
    turns: usize,
    /// Turns on the real engines (0: skip)
    #[arg(long, default_value_t = 5)]
    real_turns: usize,
    /// Config with the real engines [default: the configured one]
    #[arg(long)]
    real_config: Option<std::path::PathBuf>,
    /// Seconds to watch `pichat run` idle
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
}

const D_STT: Duration = Duration::from_millis(40);
const D_LLM: Duration = Duration::from_millis(60);
const GAP: Duration = Duration::ZERO;
const D_TTS: Duration = Duration::from_millis(30);

fn words(sentences: usize) -> Vec<String> {
    let mut t = Vec::new();
    for i in 0..sentences {
        t.push(if i == 0 { "This" } else { " This" }.to_string());
        for w in [" is", " sentence", " number"] {
            t.push(w.to_string());
        }
        t.push(format!(" {}", i + 1));
        t.push(".".into());
    }
    t
}

struct Rig {
    voice: Voice,
    /// The fake engines (STT, LLM, TTS), to know their own time per turn.
    fakes: Option<[fakes::Fake; 3]>,
    _dir: tempfile::TempDir,
    _store: crate::store::actor::StoreThread,
}

async fn rig(sentences: usize) -> anyhow::Result<Rig> {
    let stt = fakes::wyoming_stt(SttMode::Delayed(
        "What is the capital of France?".into(),
        D_STT,
    ))
    .await;
    let llm = fakes::llm(LlmMode::Delayed {
        first: D_LLM,
        tokens: words(sentences),
        gap: GAP,
    })
    .await;
    let tts = fakes::wyoming_tts(TtsMode::Delayed {
        first: D_TTS,
        ms_per_char: 20,
    })
    .await;
    let dir = tempfile::tempdir()?;
    let text = format!(
        "[history]\npath = \"{}\"\n[stt]\nengines = [\"s\"]\n[llm]\nengines = [\"l\"]\n[tts]\nengines = [\"t\"]\n\
         [engines.s]\nkind = \"wyoming\"\nurl = \"{}\"\n[engines.l]\nkind = \"openai\"\nurl = \"{}\"\nmodel = \"fake\"\n\
         [engines.t]\nkind = \"wyoming\"\nurl = \"{}\"\n",
        dir.path().join("h.db").display(),
        stt.tcp(),
        llm.url(),
        tts.tcp()
    );
    let (_, cfg) =
        config::parse_str(&text, Path::new("bench.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    // A short question, as a WAV read as fast as possible.
    let wav = dir.path().join("q.wav");
    let tone: Vec<i16> = (0..16_000)
        .map(|i| ((i as f32 * 0.05).sin() * 3000.0) as i16)
        .collect();
    crate::audio::wav::write(&wav, &tone, 16_000)?;
    let mut r = voice_rig(&cfg, dir, Some(&wav)).await?;
    r.fakes = Some([stt, llm, tts]);
    Ok(r)
}

async fn voice_rig(
    cfg: &Config,
    dir: tempfile::TempDir,
    wav: Option<&Path>,
) -> anyhow::Result<Rig> {
    let (history, store) = HistoryHandle::open(&cfg.history.path, &OpenOptions::default())?;
    let source: Option<Box<dyn crate::audio::AudioSource>> = match wav {
        Some(w) => Some(Box::new(WavSource::open(w, Pace::Fast)?)),
        None => None,
    };
    let sink = Arc::new(WavSink::create(&dir.path().join("out.wav"), 1.0)?);
    let mut voice = Voice::new(
        cfg,
        VoiceParts {
            history,
            engines: Engines::from_config(cfg)?,
            source,
            sink,
            earcons: Earcons::load(&cfg.audio)?,
        },
    );
    voice.earcons_on = false;
    Ok(Rig {
        voice,
        fakes: None,
        _dir: dir,
        _store: store,
    })
}

async fn turn(r: &mut Rig, token: &CancellationToken) -> anyhow::Result<TurnReport> {
    r.voice.turn.start_new_conversation();
    let rep = daemon::one_turn(&mut r.voice, vec![Event::Pressed], token).await;
    anyhow::ensure!(
        rep.outcome == Some(Outcome::Answered),
        "turn failed: {:?}",
        rep.outcome
    );
    Ok(rep)
}

fn since(a: Option<Instant>, b: Option<Instant>) -> Option<Duration> {
    Some(b?.saturating_duration_since(a?))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::engines::init_tls();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let token = CancellationToken::new();

        // Overhead: release -> first audio, minus the time each fake held
        // its request (STT after audio-stop, LLM before its tokens, TTS
        // before its first chunk), as the fakes measured it themselves.
        let mut r = rig(3).await?;
        let mut over = Vec::new();
        for i in 0..args.turns + 5 {
            let rep = turn(&mut r, &token).await?;
            let t = since(rep.times.released, rep.times.first_audio).unwrap_or_default();
            let engines_time: Duration = r.fakes.as_ref().map(|f| f.iter().map(|x| x.last_held()).sum()).unwrap_or_default();
            if i >= 5 {
                over.push(t.saturating_sub(engines_time));
            }
        }
        let p = Percentiles::new(over);
        println!(
            "{:<34} p50 {}  p99 {}   goal p50 <= 5 ms, p99 <= 20 ms",
            "daemon overhead (release -> audio)",
            ms(p.p(50.0)),
            ms(p.p(99.0))
        );
        println!(
            "{:<34} fake engines: STT {} ms after audio-stop, LLM first token {} ms, TTS first chunk {} ms",
            "",
            D_STT.as_millis(),
            D_LLM.as_millis(),
            D_TTS.as_millis()
        );

        // Streaming: time to first audio, 1 vs 10 sentences.
        let mut ttfa = Vec::new();
        for n in [1usize, 10] {
            let mut r = rig(n).await?;
            let mut v = Vec::new();
            for _ in 0..(args.turns / 4).max(10) {
                let rep = turn(&mut r, &token).await?;
                v.push(since(rep.times.released, rep.times.first_audio).unwrap_or_default());
            }
            ttfa.push(Percentiles::new(v).p(50.0));
        }
        println!(
            "{:<34} 1 sentence {}  10 sentences {}  ratio {:.3}   goal <= 1.1",
            "time to first audio (p50)",
            ms(ttfa[0]),
            ms(ttfa[1]),
            ttfa[1].as_secs_f64() / ttfa[0].as_secs_f64()
        );

        if args.real_turns > 0
            && let Err(e) = real(&args, &token).await
        {
            println!("real engines: skipped ({e:#})");
        }
        anyhow::Ok(())
    })?;
    idle(args.idle_seconds)
}

async fn real(args: &Args, token: &CancellationToken) -> anyhow::Result<()> {
    let loaded = config::load(args.real_config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cfg = loaded.config;
    let dir = tempfile::tempdir()?;
    cfg.history.path = dir.path().join("h.db");
    // The spoken question: the same one the README's first command uses.
    let wav = dir.path().join("q.wav");
    let q = crate::audio::wav::read(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/question.wav"
    )))
    .or_else(|_| crate::audio::wav::read(Path::new("tests/data/question.wav")))?;
    crate::audio::wav::write(&wav, &q.mono_i16(), q.rate)?;
    let mut r = voice_rig(&cfg, dir, Some(&wav)).await?;
    let mut rows: Vec<[Duration; 5]> = Vec::new();
    // One warm-up turn: the first requests load the models.
    for i in 0..=args.real_turns {
        let rep = turn(&mut r, token).await?;
        let t = &rep.times;
        if i > 0 {
            rows.push([
                since(t.released, t.transcribed).unwrap_or_default(),
                since(t.asked, t.first_token).unwrap_or_default(),
                since(t.first_token, t.first_audio).unwrap_or_default(),
                since(t.released, t.first_audio).unwrap_or_default(),
                since(t.released, t.done).unwrap_or_default(),
            ]);
        }
        if i == args.real_turns {
            println!(
                "real engines, last reply: {:?}",
                rep.answer.unwrap_or_default()
            );
        }
    }
    let col = |k: usize| Percentiles::new(rows.iter().map(|r| r[k]).collect()).p(50.0);
    println!(
        "{:<34} STT {}  LLM first token {}  first sentence to audio {}  release -> audio {}  whole turn {}",
        format!("real engines (p50 of {})", rows.len()),
        ms(col(0)),
        ms(col(1)),
        ms(col(2)),
        ms(col(3)),
        ms(col(4))
    );
    Ok(())
}

fn idle(seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = super::service::daemon_config(dir.path())?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--config", cfg.to_str().unwrap_or_default(), "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let result = super::audio::watch_idle(child.id(), seconds);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let (cpu, rss) = result?;
    println!(
        "{:<34} CPU {cpu:.4} % of a core, RSS {:.1} MB over {seconds} s   goal <= 0.05 %, <= 8 MB",
        "`pichat run` idle",
        rss as f64 / 1024.0
    );
    Ok(())
}
