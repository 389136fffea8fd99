//! How a registry is reached: plain HTTP or HTTPS, which certificates are trusted, and when a
//! certificate is not checked.
//!
//! - HTTPS is verified against the Mozilla roots, the system bundle (`$SSL_CERT_FILE`, else
//!   the first of the usual bundle files) and, as Docker does, every `*.crt` in
//!   `CERTS_DIR/<host[:port]>/` (`/etc/docker/certs.d` by default). A `*.cert`/`*.key` pair
//!   there is presented as the client certificate.
//! - Insecure registries (`--insecure-registry`, the Configuration's `insecureRegistries`,
//!   Ignite's `IGNITE_CONTAINERD_INSECURE_REGISTRIES`): `http://HOST` means plain HTTP,
//!   `https://HOST` HTTPS without certificate verification, a bare `HOST` HTTPS without
//!   verification falling back to plain HTTP when the registry does not speak TLS (Docker's
//!   meaning of an insecure registry).
//! - Loopback registries that are not listed: HTTPS, verified, falling back to plain HTTP when
//!   the registry does not speak TLS. (Docker skips verification for loopback; ignite checks a
//!   loopback registry that speaks TLS like any other, so a private CA must be trusted through
//!   certs.d or the registry listed as insecure.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::OciError;

/// Docker's directory of per-registry certificates.
pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";
/// Ignite's client-side list of insecure registries.
pub const INSECURE_REGISTRIES_ENV: &str = "IGNITE_CONTAINERD_INSECURE_REGISTRIES";

/// System CA bundles, as Go looks for them on Linux.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// How one registry is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// Start with HTTPS (else plain HTTP only).
    pub https: bool,
    /// Check the registry's certificate.
    pub verify: bool,
    /// Switch to plain HTTP when the registry does not speak TLS.
    pub fallback_http: bool,
}

/// `http://h:p/x` → (Some("http"), "h:p").
fn split_entry(entry: &str) -> (Option<&str>, String) {
    let e = entry.trim();
    let (scheme, rest) = if let Some(r) = e.strip_prefix("http://") {
        (Some("http"), r)
    } else if let Some(r) = e.strip_prefix("https://") {
        (Some("https"), r)
    } else {
        (None, e)
    };
    (scheme, rest.split('/').next().unwrap_or("").to_ascii_lowercase())
}

/// The transport for registry `domain` (as in the reference; `host` is where it is reached,
/// e.g. `registry-1.docker.io` for `docker.io`).
pub fn transport(domain: &str, host: &str, loopback: bool, insecure: &[String]) -> Transport {
    let (domain, host) = (domain.to_ascii_lowercase(), host.to_ascii_lowercase());
    let (mut plain, mut unverified, mut bare) = (false, false, false);
    for e in insecure {
        let (scheme, h) = split_entry(e);
        if h.is_empty() || (h != domain && h != host) {
            continue;
        }
        match scheme {
            Some("http") => plain = true,
            Some(_) => unverified = true,
            None => bare = true,
        }
    }
    match (plain, unverified, bare) {
        (true, false, false) => Transport { https: false, verify: false, fallback_http: false },
        (false, true, false) => Transport { https: true, verify: false, fallback_http: false },
        (false, false, false) => Transport { https: true, verify: true, fallback_http: loopback },
        _ => Transport { https: true, verify: false, fallback_http: true },
    }
}

/// Splits a comma-separated list (the environment variable's format).
pub fn parse_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect()
}

fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, OciError> {
    let bytes = std::fs::read(path).map_err(crate::io_err(path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>().map_err(|e| {
        OciError::Invalid { what: format!("certificate file {}", path.display()), message: e.to_string() }
    })?;
    if certs.is_empty() {
        return Err(OciError::Invalid {
            what: format!("certificate file {}", path.display()),
            message: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// What certs.d holds for one registry.
#[derive(Debug, Default)]
pub struct HostCerts {
    pub dir: PathBuf,
    pub cas: Vec<CertificateDer<'static>>,
    pub ca_files: Vec<PathBuf>,
    pub client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// Reads `certs_dir/<host_port>/` as Docker does: `*.crt` are CAs, `X.cert` with `X.key` a
/// client certificate. A missing directory is nothing to trust.
pub fn host_certs(certs_dir: &Path, host_port: &str) -> Result<HostCerts, OciError> {
    let dir = certs_dir.join(host_port);
    let mut hc = HostCerts { dir: dir.clone(), ..Default::default() };
    if host_port.is_empty() || host_port.contains('/') || host_port.starts_with('.') {
        return Ok(hc);
    }
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(hc),
        Err(source) => return Err(OciError::Io { path: dir, source }),
    };
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    for p in names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => {
                hc.cas.extend(pem_certs(&p)?);
                hc.ca_files.push(p);
            }
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.is_file() {
                    return Err(OciError::Invalid {
                        what: format!("client certificate {}", p.display()),
                        message: format!("missing key {}", key.display()),
                    });
                }
                if hc.client.is_some() {
                    continue;
                }
                let certs = pem_certs(&p)?;
                let kb = std::fs::read(&key).map_err(crate::io_err(&key))?;
                let k = PrivateKeyDer::from_pem_slice(&kb).map_err(|e| OciError::Invalid {
                    what: format!("client key {}", key.display()),
                    message: e.to_string(),
                })?;
                hc.client = Some((certs, k));
            }
            Some("key") => {
                let cert = p.with_extension("cert");
                if !cert.is_file() {
                    return Err(OciError::Invalid {
                        what: format!("client key {}", p.display()),
                        message: format!("missing client certificate {}", cert.display()),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(hc)
}

/// Checks certificates with the roots, except for the one host whose certificate is not
/// checked (an insecure registry): for it only the handshake signatures are.
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    unverified_host: Option<String>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(h) = &self.unverified_host {
            if server_name.to_str().eq_ignore_ascii_case(h) {
                return Ok(ServerCertVerified::assertion());
            }
        }
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The host part of `host[:port]` / `[v6]:port`.
fn host_only(host_port: &str) -> String {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
        _ => host_port.to_string(),
    }
}

/// The TLS configuration for a registry reached at `host_port` (its certs.d directory is
/// `certs_dir/<domain>`).
pub fn client_config(
    domain: &str,
    host_port: &str,
    certs: &HostCerts,
    verify: bool,
) -> Result<Arc<rustls::ClientConfig>, OciError> {
    let bad = |m: String| OciError::Registry { registry: domain.to_string(), message: m };
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    match std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        Some(f) => {
            let p = PathBuf::from(f);
            let certs = pem_certs(&p).map_err(|e| bad(format!("SSL_CERT_FILE: {e}")))?;
            roots.add_parsable_certificates(certs);
        }
        None => {
            if let Some(p) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
                if let Ok(bytes) = std::fs::read(p) {
                    roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&bytes).flatten());
                }
            }
        }
    }
    for c in &certs.cas {
        roots.add(c.clone()).map_err(|e| bad(format!("CA certificate in {}: {e}", certs.dir.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(format!("TLS roots: {e}")))?;
    let verifier = Verifier { inner, unverified_host: (!verify).then(|| host_only(host_port)) };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match &certs.client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad(format!("client certificate in {}: {e}", certs.dir.display())))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// What a failed connection says about TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate was refused.
    Certificate(String),
    /// The peer does not speak TLS (answered in plain text, or hung up on the handshake).
    NotTls,
    /// No answer in time (a socket timeout shows as EAGAIN).
    Timeout,
    /// The registry refused the handshake for want of a (good) client certificate.
    ClientCertificate(String),
    /// Anything else (refused connection, timeout, DNS, ...).
    Other,
}

/// Classifies a ureq transport error.
pub fn classify(t: &ureq::Transport) -> TlsFailure {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(e) = cur {
        let mut rustls_err = e.downcast_ref::<rustls::Error>();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                rustls_err = rustls_err.or_else(|| inner.downcast_ref::<rustls::Error>());
            }
            if rustls_err.is_none()
                && matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            {
                return TlsFailure::Timeout;
            }
            if rustls_err.is_none()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                )
            {
                return TlsFailure::NotTls;
            }
        }
        if let Some(r) = rustls_err {
            return match r {
                rustls::Error::InvalidCertificate(c) => TlsFailure::Certificate(format!("{c:?}")),
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => TlsFailure::NotTls,
                rustls::Error::AlertReceived(
                    a @ (rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::CertificateRequired
                    | rustls::AlertDescription::UnknownCA
                    | rustls::AlertDescription::CertificateUnknown),
                ) => TlsFailure::ClientCertificate(format!("{a:?}")),
                _ => TlsFailure::Other,
            };
        }
        cur = e.source();
    }
    TlsFailure::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = |d: &str, lo: bool, v: &[&str]| transport(d, d, lo, &l(v));
        assert_eq!(t("reg.example", false, &[]), Transport { https: true, verify: true, fallback_http: false });
        assert_eq!(t("127.0.0.1:5000", true, &[]), Transport { https: true, verify: true, fallback_http: true });
        assert_eq!(
            t("127.5.0.1:5080", true, &["http://127.5.0.1:5080", "https://127.5.0.1:5443"]),
            Transport { https: false, verify: false, fallback_http: false }
        );
        assert_eq!(
            t("127.5.0.1:5443", true, &["http://127.5.0.1:5080", "https://127.5.0.1:5443/"]),
            Transport { https: true, verify: false, fallback_http: false }
        );
        assert_eq!(
            t("Reg.Example:5000", false, &["reg.example:5000"]),
            Transport { https: true, verify: false, fallback_http: true }
        );
        // Another port is another registry.
        assert!(t("reg.example:5001", false, &["reg.example:5000"]).verify);
        assert_eq!(parse_list(" http://a:1, https://b:2,,c "), l(&["http://a:1", "https://b:2", "c"]));
    }

    #[test]
    fn host_parts() {
        assert_eq!(host_only("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(host_only("reg.example"), "reg.example");
        assert_eq!(host_only("[::1]:5000"), "::1");
    }

    #[test]
    fn certs_d_layout() {
        let d = tempfile::tempdir().unwrap();
        assert!(host_certs(d.path(), "h:1").unwrap().cas.is_empty());
        std::fs::create_dir_all(d.path().join("h:1")).unwrap();
        std::fs::write(d.path().join("h:1/ca.crt"), "not pem").unwrap();
        let e = host_certs(d.path(), "h:1").unwrap_err().to_string();
        assert!(e.contains("h:1/ca.crt"), "{e}");
        std::fs::remove_file(d.path().join("h:1/ca.crt")).unwrap();
        std::fs::write(d.path().join("h:1/client.key"), "x").unwrap();
        let e = format!("{:?}", host_certs(d.path(), "h:1").unwrap_err());
        assert!(e.contains("missing client certificate"), "{e}");
    }
}
