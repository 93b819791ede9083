//! `pichat run` as systemd sees it: sd_notify messages on a real
//! `$NOTIFY_SOCKET` (READY, WATCHDOG, RELOADING with MONOTONIC_USEC,
//! STOPPING), live reload on SIGHUP (a valid config applied, an invalid one
//! refused with its line; a reload in the middle of a turn lets the turn
//! finish with its engines and gives the next turn the new ones), SIGTERM
//! ending it cleanly.

mod common;

use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Env, wait_timeout};

struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind(path: &std::path::Path) -> Notify {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            sock,
            seen: Vec::new(),
        }
    }

    /// Waits for a message containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                self.seen.push(m.clone());
                if m.contains(needle) {
                    return m;
                }
            }
        }
        panic!("no {needle:?} from the daemon; it sent {:?}", self.seen);
    }
}

fn config(env: &Env, volume: &str, socket: &str) -> String {
    format!(
        "[audio]\ninput = \"wav:{}\"\noutput = \"wav:{}\"\nvolume = {volume}\n[ptt]\nsource = \"none\"\nsocket = \"{}\"\n[history]\npath = \"{}\"\n[log]\nformat = \"journald\"\n",
        env.path("in.wav").display(),
        env.path("out.wav").display(),
        env.path(socket).display(),
        env.path("h.db").display()
    )
}

#[test]
fn notify_watchdog_reload_and_stop() {
    let env = Env::new();
    env.write_silence("in.wav", 1600);
    env.write_config(&config(&env, "0.5", "a.sock"));
    let mut notify = Notify::bind(&env.path("notify.sock"));
    let mut daemon = common::KillOnDrop(
        env.cmd(&["run"])
            .env("NOTIFY_SOCKET", env.path("notify.sock"))
            .env("WATCHDOG_USEC", "400000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, log) = std::sync::mpsc::channel::<String>();
    let stderr = daemon.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let wait_log = |needle: &str| -> String {
        let end = Instant::now() + Duration::from_secs(10);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match log.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line with {needle:?}");
    };

    let ready = notify.wait_for("READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS="), "{ready}");
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    assert!(env.path("a.sock").exists());

    // An invalid edit: refused with its line, the daemon goes on.
    env.write_config(&config(&env, "5.0", "a.sock"));
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGHUP) };
    let reloading = notify.wait_for("RELOADING=1", Duration::from_secs(5));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let refused = wait_log("reload refused");
    assert!(
        refused.contains("pichat.toml:4: audio.volume: 5 is out of range"),
        "{refused}"
    );
    assert!(
        refused.starts_with("<3>"),
        "logged as an error for journald: {refused}"
    );
    notify.wait_for("READY=1", Duration::from_secs(5));
    assert!(env.path("a.sock").exists(), "old push-to-talk still armed");

    // A valid edit: applied live; push-to-talk moves to its new socket.
    env.write_config(&config(&env, "0.7", "b.sock"));
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGHUP) };
    notify.wait_for("RELOADING=1", Duration::from_secs(5));
    wait_log("config reloaded");
    notify.wait_for("READY=1", Duration::from_secs(5));
    assert!(env.path("b.sock").exists());
    assert!(!env.path("a.sock").exists());
    assert_eq!(env.run(&["ptt", "status"]).ok().trim(), "released");

    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    notify.wait_for("STOPPING=1", Duration::from_secs(5));
    let status = wait_timeout(&mut daemon.0, Duration::from_secs(10)).expect("stops on SIGTERM");
    assert!(status.success());
    assert!(!env.path("b.sock").exists());
}

#[test]
fn a_bad_config_at_start_is_one_clear_error() {
    let env = Env::new();
    env.write_config("[audio]\nvolume = \"loud\"\n");
    let r = env.run(&["run"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains("pichat.toml:2: audio.volume: wrong type"),
        "{}",
        r.stderr()
    );
}

#[test]
fn the_server_notifies_and_survives_a_reload() {
    let env = Env::new();
    let mut notify = Notify::bind(&env.path("notify.sock"));
    let mut server = common::KillOnDrop(
        env.cmd(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            env.path("server.db").to_str().unwrap(),
        ])
        .env("NOTIFY_SOCKET", env.path("notify.sock"))
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let ready = notify.wait_for("READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    unsafe { libc::kill(server.0.id() as i32, libc::SIGHUP) };
    notify.wait_for("RELOADING=1", Duration::from_secs(5));
    notify.wait_for("READY=1", Duration::from_secs(5));
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the server"
    );
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    notify.wait_for("STOPPING=1", Duration::from_secs(10));
    let status = wait_timeout(&mut server.0, Duration::from_secs(10)).expect("stops on SIGTERM");
    assert!(status.success());
}

/// The daemon's config with fake engines; `llm` names the LLM engine.
fn engines_config(env: &Env, stt: &str, llm: &str, llm_url: &str, tts: &str) -> String {
    format!(
        "{}[stt]\nengines = [\"s\"]\n[llm]\nengines = [\"{llm}\"]\n[tts]\nengines = [\"t\"]\n\
         [engines.s]\nkind = \"wyoming\"\nurl = \"{stt}\"\n\
         [engines.{llm}]\nkind = \"openai\"\nurl = \"{llm_url}\"\nmodel = \"{llm}-model\"\n\
         [engines.t]\nkind = \"wyoming\"\nurl = \"{tts}\"\n",
        config(env, "0.8", "ctl.sock")
    )
}

/// The messages of the newest conversation (none while there is none).
fn messages(env: &Env) -> Vec<serde_json::Value> {
    env.newest_conversation()
        .and_then(|c| c["messages"].as_array().cloned())
        .unwrap_or_default()
}

/// Waits until the newest conversation holds `n` messages.
async fn wait_messages(env: &Env, n: usize) -> Vec<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let m = messages(env);
        if m.len() >= n || Instant::now() > end {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reload while a turn is running: the turn ends with the engines it
/// started with, nothing dropped or cut; the next turn uses the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_mid_turn_keeps_the_turn_and_applies_to_the_next() {
    use common::fakes::{self, LlmMode, SttMode, TtsMode};
    let env = Env::new();
    env.write_silence("in.wav", 16_000);
    let stt = fakes::wyoming_stt(SttMode::Text("Which engine answers?".into())).await;
    let slow = fakes::llm(LlmMode::Tokens {
        tokens: ["The", " old", " engine", " answers", " this", " one."]
            .map(String::from)
            .to_vec(),
        gap: Duration::from_millis(250),
    })
    .await;
    let fast = fakes::llm(LlmMode::Tokens {
        tokens: ["The", " new", " one."].map(String::from).to_vec(),
        gap: Duration::ZERO,
    })
    .await;
    let tts = fakes::wyoming_tts(TtsMode::Tone { ms: 100 }).await;
    env.write_config(&engines_config(
        &env,
        &stt.tcp(),
        "old",
        &slow.url(),
        &tts.tcp(),
    ));
    let mut notify = Notify::bind(&env.path("notify.sock"));
    let mut daemon = common::KillOnDrop(
        env.cmd(&["run"])
            .env("NOTIFY_SOCKET", env.path("notify.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    notify.wait_for("READY=1", Duration::from_secs(10));

    let turn = |env: &Env| {
        assert_eq!(env.run(&["ptt", "press"]).code(), 0);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(env.run(&["ptt", "release"]).code(), 0);
    };
    turn(&env);
    // The old engine is streaming its answer (1.5 s of tokens): reload now.
    let end = Instant::now() + Duration::from_secs(10);
    while slow.count() == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slow.count(), 1, "the turn never reached the LLM");
    env.write_config(&engines_config(
        &env,
        &stt.tcp(),
        "new",
        &fast.url(),
        &tts.tcp(),
    ));
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGHUP) };
    notify.wait_for("RELOADING=1", Duration::from_secs(5));
    notify.wait_for("READY=1", Duration::from_secs(5));

    let m = wait_messages(&env, 2).await;
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0]["content"], "Which engine answers?");
    assert_eq!(m[1]["content"], "The old engine answers this one.");
    assert_eq!(m[1]["model_id"], "old-model");
    assert!(
        m[1]["metadata"]["interrupted"].is_null(),
        "the reload cut the turn: {:?}",
        m[1]
    );

    turn(&env);
    let m = wait_messages(&env, 4).await;
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(m[3]["content"], "The new one.");
    assert_eq!(m[3]["model_id"], "new-model");
    assert_eq!((slow.count(), fast.count()), (1, 1));

    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = wait_timeout(&mut daemon.0, Duration::from_secs(10)).expect("stops on SIGTERM");
    assert!(status.success());
}
