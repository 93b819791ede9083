//! `GET /metrics`: the server's figures in the Prometheus / OpenMetrics
//! text format (prometheus-client), for the tools that scrape it.
//!
//! - `pichat_connections`: WebSocket connections open now;
//! - `pichat_frames_total{direction="in"|"out"}`: text frames read / written;
//! - `pichat_actions_total{action, result}`: requests by action and result
//!   (`ok` or the error code);
//! - `pichat_store_queue_wait_seconds`, `pichat_store_commit_seconds`: how
//!   long a call waited for the store thread, how long a commit (fsync) took;
//! - `pichat_ai_first_token_seconds`, `pichat_ai_stream_seconds{result}`:
//!   AI replies, from the request to the first token and to the end
//!   (`result`: `ok`, `interrupted`, `failed`).
//!
//! - `pichat_store_up` (1 when the database answered the scrape),
//!   `pichat_store_bytes`, `pichat_store_reclaimable_bytes` (SQLite's free
//!   pages, PostgreSQL's dead rows: bloat), `pichat_store_wal_bytes`,
//!   `pichat_store_pool_connections{state="open"|"idle"}` (PostgreSQL),
//!   `pichat_store_last_maintenance_timestamp_seconds`.
//!
//! It names no user and shows no content.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels<const N: usize> = [(&'static str, String); N];

pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    frames: Family<Labels<1>, Counter>,
    actions: Family<Labels<2>, Counter>,
    store_wait: Histogram,
    store_commit: Histogram,
    ai_first_token: Histogram,
    ai_stream: Family<Labels<1>, Histogram, fn() -> Histogram>,
    store_up: Gauge,
    store_bytes: Gauge,
    store_reclaimable: Gauge,
    store_wal: Gauge,
    store_pool: Family<Labels<1>, Gauge>,
    store_maintained: Gauge,
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// 50 ms to ~7 min.
fn stream_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 13))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("pichat");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "WebSocket connections open now",
            connections.clone(),
        );
        let frames = Family::<Labels<1>, Counter>::default();
        registry.register(
            "frames",
            "Text frames read (in) and written (out)",
            frames.clone(),
        );
        let actions = Family::<Labels<2>, Counter>::default();
        registry.register(
            "actions",
            "Requests by action and result (ok, or the error code)",
            actions.clone(),
        );
        // 50 µs to ~3 s.
        let store_wait = Histogram::new(exponential_buckets(0.00005, 2.5, 13));
        registry.register(
            "store_queue_wait_seconds",
            "Time a database call waited for the store thread",
            store_wait.clone(),
        );
        let store_commit = Histogram::new(exponential_buckets(0.0001, 2.5, 12));
        registry.register(
            "store_commit_seconds",
            "Time a group commit of writes took (one fsync)",
            store_commit.clone(),
        );
        // 10 ms to ~2 min.
        let ai_first_token = Histogram::new(exponential_buckets(0.01, 2.2, 13));
        registry.register(
            "ai_first_token_seconds",
            "AI replies: from the request to the first token",
            ai_first_token.clone(),
        );
        let ai_stream = Family::<Labels<1>, Histogram, fn() -> Histogram>::new_with_constructor(
            stream_histogram,
        );
        registry.register(
            "ai_stream_seconds",
            "AI replies: from the request to the end of the stream, by result",
            ai_stream.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 when the database answered the last scrape, else 0",
            store_up.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "store_bytes",
            "Bytes of the database on disk (SQLite file and WAL; PostgreSQL tables and indexes)",
            store_bytes.clone(),
        );
        let store_reclaimable = Gauge::default();
        registry.register(
            "store_reclaimable_bytes",
            "Bytes that could be given back (SQLite free pages; PostgreSQL dead rows, estimated)",
            store_reclaimable.clone(),
        );
        let store_wal = Gauge::default();
        registry.register(
            "store_wal_bytes",
            "SQLite: bytes of the -wal file",
            store_wal.clone(),
        );
        let store_pool = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "store_pool_connections",
            "PostgreSQL: this server's pool connections, open and idle",
            store_pool.clone(),
        );
        let store_maintained = Gauge::default();
        registry.register(
            "store_last_maintenance_timestamp_seconds",
            "The last maintenance pass of this server (0: none yet)",
            store_maintained.clone(),
        );
        Arc::new(Metrics {
            registry,
            store_up,
            store_bytes,
            store_reclaimable,
            store_wal,
            store_pool,
            store_maintained,
            connections,
            frames,
            actions,
            store_wait,
            store_commit,
            ai_first_token,
            ai_stream,
        })
    }

    pub fn set_connections(&self, n: usize) {
        self.connections.set(n as i64);
    }

    pub fn frame_in(&self) {
        self.frames
            .get_or_create(&[("direction", "in".into())])
            .inc();
    }

    pub fn frame_out(&self) {
        self.frames
            .get_or_create(&[("direction", "out".into())])
            .inc();
    }

    /// A request answered: `result` is `ok` or the error code.
    pub fn action(&self, action: &'static str, result: &str) {
        self.actions
            .get_or_create(&[("action", action.into()), ("result", result.into())])
            .inc();
    }

    /// The store's state, read for this scrape.
    pub fn set_store(&self, h: &crate::serverdb::StoreHealth) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.store_up.set(i64::from(h.ok));
        self.store_bytes.set(n(h.bytes));
        self.store_reclaimable.set(n(h.reclaimable_bytes));
        self.store_wal.set(n(h.wal_bytes));
        for (state, v) in [("open", h.pool_size), ("idle", h.pool_idle)] {
            self.store_pool
                .get_or_create(&[("state", state.into())])
                .set(v as i64);
        }
        self.store_maintained
            .set(h.last_maintenance.unwrap_or(0) / 1000);
    }

    pub fn store_wait(&self, d: Duration) {
        self.store_wait.observe(seconds(d));
    }

    pub fn store_commit(&self, d: Duration) {
        self.store_commit.observe(seconds(d));
    }

    pub fn ai_first_token(&self, d: Duration) {
        self.ai_first_token.observe(seconds(d));
    }

    pub fn ai_stream(&self, d: Duration, result: &'static str) {
        self.ai_stream
            .get_or_create(&[("result", result.into())])
            .observe(seconds(d));
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_every_family() {
        let m = Metrics::new();
        m.set_connections(3);
        m.frame_in();
        m.frame_out();
        m.frame_out();
        m.action("sync", "ok");
        m.action("send_message", "rate_limited");
        m.store_wait(Duration::from_micros(300));
        m.store_commit(Duration::from_millis(4));
        m.ai_first_token(Duration::from_millis(120));
        m.ai_stream(Duration::from_secs(2), "ok");
        m.set_store(&crate::serverdb::StoreHealth {
            kind: "postgres",
            ok: true,
            bytes: 8192,
            reclaimable_bytes: 100,
            pool_size: 4,
            pool_idle: 3,
            last_maintenance: Some(1_700_000_000_123),
            ..Default::default()
        });
        let t = m.encode();
        for line in [
            "pichat_connections 3",
            "pichat_frames_total{direction=\"out\"} 2",
            "pichat_actions_total{action=\"send_message\",result=\"rate_limited\"} 1",
            "pichat_store_queue_wait_seconds_count 1",
            "pichat_store_commit_seconds_count 1",
            "pichat_ai_first_token_seconds_count 1",
            "pichat_ai_stream_seconds_count{result=\"ok\"} 1",
            "pichat_store_up 1",
            "pichat_store_bytes 8192",
            "pichat_store_reclaimable_bytes 100",
            "pichat_store_pool_connections{state=\"idle\"} 3",
            "pichat_store_last_maintenance_timestamp_seconds 1700000000",
            "# EOF",
        ] {
            assert!(t.contains(line), "{line} missing in:\n{t}");
        }
    }
}
