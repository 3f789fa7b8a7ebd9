//! TLS termination on the inbound listener: the rustls server config made from
//! `spec.inbound.tls`, and made again whenever its files change.
//!
//! The config sits behind an `ArcSwap`: each handshake takes the current one, so a renewed
//! certificate (cert-manager rotating a Secret, say) is served to the next client while
//! connections already open keep the session they have. Files are watched through the shared
//! file watcher (their directories, so a Kubernetes Secret's symlink swap is seen) and read
//! again on each event and every [`POLL`]; a set of files that does not load (a key that does
//! not match the certificate, a half-written file) is logged and counted, and the last good
//! config stays. ALPN offers `h2` and `http/1.1`; TLS 1.2 and 1.3.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use attache_config::{ClientCert, InboundTls};
use attache_filters::authz::spiffe::SpiffeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::metrics::TlsFamilies;
use super::peer::PeerCert;
use crate::watch::FileWatch;

/// How often the files are read again when no event said they changed (filesystems without
/// inotify).
pub const POLL: Duration = Duration::from_secs(10);

/// The inbound listener's TLS, kept across reloads while `spec.inbound.tls` is unchanged.
pub struct ServerTls {
    current: ArcSwap<Loaded>,
    /// Every client certificate must be an X.509-SVID (`spec.authz` is configured); read per
    /// handshake, set by each snapshot.
    svid_required: Arc<AtomicBool>,
    pub metrics: Arc<TlsFamilies>,
    watcher: tokio::task::AbortHandle,
}

/// One loaded set of files.
struct Loaded {
    acceptor: tokio_rustls::TlsAcceptor,
    /// attache's own identity (its certificate's first URI SAN), for `By=` in
    /// `X-Forwarded-Client-Cert`.
    by: Option<String>,
}

/// What a TLS connection's requests know of it; shown on their SERVER spans.
#[derive(Debug)]
pub struct Session {
    /// `1.2` or `1.3`.
    pub version: &'static str,
    /// The client's verified certificate, under mutual TLS.
    pub peer: Option<PeerCert>,
    /// Its SPIFFE ID, when it is an SVID (the handshake refused a certificate that claims one
    /// and is not valid).
    pub svid: Option<SpiffeId>,
}

/// A connection's TLS facts on its requests' spans.
impl attache_filters::facts::Fact for crate::conn::Known {
    fn attributes(&self, attr: attache_filters::facts::Attributes<'_>) {
        if let Some(tls) = &self.tls {
            tls.attributes(attr);
        }
    }
}

impl Session {
    fn attributes(&self, attr: attache_filters::facts::Attributes<'_>) {
        use attache_filters::facts::Value;
        attr("tls.protocol.version", Value::from(self.version));
        if let Some(peer) = &self.peer {
            attr("tls.client.subject", Value::from(peer.subject.as_str()));
            if let Some(id) = peer.spiffe_id() {
                attr("attache.client.spiffe_id", Value::from(id));
            }
        }
        if let Some(id) = &self.svid {
            attr("attache.peer.id", Value::from(id.as_str()));
        }
    }
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl ServerTls {
    /// Loads the files (an error names the one at fault) and starts watching them.
    pub fn start(settings: &InboundTls, metrics: Arc<TlsFamilies>) -> anyhow::Result<Arc<Self>> {
        let files = Files::read(settings)?;
        let svid_required = Arc::new(AtomicBool::new(false));
        let loaded = load(settings, &files, &metrics, &svid_required)?;
        let settings = settings.clone();
        Ok(Arc::new_cyclic(|this: &Weak<ServerTls>| {
            let watcher = tokio::spawn(watch(this.clone(), settings, files)).abort_handle();
            ServerTls {
                current: ArcSwap::from_pointee(loaded),
                svid_required,
                metrics,
                watcher,
            }
        }))
    }

    /// Whether every client certificate must be an X.509-SVID (authorization is configured).
    pub fn require_svid(&self, required: bool) {
        self.svid_required.store(required, Ordering::Relaxed);
    }

    /// attache's own SPIFFE ID's trust domain (its certificate's first URI SAN), if any.
    pub fn own_trust_domain(&self) -> Option<String> {
        let by = self.current.load().by.clone()?;
        SpiffeId::parse(&by)
            .ok()
            .map(|id| id.trust_domain().to_owned())
    }

    /// The handshake with a client, under the current certificate; then what its requests
    /// are told of it.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(TlsStream<TcpStream>, Session)> {
        let loaded = self.current.load_full();
        let tls = loaded.acceptor.accept(stream).await?;
        let session = tls.get_ref().1;
        let leaf = session.peer_certificates().and_then(|chain| chain.first());
        let peer = leaf.and_then(|leaf| PeerCert::from_der(leaf, loaded.by.as_deref()));
        // The verifier refused a certificate that claims an identity and is not an SVID.
        let svid = leaf.and_then(|leaf| super::svid::svid_of(leaf).ok().flatten());
        let version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "1.3",
        };
        Ok((
            tls,
            Session {
                version,
                peer,
                svid,
            },
        ))
    }
}

/// The bytes of the certificate, key and client CA files, as last read.
#[derive(PartialEq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(s: &InboundTls) -> anyhow::Result<Self> {
        let read = |path: &str, what: &str| {
            std::fs::read(path).map_err(|e| anyhow::anyhow!("spec.inbound.tls.{what} {path}: {e}"))
        };
        Ok(Self {
            cert: read(&s.cert_file, "cert_file")?,
            key: read(&s.key_file, "key_file")?,
            client_ca: s
                .client_ca_file
                .as_deref()
                .map(|p| read(p, "client_ca_file"))
                .transpose()?,
        })
    }
}

/// The rustls server config for `files`; sets the expiry gauge from the certificate.
fn load(
    s: &InboundTls,
    files: &Files,
    metrics: &TlsFamilies,
    svid_required: &Arc<AtomicBool>,
) -> anyhow::Result<Loaded> {
    let path = |what: &str, file: &str| format!("spec.inbound.tls.{what} {file}");
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path("cert_file", &s.cert_file)))?;
    let Some(leaf) = chain.first().cloned() else {
        anyhow::bail!("{}: no certificates", path("cert_file", &s.cert_file));
    };
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path("key_file", &s.key_file)))?;
    let builder = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?;
    let builder = match (&files.client_ca, &s.client_ca_file) {
        (Some(pem), Some(file)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| anyhow::anyhow!("{}: {e}", path("client_ca_file", file)))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path("client_ca_file", file)))?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "{}: no certificates",
                path("client_ca_file", file)
            );
            let verifier = |roots: rustls::RootCertStore| {
                let v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider());
                match s.client_cert {
                    ClientCert::Required => v.build(),
                    ClientCert::Optional => v.allow_unauthenticated().build(),
                }
            };
            builder.with_client_cert_verifier(Arc::new(super::svid::SvidVerifier {
                inner: verifier(roots)?,
                required: svid_required.clone(),
                domains: domains(pem, &verifier)?,
            }))
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        anyhow::anyhow!(
            "{} and key_file {}: {e}",
            path("cert_file", &s.cert_file),
            s.key_file
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(&leaf) {
        metrics.expiry.set(cert.validity().not_after.timestamp());
    }
    Ok(Loaded {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        by: super::peer::first_uri(&leaf),
    })
}

/// The bundle split by the trust domains its CAs name (`None` when none names one): each
/// domain's verifier trusts that domain's CAs and those that name no domain.
fn domains<E>(
    pem: &[u8],
    verifier: &dyn Fn(
        rustls::RootCertStore,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, E>,
) -> anyhow::Result<Option<super::svid::Domains>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut tagged: std::collections::HashMap<String, Vec<CertificateDer<'static>>> =
        std::collections::HashMap::new();
    let mut untagged = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem).flatten() {
        match super::svid::ca_trust_domain(&cert) {
            Some(td) => tagged.entry(td).or_default().push(cert),
            None => untagged.push(cert),
        }
    }
    if tagged.is_empty() {
        return Ok(None);
    }
    let store = |certs: &[CertificateDer<'static>]| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(certs.iter().cloned());
        roots
    };
    let mut by_domain = std::collections::HashMap::new();
    for (td, mut certs) in tagged {
        certs.extend(untagged.iter().cloned());
        by_domain.insert(td, verifier(store(&certs))?);
    }
    let untagged = if untagged.is_empty() {
        None
    } else {
        Some(verifier(store(&untagged))?)
    };
    Ok(Some(super::svid::Domains {
        by_domain,
        untagged,
    }))
}

/// Reads the files again whenever one of their directories changes, and every [`POLL`]; a
/// changed set that loads replaces the served config. Ends with its [`ServerTls`].
async fn watch(this: Weak<ServerTls>, settings: InboundTls, mut files: Files) {
    let mut dirs: Vec<&Path> = Vec::new();
    let paths = [Some(&settings.cert_file), Some(&settings.key_file)]
        .into_iter()
        .chain([settings.client_ca_file.as_ref()])
        .flatten();
    let mut watches = Vec::new();
    for p in paths {
        let p = Path::new(p);
        if !dirs.contains(&p.parent().unwrap_or(p)) {
            dirs.push(p.parent().unwrap_or(p));
            watches.push(FileWatch::new(p, POLL, "TLS certificate"));
        }
    }
    loop {
        let changed = watches.iter_mut().map(|w| Box::pin(w.changed()));
        futures_util::future::select_all(changed).await;
        let Some(tls) = this.upgrade() else {
            return;
        };
        let read = match Files::read(&settings) {
            Ok(read) if read == files => continue,
            Ok(read) => read,
            Err(e) => {
                // Mid-rotation (a file briefly gone): the next event or poll tries again.
                tracing::debug!(error = %e, "cannot read the TLS files");
                continue;
            }
        };
        match load(&settings, &read, &tls.metrics, &tls.svid_required) {
            Ok(loaded) => {
                tls.current.store(Arc::new(loaded));
                tls.metrics.reloaded("success");
                tracing::info!(cert = %settings.cert_file, "inbound TLS certificate reloaded");
            }
            Err(e) => {
                tls.metrics.reloaded("failure");
                tracing::warn!(error = %e, "the changed TLS files do not load; serving the previous certificate");
            }
        }
        // A set that did not load is not tried again until a file changes once more.
        files = read;
    }
}
