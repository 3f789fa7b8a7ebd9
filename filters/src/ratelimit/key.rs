//! What a limit counts per, read from the request: nothing, the client's address, the mTLS
//! peer's identity, a header or a baggage member.

use std::borrow::Cow;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::{Extensions, HeaderName, Request};

use crate::codec::percent;
use crate::trace_context::baggage;

/// Whether a peer is a proxy whose `X-Forwarded-For` is believed.
pub type Trusted = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Where a limit's key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// One bucket for every request the limit matches.
    None,
    /// The client's address: the peer's, or, when the peer is a trusted proxy, the
    /// `X-Forwarded-For` hop nearest to attache that is not one.
    ClientAddress {
        trusted: Option<Trusted>,
    },
    /// The verified client certificate's identity.
    PeerIdentity,
    Header(HeaderName),
    Baggage(Arc<str>),
}

/// How the layer reads what the connection knows.
#[derive(Clone, Copy)]
pub struct ConnReaders {
    pub peer_of: fn(&Extensions) -> Option<SocketAddr>,
    pub identity_of: fn(&Extensions) -> Option<&str>,
}

impl Default for ConnReaders {
    fn default() -> Self {
        Self {
            peer_of: |_| None,
            identity_of: |_| None,
        }
    }
}

impl KeySource {
    /// The key's bytes for `req`: `Some(None)` for a limit without keys, `None` when the
    /// request lacks the key.
    pub fn read<'a, B>(
        &self,
        req: &'a Request<B>,
        conn: &ConnReaders,
    ) -> Option<Option<Cow<'a, [u8]>>> {
        let key = match self {
            KeySource::None => return Some(None),
            KeySource::ClientAddress { trusted } => {
                let peer = (conn.peer_of)(req.extensions())?.ip().to_canonical();
                match trusted {
                    Some(trusted) if trusted(peer) => forwarded_client(req, &**trusted)
                        .unwrap_or_else(|| Cow::Owned(ip_bytes(peer))),
                    _ => Cow::Owned(ip_bytes(peer)),
                }
            }
            KeySource::PeerIdentity => {
                Cow::Borrowed((conn.identity_of)(req.extensions())?.as_bytes())
            }
            KeySource::Header(name) => Cow::Borrowed(req.headers().get(name)?.as_bytes()),
            KeySource::Baggage(member) => baggage::members(req.headers())
                .flatten()
                .find(|m| m.key == &**member)
                .map(|m| percent::decode(m.value.as_bytes()).into_owned())
                .map(Cow::Owned)?,
        };
        (!key.is_empty()).then_some(Some(key))
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The client by `X-Forwarded-For`, read from the right (the hop nearest to attache): the first
/// hop that is not a trusted proxy; if every hop is one, the leftmost. A hop that is not an
/// address is the client as written (a proxy that is trusted does not write garbage, so
/// whoever wrote it is the client). `None` without the header.
fn forwarded_client<'a, B>(
    req: &'a Request<B>,
    trusted: &(dyn Fn(IpAddr) -> bool + Send + Sync),
) -> Option<Cow<'a, [u8]>> {
    let lines = req
        .headers()
        .get_all(http::header::HeaderName::from_static("x-forwarded-for"));
    let mut leftmost = None;
    for line in lines.iter().rev() {
        for hop in line.as_bytes().rsplit(|&b| b == b',') {
            let hop = hop.trim_ascii();
            if hop.is_empty() {
                continue;
            }
            match parse_hop(hop) {
                Some(ip) if trusted(ip) => leftmost = Some(ip),
                Some(ip) => return Some(Cow::Owned(ip_bytes(ip))),
                None => return Some(Cow::Borrowed(hop)),
            }
        }
    }
    leftmost.map(|ip| Cow::Owned(ip_bytes(ip)))
}

/// An `X-Forwarded-For` hop: an address, `[v6]`, or either with a port.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    text.parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// The local bucket of a key: a 64-bit hash under a key chosen once per process (so that it
/// holds across reloads, which keep local state), not guessable by clients.
pub fn local_hash(key: Option<&[u8]>) -> u64 {
    static SEED: OnceLock<RandomState> = OnceLock::new();
    match key {
        None => 0,
        Some(k) => SEED.get_or_init(RandomState::new).hash_one(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(xff: &[&str]) -> Request<()> {
        let mut b = Request::builder();
        for v in xff {
            b = b.header("x-forwarded-for", *v);
        }
        b.body(()).unwrap()
    }

    fn readers() -> ConnReaders {
        ConnReaders {
            peer_of: |_| Some(SocketAddr::from(([10, 0, 0, 1], 5000))),
            identity_of: |_| None,
        }
    }

    #[test]
    fn the_client_address_is_the_nearest_untrusted_hop_behind_a_trusted_proxy() {
        let trusted: Trusted = Arc::new(|ip: IpAddr| ip.to_string().starts_with("10."));
        let source = KeySource::ClientAddress {
            trusted: Some(trusted),
        };
        let key = |xff: &[&str]| {
            source
                .read(&request(xff), &readers())
                .unwrap()
                .unwrap()
                .into_owned()
        };
        // A client cannot choose its bucket by writing hops to the left of the real one.
        assert_eq!(
            key(&["6.6.6.6, 203.0.113.9, 10.0.0.2"]),
            vec![203, 0, 113, 9]
        );
        assert_eq!(key(&["6.6.6.6", "203.0.113.9:443"]), vec![203, 0, 113, 9]);
        assert_eq!(key(&["10.0.0.3, 10.0.0.2"]), vec![10, 0, 0, 3]);
        assert_eq!(key(&["junk, 10.0.0.2"]), b"junk".to_vec());
        assert_eq!(key(&[]), vec![10, 0, 0, 1]);
        // Without trusted proxies the header is not read at all.
        let plain = KeySource::ClientAddress { trusted: None };
        let req = request(&["203.0.113.9"]);
        let got = plain.read(&req, &readers());
        assert_eq!(got.unwrap().unwrap().into_owned(), vec![10, 0, 0, 1]);
    }

    #[test]
    fn headers_and_baggage_members_are_keys_and_their_absence_is_told() {
        let req = Request::builder()
            .header("x-tenant-id", "acme")
            .header("baggage", "a=1,tenant=glob%20ex")
            .body(())
            .unwrap();
        let header = KeySource::Header(HeaderName::from_static("x-tenant-id"));
        let got = header.read(&req, &readers()).unwrap().unwrap();
        assert_eq!(&*got, b"acme");
        let member = KeySource::Baggage(Arc::from("tenant"));
        let got = member.read(&req, &readers()).unwrap().unwrap();
        assert_eq!(&*got, b"glob ex");
        let missing = KeySource::Header(HeaderName::from_static("x-api-key"));
        assert!(missing.read(&req, &readers()).is_none());
        assert!(KeySource::PeerIdentity.read(&req, &readers()).is_none());
        assert_eq!(KeySource::None.read(&req, &readers()), Some(None));
        assert_ne!(local_hash(Some(b"acme")), local_hash(Some(b"acmf")));
        assert_eq!(local_hash(Some(b"acme")), local_hash(Some(b"acme")));
    }
}
