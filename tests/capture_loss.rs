//! A listener that falls behind the microphone: the capture drops frames
//! rather than block the audio thread, counts them, and says so in the log.
//! The test ALSA device reads a raw file unpaced, far faster than real
//! time, so frames pile up while nobody reads them. Its own test binary:
//! ALSA's configuration is set in this process's environment before ALSA
//! is first used.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pichat::audio::AudioSource;
use pichat::audio::capture::CpalSource;
use pichat::config::DeviceSpec;

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn frames_the_listener_cannot_take_are_counted_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let infile = dir.path().join("in.raw");
    // 20 s of 48 kHz stereo f32 noise-like samples: 1,000 frames of 20 ms.
    let mut raw = Vec::new();
    let mut x = 1u32;
    for _ in 0..48_000 * 20 * 2 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        raw.extend_from_slice(&(((x >> 16) as f32 / 65_536.0 - 0.5) * 0.2).to_le_bytes());
    }
    std::fs::write(&infile, raw).unwrap();
    let conf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/alsa/alsa-test.conf");
    // SAFETY: the only test in this binary, before any thread uses ALSA.
    unsafe {
        std::env::set_var("ALSA_CONFIG_PATH", conf);
        std::env::set_var("ALSA_TEST_INFILE", &infile);
    }
    let log = Lines::default();
    let writer = log.clone();
    // Global: the capture's callback runs on the audio thread.
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .unwrap();
    let mut mic = CpalSource::new(DeviceSpec::Named("test_capture".into())).unwrap();
    let mut frames = mic.start().unwrap();
    // Nobody reads: the bounded queue fills, the rest is dropped.
    let mut stats = mic.stats();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        stats = mic.stats();
        if stats.dropped > 0 && stats.frames >= 1_000 {
            break;
        }
    }
    assert!(
        stats.frames >= 1_000,
        "the whole file was captured: {stats:?}"
    );
    // (After the file, the device goes on with silence: stop it first.)
    mic.stop();
    std::thread::sleep(Duration::from_millis(200));
    let stats = mic.stats();
    let mut queued = 0;
    while frames.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(
        queued,
        pichat::audio::FRAME_QUEUE,
        "the queue holds its bound"
    );
    assert_eq!(
        stats.dropped as usize,
        stats.frames as usize - queued,
        "{stats:?}"
    );
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("WARN") && text.contains("frames of 20 ms dropped so far"),
        "the loss is logged: {text}"
    );
    // One line at the loss, not one per frame.
    assert!(text.matches("dropped so far").count() <= 2, "{text}");
}
