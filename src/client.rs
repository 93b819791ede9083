//! The one small client of the chat server's WebSocket protocol, shared by
//! the sync (`sync/`) and the server as an LLM (`engines/server.rs`):
//! TLS set up once (rustls with ring), the device token as a bearer header,
//! a private CA when configured, one timeout for the whole handshake, and
//! errors that say which setting to look at. What is sent over it is
//! `protocol/`'s business.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::SyncConfig;

/// A WebSocket to the chat server.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("sync is off: set sync.url in the config")]
    Off,
    #[error("no device token: {0} (create one with `pichat token add USER` on the server)")]
    Token(String),
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("the server refused the token (HTTP 401): check sync.token_file / sync.token_env")]
    Unauthorized,
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// Retrying later may help (a network or server problem).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ClientError::Off | ClientError::Token(_) | ClientError::Unauthorized
        )
    }
}

/// The process-wide TLS setup (rustls with the ring provider, lighter to
/// cross-compile than aws-lc). Idempotent; called before any client is built.
pub fn init_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Opens a WebSocket to the server with the device token.
pub async fn connect(cfg: &SyncConfig, timeout: Duration) -> Result<Ws, ClientError> {
    let url = cfg.url.as_ref().ok_or(ClientError::Off)?;
    let token = cfg
        .token
        .read()
        .map_err(ClientError::Token)?
        .ok_or_else(|| ClientError::Token("none configured".into()))?;
    init_tls();
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Connect {
            url: shown(url),
            cause: e.to_string(),
        })?;
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().map_err(|_| {
            ClientError::Token("the token has characters a header cannot hold".into())
        })?,
    );
    let connector = match &cfg.ca_file {
        Some(ca) => Some(tls_with_ca(ca).map_err(|cause| ClientError::Connect {
            url: shown(url),
            cause,
        })?),
        None => None,
    };
    // What the server may send, no more: its largest frame (a page is cut
    // by bytes, a speech result is at most 8 MiB of WAV).
    let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(crate::protocol::limits::MAX_SERVER_FRAME))
        .max_frame_size(Some(crate::protocol::limits::MAX_SERVER_FRAME));
    let fut = tokio_tungstenite::connect_async_tls_with_config(req, Some(limits), true, connector);
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ClientError::Timeout(timeout)),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(r))) if r.status().as_u16() == 401 => {
            Err(ClientError::Unauthorized)
        }
        Ok(Err(e)) => Err(ClientError::Connect {
            url: shown(url),
            cause: connect_cause(&e, cfg.ca_file.is_some()),
        }),
    }
}

/// The server's address as it may be logged or shown: no password, no
/// query (where a `token=` could be).
pub fn shown(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// What went wrong connecting; a certificate the TLS layer refused says
/// which setting decides what is trusted.
fn connect_cause(e: &tokio_tungstenite::tungstenite::Error, has_ca_file: bool) -> String {
    let refused_cert = match e {
        tokio_tungstenite::tungstenite::Error::Io(io) => matches!(
            io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        _ => false,
    };
    match (refused_cert, has_ca_file) {
        (false, _) => e.to_string(),
        (true, false) => {
            format!("{e} (a server with a private CA needs sync.ca_file = \"/path/to/ca.pem\")")
        }
        (true, true) => {
            format!("{e} (the certificate is not signed by sync.ca_file or a system root)")
        }
    }
}

/// TLS with the system roots plus a private CA (PEM).
fn tls_with_ca(
    path: &std::path::Path,
) -> std::result::Result<tokio_tungstenite::Connector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read sync.ca_file {}: {e}", path.display()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("sync.ca_file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "sync.ca_file {} holds no certificate",
            path.display()
        ));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("sync.ca_file {}: {e}", path.display()))?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}
