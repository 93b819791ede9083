//! TLS for `pichat serve` itself (`server.tls_cert` / `server.tls_key`):
//! rustls with the ring provider, TLS 1.2 and 1.3, HTTP/1.1 only. A LAN
//! server so serves `https://` and `wss://` without a proxy in front; the
//! browser's microphone needs a secure origin off localhost.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("server.tls_key {path}: {message}")]
    Key { path: String, message: String },
    #[error("server.tls_cert and server.tls_key do not go together: {0}")]
    Mismatch(String),
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Reads the certificate chain and key and builds the server's TLS config.
pub fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: shown(&files.cert),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(format!("cannot read it ({e})")))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate chain ({e})")))?;
    if certs.is_empty() {
        return Err(cert_err(
            "holds no certificate (expected -----BEGIN CERTIFICATE-----; `pichat serve --make-cert` makes one)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: shown(&files.key),
        message: format!("no usable private key in it ({e}); PKCS#8, PKCS#1 or SEC1 PEM"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_certificates_load_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = super::super::certs::make(dir.path(), &["localhost".into()], false).unwrap();
        let files = TlsFiles {
            cert: f.cert.clone(),
            key: f.key.clone(),
        };
        load(&files).unwrap();
        let wrong_key = TlsFiles {
            cert: f.cert.clone(),
            key: f.ca_key.clone(),
        };
        assert!(matches!(load(&wrong_key), Err(TlsError::Mismatch(_))));
        let swapped = TlsFiles {
            cert: f.key.clone(),
            key: f.cert.clone(),
        };
        let e = load(&swapped).unwrap_err().to_string();
        assert!(e.contains("server.tls_cert"), "{e}");
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: f.key.clone(),
        };
        assert!(
            load(&missing)
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }
}
