//! Who a TLS client is, read from the certificate rustls verified, and told to the app in
//! `X-Forwarded-Client-Cert` in Envoy's format, so apps (and libraries) written against an
//! Envoy-based mesh read it unchanged:
//!
//! ```text
//! By=spiffe://cluster.local/ns/shop/sa/checkout;Hash=<sha256 of the client's certificate>;
//! Subject="CN=orders,O=acme";URI=spiffe://cluster.local/ns/shop/sa/orders;DNS=orders.shop
//! ```
//!
//! `By` is the first URI SAN of attache's own certificate (left out when it has none), `Hash`
//! the hex SHA-256 of the client's DER certificate, `Subject` its distinguished name in
//! RFC 2253 order, then one `URI=` per URI SAN (SPIFFE IDs) and one `DNS=` per DNS SAN. Values
//! holding `,`, `;`, `=` or `"` are quoted, with `"` and `\` escaped. The header is made once
//! per connection, at the handshake.

use http::HeaderValue;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// A verified client certificate's identity.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// The subject, RFC 2253 (`CN=orders,O=acme`).
    pub subject: String,
    /// URI SANs, SPIFFE IDs among them.
    pub uris: Vec<String>,
    /// The `X-Forwarded-Client-Cert` value the app gets.
    pub xfcc: HeaderValue,
}

impl PeerCert {
    /// Reads the client's leaf certificate; `by` is attache's own identity for `By=`. `None`
    /// when it cannot be parsed (rustls verified it, so only an exotic encoding gets here).
    pub fn from_der(der: &[u8], by: Option<&str>) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = rfc2253(cert.subject());
        let (uris, dns) = sans(&cert);
        let mut xfcc = String::with_capacity(160);
        if let Some(by) = by {
            field(&mut xfcc, "By", by, false);
        }
        let hash = Sha256::digest(der);
        xfcc.push_str(if xfcc.is_empty() { "Hash=" } else { ";Hash=" });
        for b in hash {
            xfcc.push_str(&format!("{b:02x}"));
        }
        field(&mut xfcc, "Subject", &subject, true);
        for u in &uris {
            field(&mut xfcc, "URI", u, false);
        }
        for d in &dns {
            field(&mut xfcc, "DNS", d, false);
        }
        let xfcc = HeaderValue::from_str(&xfcc).ok()?;
        Some(Self {
            subject,
            uris,
            xfcc,
        })
    }

    /// The client's SPIFFE ID: its first `spiffe://` URI SAN.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with("spiffe://"))
    }
}

/// The URI and DNS SANs of `cert` that are printable ASCII (anything else could not travel in
/// a header, and is left out rather than mangled).
pub fn sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(u) if printable(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) if printable(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    (uris, dns)
}

/// The first URI SAN of a certificate (attache's own, for `By=`).
pub fn first_uri(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    sans(&cert).0.into_iter().next()
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A distinguished name in RFC 2253's order (the last RDN first), attributes by their short
/// names; values that are not printable strings are left out.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in name.iter_rdn() {
        let attrs: Vec<String> = rdn
            .iter()
            .filter_map(|attr| {
                let value = attr.as_str().ok().filter(|v| printable(v))?;
                let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                    .map(str::to_owned)
                    .unwrap_or_else(|_| attr.attr_type().to_id_string());
                Some(format!("{key}={}", escape_dn(value)))
            })
            .collect();
        if !attrs.is_empty() {
            parts.push(attrs.join("+"));
        }
    }
    parts.reverse();
    parts.join(",")
}

/// RFC 2253 §2.4: `,`, `+`, `"`, `\`, `<`, `>`, `;` escaped with a backslash, as are a
/// leading `#` or space and a trailing space.
fn escape_dn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.len().saturating_sub(1);
    for (i, c) in v.char_indices() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Appends `;key=value` (no `;` first), quoting the value when it must be (or `always`).
fn field(out: &mut String, key: &str, value: &str, always: bool) {
    if !out.is_empty() {
        out.push(';');
    }
    out.push_str(key);
    out.push('=');
    if always || value.contains([',', ';', '=', '"']) {
        out.push('"');
        for c in value.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dn: &[(rcgen::DnType, &str)], sans: Vec<rcgen::SanType>) -> rcgen::Certificate {
        let mut params = rcgen::CertificateParams::default();
        // The default name holds a CN already; the test's order is the certificate's.
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (k, v) in dn {
            params.distinguished_name.push(k.clone(), *v);
        }
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap()
    }

    #[test]
    fn the_header_names_the_subject_sans_and_hash_in_envoys_format() {
        let c = cert(
            &[
                (rcgen::DnType::OrganizationName, "acme, inc"),
                (rcgen::DnType::CommonName, "orders"),
            ],
            vec![
                rcgen::SanType::URI(
                    "spiffe://cluster.local/ns/shop/sa/orders"
                        .try_into()
                        .unwrap(),
                ),
                rcgen::SanType::DnsName("orders.shop".try_into().unwrap()),
                rcgen::SanType::DnsName("orders".try_into().unwrap()),
            ],
        );
        let der = c.der();
        let peer = PeerCert::from_der(der, Some("spiffe://cluster.local/ns/shop/sa/checkout"))
            .expect("parsed");
        assert_eq!(peer.subject, "CN=orders,O=acme\\, inc");
        assert_eq!(peer.uris, ["spiffe://cluster.local/ns/shop/sa/orders"]);
        assert_eq!(
            peer.spiffe_id(),
            Some("spiffe://cluster.local/ns/shop/sa/orders")
        );
        let hash: String = Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            peer.xfcc.to_str().unwrap(),
            format!(
                "By=spiffe://cluster.local/ns/shop/sa/checkout;Hash={hash};\
                 Subject=\"CN=orders,O=acme\\\\, inc\";\
                 URI=spiffe://cluster.local/ns/shop/sa/orders;DNS=orders.shop;DNS=orders"
            )
        );
    }

    #[test]
    fn without_an_identity_of_its_own_the_header_starts_at_the_hash() {
        let c = cert(&[(rcgen::DnType::CommonName, "x")], vec![]);
        let peer = PeerCert::from_der(c.der(), None).expect("parsed");
        let v = peer.xfcc.to_str().unwrap();
        assert!(v.starts_with("Hash="), "{v}");
        assert!(v.ends_with(";Subject=\"CN=x\""), "{v}");
        assert_eq!(first_uri(c.der()), None);
        assert_eq!(
            PeerCert::from_der(b"not a certificate", None).map(|_| ()),
            None
        );
    }
}
