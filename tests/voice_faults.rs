//! The voice turn through the real `pichat ask`, against fake engines that
//! speak the real protocols (SSE over HTTP, Wyoming over TCP) and misbehave
//! on cue: refused connections, 5xx and 4xx answers, stalls mid-stream,
//! garbage, empty transcripts.

mod common;

use std::time::Duration;

use common::fakes::{self, LlmMode, SttMode, TtsMode};
use common::{Env, run_async};

fn tokens(s: &[&str]) -> LlmMode {
    LlmMode::Tokens {
        tokens: s.iter().map(|x| x.to_string()).collect(),
        gap: Duration::from_millis(5),
    }
}

/// A config with the given engine tables; `[llm]`, `[stt]`, `[tts]` name them.
fn config(env: &Env, engines: &[(&str, String)], stt: &[&str], llm: &[&str], tts: &[&str]) {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut c = format!(
        "[history]\npath = \"{}\"\n[ptt]\nsource = \"none\"\nsocket = \"{}\"\n[stt]\nengines = [{}]\n[llm]\nengines = [{}]\n[tts]\nengines = [{}]\n",
        env.path("h.db").display(),
        env.path("ctl.sock").display(),
        list(stt),
        list(llm),
        list(tts)
    );
    for (name, body) in engines {
        c.push_str(&format!("[engines.{name}]\n{body}\n"));
    }
    env.write_config(&c);
}

fn openai(url: &str, timeout_ms: u64) -> String {
    format!("kind = \"openai\"\nurl = \"{url}\"\nmodel = \"fake-model\"\ntimeout_ms = {timeout_ms}")
}

fn wyoming(url: &str, timeout_ms: u64) -> String {
    format!("kind = \"wyoming\"\nurl = \"{url}\"\ntimeout_ms = {timeout_ms}")
}

fn history(env: &Env) -> serde_json::Value {
    env.newest_conversation().expect("a conversation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_falls_back_past_refused_and_5xx() {
    let env = Env::new();
    let dead = fakes::dead_port().await;
    let five = fakes::llm(LlmMode::Status(503)).await;
    let good = fakes::llm(tokens(&["Paris", " is", " the", " capital."])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 300 }).await;
    config(
        &env,
        &[
            ("dead", openai(&format!("http://127.0.0.1:{dead}/v1"), 2000)),
            ("five", openai(&five.url(), 2000)),
            ("good", openai(&good.url(), 2000)),
            ("voice", wyoming(&tts.tcp(), 2000)),
        ],
        &["whisper"],
        &["dead", "five", "good"],
        &["voice"],
    );
    let out = env.path("reply.wav");
    let r = run_async(env.cmd(&[
        "ask",
        "What is the capital?",
        "--out",
        out.to_str().unwrap(),
    ]))
    .await;
    let stdout = r.ok();
    assert!(
        stdout.contains("assistant: Paris is the capital."),
        "{stdout}"
    );
    assert_eq!((five.count(), good.count()), (1, 1));
    let h = history(&env);
    let m = h["messages"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["role"], "user");
    assert_eq!(m[0]["content"], "What is the capital?");
    assert!(m[0].get("is_audio").is_none(), "typed, not spoken");
    assert_eq!(m[1]["content"], "Paris is the capital.");
    assert_eq!(m[1]["model_id"], "fake-model");
    assert_eq!(m[1]["tokens_used"], 4);
    assert_eq!(m[1]["reply_to"], m[0]["id"]);
    assert!(m[1]["response_time_ms"].as_i64().unwrap() >= 0);
    // The spoken reply is in the file: 300 ms of tone at least.
    let reader = hound::WavReader::open(&out).unwrap();
    assert!(reader.duration() as f64 / reader.spec().sample_rate as f64 >= 0.29);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_reported_not_retried() {
    let env = Env::new();
    let bad = fakes::llm(LlmMode::Status(400)).await;
    let good = fakes::llm(tokens(&["never"])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("bad", openai(&bad.url(), 2000)),
            ("good", openai(&good.url(), 2000)),
            ("voice", wyoming(&tts.tcp(), 2000)),
        ],
        &["whisper"],
        &["bad", "good"],
        &["voice"],
    );
    let r =
        run_async(env.cmd(&["ask", "hello", "--out", env.path("o.wav").to_str().unwrap()])).await;
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("HTTP 400"), "{}", r.stderr());
    assert_eq!(good.count(), 0, "a 4xx is not retried on the next engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_first_llm_moves_on() {
    let env = Env::new();
    let junk = fakes::llm(LlmMode::Garbage).await;
    let good = fakes::llm(tokens(&["Fine."])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("junk", openai(&junk.url(), 2000)),
            ("good", openai(&good.url(), 2000)),
            ("voice", wyoming(&tts.tcp(), 2000)),
        ],
        &["whisper"],
        &["junk", "good"],
        &["voice"],
    );
    let r =
        run_async(env.cmd(&["ask", "hello", "--out", env.path("o.wav").to_str().unwrap()])).await;
    assert!(r.ok().contains("assistant: Fine."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_line_from_the_first_llm_is_refused_and_the_next_answers() {
    let env = Env::new();
    let endless = fakes::llm(LlmMode::EndlessLine).await;
    let good = fakes::llm(tokens(&["Fine."])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("endless", openai(&endless.url(), 2000)),
            ("good", openai(&good.url(), 2000)),
            ("voice", wyoming(&tts.tcp(), 2000)),
        ],
        &["whisper"],
        &["endless", "good"],
        &["voice"],
    );
    let r =
        run_async(env.cmd(&["ask", "hello", "--out", env.path("o.wav").to_str().unwrap()])).await;
    assert!(r.ok().contains("assistant: Fine."));
    assert!(
        r.stderr()
            .contains("endless: an event of the stream is over 1048576 bytes"),
        "{}",
        r.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_mid_stream_keeps_what_was_said() {
    let env = Env::new();
    let stall = fakes::llm(LlmMode::StallAfter(vec![
        "The first sentence.".into(),
        " And then".into(),
    ]))
    .await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("stall", openai(&stall.url(), 700)),
            ("voice", wyoming(&tts.tcp(), 2000)),
        ],
        &["whisper"],
        &["stall"],
        &["voice"],
    );
    let r = run_async(env.cmd(&[
        "ask",
        "tell me",
        "--out",
        env.path("o.wav").to_str().unwrap(),
    ]))
    .await;
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("no answer within 0.7 s"),
        "{}",
        r.stderr()
    );
    let h = history(&env);
    let m = h["messages"].as_array().unwrap();
    assert_eq!(m.len(), 2, "the partial reply is stored");
    assert_eq!(m[1]["content"], "The first sentence. And then");
    assert_eq!(m[1]["metadata"]["interrupted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stt_falls_back_when_one_stalls_and_tts_when_one_dies() {
    let env = Env::new();
    let slow = fakes::wyoming_stt(SttMode::Stall).await;
    let ok = fakes::wyoming_stt(SttMode::Text(" What is the capital of France?".into())).await;
    let llm = fakes::llm(tokens(&["Paris."])).await;
    let broken = fakes::wyoming_tts(TtsMode::Close).await;
    let voice = fakes::wyoming_tts(TtsMode::Tone { ms: 100 }).await;
    config(
        &env,
        &[
            ("slow", wyoming(&slow.tcp(), 800)),
            ("ok", wyoming(&ok.tcp(), 2000)),
            ("llm", openai(&llm.url(), 2000)),
            ("broken", wyoming(&broken.tcp(), 2000)),
            ("voice", wyoming(&voice.tcp(), 2000)),
        ],
        &["slow", "ok"],
        &["llm"],
        &["broken", "voice"],
    );
    let wav = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/question.wav");
    let r = run_async(env.cmd(&[
        "ask",
        "--wav",
        wav,
        "--out",
        env.path("o.wav").to_str().unwrap(),
    ]))
    .await;
    let out = r.ok();
    assert!(out.contains("you: What is the capital of France?"), "{out}");
    assert!(out.contains("assistant: Paris."), "{out}");
    assert_eq!((slow.count(), ok.count()), (1, 1));
    assert!(broken.count() >= 1 && voice.count() == 1);
    let h = history(&env);
    assert_eq!(h["messages"][0]["is_audio"], true);
    assert_eq!(h["messages"][0]["origin"], "voice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_transcript_never_reaches_the_llm() {
    let env = Env::new();
    let stt = fakes::wyoming_stt(SttMode::Text("  ".into())).await;
    let llm = fakes::llm(tokens(&["no"])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("s", wyoming(&stt.tcp(), 2000)),
            ("l", openai(&llm.url(), 2000)),
            ("t", wyoming(&tts.tcp(), 2000)),
        ],
        &["s"],
        &["l"],
        &["t"],
    );
    let wav = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/question.wav");
    let r = run_async(env.cmd(&[
        "ask",
        "--wav",
        wav,
        "--out",
        env.path("o.wav").to_str().unwrap(),
    ]))
    .await;
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("nothing was heard"), "{}", r.stderr());
    assert_eq!(llm.count(), 0);
    assert_eq!(stt.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_stt_and_no_engine_left_is_an_error_not_a_crash() {
    let env = Env::new();
    let junk = fakes::wyoming_stt(SttMode::Garbage).await;
    let llm = fakes::llm(tokens(&["no"])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("s", wyoming(&junk.tcp(), 2000)),
            ("l", openai(&llm.url(), 2000)),
            ("t", wyoming(&tts.tcp(), 2000)),
        ],
        &["s"],
        &["l"],
        &["t"],
    );
    let wav = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/question.wav");
    let r = run_async(env.cmd(&[
        "ask",
        "--wav",
        wav,
        "--out",
        env.path("o.wav").to_str().unwrap(),
    ]))
    .await;
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("bad event header"), "{}", r.stderr());
    assert_eq!(llm.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speech_to_text_engine_that_is_not_there_ends_the_turn_not_hangs_it() {
    let env = Env::new();
    let dead = fakes::dead_port().await;
    let llm = fakes::llm(tokens(&["no"])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("s", wyoming(&format!("tcp://127.0.0.1:{dead}"), 2000)),
            ("l", openai(&llm.url(), 2000)),
            ("t", wyoming(&tts.tcp(), 2000)),
        ],
        &["s"],
        &["l"],
        &["t"],
    );
    let wav = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/question.wav");
    let mut ask = env.cmd(&[
        "ask",
        "--wav",
        wav,
        "--out",
        env.path("o.wav").to_str().unwrap(),
    ]);
    // The session fails while the recording is still being read: the turn
    // must end then, not wait for a transcript that cannot come.
    let r = tokio::task::spawn_blocking(move || {
        let mut child = ask
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let ended = common::wait_timeout(&mut child, Duration::from_secs(60));
        assert!(ended.is_some(), "pichat ask still waits after 60 s");
        common::Run(child.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.stderr().contains("pichat: error: "), "{}", r.stderr());
    assert!(r.stderr().contains(&dead.to_string()), "{}", r.stderr());
    assert_eq!(llm.count(), 0);
}

/// A WAV header with every field given, then `data`.
fn wav_with(channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let align = channels * bits.div_ceil(8);
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&rate.wrapping_mul(align as u32).to_le_bytes());
    b.extend_from_slice(&align.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_wav_files_are_refused_from_the_header_by_transcribe_and_ask() {
    let env = Env::new();
    let stt = fakes::wyoming_stt(SttMode::Text("never".into())).await;
    let llm = fakes::llm(tokens(&["no"])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("s", wyoming(&stt.tcp(), 2000)),
            ("l", openai(&llm.url(), 2000)),
            ("t", wyoming(&tts.tcp(), 2000)),
        ],
        &["s"],
        &["l"],
        &["t"],
    );
    std::fs::write(
        env.config(),
        std::fs::read_to_string(env.config())
            .unwrap()
            .replace("[stt]\n", "[stt]\nmax_seconds = 2\n"),
    )
    .unwrap();
    let cases = [
        (
            "rate.wav",
            wav_with(1, 4_294_967_291, 8, &[128; 8192]),
            "sample rate 4294967291 Hz is out of range",
        ),
        (
            "one-hz.wav",
            wav_with(1, 1, 16, &vec![0; 400_000]),
            "sample rate 1 Hz is out of range",
        ),
        (
            "long.wav",
            wav_with(1, 16_000, 16, &vec![0; 16_000 * 2 * 3]),
            "duration 3.0 s is over the limit of 2 s (stt.max_seconds)",
        ),
    ];
    for (name, bytes, expect) in cases {
        let f = env.path(name);
        std::fs::write(&f, &bytes).unwrap();
        let r = run_async(env.cmd(&["transcribe", f.to_str().unwrap()])).await;
        assert_eq!(r.code(), 1, "transcribe {name}: {}", r.stderr());
        assert!(
            r.stderr().contains(expect),
            "transcribe {name}: {}",
            r.stderr()
        );
        assert!(
            r.stderr().contains(name),
            "the file is named: {}",
            r.stderr()
        );
        let r = run_async(env.cmd(&[
            "ask",
            "--wav",
            f.to_str().unwrap(),
            "--out",
            env.path("o.wav").to_str().unwrap(),
        ]))
        .await;
        assert_eq!(r.code(), 1, "ask --wav {name}: {}", r.stderr());
        assert!(
            r.stderr().contains(expect),
            "ask --wav {name}: {}",
            r.stderr()
        );
    }
    assert_eq!(stt.count(), 0, "nothing reached the engine");
    // At the limit it goes through.
    let f = env.path("two.wav");
    std::fs::write(&f, wav_with(2, 44_100, 16, &vec![0; 44_100 * 4 * 2])).unwrap();
    let r = run_async(env.cmd(&["transcribe", f.to_str().unwrap()])).await;
    assert_eq!(r.ok().trim(), "never");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tts_engine_claiming_a_hostile_format_is_skipped_for_the_next() {
    let env = Env::new();
    let huge = fakes::wyoming_tts(TtsMode::Claims {
        rate: 4_294_967_291,
        channels: 1,
        ms: 100,
    })
    .await;
    let wide = fakes::wyoming_tts(TtsMode::Claims {
        rate: 22_050,
        channels: 1_000_000,
        ms: 100,
    })
    .await;
    let good = fakes::wyoming_tts(TtsMode::Tone { ms: 200 }).await;
    let llm = fakes::llm(tokens(&["Fine."])).await;
    config(
        &env,
        &[
            ("l", openai(&llm.url(), 2000)),
            ("huge", wyoming(&huge.tcp(), 2000)),
            ("wide", wyoming(&wide.tcp(), 2000)),
            ("good", wyoming(&good.tcp(), 2000)),
        ],
        &["whisper"],
        &["l"],
        &["huge", "wide", "good"],
    );
    let out = env.path("said.wav");
    let r = run_async(env.cmd(&["say", "Hello there.", "--out", out.to_str().unwrap()])).await;
    let err = r.stderr();
    assert_eq!(r.code(), 0, "{err}");
    assert!(
        err.contains("sample rate 4294967291 Hz is out of range"),
        "{err}"
    );
    assert!(err.contains("channels 1000000 is out of range"), "{err}");
    assert_eq!((huge.count(), wide.count(), good.count()), (1, 1, 1));
    let reader = hound::WavReader::open(&out).unwrap();
    assert_eq!(reader.spec().sample_rate, 22_050);
    assert!(reader.duration() >= 22_050 / 5 - 10);
}

/// The conversation the Pi continues is the one last active on any device
/// (here: written by the web app, as the sync stored it), when recent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_turn_continues_the_conversation_last_active_on_the_web() {
    use pichat::history::{NewConversation, NewMessage, OpenOptions, Role, Store};
    let env = Env::new();
    let llm = fakes::llm(tokens(&["Sure."])).await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 50 }).await;
    config(
        &env,
        &[
            ("good", openai(&llm.url(), 2000)),
            ("voice", wyoming(&tts.tcp(), 2000)),
        ],
        &["whisper"],
        &["good"],
        &["voice"],
    );
    let now = pichat::time::now_ms();
    let (old, web) = {
        let mut s = Store::open(&env.path("h.db"), &OpenOptions::default()).unwrap();
        let mut add = |title: &str, at: i64| {
            let c = s
                .create_conversation(NewConversation {
                    title: Some(title.into()),
                    created_at: Some(at),
                    ..Default::default()
                })
                .unwrap();
            let mut m = NewMessage::new(&c.id, Role::User, format!("{title} question"));
            m.created_at = Some(at);
            m.origin = pichat::history::Origin::Web;
            s.append_message(m).unwrap();
            c.id
        };
        (
            add("Old one", now - 3_600_000),
            add("Typed on the web", now - 60_000),
        )
    };
    let ask = |args: &[&str]| {
        let mut a = vec!["ask"];
        a.extend_from_slice(args);
        env.cmd(&a)
    };
    let out = env.path("o.wav");
    let r = run_async(ask(&["and then?", "--out", out.to_str().unwrap()])).await;
    r.ok();
    let h = history(&env);
    assert_eq!(
        h["conversation"]["id"],
        web.as_str(),
        "the web's conversation goes on: {h}"
    );
    assert_eq!(h["messages"].as_array().unwrap().len(), 3, "{h}");
    // --new starts one, whatever was active.
    let r = run_async(ask(&["new topic", "--new", "--out", out.to_str().unwrap()])).await;
    r.ok();
    let h = history(&env);
    assert_ne!(h["conversation"]["id"], web.as_str());
    assert_ne!(h["conversation"]["id"], old.as_str());
    assert_eq!(h["messages"][0]["content"], "new topic");
}
