//! The config file as written: serde mirrors of every TOML table, with the
//! built-in defaults. Nothing here is validated; see `resolve.rs` for that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole file. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub audio: RawAudio,
    pub ptt: RawPtt,
    pub stt: RawStt,
    pub llm: RawLlm,
    pub tts: RawTts,
    pub listen: RawListen,
    pub wake: RawWake,
    pub engines: BTreeMap<String, RawEngine>,
    pub history: RawHistory,
    pub sync: RawSync,
    pub server: RawServer,
    pub log: RawLog,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            audio: RawAudio::default(),
            ptt: RawPtt::default(),
            stt: RawStt::default(),
            llm: RawLlm::default(),
            tts: RawTts::default(),
            listen: RawListen::default(),
            wake: RawWake::default(),
            engines: default_engines(),
            history: RawHistory::default(),
            sync: RawSync::default(),
            server: RawServer::default(),
            log: RawLog::default(),
        }
    }
}

/// The engines every install knows without configuring anything: the local
/// engines that `scripts/setup-local-engines.sh` starts, and espeak-ng.
pub fn default_engines() -> BTreeMap<String, RawEngine> {
    let mut m = BTreeMap::new();
    m.insert(
        "whisper".into(),
        RawEngine {
            kind: "wyoming".into(),
            url: Some("tcp://127.0.0.1:10300".into()),
            ..RawEngine::default()
        },
    );
    m.insert(
        "home".into(),
        RawEngine {
            kind: "openai".into(),
            url: Some("http://127.0.0.1:8081/v1".into()),
            model: Some("smollm2".into()),
            // A 135M model samples nonsense at the server's default
            // temperature; greedy decoding keeps its answers on topic.
            temperature: Some(0.0),
            ..RawEngine::default()
        },
    );
    m.insert(
        "piper".into(),
        RawEngine {
            kind: "wyoming".into(),
            url: Some("tcp://127.0.0.1:10200".into()),
            ..RawEngine::default()
        },
    );
    m.insert(
        "micro".into(),
        RawEngine {
            kind: "micro".into(),
            models: Some(String::new()),
            library: Some(String::new()),
            ..RawEngine::default()
        },
    );
    m.insert(
        "espeak".into(),
        RawEngine {
            kind: "command".into(),
            command: Some(vec!["espeak-ng".into(), "--stdout".into(), "{text}".into()]),
            ..RawEngine::default()
        },
    );
    m
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawAudio {
    pub input: String,
    pub output: String,
    pub volume: f64,
    pub earcon_listening: String,
    pub earcon_done: String,
    pub earcon_error: String,
}

impl Default for RawAudio {
    fn default() -> Self {
        RawAudio {
            input: "default".into(),
            output: "default".into(),
            volume: 0.8,
            earcon_listening: String::new(),
            earcon_done: String::new(),
            earcon_error: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawPtt {
    pub source: String,
    pub gpio_pin: i64,
    pub pull: String,
    pub active_low: bool,
    pub debounce_ms: i64,
    pub mode: String,
    pub long_press_ms: i64,
    pub new_conversation_after_min: i64,
    pub socket: String,
}

impl Default for RawPtt {
    fn default() -> Self {
        RawPtt {
            source: "gpio".into(),
            gpio_pin: 17,
            pull: "up".into(),
            active_low: true,
            debounce_ms: 20,
            mode: "hold".into(),
            long_press_ms: 2000,
            new_conversation_after_min: 10,
            socket: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawStt {
    pub engines: Vec<String>,
    pub language: String,
    pub max_seconds: i64,
}

impl Default for RawStt {
    fn default() -> Self {
        RawStt {
            engines: vec!["whisper".into()],
            language: "en".into(),
            max_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawLlm {
    pub engines: Vec<String>,
    pub system_prompt: String,
    pub context_tokens: i64,
}

pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful voice assistant. Answer in one short sentence.";

impl Default for RawLlm {
    fn default() -> Self {
        RawLlm {
            engines: vec!["home".into()],
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            context_tokens: 1500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawTts {
    pub engines: Vec<String>,
    pub max_chunk_chars: i64,
    pub max_seconds: i64,
}

impl Default for RawTts {
    fn default() -> Self {
        RawTts {
            engines: vec!["piper".into(), "espeak".into()],
            max_chunk_chars: 200,
            max_seconds: 600,
        }
    }
}

/// `[listen]`: how a turn starts and how it ends by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawListen {
    pub mode: String,
    pub silence_ms: i64,
    pub draft_ms: i64,
    pub min_speech_ms: i64,
    pub no_speech_timeout_s: f64,
    pub max_listen_s: f64,
    pub follow_up_s: f64,
    pub vad_threshold: f64,
    pub echo_cancel: bool,
    pub echo_tail_ms: i64,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            mode: "button".into(),
            silence_ms: 700,
            draft_ms: 350,
            min_speech_ms: 250,
            no_speech_timeout_s: 5.0,
            max_listen_s: 15.0,
            follow_up_s: 0.0,
            vad_threshold: 0.5,
            echo_cancel: true,
            echo_tail_ms: 500,
        }
    }
}

/// `[wake]`: the wake word engines and the words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawWake {
    pub engines: Vec<String>,
    pub words: BTreeMap<String, RawWakeWord>,
}

impl Default for RawWake {
    fn default() -> Self {
        let mut words = BTreeMap::new();
        words.insert("okay_nabu".into(), RawWakeWord::default());
        RawWake {
            engines: vec!["micro".into()],
            words,
        }
    }
}

/// `[wake.words.NAME]`: one word's detection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawWakeWord {
    /// 0 = the model's own cutoff.
    pub threshold: f64,
    pub trigger_level: i64,
    pub refractory_ms: i64,
}

impl Default for RawWakeWord {
    fn default() -> Self {
        RawWakeWord {
            threshold: 0.0,
            trigger_level: 1,
            refractory_ms: 2000,
        }
    }
}

/// One `[engines.NAME]` table. Which keys apply depends on `kind`; the
/// resolver reports keys that the kind does not use.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RawEngine {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// `kind = "micro"`: openWakeWord's models for a second opinion ("": off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_opinion: Option<String>,
    /// Never allowed: present only so that a secret written into the file is
    /// caught and reported instead of silently ignored or used.
    #[serde(skip_serializing)]
    pub api_key: Option<toml::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawHistory {
    pub path: String,
    pub busy_timeout_ms: i64,
    pub cleanup_after_days: i64,
    pub cleanup_action: String,
}

impl Default for RawHistory {
    fn default() -> Self {
        RawHistory {
            path: String::new(),
            busy_timeout_ms: 5000,
            cleanup_after_days: 0,
            cleanup_action: "archive".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawSync {
    pub url: String,
    pub token_env: String,
    pub token_file: String,
    pub ca_file: String,
    pub keepalive_s: i64,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            url: String::new(),
            token_env: "PICHAT_TOKEN".into(),
            token_file: String::new(),
            ca_file: String::new(),
            keepalive_s: 25,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawServer {
    pub listen: String,
    pub database: String,
    pub database_pool: i64,
    pub maintenance_interval_min: i64,
    pub read_connections: i64,
    pub llm_engines: Vec<String>,
    pub stt_engines: Vec<String>,
    pub tts_engines: Vec<String>,
    pub rate_limit_per_min: i64,
    pub max_connections: i64,
    pub max_connections_per_user: i64,
    pub max_handshakes: i64,
    pub max_handshakes_per_address: i64,
    pub header_timeout_s: i64,
    pub send_queue_kib: i64,
    pub read_budget_mib: i64,
    pub frame_timeout_s: i64,
    pub session_hours: i64,
    pub tls_cert: String,
    pub tls_key: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            database: String::new(),
            database_pool: 16,
            maintenance_interval_min: 60,
            read_connections: 4,
            llm_engines: vec!["home".into()],
            stt_engines: vec!["whisper".into()],
            tts_engines: vec!["piper".into(), "espeak".into()],
            rate_limit_per_min: 5,
            max_connections: 10000,
            max_connections_per_user: 64,
            max_handshakes: 512,
            max_handshakes_per_address: 64,
            header_timeout_s: 10,
            send_queue_kib: 1024,
            read_budget_mib: 64,
            frame_timeout_s: 20,
            session_hours: 720,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawLog {
    pub level: String,
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: "auto".into(),
        }
    }
}
