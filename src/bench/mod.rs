//! `pichat bench …`: benchmarks that print the figures each issue asks for.
//! They measure; tests never assert durations.

pub mod audio;
pub mod fakes;
mod history;
mod server;
mod server_reads;
mod server_store;
mod service;
pub mod stores;
mod sync;
mod voice;
mod wake;

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// The history store on a large database: import rate, search, list, context, size.
    History(history::Args),
    /// Audio: resampler throughput, capture-to-frame latency, idle CPU and memory.
    Audio(audio::Args),
    /// The voice turn: daemon overhead, streaming, real engines per stage, idle cost.
    Voice(voice::Args),
    /// The chat server: idle connections held, send_message round trips, sync of a large history, notification latency, reads during a search storm, a storm of unread sync pages, slowloris.
    Server(server::Args),
    /// The sync: catching up a new device, pushing an outage's turns, device-to-device latency.
    Sync(sync::Args),
    /// The services as systemd sees them: cold start to READY, reload time.
    Service(service::Args),
    /// Hands-free: wake detection rate and false accepts, latencies, its own voice, armed CPU and memory.
    Wake(wake::Args),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::History(a) => history::run(a),
        BenchCmd::Audio(a) => audio::run(a),
        BenchCmd::Voice(a) => voice::run(a),
        BenchCmd::Server(a) => server::run(a),
        BenchCmd::Sync(a) => sync::run(a),
        BenchCmd::Service(a) => service::run(a),
        BenchCmd::Wake(a) => wake::run(a),
    }
    .map(|()| ExitCode::SUCCESS)
}

/// Percentiles of a set of durations.
pub struct Percentiles {
    sorted: Vec<Duration>,
}

impl Percentiles {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Percentiles { sorted: samples }
    }

    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn p(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let p = Percentiles::new((1..=100).map(Duration::from_millis).collect());
        assert_eq!(p.p(50.0), Duration::from_millis(50));
        assert_eq!(p.p(99.0), Duration::from_millis(99));
        assert_eq!(p.p(100.0), Duration::from_millis(100));
        assert_eq!(Percentiles::new(vec![]).p(50.0), Duration::ZERO);
    }
}
