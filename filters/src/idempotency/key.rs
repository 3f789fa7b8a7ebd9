//! The `Idempotency-Key` field (specs/idempotency.md §2), checked before any hashing or store
//! access: one field line across the header and its aliases; an RFC 8941 sf-string (`\"` and
//! `\\` escapes only, parameters ignored) or a bare token without `"` or `,`; unquoted, 1 to
//! 255 characters in 0x21–0x7E. `"abc"` and `abc` are the same key.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::trace_context::ids::IdGenerator;

/// Why a key was refused, for the problem's `detail` (never echoing the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Invalid(&'static str),
}

/// The unquoted key of a request, or why there is none.
pub fn key(
    headers: &HeaderMap,
    names: &[HeaderName],
    strict_sf: bool,
) -> Result<Vec<u8>, KeyError> {
    let mut lines = names.iter().flat_map(|n| headers.get_all(n).iter());
    let Some(line) = lines.next() else {
        return Err(KeyError::Missing);
    };
    if lines.next().is_some() {
        return Err(KeyError::Invalid("more than one key field line"));
    }
    let v = crate::trace_context::trim_ows(line.as_bytes());
    let key = if let Some(rest) = v.strip_prefix(b"\"") {
        sf_string(rest)?
    } else {
        if strict_sf {
            return Err(KeyError::Invalid("the key must be a quoted sf-string"));
        }
        if v.contains(&b',') {
            return Err(KeyError::Invalid("a list of keys"));
        }
        if v.contains(&b'"') {
            return Err(KeyError::Invalid("a stray quote"));
        }
        v.to_vec()
    };
    if key.is_empty() {
        return Err(KeyError::Invalid("empty"));
    }
    if key.len() > 255 {
        return Err(KeyError::Invalid("longer than 255 characters"));
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(KeyError::Invalid(
            "characters outside visible ASCII (0x21-0x7E)",
        ));
    }
    Ok(key)
}

/// A fresh key for a request that has none, as an sf-string: a UUIDv7 (`unix_ms` first, so the
/// keys of a store sort by age; 74 random bits from `ids` after it).
pub fn generate(ids: &dyn IdGenerator, unix_ms: u64) -> HeaderValue {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&ids.next_u64().to_le_bytes());
    random[8..].copy_from_slice(&ids.next_u64().to_le_bytes()[..2]);
    let uuid = uuid::Builder::from_unix_timestamp_millis(unix_ms, &random).into_uuid();
    let mut text = [b'"'; 2 + uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated()
        .encode_lower(&mut text[1..1 + uuid::fmt::Hyphenated::LENGTH]);
    // Quotes, hex digits and hyphens: always a valid field value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// The rest of an sf-string after its opening quote: the unescaped content, then nothing or
/// `;` parameters (ignored).
fn sf_string(rest: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(rest.len());
    let mut i = 0;
    loop {
        match rest.get(i) {
            None => return Err(KeyError::Invalid("an unterminated string")),
            Some(b'\\') => match rest.get(i + 1) {
                Some(c @ (b'"' | b'\\')) => {
                    out.push(*c);
                    i += 2;
                }
                _ => return Err(KeyError::Invalid("an invalid escape")),
            },
            Some(b'"') => {
                i += 1;
                break;
            }
            Some(c) if (0x20..=0x7e).contains(c) => {
                out.push(*c);
                i += 1;
            }
            Some(_) => return Err(KeyError::Invalid("a character not allowed in a string")),
        }
    }
    match rest.get(i) {
        None | Some(b';') => Ok(out),
        Some(_) => Err(KeyError::Invalid("junk after the string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace_context::ids::SeededIds;

    fn k(values: &[&[u8]], strict: bool) -> Result<Vec<u8>, KeyError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
        }
        key(&h, &[HeaderName::from_static("idempotency-key")], strict)
    }

    #[test]
    fn quoted_and_bare_keys_are_one_key() {
        assert_eq!(k(&[b"abc"], false).unwrap(), b"abc");
        assert_eq!(k(&[b"\"abc\""], false).unwrap(), b"abc");
        assert_eq!(k(&[b" \"a\\\"b\";p=1 "], false).unwrap(), b"a\"b");
        assert_eq!(
            k(&[b"abc"], true),
            Err(KeyError::Invalid("the key must be a quoted sf-string"))
        );
        assert_eq!(k(&[b"\"abc\""], true).unwrap(), b"abc");
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(k(&[], false), Err(KeyError::Missing));
        for bad in [
            &b""[..],
            b"a b",
            b"\"a b\"",
            "aé".as_bytes(),
            b"a, b",
            b"\"abc\"x",
            b"\"abc",
            b"\"a\\nb\"",
        ] {
            assert!(
                matches!(k(&[bad], false), Err(KeyError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(k(&[b"a", b"b"], false), Err(KeyError::Invalid(_))));
        assert!(k(&[&[b'x'; 255][..]], false).is_ok());
        assert!(k(&[&[b'x'; 256][..]], false).is_err());
    }

    #[test]
    fn generated_keys_are_quoted_uuid_v7_that_the_parser_takes_and_sort_by_time() {
        let ids = SeededIds::new(7);
        let early = generate(&ids, 1_700_000_000_000);
        let late = generate(&ids, 1_700_000_000_001);
        let text = early.to_str().unwrap();
        assert_eq!(text.len(), 38);
        assert!(text.starts_with('"') && text.ends_with('"'));
        let parsed = uuid::Uuid::parse_str(&text[1..37]).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(
            parsed.get_timestamp().map(|t| t.to_unix().0),
            Some(1_700_000_000)
        );
        assert!(early.as_bytes() < late.as_bytes(), "later keys sort after");
        assert_ne!(
            generate(&ids, 1),
            generate(&ids, 1),
            "random after the time"
        );
        // The strict parser takes it, unquoted.
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", early.clone());
        let name = HeaderName::from_static("idempotency-key");
        assert_eq!(key(&h, &[name], true).unwrap(), &text.as_bytes()[1..37]);
    }
}
