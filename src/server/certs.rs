//! `pichat serve --make-cert`: a private CA and a server certificate signed
//! by it (rcgen), so a LAN server can serve `https://` and `wss://` itself.
//! The browser (after importing `ca.pem` once) and the Pi's sync
//! (`sync.ca_file = "ca.pem"`) then trust the server without a public CA.
//!
//! Files (PEM): `ca.pem` (give it to clients), `ca.key` (keep it: it signs
//! the next server certificate), `server.pem` (the certificate, then the
//! CA's), `server.key`. Keys are written mode 0600; nothing is overwritten
//! unless asked.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// How long the certificates are valid.
pub const CA_DAYS: i64 = 3650;
pub const SERVER_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "{0} exists; pass --force to replace it (clients that trust the old CA then need the new ca.pem)"
    )]
    Exists(PathBuf),
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot read the CA in {path}: {cause}")]
    ReadCa { path: PathBuf, cause: String },
    #[error("cannot make the certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("\"{0}\" is not a usable host name or IP address for the certificate")]
    BadName(String),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The names and addresses the server certificate is valid for.
    pub names: Vec<String>,
    /// The CA was made now (false: the one in the folder signed it).
    pub new_ca: bool,
}

/// The names a server certificate should carry by default: this machine's
/// host name (and `.local`, for mDNS), `localhost`, loopback, and the
/// addresses of its network interfaces.
pub fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Some(h) = hostname() {
        names.push(h.clone());
        if !h.contains('.') {
            names.push(format!("{h}.local"));
        }
    }
    names.push("localhost".into());
    names.push("127.0.0.1".into());
    names.push("::1".into());
    for ip in interface_addrs() {
        let s = ip.to_string();
        if !names.contains(&s) {
            names.push(s);
        }
    }
    names
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let h = std::str::from_utf8(&buf[..end]).ok()?.trim().to_string();
    (!h.is_empty() && h != "localhost").then_some(h)
}

/// The IPv4 and IPv6 addresses of the machine's interfaces, loopback and
/// link-local left out.
fn interface_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free with freeifaddrs; each
    // ifa_addr is read according to its sa_family.
    unsafe {
        if libc::getifaddrs(&mut ifa) != 0 {
            return out;
        }
        let mut cur = ifa;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        if !ip.is_loopback() && !ip.is_link_local() {
                            out.push(IpAddr::V4(ip));
                        }
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        if !ip.is_loopback() && !ip.is_unicast_link_local() {
                            out.push(IpAddr::V6(ip));
                        }
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifa);
    }
    out
}

/// DER as PEM (RFC 7468): base64 lines of 64 characters between the labels.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_file(path: &Path, data: &str, secret: bool, force: bool) -> Result<(), CertError> {
    if path.exists() && !force {
        return Err(CertError::Exists(path.to_path_buf()));
    }
    let err = |cause| CertError::Write {
        path: path.to_path_buf(),
        cause,
    };
    // Written beside, then renamed: a crash leaves the old file or the new.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        return Err(CertError::BadName(name.to_string()));
    }
    Ok(SanType::DnsName(
        name.to_ascii_lowercase()
            .try_into()
            .map_err(|_| CertError::BadName(name.to_string()))?,
    ))
}

/// Makes (or reuses, when `dir` has `ca.pem` and `ca.key`) the private CA and
/// a new server certificate for `names`, in `dir`.
pub fn make(dir: &Path, names: &[String], force: bool) -> Result<CertFiles, CertError> {
    std::fs::create_dir_all(dir).map_err(|cause| CertError::Write {
        path: dir.to_path_buf(),
        cause,
    })?;
    let files = CertFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        names: names.to_vec(),
        new_ca: false,
    };
    let sans = names
        .iter()
        .map(|n| san(n))
        .collect::<Result<Vec<_>, _>>()?;
    for p in [&files.cert, &files.key] {
        if p.exists() && !force {
            return Err(CertError::Exists(p.clone()));
        }
    }
    // Midnight UTC, `n` days from today.
    let days_from_now = |n: i64| {
        let d = chrono::Utc::now().date_naive() + chrono::Duration::days(n);
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let reuse = files.ca_cert.exists() && files.ca_key.exists() && !force;
    let ca_key = if reuse {
        let pem = std::fs::read_to_string(&files.ca_key).map_err(|e| CertError::ReadCa {
            path: files.ca_key.clone(),
            cause: e.to_string(),
        })?;
        use rustls::pki_types::pem::PemObject;
        let der =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                CertError::ReadCa {
                    path: files.ca_key.clone(),
                    cause: e.to_string(),
                }
            })?;
        KeyPair::try_from(&der).map_err(|e| CertError::ReadCa {
            path: files.ca_key.clone(),
            cause: e.to_string(),
        })?
    } else {
        KeyPair::generate()?
    };
    // The CA's name and key identify it: rebuilt the same, they sign for
    // the ca.pem already given to clients.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pichat private CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = days_from_now(-1);
    ca_params.not_after = days_from_now(CA_DAYS);
    let ca_pem = if reuse {
        None
    } else {
        Some(pem("CERTIFICATE", ca_params.self_signed(&ca_key)?.der()))
    };
    let ca = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    p.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("pichat"),
    );
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = days_from_now(-1);
    p.not_after = days_from_now(SERVER_DAYS);
    let cert = p.signed_by(&key, &ca)?;
    let new_ca = ca_pem.is_some();
    if let Some(ca_cert) = &ca_pem {
        write_file(
            &files.ca_key,
            &pem("PRIVATE KEY", &ca_key.serialize_der()),
            true,
            force,
        )?;
        write_file(&files.ca_cert, ca_cert, false, force)?;
    }
    write_file(
        &files.key,
        &pem("PRIVATE KEY", &key.serialize_der()),
        true,
        force,
    )?;
    write_file(
        &files.cert,
        &format!(
            "{}{}",
            pem("CERTIFICATE", cert.der()),
            std::fs::read_to_string(&files.ca_cert).unwrap_or_default()
        ),
        false,
        force,
    )?;
    Ok(CertFiles { new_ca, ..files })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    /// Whether `server.pem` is valid for `name` under the CA of `ca.pem`.
    fn verifies(files: &CertFiles, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&files.ca_cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let chain: Vec<_> = CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn a_private_ca_signs_the_server_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["pi.local".to_string(), "127.0.0.1".to_string()];
        let f = make(dir.path(), &names, false).unwrap();
        assert!(f.new_ca);
        verifies(&f, "pi.local").unwrap();
        verifies(&f, "127.0.0.1").unwrap();
        assert!(verifies(&f, "other.example").is_err());
        use std::os::unix::fs::PermissionsExt;
        for k in [&f.key, &f.ca_key] {
            let mode = std::fs::metadata(k).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", k.display());
        }
        // Nothing is overwritten without --force.
        assert!(matches!(
            make(dir.path(), &names, false),
            Err(CertError::Exists(p)) if p == f.cert
        ));
        // A new server certificate from the same CA: clients keep their ca.pem.
        let ca_before = std::fs::read(&f.ca_cert).unwrap();
        std::fs::remove_file(&f.cert).unwrap();
        std::fs::remove_file(&f.key).unwrap();
        let g = make(dir.path(), &["newname.lan".to_string()], false).unwrap();
        assert!(!g.new_ca);
        assert_eq!(std::fs::read(&g.ca_cert).unwrap(), ca_before);
        verifies(&g, "newname.lan").unwrap();
        // --force makes a new CA too.
        let h = make(dir.path(), &names, true).unwrap();
        assert!(h.new_ca);
        assert_ne!(std::fs::read(&h.ca_cert).unwrap(), ca_before);
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "a b", "x..y", "é.local"] {
            assert!(
                matches!(
                    make(dir.path(), &[bad.to_string()], false),
                    Err(CertError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(default_names().contains(&"localhost".to_string()));
    }
}
