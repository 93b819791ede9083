//! The microphone through PulseAudio's own API (`audio.input = "pulse:"` or
//! `"pulse:SOURCE"`), for machines with a sound server: PulseAudio, or
//! PipeWire's pulse server. The server converts to 16 kHz mono s16 itself
//! and hands over one 20 ms frame per read, so the capture thread sleeps in
//! `pa_simple_read` between frames.
//!
//! Why not cpal on ALSA's `pulse` device: that plugin reports its poll
//! descriptor readable while less than a period is left to read (it counts
//! a partly read fragment as unread), so cpal's ALSA thread polls again at
//! once, thousands of times a second: about a quarter of a core while
//! armed, against about one per cent here.
//!
//! `libpulse-simple.so.0` (Debian's `libpulse0`, on every machine with a
//! sound server) is loaded at run time, so this costs the binary nothing
//! and machines without it lose nothing else.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{AudioError, AudioSource, FRAME, FRAME_QUEUE, Frame, RATE};
use crate::dl;

/// The library loaded by default.
pub const LIBRARY: &str = "libpulse-simple.so.0";
/// Longest source name accepted (PulseAudio's own names stay far below).
pub const MAX_NAME: usize = 512;
/// How long `stop` waits for the capture thread (a read returns within a
/// frame; a server that stalls only leaves the thread behind).
const STOP_WAIT: Duration = Duration::from_millis(500);

const PA_STREAM_RECORD: c_int = 2;
const PA_SAMPLE_S16LE: c_int = 3;

#[repr(C)]
struct SampleSpec {
    format: c_int,
    rate: u32,
    channels: u8,
}

#[repr(C)]
struct BufferAttr {
    maxlength: u32,
    tlength: u32,
    prebuf: u32,
    minreq: u32,
    fragsize: u32,
}

type NewFn = unsafe extern "C" fn(
    server: *const c_char,
    name: *const c_char,
    dir: c_int,
    dev: *const c_char,
    stream_name: *const c_char,
    ss: *const SampleSpec,
    map: *const c_void,
    attr: *const BufferAttr,
    error: *mut c_int,
) -> *mut c_void;
type ReadFn = unsafe extern "C" fn(*mut c_void, *mut c_void, usize, *mut c_int) -> c_int;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type StrerrorFn = unsafe extern "C" fn(c_int) -> *const c_char;

struct Api {
    new: NewFn,
    read: ReadFn,
    free: FreeFn,
    strerror: StrerrorFn,
    _lib: libloading::Library,
}

impl Api {
    fn load(lib: &str) -> Result<Api, String> {
        // SAFETY: libpulse-simple has no initialisers with preconditions.
        let l = unsafe { libloading::Library::new(lib) }.map_err(|e| e.to_string())?;
        // SAFETY: each field has the type of libpulse's declaration of its
        // symbol (pa_strerror is libpulse.so.0's, which libpulse-simple links).
        let api = unsafe {
            Api {
                new: dl::function(&l, b"pa_simple_new\0")?,
                read: dl::function(&l, b"pa_simple_read\0")?,
                free: dl::function(&l, b"pa_simple_free\0")?,
                strerror: dl::function(&l, b"pa_strerror\0")?,
                _lib: l,
            }
        };
        Ok(api)
    }

    fn error(&self, code: c_int) -> String {
        // SAFETY: pa_strerror returns a static string, or NULL.
        let p = unsafe { (self.strerror)(code) };
        if p.is_null() {
            format!("error {code}")
        } else {
            // SAFETY: a NUL-terminated static string.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }
}

/// One open record stream.
struct Stream<'a> {
    api: &'a Api,
    s: *mut c_void,
}

impl<'a> Stream<'a> {
    fn open(api: &'a Api, source: Option<&CStr>) -> Result<Stream<'a>, String> {
        let spec = SampleSpec {
            format: PA_SAMPLE_S16LE,
            rate: RATE,
            channels: 1,
        };
        let frame_bytes = (FRAME * 2) as u32;
        // One frame per fragment: the server sends each 20 ms frame as it is
        // complete; it keeps at most 1 s for a reader that falls behind.
        let attr = BufferAttr {
            maxlength: RATE * 2,
            tlength: u32::MAX,
            prebuf: u32::MAX,
            minreq: u32::MAX,
            fragsize: frame_bytes,
        };
        let mut err: c_int = 0;
        // SAFETY: every pointer is valid for the call or NULL where
        // pa_simple_new allows it (server, channel map, device).
        let s = unsafe {
            (api.new)(
                std::ptr::null(),
                c"pichat".as_ptr(),
                PA_STREAM_RECORD,
                source.map_or(std::ptr::null(), CStr::as_ptr),
                c"microphone".as_ptr(),
                &spec,
                std::ptr::null(),
                &attr,
                &mut err,
            )
        };
        if s.is_null() {
            return Err(api.error(err));
        }
        Ok(Stream { api, s })
    }

    /// Reads one frame, blocking until it is complete.
    fn read(&mut self, frame: &mut [i16; FRAME]) -> Result<(), String> {
        let mut err: c_int = 0;
        // SAFETY: `frame` is FRAME * 2 writable bytes.
        let r = unsafe {
            (self.api.read)(
                self.s,
                frame.as_mut_ptr().cast(),
                std::mem::size_of_val(frame),
                &mut err,
            )
        };
        if r < 0 {
            return Err(self.api.error(err));
        }
        Ok(())
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        // SAFETY: `s` came from pa_simple_new and is freed once.
        unsafe { (self.api.free)(self.s) };
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    done: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    thread: thread::JoinHandle<()>,
}

/// The microphone as a PulseAudio record stream.
pub struct PulseSource {
    source: Option<String>,
    library: String,
    running: Option<Running>,
}

impl PulseSource {
    /// `source`: a PulseAudio source name (`pactl list short sources`), or
    /// `None` for the server's default.
    pub fn new(source: Option<String>) -> Result<PulseSource, AudioError> {
        Self::with_library(source, LIBRARY)
    }

    pub fn with_library(source: Option<String>, library: &str) -> Result<PulseSource, AudioError> {
        if let Some(s) = &source {
            check_name(s).map_err(|what| AudioError::Unsupported {
                device: format!("pulse:{s}"),
                what,
            })?;
        }
        Ok(PulseSource {
            source,
            library: library.to_string(),
            running: None,
        })
    }
}

/// Why this config's hands-free listening should not capture from its
/// input, when it should not: ALSA's `pulse` device, whose capture spins
/// (see the module's head). Said by the daemon at start and by `doctor`.
pub fn spinning_input(cfg: &crate::config::Config) -> Option<&'static str> {
    (cfg.listen.mode != crate::config::ListenMode::Button
        && cfg.audio.input == crate::config::DeviceSpec::Named("pulse".into()))
    .then_some(
        "audio.input = \"pulse\" captures through ALSA's pulse plugin, which keeps a core busy (about a quarter of it) while listening for the wake word; \"pulse:\" records through PulseAudio's own API at about 2 %",
    )
}

/// A source name as the config may give it.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME {
        return Err(format!(
            "a PulseAudio source name of {} bytes (at most {MAX_NAME})",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("a PulseAudio source name cannot hold control characters".into());
    }
    Ok(())
}

impl AudioSource for PulseSource {
    fn start(&mut self) -> Result<mpsc::Receiver<Frame>, AudioError> {
        self.stop();
        let device = self.describe();
        let fail = |message: String| AudioError::Device {
            device: device.clone(),
            message,
        };
        let api = Api::load(&self.library).map_err(|e| {
            fail(format!(
                "cannot load {}: {e} (install libpulse0, or name an ALSA device: `pichat devices`)",
                self.library
            ))
        })?;
        let source = match &self.source {
            Some(s) => {
                Some(CString::new(s.as_str()).map_err(|_| fail("a NUL in the name".into()))?)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(FRAME_QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = device.clone();
        let thread = thread::Builder::new()
            .name("pichat-capture".into())
            .spawn(move || {
                let mut stream = match Stream::open(&api, source.as_deref()) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                capture(&mut stream, &tx, &flag, &name);
                drop(stream);
                let _ = done_tx.send(());
            })
            .map_err(|e| AudioError::Other(format!("cannot start the capture thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {
                self.running = Some(Running {
                    stop,
                    done: std::sync::Mutex::new(done_rx),
                    thread,
                });
                Ok(rx)
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(fail(format!(
                    "cannot record: {e} (is a PulseAudio or PipeWire pulse server running for this user? `pactl list short sources` names the sources)"
                )))
            }
            Err(_) => Err(AudioError::Other("the capture thread died".into())),
        }
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.store(true, Ordering::Relaxed);
            // A read returns within a frame; a stalled server leaves the
            // thread to end with its next read rather than block the caller.
            let done = r.done.lock().map(|d| d.recv_timeout(STOP_WAIT).is_ok());
            if done.unwrap_or(false) {
                let _ = r.thread.join();
            } else {
                tracing::warn!("{}: the capture did not stop in time", self.describe());
            }
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            Some(s) => format!("PulseAudio source {s}"),
            None => "PulseAudio's default source".into(),
        }
    }
}

impl Drop for PulseSource {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads frames until stopped, the receiver is gone or the server fails.
fn capture(stream: &mut Stream, tx: &mpsc::Sender<Frame>, stop: &AtomicBool, name: &str) {
    let mut frame = [0i16; FRAME];
    let mut loss = super::FrameLoss::default();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = stream.read(&mut frame) {
            tracing::warn!("{name}: capture ended: {e}");
            return;
        }
        match tx.try_send(frame.to_vec()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(_)) => loss.dropped(1, Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_use() {
        assert!(check_name("alsa_input.usb-0d8c_C-Media-00.mono-fallback").is_ok());
        assert!(check_name("mic.monitor").is_ok());
        let long = "a".repeat(MAX_NAME + 1);
        assert!(check_name(&long).unwrap_err().contains("at most 512"));
        assert!(check_name("mic\n").unwrap_err().contains("control"));
        assert!(PulseSource::new(Some("bad\0name".into())).is_err());
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let mut s = PulseSource::with_library(None, "libpulse-simple-not-here.so.0").unwrap();
        let e = s.start().unwrap_err().to_string();
        assert!(
            e.starts_with("PulseAudio's default source: cannot load libpulse-simple-not-here.so.0"),
            "{e}"
        );
        assert!(e.contains("install libpulse0"), "{e}");
    }
}
