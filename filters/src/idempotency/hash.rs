//! Record keys and request fingerprints (specs/idempotency.md §3).
//!
//! Record key = `H(scope) ‖ H(key)`, H being HMAC-SHA-256 keyed with `scope_secret`, cut to 128
//! bits, in hex. Fingerprint = SHA-256 of the method, normalised path and query, media type,
//! listed headers and body. Every hashed input starts with a version tag and encodes each field
//! as a big-endian u32 length and its bytes (absent: a marker of its own), so no two inputs
//! collide by concatenation. Credentials and raw keys never leave this module unhashed.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const ABSENT: u32 = u32::MAX;

/// Feeds tagged, length-prefixed fields into a hash.
pub struct Fields<D: FnMut(&[u8])>(D);

impl<D: FnMut(&[u8])> Fields<D> {
    pub fn new(mut update: D, tag: &str) -> Self {
        update(tag.as_bytes());
        Self(update)
    }
    pub fn field(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(v) => {
                (self.0)(&u32::try_from(v.len()).unwrap_or(ABSENT - 1).to_be_bytes());
                (self.0)(v);
            }
            None => (self.0)(&ABSENT.to_be_bytes()),
        }
        self
    }
}

/// HMAC-SHA-256 of tagged fields, cut to 128 bits.
pub fn keyed(secret: &[u8], tag: &str, fields: &[Option<&[u8]>]) -> u128 {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return 0;
    };
    {
        let mut f = Fields::new(|b| mac.update(b), tag);
        for v in fields {
            f.field(*v);
        }
    }
    let out = mac.finalize().into_bytes();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_be_bytes(first)
}

/// What the fingerprint covers.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a [u8]>,
    /// `fingerprint_headers`: lower-case name and the values in order.
    pub headers: Vec<(&'a str, Vec<&'a [u8]>)>,
    pub body: &'a [u8],
    pub json_canonical: bool,
}

/// SHA-256 of the request's normalised parts.
pub fn fingerprint(r: &Request<'_>) -> [u8; 32] {
    let mut sha = Sha256::new();
    {
        let mut f = Fields::new(|b| sha.update(b), "attache-fp-v1");
        f.field(Some(r.method.as_bytes()));
        f.field(Some(normalise(r.path, false).as_bytes()));
        let mut pieces: Vec<String> = r
            .query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| normalise(p, true))
            .collect();
        // Stable: pieces with the same name keep their order.
        pieces.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        f.field(Some(
            &u32::try_from(pieces.len()).unwrap_or(0).to_be_bytes(),
        ));
        for p in &pieces {
            f.field(Some(p.as_bytes()));
        }
        let media = r.content_type.map(|ct| {
            let main = ct.split(|b| *b == b';').next().unwrap_or_default();
            crate::trace_context::trim_ows(main).to_ascii_lowercase()
        });
        f.field(media.as_deref());
        for (name, values) in &r.headers {
            f.field(Some(name.as_bytes()));
            f.field(Some(
                &u32::try_from(values.len()).unwrap_or(0).to_be_bytes(),
            ));
            for v in values {
                f.field(Some(v));
            }
        }
        let canonical = r
            .json_canonical
            .then(|| serde_json::from_slice::<serde_json::Value>(r.body).ok())
            .flatten()
            .and_then(|v| serde_json::to_vec(&v).ok());
        f.field(Some(canonical.as_deref().unwrap_or(r.body)));
    }
    sha.finalize().into()
}

fn name_of(piece: &str) -> &str {
    piece.split_once('=').map_or(piece, |(n, _)| n)
}

/// RFC 3986 §6.2.2 normalisation of a path (or, with `query`, one query piece): percent-encoding
/// in upper case, unreserved characters decoded, dot segments removed (paths only), an empty
/// path as `/`.
fn normalise(s: &str, query: bool) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(c) = b
                .get(i + 1..i + 3)
                .and_then(crate::codec::hex::any_case_byte)
        {
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push_str(percent_encoding::percent_encode_byte(c));
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    if query {
        return out;
    }
    let path = remove_dot_segments(&out);
    if path.is_empty() {
        "/".to_owned()
    } else {
        path
    }
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(
        method: &str,
        path: &str,
        query: Option<&str>,
        ct: &str,
        body: &str,
        canonical: bool,
    ) -> [u8; 32] {
        fingerprint(&Request {
            method,
            path,
            query,
            content_type: Some(ct.as_bytes()),
            headers: Vec::new(),
            body: body.as_bytes(),
            json_canonical: canonical,
        })
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(normalise("/a/%7e/%2f/./b/../c", false), "/a/~/%2F/c");
        assert_eq!(normalise("", false), "/");
        assert_eq!(normalise("x=%41+b", true), "x=A+b");
    }

    #[test]
    fn equivalent_requests_share_a_fingerprint() {
        let base = fp(
            "POST",
            "/orders",
            Some("a=1&b=2"),
            "application/json",
            "{\"x\":1,\"y\":2}",
            false,
        );
        assert_eq!(
            base,
            fp(
                "POST",
                "/orders",
                Some("b=2&a=1"),
                "application/json; charset=utf-8",
                "{\"x\":1,\"y\":2}",
                false
            )
        );
        assert_ne!(
            base,
            fp(
                "POST",
                "/orders",
                Some("a=1&b=2&dry=1"),
                "application/json",
                "{\"x\":1,\"y\":2}",
                false
            )
        );
        assert_ne!(
            base,
            fp(
                "PATCH",
                "/orders",
                Some("a=1&b=2"),
                "application/json",
                "{\"x\":1,\"y\":2}",
                false
            )
        );
        let reordered = "{\"y\":2,\"x\":1}";
        assert_ne!(
            base,
            fp(
                "POST",
                "/orders",
                Some("a=1&b=2"),
                "application/json",
                reordered,
                false
            )
        );
        assert_eq!(
            fp(
                "POST",
                "/orders",
                Some("a=1&b=2"),
                "application/json",
                reordered,
                true
            ),
            fp(
                "POST",
                "/orders",
                Some("a=1&b=2"),
                "application/json",
                "{\"x\":1,\"y\":2}",
                true
            )
        );
    }

    #[test]
    fn keyed_hashes_depend_on_the_secret_and_every_field() {
        let a = keyed(b"s1", "attache-key-v1", &[Some(b"k")]);
        assert_ne!(a, keyed(b"s2", "attache-key-v1", &[Some(b"k")]));
        assert_ne!(
            keyed(b"s1", "attache-scope-v1", &[Some(b"ab"), Some(b"c")]),
            keyed(b"s1", "attache-scope-v1", &[Some(b"a"), Some(b"bc")])
        );
        assert_ne!(
            keyed(b"s1", "attache-scope-v1", &[None]),
            keyed(b"s1", "attache-scope-v1", &[Some(b"")])
        );
    }
}
