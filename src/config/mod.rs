//! The configuration: where the file is, how it is read, and how every problem
//! in it is reported as `FILE:LINE: key.path: what is wrong (what is allowed)`.
//!
//! Reading happens in three steps: the TOML is parsed with spans (so every key
//! has a line), mirrored by serde into [`raw::RawConfig`] (collecting unknown
//! keys and type errors), then validated into the typed [`Config`].

pub mod paths;
pub mod raw;
pub mod resolve;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use raw::RawConfig;
pub use resolve::*;

/// Keys every `[engines.NAME]` table may carry (which ones a kind uses is in
/// [`resolve::engine_keys`]).
const ALL_ENGINE_KEYS: &[&str] = &[
    "kind",
    "url",
    "model",
    "timeout_ms",
    "api_key_env",
    "api_key_file",
    "api_version",
    "command",
    "voice",
    "temperature",
    "max_tokens",
    "language",
    "format",
    "models",
    "library",
    "second_opinion",
];

/// How the config file was chosen (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    Flag,
    Env,
    Default,
}

/// A problem with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// The config could not be used. Displays one line per problem.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Located>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let file = self.path.display();
            match (p.line, p.key.is_empty()) {
                (Some(l), false) => write!(f, "{file}:{l}: {}: {}", p.key, p.message)?,
                (Some(l), true) => write!(f, "{file}:{l}: {}", p.message)?,
                (None, false) => write!(f, "{file}: {}: {}", p.key, p.message)?,
                (None, true) => write!(f, "{file}: {}", p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A loaded and validated config.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub exists: bool,
    pub raw: RawConfig,
    pub config: Config,
}

/// Picks the config file: `--config`, else `$PICHAT_CONFIG`, else the default.
pub fn locate(flag: Option<&Path>) -> (PathBuf, ConfigOrigin) {
    if let Some(p) = flag {
        return (p.to_path_buf(), ConfigOrigin::Flag);
    }
    match std::env::var_os("PICHAT_CONFIG") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), ConfigOrigin::Env),
        _ => (paths::default_config_file(), ConfigOrigin::Default),
    }
}

/// Loads the config named by `--config`/`$PICHAT_CONFIG`/the default path.
/// A missing file is the built-in defaults, unless it was named explicitly.
pub fn load(flag: Option<&Path>) -> Result<Loaded, ConfigError> {
    let (path, origin) = locate(flag);
    load_file(&path, origin != ConfigOrigin::Default)
}

/// Loads one file. `must_exist`: a missing file is an error rather than defaults.
pub fn load_file(path: &Path, must_exist: bool) -> Result<Loaded, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => None,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (create it from config/pichat.toml, or leave out --config/PICHAT_CONFIG for the defaults)"
            } else {
                ""
            };
            return Err(ConfigError {
                path: path.to_path_buf(),
                problems: vec![Located {
                    line: None,
                    key: String::new(),
                    message: format!("cannot read the config file: {e}{hint}"),
                }],
            });
        }
    };
    let exists = text.is_some();
    let (raw, config) = parse_str(text.as_deref().unwrap_or(""), path)?;
    Ok(Loaded {
        path: path.to_path_buf(),
        exists,
        raw,
        config,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Maps every dotted key path in the document to the line it is written on.
fn key_lines(
    text: &str,
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    out: &mut HashMap<String, usize>,
) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.insert(path.clone(), line_of(text, k.span().start));
        if let toml::de::DeValue::Table(t) = v.get_ref() {
            key_lines(text, t, &path, out);
        }
    }
}

/// The line of `key`, or of its nearest written parent.
fn find_line(lines: &HashMap<String, usize>, key: &str) -> Option<usize> {
    let mut k = key;
    loop {
        if let Some(l) = lines.get(k) {
            return Some(*l);
        }
        k = &k[..k.rfind('.')?];
    }
}

/// Removes the value at a dotted path (so deserialization can go on past it).
fn remove_path(table: &mut toml::Table, path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut t = table;
    for p in parts {
        match t.get_mut(p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return false,
        }
    }
    t.remove(last).is_some()
}

/// The keys a section knows, for "unknown key" messages.
fn known_keys(section: &str) -> Vec<String> {
    if section.starts_with("engines.") {
        return ALL_ENGINE_KEYS.iter().map(|s| s.to_string()).collect();
    }
    if section.starts_with("wake.words.") {
        return ["threshold", "trigger_level", "refractory_ms"]
            .map(String::from)
            .to_vec();
    }
    let Ok(defaults) = toml::Table::try_from(RawConfig::default()) else {
        return vec![];
    };
    if section.is_empty() {
        return defaults.keys().cloned().collect();
    }
    match defaults.get(section) {
        Some(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => vec![],
    }
}

/// Parses and validates config text. `path` is only used in messages.
pub fn parse_str(text: &str, path: &Path) -> Result<(RawConfig, Config), ConfigError> {
    let fail = |problems| ConfigError {
        path: path.to_path_buf(),
        problems,
    };
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        fail(vec![Located {
            line: e.span().map(|s| line_of(text, s.start)),
            key: String::new(),
            message: format!("not valid TOML: {}", e.message().trim()),
        }])
    })?;
    let mut lines = HashMap::new();
    key_lines(text, doc.get_ref(), "", &mut lines);
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        fail(vec![Located {
            line: e.span().map(|s| line_of(text, s.start)),
            key: String::new(),
            message: format!("not valid TOML: {}", e.message().trim()),
        }])
    })?;

    let mut problems: Vec<Located> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut raw = None;
    for _ in 0..64 {
        unknown.clear();
        let mut note = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
        let de = serde_ignored::Deserializer::new(table.clone(), &mut note);
        match serde_path_to_error::deserialize::<_, RawConfig>(de) {
            Ok(r) => {
                raw = Some(r);
                break;
            }
            Err(e) => {
                let key = e.path().to_string();
                let msg = e.inner().message().trim().to_string();
                problems.push(Located {
                    line: find_line(&lines, &key),
                    key: key.clone(),
                    message: format!("wrong type: {msg}"),
                });
                if !remove_path(&mut table, &key) {
                    return Err(fail(problems));
                }
            }
        }
    }
    let Some(mut raw) = raw else {
        return Err(fail(problems));
    };
    for key in unknown {
        let section = key.rsplit_once('.').map(|(s, _)| s).unwrap_or("");
        let known = known_keys(section);
        let place = if section.is_empty() {
            "top-level tables".to_string()
        } else {
            format!("[{section}]")
        };
        problems.push(Located {
            line: find_line(&lines, &key),
            key,
            message: format!("unknown key (known keys in {place}: {})", known.join(", ")),
        });
    }
    // Keys that exist but mean nothing for the engine's kind.
    for (name, e) in &raw.engines {
        let allowed = resolve::engine_keys(&e.kind);
        if allowed.is_empty() {
            continue; // a bad kind is reported by the resolver
        }
        if let Some(toml::Value::Table(engines)) = table.get("engines")
            && let Some(toml::Value::Table(t)) = engines.get(name)
        {
            for k in t.keys() {
                if k != "kind"
                    && k != "api_key"
                    && ALL_ENGINE_KEYS.contains(&k.as_str())
                    && !allowed.contains(&k.as_str())
                {
                    let key = format!("engines.{name}.{k}");
                    problems.push(Located {
                        line: find_line(&lines, &key),
                        key,
                        message: format!(
                            "not used by kind \"{}\" (keys for {}: kind, {})",
                            e.kind,
                            e.kind,
                            allowed.join(", ")
                        ),
                    });
                }
            }
        }
    }
    for (name, e) in raw::default_engines() {
        raw.engines.entry(name).or_insert(e);
    }
    match resolve::resolve(&raw) {
        Ok(cfg) if problems.is_empty() => Ok((raw, cfg)),
        Ok(_) => Err(fail(problems)),
        Err(more) => {
            problems.extend(more.into_iter().map(|p| Located {
                line: find_line(&lines, &p.key),
                key: p.key,
                message: p.message,
            }));
            problems.sort_by_key(|p| p.line.unwrap_or(0));
            Err(fail(problems))
        }
    }
}

/// The effective config as TOML, with resolved paths filled in and secrets
/// shown only by their source.
pub fn show(loaded: &Loaded) -> String {
    let mut raw = loaded.raw.clone();
    let cfg = &loaded.config;
    raw.history.path = cfg.history.path.display().to_string();
    raw.server.database = cfg.server.database.display().to_string();
    raw.ptt.socket = cfg.ptt.socket.display().to_string();
    let mut out = format!(
        "# effective config, from {}{}\n",
        loaded.path.display(),
        if loaded.exists {
            ""
        } else {
            " (not present: built-in defaults)"
        }
    );
    for (name, e) in &cfg.engines {
        if let EngineKind::OpenAi { api_key, .. } = &e.kind
            && *api_key != SecretSource::None
        {
            out.push_str(&format!(
                "# engines.{name} api key: {}\n",
                api_key.describe()
            ));
        }
    }
    if cfg.sync.url.is_some() {
        out.push_str(&format!("# sync token: {}\n", cfg.sync.token.describe()));
    }
    out.push('\n');
    out.push_str(
        &toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# cannot print: {e}\n")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(RawConfig, Config), ConfigError> {
        parse_str(text, Path::new("t.toml"))
    }

    #[test]
    fn empty_is_defaults() {
        let (raw, cfg) = check("").unwrap();
        assert_eq!(raw, RawConfig::default());
        assert_eq!(cfg, resolve::resolve(&RawConfig::default()).unwrap());
    }

    #[test]
    fn shipped_example_equals_defaults() {
        let text = include_str!("../../config/pichat.toml");
        let (raw, _) = check(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(raw, RawConfig::default());
    }

    #[test]
    fn server_limits_at_their_bounds_and_one_past() {
        let at = "[server]\nmax_connections_per_user = 1\nmax_handshakes = 1\n\
                  max_handshakes_per_address = 1\nheader_timeout_s = 300\nsend_queue_kib = 16\n\
                  read_budget_mib = 1\nframe_timeout_s = 600\n";
        let (_, c) = check(at).unwrap_or_else(|e| panic!("{e}"));
        let s = &c.server;
        assert_eq!(
            (
                s.max_connections_per_user,
                s.max_handshakes,
                s.max_handshakes_per_address
            ),
            (1, 1, 1)
        );
        assert_eq!(s.header_timeout, std::time::Duration::from_secs(300));
        assert_eq!(
            (s.send_queue_bytes, s.read_budget_bytes),
            (16 << 10, 1 << 20)
        );
        assert_eq!(s.frame_timeout, std::time::Duration::from_secs(600));
        for (key, past) in [
            ("max_connections_per_user", "0"),
            ("max_handshakes", "0"),
            ("max_handshakes_per_address", "0"),
            ("header_timeout_s", "301"),
            ("send_queue_kib", "15"),
            ("read_budget_mib", "0"),
            ("frame_timeout_s", "601"),
        ] {
            let err = check(&format!("[server]\n{key} = {past}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("t.toml:2: server.{key}: {past} is out of range")),
                "{err}"
            );
        }
    }

    #[test]
    fn web_app_settings_at_their_bounds_and_one_past() {
        let (_, c) = check("[server]\nsession_hours = 8784\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.server.session_ttl,
            std::time::Duration::from_secs(8784 * 3600)
        );
        let (_, c) = check("[server]\nsession_hours = 1\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.session_ttl, std::time::Duration::from_secs(3600));
        for past in ["0", "8785"] {
            let err = check(&format!("[server]\nsession_hours = {past}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "t.toml:2: server.session_hours: {past} is out of range"
                )),
                "{err}"
            );
        }
        let (_, c) = check("[server]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n").unwrap();
        assert_eq!(
            c.server.tls,
            Some(resolve::TlsFiles {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        let err = check("[server]\ntls_cert = \"/c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.tls_key: server.tls_cert is set but server.tls_key is not"),
            "{err}"
        );
    }

    #[test]
    fn problems_have_lines() {
        let text = "[audio]\nvolume = 2.0\nvolum = 1\n\n[ptt]\ngpio_pin = \"x\"\nmode = \"x\"\n";
        let err = check(text).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(
            lines[0].starts_with("t.toml:2: audio.volume: 2 is out of range"),
            "{err}"
        );
        assert!(
            lines[1].starts_with("t.toml:3: audio.volum: unknown key (known keys in [audio]: "),
            "{err}"
        );
        assert!(
            lines[2].starts_with("t.toml:6: ptt.gpio_pin: wrong type"),
            "{err}"
        );
        assert!(
            lines[3].starts_with("t.toml:7: ptt.mode: \"x\" is not valid (allowed: hold, toggle)"),
            "{err}"
        );
    }

    #[test]
    fn the_second_opinion_is_on_where_installed_and_can_be_named_or_off() {
        let micro = |toml: &str| match check(toml).unwrap().1.engines["micro"].kind.clone() {
            EngineKind::Micro { second_opinion, .. } => second_opinion,
            other => panic!("{other:?}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().display().to_string();
        let s = micro(&format!(
            "[engines.micro]\nkind = \"micro\"\nmodels = \"{models}\"\n"
        ));
        assert_eq!(
            s,
            SecondOpinion::IfInstalled(dir.path().join("openwakeword"))
        );
        assert_eq!(s.dir(), None, "not installed: off");
        std::fs::create_dir(dir.path().join("openwakeword")).unwrap();
        std::fs::write(dir.path().join("openwakeword/melspectrogram.tflite"), b"").unwrap();
        assert_eq!(s.dir(), Some(dir.path().join("openwakeword").as_path()));
        let s = micro("[engines.micro]\nkind = \"micro\"\nsecond_opinion = \"\"\n");
        assert_eq!((s.clone(), s.dir()), (SecondOpinion::Off, None));
        // Named: used, so that a wrong path is an error when it opens.
        let s = micro("[engines.micro]\nkind = \"micro\"\nsecond_opinion = \"/nowhere\"\n");
        assert_eq!(s.dir(), Some(Path::new("/nowhere")));
        let err =
            check("[engines.w]\nkind = \"wyoming\"\nurl = \"tcp://h:1\"\nsecond_opinion = \"x\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("t.toml:4: engines.w.second_opinion:"),
            "{err}"
        );
    }

    #[test]
    fn pulse_is_a_microphone_only() {
        let c = check("[audio]\ninput = \"pulse:mic.monitor\"\n").unwrap();
        assert_eq!(
            c.1.audio.input,
            DeviceSpec::Pulse(Some("mic.monitor".into()))
        );
        let c = check("[audio]\ninput = \"pulse:\"\n").unwrap();
        assert_eq!(c.1.audio.input, DeviceSpec::Pulse(None));
        // The ALSA plugin's device keeps its name.
        let c = check("[audio]\ninput = \"pulse\"\n").unwrap();
        assert_eq!(c.1.audio.input, DeviceSpec::Named("pulse".into()));
        let err = check("[audio]\n\noutput = \"pulse:\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.toml:3: audio.output: `pulse:` is for the microphone only"),
            "{err}"
        );
        let err = check("[audio]\ninput = \"pulse:a\\u0007b\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:2: audio.input: "), "{err}");
        assert!(err.contains("control characters"), "{err}");
    }

    #[test]
    fn syntax_error_has_line() {
        let err = check("[audio]\nvolume = = 1\n").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:2: not valid TOML"), "{err}");
    }

    #[test]
    fn secrets_in_file_are_refused() {
        let err = check("[engines.cloud]\nkind = \"openai\"\nurl = \"https://api.openai.com/v1\"\napi_key = \"sk-123\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:4: engines.cloud.api_key: secrets are not allowed"),
            "{err}"
        );
        assert!(!err.contains("sk-123"));
    }

    #[test]
    fn engine_keys_follow_kind() {
        let err = check("[engines.espeak]\nkind = \"command\"\ncommand = [\"espeak-ng\"]\nurl = \"tcp://x:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:4: engines.espeak.url: not used by kind \"command\""),
            "{err}"
        );
    }

    #[test]
    fn user_engines_merge_with_builtins() {
        let (raw, cfg) = check("[llm]\nengines = [\"mine\"]\n[engines.mine]\nkind = \"openai\"\nurl = \"http://h:1/v1\"\n").unwrap();
        assert!(raw.engines.contains_key("whisper"));
        assert!(cfg.engines.contains_key("mine"));
    }

    #[test]
    fn drafts_are_on_by_default_and_bounded() {
        let (_, cfg) = check("").unwrap();
        assert_eq!(cfg.listen.draft, std::time::Duration::from_millis(350));
        let (_, cfg) = check("[listen]\ndraft_ms = 0\n").unwrap();
        assert!(cfg.listen.draft.is_zero());
        let err = check("[listen]\ndraft_ms = 10001\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:2: listen.draft_ms: 10001 is out of range (allowed: 0..=10000)"),
            "{err}"
        );
    }

    #[test]
    fn listen_and_wake_keys_at_and_past_their_limits() {
        let ok = "[listen]\nmode = \"wake\"\nsilence_ms = 10000\nmin_speech_ms = 0\nno_speech_timeout_s = 60.0\nmax_listen_s = 1.0\nfollow_up_s = 60.0\nvad_threshold = 0.99\necho_tail_ms = 1000\n[wake.words.okay_nabu]\nthreshold = 0.999\ntrigger_level = 50\nrefractory_ms = 60000\n";
        let (_, cfg) = check(ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.listen.silence, std::time::Duration::from_secs(10));
        assert_eq!(cfg.listen.mode, ListenMode::Wake);
        assert_eq!(cfg.wake.words["okay_nabu"].trigger_level, 50);
        let past = "[listen]\nmode = \"always\"\nsilence_ms = 10001\nmin_speech_ms = -1\nno_speech_timeout_s = 60.5\nmax_listen_s = 0.5\nfollow_up_s = 61\nvad_threshold = 1.0\necho_tail_ms = 1001\n[wake.words.okay_nabu]\nthreshold = 1.0\ntrigger_level = 51\nrefractory_ms = 60001\nloud = 1\n";
        let err = check(past).unwrap_err().to_string();
        for (line, key) in [
            (
                2,
                "listen.mode: \"always\" is not valid (allowed: button, wake, both)",
            ),
            (3, "listen.silence_ms: 10001 is out of range"),
            (4, "listen.min_speech_ms: -1 is out of range"),
            (5, "listen.no_speech_timeout_s: 60.5 is out of range"),
            (6, "listen.max_listen_s: 0.5 is out of range"),
            (7, "listen.follow_up_s: 61"),
            (8, "listen.vad_threshold: 1 is out of range"),
            (9, "listen.echo_tail_ms: 1001 is out of range"),
            (11, "wake.words.okay_nabu.threshold: 1 is out of range"),
            (12, "wake.words.okay_nabu.trigger_level: 51 is out of range"),
            (
                13,
                "wake.words.okay_nabu.refractory_ms: 60001 is out of range",
            ),
            (
                14,
                "wake.words.okay_nabu.loud: unknown key (known keys in [wake.words.okay_nabu]: threshold, trigger_level, refractory_ms)",
            ),
        ] {
            assert!(
                err.contains(&format!("t.toml:{line}: {key}")),
                "{key}:\n{err}"
            );
        }
        // A wake word engine of a kind that cannot listen for one.
        let err = check("[listen]\nmode = \"both\"\n[wake]\nengines = [\"home\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:4: wake.engines: engine \"home\" has kind \"openai\", which cannot do this stage (allowed kinds: micro, wyoming)"),
            "{err}"
        );
    }

    #[test]
    fn show_redacts() {
        // SAFETY: test-only env var with a unique name.
        unsafe { std::env::set_var("PICHAT_TEST_SHOW_KEY", "sk-very-secret") };
        let text = "[engines.cloud]\nkind = \"openai\"\nurl = \"https://api.openai.com/v1\"\napi_key_env = \"PICHAT_TEST_SHOW_KEY\"\n";
        let (raw, config) = check(text).unwrap();
        let loaded = Loaded {
            path: "t.toml".into(),
            exists: true,
            raw,
            config,
        };
        let shown = show(&loaded);
        assert!(
            shown.contains("env PICHAT_TEST_SHOW_KEY (set, redacted)"),
            "{shown}"
        );
        assert!(!shown.contains("sk-very-secret"));
    }
}
