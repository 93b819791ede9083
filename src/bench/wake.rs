//! `pichat bench wake`: the figures of hands-free listening.
//!
//! On the models alone (as fast as they run, the in-process engine):
//! - detection rate on wake utterances by several espeak-ng voices (and
//!   Piper's, when it runs), at several speeds, levels and noise levels;
//! - false accepts per hour on an hour (`--hours`) of speech without the
//!   wake word (Debian's `fortunes` read by espeak-ng voices) over noise.
//!
//! In a virtual room (a private PulseAudio: the microphone and speaker are
//! null sinks, the wake phrases are played in real time; `pichat run` is
//! the real daemon):
//! - detection latency, end of the wake phrase → listening earcon, both in
//!   one recording (the phrases go to microphone and speaker at once
//!   through a combined sink);
//! - end of speech → first reply audio on the real local engines;
//! - its own voice: replies that say the wake word, played through a
//!   speaker that leaks into the microphone; the user's wake word over a
//!   reply;
//! - CPU and RSS while armed and waiting, beside wyoming-openwakeword fed
//!   the same audio by a second daemon.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Percentiles, ms};
use crate::wake::micro::MicroEngine;
use crate::wake::{WakeEvent, Word};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Wake utterances for the detection rate
    #[arg(long, default_value_t = 60)]
    utterances: usize,
    /// Hours of speech without the wake word, for false accepts
    #[arg(long, default_value_t = 1.0)]
    hours: f64,
    /// The wake word models [default: the configured engines.micro.models]
    #[arg(long)]
    models: Option<PathBuf>,
    /// Wake phrases through the virtual room for the latency (0: no room at all)
    #[arg(long, default_value_t = 50)]
    latency_trials: usize,
    /// Turns on the real local engines for end of speech -> first audio
    #[arg(long, default_value_t = 10)]
    turns: usize,
    /// Replies saying the wake word through the leaking speaker
    #[arg(long, default_value_t = 20)]
    replies: usize,
    /// The user's wake word over a reply
    #[arg(long, default_value_t = 20)]
    barge_ins: usize,
    /// Seconds to watch CPU and memory while armed
    #[arg(long, default_value_t = 60)]
    cpu_seconds: u64,
    /// Python with wyoming-openwakeword, to compare with [default: the engines' venv-oww]
    #[arg(long)]
    oww_python: Option<PathBuf>,
    /// The wake word to measure: okay_nabu, hey_jarvis, hey_mycroft or alexa
    #[arg(long, default_value = "okay_nabu", value_parser = spoken)]
    word: Spoken,
}

/// A wake word the bench can measure: the model's name, how the phrases
/// say it, wyoming-openwakeword's model of it, and what the text without
/// the wake word must not contain.
#[derive(Debug, Clone, Copy)]
pub struct Spoken {
    name: &'static str,
    said: &'static str,
    oww: &'static str,
    keyword: &'static str,
}

/// The words whose models pymicro-wakeword ships (and openWakeWord too).
const WORDS: [Spoken; 4] = [
    Spoken {
        name: "okay_nabu",
        said: "Okay Nabu",
        oww: "ok_nabu",
        keyword: "nabu",
    },
    Spoken {
        name: "hey_jarvis",
        said: "Hey Jarvis",
        oww: "hey_jarvis",
        keyword: "jarvis",
    },
    Spoken {
        name: "hey_mycroft",
        said: "Hey Mycroft",
        oww: "hey_mycroft",
        keyword: "mycroft",
    },
    Spoken {
        name: "alexa",
        said: "Alexa",
        oww: "alexa",
        keyword: "alexa",
    },
];

fn spoken(name: &str) -> Result<Spoken, String> {
    WORDS
        .iter()
        .find(|w| w.name == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = WORDS.iter().map(|w| w.name).collect();
            format!("no such word (the models shipped: {})", names.join(", "))
        })
}

impl Spoken {
    /// The bare phrase, and the phrase with a question after it.
    fn phrases(&self) -> [String; 3] {
        let w = self.said;
        [
            format!("{w}."),
            format!("{w}, what time is it?"),
            format!("{w}, turn on the kitchen light."),
        ]
    }

    fn phrase(&self) -> String {
        format!("{}.", self.said)
    }
}

const VOICES: [&str; 6] = [
    "en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f4", "en-us+m7",
];

fn engines_dir() -> PathBuf {
    if std::env::var_os("ENGINES_DIR").is_some() {
        return PathBuf::from(std::env::var_os("ENGINES_DIR").unwrap_or_default());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/cache/pichat-engines")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pichat-engines")
    }
}

/// 16 kHz mono speech by espeak-ng.
fn espeak(text: &str, voice: &str, wpm: u32) -> anyhow::Result<Vec<i16>> {
    let out = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &wpm.to_string(), "--stdout", text])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("espeak-ng: {e} (apt-get install espeak-ng)"))?;
    anyhow::ensure!(out.status.success(), "espeak-ng failed for voice {voice}");
    let limits = crate::audio::wav::decode::Limits::tts(Duration::from_secs(600));
    crate::audio::wav::decode::pcm16k_from_bytes(&out.stdout, &limits)
        .map_err(|e| anyhow::anyhow!("espeak-ng: {e}"))
}

/// 16 kHz mono speech by Piper through its Wyoming service, if it runs.
async fn piper(text: &str) -> Option<Vec<i16>> {
    let cfg = crate::config::parse_str("", Path::new("-")).ok()?.1;
    let tts = crate::engines::build_tts(cfg.engines.get("piper")?, cfg.tts.max_duration).ok()?;
    let a = crate::engines::synthesize_all(tts.as_ref(), text)
        .await
        .ok()?;
    let clip = crate::audio::wav::Clip {
        rate: a.rate,
        pcm: a.pcm,
    };
    Some(crate::audio::wav::frames_of(&clip).ok()?.concat())
}

/// Pink-ish noise (white noise through a one-pole low-pass), deterministic.
struct Noise {
    state: u64,
    lp: f32,
}

impl Noise {
    fn new(seed: u64) -> Noise {
        Noise {
            state: seed | 1,
            lp: 0.0,
        }
    }

    fn next(&mut self) -> f32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let white = (self.state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        self.lp = 0.9 * self.lp + 0.1 * white;
        self.lp * 3.0 + white * 0.2
    }

    /// `n` samples at `db` dBFS RMS (about).
    fn samples(&mut self, n: usize, db: f32) -> Vec<f32> {
        let gain = 10f32.powf(db / 20.0) * 32768.0 / 0.45;
        (0..n).map(|_| self.next() * gain).collect()
    }
}

/// dBFS of a block.
fn block_db(pcm: &[i16]) -> f32 {
    crate::voice::ear::level_db(pcm)
}

/// How much of a block's power is at `hz` (Goertzel), 0..1.
fn tone_ratio(pcm: &[i16], hz: f32) -> f32 {
    let n = pcm.len() as f32;
    let w = 2.0 * std::f32::consts::PI * hz / 16_000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    let mut total = 0.0f32;
    for &x in pcm {
        let x = x as f32;
        let s0 = x + c * s1 - s2;
        s2 = s1;
        s1 = s0;
        total += x * x;
    }
    let power = s1 * s1 + s2 * s2 - c * s1 * s2;
    if total <= 0.0 {
        0.0
    } else {
        (2.0 * power / (n * total)).min(1.0)
    }
}

/// Clicks played to measure the virtual room's leak.
const CLICKS: usize = 6;

/// The delays between each click heard direct and heard again through the
/// leak: onsets (a loud sample after at least 100 quiet ones) less than
/// 200 ms apart, to the sample.
fn leak_delays(rec: &[i16]) -> Vec<Duration> {
    let mut onsets = Vec::new();
    let mut last: Option<usize> = None;
    for (i, x) in rec.iter().enumerate() {
        if x.unsigned_abs() > 1000 {
            if last.is_none_or(|l| i - l >= 100) {
                onsets.push(i);
            }
            last = Some(i);
        }
    }
    onsets
        .windows(2)
        .filter(|w| w[1] - w[0] < 3200)
        .map(|w| Duration::from_secs_f64((w[1] - w[0]) as f64 / 16_000.0))
        .collect()
}

fn rms_db(pcm: &[i16]) -> f32 {
    crate::voice::ear::level_db(pcm)
}

/// Speech scaled by `gain_db`, over noise `snr_db` below the speech
/// (`None`: clean), with `lead`/`tail` samples of (noisy) silence around it.
fn scene(
    speech: &[i16],
    gain_db: f32,
    snr_db: Option<f32>,
    lead: usize,
    tail: usize,
    noise: &mut Noise,
) -> Vec<i16> {
    let g = 10f32.powf(gain_db / 20.0);
    let level = rms_db(speech) + gain_db;
    let n = lead + speech.len() + tail;
    let bed = match snr_db {
        Some(snr) => noise.samples(n, level - snr),
        None => vec![0.0; n],
    };
    (0..n)
        .map(|i| {
            let s = if i >= lead && i < lead + speech.len() {
                speech[i - lead] as f32 * g
            } else {
                0.0
            };
            (s + bed[i]).clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// The engine as `pichat run` builds it by default: with openWakeWord's
/// second opinion when the setup script installed its models.
fn micro(models: &Path, word: &str) -> MicroEngine {
    micro_at(models, word, None).with_second_opinion(second_opinion(models).as_deref())
}

fn second_opinion(models: &Path) -> Option<PathBuf> {
    crate::config::SecondOpinion::IfInstalled(models.join("openwakeword"))
        .dir()
        .map(Path::to_path_buf)
}

/// The engine alone (no second opinion) at a given threshold (`None`: the
/// model's own cutoff; above 1: it never fires, so its scores are the
/// model's, whole).
fn micro_at(models: &Path, word: &str, threshold: Option<f32>) -> MicroEngine {
    MicroEngine::new(
        "micro",
        models,
        &models.join("libtensorflowlite_c.so"),
        vec![Word {
            name: word.into(),
            threshold,
            trigger_level: 1,
            refractory: Duration::from_secs(2),
        }],
    )
}

/// Detections (their end, in samples) in a stream of audio, and the best
/// score seen.
fn detect(engine: &MicroEngine, pcm: &[i16]) -> anyhow::Result<(Vec<u64>, f32)> {
    let mut s = engine.open_now()?;
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut best = 0.0f32;
    for f in pcm.chunks(crate::audio::FRAME) {
        s.push_now(f, &mut out).map_err(|e| anyhow::anyhow!(e))?;
        for e in out.drain(..) {
            match e {
                WakeEvent::Detected { end, score, .. } => {
                    best = best.max(score);
                    ends.push(end);
                }
                WakeEvent::Score { score, .. } => best = best.max(score),
                WakeEvent::SecondOpinion { .. } => {}
            }
        }
    }
    Ok((ends, best))
}

/// Text without the wake word: the fortunes, one per paragraph.
fn fortunes(keyword: &str) -> anyhow::Result<Vec<String>> {
    let dir = Path::new("/usr/share/games/fortunes");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e} (apt-get install fortunes)", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none())
        .collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for piece in text.split("\n%\n") {
            let clean: String = piece
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        ' '
                    }
                })
                .collect();
            let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
            let lower = clean.to_lowercase();
            if clean.len() > 20 && !lower.contains(keyword) {
                out.push(clean);
            }
        }
    }
    anyhow::ensure!(!out.is_empty(), "no fortunes in {}", dir.display());
    Ok(out)
}

fn models_dir(args: &Args) -> PathBuf {
    if let Some(m) = &args.models {
        return m.clone();
    }
    if let Ok(l) = crate::config::load(None)
        && let Some(e) = l.config.engines.get("micro")
        && let crate::config::EngineKind::Micro { models, .. } = &e.kind
        && models.join("okay_nabu.json").exists()
    {
        return models.clone();
    }
    engines_dir().join("wake")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::engines::init_tls();
    let models = models_dir(&args);
    let word = args.word;
    println!(
        "wake word models: {} (word {})",
        models.display(),
        word.name
    );
    let engine = micro(&models, word.name);
    let phrases = word.phrases();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // Detection rate.
    let mut cases: Vec<(String, Vec<i16>, usize)> = Vec::new();
    let piper_phrases: Vec<(String, Vec<i16>)> = rt.block_on(async {
        let mut v = Vec::new();
        for p in &phrases {
            if let Some(pcm) = piper(p).await {
                v.push((format!("piper {p:?}"), pcm));
            }
        }
        v
    });
    let speeds = [130, 165, 200];
    let levels = [0.0f32, -6.0, -12.0];
    let snrs = [None, Some(20.0f32), Some(10.0)];
    // Every espeak-ng voice at every speed saying every phrase, and Piper's
    // voice; levels and noise spread over them.
    let mut grid: Vec<(String, Vec<i16>)> = Vec::new();
    for v in VOICES {
        for s in speeds {
            for p in &phrases {
                grid.push((format!("{v} {s} wpm {p:?}"), espeak(p, v, s)?));
            }
        }
    }
    for (i, (name, pcm)) in piper_phrases.iter().enumerate() {
        grid.insert((i * 9 + 4).min(grid.len()), (name.clone(), pcm.clone()));
    }
    for (i, (name, speech)) in grid.into_iter().enumerate() {
        if cases.len() >= args.utterances {
            break;
        }
        let gain = levels[i % 3];
        let snr = snrs[(i / 3 + i / 9) % 3];
        // Each phrase its own noise: the same for it whatever came before.
        let mut noise = Noise::new(7 + i as u64 * 2);
        let pcm = scene(&speech, gain, snr, 16_000, 24_000, &mut noise);
        // Where the voice ends (espeak-ng adds silence after it).
        let voiced = speech
            .chunks(160)
            .rposition(|c| rms_db(c) > -45.0)
            .map_or(speech.len(), |k| (k + 1) * 160);
        cases.push((
            format!(
                "{name}, {gain:+.0} dB, {}",
                snr.map(|s| format!("noise at SNR {s:.0} dB"))
                    .unwrap_or("clean".into())
            ),
            pcm,
            16_000 + voiced,
        ));
    }
    if cases.is_empty() {
        return rest(&args, &rt, &engine, &models, &[]);
    }
    let mut hits = 0;
    let mut misses = Vec::new();
    let mut lags = Vec::new();
    // Each phrase's best score, for the threshold sweep.
    let whole = micro_at(&models, word.name, Some(2.0));
    let alone = micro_at(&models, word.name, None);
    let mut alone_hits = 0;
    let mut bests = Vec::new();
    for (name, pcm, voiced_end) in &cases {
        bests.push(detect(&whole, pcm)?.1);
        alone_hits += usize::from(!detect(&alone, pcm)?.0.is_empty());
        let (d, best) = detect(&engine, pcm)?;
        let speech_end = *voiced_end as u64;
        match d.first() {
            Some(&end) => {
                hits += 1;
                if name.contains(&format!("{:?}", phrases[0])) {
                    lags.push(Duration::from_millis(end.saturating_sub(speech_end) / 16));
                }
            }
            None => misses.push((name.clone(), best)),
        }
    }
    let voices = VOICES.len() + usize::from(!piper_phrases.is_empty());
    let mut by_voice: Vec<(String, usize, usize)> = Vec::new();
    for (name, ..) in &cases {
        let v = name.split(' ').next().unwrap_or_default().to_string();
        let missed = misses.iter().any(|(m, _)| m == name);
        match by_voice.iter_mut().find(|b| b.0 == v) {
            Some(b) => {
                b.1 += usize::from(!missed);
                b.2 += 1;
            }
            None => by_voice.push((v, usize::from(!missed), 1)),
        }
    }
    println!(
        "{:<34} {hits}/{} = {:.1} %   ({voices} voices, 3 speeds, 3 levels, clean / SNR 20 / 10 dB)   goal >= 95 %",
        "detection rate",
        cases.len(),
        hits as f64 * 100.0 / cases.len() as f64
    );
    let per: Vec<String> = by_voice
        .iter()
        .map(|(v, h, n)| format!("{v} {h}/{n}"))
        .collect();
    println!("    per voice: {}", per.join(", "));
    for (m, best) in misses.iter().take(12) {
        println!("    missed: {m} (best score {best:.3})");
    }
    let second = match second_opinion(&models) {
        Some(d) => format!(
            "the rate above is with openWakeWord's second opinion ({})",
            d.display()
        ),
        None => {
            "no second opinion: openWakeWord's models are not installed (scripts/setup-wake.sh)"
                .into()
        }
    };
    println!(
        "    microWakeWord alone: {alone_hits}/{} = {:.1} %   ({second})",
        cases.len(),
        alone_hits as f64 * 100.0 / cases.len() as f64
    );
    if let Err(e) = rt.block_on(peer_detection(&args, &cases)) {
        println!("wyoming-openwakeword on the same phrases: skipped ({e:#})");
    }
    println!(
        "{:<34} p50 {}  p99 {}   (the model's own lag behind the phrase's end)",
        "in-model detection lag (bare phrase)",
        ms(Percentiles::new(lags.clone()).p(50.0)),
        ms(Percentiles::new(lags).p(99.0))
    );

    rest(&args, &rt, &engine, &models, &bests)
}

/// False accepts, then the virtual room.
fn rest(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    engine: &MicroEngine,
    models: &Path,
    bests: &[f32],
) -> anyhow::Result<()> {
    let speeds = [130, 165, 200];
    let levels = [0.0f32, -6.0, -12.0];
    // False accepts on an hour of speech without the wake word.
    if args.hours > 0.0 {
        let texts = fortunes(args.word.keyword)?;
        let want = (args.hours * 3600.0 * 16_000.0) as u64;
        let mut s = engine.open_now()?;
        // The same audio through a twin that never fires: the whole score
        // stream, (score, position), for the threshold sweep.
        let mut twin = micro_at(models, args.word.name, Some(2.0)).open_now()?;
        let mut stream: Vec<(f32, u64)> = Vec::new();
        let mut twin_out = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0u64;
        let mut accepts = Vec::new();
        let mut highest = 0.0f32;
        let mut k = 0usize;
        let t0 = Instant::now();
        let mut noise = Noise::new(11);
        while fed < want {
            // A few fortunes at a time, by one voice at one speed.
            let mut text = String::new();
            while text.len() < 1500 {
                text.push_str(&texts[k % texts.len()]);
                text.push(' ');
                k += 1;
            }
            let v = VOICES[k % VOICES.len()];
            let wpm = speeds[k % speeds.len()];
            let speech = espeak(&text, v, wpm)?;
            let pcm = scene(&speech, levels[k % 2], Some(15.0), 8_000, 8_000, &mut noise);
            for f in pcm.chunks(crate::audio::FRAME) {
                twin.push_now(f, &mut twin_out)
                    .map_err(|e| anyhow::anyhow!(e))?;
                for e in twin_out.drain(..) {
                    if let WakeEvent::Score { score, .. } = e {
                        stream.push((score, fed + f.len() as u64));
                    }
                }
                s.push_now(f, &mut out).map_err(|e| anyhow::anyhow!(e))?;
                for e in out.drain(..) {
                    if let WakeEvent::Score { score, .. } = e {
                        highest = highest.max(score);
                    }
                    if let WakeEvent::Detected { score, .. } = e {
                        accepts.push((
                            fed as f64 / 16_000.0,
                            score,
                            text.chars().take(60).collect::<String>(),
                        ));
                    }
                }
                fed += f.len() as u64;
            }
        }
        let hours = fed as f64 / 16_000.0 / 3600.0;
        let cutoff = s.thresholds().first().map_or(0.0, |t| t.1);
        let asked = s.second_opinions_asked();
        println!(
            "{:<34} {} in {:.2} h = {:.2} per hour   ({} fortunes, {} voices, noise at SNR 15 dB; {:.0} s to run)   goal <= 0.5 / h",
            "false accepts",
            accepts.len(),
            hours,
            accepts.len() as f64 / hours,
            k.min(texts.len()),
            VOICES.len(),
            t0.elapsed().as_secs_f64()
        );
        println!(
            "    highest score without the wake word: {highest:.3} (cutoff {:.3})",
            cutoff
        );
        if !s.second_opinions().is_empty() {
            println!(
                "    the second opinion was asked {asked} times = {:.1} per hour (score >= {}), and runs only then",
                asked as f64 / hours,
                crate::wake::micro::GATE
            );
        }
        for (at, score, text) in accepts.iter().take(10) {
            println!("    at {at:.0} s, score {score:.2}: {text:?}…");
        }
        sweep(bests, &stream, hours, cutoff);
    }

    if args.latency_trials == 0 {
        return Ok(());
    }
    match Room::start() {
        Ok(room) => {
            let r = rt.block_on(in_the_room(args, &room, models));
            if let Err(e) = r {
                println!("virtual room: stopped ({e:#})");
            }
        }
        Err(e) => println!("virtual room: skipped ({e:#})"),
    }
    Ok(())
}

/// The Python of wyoming-openwakeword's venv.
fn oww_python(args: &Args) -> PathBuf {
    args.oww_python
        .clone()
        .unwrap_or_else(|| engines_dir().join("venv-oww/bin/python"))
}

fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// wyoming-openwakeword on `port` with its `model` (e.g. `ok_nabu`).
fn spawn_oww(py: &Path, port: u16, model: &str) -> std::io::Result<Child> {
    Command::new(py)
        .args([
            "-m",
            "wyoming_openwakeword",
            "--uri",
            &format!("tcp://127.0.0.1:{port}"),
            "--preload-model",
            model,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// The same phrases through wyoming-openwakeword (its own model of the word
/// and threshold), one connection each, for its detection rate beside ours.
async fn peer_detection(args: &Args, cases: &[(String, Vec<i16>, usize)]) -> anyhow::Result<()> {
    use crate::wake::WakeEngine;
    let py = oww_python(args);
    anyhow::ensure!(py.exists(), "not installed at {}", py.display());
    let port = free_port()?;
    let mut oww = spawn_oww(&py, port, args.word.oww)?;
    let r = async {
        let engine = crate::wake::wyoming::WyomingWake::new(
            "oww",
            "127.0.0.1",
            port,
            Duration::from_secs(20),
            vec![Word {
                name: args.word.name.into(),
                threshold: None,
                trigger_level: 1,
                refractory: Duration::from_secs(2),
            }],
        );
        let mut ready = false;
        for _ in 0..60 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::ensure!(ready, "the service did not start");
        let mut by_voice: Vec<(String, usize, usize)> = Vec::new();
        let mut hits = 0;
        let mut out = Vec::new();
        for (name, pcm, _) in cases {
            let mut s = engine.open().await?;
            let mut heard = false;
            // The phrase as fast as it takes it, then 1.5 s of silence in
            // real time for its verdict.
            for f in pcm.chunks(crate::audio::FRAME) {
                s.push(f, &mut out).await?;
            }
            let quiet = [0i16; crate::audio::FRAME];
            for _ in 0..75 {
                s.push(&quiet, &mut out).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for e in out.drain(..) {
                heard |= matches!(e, WakeEvent::Detected { .. });
            }
            hits += usize::from(heard);
            let v = name.split(' ').next().unwrap_or_default().to_string();
            match by_voice.iter_mut().find(|b| b.0 == v) {
                Some(b) => {
                    b.1 += usize::from(heard);
                    b.2 += 1;
                }
                None => by_voice.push((v, usize::from(heard), 1)),
            }
        }
        println!(
            "{:<34} {hits}/{} = {:.1} %   (the same phrases; its {} model and threshold)",
            "    wyoming-openwakeword",
            cases.len(),
            hits as f64 * 100.0 / cases.len().max(1) as f64,
            args.word.oww
        );
        let per: Vec<String> = by_voice
            .iter()
            .map(|(v, h, n)| format!("{v} {h}/{n}"))
            .collect();
        println!("    its per voice: {}", per.join(", "));
        Ok(())
    }
    .await;
    let _ = oww.kill();
    let _ = oww.wait();
    r
}

/// Detection rate and false accepts per hour at other thresholds, from the
/// phrases' best scores and the hour's score stream: what `threshold` in
/// `[wake.words.NAME]` would trade (trigger level 1, refractory 2 s), for
/// microWakeWord alone.
fn sweep(bests: &[f32], stream: &[(f32, u64)], hours: f64, cutoff: f32) {
    use crate::wake::trigger::Trigger;
    if bests.is_empty() || hours <= 0.0 {
        return;
    }
    println!("    microWakeWord alone at other thresholds:");
    println!("    threshold   detection        false accepts");
    for t in [0.5f32, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95] {
        let hits = bests.iter().filter(|&&b| b >= t).count();
        let mut trigger = Trigger::new(t, 1, 32_000);
        let fa = stream
            .iter()
            .filter(|(s, at)| trigger.score(*s, *at))
            .count();
        println!(
            "    {t:>9.2}   {:>5.1} % ({hits:>2}/{})   {:>5.2} / h{}",
            hits as f64 * 100.0 / bests.len() as f64,
            bests.len(),
            fa as f64 / hours,
            if (t - cutoff).abs() < 1e-3 {
                "   (the model's cutoff)"
            } else {
                ""
            }
        );
    }
}

/// A private PulseAudio with `mic` and `spk` null sinks and `both` (a
/// combined sink playing into the two at once).
struct Room {
    runtime: tempfile::TempDir,
}

const PULSE_PA: &str = include_str!("../../tests/alsa/pulse-null-sinks.pa");

impl Room {
    fn start() -> anyhow::Result<Room> {
        let runtime = tempfile::Builder::new().prefix("pichat-room-").tempdir()?;
        let pa = runtime.path().join("room.pa");
        std::fs::write(&pa, PULSE_PA)?;
        let st = Command::new("pulseaudio")
            .args([
                "-n",
                "-F",
                pa.to_str().unwrap_or_default(),
                "--daemonize=yes",
                "--exit-idle-time=-1",
            ])
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("HOME", runtime.path())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| {
                anyhow::anyhow!("pulseaudio: {e} (apt-get install pulseaudio pulseaudio-utils)")
            })?;
        anyhow::ensure!(st.success(), "pulseaudio did not start");
        let room = Room { runtime };
        for _ in 0..100 {
            if room.pactl(&["info"]).is_ok() {
                room.pactl(&[
                    "load-module",
                    "module-combine-sink",
                    "sink_name=both",
                    "slaves=mic,spk",
                    "rate=16000",
                    "channels=1",
                ])?;
                return Ok(room);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("pulseaudio did not answer")
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("HOME", self.runtime.path());
        c
    }

    fn pactl(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.cmd("pactl").args(args).output()?;
        anyhow::ensure!(
            o.status.success(),
            "pactl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Plays 16 kHz mono into `sink` in real time (returns when done).
    fn play(&self, sink: &str, pcm: &[i16]) -> anyhow::Result<()> {
        let mut p = self
            .cmd("pacat")
            .args([
                "--latency-msec=20",
                "-p",
                "--raw",
                "--format=s16le",
                "--rate=16000",
                "--channels=1",
                "-d",
                sink,
            ])
            .stdin(Stdio::piped())
            .spawn()?;
        let raw: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        if let Some(mut i) = p.stdin.take() {
            i.write_all(&raw)?;
        }
        p.wait()?;
        Ok(())
    }

    /// Records `source` into a file until the returned child is killed.
    fn record(&self, source: &str, file: &Path) -> anyhow::Result<Child> {
        Ok(self
            .cmd("parec")
            .args([
                "--latency-msec=20",
                "--raw",
                "--format=s16le",
                "--rate=16000",
                "--channels=1",
                "-d",
                source,
            ])
            .stdout(std::fs::File::create(file)?)
            .spawn()?)
    }

    /// What is played on `spk` reaches `mic` at `percent` of its level;
    /// returns the loopback's module (to unload it).
    fn leak(&self, percent: u32) -> anyhow::Result<String> {
        let module = self.pactl(&[
            "load-module",
            "module-loopback",
            "source=spk.monitor",
            "sink=mic",
            "latency_msec=20",
        ])?;
        let module = module.trim().to_string();
        for _ in 0..100 {
            let list = self.pactl(&["list", "sink-inputs"])?;
            for block in list.split("Sink Input #").skip(1) {
                if block.contains(&format!("Owner Module: {module}")) {
                    let idx = block.lines().next().unwrap_or_default().trim().to_string();
                    self.pactl(&["set-sink-input-volume", &idx, &format!("{percent}%")])?;
                    return Ok(module);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("no loopback stream appeared")
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let _ = self.pactl(&["exit"]);
    }
}

/// A `pichat run` in the room, its log read on a thread.
struct Daemon {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
    db: PathBuf,
}

impl Daemon {
    fn start(room: &Room, config: &str) -> anyhow::Result<Daemon> {
        Self::start_with(room, config, "pulse")
    }

    /// With `input` as the microphone (`pulse`, or `wav:PATH` paced in real time).
    fn start_with(room: &Room, config: &str, input: &str) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("h.db");
        let cfg = dir.path().join("pichat.toml");
        std::fs::write(
            &cfg,
            format!(
                "[history]\npath = \"{}\"\n[audio]\ninput = \"{input}\"\noutput = \"pulse\"\nvolume = 1.0\n[ptt]\nsource = \"none\"\nsocket = \"{}\"\n{config}",
                db.display(),
                dir.path().join("ctl.sock").display()
            ),
        )?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--config", cfg.to_str().unwrap_or_default(), "run"])
            .env("XDG_RUNTIME_DIR", room.runtime.path())
            .env("RUST_LOG", "pichat=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let err = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut d = Daemon {
            child,
            lines,
            _dir: dir,
            db,
        };
        d.wait_for("wake word: listening with", Duration::from_secs(30))
            .ok_or_else(|| anyhow::anyhow!("the daemon did not start listening"))?;
        std::thread::sleep(Duration::from_millis(800));
        Ok(d)
    }

    fn wait_for(&mut self, needle: &str, within: Duration) -> Option<String> {
        let end = Instant::now() + within;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Lines logged so far (without waiting).
    fn drain(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn questions(&self) -> Vec<String> {
        let Ok(store) =
            crate::history::Store::open(&self.db, &crate::history::OpenOptions::default())
        else {
            return Vec::new();
        };
        let q = crate::history::ListQuery {
            filter: crate::history::ArchivedFilter::All,
            limit: 1000,
            offset: 0,
            before: None,
        };
        let mut out = Vec::new();
        for c in store
            .list_conversations(&q)
            .map(|p| p.conversations)
            .unwrap_or_default()
        {
            for m in store.messages(&c.id, 1000, None).unwrap_or_default() {
                if m.role == crate::history::Role::User {
                    out.push(m.content);
                }
            }
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

const LOCAL: &str = r#"[stt]
engines = ["whisper"]
[tts]
engines = ["piper"]
[llm]
engines = ["home"]
[engines.home]
kind = "openai"
url = "http://127.0.0.1:8081/v1"
model = "smollm2"
temperature = 0.0
max_tokens = 32
timeout_ms = 60000
"#;

/// Whisper and Piper, with an LLM on `port` that speaks the real protocol
/// and says a known text.
fn scripted_llm(port: u16) -> String {
    format!(
        "[stt]\nengines = [\"whisper\"]\n[tts]\nengines = [\"piper\"]\n[llm]\nengines = [\"scripted\"]\n[engines.scripted]\nkind = \"openai\"\nurl = \"http://127.0.0.1:{port}/v1\"\nmodel = \"scripted\"\n"
    )
}

fn wake_section(models: &Path, word: &str) -> String {
    format!(
        "[wake]\nengines = [\"micro\"]\n[wake.words.{word}]\n[engines.micro]\nkind = \"micro\"\nmodels = \"{}\"\n",
        models.display()
    )
}

fn question() -> anyhow::Result<Vec<i16>> {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/question.wav"
    ));
    let clip = crate::audio::wav::read(p)
        .or_else(|_| crate::audio::wav::read(Path::new("tests/data/question.wav")))?;
    Ok(crate::audio::wav::frames_of(&clip)?.concat())
}

fn read_raw(p: &Path) -> Vec<i16> {
    std::fs::read(p)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

async fn in_the_room(args: &Args, room: &Room, models: &Path) -> anyhow::Result<()> {
    let wake = wake_section(models, args.word.name);
    let wake_phrase = args.word.phrase();
    // Latency: each wake phrase (clean, several voices) to microphone and
    // speaker at once; the earcon follows on the speaker. The microphone
    // through cpal on ALSA's pulse plugin, and through PulseAudio's own API.
    for (label, input) in [
        ("wake phrase end -> listening earcon", "pulse"),
        ("    the same, the mic as pulse:", "pulse:"),
    ] {
        let cfg = format!(
            "[listen]\nmode = \"wake\"\nno_speech_timeout_s = 1.0\necho_cancel = false\n{wake}"
        );
        let _d = tokio::task::block_in_place(|| Daemon::start_with(room, &cfg, input))?;
        // The earcon reaches the microphone's recording through the room's
        // leak, so phrase and earcon are in one recording (the leak's own
        // latency, some tens of ms, is counted in: an upper bound).
        let leak = room.leak(100)?;
        let dir = tempfile::tempdir()?;
        let rec_path = dir.path().join("mic.raw");
        let mut rec = room.record("mic.monitor", &rec_path)?;
        std::thread::sleep(Duration::from_millis(300));
        let mut ends = Vec::new();
        let mut stream: Vec<i16> = vec![0; 8000];
        for i in 0..args.latency_trials {
            let v = VOICES[i % VOICES.len()];
            let speech = espeak(&wake_phrase, v, [140, 170][i % 2])?;
            stream.extend_from_slice(&speech);
            ends.push(stream.len());
            // Silence: the earcon, the no-speech timeout, its earcon.
            stream.extend(std::iter::repeat_n(0, 16_000 * 3));
        }
        tokio::task::block_in_place(|| room.play("mic", &stream))?;
        // The leak's own delay, in the same recording: clicks played to
        // microphone and speaker at once arrive twice, direct and leaked.
        let mut clicks = vec![0i16; 4800];
        for _ in 0..CLICKS {
            clicks.extend((0..160).map(|i| {
                (0.5 * 32767.0 * (2.0 * std::f32::consts::PI * 2000.0 * i as f32 / 16_000.0).sin())
                    as i16
            }));
            clicks.extend(std::iter::repeat_n(0, 7840));
        }
        tokio::task::block_in_place(|| room.play("both", &clicks))?;
        std::thread::sleep(Duration::from_millis(500));
        let _ = rec.kill();
        let _ = rec.wait();
        room.pactl(&["unload-module", &leak])?;
        let rec = read_raw(&rec_path);
        let tail = rec.len().saturating_sub(clicks.len() + 16_000);
        let leaked = leak_delays(&rec[tail..]);
        // In the recording: each listening earcon (a 660 Hz tone), and
        // the end of the voice before it.
        // The earcon is 70 ms at 660 Hz, 20 ms of silence, 90 ms at 880 Hz:
        // five blocks of the first tone and an 880 Hz block after them; no
        // voice holds a pure tone that long.
        let blocks: Vec<(f32, f32, f32)> = rec
            .chunks(160)
            .map(|c| (block_db(c), tone_ratio(c, 660.0), tone_ratio(c, 880.0)))
            .collect();
        let is_earcon = |k: usize| {
            k + 16 < blocks.len()
                && (k..k + 5).all(|i| blocks[i].1 > 0.7 && blocks[i].0 > -40.0)
                && (k + 7..k + 16).any(|i| blocks[i].2 > 0.7)
        };
        let mut lat = Vec::new();
        let mut k = 0;
        while k < blocks.len() {
            if is_earcon(k) {
                // The earcon's first, partial block; then back over the
                // quiet to the last voiced block of the phrase.
                let mut onset = k;
                while onset > 0 && blocks[onset - 1].0 > -45.0 && blocks[onset - 1].1 > 0.2 {
                    onset -= 1;
                }
                let mut j = onset;
                while j > 0 && blocks[j - 1].0 < -45.0 {
                    j -= 1;
                }
                if j > 0 && onset - j < 200 {
                    lat.push(Duration::from_millis((onset - j) as u64 * 10));
                }
                // Past this earcon and the error earcon after the timeout.
                k += 250;
            } else {
                k += 1;
            }
        }
        let missed = ends.len().saturating_sub(lat.len());
        let p = Percentiles::new(lat.clone());
        println!(
            "{:<34} p50 {}  p99 {}  ({} of {} phrases woke it in real time)   goal p50 <= 200 ms",
            label,
            ms(p.p(50.0)),
            ms(p.p(99.0)),
            lat.len(),
            lat.len() + missed
        );
        if !leaked.is_empty() {
            let l = Percentiles::new(leaked.clone()).p(50.0);
            println!(
                "{:<34} p50 {} ({} of {CLICKS} clicks): the daemon's own p50 {}",
                "    of which the room's leak",
                ms(l),
                leaked.len(),
                ms(p.p(50.0).saturating_sub(l))
            );
        }
    }

    // End of speech -> first reply audio on the real local engines, with
    // drafts (the default) and without, side by side.
    for (label, listen) in [
        ("end of speech -> first reply audio", ""),
        ("    the same without drafts", "draft_ms = 0\n"),
    ] {
        if args.turns == 0 {
            break;
        }
        let cfg = format!("[listen]\nmode = \"wake\"\n{listen}{wake}{LOCAL}");
        let mut d = tokio::task::block_in_place(|| Daemon::start(room, &cfg))?;
        let q = question()?;
        let phrase = espeak(&wake_phrase, "en-us", 150)?;
        let mut figures = Vec::new();
        let mut parts: [Vec<Duration>; 3] = Default::default();
        let mut drafted = 0;
        for i in 0..=args.turns {
            let mut utt = phrase.clone();
            utt.extend(std::iter::repeat_n(0, 6400));
            utt.extend_from_slice(&q);
            utt.extend(std::iter::repeat_n(0, 16_000));
            tokio::task::block_in_place(|| room.play("mic", &utt))?;
            let line =
                tokio::task::block_in_place(|| d.wait_for("turn ", Duration::from_secs(120)));
            let Some(line) = line else { continue };
            if i == 0 {
                continue; // the first turn warms the models up
            }
            let field = |name: &str| {
                line.split(&format!("{name}="))
                    .nth(1)
                    .and_then(|r| r.split("ms").next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_millis)
            };
            if let Some(v) = field("speech_end_to_audio") {
                figures.push(v);
                drafted += usize::from(line.contains("draft=used"));
                for (i, n) in ["stt", "llm_first_token", "first_audio"].iter().enumerate() {
                    parts[i].push(field(n).unwrap_or_default());
                }
            }
            std::thread::sleep(Duration::from_millis(1500));
        }
        let p = Percentiles::new(figures.clone());
        println!(
            "{label:<34} p50 {}  p90 {}  (of {} turns, {drafted} answered from a draft; VAD's 700 ms of silence included)   goal <= silence_ms + 1000 ms",
            ms(p.p(50.0)),
            ms(p.p(90.0)),
            figures.len()
        );
        let med = |v: &Vec<Duration>| ms(Percentiles::new(v.clone()).p(50.0));
        println!(
            "    p50 of its parts: speech-to-text after the silence {}, LLM first token {}, first sentence to audio {}",
            med(&parts[0]),
            med(&parts[1]),
            med(&parts[2])
        );
    }

    // Its own voice.
    if args.replies > 0 || args.barge_ins > 0 {
        let _leak = room.leak(60)?;
        let w = args.word.said;
        let says =
            format!("{w}. My name is {w}. You can call me {w} at any time, and {w} will answer.");
        let fake = super::fakes::llm(super::fakes::LlmMode::Tokens {
            tokens: says.split_inclusive(' ').map(str::to_string).collect(),
            gap: Duration::from_millis(5),
        })
        .await;
        let llm = scripted_llm(fake.port);
        let cfg = format!("[listen]\nmode = \"wake\"\nno_speech_timeout_s = 2.0\n{wake}{llm}");
        let mut d = tokio::task::block_in_place(|| Daemon::start(room, &cfg))?;
        let q = question()?;
        let phrase = espeak(&wake_phrase, "en-us", 150)?;
        let (mut answered, mut woke, mut ignored) = (0, 0, 0);
        for _ in 0..args.replies {
            let mut utt = phrase.clone();
            utt.extend(std::iter::repeat_n(0, 6400));
            utt.extend_from_slice(&q);
            utt.extend(std::iter::repeat_n(0, 16_000));
            tokio::task::block_in_place(|| room.play("mic", &utt))?;
            let line =
                tokio::task::block_in_place(|| d.wait_for("turn ", Duration::from_secs(120)))
                    .unwrap_or_default();
            if line.contains("turn answered") {
                answered += 1;
            } else if line.contains("interrupted") {
                woke += 1;
                // It listens after the self-inflicted barge-in: let it time out.
                tokio::task::block_in_place(|| d.wait_for("turn ", Duration::from_secs(30)));
            }
            std::thread::sleep(Duration::from_millis(2500));
            for l in d.drain() {
                if l.contains("speaker's own voice: ignored") {
                    ignored += 1;
                }
                if l.contains("turn ") && !l.contains("turn answered") {
                    woke += 1;
                }
            }
        }
        let own_words = ["my name is", "call me", "will answer"];
        let self_transcripts = d
            .questions()
            .iter()
            .filter(|q| own_words.iter().any(|w| q.to_lowercase().contains(w)))
            .count();
        if args.replies > 0 {
            println!(
                "{:<34} {woke} triggers, {self_transcripts} self-transcripts in {} replies saying the wake word 4 times ({answered} answered in full; {ignored} detections in its own voice ignored)   goal 0 and 0",
                "its own voice (speaker leaks 60 %)", args.replies
            );
        }
        drop(d);
        drop(fake);

        // The user's wake word over a reply.
        if args.barge_ins > 0 {
            let story = "Once upon a time there was a little robot who lived in a kitchen. Every morning it made coffee for the family and read them the news. One day the family went away on a long holiday by the sea. The robot waited and waited, and it cleaned every corner of the house. When they came back, the robot had learned to bake bread. Everyone was happy, and they ate the bread together in the garden.";
            let fake = super::fakes::llm(super::fakes::LlmMode::Tokens {
                tokens: story.split_inclusive(' ').map(str::to_string).collect(),
                gap: Duration::from_millis(5),
            })
            .await;
            let llm = scripted_llm(fake.port);
            let cfg = format!("[listen]\nmode = \"wake\"\nno_speech_timeout_s = 1.5\n{wake}{llm}");
            let mut d = tokio::task::block_in_place(|| Daemon::start(room, &cfg))?;
            let mut barged = 0;
            let mut missed_by = Vec::new();
            for i in 0..args.barge_ins {
                let mut utt = phrase.clone();
                utt.extend(std::iter::repeat_n(0, 6400));
                utt.extend_from_slice(&q);
                utt.extend(std::iter::repeat_n(0, 16_000));
                tokio::task::block_in_place(|| room.play("mic", &utt))?;
                // Into the reply, then the user's wake word over it.
                let wait = 2500 + (i as u64 % 5) * 700;
                std::thread::sleep(Duration::from_millis(wait));
                let user = espeak(&wake_phrase, VOICES[i % VOICES.len()], 150)?;
                tokio::task::block_in_place(|| room.play("mic", &user))?;
                let line =
                    tokio::task::block_in_place(|| d.wait_for("turn ", Duration::from_secs(40)))
                        .unwrap_or_default();
                if line.contains("interrupted") {
                    barged += 1;
                    tokio::task::block_in_place(|| d.wait_for("turn ", Duration::from_secs(10)));
                } else {
                    missed_by.push(VOICES[i % VOICES.len()]);
                }
                std::thread::sleep(Duration::from_millis(1000));
                d.drain();
            }
            println!(
                "{:<34} {barged}/{} = {:.0} %   goal >= 90 %   (missed, by voice: {missed_by:?})",
                "user's wake word over a reply",
                args.barge_ins,
                barged as f64 * 100.0 / args.barge_ins.max(1) as f64
            );
            drop(fake);
        }
    }

    // CPU and memory while armed and waiting, beside wyoming-openwakeword.
    if args.cpu_seconds > 0 {
        cpu(args, room, models).await?;
    }
    Ok(())
}

async fn cpu(args: &Args, room: &Room, models: &Path) -> anyhow::Result<()> {
    // The same audio for everyone: speech without the wake word, over noise.
    let texts = fortunes(args.word.keyword)?;
    let mut audio = Vec::new();
    let mut noise = Noise::new(3);
    let mut k = 0;
    while audio.len() < (args.cpu_seconds as usize + 15) * 16_000 {
        let s = espeak(&texts[k % texts.len()], VOICES[k % VOICES.len()], 160)?;
        audio.extend(scene(&s, -6.0, Some(20.0), 4000, 4000, &mut noise));
        k += 1;
    }
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join("speech.wav");
    crate::audio::wav::write(&wav, &audio, 16_000)?;
    stages(models, args.word.name, &audio)?;
    println!(
        "armed and waiting, a WAV file as the microphone (paced in real time): the pipeline's own cost"
    );
    cpu_round(args, room, models, &format!("wav:{}", wav.display()), None).await?;
    println!(
        "armed and waiting, the virtual room's PulseAudio microphone through PulseAudio's own API (pulse:)"
    );
    cpu_round(args, room, models, "pulse:", Some(&audio)).await?;
    println!("armed and waiting, the same microphone through cpal and ALSA's pulse plugin (pulse)");
    cpu_round(args, room, models, "pulse", Some(&audio)).await
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The armed loop's stages alone, on `audio` in 20 ms frames as fast as
/// they run: % of a core at real time.
fn stages(models: &Path, word: &str, audio: &[i16]) -> anyhow::Result<()> {
    let secs = audio.len() as f64 / 16_000.0;
    let pct = |d: Duration| d.as_secs_f64() / secs * 100.0;
    let frames = || audio.chunks_exact(crate::audio::FRAME);
    let t = thread_cpu();
    let mut frontend = crate::wake::frontend::Frontend::new();
    let mut n = 0usize;
    for f in frames() {
        frontend.push(f, |_| n += 1);
    }
    let front = thread_cpu() - t;
    let mut s = micro(models, word).open_now()?;
    let mut out = Vec::new();
    let t = thread_cpu();
    for f in frames() {
        s.push_now(f, &mut out).map_err(|e| anyhow::anyhow!(e))?;
        out.clear();
    }
    let engine = thread_cpu() - t;
    let mut vad = crate::voice::ear::Vad::new(0.5);
    let t = thread_cpu();
    for f in frames() {
        std::hint::black_box(vad.frame(f));
    }
    let vad = thread_cpu() - t;
    println!(
        "{:<34} {:.3} % of a core ({n} feature steps in {secs:.0} s of audio: frontend {:.3} %, the model {:.3} %)",
        "in-process engine alone",
        pct(engine),
        pct(front),
        pct(engine.saturating_sub(front)),
    );
    println!(
        "{:<34} {:.3} % of a core (earshot, every frame)",
        "voice activity alone",
        pct(vad)
    );
    if let Some(dir) = second_opinion(models) {
        use crate::wake::oww;
        let lib = crate::wake::tflite::Library::load(&models.join("libtensorflowlite_c.so"))?;
        let mut features = oww::Features::load(&lib, &dir)?;
        let mut classifier = oww::Classifier::load(&lib, &oww::classifier_path(&dir, word))?;
        let warm = &audio[..oww::WARM_UP.min(audio.len())];
        let mut runs = Vec::new();
        for _ in 0..5 {
            features.reset(0);
            let t = thread_cpu();
            features.push(warm, |w, _| {
                std::hint::black_box(classifier.probability(w).ok());
            })?;
            runs.push(thread_cpu() - t);
        }
        features.reset(0);
        let t = thread_cpu();
        for f in frames() {
            features.push(f, |w, _| {
                std::hint::black_box(classifier.probability(w).ok());
            })?;
        }
        let all = thread_cpu() - t;
        println!(
            "{:<34} {} to start on the last 2 s, then {:.3} % of a core while it listens (only after a score of {} or more)",
            "    openWakeWord's second opinion",
            ms(Percentiles::new(runs).p(50.0)),
            pct(all),
            crate::wake::micro::GATE
        );
    }
    Ok(())
}

async fn cpu_round(
    args: &Args,
    room: &Room,
    models: &Path,
    input: &str,
    play: Option<&[i16]>,
) -> anyhow::Result<()> {
    let py = oww_python(args);
    let port = free_port()?;
    let mut oww = if py.exists() {
        Some(spawn_oww(&py, port, args.word.oww)?)
    } else {
        println!(
            "wyoming-openwakeword: not installed at {} (scripts/setup-local-engines.sh)",
            py.display()
        );
        None
    };
    // Both daemons listen to the same microphone.
    let ours = tokio::task::block_in_place(|| {
        Daemon::start_with(
            room,
            &format!(
                "[listen]\nmode = \"wake\"\n{}",
                wake_section(models, args.word.name)
            ),
            input,
        )
    })?;
    let theirs = match &oww {
        Some(_) => {
            let cfg = format!(
                "[listen]\nmode = \"wake\"\necho_cancel = false\n[wake]\nengines = [\"oww\"]\n[engines.oww]\nkind = \"wyoming\"\nurl = \"tcp://127.0.0.1:{port}\"\ntimeout_ms = 20000\n"
            );
            let mut found = None;
            for _ in 0..40 {
                if let Ok(d) = tokio::task::block_in_place(|| Daemon::start_with(room, &cfg, input))
                {
                    found = Some(d);
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            found
        }
        None => None,
    };
    let mut player = match play {
        Some(audio) => {
            let mut c = room.cmd("pacat");
            c.args([
                "--latency-msec=20",
                "-p",
                "--raw",
                "--format=s16le",
                "--rate=16000",
                "--channels=1",
                "-d",
                "mic",
            ])
            .stdin(Stdio::piped());
            let mut child = c.spawn()?;
            let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("pacat"))?;
            let raw: Vec<u8> = audio.iter().flat_map(|s| s.to_le_bytes()).collect();
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&raw);
            });
            Some((child, writer))
        }
        None => None,
    };
    std::thread::sleep(Duration::from_secs(2));
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let pids: Vec<(String, u32)> = [
        Some((
            "pichat run, micro (in-process)".to_string(),
            ours.child.id(),
        )),
        theirs
            .as_ref()
            .map(|d| ("pichat run, Wyoming client".to_string(), d.child.id())),
        oww.as_ref()
            .map(|c| ("wyoming-openwakeword".to_string(), c.id())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let t0 = Instant::now();
    let c0: Vec<u64> = pids
        .iter()
        .map(|(_, p)| super::audio::proc_cpu_ticks(*p).unwrap_or(0))
        .collect();
    std::thread::sleep(Duration::from_secs(args.cpu_seconds));
    let secs = t0.elapsed().as_secs_f64();
    let mut cpu = Vec::new();
    for ((name, pid), c0) in pids.iter().zip(c0) {
        let c1 = super::audio::proc_cpu_ticks(*pid).unwrap_or(0);
        let pct = (c1.saturating_sub(c0)) as f64 / hz / secs * 100.0;
        let rss = super::audio::proc_rss_kib(*pid).unwrap_or(0) as f64 / 1024.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        cpu.push(pct);
        println!(
            "{:<34} CPU {pct:.2} % of a core, RSS {rss:.1} MB (anonymous {:.1}, files {:.1}) over {secs:.0} s of speech and noise",
            name,
            field("RssAnon:"),
            field("RssFile:")
        );
    }
    if cpu.len() == 3 && cpu[2] > 0.0 {
        println!(
            "{:<34} {:.2}   goal <= 0.2 (and ours <= 5 %, RSS <= 16 MB)",
            "ours / wyoming-openwakeword (CPU)",
            cpu[0] / cpu[2]
        );
        // Theirs needs a satellite to bring it the microphone (here, the
        // same daemon as a Wyoming client): the whole of each set-up.
        println!(
            "{:<34} {:.2}   (armed set-ups: our daemon alone / a daemon as its Wyoming client + the service)",
            "    ours / (client + service)",
            cpu[0] / (cpu[1] + cpu[2])
        );
    }
    for (name, d) in [
        ("ours", Some(&ours)),
        ("the Wyoming client", theirs.as_ref()),
    ] {
        let Some(d) = d else { continue };
        let turns = d
            .lines
            .try_iter()
            .filter(|l| l.contains("INFO") && l.contains("turn"))
            .count();
        if turns > 0 {
            println!("    {name}: {turns} turns started during the round (false wakes)");
        }
    }
    if let Some((mut child, writer)) = player.take() {
        let _ = child.kill();
        let _ = child.wait();
        let _ = writer.join();
    }
    drop(ours);
    drop(theirs);
    if let Some(o) = oww.as_mut() {
        let _ = o.kill();
        let _ = o.wait();
    }
    Ok(())
}
