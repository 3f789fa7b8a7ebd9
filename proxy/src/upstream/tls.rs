//! TLS origination to `https://` endpoints, with rustls (ring; TLS 1.2 and 1.3; no OpenSSL).
//! The connector wraps each new TCP connection in a TLS client session: the certificate chain
//! is verified against the system's roots or the upstream's `tls.ca_file`, for the endpoint's
//! host or `tls.server_name` (also sent as SNI), with the client certificate of
//! `tls.client_cert_file` when there is one (mutual TLS between two attaches). ALPN offers the
//! upstream's protocol (`h2` or `http/1.1`).

use std::sync::Arc;

use attache_config::{Protocol, UpstreamTls};
use rustls::pki_types::ServerName;

/// What the connector needs to open a TLS session to one endpoint.
pub struct TlsOrigin {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
    /// What makes two origins differ, for the pool's key: connections made under other
    /// settings are never reused for this one.
    pub identity: String,
}

impl TlsOrigin {
    /// The TLS settings for an endpoint at `host` of an upstream with `config`.
    pub fn new(
        config: Option<&UpstreamTls>,
        host: &str,
        protocol: Protocol,
    ) -> anyhow::Result<Self> {
        let roots = roots(config.and_then(|c| c.ca_file.as_deref()))?;
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut client = match config.and_then(|c| {
            Some((
                c.client_cert_file.as_deref()?,
                c.client_key_file.as_deref()?,
            ))
        }) {
            Some((cert, key)) => builder.with_client_auth_cert(
                crate::tls::read_certs(cert, "tls.client_cert_file")?,
                crate::tls::read_key(key, "tls.client_key_file")?,
            )?,
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![match protocol {
            Protocol::Http2 => b"h2".to_vec(),
            Protocol::Http1 => b"http/1.1".to_vec(),
        }];
        let name = config
            .and_then(|c| c.server_name.clone())
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| anyhow::anyhow!("`{name}` is not a TLS server name: {e}"))?;
        let identity = format!(
            "tls:{name}:{}:{}",
            config
                .and_then(|c| c.ca_file.as_deref())
                .unwrap_or("system"),
            config
                .and_then(|c| c.client_cert_file.as_deref())
                .unwrap_or("-")
        );
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server_name,
            identity,
        })
    }
}

/// The roots to verify against: the PEM file's certificates, or the system's.
fn roots(ca_file: Option<&str>) -> anyhow::Result<rustls::RootCertStore> {
    if let Some(path) = ca_file {
        return crate::tls::read_roots(path, "tls.ca_file");
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot read is skipped, as curl does.
        let _ = roots.add(cert);
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no CA certificates for https:// endpoints (install ca-certificates, set \
         SSL_CERT_FILE, or give the upstream tls.ca_file)"
    );
    Ok(roots)
}
