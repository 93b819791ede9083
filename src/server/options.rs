//! How the server behaves: [`ServerOptions`], from the config
//! ([`ServerOptions::from_config`]) for production; tests shorten the
//! timeouts.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

/// How the server behaves; [`ServerOptions::from_config`] for production,
/// tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `send_message`, `speech_to_text`, `text_to_speech`: requests per user
    /// per minute, each action counted on its own.
    pub rate_limit_per_min: u32,
    /// Connections held at once; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Connections of one user held at once; more are refused with HTTP 429.
    pub max_connections_per_user: usize,
    /// Sockets not yet authenticated, in all (the oldest makes room for a
    /// new one) and per client address (more are closed).
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    /// WebSocket ping period; also how often revoked tokens are looked for.
    pub ping_interval: Duration,
    /// A peer that sends nothing (not even a pong) for this long is dropped.
    pub idle_timeout: Duration,
    /// Bytes queued for one connection's writer (see `queue.rs`).
    pub send_queue_bytes: usize,
    /// How long a connection's own replies wait for room in its queue
    /// before it is dropped as too slow.
    pub send_timeout: Duration,
    /// Bytes of frames being received, all connections together.
    pub read_budget_bytes: usize,
    /// A frame must be received whole within this time of its first byte.
    pub frame_timeout: Duration,
    /// An LLM silent for this long is cut (what it said is stored).
    pub stall_timeout: Duration,
    /// Longest a text-to-speech or speech-to-text request may take.
    pub engine_timeout: Duration,
    /// At shutdown, how long running AI streams may go on before being cut.
    pub shutdown_grace: Duration,
    /// Time to send the HTTP request head.
    pub header_timeout: Duration,
    /// The generous per-connection limit of all other actions: sustained
    /// requests per second, and burst.
    pub requests_per_sec: u32,
    pub request_burst: u32,
    /// AI/TTS/STT jobs running at once per connection.
    pub max_jobs_per_connection: usize,
    /// System prompt when the user has no `assistant_personality`.
    pub system_prompt: String,
    /// Token budget of the LLM context.
    pub context_tokens: usize,
    /// Longest `speech_to_text` audio (`stt.max_seconds`).
    pub stt_max: Duration,
    /// How long a browser stays signed in (the session cookie's life).
    pub session_ttl: Duration,
    /// Served over TLS (`server.tls_cert`, loaded by [`tls::load`]):
    /// session cookies are `Secure` and the app's own origin is `https://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How often the store's maintenance runs (`server.maintenance_interval_min`).
    pub maintenance_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            rate_limit_per_min: 5,
            max_connections: 10_000,
            max_connections_per_user: 64,
            max_handshakes: 512,
            max_handshakes_per_address: 64,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            send_queue_bytes: 1 << 20,
            send_timeout: Duration::from_secs(10),
            read_budget_bytes: 64 << 20,
            frame_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(60),
            engine_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            requests_per_sec: 100,
            request_burst: 1000,
            max_jobs_per_connection: 4,
            system_prompt: "You are a helpful assistant.".into(),
            context_tokens: 3000,
            stt_max: Duration::from_secs(60),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            tls: None,
            maintenance_interval: Duration::from_secs(3600),
        }
    }
}

impl ServerOptions {
    pub fn from_config(cfg: &Config) -> Self {
        let s = &cfg.server;
        ServerOptions {
            rate_limit_per_min: s.rate_limit_per_min,
            max_connections: s.max_connections,
            max_connections_per_user: s.max_connections_per_user,
            max_handshakes: s.max_handshakes,
            max_handshakes_per_address: s.max_handshakes_per_address,
            header_timeout: s.header_timeout,
            send_queue_bytes: s.send_queue_bytes,
            read_budget_bytes: s.read_budget_bytes,
            frame_timeout: s.frame_timeout,
            session_ttl: s.session_ttl,
            tls: None,
            system_prompt: cfg.llm.system_prompt.clone(),
            context_tokens: cfg.llm.context_tokens,
            stt_max: cfg.stt.max_duration,
            maintenance_interval: s.maintenance_interval,
            ..ServerOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_config() {
        let text = "[server]\nmax_connections = 7\nmax_connections_per_user = 3\nmax_handshakes = 9\n\
                    max_handshakes_per_address = 2\nheader_timeout_s = 4\nsend_queue_kib = 32\n\
                    read_budget_mib = 5\nframe_timeout_s = 6\n";
        let (_, cfg) = crate::config::parse_str(text, std::path::Path::new("t.toml")).unwrap();
        let o = ServerOptions::from_config(&cfg);
        assert_eq!(
            (
                o.max_connections,
                o.max_connections_per_user,
                o.max_handshakes,
                o.max_handshakes_per_address
            ),
            (7, 3, 9, 2)
        );
        assert_eq!(o.header_timeout, Duration::from_secs(4));
        assert_eq!(
            (o.send_queue_bytes, o.read_budget_bytes),
            (32 << 10, 5 << 20)
        );
        assert_eq!(o.frame_timeout, Duration::from_secs(6));
        // The defaults are the shipped config's.
        let (_, cfg) = crate::config::parse_str("", std::path::Path::new("t.toml")).unwrap();
        let (o, d) = (ServerOptions::from_config(&cfg), ServerOptions::default());
        assert_eq!(
            (
                o.max_connections_per_user,
                o.max_handshakes,
                o.max_handshakes_per_address
            ),
            (
                d.max_connections_per_user,
                d.max_handshakes,
                d.max_handshakes_per_address
            )
        );
        assert_eq!(
            (
                o.send_queue_bytes,
                o.read_budget_bytes,
                o.frame_timeout,
                o.header_timeout
            ),
            (
                d.send_queue_bytes,
                d.read_budget_bytes,
                d.frame_timeout,
                d.header_timeout
            )
        );
    }
}
