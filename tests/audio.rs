//! Audio through real cpal, on virtual ALSA devices (the `file` plugin, see
//! tests/alsa/alsa-test.conf) and a private headless PulseAudio for what
//! needs real-time pacing. Runs the real `pichat` binary.

mod common;

use std::f64::consts::PI;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Env, Pulse, Run, wait_timeout};

fn alsa_conf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/alsa/alsa-test.conf")
}

/// `pichat` with the test ALSA config and the given infile/outfile.
fn alsa_run(env: &Env, args: &[&str], infile: Option<&Path>, outfile: Option<&Path>) -> Run {
    let mut c = env.cmd(args);
    c.env("ALSA_CONFIG_PATH", alsa_conf());
    if let Some(i) = infile {
        c.env("ALSA_TEST_INFILE", i);
    }
    if let Some(o) = outfile {
        c.env("ALSA_TEST_OUTFILE", o);
    }
    Run(c.output().unwrap())
}

/// Three tones well inside the 8 kHz band, faded in over 10 ms.
fn signal(t: f64) -> f64 {
    let fade = (t / 0.01).min(1.0);
    fade * (0.25 * (2.0 * PI * 440.0 * t).sin()
        + 0.2 * (2.0 * PI * 1234.5 * t).sin()
        + 0.1 * (2.0 * PI * 3001.7 * t).sin())
}

fn write_raw_f32(path: &Path, samples: impl Iterator<Item = f64>) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for s in samples {
        f.write_all(&(s as f32).to_le_bytes()).unwrap();
    }
}

fn write_raw_s16(path: &Path, samples: impl Iterator<Item = f64>) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for s in samples {
        f.write_all(&((s * 32767.0).round() as i16).to_le_bytes())
            .unwrap();
    }
}

fn read_wav(path: &Path) -> (u32, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let rate = r.spec().sample_rate;
    let s = r.samples::<i16>().map(|x| x.unwrap()).collect();
    (rate, s)
}

fn db(err_power: f64, signal_power: f64) -> f64 {
    10.0 * (err_power / signal_power).log10()
}

#[test]
fn captured_48k_stereo_matches_the_reference_at_16k() {
    let env = Env::new();
    let infile = env.path("in48.raw");
    // 4 s of 48 kHz stereo f32, which is what the device offers by default
    // (the file plugin hands the raw file over in the format the app opened
    // it with); left and right differ, their mono mix is `signal`.
    let n = 48_000 * 4;
    write_raw_f32(
        &infile,
        (0..n).flat_map(|i| {
            let t = i as f64 / 48_000.0;
            let s = signal(t);
            let d = 0.05 * (2.0 * PI * 700.0 * t).sin();
            [s + d, s - d]
        }),
    );
    let out = env.path("rec.wav");
    alsa_run(
        &env,
        &[
            "record",
            "--seconds",
            "2",
            "--input",
            "alsa:test_capture",
            out.to_str().unwrap(),
        ],
        Some(&infile),
        None,
    )
    .ok();
    let (rate, got) = read_wav(&out);
    assert_eq!(rate, 16_000);
    assert_eq!(got.len(), 32_000, "exactly 2 s of 16 kHz samples");
    let reference: Vec<f64> = (0..got.len())
        .map(|i| signal(i as f64 / 16_000.0))
        .collect();
    let (mut e, mut p) = (0.0, 0.0);
    for (g, r) in got.iter().zip(&reference) {
        e += (*g as f64 / 32768.0 - r).powi(2);
        p += r * r;
    }
    let err = db(e, p);
    assert!(
        err < -60.0,
        "capture differs from the reference by {err:.1} dB"
    );
}

#[test]
fn a_1khz_tone_keeps_its_frequency_from_48k_to_16k() {
    let env = Env::new();
    let infile = env.path("tone48.raw");
    write_raw_s16(
        &infile,
        (0..48_000 * 3).flat_map(|i| {
            let s = 0.4 * (2.0 * PI * 1000.0 * i as f64 / 48_000.0).sin();
            [s, s]
        }),
    );
    let out = env.path("tone.wav");
    alsa_run(
        &env,
        &[
            "record",
            "--seconds",
            "2",
            "--input",
            "test_capture_48k_stereo",
            out.to_str().unwrap(),
        ],
        Some(&infile),
        None,
    )
    .ok();
    let (_, got) = read_wav(&out);
    // Frequency from the time between the first and last rising zero crossing.
    let ups: Vec<f64> = got
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0 && w[1] >= 0)
        .map(|(i, w)| i as f64 + (-w[0] as f64) / (w[1] as f64 - w[0] as f64))
        .collect();
    let hz = (ups.len() - 1) as f64 / ((ups[ups.len() - 1] - ups[0]) / 16_000.0);
    assert!((hz - 1000.0).abs() < 0.5, "the tone came out at {hz:.3} Hz");
    let peak = got.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!((13_000..=13_300).contains(&peak), "level kept: peak {peak}");
}

#[test]
fn playback_writes_exactly_what_was_queued() {
    let env = Env::new();
    let wav = env.path("q.wav");
    let pcm: Vec<i16> = (0..12_345)
        .map(|i| ((i * 37 % 2000) as i16 - 1000) * 9)
        .collect();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    pcm.iter().for_each(|s| w.write_sample(*s).unwrap());
    w.finalize().unwrap();
    let out = env.path("played.wav");
    alsa_run(
        &env,
        &[
            "play",
            "--output",
            "test_playback",
            "--volume",
            "1.0",
            wav.to_str().unwrap(),
        ],
        None,
        Some(&out),
    )
    .ok();
    let (rate, got) = read_wav(&out);
    assert_eq!(rate, 16_000, "the device took the audio at its own rate");
    assert!(got.len() >= pcm.len());
    assert_eq!(
        &got[..pcm.len()],
        &pcm[..],
        "played samples differ from the queued ones"
    );
    assert!(
        got[pcm.len()..].iter().all(|&s| s == 0),
        "only silence after the queue ran out"
    );
}

#[test]
fn wav_files_work_as_microphone_and_speaker() {
    let env = Env::new();
    let src = env.path("src.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 22_050,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&src, spec).unwrap();
    for i in 0..22_050 {
        let s = (signal(i as f64 / 22_050.0) * 32767.0) as i16;
        w.write_sample(s).unwrap();
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let rec = env.path("rec.wav");
    env.run(&[
        "record",
        "--seconds",
        "1",
        "--input",
        &format!("wav:{}", src.display()),
        rec.to_str().unwrap(),
    ])
    .ok();
    let (rate, got) = read_wav(&rec);
    assert_eq!((rate, got.len()), (16_000, 16_000));
    let out = env.path("spoken.wav");
    env.run(&[
        "play",
        "--output",
        &format!("wav:{}", out.display()),
        "--volume",
        "1",
        rec.to_str().unwrap(),
    ])
    .ok();
    let (_, played) = read_wav(&out);
    assert_eq!(played, got);
}

#[test]
fn unknown_device_lists_the_available_ones() {
    let env = Env::new();
    let r = alsa_run(
        &env,
        &[
            "record",
            "--seconds",
            "1",
            "--input",
            "no-such-mic",
            env.path("x.wav").to_str().unwrap(),
        ],
        None,
        None,
    );
    r.fails_with("no input device named \"no-such-mic\"; available: ");
    assert!(r.stderr().contains("alsa:test_capture"), "{}", r.stderr());
    let r = alsa_run(
        &env,
        &[
            "play",
            "--output",
            "no-such-speaker",
            env.path("x.wav").to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code(), 1);
}

#[test]
fn a_wav_that_is_not_pcm_is_refused() {
    let env = Env::new();
    // A valid RIFF/WAVE header with format tag 7 (mu-law).
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36u32 + 800).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&7u16.to_le_bytes()); // mu-law
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&800u32.to_le_bytes());
    b.extend(std::iter::repeat_n(0xffu8, 800));
    let p = env.path("ulaw.wav");
    std::fs::write(&p, b).unwrap();
    env.run(&[
        "play",
        "--output",
        &format!("wav:{}", env.path("o.wav").display()),
        p.to_str().unwrap(),
    ])
    .fails_with("not a PCM WAV");
    let junk = env.path("junk.wav");
    std::fs::write(&junk, "hello").unwrap();
    env.run(&["play", junk.to_str().unwrap()])
        .fails_with("junk.wav");
}

#[test]
fn gpio_off_a_pi_and_bad_pins_are_explained() {
    let env = Env::new();
    env.write_config(&format!(
        "[ptt]\nsource = \"gpio\"\nsocket = \"{}\"\n",
        env.path("s.sock").display()
    ));
    let r = env.run(&["ptt", "monitor"]);
    r.fails_with("GPIO pin 17");
    assert!(
        r.stderr().contains("ptt.source = \"keyboard\""),
        "{}",
        r.stderr()
    );
    let bad = env.path("bad.toml");
    std::fs::write(&bad, "[ptt]\ngpio_pin = 54\n").unwrap();
    let r = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stdout()
            .contains(":2: ptt.gpio_pin: 54 is out of range (allowed: 0..=53)"),
        "{}",
        r.stdout()
    );
}

#[test]
fn unwritable_socket_path_is_explained() {
    let env = Env::new();
    env.write_config("[ptt]\nsource = \"none\"\nsocket = \"/proc/pichat-test/ctl.sock\"\n");
    let r = env.run(&["ptt", "monitor"]);
    r.fails_with("control socket /proc/pichat-test/ctl.sock");
    assert!(r.stderr().contains("ptt.socket"), "{}", r.stderr());
    env.run(&["ptt", "press"])
        .fails_with("is `pichat run` running");
}

#[test]
fn control_socket_drives_push_to_talk() {
    let env = Env::new();
    let sock = env.path("run/ctl.sock");
    env.write_config(&format!(
        "[ptt]\nsource = \"none\"\nsocket = \"{}\"\n",
        sock.display()
    ));
    let mut monitor = env
        .cmd(&["ptt", "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    assert_eq!(env.run(&["ptt", "press"]).ok().trim(), "pressed");
    assert_eq!(env.run(&["ptt", "status"]).ok().trim(), "pressed");
    assert_eq!(env.run(&["ptt", "toggle"]).ok().trim(), "released");
    assert_eq!(env.run(&["ptt", "release"]).ok().trim(), "released");
    // SIGTERM ends it cleanly, as systemd does.
    unsafe { libc::kill(monitor.id() as i32, libc::SIGTERM) };
    let status =
        wait_timeout(&mut monitor, Duration::from_secs(5)).expect("monitor stops on SIGTERM");
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(monitor.stdout.as_mut().unwrap(), &mut out).unwrap();
    let events: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(events, vec!["Pressed", "Released"], "{out}");
    assert!(!sock.exists(), "socket removed at exit");
}

#[test]
fn a_flush_silences_playback_at_once() {
    let pulse = Pulse::start();
    let env = Env::new();
    let tone = env.path("long.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&tone, spec).unwrap();
    for i in 0..16_000 * 10 {
        w.write_sample((0.5 * (2.0 * PI * 500.0 * i as f64 / 16_000.0).sin() * 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
    // Record the speaker for the whole test.
    let rec_path = env.path("spk.raw");
    let mut rec = pulse
        .cmd("parec")
        .args([
            "--latency-msec=20",
            "--raw",
            "--format=s16le",
            "--rate=16000",
            "--channels=1",
            "-d",
            "spk.monitor",
        ])
        .stdout(std::fs::File::create(&rec_path).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut play = env.cmd(&[
        "play",
        "--output",
        "pulse",
        "--volume",
        "1",
        tone.to_str().unwrap(),
    ]);
    play.env("XDG_RUNTIME_DIR", pulse.runtime.path());
    let mut play = play.stderr(Stdio::piped()).spawn().unwrap();
    // Wait until the tone is heard on the speaker (a fresh sound server
    // takes a moment to start), then let it play a little.
    let loud_in = |p: &Path| {
        let b = std::fs::read(p).unwrap_or_default();
        b.chunks_exact(2)
            .any(|c| i16::from_le_bytes([c[0], c[1]]).unsigned_abs() > 3000)
    };
    let waited = std::time::Instant::now();
    while !loud_in(&rec_path) && waited.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Ctrl-C during playback flushes the queue (barge-in path) and exits.
    unsafe { libc::kill(play.id() as i32, libc::SIGINT) };
    let status = wait_timeout(&mut play, Duration::from_secs(5)).expect("play stops on SIGINT");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(700));
    let _ = rec.kill();
    let _ = rec.wait();
    let bytes = std::fs::read(&rec_path).unwrap();
    let s: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    // Loudness per 10 ms block.
    let loud: Vec<bool> = s
        .chunks(160)
        .map(|b| b.iter().map(|x| x.unsigned_abs() as u32).max().unwrap_or(0) > 3000)
        .collect();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(play.stderr.as_mut().unwrap(), &mut err);
    let first = loud
        .iter()
        .position(|&l| l)
        .unwrap_or_else(|| {
            let peaks: Vec<u16> = s.chunks(800).map(|b| b.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0)).collect();
            panic!("the tone was not heard ({} samples recorded, peaks {peaks:?}); pichat play said: {err}", s.len())
        });
    let last = loud.iter().rposition(|&l| l).unwrap();
    let heard_s = (last - first + 1) as f64 * 0.01;
    assert!(
        heard_s > 0.5 && heard_s < 5.0,
        "heard {heard_s:.2} s of a 10 s tone before the flush"
    );
    assert!(
        loud[first..=last].iter().filter(|l| !**l).count() <= 3,
        "the tone played without gaps"
    );
    assert!(loud.len() > last + 30, "recording went on after the flush");
    assert!(
        loud[last + 1..].iter().all(|l| !l),
        "silence after the flush"
    );
}

/// A 500 Hz tone with a 25 ms silent mark every 500 ms.
fn marked_tone(secs: usize) -> Vec<i16> {
    (0..16_000 * secs)
        .map(|i| {
            if i % 8000 < 400 {
                0
            } else {
                (0.5 * (2.0 * PI * 500.0 * i as f64 / 16_000.0).sin() * 32767.0) as i16
            }
        })
        .collect()
}

/// Where the marks start: the first sample of each silent run of at least
/// 300 samples.
fn marks(s: &[i16]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut quiet = 0;
    for (i, x) in s.iter().enumerate() {
        if x.unsigned_abs() < 300 {
            quiet += 1;
            if quiet == 300 {
                out.push(i + 1 - 300);
            }
        } else {
            quiet = 0;
        }
    }
    out
}

/// `pichat record` from `input`, as a client of the private sound server.
fn record_from(
    env: &Env,
    pulse: &Pulse,
    input: &str,
    secs: u32,
    out: &Path,
) -> std::process::Command {
    let secs = secs.to_string();
    let mut c = env.cmd(&[
        "record",
        "--input",
        input,
        "--seconds",
        &secs,
        out.to_str().unwrap(),
    ]);
    c.env("XDG_RUNTIME_DIR", pulse.runtime.path())
        .env("HOME", pulse.runtime.path());
    c
}

#[test]
fn pulse_capture_hears_every_sample_through_the_servers_own_api() {
    let pulse = Pulse::start();
    let env = Env::new();
    let out = env.path("rec.wav");
    let tone = marked_tone(12);
    let mut rec = record_from(&env, &pulse, "pulse:mic.monitor", 5, &out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::play_into_mic_buffered(&pulse, &tone, 500);
    let status = wait_timeout(&mut rec, Duration::from_secs(20)).expect("record ends");
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(rec.stderr.as_mut().unwrap(), &mut err);
    assert!(status.success(), "{err}");
    assert!(err.contains("PulseAudio source mic.monitor"), "{err}");
    let (rate, s) = read_wav(&out);
    assert_eq!((rate, s.len()), (16_000, 80_000), "5 s at 16 kHz");
    // The tone's pitch survives (zero crossings over the loud part).
    let m = marks(&s);
    assert!(m.len() >= 8, "marks heard: {m:?}");
    let span = &s[m[1] + 400..m[1] + 8000];
    let crossings = span.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let hz = crossings as f64 / 2.0 / (span.len() as f64 / 16_000.0);
    assert!((hz - 500.0).abs() < 5.0, "{hz:.1} Hz");
    // Nothing lost or doubled: every mark 8000 samples after the last
    // (the first may be the silence before the tone).
    for w in m[1..].windows(2) {
        assert!(
            (w[1] - w[0]).abs_diff(8000) <= 40,
            "marks at {m:?}: a gap or a splice"
        );
    }
}

#[test]
fn pulse_capture_errors_say_what_to_do() {
    let pulse = Pulse::start();
    let env = Env::new();
    let out = env.path("rec.wav");
    // No such source on a running server.
    let r = Run(record_from(&env, &pulse, "pulse:no-such-source", 1, &out)
        .output()
        .unwrap());
    let fails = |r: &Run, needle: &str| {
        assert_eq!(r.code(), 1, "{}", r.stderr());
        let last = r
            .stderr()
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        assert!(last.starts_with("pichat: error: "), "{last}");
        assert!(last.contains(needle), "expected {needle:?} in: {last}");
    };
    fails(
        &r,
        "PulseAudio source no-such-source: cannot record: No such entity",
    );
    fails(&r, "pactl list short sources");
    // No server where the client looks.
    let mut c = record_from(&env, &pulse, "pulse:", 1, &out);
    c.env(
        "PULSE_SERVER",
        format!("unix:{}", env.path("nobody-here").display()),
    );
    let r = Run(c.output().unwrap());
    fails(&r, "PulseAudio's default source: cannot record: ");
    assert!(!out.exists(), "nothing written");
    // A control character in the name is refused before anything opens.
    let r = Run(env
        .cmd(&["record", "--input", "pulse:mic\tx", out.to_str().unwrap()])
        .output()
        .unwrap());
    r.fails_with("control characters");
}
