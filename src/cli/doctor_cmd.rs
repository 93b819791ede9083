//! `pichat doctor`: checks everything the assistant needs, for real, and
//! prints a table: the config, the audio devices (each opened briefly), the
//! push-to-talk source, the wake word engines and the voice activity
//! detector, every configured engine (one tiny request each),
//! the chat server, free disk and the database's integrity. Exit 1 when
//! something required fails.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::audio::{self, AudioSource};
use crate::config::{Config, DeviceSpec, PttSource};
use crate::engines::{self, ChatRequest, LlmEvent};
use crate::history::{ChatMessage, OpenOptions, Role, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

struct Row {
    check: String,
    status: Status,
    detail: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, check: impl Into<String>, status: Status, detail: impl Into<String>) {
        let r = Row {
            check: check.into(),
            status,
            detail: detail.into(),
        };
        let mark = match r.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        // Details quote URLs, errors and engines' answers: no secret, no escape.
        let detail = super::safe_text::redact(&r.detail);
        println!(
            "{:<26} {mark}  {}",
            r.check,
            super::safe_text::line(&detail)
        );
        self.rows.push(r);
    }

    fn result<T, E: std::fmt::Display>(
        &mut self,
        check: &str,
        required: bool,
        r: Result<T, E>,
        ok: impl FnOnce(T) -> String,
    ) {
        match r {
            Ok(v) => self.add(check, Status::Ok, ok(v)),
            Err(e) => self.add(
                check,
                if required { Status::Fail } else { Status::Warn },
                e.to_string(),
            ),
        }
    }
}

fn ms(t: Instant) -> String {
    format!("{} ms", t.elapsed().as_millis())
}

pub fn run(cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    println!("{:<26} {:<4}  DETAIL", "CHECK", "");
    let mut rep = Report::default();
    let (path, origin) = crate::config::locate(cli_config);
    let cfg = match crate::config::load_file(&path, origin != crate::config::ConfigOrigin::Default)
    {
        Ok(l) => {
            rep.add(
                "config",
                Status::Ok,
                format!(
                    "{}{}",
                    path.display(),
                    if l.exists { "" } else { " (absent: defaults)" }
                ),
            );
            l.config
        }
        Err(e) => {
            rep.add("config", Status::Fail, e.to_string().replace('\n', "; "));
            return Ok(ExitCode::from(1));
        }
    };
    engines::init_tls();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(check_all(&cfg, &mut rep));
    let failed = rep.rows.iter().filter(|r| r.status == Status::Fail).count();
    let warned = rep.rows.iter().filter(|r| r.status == Status::Warn).count();
    println!(
        "\n{} checks: {} failed, {} warnings",
        rep.rows.len(),
        failed,
        warned
    );
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn check_all(cfg: &Config, rep: &mut Report) {
    // Microphone: open it and wait for one frame.
    let t = Instant::now();
    let mic = async {
        let mut src: Box<dyn AudioSource> = match &cfg.audio.input {
            DeviceSpec::Wav(p) => Box::new(audio::wav::WavSource::open(p, audio::wav::Pace::Fast)?),
            other => audio::open_input(other)?,
        };
        let mut rx = src.start()?;
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        src.stop();
        match got {
            Ok(Some(_)) => Ok(src.describe()),
            _ => Err(audio::AudioError::Other(format!(
                "{}: no audio within 3 s",
                src.describe()
            ))),
        }
    };
    rep.result("microphone", true, mic.await, |d| {
        format!("{d} ({})", ms(t))
    });
    if let Some(why) = audio::pulse::spinning_input(cfg) {
        rep.add("microphone while armed", Status::Warn, why);
    }

    // Speaker: play 50 ms of silence.
    let t = Instant::now();
    let spk = async {
        let sink = audio::open_output(&cfg.audio.output, 0.0)?;
        sink.enqueue(&[0; 800], audio::RATE)?;
        audio::drained(sink.as_ref()).await;
        Ok::<_, audio::AudioError>(sink.describe())
    };
    rep.result("speaker", true, spk.await, |d| format!("{d} ({})", ms(t)));

    // Push-to-talk.
    match cfg.ptt.source {
        PttSource::Gpio => {
            let (hub, _rx) = crate::ptt::PttHub::new();
            let tracker = tokio_util::task::TaskTracker::new();
            let token = tokio_util::sync::CancellationToken::new();
            let r = crate::ptt::gpio::GpioButton::arm(&cfg.ptt, hub, &tracker, token.clone());
            token.cancel();
            rep.result("push-to-talk (GPIO)", true, r, |_| {
                format!("BCM pin {} readable", cfg.ptt.gpio_pin)
            });
        }
        PttSource::Keyboard => {
            use std::io::IsTerminal;
            let tty = std::io::stdin().is_terminal();
            rep.add(
                "push-to-talk (keyboard)",
                if tty { Status::Ok } else { Status::Warn },
                if tty { "standard input is a terminal" } else { "standard input is not a terminal (under systemd use source = \"none\" or \"gpio\")" },
            );
        }
        PttSource::None => rep.add("push-to-talk", Status::Ok, "control socket only"),
    }
    match crate::ptt::socket::send_command(&cfg.ptt.socket, "status") {
        Ok(r) => rep.add(
            "control socket",
            Status::Ok,
            format!("{}: daemon answers \"{r}\"", cfg.ptt.socket.display()),
        ),
        Err(_) => rep.add(
            "control socket",
            Status::Ok,
            format!(
                "{}: no daemon running (it is created by `pichat run`)",
                cfg.ptt.socket.display()
            ),
        ),
    }

    // Hands-free listening: the wake word engines and the voice activity detector.
    if cfg.listen.mode.wake() {
        check_wake(cfg, rep).await;
    }
    let mut vad = crate::voice::ear::Vad::new(cfg.listen.vad_threshold);
    let silent = (0..50).filter(|_| vad.frame(&[0; audio::FRAME])).count();
    let mut noise = 12345u32;
    let hiss: Vec<i16> = (0..audio::FRAME * 50)
        .map(|_| {
            noise = noise.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((noise >> 16) as i16) / 64
        })
        .collect();
    let hissing = hiss.chunks(audio::FRAME).filter(|f| vad.frame(f)).count();
    rep.add(
        "voice activity (earshot)",
        if silent == 0 && hissing < 10 { Status::Ok } else { Status::Warn },
        format!(
            "threshold {:.2}: {silent} of 50 frames of silence and {hissing} of 50 of hiss taken for speech",
            cfg.listen.vad_threshold
        ),
    );
    if cfg.listen.mode.wake() && cfg.listen.echo_cancel {
        let r = audio::aec::EchoCanceller::new(
            std::sync::Arc::default(),
            cfg.listen.echo_tail.as_millis() as u32,
            Path::new(audio::aec::LIBRARY),
        );
        rep.result("echo cancellation", false, r, |_| {
            format!(
                "{} loaded, {} ms tail",
                audio::aec::LIBRARY,
                cfg.listen.echo_tail.as_millis()
            )
        });
    }

    // Engines, one small real request each.
    for (stage, names) in [
        ("stt", &cfg.stt.engines),
        ("llm", &cfg.llm.engines),
        ("tts", &cfg.tts.engines),
    ] {
        let mut any = false;
        for (i, name) in names.iter().enumerate() {
            let t = Instant::now();
            let r = check_engine(cfg, stage, name).await;
            any |= r.is_ok();
            let label = format!("{stage} engine {name}");
            // The first engine of a stage is what users hear; later ones are fallbacks.
            let required_now = i + 1 == names.len() && !any;
            rep.result(&label, required_now, r, |d| format!("{d} ({})", ms(t)));
        }
    }

    // The chat server, when sync is configured.
    if cfg.sync.url.is_some() {
        let r = check_server(&cfg.sync).await;
        rep.result("chat server", false, r, |d| d);
    }

    // Disk and database.
    let dir = cfg
        .history
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    match free_bytes(&dir) {
        Some(b) if b < 50 << 20 => rep.add(
            "free disk",
            Status::Fail,
            format!("{}: {} MB free", dir.display(), b >> 20),
        ),
        Some(b) => rep.add(
            "free disk",
            Status::Ok,
            format!("{}: {} MB free", dir.display(), b >> 20),
        ),
        None => rep.add(
            "free disk",
            Status::Warn,
            format!("{}: does not exist yet", dir.display()),
        ),
    }
    if cfg.history.path.exists() {
        let r = Store::open(
            &cfg.history.path,
            &OpenOptions {
                busy_timeout: cfg.history.busy_timeout,
                create: false,
                ..OpenOptions::default()
            },
        )
        .and_then(|s| s.integrity_check());
        match r {
            Ok(s) if s == "ok" => rep.add(
                "history database",
                Status::Ok,
                format!("{}: integrity ok", cfg.history.path.display()),
            ),
            Ok(s) => rep.add(
                "history database",
                Status::Fail,
                format!("{}: {s}", cfg.history.path.display()),
            ),
            Err(e) => rep.add("history database", Status::Fail, e.to_string()),
        }
    } else {
        rep.add(
            "history database",
            Status::Ok,
            format!("{}: not created yet", cfg.history.path.display()),
        );
    }
}

/// Each wake word engine: opened for the configured words, fed a second of
/// silence (which must not wake it), with its cost.
async fn check_wake(cfg: &Config, rep: &mut Report) {
    let engines = match crate::wake::build(cfg) {
        Ok(e) => e,
        Err(e) => {
            rep.add("wake word", Status::Fail, e.to_string());
            return;
        }
    };
    let mut any = false;
    let n = engines.len();
    for (i, e) in engines.iter().enumerate() {
        let t = Instant::now();
        let r = async {
            let mut s = e.open().await?;
            let opened = t.elapsed();
            let mut out = Vec::new();
            let t1 = Instant::now();
            for _ in 0..50 {
                s.push(&[0; audio::FRAME], &mut out).await?;
            }
            let fed = t1.elapsed();
            let woke = out
                .iter()
                .any(|e| matches!(e, crate::wake::WakeEvent::Detected { .. }));
            let words = format!("{}{}", s.words().join(", "), s.detail());
            Ok::<_, crate::wake::WakeError>((words, opened, fed, woke))
        }
        .await;
        any |= r.as_ref().is_ok_and(|x| !x.3);
        let label = format!("wake engine {}", e.name());
        match r {
            Ok((words, opened, fed, false)) => rep.add(
                label,
                Status::Ok,
                format!(
                    "{words}: opened in {} ms; 1 s of silence took {:.1} ms and did not wake it",
                    opened.as_millis(),
                    fed.as_secs_f64() * 1000.0
                ),
            ),
            Ok((_, _, _, true)) => rep.add(label, Status::Fail, "woke on a second of silence"),
            // The last engine failing with none working leaves the button alone.
            Err(err) => rep.add(
                label,
                Status::Warn,
                format!(
                    "{err}{}",
                    if i + 1 == n && !any {
                        "; only the button will start turns"
                    } else {
                        ""
                    }
                ),
            ),
        }
    }
}

async fn check_engine(cfg: &Config, stage: &str, name: &str) -> anyhow::Result<String> {
    let e = cfg
        .engines
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("not defined in [engines]"))?;
    let kind = e.kind.name();
    match stage {
        "stt" => {
            let stt = engines::build_stt(e, &cfg.stt.language)?;
            let text = engines::transcribe(stt.as_ref(), &[0; 8000]).await?;
            Ok(format!(
                "{kind}: transcribed half a second of silence ({text:?})"
            ))
        }
        "llm" => {
            let llm = engines::build_llm(e, &cfg.sync)?;
            let req = ChatRequest {
                messages: vec![ChatMessage {
                    role: Role::User,
                    content: "Say OK.".into(),
                }],
                temperature: Some(0.0),
                max_tokens: Some(4),
                ..Default::default()
            };
            let mut s = llm.chat(&req).await?;
            let mut text = String::new();
            while let Some(ev) = s.next().await {
                if let LlmEvent::Token(t) = ev? {
                    text.push_str(&t);
                }
            }
            Ok(format!("{kind}: answered {:?}", text.trim()))
        }
        _ => {
            let tts = engines::build_tts(e, cfg.tts.max_duration)?;
            let a = engines::synthesize_all(tts.as_ref(), "OK.").await?;
            Ok(format!(
                "{kind}: {} ms of speech at {} Hz",
                a.pcm.len() as u64 * 1000 / a.rate.max(1) as u64,
                a.rate
            ))
        }
    }
}

async fn check_server(cfg: &crate::config::SyncConfig) -> anyhow::Result<String> {
    let rev = crate::sync::check(cfg).await?;
    Ok(format!(
        "{}: token accepted, hello answered (rev {rev})",
        cfg.url.as_ref().map(|u| u.to_string()).unwrap_or_default()
    ))
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct for a valid C string path.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return None;
        }
        Some(s.f_bavail as u64 * s.f_frsize as u64)
    }
}
