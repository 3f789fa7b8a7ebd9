//! TLS with rustls (the ring provider; TLS 1.2 and 1.3; no OpenSSL), for the sockets attache
//! accepts: termination on the inbound listener (`server.rs`), with the verified client's
//! identity read from its certificate (`peer.rs`) and the families that count handshakes and
//! reloads (`metrics.rs`). Origination to `https://` upstreams is the connector's, in
//! `upstream/tls.rs`; both read their PEM files through the helpers here.

pub mod metrics;
pub mod peer;
pub mod server;
pub mod svid;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// rustls with the ring provider, the one every TLS session of attache uses.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, at least one; `what` names the setting in errors.
pub fn read_certs(path: &str, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("{what} {path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{what} {path}: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "{what} {path}: no certificates");
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &str, what: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| anyhow::anyhow!("{what} {path}: {e}"))
}

/// A root store of a PEM file's certificates.
pub fn read_roots(path: &str, what: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path, what)? {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("{what} {path}: {e}"))?;
    }
    Ok(roots)
}

/// Why a TLS handshake failed, as a metric label: `expired`, `not_yet_valid`, `name_mismatch`,
/// `unknown_issuer`, `no_certificate` (a client that presented none where one is required),
/// `bad_certificate` (another certificate fault), `protocol` (no shared version, cipher or
/// ALPN, an alert, not TLS at all), or `other`.
pub fn failure_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                "expired"
            }
            rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. } => "not_yet_valid",
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => "name_mismatch",
            rustls::CertificateError::UnknownIssuer => "unknown_issuer",
            _ => "bad_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertRevocationList(_) => "bad_certificate",
        rustls::Error::AlertReceived(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::NoApplicationProtocol
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "protocol",
        _ => "other",
    }
}

/// [`failure_reason`] for the `io::Error` tokio-rustls reports a failed handshake as; a peer
/// that went away mid-handshake is `closed`.
pub fn io_failure_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(e) => failure_reason(e),
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        },
    }
}
