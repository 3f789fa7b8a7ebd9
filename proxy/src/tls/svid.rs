//! X.509-SVID rules at the handshake (specs/authorization.md §3.1): a client certificate that
//! chains to the trust bundle must also be a valid SVID to be accepted: exactly one URI SAN,
//! a valid SPIFFE ID (lower-case trust domain; no empty, `.` or `..` segment; no `%`, query or
//! fragment), and a leaf (`cA` false). A certificate that fails is refused during the
//! handshake, so no request ever runs under a malformed identity.
//!
//! The rules apply to every certificate that claims a SPIFFE identity (holds a `spiffe://`
//! URI SAN), and, with `spec.authz` configured (identities decide there), to every client
//! certificate: the switch is read per handshake, so a reload that adds authorization applies
//! it to the next connection. The trust bundle (`client_ca_file`) may hold the CAs of more than
//! one trust domain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use attache_filters::authz::spiffe::SpiffeId;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use x509_parser::extensions::GeneralName;

/// Wraps the chain verifier with the SVID rules.
#[derive(Debug)]
pub struct SvidVerifier {
    /// Every CA of the bundle.
    pub inner: Arc<dyn ClientCertVerifier>,
    /// Every client certificate must be an SVID (authorization is configured).
    pub required: Arc<AtomicBool>,
    /// When the bundle's CAs name their trust domains: an SVID is verified against its own
    /// domain's CAs (and those that name none) only.
    pub domains: Option<Domains>,
}

/// The bundle split by trust domain: a CA certificate whose URI SAN is a trust domain's ID
/// (`spiffe://partner.example`, as SPIRE writes its CAs) vouches for that domain's SVIDs only,
/// so a federated partner's CA can never mint an identity in another domain.
#[derive(Debug)]
pub struct Domains {
    /// By trust domain: its CAs and the CAs that name no domain.
    pub by_domain: std::collections::HashMap<String, Arc<dyn ClientCertVerifier>>,
    /// The CAs that name no domain, for SVIDs of a domain no CA names.
    pub untagged: Option<Arc<dyn ClientCertVerifier>>,
}

/// The trust domain a CA certificate names in its URI SAN (`spiffe://<td>`, no path).
pub fn ca_trust_domain(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => {
            let id = SpiffeId::parse(u).ok()?;
            (id.as_str().len() == "spiffe://".len() + id.trust_domain().len())
                .then(|| id.trust_domain().to_owned())
        }
        _ => None,
    })
}

/// The SPIFFE ID of a client's leaf certificate when it is a valid SVID; `Ok(None)` when it
/// claims no SPIFFE identity (no `spiffe://` URI SAN); else why it is not an SVID.
pub fn svid_of(der: &[u8]) -> Result<Option<SpiffeId>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                uris.push(*u);
            }
        }
    }
    let claims = uris.iter().any(|u| {
        u.get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
    });
    if !claims {
        return Ok(None);
    }
    if uris.len() != 1 {
        return Err(format!(
            "an SVID has exactly one URI SAN; this certificate has {}",
            uris.len()
        ));
    }
    if cert.is_ca() {
        return Err("an SVID is a leaf certificate; this one is a CA (cA=true)".into());
    }
    SpiffeId::parse(uris[0])
        .map(Some)
        .map_err(|e| e.to_string())
}

impl ClientCertVerifier for SvidVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let svid = svid_of(end_entity);
        let chain = match (&svid, &self.domains) {
            (Ok(Some(id)), Some(d)) => {
                match d.by_domain.get(id.trust_domain()).or(d.untagged.as_ref()) {
                    Some(v) => v.clone(),
                    None => {
                        tracing::debug!(
                            id = id.as_str(),
                            "client certificate refused: no CA in the bundle vouches for its trust domain"
                        );
                        return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
                    }
                }
            }
            _ => self.inner.clone(),
        };
        let verified = chain.verify_client_cert(end_entity, intermediates, now)?;
        let refuse = |why: String| {
            tracing::debug!(reason = %why, "client certificate refused: not a valid X.509-SVID");
            Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                NotSvid(why),
            ))))
        };
        match svid {
            Ok(Some(_)) => Ok(verified),
            Ok(None) if self.required.load(Ordering::Relaxed) => Err(refuse(
                "spec.authz needs every client certificate to be an SVID; this one has no spiffe:// URI SAN".into(),
            )),
            Ok(None) => Ok(verified),
            Err(why) => Err(refuse(why)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct NotSvid(String);

impl std::fmt::Display for NotSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a valid X.509-SVID: {}", self.0)
    }
}

impl std::error::Error for NotSvid {}
