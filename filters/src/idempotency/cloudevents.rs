//! CloudEvents routes (specs/idempotency.md §6): the identity of a request is the event's
//! (`source`, `id`), which CloudEvents makes unique per distinct event, instead of a key
//! header.
//!
//! - binary mode: one `ce-source` and one `ce-id` line; double-quoted-string escaping undone,
//!   then percent-decoded once; the result must be valid UTF-8;
//! - structured mode (`application/cloudevents+json`): the body's string members `source` and
//!   `id`, which win over `ce-` headers;
//! - batched mode (`application/cloudevents-batch+json`): not recorded.

use http::{HeaderMap, header};

use super::key::KeyError;

/// What a CloudEvents route makes of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Identity {
    /// The record key bytes for (`source`, `id`).
    Event(Vec<u8>),
    /// A batch: forwarded unrecorded.
    Batch,
}

pub fn identity(headers: &HeaderMap, body: &[u8]) -> Result<Identity, KeyError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if media == "application/cloudevents-batch+json" {
        return Ok(Identity::Batch);
    }
    let (source, id) = if media == "application/cloudevents+json" {
        let event: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| KeyError::Invalid("the structured event is not JSON"))?;
        let member = |name: &str| event.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        (member("source"), member("id"))
    } else {
        (binary(headers, "ce-source")?, binary(headers, "ce-id")?)
    };
    let (Some(source), Some(id)) = (source, id) else {
        return Err(KeyError::Missing);
    };
    if source.is_empty() || id.is_empty() {
        return Err(KeyError::Missing);
    }
    // Length-prefixed, so that no (source, id) pair encodes like another.
    let mut key = b"cloudevents".to_vec();
    for part in [source.as_bytes(), id.as_bytes()] {
        key.extend_from_slice(&(part.len() as u32).to_be_bytes());
        key.extend_from_slice(part);
    }
    Ok(Identity::Event(key))
}

/// One `ce-` attribute in binary mode.
fn binary(headers: &HeaderMap, name: &str) -> Result<Option<String>, KeyError> {
    let mut lines = headers.get_all(name).iter();
    let Some(line) = lines.next() else {
        return Ok(None);
    };
    if lines.next().is_some() {
        return Err(KeyError::Invalid("a ce- attribute on several lines"));
    }
    let raw = crate::trace_context::trim_ows(line.as_bytes());
    let unquoted = match raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) {
        Some(inner) => {
            let mut out = Vec::with_capacity(inner.len());
            let mut it = inner.iter();
            while let Some(b) = it.next() {
                if *b == b'\\' {
                    match it.next() {
                        Some(c) => out.push(*c),
                        None => return Err(KeyError::Invalid("a broken quoted string")),
                    }
                } else {
                    out.push(*b);
                }
            }
            out
        }
        None => raw.to_vec(),
    };
    let decoded = crate::codec::percent::decode_strict(&unquoted)
        .ok_or(KeyError::Invalid("a broken percent-encoding"))?;
    String::from_utf8(decoded)
        .map(Some)
        .map_err(|_| KeyError::Invalid("a ce- attribute that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn binary_and_structured_copies_of_one_event_match() {
        let binary = identity(&h(&[("ce-source", "/a"), ("ce-id", "1%20")]), b"x").unwrap();
        let structured = identity(
            &h(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )]),
            br#"{"source":"/a","id":"1 ","data":{}}"#,
        )
        .unwrap();
        assert_eq!(binary, structured);
        let quoted = identity(&h(&[("ce-source", "\"/a\""), ("ce-id", "\"1 \"")]), b"").unwrap();
        assert_eq!(quoted, binary);
        assert_ne!(
            identity(&h(&[("ce-source", "/b"), ("ce-id", "1%20")]), b"").unwrap(),
            binary
        );
    }

    #[test]
    fn bad_or_missing_identities_are_refused() {
        assert_eq!(
            identity(&h(&[("ce-source", "/a"), ("ce-id", "%C0%A0")]), b""),
            Err(KeyError::Invalid("a ce- attribute that is not UTF-8"))
        );
        assert_eq!(
            identity(&h(&[("ce-source", "/a")]), b""),
            Err(KeyError::Missing)
        );
        assert_eq!(
            identity(&h(&[("ce-source", "/a"), ("ce-id", "")]), b""),
            Err(KeyError::Missing)
        );
        assert_eq!(
            identity(
                &h(&[("content-type", "application/cloudevents-batch+json")]),
                b"[]"
            ),
            Ok(Identity::Batch)
        );
    }
}
