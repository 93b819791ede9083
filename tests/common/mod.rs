//! Helpers shared by the integration tests: run the real `pichat` binary in
//! an isolated environment (its own HOME, config and data directories).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("pichat-test-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("pichat.toml"), "").unwrap();
        Env { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.path("pichat.toml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    /// The `pichat` command with this environment (not yet run).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pichat"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .env("XDG_RUNTIME_DIR", self.path("xdg-run"))
            .env("PICHAT_CONFIG", self.config());
        for var in ["RUST_LOG"] {
            if let Some(v) = std::env::var_os(var) {
                c.env(var, v);
            }
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run(self.cmd(args).output().unwrap())
    }

    /// Writes `samples` of 16 kHz mono silence to `name` (a `wav:` microphone).
    pub fn write_silence(&self, name: &str, samples: usize) {
        pichat::audio::wav::write(&self.path(name), &vec![0; samples], 16_000).unwrap();
    }

    /// The newest conversation of `h.db` with its messages, as
    /// `pichat history show --json` prints it; `None` while there is none.
    pub fn newest_conversation(&self) -> Option<serde_json::Value> {
        let db = self.path("h.db");
        let db = db.to_str().unwrap();
        let list = self.run(&["history", "--db", db, "list", "--json"]).json();
        let id = list["conversations"][0]["id"].as_str()?.to_string();
        Some(
            self.run(&["history", "--db", db, "show", &id, "--json"])
                .json(),
        )
    }
}

pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout(), self.stderr()))
    }
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "stdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    /// Asserts exit code 1 with a one-line error on stderr containing `needle`.
    pub fn fails_with(&self, needle: &str) {
        let err = self.stderr();
        assert_eq!(self.code(), 1, "stdout: {}\nstderr: {err}", self.stdout());
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    }
}

/// Bytes of a database and its WAL/SHM files, to prove a failure changed nothing.
pub fn db_bytes(db: &Path) -> Vec<Option<Vec<u8>>> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| std::fs::read(format!("{}{s}", db.display())).ok())
        .collect()
}

pub fn sample_history() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sample-history.json")
}

#[allow(unused_imports)]
pub use pichat::bench::fakes;

/// Runs a command off the async runtime (the fakes keep serving meanwhile).
pub async fn run_async(mut cmd: Command) -> Run {
    tokio::task::spawn_blocking(move || Run(cmd.output().unwrap()))
        .await
        .unwrap()
}

/// Waits for a child to exit; kills it after `d`.
pub fn wait_timeout(child: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// A private PulseAudio with two null sinks, `mic` and `spk`; killed on drop.
pub struct Pulse {
    pub runtime: tempfile::TempDir,
}

impl Pulse {
    pub fn start() -> Pulse {
        let runtime = tempfile::Builder::new()
            .prefix("pichat-pulse-")
            .tempdir()
            .unwrap();
        let pa = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/alsa/pulse-null-sinks.pa");
        let st = Command::new("pulseaudio")
            .args([
                "-n",
                "-F",
                pa.to_str().unwrap(),
                "--daemonize=yes",
                "--exit-idle-time=-1",
                "--log-target=stderr",
            ])
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("HOME", runtime.path())
            .stderr(Stdio::null())
            .status()
            .expect("pulseaudio is installed (scripts/deps.sh --test)");
        assert!(st.success(), "pulseaudio did not start");
        let p = Pulse { runtime };
        for _ in 0..100 {
            if p.cmd("pactl")
                .arg("info")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return p;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pulseaudio did not answer");
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("HOME", self.runtime.path());
        c
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.cmd("pactl").args(["exit"]).status();
    }
}

/// A child process killed when the test ends, even by a panic (so it never
/// outlives the test holding its output pipes).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemon's log, read line by line on a thread.
pub struct Log {
    lines: std::sync::mpsc::Receiver<String>,
    pub all: Vec<String>,
}

impl Log {
    pub fn new(stderr: std::process::ChildStderr) -> Log {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        Log {
            lines: rx,
            all: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        self.try_wait_for(needle, within).unwrap_or_else(|| {
            panic!(
                "no log line with {needle:?}; the daemon said:\n{}",
                self.all.join("\n")
            )
        })
    }

    /// Waits for a line containing `needle`; `None` if none came in time.
    pub fn try_wait_for(&mut self, needle: &str, within: Duration) -> Option<String> {
        let end = std::time::Instant::now() + within;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.all.push(l.clone());
                    if l.contains(needle) {
                        return Some(l);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }
}

/// Plays 16 kHz mono samples into the virtual microphone `mic` in real
/// time (blocks until done).
pub fn play_into_mic(pulse: &Pulse, pcm: &[i16]) {
    play_into_mic_buffered(pulse, pcm, 20)
}

/// The same with `latency_ms` of the player's buffer: more for tests that
/// count every sample, so that a busy machine does not make the player
/// run dry (the sound server then plays silence into the microphone).
pub fn play_into_mic_buffered(pulse: &Pulse, pcm: &[i16], latency_ms: u32) {
    let latency = format!("--latency-msec={latency_ms}");
    let raw: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut p = pulse
        .cmd("pacat")
        .args([
            latency.as_str(),
            "-p",
            "--raw",
            "--format=s16le",
            "--rate=16000",
            "--channels=1",
            "-d",
            "mic",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(p.stdin.as_mut().unwrap(), &raw).unwrap();
    drop(p.stdin.take());
    let secs = pcm.len() as u64 / 16_000 + 30;
    assert!(wait_timeout(&mut p, Duration::from_secs(secs)).is_some_and(|s| s.success()));
}

/// Speech by espeak-ng (`voice`, words per minute), as 16 kHz mono.
pub fn espeak(text: &str, voice: &str, wpm: u32) -> Vec<i16> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.wav");
    let ok = Command::new("espeak-ng")
        .args([
            "-v",
            voice,
            "-s",
            &wpm.to_string(),
            "-w",
            p.to_str().unwrap(),
            text,
        ])
        .status()
        .expect("espeak-ng is installed (scripts/setup-local-engines.sh)")
        .success();
    assert!(ok, "espeak-ng failed");
    wav_16k(&p)
}

/// A WAV file as 16 kHz mono samples.
pub fn wav_16k(p: &Path) -> Vec<i16> {
    let clip = pichat::audio::wav::read(p).unwrap();
    pichat::audio::wav::frames_of(&clip).unwrap().concat()
}

/// `ms` of silence at 16 kHz.
pub fn silence(ms: u64) -> Vec<i16> {
    vec![0; (ms * 16) as usize]
}

impl Pulse {
    /// The room: what is played on `spk` leaks into `mic` at `percent`
    /// of its level (a PulseAudio loopback, 20 ms).
    pub fn leak_speaker_into_mic(&self, percent: u32) {
        let out = self
            .cmd("pactl")
            .args([
                "load-module",
                "module-loopback",
                "source=spk.monitor",
                "sink=mic",
                "latency_msec=20",
                "source_dont_move=true",
                "sink_dont_move=true",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "loopback: {out:?}");
        let module = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // The loopback's stream into `mic`, by its owner module.
        for _ in 0..100 {
            let list = self
                .cmd("pactl")
                .args(["list", "sink-inputs"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&list.stdout).into_owned();
            let mut index = None;
            for block in text.split("Sink Input #").skip(1) {
                if block.contains(&format!("Owner Module: {module}")) {
                    index = block.lines().next().map(|l| l.trim().to_string());
                }
            }
            if let Some(i) = index {
                let st = self
                    .cmd("pactl")
                    .args(["set-sink-input-volume", &i, &format!("{percent}%")])
                    .status()
                    .unwrap();
                assert!(st.success());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no loopback stream appeared");
    }
}
