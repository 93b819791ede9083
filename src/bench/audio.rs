//! `pichat bench audio`: resampler throughput, capture-to-frame latency on a
//! real capture device, and the idle cost of a process with push-to-talk
//! armed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::audio::capture::{CapturePipeline, CpalSource};
use crate::audio::{AudioSource, FRAME, RATE};
use crate::bench::{Percentiles, ms};
use crate::config::DeviceSpec;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of audio for the resampler throughput test
    #[arg(long, default_value_t = 600)]
    audio_seconds: u32,
    /// Capture device for the latency test (empty: skip it)
    #[arg(long, default_value = "default")]
    input: String,
    /// Seconds of capture for the latency test
    #[arg(long, default_value_t = 5)]
    capture_seconds: u64,
    /// Seconds to watch the idle process
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    resampler(args.audio_seconds)?;
    if !args.input.is_empty() {
        let spec = DeviceSpec::parse(&args.input).map_err(anyhow::Error::msg)?;
        if let Err(e) = latency(spec, args.capture_seconds) {
            println!("capture latency: skipped ({e})");
        }
    }
    idle(args.idle_seconds)
}

fn resampler(seconds: u32) -> anyhow::Result<()> {
    // 48 kHz stereo f32 speech-band noise, processed in 10 ms callbacks as a
    // device would deliver it.
    let n = 48_000 * seconds as usize;
    let mut rng = fastrand::Rng::with_seed(7);
    let input: Vec<f32> = (0..n * 2).map(|_| rng.f32() * 0.5 - 0.25).collect();
    let mut p = CapturePipeline::new(48_000, 2).map_err(anyhow::Error::msg)?;
    let mut frames = 0usize;
    let t = Instant::now();
    for block in input.chunks(480 * 2) {
        p.push_f32(block, |f| {
            frames += 1;
            std::hint::black_box(f);
        });
    }
    let took = t.elapsed();
    anyhow::ensure!(frames + 1 >= n / 960, "resampler lost frames");
    println!(
        "{:<30} {:>8.0}x real time ({} s of audio in {:.3} s, one core)   goal >= 500x",
        "resample 48k stereo f32 -> 16k mono s16",
        seconds as f64 / took.as_secs_f64(),
        seconds,
        took.as_secs_f64()
    );
    Ok(())
}

fn latency(spec: DeviceSpec, seconds: u64) -> anyhow::Result<()> {
    let mut src = CpalSource::new(spec)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rx = src.start()?;
    let want = seconds as usize * (RATE as usize / FRAME);
    let mut got = 0;
    rt.block_on(async {
        let end = tokio::time::Instant::now() + Duration::from_secs(seconds + 10);
        while got < want {
            match tokio::time::timeout_at(end, rx.recv()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
    });
    src.stop();
    let s = src.stats();
    anyhow::ensure!(s.callbacks > 0, "no audio arrived from {}", s.device);
    let period = Duration::from_secs_f64(s.max_block as f64 / s.rate as f64);
    let process = Percentiles::new(s.process.clone());
    let c2c = Percentiles::new(s.capture_to_callback.clone());
    let resampler = Duration::from_secs_f64(s.resampler_delay as f64 / RATE as f64);
    let frame = Duration::from_millis(20);
    // The first sample of a frame is out when the frame is complete: one
    // frame, plus what the device held it (capture -> callback, which
    // includes its period), plus the resampler's delay and the callback's work.
    let typical = frame + c2c.p(50.0) + resampler + process.p(99.0);
    println!(
        "capture on {} ({} Hz, {} ch, {}): {} frames, {} dropped",
        s.device, s.rate, s.channels, s.format, s.frames, s.dropped
    );
    println!("{:<30} {}", "  device period", ms(period));
    println!(
        "{:<30} p50 {}  p99 {}",
        "  capture -> callback (device)",
        ms(c2c.p(50.0)),
        ms(c2c.p(99.0))
    );
    println!(
        "{:<30} p50 {}  p99 {}",
        "  callback work (resample)",
        ms(process.p(50.0)),
        ms(process.p(99.0))
    );
    println!("{:<30} {}", "  resampler delay", ms(resampler));
    println!(
        "{:<30} {}  (one frame + device p50 + resampler + work p99); pichat's own share {}   goal <= one frame + period = {}",
        "capture-to-frame latency",
        ms(typical),
        ms(resampler + process.p(99.0)),
        ms(frame + period)
    );
    Ok(())
}

pub fn proc_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

pub fn proc_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Measures a child process's CPU share and RSS over `seconds` of idling.
pub fn watch_idle(pid: u32, seconds: u64) -> anyhow::Result<(f64, u64)> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t0 = Instant::now();
    let c0 = proc_cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_secs(seconds));
    let c1 = proc_cpu_ticks(pid)?;
    let cpu = (c1 - c0) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
    Ok((cpu, proc_rss_kib(pid)?))
}

fn idle(seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg: PathBuf = dir.path().join("idle.toml");
    std::fs::write(
        &cfg,
        format!(
            "[ptt]\nsource = \"none\"\nsocket = \"{}\"\n",
            dir.path().join("ctl.sock").display()
        ),
    )?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--config",
            cfg.to_str().unwrap_or_default(),
            "ptt",
            "monitor",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    let result = watch_idle(child.id(), seconds);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let (cpu, rss) = result?;
    println!(
        "{:<30} CPU {cpu:.4} % of a core, RSS {:.1} MB over {seconds} s   goal <= 0.05 %, <= 8 MB",
        "idle, push-to-talk armed",
        rss as f64 / 1024.0
    );
    Ok(())
}
