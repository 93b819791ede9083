//! Validation: turns a [`RawConfig`] into the typed [`Config`] the rest of the
//! program uses, collecting every problem instead of stopping at the first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::paths;
use super::raw::{RawConfig, RawEngine};

/// One thing wrong with the config, keyed by its dotted path (`audio.volume`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub audio: AudioConfig,
    pub ptt: PttConfig,
    pub stt: SttConfig,
    pub llm: LlmConfig,
    pub tts: TtsConfig,
    pub listen: ListenConfig,
    pub wake: WakeConfig,
    pub engines: BTreeMap<String, EngineConfig>,
    pub history: HistoryConfig,
    pub sync: SyncConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
}

/// Where audio comes from or goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The host's default device.
    Default,
    /// A cpal device, by name or id.
    Named(String),
    /// A WAV file (`wav:PATH`).
    Wav(PathBuf),
    /// A PulseAudio (or PipeWire pulse server) source through the server's
    /// own API (`pulse:` for its default, `pulse:NAME`); microphone only.
    Pulse(Option<String>),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        let s = s.trim();
        if s.is_empty() || s == "default" {
            Ok(DeviceSpec::Default)
        } else if let Some(p) = s.strip_prefix("wav:") {
            if p.is_empty() {
                Err("`wav:` needs a path, as in \"wav:/tmp/in.wav\"".into())
            } else {
                Ok(DeviceSpec::Wav(PathBuf::from(p)))
            }
        } else if let Some(name) = s.strip_prefix("pulse:") {
            if name.is_empty() {
                Ok(DeviceSpec::Pulse(None))
            } else {
                crate::audio::pulse::check_name(name)?;
                Ok(DeviceSpec::Pulse(Some(name.to_string())))
            }
        } else {
            Ok(DeviceSpec::Named(s.to_string()))
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioConfig {
    pub input: DeviceSpec,
    pub output: DeviceSpec,
    pub volume: f32,
    pub earcon_listening: Option<PathBuf>,
    pub earcon_done: Option<PathBuf>,
    pub earcon_error: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PttSource {
    Gpio,
    Keyboard,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    Up,
    Down,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PttMode {
    Hold,
    Toggle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PttConfig {
    pub source: PttSource,
    pub gpio_pin: u8,
    pub pull: Pull,
    pub active_low: bool,
    pub debounce: Duration,
    pub mode: PttMode,
    pub long_press: Duration,
    pub new_conversation_after: Duration,
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SttConfig {
    pub engines: Vec<String>,
    pub language: String,
    pub max_duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    pub engines: Vec<String>,
    pub system_prompt: String,
    pub context_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TtsConfig {
    pub engines: Vec<String>,
    pub max_chunk_chars: usize,
    /// Longest speech an engine may send for one text (`tts.max_seconds`).
    pub max_duration: Duration,
}

/// How a turn starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenMode {
    /// The button (GPIO, keyboard, control socket) only.
    Button,
    /// The wake word; the button works as well.
    Wake,
    /// Both, said explicitly.
    Both,
}

impl ListenMode {
    /// Whether the wake word engines run.
    pub fn wake(self) -> bool {
        matches!(self, ListenMode::Wake | ListenMode::Both)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub mode: ListenMode,
    /// Silence that ends the question.
    pub silence: Duration,
    /// Silence after which the question is transcribed ahead (zero: never).
    pub draft: Duration,
    /// Less speech than this is not a question (a cough, a click).
    pub min_speech: Duration,
    /// No speech this long after the wake word: back to idle.
    pub no_speech_timeout: Duration,
    /// The longest a question may last.
    pub max_listen: Duration,
    /// Listening on after a reply without a wake word (zero: off).
    pub follow_up: Duration,
    /// Voice activity above this is speech (0..1).
    pub vad_threshold: f32,
    /// Take the speaker's sound out of the microphone's, and the longest
    /// echo path it learns.
    pub echo_cancel: bool,
    pub echo_tail: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WakeWordConfig {
    /// `None`: the model's own cutoff.
    pub threshold: Option<f32>,
    pub trigger_level: u32,
    pub refractory: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WakeConfig {
    pub engines: Vec<String>,
    pub words: BTreeMap<String, WakeWordConfig>,
}

/// Where an engine's secret comes from. The secret itself is only read when
/// the engine is used, and never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    None,
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret. `Ok(None)` when no secret is configured.
    pub fn read(&self) -> Result<Option<String>, String> {
        match self {
            SecretSource::None => Ok(None),
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
                _ => Err(format!("environment variable {var} is not set")),
            },
            SecretSource::File(p) => match std::fs::read_to_string(p) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
                Ok(_) => Err(format!("{} is empty", p.display())),
                Err(e) => Err(format!("cannot read {}: {e}", p.display())),
            },
        }
    }

    /// How the secret is described in `config show`: its source, never its value.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::None => "none".into(),
            SecretSource::Env(v) => format!(
                "env {v} ({})",
                if std::env::var_os(v).is_some() {
                    "set, redacted"
                } else {
                    "not set"
                }
            ),
            SecretSource::File(p) => format!("file {} (redacted)", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineKind {
    Wyoming {
        host: String,
        port: u16,
        voice: Option<String>,
        language: Option<String>,
    },
    OpenAi {
        base_url: url::Url,
        model: Option<String>,
        api_key: SecretSource,
        /// Set for Azure OpenAI: deployment URL form and `api-key` header.
        api_version: Option<String>,
        voice: Option<String>,
        temperature: Option<f32>,
        max_tokens: Option<u32>,
        language: Option<String>,
        format: Option<String>,
    },
    Command {
        argv: Vec<String>,
    },
    Server,
    /// microWakeWord models run in the daemon.
    Micro {
        models: PathBuf,
        library: PathBuf,
        second_opinion: SecondOpinion,
    },
}

/// `[engines.NAME] second_opinion` of a `micro` engine.
#[derive(Debug, Clone, PartialEq)]
pub enum SecondOpinion {
    /// Not set: openWakeWord's models in `MODELS/openwakeword`, if the
    /// setup script installed them there.
    IfInstalled(PathBuf),
    /// Set to a directory: its models must load.
    At(PathBuf),
    /// Set to "".
    Off,
}

impl SecondOpinion {
    /// The directory to use now, if any.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            SecondOpinion::IfInstalled(d) if d.join("melspectrogram.tflite").exists() => Some(d),
            SecondOpinion::At(d) => Some(d),
            _ => None,
        }
    }
}

impl EngineKind {
    pub fn name(&self) -> &'static str {
        match self {
            EngineKind::Wyoming { .. } => "wyoming",
            EngineKind::OpenAi { .. } => "openai",
            EngineKind::Command { .. } => "command",
            EngineKind::Server => "server",
            EngineKind::Micro { .. } => "micro",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub name: String,
    pub kind: EngineKind,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryConfig {
    pub path: PathBuf,
    pub busy_timeout: Duration,
    /// `pichat run` applies `history cleanup` once a day to conversations
    /// idle this many days (`None`: never).
    pub cleanup_after_days: Option<u32>,
    pub cleanup_action: crate::history::CleanupAction,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// `None`: sync is off.
    pub url: Option<url::Url>,
    pub token: SecretSource,
    pub ca_file: Option<PathBuf>,
    pub keepalive: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A SQLite file, or a PostgreSQL URL.
    pub database: crate::serverdb::Location,
    /// PostgreSQL: connections in the pool at most.
    pub database_pool: usize,
    /// How often the store's maintenance runs.
    pub maintenance_interval: Duration,
    /// Read-only database connections for reads beside the writer.
    pub read_connections: usize,
    pub llm_engines: Vec<String>,
    pub stt_engines: Vec<String>,
    pub tts_engines: Vec<String>,
    pub rate_limit_per_min: u32,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    pub header_timeout: Duration,
    pub send_queue_bytes: usize,
    pub read_budget_bytes: usize,
    pub frame_timeout: Duration,
    /// How long a browser stays signed in.
    pub session_ttl: Duration,
    /// The certificate chain and key (PEM) to serve https:// and wss://
    /// with; both or neither.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Human,
    Journald,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// Keys each engine kind uses (besides `kind`).
pub fn engine_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "wyoming" => &["url", "timeout_ms", "voice", "language"],
        "openai" => &[
            "url",
            "model",
            "timeout_ms",
            "api_key_env",
            "api_key_file",
            "api_version",
            "voice",
            "temperature",
            "max_tokens",
            "language",
            "format",
        ],
        "command" => &["command", "timeout_ms"],
        "server" => &["timeout_ms"],
        "micro" => &["models", "library", "second_opinion", "timeout_ms"],
        _ => &[],
    }
}

pub const ENGINE_KINDS: &str = "wyoming, openai, command, server, micro";

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn err(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.problems.push(Problem::new(key, msg));
    }

    fn range(&mut self, key: &str, v: i64, lo: i64, hi: i64) -> i64 {
        if v < lo || v > hi {
            self.err(key, format!("{v} is out of range (allowed: {lo}..={hi})"));
            v.clamp(lo, hi)
        } else {
            v
        }
    }

    fn choice<T: Copy>(&mut self, key: &str, v: &str, options: &[(&str, T)]) -> T {
        for (name, val) in options {
            if *name == v {
                return *val;
            }
        }
        let allowed: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.err(
            key,
            format!("\"{v}\" is not valid (allowed: {})", allowed.join(", ")),
        );
        options[0].1
    }

    fn engine_list(&mut self, key: &str, list: &[String], raw: &RawConfig, kinds: &[&str]) {
        if list.is_empty() {
            self.err(key, "the list is empty (name at least one engine)");
        }
        for name in list {
            match raw.engines.get(name) {
                None => {
                    let known: Vec<&str> = raw.engines.keys().map(String::as_str).collect();
                    self.err(
                        key,
                        format!(
                            "engine \"{name}\" is not defined (add an [engines.{name}] table; defined: {})",
                            known.join(", ")
                        ),
                    );
                }
                Some(e) if !e.kind.is_empty() && !kinds.contains(&e.kind.as_str()) => {
                    self.err(
                        key,
                        format!(
                            "engine \"{name}\" has kind \"{}\", which cannot do this stage (allowed kinds: {})",
                            e.kind,
                            kinds.join(", ")
                        ),
                    );
                }
                Some(_) => {}
            }
        }
    }

    fn path_opt(&self, s: &str) -> Option<PathBuf> {
        if s.trim().is_empty() {
            None
        } else {
            Some(PathBuf::from(s))
        }
    }
}

fn secret(
    c: &mut Checker,
    key_prefix: &str,
    env: &Option<String>,
    file: &Option<String>,
) -> SecretSource {
    match (env.as_deref(), file.as_deref()) {
        (Some(_), Some(_)) => {
            c.err(
                format!("{key_prefix}.api_key_file"),
                "both api_key_env and api_key_file are set (keep one)",
            );
            SecretSource::None
        }
        (Some(e), None) if !e.trim().is_empty() => SecretSource::Env(e.trim().to_string()),
        (None, Some(f)) if !f.trim().is_empty() => SecretSource::File(PathBuf::from(f)),
        _ => SecretSource::None,
    }
}

fn resolve_engine(c: &mut Checker, name: &str, e: &RawEngine) -> Option<EngineConfig> {
    let key = format!("engines.{name}");
    if e.api_key.is_some() {
        c.err(
            format!("{key}.api_key"),
            "secrets are not allowed in the config file (use api_key_env = \"VAR\" or api_key_file = \"/path\")",
        );
    }
    let timeout_ms = c.range(
        &format!("{key}.timeout_ms"),
        e.timeout_ms.unwrap_or(15_000),
        100,
        600_000,
    );
    let kind = match e.kind.as_str() {
        "" => {
            c.err(
                format!("{key}.kind"),
                format!("missing (allowed: {ENGINE_KINDS})"),
            );
            return None;
        }
        "wyoming" => {
            let url = e.url.as_deref().unwrap_or("");
            match parse_tcp_url(url) {
                Ok((host, port)) => EngineKind::Wyoming {
                    host,
                    port,
                    voice: e.voice.clone(),
                    language: e.language.clone(),
                },
                Err(m) => {
                    c.err(format!("{key}.url"), m);
                    return None;
                }
            }
        }
        "openai" => {
            let url = e.url.as_deref().unwrap_or("");
            let base_url = match url::Url::parse(url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
                Ok(u) => {
                    c.err(
                        format!("{key}.url"),
                        format!(
                            "scheme \"{}\" is not supported (allowed: http://, https://)",
                            u.scheme()
                        ),
                    );
                    return None;
                }
                Err(err) => {
                    c.err(
                        format!("{key}.url"),
                        format!(
                            "\"{url}\" is not a URL ({err}; expected e.g. \"http://127.0.0.1:8081/v1\")"
                        ),
                    );
                    return None;
                }
            };
            let temperature = e.temperature.map(|t| {
                if !(0.0..=2.0).contains(&t) {
                    c.err(
                        format!("{key}.temperature"),
                        format!("{t} is out of range (allowed: 0.0..=2.0)"),
                    );
                }
                t as f32
            });
            let max_tokens = e
                .max_tokens
                .map(|t| c.range(&format!("{key}.max_tokens"), t, 1, 1_000_000) as u32);
            if let Some(f) = &e.format {
                c.choice(&format!("{key}.format"), f, &[("wav", ()), ("pcm", ())]);
            }
            if e.api_version.is_some() && e.model.is_none() {
                c.err(
                    format!("{key}.model"),
                    "Azure OpenAI (api_version set) needs model = the deployment name",
                );
            }
            EngineKind::OpenAi {
                base_url,
                model: e.model.clone(),
                api_key: secret(c, &key, &e.api_key_env, &e.api_key_file),
                api_version: e.api_version.clone(),
                voice: e.voice.clone(),
                temperature,
                max_tokens,
                language: e.language.clone(),
                format: e.format.clone(),
            }
        }
        "command" => match &e.command {
            Some(argv) if !argv.is_empty() && !argv[0].trim().is_empty() => {
                EngineKind::Command { argv: argv.clone() }
            }
            _ => {
                c.err(
                    format!("{key}.command"),
                    "missing or empty (a list: program and arguments, e.g. [\"espeak-ng\", \"--stdout\", \"{text}\"])",
                );
                return None;
            }
        },
        "server" => EngineKind::Server,
        "micro" => {
            let models = e
                .models
                .as_deref()
                .filter(|m| !m.trim().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| paths::data_dir().join("wake"));
            let library = e
                .library
                .as_deref()
                .filter(|m| !m.trim().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| models.join("libtensorflowlite_c.so"));
            let second_opinion = match e.second_opinion.as_deref() {
                None => SecondOpinion::IfInstalled(models.join("openwakeword")),
                Some(s) if s.trim().is_empty() => SecondOpinion::Off,
                Some(s) => SecondOpinion::At(PathBuf::from(s)),
            };
            EngineKind::Micro {
                models,
                library,
                second_opinion,
            }
        }
        other => {
            c.err(
                format!("{key}.kind"),
                format!("\"{other}\" is not an engine kind (allowed: {ENGINE_KINDS})"),
            );
            return None;
        }
    };
    Some(EngineConfig {
        name: name.to_string(),
        kind,
        timeout: Duration::from_millis(timeout_ms as u64),
    })
}

/// Parses `tcp://host:port` (the Wyoming URI form).
pub fn parse_tcp_url(url: &str) -> Result<(String, u16), String> {
    let hint = "expected \"tcp://HOST:PORT\", e.g. \"tcp://127.0.0.1:10300\"";
    let rest = url
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("\"{url}\" is not a tcp:// URL ({hint})"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{url}\" has no port ({hint})"))?;
    let port: u16 = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("\"{url}\" has a bad port ({hint})"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("\"{url}\" needs a host and a port ({hint})"));
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Validates the raw config. Returns the config, or every problem found.
pub fn resolve(raw: &RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
    };

    let input = DeviceSpec::parse(&raw.audio.input).unwrap_or_else(|m| {
        c.err("audio.input", m);
        DeviceSpec::Default
    });
    let output = match DeviceSpec::parse(&raw.audio.output) {
        Ok(DeviceSpec::Pulse(_)) => {
            c.err(
                "audio.output",
                "`pulse:` is for the microphone only; for the speaker name an ALSA device (\"pulse\", \"default\" or one from `pichat devices`)",
            );
            DeviceSpec::Default
        }
        Ok(d) => d,
        Err(m) => {
            c.err("audio.output", m);
            DeviceSpec::Default
        }
    };
    let volume = raw.audio.volume;
    if !(0.0..=1.0).contains(&volume) {
        c.err(
            "audio.volume",
            format!("{volume} is out of range (allowed: 0.0..=1.0)"),
        );
    }
    let audio = AudioConfig {
        input,
        output,
        volume: volume.clamp(0.0, 1.0) as f32,
        earcon_listening: c.path_opt(&raw.audio.earcon_listening),
        earcon_done: c.path_opt(&raw.audio.earcon_done),
        earcon_error: c.path_opt(&raw.audio.earcon_error),
    };

    let p = &raw.ptt;
    let ptt = PttConfig {
        source: c.choice(
            "ptt.source",
            &p.source,
            &[
                ("gpio", PttSource::Gpio),
                ("keyboard", PttSource::Keyboard),
                ("none", PttSource::None),
            ],
        ),
        gpio_pin: c.range("ptt.gpio_pin", p.gpio_pin, 0, 53) as u8,
        pull: c.choice(
            "ptt.pull",
            &p.pull,
            &[("up", Pull::Up), ("down", Pull::Down), ("off", Pull::Off)],
        ),
        active_low: p.active_low,
        debounce: Duration::from_millis(c.range("ptt.debounce_ms", p.debounce_ms, 0, 1000) as u64),
        mode: c.choice(
            "ptt.mode",
            &p.mode,
            &[("hold", PttMode::Hold), ("toggle", PttMode::Toggle)],
        ),
        long_press: Duration::from_millis(
            c.range("ptt.long_press_ms", p.long_press_ms, 0, 60_000) as u64
        ),
        new_conversation_after: Duration::from_secs(
            60 * c.range(
                "ptt.new_conversation_after_min",
                p.new_conversation_after_min,
                0,
                525_600,
            ) as u64,
        ),
        socket: c
            .path_opt(&p.socket)
            .unwrap_or_else(|| paths::runtime_dir().join("pichat.sock")),
    };

    c.engine_list("stt.engines", &raw.stt.engines, raw, &["wyoming", "openai"]);
    let stt = SttConfig {
        engines: raw.stt.engines.clone(),
        language: raw.stt.language.clone(),
        max_duration: Duration::from_secs(
            c.range("stt.max_seconds", raw.stt.max_seconds, 1, 600) as u64
        ),
    };
    c.engine_list("llm.engines", &raw.llm.engines, raw, &["openai", "server"]);
    let llm = LlmConfig {
        engines: raw.llm.engines.clone(),
        system_prompt: raw.llm.system_prompt.clone(),
        context_tokens: c.range("llm.context_tokens", raw.llm.context_tokens, 64, 1_000_000)
            as usize,
    };
    c.engine_list(
        "tts.engines",
        &raw.tts.engines,
        raw,
        &["wyoming", "openai", "command"],
    );
    let tts = TtsConfig {
        engines: raw.tts.engines.clone(),
        max_chunk_chars: c.range("tts.max_chunk_chars", raw.tts.max_chunk_chars, 20, 2000) as usize,
        max_duration: Duration::from_secs(
            c.range("tts.max_seconds", raw.tts.max_seconds, 1, 3600) as u64
        ),
    };

    let l = &raw.listen;
    let secs = |c: &mut Checker, key: &str, v: f64, lo: f64, hi: f64| -> Duration {
        if !(lo..=hi).contains(&v) || !v.is_finite() {
            c.err(key, format!("{v} is out of range (allowed: {lo}..={hi})"));
            return Duration::from_secs_f64(if v.is_finite() { v.clamp(lo, hi) } else { lo });
        }
        Duration::from_secs_f64(v)
    };
    let listen = ListenConfig {
        mode: c.choice(
            "listen.mode",
            &l.mode,
            &[
                ("button", ListenMode::Button),
                ("wake", ListenMode::Wake),
                ("both", ListenMode::Both),
            ],
        ),
        silence: Duration::from_millis(
            c.range("listen.silence_ms", l.silence_ms, 100, 10_000) as u64
        ),
        // (At or above silence_ms, no drafts: the question ends first.)
        draft: Duration::from_millis(c.range("listen.draft_ms", l.draft_ms, 0, 10_000) as u64),
        min_speech: Duration::from_millis(c.range(
            "listen.min_speech_ms",
            l.min_speech_ms,
            0,
            10_000,
        ) as u64),
        no_speech_timeout: secs(
            &mut c,
            "listen.no_speech_timeout_s",
            l.no_speech_timeout_s,
            0.5,
            60.0,
        ),
        max_listen: secs(&mut c, "listen.max_listen_s", l.max_listen_s, 1.0, 600.0),
        follow_up: secs(&mut c, "listen.follow_up_s", l.follow_up_s, 0.0, 60.0),
        vad_threshold: {
            let v = l.vad_threshold;
            if !(0.01..=0.99).contains(&v) {
                c.err(
                    "listen.vad_threshold",
                    format!("{v} is out of range (allowed: 0.01..=0.99)"),
                );
            }
            v.clamp(0.01, 0.99) as f32
        },
        echo_cancel: l.echo_cancel,
        echo_tail: Duration::from_millis(
            c.range("listen.echo_tail_ms", l.echo_tail_ms, 20, 1000) as u64
        ),
    };
    if listen.mode.wake() {
        c.engine_list(
            "wake.engines",
            &raw.wake.engines,
            raw,
            &["micro", "wyoming"],
        );
        if raw.wake.words.is_empty() {
            c.err(
                "wake.words",
                "no wake word (add a [wake.words.NAME] table, e.g. [wake.words.okay_nabu])",
            );
        }
    }
    let mut words = BTreeMap::new();
    for (name, w) in &raw.wake.words {
        let key = format!("wake.words.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            c.err(&key, "a word's name is letters, digits, '_' and '-' (the model's file name, e.g. okay_nabu)");
        }
        let threshold = if w.threshold == 0.0 {
            None
        } else if !(0.01..=0.999).contains(&w.threshold) {
            c.err(
                format!("{key}.threshold"),
                format!(
                    "{} is out of range (allowed: 0 for the model's own, or 0.01..=0.999)",
                    w.threshold
                ),
            );
            None
        } else {
            Some(w.threshold as f32)
        };
        words.insert(
            name.clone(),
            WakeWordConfig {
                threshold,
                trigger_level: c.range(&format!("{key}.trigger_level"), w.trigger_level, 1, 50)
                    as u32,
                refractory: Duration::from_millis(c.range(
                    &format!("{key}.refractory_ms"),
                    w.refractory_ms,
                    0,
                    60_000,
                ) as u64),
            },
        );
    }
    let wake = WakeConfig {
        engines: raw.wake.engines.clone(),
        words,
    };

    let mut engines = BTreeMap::new();
    for (name, e) in &raw.engines {
        if let Some(ec) = resolve_engine(&mut c, name, e) {
            if matches!(ec.kind, EngineKind::Server) && raw.sync.url.trim().is_empty() {
                c.err(
                    format!("engines.{name}.kind"),
                    "kind \"server\" needs the chat server: set sync.url",
                );
            }
            engines.insert(name.clone(), ec);
        }
    }

    let history = HistoryConfig {
        path: c
            .path_opt(&raw.history.path)
            .unwrap_or_else(|| paths::data_dir().join("history.db")),
        busy_timeout: Duration::from_millis(c.range(
            "history.busy_timeout_ms",
            raw.history.busy_timeout_ms,
            0,
            600_000,
        ) as u64),
        cleanup_after_days: match c.range(
            "history.cleanup_after_days",
            raw.history.cleanup_after_days,
            0,
            36_500,
        ) {
            0 => None,
            d => Some(d as u32),
        },
        cleanup_action: match raw.history.cleanup_action.as_str() {
            "archive" => crate::history::CleanupAction::Archive,
            "delete" => crate::history::CleanupAction::Delete,
            other => {
                c.err(
                    "history.cleanup_action",
                    format!("\"{other}\" is not an action (use \"archive\" or \"delete\")"),
                );
                crate::history::CleanupAction::Archive
            }
        },
    };

    let s = &raw.sync;
    let sync_url = if s.url.trim().is_empty() {
        None
    } else {
        match url::Url::parse(s.url.trim()) {
            Ok(u) if u.scheme() == "ws" || u.scheme() == "wss" => Some(u),
            Ok(u) => {
                c.err(
                    "sync.url",
                    format!(
                        "scheme \"{}\" is not supported (allowed: ws://, wss://)",
                        u.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                c.err(
                    "sync.url",
                    format!(
                        "\"{}\" is not a URL ({e}; e.g. \"ws://chat.lan:8080/ws\")",
                        s.url
                    ),
                );
                None
            }
        }
    };
    let token = if !s.token_file.trim().is_empty() {
        SecretSource::File(PathBuf::from(s.token_file.trim()))
    } else if !s.token_env.trim().is_empty() {
        SecretSource::Env(s.token_env.trim().to_string())
    } else {
        SecretSource::None
    };
    let sync = SyncConfig {
        url: sync_url,
        token,
        ca_file: c.path_opt(&s.ca_file),
        keepalive: Duration::from_secs(c.range("sync.keepalive_s", s.keepalive_s, 5, 3600) as u64),
    };

    let sv = &raw.server;
    let server_listen = sv.listen.parse::<SocketAddr>().unwrap_or_else(|e| {
        c.err(
            "server.listen",
            format!(
                "\"{}\" is not an address ({e}; expected IP:PORT, e.g. \"127.0.0.1:8080\")",
                sv.listen
            ),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    c.engine_list("server.llm_engines", &sv.llm_engines, raw, &["openai"]);
    c.engine_list(
        "server.stt_engines",
        &sv.stt_engines,
        raw,
        &["wyoming", "openai"],
    );
    c.engine_list(
        "server.tts_engines",
        &sv.tts_engines,
        raw,
        &["wyoming", "openai", "command"],
    );
    let server = ServerConfig {
        listen: server_listen,
        database: match sv.database.trim() {
            "" => crate::serverdb::Location::Sqlite(paths::data_dir().join("server.db")),
            s => {
                let at = crate::serverdb::Location::parse(s);
                if let Err(why) = at.check() {
                    c.err("server.database", why);
                }
                at
            }
        },
        database_pool: c.range("server.database_pool", sv.database_pool, 1, 1000) as usize,
        maintenance_interval: Duration::from_secs(
            60 * c.range(
                "server.maintenance_interval_min",
                sv.maintenance_interval_min,
                1,
                10_080,
            ) as u64,
        ),
        read_connections: c.range("server.read_connections", sv.read_connections, 0, 64) as usize,
        llm_engines: sv.llm_engines.clone(),
        stt_engines: sv.stt_engines.clone(),
        tts_engines: sv.tts_engines.clone(),
        rate_limit_per_min: c.range(
            "server.rate_limit_per_min",
            sv.rate_limit_per_min,
            1,
            100_000,
        ) as u32,
        max_connections: c.range("server.max_connections", sv.max_connections, 1, 1_000_000)
            as usize,
        max_connections_per_user: c.range(
            "server.max_connections_per_user",
            sv.max_connections_per_user,
            1,
            1_000_000,
        ) as usize,
        max_handshakes: c.range("server.max_handshakes", sv.max_handshakes, 1, 1_000_000) as usize,
        max_handshakes_per_address: c.range(
            "server.max_handshakes_per_address",
            sv.max_handshakes_per_address,
            1,
            1_000_000,
        ) as usize,
        header_timeout: Duration::from_secs(c.range(
            "server.header_timeout_s",
            sv.header_timeout_s,
            1,
            300,
        ) as u64),
        send_queue_bytes: c.range("server.send_queue_kib", sv.send_queue_kib, 16, 1 << 20) as usize
            * 1024,
        read_budget_bytes: c.range("server.read_budget_mib", sv.read_budget_mib, 1, 1 << 14)
            as usize
            * (1 << 20),
        frame_timeout: Duration::from_secs(c.range(
            "server.frame_timeout_s",
            sv.frame_timeout_s,
            1,
            600,
        ) as u64),
        session_ttl: Duration::from_secs(
            c.range("server.session_hours", sv.session_hours, 1, 24 * 366) as u64 * 3600,
        ),
        tls: match (c.path_opt(&sv.tls_cert), c.path_opt(&sv.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (cert, _) => {
                let (set, unset) = if cert.is_some() {
                    ("server.tls_cert", "server.tls_key")
                } else {
                    ("server.tls_key", "server.tls_cert")
                };
                c.err(
                    unset,
                    format!("{set} is set but {unset} is not: give both (PEM files; `pichat serve --make-cert` makes them), or neither for plain http"),
                );
                None
            }
        },
    };

    let level = raw.log.level.trim().to_ascii_lowercase();
    c.choice(
        "log.level",
        &level,
        &[
            ("info", ()),
            ("error", ()),
            ("warn", ()),
            ("debug", ()),
            ("trace", ()),
        ],
    );
    let log = LogConfig {
        level,
        format: c.choice(
            "log.format",
            &raw.log.format,
            &[
                ("auto", LogFormat::Auto),
                ("human", LogFormat::Human),
                ("journald", LogFormat::Journald),
            ],
        ),
    };

    if c.problems.is_empty() {
        Ok(Config {
            audio,
            ptt,
            stt,
            llm,
            tts,
            listen,
            wake,
            engines,
            history,
            sync,
            server,
            log,
        })
    } else {
        Err(c.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let cfg = resolve(&RawConfig::default()).expect("defaults are valid");
        assert_eq!(cfg.stt.engines, vec!["whisper"]);
        assert!(matches!(
            cfg.engines["whisper"].kind,
            EngineKind::Wyoming { port: 10300, .. }
        ));
        assert_eq!(cfg.ptt.source, PttSource::Gpio);
        assert_eq!(cfg.audio.volume, 0.8);
    }

    #[test]
    fn every_problem_is_reported() {
        let mut raw = RawConfig::default();
        raw.audio.volume = 3.0;
        raw.ptt.mode = "sometimes".into();
        raw.llm.engines = vec!["nope".into()];
        let problems = resolve(&raw).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["audio.volume", "ptt.mode", "llm.engines"]);
        assert!(problems[1].message.contains("hold, toggle"));
    }

    #[test]
    fn tcp_urls() {
        assert_eq!(
            parse_tcp_url("tcp://127.0.0.1:10300").unwrap(),
            ("127.0.0.1".into(), 10300)
        );
        assert!(parse_tcp_url("http://x:1").is_err());
        assert!(parse_tcp_url("tcp://x").is_err());
        assert!(parse_tcp_url("tcp://x:99999").is_err());
    }

    #[test]
    fn wav_device_spec() {
        assert_eq!(
            DeviceSpec::parse("wav:/a.wav").unwrap(),
            DeviceSpec::Wav("/a.wav".into())
        );
        assert_eq!(DeviceSpec::parse("default").unwrap(), DeviceSpec::Default);
        assert!(DeviceSpec::parse("wav:").is_err());
    }
}
