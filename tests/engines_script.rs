//! `scripts/engines.sh` starts and stops what it says it does: the real
//! script, run on spare ports against stub engines in a private
//! `ENGINES_DIR`. Each stub is a wrapper (bash) around a child that holds the
//! port, as a venv entry point around Python would be, so a stop that only
//! ends the wrapper leaves the port held and fails these tests.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The stub's listener: binds 127.0.0.1:PORT and accepts until killed,
/// answering each connection with an HTTP status line (200 unless argv[2]
/// says otherwise: llama-server's /health is 503 while its model loads).
const LISTEN_PY: &str = r#"import socket, sys
status = sys.argv[2] if len(sys.argv) > 2 else "200 OK"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    try:
        c.sendall(("HTTP/1.0 " + status + "\r\nContent-Length: 0\r\n\r\n").encode())
    except OSError:
        pass
    c.close()
"#;

/// An engine command: finds its port in `--port N` or `--uri tcp://H:N`,
/// then runs the listener as a child and waits (it does not `exec`);
/// `ENGINES_DIR` comes from the environment engines.sh was given.
const STUB: &str = r#"#!/bin/bash
port=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=$2; shift ;;
    --uri) port=${2##*:}; shift ;;
  esac
  shift
done
python3 "$ENGINES_DIR/listen.py" "$port" &
wait
"#;

/// A llama-server that opens its port, answers 503 while "loading", then
/// dies of a segmentation fault in its first decode (as ggml's AMX kernels
/// did on a virtual machine).
const CRASHING_LLAMA: &str = r#"#!/bin/bash
port=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=$2; shift ;;
  esac
  shift
done
python3 "$ENGINES_DIR/listen.py" "$port" "503 Service Unavailable" &
sleep 1
echo "init: llama threadpool init, n_threads = 1" >&2
kill $!
wait
kill -SEGV $$
"#;

struct Engines {
    dir: tempfile::TempDir,
    /// llama, whisper, piper, fws, localtts
    ports: [u16; 5],
    oww_port: u16,
}

const NAMES: [&str; 5] = ["llama", "whisper", "piper", "fws", "localtts"];
const PORT_VARS: [&str; 5] = [
    "LLAMA_PORT",
    "WHISPER_PORT",
    "PIPER_PORT",
    "FWS_PORT",
    "LOCALTTS_PORT",
];

impl Engines {
    fn new() -> Engines {
        let dir = tempfile::Builder::new()
            .prefix("pichat-engines-")
            .tempdir()
            .unwrap();
        let e = dir.path();
        std::fs::write(e.join("listen.py"), LISTEN_PY).unwrap();
        for rel in [
            "bin/llama-server",
            "venv/bin/python",
            "venv/bin/wyoming-faster-whisper",
            "venv/bin/wyoming-piper",
            "venv/bin/faster-whisper-server",
            "venv/bin/local-tts",
        ] {
            write_exe(&e.join(rel), STUB);
        }
        Engines {
            dir,
            ports: std::array::from_fn(|_| spare_port()),
            oww_port: spare_port(),
        }
    }

    fn script(&self, arg: &str, with_openai: bool) -> Output {
        let mut c = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/engines.sh"));
        c.arg(arg).env("ENGINES_DIR", self.dir.path());
        for (var, port) in PORT_VARS.iter().zip(self.ports) {
            c.env(var, port.to_string());
        }
        c.env("WITH_OPENAI", if with_openai { "1" } else { "0" });
        // The wake-word service is not stubbed: keep `stop` off the real
        // one's port (CI runs it) with a port nothing listens on.
        c.env("OWW_PORT", self.oww_port.to_string());
        c.output().unwrap()
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("run").join(format!("{name}.pid"))
    }

    /// Processes whose command line names this `ENGINES_DIR`.
    fn ours(&self) -> Vec<(u32, String)> {
        let marker = self.dir.path().to_str().unwrap().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // Zombies have an empty command line; they hold no port.
            if cmd.contains(&marker) {
                found.push((pid, cmd));
            }
        }
        found
    }

    /// Waits (up to 10 s) until no process of ours is left.
    fn wait_none_left(&self) -> Vec<(u32, String)> {
        let t0 = Instant::now();
        loop {
            let left = self.ours();
            if left.is_empty() || t0.elapsed() > Duration::from_secs(10) {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        // Whatever a failed test left behind.
        for (pid, _) in self.ours() {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A port the kernel just gave out and released, never one handed to
/// another test of this run (the tests run side by side, and a released
/// port can come back from the next `bind(0)`).
fn spare_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn write_exe(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn stop_ends_every_engine_it_started() {
    let e = Engines::new();
    let out = e.script("start", true);
    assert!(out.status.success(), "{}", text(&out));
    for (name, port) in NAMES.iter().zip(e.ports) {
        assert!(open(port), "{name} not listening on {port}\n{}", text(&out));
        // The recorded pid is the engine's own: it leads its process group.
        let pid: i32 = std::fs::read_to_string(e.pid_file(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmd = String::from_utf8_lossy(&cmd);
        assert!(cmd.contains("/bin/"), "{name}: pid {pid} is `{cmd}`");
        if *name == "whisper" {
            // As many threads as cores (its own default, 4, overloads 2).
            let cores = Command::new("nproc").output().unwrap().stdout;
            let cores = String::from_utf8_lossy(&cores).trim().to_string();
            assert!(
                cmd.replace('\0', " ")
                    .contains(&format!("--cpu-threads {cores} ")),
                "{cmd}"
            );
        }
        assert_eq!(unsafe { libc::getpgid(pid) }, pid, "{name}: own group");
    }
    let status = e.script("status", true);
    assert!(status.status.success(), "{}", text(&status));
    assert_eq!(
        String::from_utf8_lossy(&status.stdout)
            .matches(": up on")
            .count(),
        5,
        "{}",
        text(&status)
    );

    let out = e.script("stop", false);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in NAMES {
        assert!(
            stdout.contains(&format!("{name}: stopped (pid ")),
            "{name}\n{}",
            text(&out)
        );
    }
    let left = e.wait_none_left();
    assert!(left.is_empty(), "left running: {left:?}\n{}", text(&out));
    for (name, port) in NAMES.iter().zip(e.ports) {
        assert!(!open(port), "{name} still holds {port}");
        assert!(!e.pid_file(name).exists());
    }
    let status = e.script("status", true);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert_eq!(
        String::from_utf8_lossy(&status.stdout)
            .matches(": down")
            .count(),
        5,
        "{}",
        text(&status)
    );
    // Stopping again is harmless and says nothing is stopped.
    let again = e.script("stop", false);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!String::from_utf8_lossy(&again.stdout).contains("stopped"));
}

#[test]
fn stop_finds_an_engine_of_ours_without_a_pid_file() {
    let e = Engines::new();
    let out = e.script("start", false);
    assert!(out.status.success(), "{}", text(&out));
    // What an older engines.sh left: the pid file gone, the engine running.
    std::fs::remove_file(e.pid_file("llama")).unwrap();
    // And a pid file naming a process that is long gone.
    std::fs::write(e.pid_file("piper"), "999999999\n").unwrap();

    let out = e.script("stop", false);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("llama: stopped pid")
            && stdout.contains(&format!("found on port {} without a pid file", e.ports[0])),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("whisper: stopped (pid "), "{}", text(&out));
    assert!(
        stdout.contains("piper: its pid file named a process that is gone"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("piper: stopped pid"),
        "the piper engine is found on its port too\n{}",
        text(&out)
    );
    let left = e.wait_none_left();
    assert!(left.is_empty(), "left running: {left:?}\n{}", text(&out));
    for port in &e.ports[..3] {
        assert!(!open(*port), "port {port} still held");
    }
}

#[test]
fn a_program_not_ours_on_an_engine_port_is_left_alone() {
    let e = Engines::new();
    // Something else (this test) holds the whisper port.
    let foreign = TcpListener::bind(("127.0.0.1", e.ports[1])).unwrap();
    let out = e.script("start", false);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "whisper: port {} is in use by pid {}",
            e.ports[1],
            std::process::id()
        )),
        "{}",
        text(&out)
    );
    assert!(!e.pid_file("whisper").exists());

    let out = e.script("stop", false);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "whisper: port {} is held by pid {}",
            e.ports[1],
            std::process::id()
        )) && stdout.contains("not an engine of ours; left alone"),
        "{}",
        text(&out)
    );
    // Ours are gone, the foreign listener still accepts.
    assert!(e.wait_none_left().is_empty());
    assert!(!open(e.ports[0]) && !open(e.ports[2]));
    foreign.set_nonblocking(false).unwrap();
    let _c = TcpStream::connect(("127.0.0.1", e.ports[1])).unwrap();
    assert!(foreign.accept().is_ok());
}

#[test]
fn start_fails_when_an_engine_dies_before_it_is_ready() {
    let e = Engines::new();
    write_exe(&e.dir.path().join("bin/llama-server"), CRASHING_LLAMA);
    let out = e.script("start", false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "llama exited (killed by signal 11: a segmentation fault) before it was ready; see "
        ),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("llama threadpool init"),
        "the tail of its log\n{}",
        text(&out)
    );
    assert!(!e.pid_file("llama").exists());
    // One that died later (during the tests) leaves its pid file: status
    // says so with the end of its log.
    std::fs::write(e.pid_file("llama"), "999999999\n").unwrap();
    let status = e.script("status", false);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains("llama: down: it exited after it started; the end of ")
            && stdout.contains("    init: llama threadpool init"),
        "{}",
        text(&status)
    );
    let out = e.script("stop", false);
    assert!(out.status.success(), "{}", text(&out));
    assert!(e.wait_none_left().is_empty());
}
