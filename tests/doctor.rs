//! `pichat doctor` against real parts: WAV "devices", fake engines that
//! speak the real protocols, the real chat server.

mod common;
mod server_support;

use pichat::bench::fakes::{self, LlmMode, SttMode, TtsMode};
use server_support::*;

/// The real chat server, fake engines speaking the real protocols, WAV
/// "devices", and a config pointing at them.
struct Rig {
    srv: TestServer,
    env: common::Env,
    stt: fakes::Fake,
    llm: fakes::Fake,
    tts: fakes::Fake,
    dead: u16,
}

impl Rig {
    async fn new() -> Rig {
        let srv = TestServer::start(engines(vec![])).await;
        let env = common::Env::new();
        env.write_silence("in.wav", 8000);
        std::fs::write(env.path("t.token"), srv.token("alice").await).unwrap();
        Rig {
            stt: fakes::wyoming_stt(SttMode::Text("".into())).await,
            llm: fakes::llm(LlmMode::Tokens {
                tokens: vec!["OK".into()],
                gap: std::time::Duration::ZERO,
            })
            .await,
            tts: fakes::wyoming_tts(TtsMode::Tone { ms: 100 }).await,
            dead: fakes::dead_port().await,
            srv,
            env,
        }
    }

    /// The config with these LLM engines, push-to-talk source and token file.
    fn config(&self, llms: &str, ptt: &str, token_file: &str) -> String {
        let env = &self.env;
        format!(
            "[audio]\ninput = \"wav:{}\"\noutput = \"wav:{}\"\n[ptt]\nsource = \"{ptt}\"\nsocket = \"{}\"\n[history]\npath = \"{}\"\n\
             [sync]\nurl = \"ws://{}/ws\"\ntoken_file = \"{}\"\n[stt]\nengines = [\"s\"]\n[llm]\nengines = [{llms}]\n[tts]\nengines = [\"t\"]\n\
             [engines.s]\nkind = \"wyoming\"\nurl = \"{}\"\n[engines.l]\nkind = \"openai\"\nurl = \"{}\"\n\
             [engines.dead]\nkind = \"openai\"\nurl = \"http://127.0.0.1:{}/v1\"\ntimeout_ms = 1000\n[engines.t]\nkind = \"wyoming\"\nurl = \"{}\"\n",
            env.path("in.wav").display(),
            env.path("out.wav").display(),
            env.path("ctl.sock").display(),
            env.path("h.db").display(),
            self.srv.addr,
            env.path(token_file).display(),
            self.stt.tcp(),
            self.llm.url(),
            self.dead,
            self.tts.tcp()
        )
    }

    /// Runs `pichat doctor`: (exit code, stdout).
    async fn doctor(&self) -> (i32, String) {
        let r = common::run_async(self.env.cmd(&["doctor"])).await;
        (r.code(), format!("{}{}", r.stdout(), r.stderr()))
    }
}

/// The row of the table that starts with `check`.
fn row<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(check))
        .unwrap_or_else(|| panic!("no {check} row:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_everything_and_fails_on_what_is_required() {
    let rig = Rig::new().await;
    rig.env
        .write_config(&rig.config("\"dead\", \"l\"", "none", "t.token"));
    let (code, out) = rig.doctor().await;
    assert_eq!(code, 0, "{out}");
    for check in [
        "config",
        "microphone",
        "speaker",
        "stt engine s",
        "llm engine l",
        "tts engine t",
        "chat server",
        "free disk",
        "history database",
    ] {
        let line = row(&out, check);
        assert!(line.contains(" ok "), "{line}");
    }
    // A fallback engine down is a warning; the only LLM down is a failure.
    assert!(row(&out, "llm engine dead").contains("warn"), "{out}");
    rig.env
        .write_config(&rig.config("\"dead\"", "none", "t.token"));
    let (code, out) = rig.doctor().await;
    assert_eq!(code, 1, "{out}");
    assert!(row(&out, "llm engine dead").contains("FAIL"), "{out}");
    rig.srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_bad_token_a_damaged_database_gpio_off_a_pi_and_a_bad_config() {
    let rig = Rig::new().await;
    // A token the server does not know: the server row says so; the daemon
    // works offline, so it is a warning, not a failure.
    std::fs::write(rig.env.path("wrong.token"), "not-a-token").unwrap();
    rig.env
        .write_config(&rig.config("\"l\"", "none", "wrong.token"));
    let (code, out) = rig.doctor().await;
    assert_eq!(code, 0, "{out}");
    let server = row(&out, "chat server");
    assert!(
        server.contains("warn") && server.contains("refused the token"),
        "{server}"
    );

    // A history file that is not a database: a failure naming the file.
    std::fs::write(rig.env.path("h.db"), vec![0x5a; 8192]).unwrap();
    let (code, out) = rig.doctor().await;
    assert_eq!(code, 1, "{out}");
    let db = row(&out, "history database");
    assert!(db.contains("FAIL") && db.contains("h.db"), "{db}");
    // ...and doctor left it as it was.
    assert_eq!(
        std::fs::read(rig.env.path("h.db")).unwrap(),
        vec![0x5a; 8192]
    );
    std::fs::remove_file(rig.env.path("h.db")).unwrap();

    // A GPIO button on a machine that is not a Pi: rppal's own error.
    rig.env
        .write_config(&rig.config("\"l\"", "gpio", "t.token"));
    let (code, out) = rig.doctor().await;
    assert_eq!(code, 1, "{out}");
    let gpio = row(&out, "push-to-talk (GPIO)");
    assert!(
        gpio.contains("FAIL") && gpio.contains("cannot use GPIO pin 17"),
        "{gpio}"
    );

    // A config that does not validate: its file and line, exit 1.
    let bad = rig
        .config("\"l\"", "none", "t.token")
        .replace("[history]\n", "[history]\nbusy_timeout_ms = \"soon\"\n");
    rig.env.write_config(&bad);
    let (code, out) = rig.doctor().await;
    assert_eq!(code, 1, "{out}");
    let config = row(&out, "config");
    assert!(
        config.contains("FAIL") && config.contains(".toml:"),
        "{config}"
    );
    rig.srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_warns_when_hands_free_meets_alsas_pulse_plugin() {
    let rig = Rig::new().await;
    let pulse = common::Pulse::start();
    let base = rig.config("\"l\"", "none", "t.token");
    let input = format!("input = \"wav:{}\"", rig.env.path("in.wav").display());
    let run = |cfg: String| {
        rig.env.write_config(&cfg);
        let mut c = rig.env.cmd(&["doctor"]);
        c.env("XDG_RUNTIME_DIR", pulse.runtime.path())
            .env("HOME", pulse.runtime.path());
        async move {
            let r = common::run_async(c).await;
            format!("{}{}", r.stdout(), r.stderr())
        }
    };
    // Hands-free through ALSA's pulse device: a warning pointing to pulse:.
    let out = run(format!(
        "{}[listen]\nmode = \"wake\"\n",
        base.replace(&input, "input = \"pulse\"")
    ))
    .await;
    let line = row(&out, "microphone while armed");
    assert!(
        line.contains("warn") && line.contains("\"pulse:\""),
        "{line}"
    );
    assert!(row(&out, "microphone").contains(" ok "), "{out}");
    // The server's own API, or the button only: no such warning.
    for cfg in [
        format!(
            "{}[listen]\nmode = \"wake\"\n",
            base.replace(&input, "input = \"pulse:\"")
        ),
        base.replace(&input, "input = \"pulse\""),
    ] {
        let out = run(cfg).await;
        assert!(!out.contains("microphone while armed"), "{out}");
        assert!(row(&out, "microphone").contains(" ok "), "{out}");
    }
    rig.srv.stop().await;
}
