//! `pichat doctor` against real parts: WAV "devices", fake engines that
//! speak the real protocols, the real chat server.

mod common;
mod server_support;

use pichat::bench::fakes::{self, LlmMode, SttMode, TtsMode};
use server_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_everything_and_fails_on_what_is_required() {
    let srv = TestServer::start(engines(vec![])).await;
    let env = common::Env::new();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(env.path("in.wav"), spec).unwrap();
    (0..8000).for_each(|_| w.write_sample(0i16).unwrap());
    w.finalize().unwrap();
    let tf = env.path("t.token");
    std::fs::write(&tf, srv.token("alice").await).unwrap();
    let stt = fakes::wyoming_stt(SttMode::Text("".into())).await;
    let llm = fakes::llm(LlmMode::Tokens {
        tokens: vec!["OK".into()],
        gap: std::time::Duration::ZERO,
    })
    .await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 100 }).await;
    let dead = fakes::dead_port().await;
    let config = |llms: &str| {
        format!(
            "[audio]\ninput = \"wav:{}\"\noutput = \"wav:{}\"\n[ptt]\nsource = \"none\"\nsocket = \"{}\"\n[history]\npath = \"{}\"\n\
             [sync]\nurl = \"ws://{}/ws\"\ntoken_file = \"{}\"\n[stt]\nengines = [\"s\"]\n[llm]\nengines = [{llms}]\n[tts]\nengines = [\"t\"]\n\
             [engines.s]\nkind = \"wyoming\"\nurl = \"{}\"\n[engines.l]\nkind = \"openai\"\nurl = \"{}\"\n\
             [engines.dead]\nkind = \"openai\"\nurl = \"http://127.0.0.1:{dead}/v1\"\ntimeout_ms = 1000\n[engines.t]\nkind = \"wyoming\"\nurl = \"{}\"\n",
            env.path("in.wav").display(),
            env.path("out.wav").display(),
            env.path("ctl.sock").display(),
            env.path("h.db").display(),
            srv.addr,
            tf.display(),
            stt.tcp(),
            llm.url(),
            tts.tcp()
        )
    };
    env.write_config(&config("\"dead\", \"l\""));
    let r = common::run_async(env.cmd(&["doctor"])).await;
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    for row in [
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
        let line = out
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row:\n{out}"));
        assert!(line.contains(" ok "), "{line}");
    }
    // A fallback engine down is a warning; the only LLM down is a failure.
    assert!(
        out.lines()
            .any(|l| l.starts_with("llm engine dead") && l.contains("warn")),
        "{out}"
    );
    env.write_config(&config("\"dead\""));
    let r = common::run_async(env.cmd(&["doctor"])).await;
    assert_eq!(r.code(), 1);
    assert!(
        r.stdout()
            .lines()
            .any(|l| l.starts_with("llm engine dead") && l.contains("FAIL")),
        "{}",
        r.stdout()
    );
    srv.stop().await;
}
